//! Several `dadd-master`s on one Postgres database, end to end: real
//! masters, workers given the masters' URL list, real runners and
//! commands. What a user relies on: no process is started twice whichever
//! master it was submitted to, a master killed mid-burst loses nothing (its
//! claims are taken over after their lease), a failure or a loss is
//! notified once however many masters run, a process is killed through any
//! master, and workers, runners and `dadd` fail over to a master that
//! answers when one is killed or hangs. Plus the SQLite guard: a second
//! master on the same SQLite file refuses to start.
//!
//! "Started once" is checked outside Dadd: every command appends its
//! `DADD_PROCESS_ID` to one file in the test's temp dir as its first act.
//!
//! The Postgres scenarios run when `DADD_TEST_POSTGRES_URL` is set and are
//! skipped otherwise, like the rest of the suite.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dadd_spec::api::{HostInfo, HostStatus, ProcDetail, ProcId, ProcList};
use dadd_spec::ProcState;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::support::cluster::{Api, Backend, Cluster, Options, START_DEADLINE};
use crate::support::{wait_for, wait_until};

/// Enough for any single step of these scenarios on a loaded machine.
const LONG: Duration = Duration::from_secs(60);
/// Enough for a burst of 200 processes to end on two workers.
const BURST: Duration = Duration::from_secs(180);

/// A 2 s claim lease. The lease is never shorter than the time a worker
/// has to answer `/run`, so that goes down to 2 s as well.
const SHORT_LEASE: &str = "lease_secs = 2\nworker_timeout_secs = 2\n";

const FULL_HISTORY: [ProcState; 5] = [
    ProcState::Queued,
    ProcState::Init,
    ProcState::Setup,
    ProcState::Running,
    ProcState::Success,
];

/// A command that appends its process id to `marker` first, then sleeps
/// `secs` (so that many run at once and outlive a master).
fn marker_spec(marker: &Path, secs: f64) -> Value {
    json!({
        "cmd": ["sh", "-c", "echo \"$DADD_PROCESS_ID\" >> \"$1\"; sleep \"$2\"",
            "sh", marker.display().to_string(), format!("{secs}")],
    })
}

/// The ids in the marker file, one per start of a command.
fn marker_ids(marker: &Path) -> Vec<ProcId> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|_| panic!("a marker line is not a process id: {l:?}"))
        })
        .collect()
}

/// Ids that appear more than once in `ids`, with their counts.
fn repeated(ids: &[ProcId]) -> BTreeMap<ProcId, usize> {
    let mut counts = BTreeMap::new();
    for &id in ids {
        *counts.entry(id).or_insert(0usize) += 1;
    }
    counts.retain(|_, n| *n > 1);
    counts
}

/// The last `n` lines of every daemon's log, for a failure message (whole
/// logs of a 200-process burst would drown it).
fn log_tails(c: &Cluster, n: usize) -> String {
    let mut out = String::new();
    let mut tail = |name: &str, text: String| {
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {name} (last {n} lines)\n"));
        for l in &lines[lines.len().saturating_sub(n)..] {
            out.push_str(l);
            out.push('\n');
        }
    };
    for i in 0..c.master_count() {
        let m = c.master_at(i);
        tail(&m.name, m.logs());
    }
    for w in &c.workers {
        tail(&w.name, w.logs());
    }
    out
}

/// The processes in `states` (comma-separated), as `api`'s master lists
/// them (at most 1000: more than any scenario here makes).
fn listed(api: &Api, states: &str) -> Vec<ProcId> {
    let ans = api.request(
        "GET",
        &format!("/api/procs?state={states}&limit=1000"),
        None,
    );
    assert_eq!(ans.status, 200, "list {states}: {}", ans.text());
    let page: ProcList = ans.json();
    page.procs.iter().map(|p| p.id).collect()
}

