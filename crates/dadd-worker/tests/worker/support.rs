//! Test support: a fake master (a small actix app on port 0 that records
//! heartbeats, state reports and log chunks), a stand-in runner script that
//! keeps the runner's contract, the worker run in-process or as the real
//! binary, and guards that kill everything a test started.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use dadd_spec::api::{HostHeartbeat, RunEnvelope, StateReport};
use dadd_worker::config::{Config, Secret};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) const SECRET: &str = "test-cluster-secret";

/// One heartbeat as received.
#[derive(Debug, Clone)]
pub(crate) struct Beat {
    pub(crate) auth: Option<String>,
    pub(crate) beat: HostHeartbeat,
}

#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub(crate) beats: Vec<Beat>,
    pub(crate) reports: Vec<(i64, StateReport)>,
    pub(crate) logs: HashMap<i64, Vec<u8>>,
    /// Every log chunk as received: process id, offset, length.
    pub(crate) chunks: Vec<(i64, u64, usize)>,
    /// The `Authorization` header of every call about a process.
    pub(crate) proc_auths: Vec<(i64, Option<String>)>,
    /// When set, every call about a process is answered with this status.
    pub(crate) refuse_procs: Option<u16>,
    /// Calls answered with `refuse_procs`.
    pub(crate) refused: usize,
}

fn auth_of(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Records a call about process `id`; answers the refusal to send, if any.
fn proc_call(seen: &mut Recorded, id: i64, req: &HttpRequest) -> Option<HttpResponse> {
    seen.proc_auths.push((id, auth_of(req)));
    let status = seen.refuse_procs?;
    seen.refused += 1;
    let status = actix_web::http::StatusCode::from_u16(status).expect("a status");
    Some(HttpResponse::build(status).json(serde_json::json!({"error": "refused by the test"})))
}

/// A master that records what workers and runners send it.
pub(crate) struct FakeMaster {
    pub(crate) url: String,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) seen: Arc<Mutex<Recorded>>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeMaster {
    /// Starts on a free loopback port (or `addr`) in the current actix system.
    pub(crate) async fn start_on(addr: &str) -> FakeMaster {
        Self::start_with(addr, None).await
    }

    /// Starts with TLS on the listener.
    pub(crate) async fn start_with(addr: &str, tls: Option<rustls::ServerConfig>) -> FakeMaster {
        Self::start_seeded(addr, tls, Recorded::default()).await
    }

    /// Starts holding `seen` already (a log part, a refusal), so that no
    /// call finds it without.
    pub(crate) async fn start_seeded(
        addr: &str,
        tls: Option<rustls::ServerConfig>,
        seen: Recorded,
    ) -> FakeMaster {
        let seen = Arc::new(Mutex::new(seen));
        let data = web::Data::new(seen.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 << 20))
                .route("/api/hosts", web::post().to(hosts))
                .route("/api/procs/{id}/state", web::put().to(state))
                .route("/api/procs/{id}/logfile", web::put().to(log_chunk))
                .route("/api/procs/{id}/logfile", web::post().to(log_whole))
        })
        .workers(1)
        .disable_signals();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = match tls {
            Some(tls) => server.bind_rustls_0_23(addr, tls),
            None => server.bind(addr),
        }
        .expect("the fake master binds");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        FakeMaster {
            url: format!("{scheme}://{addr}"),
            addr,
            seen,
            handle,
        }
    }

    pub(crate) async fn start() -> FakeMaster {
        Self::start_on("127.0.0.1:0").await
    }

    pub(crate) async fn stop(&self) {
        self.handle.stop(false).await;
    }

    pub(crate) fn beats(&self) -> Vec<Beat> {
        self.seen.lock().expect("lock").beats.clone()
    }

    pub(crate) fn reports(&self, id: i64) -> Vec<StateReport> {
        self.seen
            .lock()
            .expect("lock")
            .reports
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Whether a heartbeat since `after` beats listed `id` as running.
    pub(crate) fn listed(&self, id: i64, after: usize) -> bool {
        self.beats()
            .iter()
            .skip(after)
            .any(|b| b.beat.running.contains(&id))
    }
}

