//! Starting a runner: make its working dir, write `envelope.json` (0600, it
//! holds the token) and `spec.json`, run `dadd-runner --working-dir DIR
//! --envelope DIR/envelope.json`, and read the one JSON line its parent
//! prints (`RunStarted`) once the daemon is up.
//!
//! The runner must share nothing with the worker once it runs: it gets
//! /dev/null as stdin, its own process group from the start (a Ctrl-C or a
//! group kill aimed at the worker misses it), no inherited sockets (Rust
//! opens every descriptor close-on-exec), and no cluster secret in its
//! environment. It makes its own session when it daemonizes. The worker
//! never waits on the daemon: only on the short-lived parent, with a
//! deadline, and never on the pipes (a daemon could hold them open).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dadd_spec::api::{RunEnvelope, RunStarted};
use tokio::io::AsyncReadExt;

use crate::config::ENV_PREFIX;
use crate::workroot::{dir_prefix, write_private};

/// The runner's setting for CA certificates of an https master.
pub const RUNNER_CA_ENV: &str = "DADD_RUNNER_CA_FILE";

/// Most of a runner's stderr kept for an error answer.
const STDERR_LIMIT: usize = 16 * 1024;

/// Why a runner did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The working dir or its files could not be written.
    #[error("cannot prepare the working dir under {root}: {source}")]
    Prepare {
        /// The work root.
        root: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runner executable could not be started at all.
    #[error("cannot start the runner {runner}: {source}; check the worker's `runner` setting")]
    Exec {
        /// The runner executable.
        runner: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runner's parent exited with an error.
    #[error("the runner failed to start ({status})")]
    Failed {
        /// Its exit status.
        status: String,
        /// Its stderr, one entry per line.
        stderr: Vec<String>,
    },
    /// The runner's parent did not finish within the deadline.
    #[error("the runner did not start within {}s", deadline.as_secs_f64())]
    Timeout {
        /// The deadline.
        deadline: Duration,
        /// Its stderr so far.
        stderr: Vec<String>,
    },
}

impl SpawnError {
    /// The runner's stderr, for the answer's `details`.
    pub fn details(&self) -> Vec<String> {
        match self {
            SpawnError::Failed { stderr, .. } | SpawnError::Timeout { stderr, .. } => {
                stderr.clone()
            }
            _ => Vec::new(),
        }
    }
}

/// Creates process `envelope.process_id`'s working dir under `root` with
/// its envelope and spec.
pub fn prepare_dir(root: &Path, envelope: &RunEnvelope) -> Result<PathBuf, SpawnError> {
    let err = |source| SpawnError::Prepare {
        root: root.to_path_buf(),
        source,
    };
    // tempfile makes it 0700 with a random suffix; kept, not removed on drop:
    // the runner owns it from now on and removes it after delivery.
    let dir = tempfile::Builder::new()
        .prefix(&dir_prefix(envelope.process_id))
        .rand_bytes(6)
        .tempdir_in(root)
        .map_err(err)?
        .keep();
    let write = || -> std::io::Result<()> {
        let envelope_json = serde_json::to_vec_pretty(envelope).map_err(std::io::Error::other)?;
        write_private(&dir.join("envelope.json"), &envelope_json)?;
        // The spec holds `config`, which may hold secrets: 0600 too.
        let spec_json = serde_json::to_vec_pretty(&envelope.spec).map_err(std::io::Error::other)?;
        write_private(&dir.join("spec.json"), &spec_json)?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(err(e));
    }
    Ok(dir)
}

/// Runs the runner for `dir` and waits (at most `deadline`) for its parent
/// to print `RunStarted` and exit.
///
/// `ca_file` (the worker's `master_ca_file`) reaches the runner as
/// `DADD_RUNNER_CA_FILE`, unless the worker's environment sets that already,
/// so the runner trusts the same https master.
pub async fn start_runner(
    runner: &Path,
    dir: &Path,
    deadline: Duration,
    ca_file: Option<&Path>,
) -> Result<RunStarted, SpawnError> {
    let mut cmd = tokio::process::Command::new(runner);
    cmd.arg("--working-dir")
        .arg(dir)
        .arg("--envelope")
        .arg(dir.join("envelope.json"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    for (key, _) in std::env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.starts_with(&format!("{ENV_PREFIX}_")))
        {
            cmd.env_remove(key);
        }
    }
    if let Some(ca) = ca_file {
        if std::env::var_os(RUNNER_CA_ENV).is_none() {
            cmd.env(RUNNER_CA_ENV, ca);
        }
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        runner: runner.to_path_buf(),
        source,
    })?;
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(pipe) = child.stdout.take() {
        tokio::spawn(collect(pipe, stdout.clone()));
    }
    if let Some(pipe) = child.stderr.take() {
        tokio::spawn(collect(pipe, stderr.clone()));
    }
    let status = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(SpawnError::Exec {
                runner: runner.to_path_buf(),
                source,
            })
        }
        Err(_) => {
            // Only the parent: it has not confirmed a daemon yet.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(SpawnError::Timeout {
                deadline,
                stderr: lines(&stderr),
            });
        }
    };
    // The parent has exited; give the readers a moment to drain what it wrote.
    let settle = tokio::time::Instant::now() + Duration::from_millis(200);
    loop {
        let have_line = stdout.lock().map(|b| b.contains(&b'\n')).unwrap_or(true);
        if have_line || tokio::time::Instant::now() >= settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !status.success() {
        tokio::time::sleep_until(settle).await;
        return Err(SpawnError::Failed {
            status: status.to_string(),
            stderr: lines(&stderr),
        });
    }
    let out = stdout.lock().map(|b| b.clone()).unwrap_or_default();
    let parsed = String::from_utf8_lossy(&out)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<RunStarted>(l.trim()).ok());
    match parsed.or_else(|| from_pid_file(dir)) {
        Some(started) => Ok(started),
        None => Err(SpawnError::Failed {
            status: "exited 0 without printing {\"pid\", \"directory\"}".into(),
            stderr: lines(&stderr),
        }),
    }
}