/// Waits until the master behind `api` has no unfinished process; on
/// timeout the failure names what is still unfinished.
fn wait_all_final(c: &Cluster, api: &Api, deadline: Duration) {
    let start = Instant::now();
    loop {
        let left = listed(api, "queued,init,setup,running");
        if left.is_empty() {
            return;
        }
        if start.elapsed() > deadline {
            let detail: Vec<String> = left
                .iter()
                .take(10)
                .map(|&id| format!("{:?}", api.proc(id)))
                .collect();
            panic!(
                "after {deadline:?}, {} processes are unfinished ({:?}…); the first:\n{}\n{}",
                left.len(),
                &left[..left.len().min(20)],
                detail.join("\n"),
                log_tails(c, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hosts(api: &Api) -> Vec<HostInfo> {
    let ans = api.request("GET", "/api/hosts", None);
    assert_eq!(ans.status, 200, "GET /api/hosts: {}", ans.text());
    ans.json()
}

fn host(api: &Api, address: &str) -> HostInfo {
    hosts(api)
        .into_iter()
        .find(|h| h.address == address)
        .unwrap_or_else(|| panic!("{} does not list host {address}", api.base()))
}

/// What two masters must agree on about one process (`log_url` may name
/// the master that answered).
fn shared_view(p: &ProcDetail) -> (Value, Value, u64) {
    (
        serde_json::to_value(&p.summary).expect("json"),
        serde_json::to_value(&p.history).expect("json"),
        p.log_size,
    )
}

/// Submits `n` copies of `spec` from four threads, thread `k` to master
/// `k % 2` of `apis`; returns the ids as they were accepted.
fn submit_alternately(apis: &[Api; 2], spec: &Value, n: usize) -> Vec<ProcId> {
    let next = AtomicUsize::new(0);
    let ids = Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for k in 0..4 {
            let (api, next, ids) = (&apis[k % 2], &next, &ids);
            s.spawn(move || {
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    let id = api.submit(spec);
                    ids.lock().expect("lock").push(id);
                }
            });
        }
    });
    ids.into_inner().expect("lock")
}

// 1. Two masters, two workers given both URLs: 200 processes submitted to
//    both masters alternately all succeed, each started exactly once, and
//    both masters tell the same story about each.
#[test]
fn two_masters_start_every_process_exactly_once() {
    let Some(c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 2,
            workers: 2,
            ..Options::default()
        },
    ) else {
        return;
    };
    let apis = [c.api_at(0), c.api_at(1)];
    for api in &apis {
        for w in 0..c.workers.len() {
            c.wait_host_up_on(api, w);
        }
    }
    let marker = c.dir.path().join("started");
    let started = Instant::now();
    let ids = submit_alternately(&apis, &marker_spec(&marker, 0.0), 200);
    wait_all_final(&c, &apis[0], BURST);
    eprintln!(
        "200 processes over two masters ended in {:?}",
        started.elapsed()
    );

    let want: BTreeSet<ProcId> = ids.iter().copied().collect();
    assert_eq!(want.len(), 200, "the masters gave out a process id twice");
    for &id in &ids {
        let a = apis[0].proc(id);
        let b = apis[1].proc(id);
        let history: Vec<ProcState> = a.history.iter().map(|h| h.state).collect();
        assert_eq!(
            history,
            FULL_HISTORY,
            "process {id} did not run once straight through: {a:?}\n{}",
            log_tails(&c, 40)
        );
        assert_eq!(a.summary.exit_code, Some(0), "{a:?}");
        assert_eq!(
            shared_view(&a),
            shared_view(&b),
            "the two masters disagree about process {id}"
        );
    }
    let lines = marker_ids(&marker);
    assert_eq!(
        repeated(&lines),
        BTreeMap::new(),
        "commands started more than once (id: starts)"
    );
    let got: BTreeSet<ProcId> = lines.iter().copied().collect();
    assert_eq!(
        got, want,
        "the commands that ran are not the submitted ones"
    );
    assert_eq!(lines.len(), 200);
    // Both workers took a share: the masters placed on every live host.
    let placed_on: BTreeSet<String> = ids
        .iter()
        .filter_map(|&id| apis[1].proc(id).summary.host)
        .collect();
    assert_eq!(placed_on.len(), 2, "every process went to {placed_on:?}");
}

// 2. SIGKILL of one master in the middle of a burst, with a 2 s lease:
//    every accepted process still ends `success`, none is started twice,
//    and the processes in `init` when it died end too.
#[test]
fn a_master_killed_mid_burst_loses_and_repeats_nothing() {
    let Some(mut c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 2,
            workers: 0,
            dispatch_toml: SHORT_LEASE.to_owned(),
            ..Options::default()
        },
    ) else {
        return;
    };
    // One worker heartbeats to the doomed master first, one to the other.
    let (a, b) = (c.master.url(), c.master_at(1).url());
    c.add_worker_with(8, &format!("{a},{b}"));
    c.add_worker_with(8, &format!("{b},{a}"));
    let apis = [c.api_at(0), c.api_at(1)];
    for w in 0..2 {
        c.wait_host_up_on(&apis[1], w);
    }
    let marker = c.dir.path().join("started");
    let spec = marker_spec(&marker, 0.5);
    let total = 200;
    let on_a = AtomicUsize::new(0);
    let tickets = AtomicUsize::new(0);
    let accepted = Mutex::new(Vec::new());
    let refused_by_a = AtomicUsize::new(0);
    let at_kill = std::thread::scope(|s| {
        for k in 0..4 {
            let (apis, spec, on_a, tickets, accepted, refused_by_a) =
                (&apis, &spec, &on_a, &tickets, &accepted, &refused_by_a);
            s.spawn(move || {
                while tickets.fetch_add(1, Ordering::SeqCst) < total {
                    let id = if k % 2 == 0 {
                        match apis[0].try_submit(spec) {
                            Ok(id) => {
                                on_a.fetch_add(1, Ordering::SeqCst);
                                id
                            }
                            // A is dead (or died answering): the other one.
                            Err(_) => {
                                refused_by_a.fetch_add(1, Ordering::SeqCst);
                                apis[1].submit(spec)
                            }
                        }
                    } else {
                        apis[1].submit(spec)
                    };
                    accepted.lock().expect("lock").push(id);
                }
            });
        }
        wait_until("50 processes accepted by the first master", LONG, || {
            on_a.load(Ordering::SeqCst) >= 50
        });
        c.master.stop(Signal::SIGKILL);
        // What the survivor sees in `init` right after: among them the
        // claims the dead master had in flight.
        listed(&apis[1], "init")
    });
    let accepted = accepted.into_inner().expect("lock");
    eprintln!(
        "accepted {} ({} by the killed master), {} submissions resent after it died, \
         {} in init at the kill",
        accepted.len(),
        on_a.load(Ordering::SeqCst),
        refused_by_a.load(Ordering::SeqCst),
        at_kill.len()
    );
    assert_eq!(accepted.len(), total);
    let killed = Instant::now();
    wait_all_final(&c, &apis[1], BURST);
    eprintln!("every process ended {:?} after the kill", killed.elapsed());

    for &id in &accepted {
        let p = apis[1].proc(id);
        assert_eq!(
            p.summary.state,
            ProcState::Success,
            "process {id}: {p:?}\n{}",
            log_tails(&c, 60)
        );
        assert_eq!(p.summary.exit_code, Some(0), "{p:?}");
    }
    for &id in &at_kill {
        let p = apis[1].proc(id);
        assert_eq!(
            p.summary.state,
            ProcState::Success,
            "process {id}, in init when the master died: {p:?}"
        );
    }
    let lines = marker_ids(&marker);
    assert_eq!(
        repeated(&lines),
        BTreeMap::new(),
        "commands started more than once (id: starts)\n{}",
        log_tails(&c, 60)
    );
    let ran: BTreeSet<ProcId> = lines.iter().copied().collect();
    let missing: Vec<ProcId> = accepted
        .iter()
        .copied()
        .filter(|id| !ran.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but never started: {missing:?}"
    );
    // A submission the dying master committed but could not answer may
    // have run as well: it must be a real, finished process.
    let unknown: Vec<ProcId> = ran
        .iter()
        .copied()
        .filter(|id| !accepted.contains(id))
        .collect();
    for &id in &unknown {
        let p = apis[1].proc(id);
        assert_eq!(p.summary.state, ProcState::Success, "{p:?}");
    }
    eprintln!(
        "{} commands started, {} of them from submissions whose answer was lost",
        lines.len(),
        unknown.len()
    );
}