async fn hosts(
    seen: web::Data<Arc<Mutex<Recorded>>>,
    req: HttpRequest,
    beat: web::Json<HostHeartbeat>,
) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let beat = beat.into_inner();
    let address = format!("{}:{}", beat.host, beat.port);
    let info = serde_json::json!({
        "id": 1,
        "address": address,
        "url": format!("{}://{}", beat.scheme, address),
        "status": "up",
        "max_procs": beat.max_procs,
        "running": beat.running.len(),
        "version": beat.version,
        "last_heartbeat": chrono::Utc::now(),
        "registered_at": chrono::Utc::now(),
    });
    seen.lock().expect("lock").beats.push(Beat { auth, beat });
    HttpResponse::Ok().json(info)
}

async fn state(
    seen: web::Data<Arc<Mutex<Recorded>>>,
    req: HttpRequest,
    path: web::Path<i64>,
    report: web::Json<StateReport>,
) -> HttpResponse {
    let id = path.into_inner();
    if let Some(refusal) = proc_call(&mut seen.lock().expect("lock"), id, &req) {
        return refusal;
    }
    let report = report.into_inner();
    let body = serde_json::json!({
        "id": id,
        "state": report.state,
        "cmd": [],
        "created_at": chrono::Utc::now(),
    });
    seen.lock().expect("lock").reports.push((id, report));
    HttpResponse::Ok().json(body)
}

#[derive(serde::Deserialize)]
struct Offset {
    offset: u64,
}

async fn log_chunk(
    seen: web::Data<Arc<Mutex<Recorded>>>,
    req: HttpRequest,
    path: web::Path<i64>,
    q: web::Query<Offset>,
    body: web::Bytes,
) -> HttpResponse {
    let id = path.into_inner();
    let mut seen = seen.lock().expect("lock");
    if let Some(refusal) = proc_call(&mut seen, id, &req) {
        return refusal;
    }
    seen.chunks.push((id, q.offset, body.len()));
    let log = seen.logs.entry(id).or_default();
    let offset = usize::try_from(q.offset).expect("offset fits");
    if offset > log.len() {
        return HttpResponse::Conflict().json(serde_json::json!({
            "error": "gap", "expected_offset": log.len()
        }));
    }
    let end = offset + body.len();
    if end > log.len() {
        log.truncate(offset);
        log.extend_from_slice(&body);
    }
    HttpResponse::Ok().json(serde_json::json!({"offset": log.len()}))
}