/// The answer made from the `pid` file, for a runner that did not print one.
fn from_pid_file(dir: &Path) -> Option<RunStarted> {
    let pid = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(RunStarted {
        pid,
        directory: dir.display().to_string(),
    })
}

async fn collect<R: tokio::io::AsyncRead + Unpin>(mut pipe: R, into: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut v) = into.lock() {
                    if v.len() < STDERR_LIMIT {
                        v.extend_from_slice(&buf[..n]);
                    }
                }
            }
        }
    }
}

fn lines(buf: &Arc<Mutex<Vec<u8>>>) -> Vec<String> {
    let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The runner executable: `configured`, else `dadd-runner` next to this
/// executable, else on `PATH`.
pub fn find_runner(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("dadd-runner")))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("dadd-runner"))
                .find(|p| p.is_file())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn envelope(id: i64) -> RunEnvelope {
        RunEnvelope {
            fallback_urls: Vec::new(),
            process_id: id,
            token: "tok".into(),
            master_url: "http://127.0.0.1:5000".into(),
            spec: serde_json::json!({"cmd": "true"}),
        }
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("fake-runner");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    #[test]
    fn the_dir_holds_private_envelope_and_spec() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = prepare_dir(root.path(), &envelope(9)).expect("prepared");
        let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.starts_with("proc-9-"), "{name}");
        for f in ["envelope.json", "spec.json"] {
            let mode = std::fs::metadata(dir.join(f))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let back: RunEnvelope =
            serde_json::from_slice(&std::fs::read(dir.join("envelope.json")).expect("read"))
                .expect("json");
        assert_eq!(back, envelope(9));
    }

    #[actix_rt::test]
    async fn a_runner_line_is_the_answer() {
        let root = tempfile::tempdir().expect("tempdir");
        let runner = script(
            root.path(),
            r#"echo "starting" >&2; echo '{"pid": 4321, "directory": "'"$2"'"}'"#,
        );
        let dir = prepare_dir(root.path(), &envelope(1)).expect("prepared");
        let started = start_runner(&runner, &dir, Duration::from_secs(10), None)
            .await
            .expect("started");
        assert_eq!(started.pid, 4321);
        assert_eq!(started.directory, dir.display().to_string());
    }

    #[actix_rt::test]
    async fn the_runner_gets_no_worker_secret_and_the_ca_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let runner = script(
            root.path(),
            r#"env > "$2/env.txt"; echo '{"pid": 1, "directory": "'"$2"'"}'"#,
        );
        // A variable only this test uses, so parallel tests are not disturbed.
        std::env::set_var("DADD_WORKER_SPAWN_TEST_SECRET", "hidden");
        let dir = prepare_dir(root.path(), &envelope(1)).expect("prepared");
        start_runner(
            &runner,
            &dir,
            Duration::from_secs(10),
            Some(Path::new("/ca.pem")),
        )
        .await
        .expect("started");
        let env = std::fs::read_to_string(dir.join("env.txt")).expect("env");
        assert!(!env.contains("DADD_WORKER_SPAWN_TEST_SECRET"), "{env}");
        assert!(env.contains("DADD_RUNNER_CA_FILE=/ca.pem"), "{env}");
    }

    #[actix_rt::test]
    async fn a_failing_runner_gives_its_stderr() {
        let root = tempfile::tempdir().expect("tempdir");
        let runner = script(root.path(), "echo 'bad envelope: no token' >&2; exit 2");
        let dir = prepare_dir(root.path(), &envelope(1)).expect("prepared");
        let err = start_runner(&runner, &dir, Duration::from_secs(10), None)
            .await
            .expect_err("fails");
        assert_eq!(err.details(), vec!["bad envelope: no token".to_owned()]);
    }

    #[actix_rt::test]
    async fn a_hanging_runner_hits_the_deadline() {
        let root = tempfile::tempdir().expect("tempdir");
        let runner = script(root.path(), "exec sleep 30");
        let dir = prepare_dir(root.path(), &envelope(1)).expect("prepared");
        let t = std::time::Instant::now();
        let err = start_runner(&runner, &dir, Duration::from_millis(300), None)
            .await
            .expect_err("times out");
        assert!(matches!(err, SpawnError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[actix_rt::test]
    async fn a_daemon_holding_the_pipes_does_not_block_the_answer() {
        let root = tempfile::tempdir().expect("tempdir");
        // The "daemon" keeps stdout and stderr open for 30 s after the parent exits.
        let runner = script(
            root.path(),
            r#"(sleep 30) & echo "$!" > "$2/pid"; echo '{"pid": '"$!"', "directory": "'"$2"'"}'"#,
        );
        let dir = prepare_dir(root.path(), &envelope(1)).expect("prepared");
        let t = std::time::Instant::now();
        let started = start_runner(&runner, &dir, Duration::from_secs(10), None)
            .await
            .expect("started");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(started.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
