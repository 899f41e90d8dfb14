//! `dadd dev`: a whole cluster on this machine, in the foreground: one
//! `dadd-master` (SQLite in a temp dir) and one `dadd-worker` (work root in
//! the same temp dir) on loopback, stopped together on Ctrl-C.
//!
//! The daemons run in their own process groups, so a Ctrl-C on the terminal
//! reaches `dadd` alone, which then stops the worker and the master in order.
//! Runners are never signalled: they finish their own work.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

use super::commands::{finish, print_json};
use super::exit::{Code, Interrupted, UsageError};
use super::{render, spec_file};
use crate::Client;

/// How long the daemons get to answer after they start.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a daemon gets to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `dadd dev` was asked.
#[derive(Debug, Clone)]
pub(super) struct DevOptions {
    pub(super) run: Option<String>,
    pub(super) bind_master: SocketAddr,
    pub(super) bind_worker: SocketAddr,
    pub(super) json: bool,
}

/// A daemon `dadd dev` started; killed on drop if not stopped before.
struct Daemon {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> anyhow::Result<Daemon> {
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot open {} twice", log.display()))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Own process group: Ctrl-C on the terminal reaches `dadd` only.
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Daemon { name, child, log })
    }

    /// Fails (with the tail of its log) if the daemon has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited ({status}) during start; its log ({}) ends with:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after the grace period.
    async fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            eprintln!("dadd dev: {} did not stop in time; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
        }
    }
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `name` next to the running `dadd`, else on `PATH`.
pub(super) fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "{name} is neither next to dadd nor on PATH; build it (`cargo build --bins`) or install it"
    )
}

/// Runs the dev cluster; with `--run`, the answer is the `submit --wait` code.
pub(super) async fn run(opts: DevOptions) -> anyhow::Result<Code> {
    // A daemon already there would answer the readiness checks in place of ours.
    for (addr, flag) in [
        (opts.bind_master, "--bind-master"),
        (opts.bind_worker, "--bind-worker"),
    ] {
        if addr.port() == 0 {
            return Err(UsageError(format!(
                "{flag} {addr}: give a fixed port, so the URLs can be printed and used"
            ))
            .into());
        }
        if std::net::TcpListener::bind(addr).is_err() {
            bail!("{addr} is in use (another dadd dev, master or worker?); stop it or pass {flag} with a free address");
        }
    }
    let master_bin = find_binary("dadd-master")?;
    let worker_bin = find_binary("dadd-worker")?;
    let dir = tempfile::Builder::new()
        .prefix("dadd-dev-")
        .tempdir()
        .context("cannot create a temp dir for the dev cluster")?;
    let state_dir = dir.path().join("master");
    let work_root = dir.path().join("work");
    for d in [&state_dir, &work_root] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let secret: String = {
        let bytes: [u8; 24] = rand::thread_rng().gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let master_url = format!("http://{}", opts.bind_master);
    let worker_url = format!("http://{}", opts.bind_worker);

    let mut master = Daemon::spawn(
        "dadd-master",
        &master_bin,
        &[
            "--bind".into(),
            opts.bind_master.to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ],
        &[("DADD_AUTH__CLUSTER_SECRET", &secret)],
        dir.path().join("master.log"),
    )?;
    let client = Client::new(&master_url)?;
    let outcome = async {
        wait_until("the master", &mut [&mut master], || async {
            client.health().await.is_ok()
        })
        .await?;
        let mut worker = Daemon::spawn(
            "dadd-worker",
            &worker_bin,
            &[
                "--bind".into(),
                opts.bind_worker.to_string(),
                "--master".into(),
                master_url.clone(),
                "--work-root".into(),
                work_root.display().to_string(),
            ],
            &[("DADD_WORKER_CLUSTER_SECRET", &secret)],
            dir.path().join("worker.log"),
        )?;
        let worker_addr = opts.bind_worker.to_string();
        let up_url = format!("{worker_url}/up");
        let result = async {
            wait_until("the worker", &mut [&mut master, &mut worker], || async {
                worker_up(&up_url).await
                    && client
                        .hosts()
                        .await
                        .is_ok_and(|hosts| hosts.iter().any(|h| h.address == worker_addr))
            })
            .await?;
            if opts.json {
                print_json(&serde_json::json!({
                    "master": master_url,
                    "worker": worker_url,
                    "dir": dir.path(),
                }))?;
            } else {
                eprintln!("dadd dev: master {master_url}  (log {})", master.log.display());
                eprintln!("dadd dev: worker {worker_url}  (log {}, work root {})", worker.log.display(), work_root.display());
            }
            match &opts.run {
                Some(spec) => run_spec(&client, spec, opts.json).await,
                None => {
                    if !opts.json {
                        eprintln!("dadd dev: try `dadd --master {master_url} submit --follow examples/hello.json`; Ctrl-C stops both");
                    }
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => Ok(Code::Success),
                        status = master.child.wait() => bail!("dadd-master exited ({}); see {}", status.map(|s| s.to_string()).unwrap_or_default(), master.log.display()),
                        status = worker.child.wait() => bail!("dadd-worker exited ({}); see {}", status.map(|s| s.to_string()).unwrap_or_default(), worker.log.display()),
                    }
                }
            }
        }
        .await;
        worker.stop().await;
        result
    }
    .await;
    master.stop().await;
    finish_dir(dir, &work_root);
    outcome
}

/// Removes the temp dir, unless runners still hold working dirs in it.
fn finish_dir(dir: tempfile::TempDir, work_root: &Path) {
    let busy = std::fs::read_dir(work_root)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if busy {
        let kept = dir.keep();
        eprintln!(
            "dadd dev: runners still hold working dirs; kept {}",
            kept.display()
        );
    }
}

/// Submits, follows, prints the outcome.
async fn run_spec(client: &Client, spec: &str, json: bool) -> anyhow::Result<Code> {
    let spec = spec_file::load(spec)?;
    let created = client.submit(&spec).await?;
    if !json {
        eprintln!(
            "dadd dev: process {} submitted; its log follows",
            created.id
        );
    }
    let detail = finish(client, created.id, !json).await?;
    if json {
        print_json(&detail)?;
    } else {
        eprintln!(
            "dadd dev: process {}: {}",
            detail.summary.id,
            render::outcome(&detail.summary)
        );
    }
    Ok(Code::for_state(detail.summary.state).unwrap_or(Code::Error))
}

async fn worker_up(url: &str) -> bool {
    let client = awc::Client::default();
    matches!(client.get(url).send().await, Ok(resp) if resp.status().is_success())
}

/// Polls `ready` until true, failing when a daemon exits, Ctrl-C, or the deadline.
async fn wait_until<F, Fut>(what: &str, daemons: &mut [&mut Daemon], ready: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if ready().await {
            return Ok(());
        }
        for d in daemons.iter_mut() {
            d.check_alive()?;
        }
        if start.elapsed() > READY_DEADLINE {
            bail!(
                "{what} did not answer within {}s; see the logs: {}",
                READY_DEADLINE.as_secs(),
                daemons
                    .iter()
                    .map(|d| d.log.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::signal::ctrl_c() => return Err(Interrupted.into()),
        }
    }
}
