//! The cluster benchmark: the real release `dadd-master`, one real
//! `dadd-worker` and real runners on loopback, specs `{"cmd": "true"}`.
//!
//! - **throughput**: N processes submitted at once by several clients; the
//!   rate is N over the span from the first `queued` to the last `success`
//!   in the master's own history timestamps, and every process must end
//!   `success` with its whole history (`queued init setup running success`);
//! - **latency**: processes submitted one at a time at a steady pace well
//!   under capacity; submit → `running` is the span between the `queued`
//!   and `running` entries of the history (the master's clock, ms);
//! - **stages**: the same history split into dispatch (`queued → init`),
//!   runner start (`init → setup`), setup (`setup → running`) and run plus
//!   delivery (`running → success`), to say where the time goes.
//!
//! Several masters on one Postgres (when `DADD_TEST_POSTGRES_URL` is set),
//! for each count of masters in `DADD_BENCH_MASTERS` (`1,2,3`), one worker
//! given every master's URL, `DADD_BENCH_MASTERS_N` (500) processes per
//! phase, each client of a burst submitting to its own master in turn:
//!
//! - **queue**: the processes submitted while no worker is up (submissions
//!   per second, spread over the masters);
//! - **placement**: a worker with room for all of them starts; placements
//!   per second is the count over the span from the first to the last
//!   `init` (every master dispatching at once), then the time to all
//!   `success`;
//! - **burst**: the throughput measure above, submissions spread over the
//!   masters, with the CPU of all masters together, on a fresh cluster
//!   whose worker has `DADD_BENCH_MAX_PROCS` (after a warm-up of 50);
//! - **latency**: `DADD_BENCH_MASTERS_PACED` (150) processes one every
//!   `DADD_BENCH_PACE_MS`, submitted to the first master, then as many to
//!   the last one; which master places a process is not controlled (any
//!   master may win the dispatch round its submission wakes).
//!
//! Run: `cargo bench -p dadd-tests --bench cluster`. Settings (environment):
//! `DADD_BENCH_N` (default 1000), `DADD_BENCH_CLIENTS` (8),
//! `DADD_BENCH_MAX_PROCS` (64), `DADD_BENCH_PACED` (300 processes, one every
//! `DADD_BENCH_PACE_MS` = 20 ms), `DADD_BENCH_SQLITE_SYNC` (`full`),
//! `DADD_BENCH_RUST_LOG` (`info`, what an operator runs), `DADD_BENCH_STORE`
//! (`sqlite` or `postgres`; both by default, Postgres when
//! `DADD_TEST_POSTGRES_URL` is set, in a fresh schema dropped after),
//! `DADD_BENCH_PART` (`single` for one master per store, `masters` for
//! several on Postgres; both by default).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dadd_spec::api::{ProcDetail, ProcId, ProcList};
use dadd_spec::ProcState;
use serde_json::json;

// The e2e harness's modules (not its browser part).
#[allow(dead_code, unreachable_pub, unused_imports, unused_macros)]
#[path = "../e2e/support"]
mod support {
    pub mod bins;
    pub mod cluster;
    pub mod http;
    pub mod procs;
    pub mod wait;
    pub use bins::bin;
}

use support::cluster::{Api, Backend, Cluster, Options};

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

const FULL_HISTORY: [ProcState; 5] = [
    ProcState::Queued,
    ProcState::Init,
    ProcState::Setup,
    ProcState::Running,
    ProcState::Success,
];

/// Milliseconds between two history entries (the master records ms).
fn span_ms(p: &ProcDetail, from: ProcState, to: ProcState) -> f64 {
    let at = |s: ProcState| {
        p.history
            .iter()
            .find(|h| h.state == s)
            .unwrap_or_else(|| panic!("process {} has no {s} entry", p.summary.id))
            .at
            .timestamp_micros()
    };
    (at(to) - at(from)) as f64 / 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// p50 / p99 / max of `values`, in ms.
fn summary(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "p50 {:7.2}  p99 {:7.2}  max {:7.2} ms",
        percentile(&values, 50.0),
        percentile(&values, 99.0),
        values.last().copied().unwrap_or(f64::NAN)
    )
}

