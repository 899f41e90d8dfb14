//! A whole Dadd cluster from the real binaries: one `dadd-master` (SQLite
//! in the test's temp dir, or a fresh Postgres schema), or several masters
//! sharing that store (each its own port and state dir), any number of
//! `dadd-worker`s with their own work roots (given every master's URL, or a
//! list of the test's choosing), the real `dadd-runner`, a webhook sink
//! every master notifies, and a small blocking client of the master's API.
//!
//! Every daemon binds 127.0.0.1 port 0 the first time and the same port
//! when restarted (so the master sees the same host, and the runners reach
//! the same master). Auth is on: an API token for users and a cluster
//! secret between master and workers. Intervals are short (heartbeats every
//! 250 ms, a host TTL of a few seconds) so the scenarios are quick.
//!
//! Cleanup: dropping the cluster kills the workers, then every runner still
//! alive in their work roots with its command's whole process group, then
//! every master, then drops the Postgres schema.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use dadd_spec::api::{ProcDetail, ProcId, ProcSummary, WorkerProc};
use dadd_spec::ProcState;
use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::bin;
use super::http::{Response, Server};
use super::procs::{ChildGuard, DaemonGuard};
use super::wait::{wait_for, wait_until};

/// The API token users (and the tests) send.
pub const API_TOKEN: &str = "e2e-api-token-0123456789";
/// The secret shared by the master and its workers.
pub const CLUSTER_SECRET: &str = "e2e-cluster-secret-0123456789";
/// How long a daemon gets to start and answer.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// Heartbeat period of the test workers, seconds.
pub const HEARTBEAT_SECS: f64 = 0.25;

/// Which store the master runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's temp dir.
    Sqlite,
    /// A fresh schema on `DADD_TEST_POSTGRES_URL`.
    Postgres,
}

/// Runs a cluster test once per store: `mod NAME { sqlite, postgres }`.
/// The Postgres one does nothing when `DADD_TEST_POSTGRES_URL` is unset.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$name($crate::support::cluster::Backend::Sqlite);
            }
            #[test]
            fn postgres() {
                super::$name($crate::support::cluster::Backend::Postgres);
            }
        }
    };
}

/// A fresh store: a SQLite URL, or a Postgres schema dropped on drop.
#[derive(Debug)]
pub struct Db {
    /// The master's `database_url`.
    pub url: String,
    /// Postgres: the server URL and the schema to drop.
    pg: Option<(String, String)>,
}

