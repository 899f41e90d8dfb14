//! The working dir: made (or checked) before anything else happens, and the
//! crash-safe and private ways files are written in it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Files the worker puts in a working dir before it starts the runner.
pub const WORKER_FILES: &[&str] = &["envelope.json", "spec.json"];

/// Why the working dir could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WorkdirError {
    /// `--working-dir` names a dir with other things in it (exit 2: the
    /// runner removes its working dir at the end, so it must not take one
    /// that holds someone's files).
    #[error("--working-dir {dir} already holds {found:?}: give a new or empty dir (the runner removes its working dir at the end)")]
    NotEmpty {
        /// The dir.
        dir: PathBuf,
        /// Some of what it holds.
        found: String,
    },
    /// `--working-dir` names something that is not a dir.
    #[error("--working-dir {0} exists and is not a directory: give a new or empty dir")]
    NotADir(PathBuf),
    /// Creating or reading it failed.
    #[error(
        "cannot make the working dir {dir}: {source}; check that the parent exists and is writable"
    )]
    Io {
        /// The dir (or its parent).
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl WorkdirError {
    /// Whether this is a usage problem (exit 2, nothing created).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::NotEmpty { .. } | Self::NotADir(_))
    }
}

/// Makes the working dir: `working_dir` (created if missing), else a new
/// `dadd-*` dir under `work_root` (default: the system temp dir). Returns
/// its absolute path.
pub fn prepare(
    working_dir: Option<&Path>,
    work_root: Option<&Path>,
) -> Result<PathBuf, WorkdirError> {
    let dir = match working_dir {
        Some(dir) => {
            check_or_create(dir)?;
            dir.to_path_buf()
        }
        None => {
            let root = work_root.map_or_else(std::env::temp_dir, Path::to_path_buf);
            let io = |source| WorkdirError::Io {
                dir: root.clone(),
                source,
            };
            DirBuilder::new()
                .recursive(true)
                .create(&root)
                .map_err(io)?;
            tempfile::Builder::new()
                .prefix("dadd-")
                .tempdir_in(&root)
                .map_err(io)?
                .keep()
        }
    };
    std::fs::canonicalize(&dir).map_err(|source| WorkdirError::Io { dir, source })
}

fn check_or_create(dir: &Path) -> Result<(), WorkdirError> {
    let io = |source| WorkdirError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(WorkdirError::NotADir(dir.to_path_buf())),
        Ok(_) => {
            let mut others = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(io)? {
                let name = entry.map_err(io)?.file_name();
                let name = name.to_string_lossy().into_owned();
                if !WORKER_FILES.contains(&name.as_str()) {
                    others.push(name);
                }
            }
            if others.is_empty() {
                Ok(())
            } else {
                others.sort();
                others.truncate(3);
                Err(WorkdirError::NotEmpty {
                    dir: dir.to_path_buf(),
                    found: others.join(", "),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io),
        Err(e) => Err(io(e)),
    }
}

/// How far a write must get before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Atomic: readers, and a runner killed at any moment, see the old
    /// content or the new, never half. Enough for anything that is
    /// meaningless after a machine crash (the runner died with it).
    Atomic,
    /// Atomic and on disk (file and dir fsynced): survives a power cut.
    Durable,
}

/// Writes `name` in `dir` crash-safely: `name.partial`, (fsync,) rename over
/// `name`, (fsync the dir).
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> std::io::Result<()> {
    let partial = dir.join(format!("{name}.partial"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&partial)?;
    f.write_all(bytes)?;
    if durability == Durability::Durable {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&partial, dir.join(name))?;
    if durability == Durability::Durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `path` with `mode` from the first byte on (never chmod after:
/// a secret is never readable by others, not even for a moment). Never
/// overwrites.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_dir_is_made_under_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = prepare(None, Some(root.path())).expect("made");
        assert!(dir.is_dir());
        assert!(dir.starts_with(std::fs::canonicalize(root.path()).expect("canonical")));
        assert!(dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("dadd-")));
    }

    #[test]
    fn a_given_dir_is_created_or_must_hold_only_worker_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let fresh = root.path().join("a/b");
        assert!(prepare(Some(&fresh), None).is_ok());
        std::fs::write(fresh.join("spec.json"), "{}").expect("write");
        assert!(prepare(Some(&fresh), None).is_ok());
        std::fs::write(fresh.join("precious.txt"), "x").expect("write");
        let err = prepare(Some(&fresh), None).expect_err("refused");
        assert!(err.is_usage());
        assert!(err.to_string().contains("precious.txt"));
        let file = root.path().join("f");
        std::fs::write(&file, "x").expect("write");
        assert!(prepare(Some(&file), None).expect_err("refused").is_usage());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_partial() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), "state.json", b"one", 0o644, Durability::Durable).expect("write");
        write_atomic(dir.path(), "state.json", b"two", 0o644, Durability::Atomic).expect("write");
        assert_eq!(
            std::fs::read(dir.path().join("state.json")).expect("read"),
            b"two"
        );
        assert!(!dir.path().join("state.json.partial").exists());
    }

    #[test]
    fn a_new_private_file_is_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("settings.json");
        write_new(&path, b"{}", 0o600).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_new(&path, b"{}", 0o600).is_err(), "never overwrites");
    }
}