/// Submits `n` specs from `clients` threads at once; returns the ids and
/// each POST's round trip.
fn burst(api: &Api, n: usize, clients: usize) -> (Vec<ProcId>, Vec<f64>) {
    burst_over(std::slice::from_ref(api), n, clients)
}

/// [`burst`] over several masters: client `k` submits to `apis[k % len]`.
fn burst_over(apis: &[Api], n: usize, clients: usize) -> (Vec<ProcId>, Vec<f64>) {
    let next = Arc::new(Mutex::new(0usize));
    let out = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let threads: Vec<_> = (0..clients)
        .map(|k| {
            let api = apis[k % apis.len()].clone();
            let next = Arc::clone(&next);
            let out = Arc::clone(&out);
            std::thread::spawn(move || loop {
                {
                    let mut i = next.lock().expect("lock");
                    if *i >= n {
                        return;
                    }
                    *i += 1;
                }
                let t = Instant::now();
                let id = api.submit(&json!({"cmd": "true"}));
                let rtt = t.elapsed().as_secs_f64() * 1000.0;
                let mut o = out.lock().expect("lock");
                o.0.push(id);
                o.1.push(rtt);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a submitting thread panicked");
    }
    let (ids, rtts) = std::mem::take(&mut *out.lock().expect("lock"));
    (ids, rtts)
}

/// Waits until the master has no unfinished process.
fn wait_all_final(api: &Api, deadline: Duration) {
    support::wait::wait_until("every process to end", deadline, || {
        let page: ProcList = api
            .request(
                "GET",
                "/api/procs?state=queued,init,setup,running&limit=1",
                None,
            )
            .json();
        page.procs.is_empty()
    });
}

/// Every process in full, fetched by `clients` threads; each must have
/// ended `success` with its whole history.
fn details(api: &Api, ids: &[ProcId], clients: usize) -> Vec<ProcDetail> {
    let chunks: Vec<Vec<ProcId>> = ids
        .chunks(ids.len().div_ceil(clients).max(1))
        .map(<[ProcId]>::to_vec)
        .collect();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let api = api.clone();
            std::thread::spawn(move || chunk.iter().map(|&id| api.proc(id)).collect::<Vec<_>>())
        })
        .collect();
    let all: Vec<ProcDetail> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a fetching thread panicked"))
        .collect();
    for p in &all {
        let states: Vec<ProcState> = p.history.iter().map(|h| h.state).collect();
        assert_eq!(
            states, FULL_HISTORY,
            "process {} lacks part of its history: {:?}",
            p.summary.id, p.history
        );
        assert_eq!(p.summary.exit_code, Some(0));
    }
    all
}

fn stages(all: &[ProcDetail]) {
    for (name, from, to) in [
        (
            "dispatch      queued → init   ",
            ProcState::Queued,
            ProcState::Init,
        ),
        (
            "runner start  init → setup    ",
            ProcState::Init,
            ProcState::Setup,
        ),
        (
            "setup         setup → running ",
            ProcState::Setup,
            ProcState::Running,
        ),
        (
            "run, deliver  running → success",
            ProcState::Running,
            ProcState::Success,
        ),
        (
            "submit → running              ",
            ProcState::Queued,
            ProcState::Running,
        ),
    ] {
        let v = all.iter().map(|p| span_ms(p, from, to)).collect();
        println!("    {name}  {}", summary(v));
    }
}

/// CPU seconds (user + system, every thread) process `pid` has used.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on.
fn clock_ticks() -> f64 {
    100.0
}

/// CPU seconds the whole machine has used (every CPU, busy time only).
fn machine_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: f64 = cpu
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / clock_ticks()
}