impl Db {
    /// A store for `backend`; `None` for Postgres when no server is configured.
    pub fn new(backend: Backend, dir: &Path) -> Option<Db> {
        match backend {
            Backend::Sqlite => Some(Db {
                url: format!("sqlite://{}", dir.join("dadd-master.db").display()),
                pg: None,
            }),
            Backend::Postgres => {
                let base = std::env::var("DADD_TEST_POSTGRES_URL").ok()?;
                let schema = format!("dadd_e2e_{}", random_hex(8));
                if let Err(e) = pg_execute(&base, &format!("CREATE SCHEMA {schema}")) {
                    panic!("DADD_TEST_POSTGRES_URL is set but no test schema could be made: {e}");
                }
                let sep = if base.contains('?') { '&' } else { '?' };
                Some(Db {
                    url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                    pg: Some((base, schema)),
                })
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some((base, schema)) = self.pg.take() {
            let _ = pg_execute(&base, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// Runs one statement on Postgres with `psql` (the server's own client:
/// no async runtime or driver in the test binary).
fn pg_execute(url: &str, sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql (install the Postgres client): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `n` random bytes as hex (from the kernel, no extra crate).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    hex::encode(buf)
}

/// The environment every daemon gets: no inherited `DADD_…` settings,
/// and `RUST_LOG` as given (the tests read the "listening" lines).
fn clean_command(program: &Path, rust_log: &str) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("DADD_")) {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", rust_log).stdin(Stdio::null());
    cmd
}

/// Waits for the JSON log line whose message is `message` in `log` and
/// returns its `addr` field; fails if `child` exits first.
fn wait_listening(what: &str, log: &Path, message: &str, child: &mut ChildGuard) -> SocketAddr {
    wait_for(&format!("{what} to listen"), START_DEADLINE, || {
        if let Some(status) = child.try_wait() {
            panic!(
                "{what} exited during start ({status}); its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let text = std::fs::read_to_string(log).ok()?;
        text.lines().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            let fields = v.get("fields")?;
            (fields.get("message")?.as_str()? == message)
                .then(|| fields.get("addr")?.as_str()?.parse().ok())?
        })
    })
}

/// Opens a fresh log file for a daemon's stdout and stderr.
fn log_files(path: &Path) -> (Stdio, Stdio) {
    let out = std::fs::File::create(path).expect("create a daemon log");
    let err = out.try_clone().expect("clone the log handle");
    (Stdio::from(out), Stdio::from(err))
}

/// A blocking client of the master's API with the test's API token.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON of type `T`, or a panic saying what came.
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not the expected JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Api {
    /// A client of `base` sending `token` (none when empty).
    pub fn new(base: &str, token: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            agent,
        }
    }

    /// The master's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One request; `Err` only when the master cannot be reached.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Answer, ureq::Error> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            (m, body) => {
                let (ctype, data) = body.unwrap_or(("application/octet-stream", &[]));
                let req = match m {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    other => panic!("no such method {other} in the test client"),
                };
                req.header("Authorization", &auth)
                    .content_type(ctype)
                    .send(data)
            }
        }?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()?;
        Ok(Answer { status, body })
    }

    /// One request that must reach the master.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Answer {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: the master did not answer: {e}"))
    }

    /// Submits `spec`; returns the new process's id.
    pub fn submit(&self, spec: &Value) -> ProcId {
        let body = serde_json::to_vec(spec).expect("json");
        let ans = self.request("POST", "/api/procs", Some(("application/json", &body)));
        assert_eq!(ans.status, 201, "submit: {}", ans.text());
        let created: ProcSummary = ans.json();
        assert_eq!(created.state, ProcState::Queued);
        created.id
    }

    /// Submits `spec` to a master that may be dying: `Err` (what went
    /// wrong) when it could not be reached or the answer was cut off;
    /// any answer other than 201 fails the test.
    pub fn try_submit(&self, spec: &Value) -> Result<ProcId, String> {
        let body = serde_json::to_vec(spec).expect("json");
        let ans = self
            .try_request("POST", "/api/procs", Some(("application/json", &body)))
            .map_err(|e| e.to_string())?;
        assert_eq!(ans.status, 201, "submit to {}: {}", self.base, ans.text());
        let created: ProcSummary = ans.json();
        Ok(created.id)
    }

    /// `GET /api/procs/{id}`, `None` while the master is unreachable.
    pub fn try_proc(&self, id: ProcId) -> Option<ProcDetail> {
        let ans = self
            .try_request("GET", &format!("/api/procs/{id}"), None)
            .ok()?;
        (ans.status == 200).then(|| ans.json())
    }

    /// `GET /api/procs/{id}`.
    pub fn proc(&self, id: ProcId) -> ProcDetail {
        let ans = self.request("GET", &format!("/api/procs/{id}"), None);
        assert_eq!(ans.status, 200, "GET process {id}: {}", ans.text());
        ans.json()
    }

    /// The process's whole log as the master holds it.
    pub fn log(&self, id: ProcId) -> String {
        let ans = self.request("GET", &format!("/api/procs/{id}/logfile"), None);
        assert_eq!(ans.status, 200, "GET log of {id}: {}", ans.text());
        ans.text()
    }

    /// `DELETE /api/procs/{id}`; returns the status.
    pub fn kill(&self, id: ProcId) -> Answer {
        self.request("DELETE", &format!("/api/procs/{id}"), None)
    }