// 2b. The window the burst above rarely hits, made wide: master A claims
//     processes and sends them to a worker that does not answer (frozen
//     with SIGSTOP), then dies. Master B, started only then (so A made
//     every claim), sends the same claims again to the same worker after
//     their lease (and again each time the frozen worker does not answer);
//     the worker, thawed, finds several requests for each process waiting
//     and must start each once.
#[test]
fn claims_of_a_dead_master_are_sent_again_after_the_lease() {
    let Some(mut c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 1,
            workers: 0,
            dispatch_toml: SHORT_LEASE.to_owned(),
            // The frozen worker sends no heartbeat: it must not be down.
            host_ttl_secs: 60.0,
            ..Options::default()
        },
    ) else {
        return;
    };
    let b = c.add_master();
    c.master_mut(b).reserve_address();
    let list = c.master_urls().join(",");
    let w = c.add_worker_with(8, &list);
    c.wait_host_up(w);
    let marker = c.dir.path().join("started");
    c.workers[w].signal(Signal::SIGSTOP);
    let a_api = c.api();
    let ids: Vec<ProcId> = (0..6)
        .map(|_| a_api.submit(&marker_spec(&marker, 0.0)))
        .collect();
    wait_until(
        "the first master to claim every process (init)",
        LONG,
        || {
            let init = listed(&a_api, "init");
            ids.iter().all(|id| init.contains(id))
        },
    );
    c.master.stop(Signal::SIGKILL);
    let killed = Instant::now();
    c.master_mut(b).start();
    let b_api = c.api_at(b);
    // Its resends queue up at the frozen worker behind the dead master's
    // requests (the survivor logs each one as it goes out).
    wait_until(
        "the second master to resend every expired claim",
        LONG,
        || {
            let sent = takeover_lines(
                &c.master_at(b).logs(),
                "sending it to the same worker again",
            );
            ids.iter().all(|id| sent.contains(id))
        },
    );
    eprintln!("resends out {:?} after the kill", killed.elapsed());
    c.workers[w].signal(Signal::SIGCONT);
    wait_all_final(&c, &b_api, LONG);
    eprintln!("every process ended {:?} after the kill", killed.elapsed());
    for &id in &ids {
        let p = b_api.proc(id);
        assert_eq!(
            p.summary.state,
            ProcState::Success,
            "process {id}: {p:?}\n{}",
            c.logs()
        );
    }
    let lines = marker_ids(&marker);
    assert_eq!(
        repeated(&lines),
        BTreeMap::new(),
        "commands started more than once (id: starts)\n{}",
        c.logs()
    );
    let ran: BTreeSet<ProcId> = lines.iter().copied().collect();
    assert_eq!(ran, ids.iter().copied().collect::<BTreeSet<_>>());
    let confirmed = takeover_lines(
        &c.master_at(b).logs(),
        "expired claim confirmed by the worker",
    );
    for &id in &ids {
        assert!(
            confirmed.contains(&id),
            "the worker never answered the resend of process {id}\n{}",
            c.logs()
        );
    }
}

