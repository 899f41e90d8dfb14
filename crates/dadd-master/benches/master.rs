//! Master benchmark: placements per second with fake workers that answer at
//! once, heartbeats per second, and `GET /api/procs` page latency with
//! 100,000 processes stored; on SQLite, and on Postgres when
//! `DADD_TEST_POSTGRES_URL` is set.
//!
//! Run: `cargo bench -p dadd-master` (release). `DADD_BENCH_PLACEMENTS`,
//! `DADD_BENCH_HEARTBEATS` and `DADD_BENCH_ROWS` change the sizes;
//! `DADD_BENCH_BACKENDS=sqlite` (or `postgres`) runs one store only, and
//! `DADD_BENCH_PLACEMENTS=0 DADD_BENCH_HEARTBEATS=0` only the list pages.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use dadd_master::Config;
use dadd_spec::api::{HostHeartbeat, RunStarted};
use futures_util::future::join_all;
use support::{env_usize, percentile, PgSchema};

/// A fresh database URL (and, for Postgres, the schema to drop after).
async fn database(backend: &str, dir: &std::path::Path) -> Option<(String, Option<PgSchema>)> {
    if backend == "sqlite" {
        return Some((format!("sqlite://{}", dir.join("bench.db").display()), None));
    }
    let base = std::env::var("DADD_TEST_POSTGRES_URL").ok()?;
    let schema = PgSchema::create(&base).await?;
    Some((schema.url.clone(), Some(schema)))
}