    /// Stores `data` at `/files/{path}`.
    pub fn put_file(&self, path: &str, data: &[u8]) {
        let ans = self.request(
            "PUT",
            &format!("/files/{path}"),
            Some(("application/octet-stream", data)),
        );
        assert_eq!(ans.status, 201, "PUT /files/{path}: {}", ans.text());
    }

    /// Waits until process `id` satisfies `done` (the master may be down
    /// meanwhile); returns what it last looked like.
    pub fn wait_proc(
        &self,
        id: ProcId,
        what: &str,
        deadline: Duration,
        mut done: impl FnMut(&ProcDetail) -> bool,
    ) -> ProcDetail {
        wait_for(&format!("process {id}: {what}"), deadline, || {
            self.try_proc(id).filter(|p| done(p))
        })
    }

    /// Waits until process `id` is in `state`.
    pub fn wait_state(&self, id: ProcId, state: ProcState, deadline: Duration) -> ProcDetail {
        self.wait_proc(id, &format!("state {state}"), deadline, |p| {
            p.summary.state == state
        })
    }

    /// Waits until process `id` is in a final state.
    pub fn wait_final(&self, id: ProcId, deadline: Duration) -> ProcDetail {
        self.wait_proc(id, "a final state", deadline, |p| {
            p.summary.state.is_final()
        })
    }
}

/// How a cluster is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workers started with the cluster.
    pub workers: usize,
    /// The master's `liveness.host_ttl_secs`.
    pub host_ttl_secs: f64,
    /// Runners each worker may run at once.
    pub max_procs: u32,
    /// More master settings (TOML sections the base config lacks, like `[store]`).
    pub master_toml: String,
    /// `RUST_LOG` of the daemons; it must let the "listening" lines through.
    pub rust_log: String,
    /// Masters started on the same store, each on its own port with its
    /// own state dir (the first is [`Cluster::master`]).
    pub masters: usize,
    /// More `[dispatch]` keys for every master (`lease_secs = 2`).
    pub dispatch_toml: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 2,
            host_ttl_secs: 5.0,
            max_procs: 8,
            master_toml: String::new(),
            rust_log: "info".to_owned(),
            masters: 1,
            dispatch_toml: String::new(),
        }
    }
}

/// The real `dadd-master`, restartable on the same address and store.
#[derive(Debug)]
pub struct Master {
    /// Its name in the test (`master`, `master2`, …): its config, state dir
    /// and logs are named after it.
    pub name: String,
    child: Option<ChildGuard>,
    addr: Option<SocketAddr>,
    config: PathBuf,
    dir: PathBuf,
    starts: usize,
    rust_log: String,
}

impl Master {
    fn new(name: &str, dir: &Path, db: &Db, opts: &Options, webhook: &str) -> Self {
        let state = dir.join(name);
        std::fs::create_dir_all(&state).expect("master state dir");
        let config = dir.join(format!("{name}.toml"));
        let toml = format!(
            r#"bind = "127.0.0.1:0"
state_dir = "{state}"
database_url = "{db}"
http_workers = 2
log_format = "json"

[auth]
api_tokens = ["{API_TOKEN}"]
cluster_secret = "{CLUSTER_SECRET}"

[dispatch]
tick_secs = 0.5
host_backoff_secs = 0.5
{dispatch}
[liveness]
host_ttl_secs = {ttl:.3}
check_interval_secs = 0.2
missed_heartbeats = 2

[notify]
webhook_url = "{webhook}"
webhook_backoff_secs = 0.2
webhook_timeout_secs = 5.0

{extra}
"#,
            state = state.display(),
            db = db.url,
            ttl = opts.host_ttl_secs,
            dispatch = opts.dispatch_toml,
            extra = opts.master_toml,
        );
        std::fs::write(&config, toml).expect("write the master's config");
        Self {
            name: name.to_owned(),
            child: None,
            addr: None,
            config,
            dir: dir.to_path_buf(),
            starts: 0,
            rust_log: opts.rust_log.clone(),
        }
    }

