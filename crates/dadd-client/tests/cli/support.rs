//! A small cluster for tests: `dadd-master` (SQLite in a temp dir) and
//! `dadd-worker` in-process on port 0, with a stand-in runner that
//! daemonizes and sleeps until SIGTERM. The test plays the runner's
//! reporting with the token the worker wrote to `envelope.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dadd_client::{Client, ClientBuilder};
use dadd_spec::api::{ProcId, RunEnvelope, StateReport};
use dadd_spec::ProcState;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) const SECRET: &str = "cluster-secret-for-tests";

/// A master and a worker, stopped (and every runner killed) at the end.
pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) master: Option<dadd_master::MasterHandle>,
    pub(crate) worker: Option<dadd_worker::Worker>,
    pub(crate) url: String,
}

impl Cluster {
    /// Starts both; `api_token` protects the master's user routes.
    pub(crate) async fn start(api_token: Option<&str>) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let work_root = dir.path().join("work");
        std::fs::create_dir(&work_root).expect("work root");
        let runner = dir.path().join("stand-in-runner");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&runner, dadd_tests::STAND_IN_RUNNER).expect("write runner");
            std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let master = start_master(&dir.path().join("master"), api_token).await;
        let url = master.url().to_owned();
        let wcfg = dadd_worker::Config {
            bind: "127.0.0.1:0".parse().expect("addr"),
            master: url.clone(),
            work_root: Some(work_root),
            max_procs: Some(8),
            runner: Some(runner),
            cluster_secret: Some(dadd_worker::config::Secret(SECRET.into())),
            heartbeat_interval_secs: 0.3,
            ..dadd_worker::Config::default()
        };
        let worker = dadd_worker::start(wcfg).await.expect("the worker starts");
        let cluster = Cluster {
            dir,
            master: Some(master),
            worker: Some(worker),
            url,
        };
        let client = cluster.client(api_token);
        let addr = cluster.worker_addr();
        wait_for(20, "the worker to register", || async {
            client
                .hosts()
                .await
                .is_ok_and(|h| h.iter().any(|h| h.address == addr))
        })
        .await;
        cluster
    }

    pub(crate) fn worker_addr(&self) -> String {
        self.worker
            .as_ref()
            .map(|w| w.addr().to_string())
            .unwrap_or_default()
    }

    pub(crate) fn work_root(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// A user's client.
    pub(crate) fn client(&self, token: Option<&str>) -> Client {
        ClientBuilder::new(&self.url)
            .token(token.map(str::to_owned))
            .build()
            .expect("client")
    }

    /// Waits until the worker has started process `id`'s runner, and answers
    /// a client holding that process's token (what the runner reports with).
    pub(crate) async fn runner_client(&self, id: ProcId) -> Client {
        let root = self.work_root();
        let mut envelope: Option<RunEnvelope> = None;
        wait_for(20, "the process's envelope in the work root", || {
            let found = find_envelope(&root, id);
            let got = found.is_some();
            envelope = found;
            async move { got }
        })
        .await;
        let envelope = envelope.expect("found");
        ClientBuilder::new(&envelope.master_url)
            .token(Some(envelope.token))
            .build()
            .expect("runner client")
    }

    /// Stops the worker and the master.
    pub(crate) async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await;
        }
        if let Some(m) = self.master.take() {
            m.stop().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for e in dadd_worker::workroot::scan(&self.work_root()) {
            if e.alive() {
                if let Some(pid) = e.runner_pid() {
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// A master alone (SQLite in `state_dir`) on a free loopback port.
pub(crate) async fn start_master(
    state_dir: &Path,
    api_token: Option<&str>,
) -> dadd_master::MasterHandle {
    let mut mcfg = dadd_master::Config {
        bind: "127.0.0.1:0".into(),
        state_dir: state_dir.to_path_buf(),
        http_workers: 2,
        ..dadd_master::Config::default()
    };
    mcfg.auth.cluster_secret = Some(SECRET.into());
    mcfg.auth.api_tokens = api_token.map(|t| vec![t.to_owned()]).unwrap_or_default();
    dadd_master::start(mcfg).await.expect("the master starts")
}

/// A loopback URL where nothing listens (a port bound, then let go).
pub(crate) fn closed_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    format!("http://127.0.0.1:{port}")
}

fn find_envelope(root: &Path, id: ProcId) -> Option<RunEnvelope> {
    let prefix = format!("proc-{id}-");
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .find_map(|e| {
            let text = std::fs::read(e.path().join("envelope.json")).ok()?;
            serde_json::from_slice(&text).ok()
        })
}

/// A state report.
pub(crate) fn report(state: ProcState) -> StateReport {
    StateReport {
        state,
        pid: None,
        exit_code: None,
        signal: None,
        reason: None,
    }
}

/// Polls `cond` every 50 ms until it holds, failing after `secs`.
pub(crate) async fn wait_for<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