/// A worker that accepts every `/run` at once and counts them.
async fn fake_worker(count: Arc<AtomicUsize>) -> (SocketAddr, actix_web::dev::ServerHandle) {
    let server = HttpServer::new(move || {
        let count = Arc::clone(&count);
        App::new().route(
            "/run",
            web::post().to(move |_body: web::Bytes| {
                let count = Arc::clone(&count);
                async move {
                    count.fetch_add(1, Ordering::Relaxed);
                    HttpResponse::Created().json(RunStarted {
                        pid: 1,
                        directory: "/tmp".into(),
                    })
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

fn config(dir: &std::path::Path, url: &str) -> Config {
    let mut cfg = Config {
        bind: "127.0.0.1:0".into(),
        state_dir: dir.to_owned(),
        database_url: Some(url.to_owned()),
        http_workers: 2,
        ..Config::default()
    };
    cfg.limits.request_timeout_secs = 120.0;
    cfg.store.max_connections = 16;
    if std::env::var("DADD_BENCH_SQLITE_SYNC").as_deref() == Ok("normal") {
        cfg.store.sqlite_synchronous = dadd_master::config::SqliteSync::Normal;
    }
    cfg
}

async fn heartbeat(client: &awc::Client, url: &str, port: u16, max_procs: u32) {
    let hb = HostHeartbeat {
        host: "127.0.0.1".into(),
        port,
        max_procs,
        version: "bench".into(),
        running: Vec::new(),
        scheme: "http".into(),
    };
    let mut r = client
        .post(format!("{url}/api/hosts"))
        .send_json(&hb)
        .await
        .expect("heartbeat");
    assert!(r.status().is_success(), "heartbeat refused: {}", r.status());
    let _ = r.body().await;
}

async fn bench_backend(backend: &str) -> Option<()> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, pg) = database(backend, dir.path()).await?;
    let placements = env_usize("DADD_BENCH_PLACEMENTS", 5000);
    let heartbeats = env_usize("DADD_BENCH_HEARTBEATS", 5000);
    let rows = env_usize("DADD_BENCH_ROWS", 100_000);
    println!("## {backend}");

    let master = dadd_master::start(config(dir.path(), &url))
        .await
        .expect("master starts");
    let base = format!("http://{}", master.addr());
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(256))
        .timeout(Duration::from_secs(60))
        .finish();

    // 1. Placements: queue them all, then let hosts appear and time the drain.
    let spec = serde_json::json!({"cmd": "python -m job $APP_SETTINGS", "config": {"n": 1}});
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut subs = Vec::with_capacity(placements);
    let t = Instant::now();
    for _ in 0..placements {
        let permit = Arc::clone(&sem).acquire_owned().await.expect("permit");
        let (c, u, s) = (client.clone(), base.clone(), spec.clone());
        subs.push(actix_rt::spawn(async move {
            let mut r = c
                .post(format!("{u}/api/procs"))
                .send_json(&s)
                .await
                .expect("submit");
            assert_eq!(r.status().as_u16(), 201);
            let _ = r.body().await;
            drop(permit);
        }));
    }
    join_all(subs).await;
    let submit_rate = placements as f64 / t.elapsed().as_secs_f64();
    let count = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(fake_worker(Arc::clone(&count)).await);
    }
    let t = Instant::now();
    for (addr, _) in &workers {
        heartbeat(&client, &base, addr.port(), 1_000_000).await;
    }
    while count.load(Ordering::Relaxed) < placements {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "placements stalled at {}",
            count.load(Ordering::Relaxed)
        );
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
    let place_rate = placements as f64 / t.elapsed().as_secs_f64();
    println!(
        "submissions: {placements} in {:.0}/s (32 clients)",
        submit_rate
    );
    println!(
        "placements:  {placements} on 4 fake workers: {:.0}/s",
        place_rate
    );
    for (_, h) in workers {
        h.stop(false).await;
    }

    // 2. Heartbeats from 100 hosts, 32 in flight.
    let t = Instant::now();
    let mut hbs = Vec::with_capacity(heartbeats);
    for i in 0..heartbeats {
        let permit = Arc::clone(&sem).acquire_owned().await.expect("permit");
        let (c, u) = (client.clone(), base.clone());
        hbs.push(actix_rt::spawn(async move {
            heartbeat(&c, &u, 20_000 + (i % 100) as u16, 8).await;
            drop(permit);
        }));
    }
    join_all(hbs).await;
    println!(
        "heartbeats:  {heartbeats} from 100 hosts: {:.0}/s (32 clients)",
        heartbeats as f64 / t.elapsed().as_secs_f64()
    );

    // 3. List pages with `rows` processes stored (bulk-loaded beside the master).
    let have = placements;
    if rows > have {
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("bench pool");
        let now = chrono::Utc::now().timestamp_millis();
        let states = ["success", "failed", "running"];
        let mut left = rows - have;
        while left > 0 {
            let n = left.min(500);
            let mut sql = String::from("INSERT INTO processes (state, spec, cmd, host, created_at, updated_at, ended_at) VALUES ");
            for i in 0..n {
                let st = states[i % 3];
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "('{st}', '{{\"cmd\":\"python -m job\"}}', '[\"python\",\"-m\",\"job\"]', '10.0.0.{}:6000', {now}, {now}, {now})",
                    i % 50
                ));
            }
            sqlx::Executor::execute(&pool, sql.as_str())
                .await
                .expect("bulk insert");
            left -= n;
        }
        pool.close().await;
    }
    for (label, query) in [
        ("first page (limit 100)", "/api/procs?limit=100".to_owned()),
        (
            "?state=failed",
            "/api/procs?limit=100&state=failed".to_owned(),
        ),
        (
            "?host=10.0.0.7:6000",
            "/api/procs?limit=100&host=10.0.0.7:6000".to_owned(),
        ),
        (
            "deep page (next=50000)",
            "/api/procs?limit=100&next=50000".to_owned(),
        ),
    ] {
        let mut lat = Vec::with_capacity(500);
        for _ in 0..500 {
            let t = Instant::now();
            let mut r = client
                .get(format!("{base}{query}"))
                .send()
                .await
                .expect("list");
            let body = r.body().limit(8 << 20).await.expect("body");
            lat.push(t.elapsed());
            assert!(r.status().is_success() && body.len() > 2);
        }
        lat.sort();
        // The same page straight from the store, to split database from HTTP time.
        let store = &master.shared().store;
        let mut f = dadd_master::store::ListFilter {
            limit: 101,
            ..Default::default()
        };
        if query.contains("state=failed") {
            f.states = vec![dadd_spec::ProcState::Failed];
        }
        if query.contains("host=") {
            f.host = Some("10.0.0.7:6000".into());
        }
        if query.contains("next=") {
            f.before = Some(50_000);
        }
        let mut db = Vec::with_capacity(500);
        for _ in 0..500 {
            let t = Instant::now();
            let rows = store.list_procs(&f).await.expect("list");
            db.push(t.elapsed());
            assert!(!rows.is_empty());
        }
        db.sort();
        println!(
            "GET /api/procs {label} with {rows} stored: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
        println!(
            "  store only: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&db, 0.5).as_secs_f64() * 1e3,
            percentile(&db, 0.99).as_secs_f64() * 1e3
        );
    }
    master.stop().await;
    if let Some(schema) = pg {
        schema.drop().await;
    }
    Some(())
}

fn main() {
    let only = std::env::var("DADD_BENCH_BACKENDS").unwrap_or_default();
    let run = |b: &str| only.is_empty() || only.split(',').any(|o| o.trim() == b);
    actix_rt::System::new().block_on(async {
        if run("sqlite") {
            bench_backend("sqlite").await;
        }
        if run("postgres") && bench_backend("postgres").await.is_none() {
            println!("## postgres\nskipped: set DADD_TEST_POSTGRES_URL to run it");
        }
    });
}
