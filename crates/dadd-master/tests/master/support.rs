//! Test support: fresh stores, an in-process master, fake workers, waiting
//! with a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::http::StatusCode;
use dadd_master::{Config, MasterHandle};
use dadd_spec::api::{HostHeartbeat, HostInfo, ProcDetail, ProcSummary, RunEnvelope, RunStarted};
use serde_json::Value;
use tempfile::TempDir;

/// Runs a test on both stores (Postgres only when configured).
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[actix_web::test]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }
            #[actix_web::test]
            async fn postgres() {
                super::$name($crate::support::Backend::Postgres).await
            }
        }
    };
}

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database: a SQLite file in a temp dir, or a Postgres schema
/// dropped when the test ends.
pub struct TestDb {
    pub url: String,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// None when the backend is Postgres and no server is configured.
    pub async fn new(backend: Backend, dir: &Path) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!("sqlite://{}", dir.join("test.db").display()),
                pg: None,
            }),
            Backend::Postgres => {
                let base = std::env::var("DADD_TEST_POSTGRES_URL").ok()?;
                sqlx::any::install_default_drivers();
                let schema = format!("t_{}", dadd_master::auth::mint_token()[..16].to_owned());
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
                    .await
                    .expect("DADD_TEST_POSTGRES_URL is set but Postgres is unreachable");
                sqlx::Executor::execute(&mut conn, format!("CREATE SCHEMA {schema}").as_str())
                    .await
                    .expect("create test schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                Some(TestDb {
                    url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                    pg: Some((base, schema)),
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((base, schema)) = self.pg.take() {
            // Drop may run inside a runtime: do it on a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    if let Ok(mut c) =
                        <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await
                    {
                        let _ = sqlx::Executor::execute(
                            &mut c,
                            format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str(),
                        )
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A master running in-process.
pub struct TestMaster {
    pub handle: Option<MasterHandle>,
    pub url: String,
    pub token: Option<String>,
    pub client: awc::Client,
    pub dir: TempDir,
    _db: TestDb,
}

/// A config for tests: port 0, short intervals, one HTTP worker.
pub fn test_config(dir: &Path, db: &TestDb) -> Config {
    let mut cfg = Config {
        bind: "127.0.0.1:0".into(),
        state_dir: dir.to_owned(),
        database_url: Some(db.url.clone()),
        http_workers: 1,
        ..Config::default()
    };
    cfg.dispatch.tick_secs = 0.5;
    cfg.dispatch.host_backoff_secs = 0.3;
    cfg.dispatch.worker_timeout_secs = 3.0;
    cfg.liveness.check_interval_secs = 0.1;
    cfg.notify.webhook_backoff_secs = 0.05;
    cfg
}

impl TestMaster {
    /// Starts a master; None when the backend is not available.
    pub async fn start(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestMaster> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TestDb::new(backend, dir.path()).await?;
        let mut cfg = test_config(dir.path(), &db);
        tweak(&mut cfg);
        let token = cfg.auth.api_tokens.first().cloned();
        let handle = dadd_master::start(cfg).await.expect("master starts");
        let url = format!("http://{}", handle.addr());
        Some(TestMaster {
            handle: Some(handle),
            url,
            token,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(20))
                .finish(),
            dir,
            _db: db,
        })
    }

    pub fn req(&self, method: &str, path: &str) -> awc::ClientRequest {
        let m = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let r = self.client.request(m, format!("{}{path}", self.url));
        match &self.token {
            Some(t) => r.insert_header(("Authorization", format!("Bearer {t}"))),
            None => r,
        }
    }

    /// Sends JSON (or nothing) and reads a JSON answer.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let r = self.req(method, path);
        let mut resp = match body {
            Some(b) => r.send_json(&b).await,
            None => r.send().await,
        }
        .expect("request sent");
        let status = resp.status();
        let bytes = resp.body().limit(64 << 20).await.expect("body read");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, v)
    }

    pub async fn submit(&self, spec: Value) -> ProcSummary {
        let (s, v) = self.call("POST", "/api/procs", Some(spec)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        serde_json::from_value(v).expect("a ProcSummary")
    }

    pub async fn proc(&self, id: i64) -> ProcDetail {
        let (s, v) = self.call("GET", &format!("/api/procs/{id}"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).expect("a ProcDetail")
    }

    pub async fn report(&self, id: i64, body: Value) -> (StatusCode, Value) {
        self.call("PUT", &format!("/api/procs/{id}/state"), Some(body))
            .await
    }

    /// A heartbeat on behalf of a worker at `addr`.
    pub async fn heartbeat(
        &self,
        addr: SocketAddr,
        max_procs: u32,
        running: &[i64],
        secret: Option<&str>,
    ) -> (StatusCode, Value) {
        let hb = HostHeartbeat {
            host: addr.ip().to_string(),
            port: addr.port(),
            max_procs,
            version: "test".into(),
            running: running.to_vec(),
            scheme: "http".into(),
        };
        let mut r = self.client.post(format!("{}/api/hosts", self.url));
        if let Some(s) = secret {
            r = r.insert_header(("Authorization", format!("Bearer {s}")));
        }
        let mut resp = r.send_json(&hb).await.expect("heartbeat sent");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    pub async fn hosts(&self) -> Vec<HostInfo> {
        let (s, v) = self.call("GET", "/api/hosts", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        serde_json::from_value(v).expect("hosts")
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.stop().await;
        }
    }
}

/// How a fake worker answers `/run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    Full,
    Broken,
}

#[derive(Default)]
pub struct Seen {
    pub runs: Vec<RunEnvelope>,
    pub kills: Vec<i64>,
    pub auth: Vec<Option<String>>,
}

/// A fake worker: records what the master sends.
pub struct FakeWorker {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    pub mode: Arc<Mutex<Mode>>,
    handle: actix_web::dev::ServerHandle,
}

async fn fake_run(
    req: HttpRequest,
    body: web::Json<RunEnvelope>,
    seen: web::Data<Arc<Mutex<Seen>>>,
    mode: web::Data<Arc<Mutex<Mode>>>,
) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let m = *mode.lock().expect("mode");
    {
        let mut s = seen.lock().expect("seen");
        s.auth.push(auth);
        if m == Mode::Accept {
            s.runs.push(body.into_inner());
        }
    }
    match m {
        Mode::Accept => HttpResponse::Created().json(RunStarted {
            pid: 4242,
            directory: "/tmp/x".into(),
        }),
        Mode::Full => HttpResponse::ServiceUnavailable().json(serde_json::json!({"error": "full"})),
        Mode::Broken => HttpResponse::InternalServerError().finish(),
    }
}

async fn fake_kill(
    req: HttpRequest,
    path: web::Path<i64>,
    seen: web::Data<Arc<Mutex<Seen>>>,
) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut s = seen.lock().expect("seen");
    s.auth.push(auth);
    s.kills.push(path.into_inner());
    HttpResponse::Ok().json(serde_json::json!({"signalled": true}))
}

impl FakeWorker {
    pub async fn start(mode: Mode) -> FakeWorker {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let mode = Arc::new(Mutex::new(mode));
        let (s2, m2) = (Arc::clone(&seen), Arc::clone(&mode));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Arc::clone(&s2)))
                .app_data(web::Data::new(Arc::clone(&m2)))
                .route("/run", web::post().to(fake_run))
                .route("/procs/{id}", web::delete().to(fake_kill))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("fake worker binds");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        FakeWorker {
            addr,
            seen,
            mode,
            handle,
        }
    }

    pub fn runs(&self) -> Vec<RunEnvelope> {
        self.seen.lock().expect("seen").runs.clone()
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().expect("mode") = m;
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A loopback address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Polls `f` until it returns Some, or panics at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn spec(cmd: &str) -> Value {
    serde_json::json!({"cmd": cmd})
}

/// A store and state dir that outlive the masters started on them: a master
/// stopped, another started on the same store.
pub struct Kept {
    pub dir: TempDir,
    pub db: TestDb,
}

impl Kept {
    /// A fresh store; None when the backend is not available.
    pub async fn new(backend: Backend) -> Option<Kept> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TestDb::new(backend, dir.path()).await?;
        Some(Kept { dir, db })
    }
}

