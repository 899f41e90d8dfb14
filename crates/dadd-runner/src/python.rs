//! The Python virtualenv: `venv/` in the working dir, made with `uv venv`
//! when `uv` is on PATH, else `python3 -m venv`; every `python_deps` entry
//! installed into it (from `python_cheeseshop` when given), through a cache
//! shared by every run of this user so a repeated install is fast. The
//! installers write into `output.log` and run supervised like the command,
//! so a stop signal during a long install is honoured at once.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dadd_spec::{PythonDep, Spec};

use crate::command::{self, Ending, Launch, SpawnError, StopCause};
use crate::outlog::OutputLog;
use crate::signals::Signals;

/// The virtualenv's name in the working dir.
pub const VENV: &str = "venv";

/// Why the virtualenv could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    /// An installer step could not start.
    #[error("{step}: {source}")]
    Spawn {
        /// What was being done.
        step: String,
        /// The cause.
        source: SpawnError,
    },
    /// An installer step failed (its output is in output.log).
    #[error("{step} failed ({how}); the installer's output is in output.log")]
    Failed {
        /// What was being done.
        step: String,
        /// Its exit code or signal.
        how: String,
    },
    /// The runner was told to stop.
    #[error("stopped by {0} during {1}")]
    Stopped(nix::sys::signal::Signal, String),
}

/// Which tool builds the virtualenv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    /// `uv` at this path.
    Uv(PathBuf),
    /// `python3 -m venv` and pip.
    Pip,
}

/// `uv` when it is on `path`, else pip.
pub fn choose(path: Option<&std::ffi::OsStr>) -> Installer {
    path.and_then(|p| {
        std::env::split_paths(p)
            .map(|d| d.join("uv"))
            .find(|c| is_executable(c))
    })
    .map_or(Installer::Pip, Installer::Uv)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The default shared cache: `$XDG_CACHE_HOME/dadd`, else `~/.cache/dadd`,
/// else a `dadd-cache-<uid>` dir in the temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("dadd");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("dadd");
    }
    std::env::temp_dir().join(format!("dadd-cache-{}", nix::unistd::getuid()))
}

/// Everything `build` needs.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The working dir.
    pub dir: &'a Path,
    /// The spec.
    pub spec: &'a Spec,
    /// The shared cache dir.
    pub cache_dir: &'a Path,
    /// The tool.
    pub installer: Installer,
    /// The grace period, should the runner be stopped during an install.
    pub grace: Duration,
}

/// The arguments that point the installer at the spec's index.
pub fn index_args(spec: &Spec, installer: &Installer) -> Vec<String> {
    let Some(url) = &spec.python_cheeseshop else {
        return Vec::new();
    };
    let mut args = vec!["--index-url".to_owned(), url.to_string()];
    // pip ignores a plain-http index unless told to trust its host; the
    // spec names this index on purpose, so trust it (uv needs no such flag).
    if *installer == Installer::Pip && url.scheme() == "http" {
        if let Some(host) = url.host_str() {
            args.push("--trusted-host".into());
            args.push(host.to_owned());
        }
    }
    args
}

/// The commands that build the virtualenv and install every entry.
pub fn plan(setup: &Setup<'_>) -> Vec<(String, Launch)> {
    let venv = setup.dir.join(VENV);
    let index = index_args(setup.spec, &setup.installer);
    let cache = setup.cache_dir.as_os_str().to_owned();
    let mut steps = Vec::new();
    match &setup.installer {
        Installer::Uv(uv) => {
            let env = vec![(OsString::from("UV_CACHE_DIR"), cache)];
            let uv = uv.to_string_lossy().into_owned();
            steps.push((
                "creating venv/ with uv".to_owned(),
                Launch {
                    argv: vec![uv.clone(), "venv".into(), VENV.into()],
                    env: env.clone(),
                    env_remove: Vec::new(),
                },
            ));
            for dep in &setup.spec.python_deps {
                let mut argv = vec![
                    uv.clone(),
                    "pip".into(),
                    "install".into(),
                    "--python".into(),
                ];
                argv.push(venv.join("bin/python").to_string_lossy().into_owned());
                argv.extend(index.iter().cloned());
                argv.extend(dep.args.iter().cloned());
                steps.push((
                    install_step(dep),
                    Launch {
                        argv,
                        env: env.clone(),
                        env_remove: Vec::new(),
                    },
                ));
            }
        }
        Installer::Pip => {
            steps.push((
                "creating venv/ with python3 -m venv".to_owned(),
                Launch {
                    argv: vec!["python3".into(), "-m".into(), "venv".into(), VENV.into()],
                    ..Launch::default()
                },
            ));
            let python = venv.join("bin/python").to_string_lossy().into_owned();
            for dep in &setup.spec.python_deps {
                let mut argv = vec![
                    python.clone(),
                    "-m".into(),
                    "pip".into(),
                    "install".into(),
                    "--disable-pip-version-check".into(),
                    "--no-input".into(),
                    "--cache-dir".into(),
                    setup.cache_dir.to_string_lossy().into_owned(),
                ];
                argv.extend(index.iter().cloned());
                argv.extend(dep.args.iter().cloned());
                steps.push((
                    install_step(dep),
                    Launch {
                        argv,
                        ..Launch::default()
                    },
                ));
            }
        }
    }
    steps
}