    /// The command for its next start, and the log file it writes.
    fn command(&mut self) -> (Command, PathBuf) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        let (out, err) = log_files(&log);
        let mut cmd = clean_command(&bin("dadd-master"), &self.rust_log);
        cmd.arg("--config").arg(&self.config);
        if let Some(addr) = self.addr {
            cmd.arg("--bind").arg(addr.to_string());
        }
        cmd.stdout(out).stderr(err);
        (cmd, log)
    }

    /// Starts it (on its old address when restarted) and waits until it answers.
    pub fn start(&mut self) {
        let (mut cmd, log) = self.command();
        let mut child = ChildGuard::new(cmd.spawn().expect("dadd-master starts"));
        let what = format!("dadd-master {}", self.name);
        let addr = wait_listening(&what, &log, "dadd-master listening", &mut child);
        self.addr = Some(addr);
        self.child = Some(child);
        let api = self.api();
        wait_until("the master to answer /api/health", START_DEADLINE, || {
            api.try_request("GET", "/api/health", None)
                .is_ok_and(|a| a.status == 200)
        });
    }

    /// Starts it where it is expected to refuse to run: waits until it
    /// exits (at most `deadline`) and returns its status and log. Fails
    /// the test if it starts listening instead (it is killed then).
    pub fn start_expecting_exit(&mut self, deadline: Duration) -> (ExitStatus, String) {
        let (mut cmd, log) = self.command();
        let mut child = ChildGuard::new(cmd.spawn().expect("dadd-master starts"));
        let status = super::wait::wait_for(
            &format!("dadd-master {} to exit", self.name),
            deadline,
            || {
                let status = child.try_wait();
                if status.is_none() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(
                        !text.contains("dadd-master listening"),
                        "dadd-master {} started listening instead of refusing:\n{text}",
                        self.name
                    );
                }
                status
            },
        );
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// Gives it a free loopback port before its first start, so that
    /// workers can be given its URL before it runs.
    pub fn reserve_address(&mut self) {
        assert!(self.addr.is_none(), "{} has its address already", self.name);
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        self.addr = Some(probe.local_addr().expect("a bound address"));
    }

    /// Stops it with `sig` and waits until it has exited.
    pub fn stop(&mut self, sig: Signal) {
        let mut child = self.child.take().expect("the master is running");
        child.signal(sig);
        child.wait(Duration::from_secs(20));
    }

    /// Whether it is running (started and not stopped by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `sig` to it (`SIGSTOP` makes a hung master: it accepts
    /// connections and answers nothing until `SIGCONT`).
    pub fn signal(&self, sig: Signal) {
        self.child
            .as_ref()
            .expect("the master is running")
            .signal(sig);
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("the master has started"))
    }

    /// Its pid (0 while stopped).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }

    /// A client with the API token.
    pub fn api(&self) -> Api {
        Api::new(&self.url(), API_TOKEN)
    }

    /// Every log line it wrote so far (all starts).
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("{}-{i}.log", self.name)))
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// The real `dadd-worker`, restartable on the same address and work root.
#[derive(Debug)]
pub struct Worker {
    /// Its name in the test (`w1`).
    pub name: String,
    /// The directory of its runners' working dirs.
    pub work_root: PathBuf,
    child: Option<ChildGuard>,
    addr: Option<SocketAddr>,
    master: String,
    dir: PathBuf,
    max_procs: u32,
    starts: usize,
    rust_log: String,
}

impl Worker {
    fn new(name: &str, dir: &Path, master: &str, max_procs: u32, rust_log: &str) -> Self {
        let work_root = dir.join(format!("{name}-work"));
        std::fs::create_dir_all(&work_root).expect("work root");
        Self {
            name: name.to_owned(),
            work_root,
            child: None,
            addr: None,
            master: master.to_owned(),
            dir: dir.to_path_buf(),
            max_procs,
            starts: 0,
            rust_log: rust_log.to_owned(),
        }
    }