/// The process ids of a master's JSON log lines whose message ends with
/// `message`.
fn takeover_lines(log: &str, message: &str) -> BTreeSet<ProcId> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(message))
        })
        .filter_map(|v| v["fields"]["proc"].as_i64())
        .collect()
}

// 3. With two masters and a webhook on both, each notice-worthy change
//    is notified once: ten failures (submitted to both masters), and a
//    process lost with its worker (both masters watch the hosts' TTL).
#[test]
fn each_failure_and_loss_is_notified_once_with_two_masters() {
    let Some(mut c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 2,
            workers: 2,
            host_ttl_secs: 2.0,
            ..Options::default()
        },
    ) else {
        return;
    };
    let apis = [c.api_at(0), c.api_at(1)];
    let failing = json!({"cmd": ["sh", "-c", "exit 3"]});
    let failed: Vec<ProcId> = (0..10).map(|i| apis[i % 2].submit(&failing)).collect();
    for &id in &failed {
        let p = apis[0].wait_final(id, LONG);
        assert_eq!(p.summary.state, ProcState::Failed, "{p:?}");
        assert_eq!(p.summary.exit_code, Some(3), "{p:?}");
    }
    // A process whose worker dies under it (its runner is reaped at the end).
    let doomed = apis[1].submit(&json!({"cmd": "sleep 120"}));
    let p = apis[0].wait_proc(doomed, "running", LONG, |p| {
        p.summary.state == ProcState::Running || p.summary.state.is_final()
    });
    assert_eq!(p.summary.state, ProcState::Running, "{p:?}");
    let w = c.worker_of(&p);
    c.workers[w].kill9();
    apis[0].wait_state(doomed, ProcState::Lost, LONG);
    for &id in &failed {
        c.wait_notice(id, ProcState::Failed, LONG);
    }
    c.wait_notice(doomed, ProcState::Lost, LONG);
    // A second notice would come from the other master's delivery loop
    // (retries back off 0.2 s here, ticks are sub-second): give it time.
    std::thread::sleep(Duration::from_secs(4));
    let notices = c.notices();
    let about = |id: ProcId| -> Vec<&Value> {
        notices
            .iter()
            .filter(|n| n.get("id").and_then(Value::as_i64) == Some(id))
            .collect()
    };
    for &id in &failed {
        let about = about(id);
        assert_eq!(
            about.len(),
            1,
            "process {id} was notified {} times: {about:?}",
            about.len()
        );
        assert_eq!(about[0]["state"], json!("failed"), "{}", about[0]);
        assert_eq!(about[0]["exit_code"], json!(3), "{}", about[0]);
    }
    let lost = about(doomed);
    assert_eq!(
        lost.len(),
        1,
        "the lost process was notified {} times: {lost:?}",
        lost.len()
    );
    assert_eq!(lost[0]["state"], json!("lost"), "{}", lost[0]);
}

