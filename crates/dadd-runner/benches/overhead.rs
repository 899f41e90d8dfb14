//! Runner overhead, measured on the real release binary (a program, not a
//! timed test): `cargo bench -p dadd-runner --bench overhead`.
//!
//! 1. Wall time of `dadd-runner --foreground` on `{"cmd":"true"}` against
//!    `true` alone, interleaved run by run (mean, p50, p99, overhead).
//! 2. VmRSS of the daemonized runner while it supervises `sleep 5`, without
//!    a master and with one (a stub that accepts every report), so the
//!    reporter thread and its HTTP client are counted.
//!
//! Set `DADD_BENCH_RUNS` to change the number of runs (default 300).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNNER: &str = env!("CARGO_BIN_EXE_dadd-runner");

fn main() {
    let runs: usize = std::env::var("DADD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("work");
    std::fs::create_dir(&root).expect("work root");
    let spec = tmp.path().join("true.json");
    std::fs::write(&spec, r#"{"cmd":"true"}"#).expect("spec");

    println!("dadd-runner overhead ({runs} runs each, interleaved, after 20 warm-up runs)");
    let run_true = || {
        let s = Command::new("true").status().expect("true runs");
        assert!(s.success());
    };
    let run_runner = || {
        let s = Command::new(RUNNER)
            .arg("--foreground")
            .arg("--work-root")
            .arg(&root)
            .arg(&spec)
            .stderr(Stdio::null())
            .status()
            .expect("dadd-runner runs");
        assert!(s.success(), "dadd-runner failed: {s}");
    };
    for _ in 0..20 {
        run_true();
        run_runner();
    }
    let mut t_true = Vec::with_capacity(runs);
    let mut t_runner = Vec::with_capacity(runs);
    for _ in 0..runs {
        t_true.push(time(run_true));
        t_runner.push(time(run_runner));
    }
    let a = Stats::of(&mut t_true);
    let b = Stats::of(&mut t_runner);
    println!();
    println!("| | mean | p50 | p99 |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| `true` | {} | {} | {} |",
        ms(a.mean),
        ms(a.p50),
        ms(a.p99)
    );
    println!(
        "| `dadd-runner --foreground` on `{{\"cmd\":\"true\"}}` | {} | {} | {} |",
        ms(b.mean),
        ms(b.p50),
        ms(b.p99)
    );
    println!(
        "| overhead | {} | {} | {} |",
        ms(b.mean.saturating_sub(a.mean)),
        ms(b.p50.saturating_sub(a.p50)),
        ms(b.p99.saturating_sub(a.p99))
    );
    assert!(
        std::fs::read_dir(&root).expect("root").next().is_none(),
        "every successful run removed its dir"
    );
    // The same with the work root on tmpfs: what is left is the runner's own
    // cost, without the disk's metadata operations (mkdir, create, rename,
    // unlink, fsync), which vary with whatever else writes to the disk.
    if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
        let shm_root = shm.path().to_path_buf();
        let mut t_shm = Vec::with_capacity(runs);
        let mut t_true2 = Vec::with_capacity(runs);
        for _ in 0..runs {
            t_true2.push(time(run_true));
            t_shm.push(time(|| {
                let s = Command::new(RUNNER)
                    .arg("--foreground")
                    .arg("--work-root")
                    .arg(&shm_root)
                    .arg(&spec)
                    .stderr(Stdio::null())
                    .status()
                    .expect("dadd-runner runs");
                assert!(s.success());
            }));
        }
        let a = Stats::of(&mut t_true2);
        let c = Stats::of(&mut t_shm);
        println!(
            "| overhead, work root on tmpfs (/dev/shm) | {} | {} | {} |",
            ms(c.mean.saturating_sub(a.mean)),
            ms(c.p50.saturating_sub(a.p50)),
            ms(c.p99.saturating_sub(a.p99))
        );
    }

    println!();
    let no_master = rss_while_supervising(&root, tmp.path(), None);
    let master = StubMaster::start();
    let with_master = rss_while_supervising(&root, tmp.path(), Some(&master.url));
    println!("| daemonized runner supervising `sleep 5` | VmRSS | VmHWM |");
    println!("| --- | --- | --- |");
    println!(
        "| without a master | {} KiB | {} KiB |",
        no_master.0, no_master.1
    );
    println!(
        "| reporting to a master (reporter thread, HTTP client) | {} KiB | {} KiB |",
        with_master.0, with_master.1
    );
}

fn time(f: impl Fn()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn of(v: &mut [Duration]) -> Self {
        v.sort();
        let n = v.len();
        let sum: Duration = v.iter().sum();
        Self {
            mean: sum / u32::try_from(n).expect("few runs"),
            p50: v[n / 2],
            p99: v[(n * 99 / 100).min(n - 1)],
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Starts a daemonized runner on `sleep 5`, reads its VmRSS and VmHWM (KiB)
/// once the command runs, then stops it.
fn rss_while_supervising(root: &Path, tmp: &Path, master: Option<&str>) -> (u64, u64) {
    let spec = tmp.join("sleep.json");
    std::fs::write(&spec, r#"{"cmd":["sleep","5"]}"#).expect("spec");
    let mut cmd = Command::new(RUNNER);
    cmd.arg("--work-root").arg(root);
    if let Some(url) = master {
        cmd.args(["--master", url, "--process-id", "1"])
            .env("DADD_PROCESS_TOKEN", "bench");
    }
    let out = cmd.arg(&spec).output().expect("dadd-runner runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("RunStarted");
    let pid = v["pid"].as_i64().expect("pid");
    let dir = PathBuf::from(v["directory"].as_str().expect("directory"));
    // Wait (with a deadline) until the command runs and a log ship had time to happen.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running = std::fs::read_to_string(dir.join("state.json"))
            .is_ok_and(|s| s.contains("\"running\""));
        if running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the runner never reached running"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("runner status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let rss = (field("VmRSS:"), field("VmHWM:"));
    // Stop it: SIGTERM to the runner stops its command's group.
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir_all(&dir);
    rss
}

/// A master stub on loopback that accepts every state report and log chunk.
struct StubMaster {
    url: String,
}

impl StubMaster {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let offset: u64 = line
                    .split("offset=")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let mut len = 0u64;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; usize::try_from(len).unwrap_or(0)];
                let _ = reader.read_exact(&mut body);
                let answer = format!("{{\"offset\":{}}}", offset + len);
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Self { url }
    }
}
