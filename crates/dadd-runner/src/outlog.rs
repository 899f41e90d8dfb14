//! `output.log`: the command's output and the runner's own lines, in one file.
//!
//! The command writes to the file directly (its stdout and stderr are this
//! file, opened `O_APPEND`), never through a pipe the runner must drain: a
//! runner that stops reading can never block the command. The runner's own
//! lines are timestamped and prefixed (`[dadd 2026-11-29T05:00:00Z] ...`) so
//! they stand apart from the command's output.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The log file's name in the working dir.
pub const NAME: &str = "output.log";

/// `output.log`, open for appending.
#[derive(Debug)]
pub struct OutputLog {
    file: File,
    path: PathBuf,
}

impl OutputLog {
    /// Opens (creating) `output.log` in `dir`, for appending.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(NAME);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&path)?;
        Ok(Self { file, path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one runner line. Best effort: a full disk must not stop the
    /// runner from supervising and reporting.
    pub fn line(&self, msg: impl std::fmt::Display) {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
        let text = format!("[dadd {now}] {msg}\n");
        // One write call per line: with O_APPEND it lands whole even while
        // the command writes to the same file.
        let _ = (&self.file).write_all(text.as_bytes());
    }

    /// A handle on the same open file, for a child's stdout or stderr.
    pub fn stdio(&self) -> std::io::Result<Stdio> {
        Ok(Stdio::from(self.file.try_clone()?))
    }
}

/// Prints one line of the runner's own diagnostics to standard error (the
/// terminal in the foreground, `runner.log` once daemonized), timestamped.
pub fn diag(msg: impl std::fmt::Display) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    eprintln!("[dadd-runner {now}] {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = OutputLog::open(dir.path()).expect("open");
        log.line("downloading data.json");
        let again = OutputLog::open(dir.path()).expect("reopen");
        again.line("second");
        let text = std::fs::read_to_string(log.path()).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("[dadd 20") && lines[0].ends_with("] downloading data.json"));
        assert!(lines[1].ends_with("] second"));
    }
}