    /// Starts it (on its old address when restarted) and waits until its
    /// API answers. It registers with the master by itself.
    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "worker {} is already running",
            self.name
        );
        self.starts += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.starts));
        let (out, err) = log_files(&log);
        let bind = self
            .addr
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut cmd = clean_command(&bin("dadd-worker"), &self.rust_log);
        cmd.args([
            "--bind",
            &bind,
            "--master",
            &self.master,
            "--log-format",
            "json",
        ])
        .arg("--work-root")
        .arg(&self.work_root)
        .arg("--runner")
        .arg(bin("dadd-runner"))
        .args(["--max-procs", &self.max_procs.to_string()])
        .env("DADD_WORKER_CLUSTER_SECRET", CLUSTER_SECRET)
        .env(
            "DADD_WORKER_HEARTBEAT_INTERVAL_SECS",
            HEARTBEAT_SECS.to_string(),
        )
        .env("DADD_WORKER_HEARTBEAT_MAX_BACKOFF_SECS", "0.5")
        // For the runners it starts (the worker passes its environment on).
        .env(
            "DADD_RUNNER_PYTHON_CACHE_DIR",
            self.dir.join("python-cache"),
        )
        .env("DADD_RUNNER_GRACE_PERIOD", "3")
        .stdout(out)
        .stderr(err);
        let mut child = ChildGuard::new(cmd.spawn().expect("dadd-worker starts"));
        let addr = wait_listening(
            &format!("dadd-worker {}", self.name),
            &log,
            "worker listening",
            &mut child,
        );
        self.addr = Some(addr);
        self.child = Some(child);
        let up = format!("{}/up", self.url());
        let api = Api::new("", CLUSTER_SECRET);
        wait_until("the worker to answer /up", START_DEADLINE, || {
            api.try_request("GET", &up, None)
                .is_ok_and(|a| a.status == 200)
        });
    }

    /// `kill -9`, and waits until it is gone. Its runners are untouched.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the worker is running");
        child.signal(Signal::SIGKILL);
        child.wait(Duration::from_secs(10));
    }

    /// Its pid (0 while stopped).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }

    /// Sends `sig` to its daemon (`SIGSTOP` freezes it: it accepts
    /// connections but answers nothing until `SIGCONT`).
    pub fn signal(&self, sig: Signal) {
        self.child
            .as_ref()
            .expect("the worker is running")
            .signal(sig);
    }

    /// Whether its daemon is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `127.0.0.1:PORT`, as the master names the host.
    pub fn address(&self) -> String {
        self.addr.expect("the worker has started").to_string()
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    /// `GET /procs` on the worker: the runners it knows.
    pub fn procs(&self) -> Vec<WorkerProc> {
        let api = Api::new(&self.url(), CLUSTER_SECRET);
        let ans = api.request("GET", "/procs", None);
        assert_eq!(ans.status, 200, "GET /procs: {}", ans.text());
        ans.json()
    }

    /// The working dirs under its work root.
    pub fn working_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.work_root)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Every log line it wrote so far (all starts).
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("{}-{i}.log", self.name)))
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The daemon first, so it starts nothing more.
        drop(self.child.take());
        reap_runners(&self.work_root);
    }
}

/// Kills every runner still alive under `work_root`, and its command's
/// process group (what a failed test leaves behind).
pub fn reap_runners(work_root: &Path) {
    let Ok(dirs) = std::fs::read_dir(work_root) else {
        return;
    };
    for dir in dirs.filter_map(Result::ok).map(|e| e.path()) {
        let from_state = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("runner_pid")?.as_i64());
        let from_pid = std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok());
        if let Some(pid) = from_state.or(from_pid).and_then(|p| i32::try_from(p).ok()) {
            // The guard's drop kills the command's group and the runner.
            drop(DaemonGuard::new(pid, &dir));
        }
    }
}