async fn log_whole(
    seen: web::Data<Arc<Mutex<Recorded>>>,
    path: web::Path<i64>,
    body: web::Bytes,
) -> HttpResponse {
    seen.lock()
        .expect("lock")
        .logs
        .insert(path.into_inner(), body.to_vec());
    HttpResponse::Ok().json(serde_json::json!({"offset": body.len()}))
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

/// Writes an executable script.
pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// A test's temp dir, with a work root that is cleaned of runners on drop.
pub(crate) struct Sandbox {
    pub(crate) dir: tempfile::TempDir,
}

impl Sandbox {
    pub(crate) fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("work")).expect("work root");
        Sandbox { dir }
    }

    pub(crate) fn work_root(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub(crate) fn fake_runner(&self) -> PathBuf {
        script(self.dir.path(), "fake-runner", dadd_tests::STAND_IN_RUNNER)
    }

    /// A worker config on port 0 with the test secret.
    pub(crate) fn config(&self, master: &str, runner: &Path, max_procs: u32) -> Config {
        Config {
            bind: "127.0.0.1:0".parse().expect("addr"),
            master: master.to_owned(),
            work_root: Some(self.work_root()),
            max_procs: Some(max_procs),
            runner: Some(runner.to_path_buf()),
            cluster_secret: Some(Secret(SECRET.to_owned())),
            heartbeat_interval_secs: 0.2,
            heartbeat_max_backoff_secs: 0.5,
            ..Config::default()
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Kill every runner (and its command's group) still alive in the work root.
        for e in dadd_worker::workroot::scan(&self.work_root()) {
            if !e.alive() {
                continue;
            }
            if let Some(r) = &e.record {
                if let Some(cmd) = r.command_pid {
                    let _ = kill(Pid::from_raw(-cmd), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(cmd), Signal::SIGKILL);
                }
            }
            if let Some(pid) = e.runner_pid() {
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

pub(crate) fn envelope(id: i64, master: &str, spec: serde_json::Value) -> RunEnvelope {
    RunEnvelope {
        fallback_urls: Vec::new(),
        process_id: id,
        token: format!("token-of-{id}"),
        master_url: master.to_owned(),
        spec,
    }
}

/// A plain HTTP client for the worker's API.
pub(crate) fn http() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// POST /run; answers (status, JSON body).
pub(crate) async fn post_run(
    worker: &str,
    secret: Option<&str>,
    env: &RunEnvelope,
) -> (u16, serde_json::Value) {
    let mut req = http().post(format!("{worker}/run"));
    if let Some(s) = secret {
        req = req.bearer_auth(s);
    }
    let mut resp = req.send_json(env).await.expect("the worker answers /run");
    let body = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// GET a JSON document.
pub(crate) async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let mut resp = http().get(url).send().await.expect("the worker answers");
    let body = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// DELETE /procs/{id}.
pub(crate) async fn delete_proc(
    worker: &str,
    secret: Option<&str>,
    id: i64,
) -> (u16, serde_json::Value) {
    let mut req = http().delete(format!("{worker}/procs/{id}"));
    if let Some(s) = secret {
        req = req.bearer_auth(s);
    }
    let mut resp = req.send().await.expect("the worker answers DELETE");
    let body = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Whether `pid` is alive (not a zombie).
pub(crate) fn alive(pid: i32) -> bool {
    dadd_worker::procfs::start_ticks(pid).is_some()
}

/// Whether any process is in process group `pgid`.
pub(crate) fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let Some(close) = stat.rfind(')') else {
            return false;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // fields[0] is the state, fields[2] the process group.
        fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
    })
}

/// The real `dadd-worker` binary, killed on drop.
pub(crate) struct WorkerProcess {
    pub(crate) child: std::process::Child,
    pub(crate) url: String,
    pub(crate) stderr: PathBuf,
}

impl WorkerProcess {
    /// Starts the binary with `config` (written as TOML) and waits for `/up`.
    pub(crate) async fn start(sandbox: &Sandbox, config: &Config, name: &str) -> WorkerProcess {
        Self::start_edited(sandbox, config, name, |_| {}).await
    }

    /// Starts the binary with `config` as TOML, changed by `edit` first
    /// (for what `Config` does not write, like `master` as an array).
    pub(crate) async fn start_edited(
        sandbox: &Sandbox,
        config: &Config,
        name: &str,
        edit: impl FnOnce(&mut toml::Table),
    ) -> WorkerProcess {
        let port = free_port();
        let mut config = config.clone();
        config.bind = format!("127.0.0.1:{port}").parse().expect("addr");
        let file = sandbox.dir.path().join(format!("{name}.toml"));
        let mut table = toml::Table::try_from(&config).expect("toml");
        edit(&mut table);
        std::fs::write(&file, toml::to_string(&table).expect("toml")).expect("write config");
        let stderr = sandbox.dir.path().join(format!("{name}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_dadd-worker"))
            .arg("--config")
            .arg(&file)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("log file"))
            .spawn()
            .expect("dadd-worker starts");
        let w = WorkerProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            stderr,
        };
        let up = format!("{}/up", w.url);
        wait_for(20, "the worker binary to answer /up", || {
            let up = up.clone();
            async move { matches!(http().get(&up).send().await, Ok(r) if r.status().is_success()) }
        })
        .await;
        w
    }

    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `kill -9`, and reap it.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `dadd-runner` binary of this workspace, built first (a no-op when up
/// to date: `cargo test` does not build other packages' binaries).
pub(crate) fn real_runner() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_real_runner).clone()
}

fn build_real_runner() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_dadd-worker"));
    let dir = worker.parent().expect("a target dir").to_path_buf();
    dadd_tests::cargo(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &["build", "--bins", "-p", "dadd-runner"],
    );
    let runner = dir.join("dadd-runner");
    assert!(runner.is_file(), "no {}", runner.display());
    runner
}