impl TestMaster {
    /// Starts a master on a kept store (it owns the store from now on).
    pub async fn start_on(kept: Kept, tweak: impl FnOnce(&mut Config)) -> TestMaster {
        let mut cfg = test_config(kept.dir.path(), &kept.db);
        tweak(&mut cfg);
        let token = cfg.auth.api_tokens.first().cloned();
        let handle = dadd_master::start(cfg).await.expect("master starts");
        let url = format!("http://{}", handle.addr());
        TestMaster {
            handle: Some(handle),
            url,
            token,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(20))
                .finish(),
            dir: kept.dir,
            _db: kept.db,
        }
    }

    /// Stops the master and hands back its store, for another master.
    pub async fn stop_keep_store(mut self) -> Kept {
        if let Some(h) = self.handle.take() {
            h.stop().await;
        }
        Kept {
            dir: self.dir,
            db: self._db,
        }
    }

    /// Another master on the same store, with its own state dir; stop it
    /// before this one (which owns the store).
    pub async fn sibling(&self, tweak: impl FnOnce(&mut Config)) -> TestMaster {
        let kept = Kept {
            dir: tempfile::tempdir().expect("tempdir"),
            db: TestDb {
                url: self._db.url.clone(),
                pg: None,
            },
        };
        TestMaster::start_on(kept, tweak).await
    }

    /// A counter of `/metrics`, e.g. `dadd_notifications_sent_total`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (s, v) = self.call("GET", "/metrics", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let text = v.as_str().expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }
}