fn install_step(dep: &PythonDep) -> String {
    format!("installing {}", dep.raw)
}

/// Builds `venv/` and installs every dependency, each step logged and
/// supervised; stops at the first failure.
pub fn build(setup: &Setup<'_>, log: &OutputLog, signals: &mut Signals) -> Result<(), PythonError> {
    if let Err(e) = std::fs::create_dir_all(setup.cache_dir) {
        // Not fatal: the installer works without a cache, only slower.
        log.line(format!(
            "cannot create the shared cache {}: {e}; installing without it",
            setup.cache_dir.display()
        ));
    }
    for (step, launch) in plan(setup) {
        log.line(format!("{step}: {}", launch.argv.join(" ")));
        let running =
            command::spawn(&launch, setup.dir, log).map_err(|source| PythonError::Spawn {
                step: step.clone(),
                source,
            })?;
        let outcome = command::supervise(&running, signals, None, setup.grace, log);
        if let Some(StopCause::Signal(sig)) = outcome.stopped {
            return Err(PythonError::Stopped(sig, step));
        }
        match outcome.ending {
            Ending::Exited(0) => {}
            Ending::Exited(c) => {
                return Err(PythonError::Failed {
                    step,
                    how: format!("exit code {c}"),
                })
            }
            Ending::Signaled(s) => {
                return Err(PythonError::Failed {
                    step,
                    how: format!("killed by signal {s}"),
                })
            }
        }
    }
    Ok(())
}

/// The environment the command gets from the virtualenv: `venv/bin` first
/// on `PATH`, `VIRTUAL_ENV` set.
pub fn command_env(dir: &Path, path: Option<&std::ffi::OsStr>) -> Vec<(OsString, OsString)> {
    let venv = dir.join(VENV);
    let mut dirs = vec![venv.join("bin")];
    if let Some(p) = path {
        dirs.extend(std::env::split_paths(p));
    }
    let joined = std::env::join_paths(dirs).unwrap_or_else(|_| venv.join("bin").into_os_string());
    vec![
        (OsString::from("PATH"), joined),
        (OsString::from("VIRTUAL_ENV"), venv.into_os_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Spec {
        Spec::parse_strict(text).expect("valid spec")
    }

    #[test]
    fn pip_plan_uses_the_index_cache_and_each_entry_args() {
        let s = spec(
            r#"{"cmd": "true", "python_deps": ["-U pkg>=3", "other"], "python_cheeseshop": "http://127.0.0.1:9/simple"}"#,
        );
        let dir = Path::new("/w");
        let setup = Setup {
            dir,
            spec: &s,
            cache_dir: Path::new("/c"),
            installer: Installer::Pip,
            grace: Duration::from_secs(1),
        };
        let steps = plan(&setup);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].1.argv, ["python3", "-m", "venv", "venv"]);
        let first = &steps[1].1.argv;
        assert_eq!(first[0], "/w/venv/bin/python");
        assert!(first.windows(2).any(|w| w == ["--cache-dir", "/c"]));
        assert!(first
            .windows(2)
            .any(|w| w == ["--index-url", "http://127.0.0.1:9/simple"]));
        assert!(first
            .windows(2)
            .any(|w| w == ["--trusted-host", "127.0.0.1"]));
        assert!(first.ends_with(&["-U".to_owned(), "pkg>=3".to_owned()]));
        assert!(steps[2].1.argv.ends_with(&["other".to_owned()]));
    }

    #[test]
    fn uv_plan_sets_its_cache_by_environment() {
        let s = spec(r#"{"cmd": "true", "python_deps": "pkg"}"#);
        let setup = Setup {
            dir: Path::new("/w"),
            spec: &s,
            cache_dir: Path::new("/c"),
            installer: Installer::Uv(PathBuf::from("/bin/uv")),
            grace: Duration::from_secs(1),
        };
        let steps = plan(&setup);
        assert_eq!(
            steps[0].1.argv[..2],
            ["/bin/uv".to_owned(), "venv".to_owned()]
        );
        assert!(steps[1]
            .1
            .env
            .contains(&("UV_CACHE_DIR".into(), "/c".into())));
        assert!(!steps[1].1.argv.contains(&"--index-url".to_owned()));
    }

    #[test]
    fn venv_bin_leads_path() {
        let env = command_env(Path::new("/w"), Some(std::ffi::OsStr::new("/usr/bin:/bin")));
        assert_eq!(env[0].1, OsString::from("/w/venv/bin:/usr/bin:/bin"));
        assert_eq!(env[1], ("VIRTUAL_ENV".into(), "/w/venv".into()));
    }

    #[test]
    fn uv_is_found_only_when_executable_on_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(choose(Some(dir.path().as_os_str())), Installer::Pip);
        let uv = dir.path().join("uv");
        std::fs::write(&uv, "#!/bin/sh\n").expect("write");
        assert_eq!(choose(Some(dir.path().as_os_str())), Installer::Pip);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&uv, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(choose(Some(dir.path().as_os_str())), Installer::Uv(uv));
    }
}