/// A master (or several on one store), its workers and a webhook sink,
/// all torn down on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The workers (`w1`, `w2`, …), not started when `Options::workers` is 0.
    pub workers: Vec<Worker>,
    /// The master (the first one when there are several).
    pub master: Master,
    /// The other masters on the same store (`master2`, `master3`, …).
    pub more_masters: Vec<Master>,
    /// Receives every master's notifications (`POST /hook`).
    pub webhook: Server,
    opts: Options,
    db: Db,
    /// The test's temp dir (daemon logs, store, work roots).
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a master on `backend` and `opts.workers` workers, and waits
    /// until every worker is registered and up. `None` for Postgres when
    /// no server is configured.
    pub fn start(backend: Backend, opts: Options) -> Option<Cluster> {
        let dir = tempfile::Builder::new()
            .prefix("dadd-e2e-cluster-")
            .tempdir()
            .expect("tempdir");
        let Some(db) = Db::new(backend, dir.path()) else {
            eprintln!("DADD_TEST_POSTGRES_URL is not set: the Postgres run is skipped");
            return None;
        };
        let webhook = Server::start(|_| Response::ok("ok"));
        let mut master = Master::new("master", dir.path(), &db, &opts, &webhook.url("/hook"));
        master.start();
        let mut cluster = Cluster {
            workers: Vec::new(),
            master,
            more_masters: Vec::new(),
            webhook,
            opts: opts.clone(),
            db,
            dir,
        };
        for _ in 1..opts.masters {
            let i = cluster.add_master();
            cluster.master_mut(i).start();
        }
        for _ in 0..opts.workers {
            cluster.add_worker(opts.max_procs);
        }
        for i in 0..cluster.workers.len() {
            cluster.wait_host_up(i);
        }
        Some(cluster)
    }

    /// Adds another master on the cluster's store, with the same settings
    /// and webhook, not started; returns its index for [`Cluster::master_at`]
    /// (the first master is 0).
    pub fn add_master(&mut self) -> usize {
        let name = format!("master{}", self.more_masters.len() + 2);
        let m = Master::new(
            &name,
            self.dir.path(),
            &self.db,
            &self.opts,
            &self.webhook.url("/hook"),
        );
        self.more_masters.push(m);
        self.more_masters.len()
    }

    /// How many masters the cluster has (started or not).
    pub fn master_count(&self) -> usize {
        1 + self.more_masters.len()
    }

    /// Master `i` (0 is [`Cluster::master`]).
    pub fn master_at(&self, i: usize) -> &Master {
        match i {
            0 => &self.master,
            i => &self.more_masters[i - 1],
        }
    }

    /// Master `i`, to start or stop it.
    pub fn master_mut(&mut self, i: usize) -> &mut Master {
        match i {
            0 => &mut self.master,
            i => &mut self.more_masters[i - 1],
        }
    }

    /// Every started master's URL (and those with a reserved address), in
    /// order: the list workers get.
    pub fn master_urls(&self) -> Vec<String> {
        (0..self.master_count())
            .map(|i| self.master_at(i))
            .filter(|m| m.addr.is_some())
            .map(Master::url)
            .collect()
    }

    /// A client of master `i` with the API token.
    pub fn api_at(&self, i: usize) -> Api {
        self.master_at(i).api()
    }

    /// Adds and starts a worker given every master's URL (not waiting for
    /// its registration).
    pub fn add_worker(&mut self, max_procs: u32) -> usize {
        let masters = self.master_urls().join(",");
        self.add_worker_with(max_procs, &masters)
    }

    /// Adds and starts a worker given `masters` as its `--master` (one URL
    /// or a comma-separated list), not waiting for its registration.
    pub fn add_worker_with(&mut self, max_procs: u32, masters: &str) -> usize {
        let name = format!("w{}", self.workers.len() + 1);
        let mut w = Worker::new(
            &name,
            self.dir.path(),
            masters,
            max_procs,
            &self.master.rust_log,
        );
        w.start();
        self.workers.push(w);
        self.workers.len() - 1
    }

    /// A client of the master with the API token.
    pub fn api(&self) -> Api {
        self.master.api()
    }

    /// Waits until the master lists worker `i` as up.
    pub fn wait_host_up(&self, i: usize) {
        self.wait_host_up_on(&self.api(), i);
    }

    /// Waits until the master behind `api` lists worker `i` as up.
    pub fn wait_host_up_on(&self, api: &Api, i: usize) {
        let address = self.workers[i].address();
        wait_until(
            &format!("the master to list worker {address} as up"),
            START_DEADLINE,
            || {
                api.try_request("GET", "/api/hosts", None)
                    .ok()
                    .filter(|a| a.status == 200)
                    .map(|a| a.json::<Vec<dadd_spec::api::HostInfo>>())
                    .is_some_and(|hosts| {
                        hosts.iter().any(|h| {
                            h.address == address && h.status == dadd_spec::api::HostStatus::Up
                        })
                    })
            },
        );
    }

    /// The index of the worker the master placed process `p` on.
    pub fn worker_of(&self, p: &ProcDetail) -> usize {
        let host = p
            .summary
            .host
            .as_deref()
            .unwrap_or_else(|| panic!("process {} has no host yet", p.summary.id));
        self.workers
            .iter()
            .position(|w| w.addr.is_some_and(|a| a.to_string() == host))
            .unwrap_or_else(|| {
                panic!(
                    "process {} is on {host}, not one of the workers",
                    p.summary.id
                )
            })
    }

    /// `dadd` with `--master` and `--token` for this cluster.
    pub fn dadd(&self) -> Command {
        self.dadd_with(&self.master.url())
    }

    /// `dadd` with `--master MASTERS` (one URL or a comma-separated list)
    /// and `--token`.
    pub fn dadd_with(&self, masters: &str) -> Command {
        let mut cmd = self.dadd_token_only();
        cmd.args(["--master", masters]);
        cmd
    }

    /// `dadd` with `--token` only: the master comes from `DADD_MASTER_URL`
    /// when the test sets it.
    pub fn dadd_token_only(&self) -> Command {
        let mut cmd = clean_command(&bin("dadd"), "warn");
        cmd.args(["--token", API_TOKEN]);
        cmd
    }

    /// The notices the webhook received (their JSON bodies).
    pub fn notices(&self) -> Vec<Value> {
        self.webhook
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path() == "/hook")
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }

    /// Waits for a notice about process `id` in `state`.
    pub fn wait_notice(&self, id: ProcId, state: ProcState, deadline: Duration) -> Value {
        wait_for(
            &format!("a webhook notice of process {id} {state}"),
            deadline,
            || {
                self.notices().into_iter().find(|n| {
                    n.get("id").and_then(Value::as_i64) == Some(id)
                        && n.get("state").and_then(Value::as_str) == Some(state.as_str())
                })
            },
        )
    }

    /// Every daemon's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = format!("--- master\n{}", self.master.logs());
        for m in &self.more_masters {
            out.push_str(&format!("--- {}\n{}", m.name, m.logs()));
        }
        for w in &self.workers {
            out.push_str(&format!("--- worker {}\n{}", w.name, w.logs()));
        }
        out
    }

    /// The store's URL (to restart a master on it).
    pub fn database_url(&self) -> &str {
        &self.db.url
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Workers and their runners, then the masters; the schema last
        // (fields drop in declaration order after this).
        self.workers.clear();
        if let Some(child) = self.master.child.take() {
            drop(child);
        }
        for m in &mut self.more_masters {
            drop(m.child.take());
        }
    }
}