// 3b. A process placed through one master is stopped through the other:
//     the kill goes to its worker, and its command's group is gone.
#[test]
fn a_process_is_killed_through_the_other_master() {
    let Some(c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 2,
            workers: 1,
            ..Options::default()
        },
    ) else {
        return;
    };
    let (a, b) = (c.api_at(0), c.api_at(1));
    let id = a.submit(&json!({"cmd": "sh -c 'sleep 300 & sleep 300'"}));
    let p = b.wait_proc(id, "running with a pid", LONG, |p| {
        p.summary.state == ProcState::Running && p.summary.pid.is_some()
            || p.summary.state.is_final()
    });
    assert_eq!(p.summary.state, ProcState::Running, "{p:?}");
    let pgid = p.summary.pid.expect("a pid");
    let ans = b.kill(id);
    assert!(
        ans.status == 202 || ans.status == 200,
        "DELETE through the other master answered {}: {}",
        ans.status,
        ans.text()
    );
    let end = a.wait_final(id, LONG);
    assert_eq!(
        end.summary.state,
        ProcState::Killed,
        "{end:?}\n{}",
        c.logs()
    );
    wait_until("the command's process group to be gone", LONG, || {
        crate::support::procs::group_members(pgid).is_empty()
    });
}

// 4. A worker given `A,B`: with A killed, it heartbeats to B, stays up
//    there well past the TTL, and runs what B is given.
#[test]
fn a_worker_fails_over_to_the_next_master() {
    let ttl = 2.0;
    let Some(mut c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 2,
            workers: 0,
            host_ttl_secs: ttl,
            ..Options::default()
        },
    ) else {
        return;
    };
    let list = c.master_urls().join(",");
    let w = c.add_worker_with(4, &list);
    let b = c.api_at(1);
    c.wait_host_up_on(&b, w);
    let address = c.workers[w].address();
    c.master.stop(Signal::SIGKILL);
    let killed = Instant::now();
    let at_kill = host(&b, &address).last_heartbeat;
    // Three TTLs: the host would be down twice over without failover.
    while killed.elapsed() < Duration::from_secs_f64(3.0 * ttl) {
        let h = host(&b, &address);
        assert_eq!(
            h.status,
            HostStatus::Up,
            "{:?} after the kill the worker is {h:?}\n{}",
            killed.elapsed(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = host(&b, &address);
    let later = (h.last_heartbeat - at_kill).num_milliseconds();
    assert!(
        later as f64 > 2.0 * ttl * 1000.0,
        "no recent heartbeat through the second master: {h:?} ({later} ms after the one at the kill)"
    );
    let id = b.submit(&json!({"cmd": "echo ran after the failover"}));
    let p = b.wait_final(id, LONG);
    assert_eq!(p.summary.state, ProcState::Success, "{p:?}\n{}", c.logs());
    assert_eq!(p.summary.host.as_deref(), Some(address.as_str()));
    assert_eq!(
        b.log(id)
            .lines()
            .filter(|l| *l == "ran after the failover")
            .count(),
        1
    );
}

// 4b. A hung master (SIGSTOP: connections open, no answer) is left too:
//     the worker's heartbeats time out and go to the next master before
//     the TTL, and a runner placed by the hung master delivers its end to
//     the next one (after its own call timeout).
#[test]
fn a_hung_master_is_left_for_the_next() {
    let ttl = 10.0;
    let Some(mut c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 1,
            workers: 0,
            host_ttl_secs: ttl,
            ..Options::default()
        },
    ) else {
        return;
    };
    let b = c.add_master();
    c.master_mut(b).reserve_address();
    let list = c.master_urls().join(",");
    let w = c.add_worker_with(4, &list);
    c.wait_host_up(w);
    // Placed by A, the only master yet: its runner reports to A.
    let gate = c.dir.path().join("gate");
    let id = c.api().submit(&json!({
        "cmd": ["sh", "-c",
            "echo started; i=0; while [ ! -e \"$1\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; echo finished",
            "sh", gate.display().to_string()],
    }));
    c.api().wait_state(id, ProcState::Running, LONG);
    c.master_mut(b).start();
    let b_api = c.api_at(b);
    let address = c.workers[w].address();
    c.master.signal(Signal::SIGSTOP);
    let hung = Instant::now();
    std::fs::write(&gate, b"go").expect("open the gate");
    while hung.elapsed() < Duration::from_secs_f64(1.5 * ttl) {
        let h = host(&b_api, &address);
        assert_eq!(
            h.status,
            HostStatus::Up,
            "{:?} after the master hung, the worker is {h:?}\n{}",
            hung.elapsed(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let end = b_api.wait_final(id, LONG);
    eprintln!(
        "the process placed by the hung master ended {:?} after it hung",
        hung.elapsed()
    );
    assert_eq!(
        end.summary.state,
        ProcState::Success,
        "{end:?}\n{}",
        c.logs()
    );
    let log = b_api.log(id);
    assert_eq!(log.lines().filter(|l| *l == "finished").count(), 1, "{log}");
    let id = b_api.submit(&json!({"cmd": "echo ran while a master hung"}));
    let p = b_api.wait_final(id, LONG);
    assert_eq!(p.summary.state, ProcState::Success, "{p:?}");
    assert_eq!(p.summary.host.as_deref(), Some(address.as_str()));
}

// 4c. A master that hangs inside a dispatch round (frozen, or cut off
//     from the database with its connection still open) holds the
//     cluster-wide dispatch lock: the other masters must still place work.
//     Made deterministic: a psql session holds the lock for 3 s while both
//     masters' rounds wait on it; A is frozen meanwhile, so its waiting
//     round gets the lock when psql lets go and keeps it.
#[test]
fn a_master_hung_in_a_dispatch_round_does_not_stop_dispatch() {
    let Some(c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 2,
            workers: 1,
            host_ttl_secs: 30.0,
            ..Options::default()
        },
    ) else {
        return;
    };
    let b = c.api_at(1);
    let holder = std::process::Command::new("psql")
        .args([
            c.database_url(),
            "-q",
            "-c",
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('dadd:' || current_schema()), 1); \
             SELECT pg_sleep(3); COMMIT;",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql starts");
    let mut holder = crate::support::ChildGuard::new(holder);
    // Both masters' rounds (every 0.5 s) are waiting on the lock.
    wait_until("both masters to wait for the dispatch lock", LONG, || {
        waiting_for_advisory_locks(c.database_url()) >= 2
    });
    c.master.signal(Signal::SIGSTOP);
    assert!(holder.wait(LONG).success(), "psql held the lock");
    let id = b.submit(&json!({"cmd": "echo placed while a master hangs"}));
    let since = Instant::now();
    while b.proc(id).summary.state == ProcState::Queued {
        assert!(
            since.elapsed() < LONG,
            "process {id} is still queued {LONG:?} after its submission to the master that \
             answers; the dispatch lock's sessions (the frozen master's is idle in transaction):\n{}",
            advisory_lock_sessions(c.database_url())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = b.wait_final(id, LONG);
    assert_eq!(end.summary.state, ProcState::Success, "{end:?}");
    c.master.signal(Signal::SIGCONT);
}

/// The sessions holding or waiting for an advisory lock in the test's
/// database: state, granted, time in the transaction, last statement.
fn advisory_lock_sessions(url: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            url,
            "-q",
            "-c",
            "SELECT a.pid, a.state, l.granted, now() - a.xact_start AS in_transaction, \
             left(a.query, 60) AS last_statement FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many sessions wait for an advisory lock in the test's database.
fn waiting_for_advisory_locks(url: &str) -> usize {
    let out = std::process::Command::new("psql")
        .args([
            url,
            "-Atq",
            "-c",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

// 5. `dadd --master A,B` (and `DADD_MASTER_URL=A,B`) with A killed:
//    submit --wait and ps work through B.
#[test]
fn dadd_uses_the_next_master_in_its_list() {
    let Some(mut c) = Cluster::start(
        Backend::Postgres,
        Options {
            masters: 2,
            workers: 1,
            ..Options::default()
        },
    ) else {
        return;
    };
    let list = c.master_urls().join(",");
    c.master.stop(Signal::SIGKILL);
    let spec = c.dir.path().join("spec.json");
    std::fs::write(&spec, br#"{"cmd": "echo through the list"}"#).expect("write the spec");

    let mut submit = c.dadd_with(&list);
    submit.arg("submit").arg("--wait").arg(&spec);
    let (status, out, err) = run(submit);
    assert_eq!(status, Some(0), "dadd submit --wait: {out}{err}");
    let id: ProcId = err
        .lines()
        .chain(out.lines())
        .find_map(|l| {
            l.strip_prefix("process ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("dadd named no process: {out}{err}"));
    let p = c.api_at(1).proc(id);
    assert_eq!(p.summary.state, ProcState::Success, "{p:?}");

    let mut ps = c.dadd_with(&list);
    ps.args(["--json", "ps"]);
    let (status, out, err) = run(ps);
    assert_eq!(status, Some(0), "dadd ps: {err}");
    let page: ProcList = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("dadd --json ps is not a process list ({e}): {out}"));
    assert!(
        page.procs
            .iter()
            .any(|p| p.id == id && p.state == ProcState::Success),
        "dadd ps lacks process {id}: {out}"
    );

    // The same list from the environment, as a CI job would set it.
    let mut env_ps = c.dadd_token_only();
    env_ps.env("DADD_MASTER_URL", &list).arg("ps");
    let (status, out, err) = run(env_ps);
    assert_eq!(status, Some(0), "DADD_MASTER_URL=A,B dadd ps: {err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().next() == Some(&id.to_string())),
        "dadd ps (table) lacks process {id}: {out}"
    );
}

/// Runs a `dadd` command to its end; returns its exit code, stdout, stderr.
fn run(mut cmd: std::process::Command) -> (Option<i32>, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("dadd starts");
    let (status, out, err) = crate::support::ChildGuard::new(child).output(LONG);
    (status.code(), out, err)
}

// 6. SQLite: a second master on the same file refuses to start while the
//    first runs, saying why; once the first is gone it starts.
#[test]
fn sqlite_refuses_a_second_master_on_the_same_file() {
    let Some(mut c) = Cluster::start(
        Backend::Sqlite,
        Options {
            workers: 0,
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = c.api().submit(&json!({"cmd": "true"}));
    let second = c.add_master();
    let (status, log) = c.master_mut(second).start_expecting_exit(START_DEADLINE);
    assert!(
        !status.success(),
        "a second master on the same SQLite file exited {status}:\n{log}"
    );
    assert!(
        log.contains("another dadd-master") && log.contains("is using"),
        "the refusal does not say another master uses the file:\n{log}"
    );
    assert!(
        log.contains("dadd-master.db"),
        "the refusal does not name the file:\n{log}"
    );
    let ans = c.api().request("GET", "/api/health", None);
    assert_eq!(
        ans.status,
        200,
        "the first master after the refusal: {}",
        ans.text()
    );
    assert_eq!(c.api().proc(id).summary.state, ProcState::Queued);

    // A master killed outright leaves nothing that blocks the next one.
    c.master.stop(Signal::SIGKILL);
    c.master_mut(second).start();
    let p = wait_for("the second master to serve the store", LONG, || {
        c.api_at(second).try_proc(id)
    });
    assert_eq!(p.summary.state, ProcState::Queued);
}
