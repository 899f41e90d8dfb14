//! Several masters on one Postgres: placements per second with one, two and
//! three masters, and submit → placement latency through a master other
//! than the one that placed the process. Each master runs on its own thread
//! with its own runtime (as separate processes would), all against one fresh
//! schema; fake workers answer `/run` at once and record which master sent
//! each envelope, so the bench also checks that no process is sent twice.
//!
//! Run: `DADD_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo bench -p dadd-master --bench masters`. `DADD_BENCH_MASTERS=1,2,3`
//! picks the counts, `DADD_BENCH_PLACEMENTS` (3,000) the burst,
//! `DADD_BENCH_LATENCY` (400) the one-at-a-time submissions.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use dadd_master::Config;
use dadd_spec::api::{HostHeartbeat, RunEnvelope, RunStarted};
use futures_util::future::join_all;
use support::{env_usize, percentile, PgSchema};

/// What the fake workers saw: per process, each arrival and its master.
#[derive(Default)]
struct Seen {
    runs: HashMap<i64, Vec<(Instant, String)>>,
}

type Shared = Arc<Mutex<Seen>>;

async fn fake_worker(seen: Shared) -> (SocketAddr, actix_web::dev::ServerHandle) {
    let server = HttpServer::new(move || {
        let seen = Arc::clone(&seen);
        App::new().route(
            "/run",
            web::post().to(move |env: web::Json<RunEnvelope>| {
                let seen = Arc::clone(&seen);
                async move {
                    let created = {
                        let mut s = seen.lock().expect("seen");
                        let runs = s.runs.entry(env.process_id).or_default();
                        runs.push((Instant::now(), env.master_url.clone()));
                        runs.len() == 1
                    };
                    let started = RunStarted {
                        pid: 1,
                        directory: "/tmp".into(),
                    };
                    if created {
                        HttpResponse::Created().json(started)
                    } else {
                        HttpResponse::Ok().json(started)
                    }
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .backlog(4096)
    .bind("127.0.0.1:0")
    .expect("fake worker binds");
    let addr = server.addrs()[0];
    let server = server.run();
    let h = server.handle();
    actix_rt::spawn(server);
    (addr, h)
}

/// A master on a thread of its own; dropping the sender stops it.
struct MasterThread {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MasterThread {
    fn start(dir: &std::path::Path, db: &str) -> MasterThread {
        let mut cfg = Config {
            bind: "127.0.0.1:0".into(),
            state_dir: dir.to_owned(),
            database_url: Some(db.to_owned()),
            http_workers: 1,
            ..Config::default()
        };
        cfg.limits.request_timeout_secs = 120.0;
        cfg.store.max_connections = 8;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let m = dadd_master::start(cfg).await.expect("master starts");
                tx.send(format!("http://{}", m.addr())).expect("url");
                let _ = stopped.await;
                m.stop().await;
            });
        });
        let url = rx.recv().expect("master started");
        MasterThread {
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for MasterThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn submit(client: &awc::Client, base: &str, spec: &serde_json::Value) -> i64 {
    let mut r = client
        .post(format!("{base}/api/procs"))
        .send_json(spec)
        .await
        .expect("submit");
    assert_eq!(r.status().as_u16(), 201, "submit refused");
    let v: serde_json::Value = r.json().await.expect("answer");
    v["id"].as_i64().expect("id")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn bench(base_url: &str, masters: usize, placements: usize, latency_n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = PgSchema::create(base_url)
        .await
        .expect("Postgres reachable");
    let db = schema.url.clone();
    let ms_list: Vec<MasterThread> = (0..masters)
        .map(|i| {
            let d = dir.path().join(format!("m{i}"));
            MasterThread::start(&d, &db)
        })
        .collect();
    let urls: Vec<String> = ms_list.iter().map(|m| m.url.clone()).collect();
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(256))
        .timeout(Duration::from_secs(60))
        .finish();
    let spec = serde_json::json!({"cmd": "python -m job $APP_SETTINGS", "config": {"n": 1}});

    // 1. A burst queued through every master in turn, then hosts appear.
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut subs = Vec::with_capacity(placements);
    for i in 0..placements {
        let permit = Arc::clone(&sem).acquire_owned().await.expect("permit");
        let (c, u, s) = (client.clone(), urls[i % masters].clone(), spec.clone());
        subs.push(actix_rt::spawn(async move {
            submit(&c, &u, &s).await;
            drop(permit);
        }));
    }
    join_all(subs).await;
    let seen: Shared = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(fake_worker(Arc::clone(&seen)).await);
    }
    let t = Instant::now();
    for (i, (addr, _)) in workers.iter().enumerate() {
        let hb = HostHeartbeat {
            host: "127.0.0.1".into(),
            port: addr.port(),
            max_procs: 1_000_000,
            version: "bench".into(),
            running: Vec::new(),
            scheme: "http".into(),
        };
        let mut r = client
            .post(format!("{}/api/hosts", urls[i % masters]))
            .send_json(&hb)
            .await
            .expect("heartbeat");
        assert!(r.status().is_success());
        let _ = r.body().await;
    }
    loop {
        let n = seen.lock().expect("seen").runs.len();
        if n >= placements {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "placements stalled at {n}"
        );
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = placements as f64 / t.elapsed().as_secs_f64();
    let (twice, by_master) = {
        let s = seen.lock().expect("seen");
        let twice = s.runs.values().filter(|r| r.len() > 1).count();
        let mut by: HashMap<String, usize> = HashMap::new();
        for r in s.runs.values() {
            *by.entry(r[0].1.clone()).or_default() += 1;
        }
        (twice, by)
    };
    let split: Vec<String> = urls
        .iter()
        .map(|u| by_master.get(u).copied().unwrap_or(0).to_string())
        .collect();
    println!(
        "{masters} master(s): {placements} placements: {rate:.0}/s (placed per master: {}; sent twice: {twice})",
        split.join(" / ")
    );
    assert_eq!(twice, 0, "a process was sent twice");

    // 2. One at a time through the last master: submit → /run arrival.
    let target = &urls[masters - 1];
    let mut sent = Vec::with_capacity(latency_n);
    for _ in 0..latency_n {
        let t0 = Instant::now();
        let id = submit(&client, target, &spec).await;
        sent.push((id, t0));
        // Wait for it, so each measure starts from an idle cluster.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.lock().expect("seen").runs.contains_key(&id) {
            assert!(Instant::now() < deadline, "process {id} never placed");
            actix_rt::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let (mut other, mut same) = (Vec::new(), Vec::new());
    {
        let s = seen.lock().expect("seen");
        for (id, t0) in &sent {
            let (at, by) = &s.runs[id][0];
            let d = at.saturating_duration_since(*t0);
            if by == target {
                same.push(d);
            } else {
                other.push(d);
            }
        }
    }
    for (label, mut v) in [
        ("placed by another master", other),
        ("placed by the same master", same),
    ] {
        if v.is_empty() {
            continue;
        }
        v.sort();
        println!(
            "  submit → /run, {label}: {} of {latency_n}, p50 {:.1} ms, p99 {:.1} ms",
            v.len(),
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99))
        );
    }
    for (_, h) in workers {
        h.stop(false).await;
    }
    drop(ms_list);
    schema.drop().await;
}

fn main() {
    let Ok(base) = std::env::var("DADD_TEST_POSTGRES_URL") else {
        println!("skipped: set DADD_TEST_POSTGRES_URL (several masters need Postgres)");
        return;
    };
    let counts: Vec<usize> = std::env::var("DADD_BENCH_MASTERS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    let placements = env_usize("DADD_BENCH_PLACEMENTS", 3000);
    let latency_n = env_usize("DADD_BENCH_LATENCY", 400).max(1);
    actix_rt::System::new().block_on(async {
        for n in counts {
            bench(&base, n, placements, latency_n).await;
        }
    });
}