fn run(backend: Backend) {
    let n: usize = setting("DADD_BENCH_N", 1000);
    let clients: usize = setting("DADD_BENCH_CLIENTS", 8);
    let max_procs: u32 = setting("DADD_BENCH_MAX_PROCS", 64);
    let paced: usize = setting("DADD_BENCH_PACED", 300);
    let pace = Duration::from_millis(setting("DADD_BENCH_PACE_MS", 20));
    let sync: String = setting("DADD_BENCH_SQLITE_SYNC", "full".to_owned());
    let rust_log: String = setting("DADD_BENCH_RUST_LOG", "info".to_owned());
    let opts = Options {
        workers: 1,
        max_procs,
        host_ttl_secs: 30.0,
        master_toml: format!("[store]\nsqlite_synchronous = \"{sync}\"\n"),
        rust_log,
        ..Options::default()
    };
    let Some(cluster) = Cluster::start(backend, opts) else {
        return;
    };
    let api = cluster.api();
    println!(
        "{backend:?} (sqlite_synchronous = {sync}), 1 worker with max_procs {max_procs}, \
         master pid {}, worker pid {}",
        cluster.master.pid(),
        cluster.workers[0].pid()
    );

    // Warm-up: page cache, connections, the runner binary.
    let (warm, _) = burst(&api, 50, clients);
    wait_all_final(&api, Duration::from_secs(120));
    details(&api, &warm, clients);

    if std::env::var_os("DADD_BENCH_PAUSE").is_some() {
        println!("  paused 10 s (attach a profiler now)");
        std::thread::sleep(Duration::from_secs(10));
    }

    let (master_pid, worker_pid) = (cluster.master.pid(), cluster.workers[0].pid());
    let cpu0 = (
        cpu_secs(master_pid),
        cpu_secs(worker_pid),
        cpu_secs(std::process::id() as i32),
        machine_cpu_secs(),
    );
    let t0 = Instant::now();
    let (ids, rtts) = burst(&api, n, clients);
    let submitted = t0.elapsed();
    wait_all_final(&api, Duration::from_secs(600));
    let wall = t0.elapsed();
    let per = |a: f64, b: f64| (b - a) * 1000.0 / n as f64;
    let (m, w, b, all_cpu) = (
        per(cpu0.0, cpu_secs(master_pid)),
        per(cpu0.1, cpu_secs(worker_pid)),
        per(cpu0.2, cpu_secs(std::process::id() as i32)),
        per(cpu0.3, machine_cpu_secs()),
    );
    let all = details(&api, &ids, clients);
    let first = all
        .iter()
        .map(|p| p.history[0].at.timestamp_micros())
        .min()
        .expect("processes");
    let last = all
        .iter()
        .map(|p| p.history[4].at.timestamp_micros())
        .max()
        .expect("processes");
    let span = (last - first) as f64 / 1e6;
    println!(
        "  throughput: {n} processes, every state recorded, in {span:.2} s \
         (master clock) = {:.0} processes/s; submitted in {:.2} s by {clients} \
         clients, all final after {:.2} s (wall)",
        n as f64 / span,
        submitted.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!("    POST /api/procs round trip     {}", summary(rtts));
    println!(
        "    CPU per process: master {m:.2} ms, worker {w:.2} ms, benchmark client {b:.2} ms, \
         the rest (runners, commands, database server, anything else running) {:.2} ms; \
         machine busy {:.0}% of {} CPUs",
        all_cpu - m - w - b,
        100.0 * all_cpu * n as f64
            / 1000.0
            / wall.as_secs_f64()
            / std::thread::available_parallelism().map_or(1.0, |c| c.get() as f64),
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    stages(&all);

    let ids = paced_submit(&api, paced, pace);
    wait_all_final(&api, Duration::from_secs(120));
    let all = details(&api, &ids, clients);
    println!(
        "  latency: {paced} processes, one every {} ms",
        pace.as_millis()
    );
    stages(&all);
}

/// Submits `count` specs to `api`, one every `pace`; returns the ids.
fn paced_submit(api: &Api, count: usize, pace: Duration) -> Vec<ProcId> {
    let mut ids = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let due = start + pace * u32::try_from(i).expect("count fits");
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        ids.push(api.submit(&json!({"cmd": "true"})));
    }
    ids
}

/// The master's-clock time of `state` in `p`'s history, µs since the epoch.
fn at_micros(p: &ProcDetail, state: ProcState) -> i64 {
    p.history
        .iter()
        .find(|h| h.state == state)
        .unwrap_or_else(|| panic!("process {} has no {state} entry", p.summary.id))
        .at
        .timestamp_micros()
}

/// The span in seconds from the earliest `from` to the latest `to` over `all`.
fn overall_span(all: &[ProcDetail], from: ProcState, to: ProcState) -> f64 {
    let first = all
        .iter()
        .map(|p| at_micros(p, from))
        .min()
        .expect("processes");
    let last = all
        .iter()
        .map(|p| at_micros(p, to))
        .max()
        .expect("processes");
    (last - first) as f64 / 1e6
}

/// `masters` masters on one fresh Postgres schema and one worker given all
/// their URLs: queue and placement (a worker with room for every process),
/// then, on a fresh cluster whose worker has the single-master bench's
/// `max_procs`, burst and latency (see the module doc).
fn run_masters(masters: usize) {
    let n: usize = setting("DADD_BENCH_MASTERS_N", 500);
    let clients: usize = setting("DADD_BENCH_CLIENTS", 8);
    let max_procs: u32 = setting("DADD_BENCH_MAX_PROCS", 64);
    let paced: usize = setting("DADD_BENCH_MASTERS_PACED", 150);
    let pace = Duration::from_millis(setting("DADD_BENCH_PACE_MS", 20));
    let rust_log: String = setting("DADD_BENCH_RUST_LOG", "info".to_owned());
    let opts = Options {
        workers: 0,
        masters,
        host_ttl_secs: 30.0,
        rust_log,
        ..Options::default()
    };
    println!("Postgres, {masters} master(s), 1 worker given every master's URL");
    {
        let Some(mut cluster) = Cluster::start(Backend::Postgres, opts.clone()) else {
            return;
        };
        let apis: Vec<Api> = (0..masters).map(|i| cluster.api_at(i)).collect();
        // Queue: no worker yet.
        let t0 = Instant::now();
        let (ids, rtts) = burst_over(&apis, n, clients);
        let queued_in = t0.elapsed().as_secs_f64();
        let waiting = apis[0]
            .request("GET", "/api/procs?state=queued&limit=1000", None)
            .json::<ProcList>()
            .procs
            .len();
        assert_eq!(waiting, n.min(1000), "every process waits for a worker");
        println!(
            "  queue: {n} submitted in {queued_in:.2} s = {:.0}/s by {clients} clients \
             over {masters} master(s); POST {}",
            n as f64 / queued_in,
            summary(rtts)
        );
        // Placement: a worker with room for all of them.
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch")
            .as_micros() as i64;
        cluster.add_worker(u32::try_from(n).expect("count fits").max(1));
        wait_all_final(&apis[0], Duration::from_secs(600));
        let all = details(&apis[0], &ids, clients);
        let first_init = all
            .iter()
            .map(|p| at_micros(p, ProcState::Init))
            .min()
            .expect("processes");
        let placing = overall_span(&all, ProcState::Init, ProcState::Init);
        let to_success = overall_span(&all, ProcState::Init, ProcState::Success);
        println!(
            "  placement (max_procs {n}): {n} placed in {placing:.2} s = {:.0} placements/s, \
             the first {:.0} ms after the worker was started; all success {to_success:.2} s \
             after the first placement = {:.0} processes/s",
            n as f64 / placing,
            (first_init - started) as f64 / 1000.0,
            n as f64 / to_success
        );
    }

    let Some(cluster) = Cluster::start(
        Backend::Postgres,
        Options {
            workers: 1,
            max_procs,
            ..opts
        },
    ) else {
        return;
    };
    let apis: Vec<Api> = (0..masters).map(|i| cluster.api_at(i)).collect();
    let (warm, _) = burst_over(&apis, 50, clients);
    wait_all_final(&apis[0], Duration::from_secs(120));
    details(&apis[0], &warm, clients);

    // Burst, with every master's CPU.
    let pids: Vec<i32> = (0..masters).map(|i| cluster.master_at(i).pid()).collect();
    let worker = cluster.workers[0].pid();
    let cpu = |pids: &[i32]| pids.iter().map(|&p| cpu_secs(p)).sum::<f64>();
    let each0: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect();
    let (m0, w0, all0) = (cpu(&pids), cpu_secs(worker), machine_cpu_secs());
    let t0 = Instant::now();
    let (ids, rtts) = burst_over(&apis, n, clients);
    wait_all_final(&apis[0], Duration::from_secs(600));
    let wall = t0.elapsed().as_secs_f64();
    let per = |a: f64, b: f64| (b - a) * 1000.0 / n as f64;
    let (m, w, machine) = (
        per(m0, cpu(&pids)),
        per(w0, cpu_secs(worker)),
        per(all0, machine_cpu_secs()),
    );
    let each: Vec<String> = pids
        .iter()
        .zip(&each0)
        .map(|(&p, &c0)| format!("{:.2}", per(c0, cpu_secs(p))))
        .collect();
    let all = details(&apis[0], &ids, clients);
    let span = overall_span(&all, ProcState::Queued, ProcState::Success);
    println!(
        "  burst (max_procs {max_procs}): {n} processes, every state recorded, in {span:.2} s \
         (master clock) = {:.0} processes/s; all final after {wall:.2} s (wall)",
        n as f64 / span
    );
    println!("    POST /api/procs round trip     {}", summary(rtts));
    println!(
        "    CPU per process: all masters {m:.2} ms (each: {} ms), worker {w:.2} ms, \
         whole machine {machine:.2} ms",
        each.join(" / ")
    );
    stages(&all);

    // Latency through the first master, then through the last.
    let through = if masters == 1 {
        vec![(0, "the only")]
    } else {
        vec![(0, "the first"), (masters - 1, "the last")]
    };
    for (i, which) in through {
        let ids = paced_submit(&apis[i], paced, pace);
        wait_all_final(&apis[0], Duration::from_secs(120));
        let all = details(&apis[0], &ids, clients);
        println!(
            "  latency: {paced} processes submitted to {which} master, one every {} ms",
            pace.as_millis()
        );
        stages(&all);
    }
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn main() {
    let only = std::env::var("DADD_BENCH_STORE").ok();
    let part = std::env::var("DADD_BENCH_PART").ok();
    if part.as_deref() != Some("masters") {
        for (name, backend) in [("sqlite", Backend::Sqlite), ("postgres", Backend::Postgres)] {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            run(backend);
        }
    }
    if part.as_deref() != Some("single") {
        println!(
            "load average before the several-masters part: {}",
            load_average()
        );
        if std::env::var_os("DADD_TEST_POSTGRES_URL").is_none() {
            println!("DADD_TEST_POSTGRES_URL is not set: several masters are not measured");
            return;
        }
        let counts: String = setting("DADD_BENCH_MASTERS", "1,2,3".to_owned());
        for m in counts.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let m: usize = m
                .parse()
                .unwrap_or_else(|_| panic!("DADD_BENCH_MASTERS: {m:?} is not a count"));
            run_masters(m.max(1));
        }
    }
}
