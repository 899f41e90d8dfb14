//! The whole cluster end to end: the real `dadd-master` (SQLite, and
//! Postgres when `DADD_TEST_POSTGRES_URL` is set), two real `dadd-worker`s,
//! real runners and commands, with auth on. Each scenario gets its own
//! cluster, so they run in parallel; each breaks something on purpose
//! (`kill -9` of a worker, a master outage, a kill request, no worker at
//! all) and checks what a user would see through the API, the webhook,
//! the worker's `/procs` and the `dadd` command.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dadd_spec::api::{Delivery, HostInfo, HostStatus, ProcDetail, ProcId};
use dadd_spec::ProcState;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::on_both_stores;
use crate::support::cluster::{Backend, Cluster, Options};
use crate::support::procs::group_members;
use crate::support::{pid_alive, pyindex, wait_for, wait_until, ChildGuard};

/// Enough for any single step of these scenarios on a loaded machine.
const LONG: Duration = Duration::from_secs(60);

fn states(p: &ProcDetail) -> Vec<ProcState> {
    p.history.iter().map(|h| h.state).collect()
}

fn assert_history(p: &ProcDetail, want: &[ProcState], c: &Cluster) {
    assert_eq!(
        states(p),
        want,
        "history of process {}: {:?}\n{}",
        p.summary.id,
        p.history,
        c.logs()
    );
}

/// A command that prints `started`, runs until `gate` exists (at most a
/// minute, so it ends even if a test dies), then prints `finished`.
fn gated(gate: &Path, before: &str, after: &str) -> Value {
    json!({
        "cmd": ["sh", "-c",
            "echo \"$2\"; i=0; while [ ! -e \"$1\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; echo \"$3\"",
            "sh", gate.display().to_string(), before, after],
    })
}

/// How many lines of `text` are exactly `line` (the runner's own lines,
/// which quote the command, do not count).
fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

fn open_gate(gate: &Path) {
    std::fs::write(gate, b"go").expect("create the gate file");
}

fn gate_path(c: &Cluster, name: &str) -> PathBuf {
    c.dir.path().join(format!("gate-{name}"))
}

/// Waits until process `id` runs; returns it (with its command's pid).
fn wait_running(c: &Cluster, id: ProcId) -> ProcDetail {
    let p = c.api().wait_proc(id, "running with a pid", LONG, |p| {
        p.summary.state == ProcState::Running && p.summary.pid.is_some()
            || p.summary.state.is_final()
    });
    assert_eq!(p.summary.state, ProcState::Running, "{p:?}\n{}", c.logs());
    p
}

/// Waits until no worker holds a working dir for process `id`.
fn wait_dir_removed(c: &Cluster, id: ProcId) {
    let prefix = format!("proc-{id}-");
    wait_until(
        &format!("the working dir of process {id} to be removed"),
        LONG,
        || {
            c.workers.iter().all(|w| {
                w.working_dirs().iter().all(|d| {
                    !d.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
            })
        },
    );
}

fn host(c: &Cluster, address: &str) -> HostInfo {
    let hosts: Vec<HostInfo> = c.api().request("GET", "/api/hosts", None).json();
    hosts
        .into_iter()
        .find(|h| h.address == address)
        .unwrap_or_else(|| panic!("the master does not list host {address}"))
}

// 1. A spec in the seed's style: a download from the master's file store,
//    config, python_deps from an index the test serves.
fn seed_style_spec_runs_to_success(backend: Backend) {
    let Some(c) = Cluster::start(backend, Options::default()) else {
        return;
    };
    let api = c.api();
    let index = pyindex::serve(c.dir.path());
    api.put_file("e2e/some_data.json", b"{\"rows\": 3}\n");
    let spec = json!({
        "cmd": "python -c \"import json, sys, dadd_probe; print(dadd_probe.MESSAGE); print('rows=%d' % json.load(open('some_data.json'))['rows']); print('greeting=' + json.load(open(sys.argv[1]))['greeting'])\" $APP_SETTINGS",
        "download_urls": [format!("{}/files/e2e/some_data.json", c.master.url())],
        "config": {"db": "postgres://username:pw@dbhost:5432/mydb", "greeting": "hello from config"},
        "python_deps": [pyindex::PACKAGE],
        "python_cheeseshop": index.url("/simple/"),
    });
    let id = api.submit(&spec);
    let p = api.wait_final(id, Duration::from_secs(240));
    let log = api.log(id);
    assert_eq!(
        p.summary.state,
        ProcState::Success,
        "{p:?}\nlog:\n{log}\n{}",
        c.logs()
    );
    assert_eq!(p.summary.exit_code, Some(0));
    for want in [pyindex::MESSAGE, "rows=3", "greeting=hello from config"] {
        assert_eq!(count_lines(&log, want), 1, "the log lacks {want:?}:\n{log}");
    }
    assert!(
        !log.contains("username:pw"),
        "a secret of the config leaked into the log:\n{log}"
    );
    assert!(
        index.hits(&format!("/packages/{}", pyindex::WHEEL)) >= 1,
        "the wheel came from the test's index"
    );
    assert_history(
        &p,
        &[
            ProcState::Queued,
            ProcState::Init,
            ProcState::Setup,
            ProcState::Running,
            ProcState::Success,
        ],
        &c,
    );
    c.worker_of(&p);
    wait_dir_removed(&c, id);
}
on_both_stores!(seed_style_spec_runs_to_success);

// 2. A failing command: the whole log is stored, the webhook gets the tail.
fn failing_command_is_failed_with_whole_log_and_notice(backend: Backend) {
    let Some(c) = Cluster::start(backend, Options::default()) else {
        return;
    };
    let api = c.api();
    // About 1.3 MB: more than one log chunk.
    let id = api.submit(&json!({
        "cmd": ["sh", "-c", "seq 1 200000; echo 'fatal: the last words' >&2; exit 3"],
    }));
    let p = api.wait_final(id, LONG);
    assert_eq!(p.summary.state, ProcState::Failed, "{p:?}\n{}", c.logs());
    assert_eq!(p.summary.exit_code, Some(3));
    let log = api.log(id);
    let seq: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert!(
        log.contains(&format!("{seq}fatal: the last words\n")),
        "the stored log ({} bytes) is not the command's whole output",
        log.len()
    );
    assert_eq!(p.log_size, log.len() as u64);
    let notice = c.wait_notice(id, ProcState::Failed, LONG);
    assert_eq!(notice["exit_code"], json!(3), "{notice}");
    let tail: Vec<&str> = notice["log_tail"]
        .as_array()
        .expect("log_tail is a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tail.contains(&"fatal: the last words") && tail.contains(&"200000"),
        "the notice's tail lacks the log's last lines: {tail:?}"
    );
    wait_dir_removed(&c, id);
}
on_both_stores!(failing_command_is_failed_with_whole_log_and_notice);

/// Kills worker `w` with -9, restarts it, and checks the restarted worker
/// lists process `id` as a live runner while the master still has it
/// running. Returns the runner's pid the worker reports.
fn kill9_and_restart(c: &mut Cluster, w: usize, id: ProcId) -> i32 {
    let address = c.workers[w].address();
    c.workers[w].kill9();
    let last_before = host(c, &address).last_heartbeat;
    c.workers[w].start();
    let listed = wait_for(
        &format!("the restarted worker to list process {id}"),
        LONG,
        || {
            c.workers[w]
                .procs()
                .into_iter()
                .find(|p| p.process_id == Some(id) && p.alive)
        },
    );
    assert_eq!(
        listed.record.state,
        ProcState::Running,
        "the runner's record: {listed:?}"
    );
    let now = c.api().proc(id);
    assert_eq!(
        now.summary.state,
        ProcState::Running,
        "the master's view while the restarted worker lists it: {now:?}\n{}",
        c.logs()
    );
    // The master hears from the new incarnation before the next kill.
    wait_until("a heartbeat from the restarted worker", LONG, || {
        host(c, &address).last_heartbeat > last_before
    });
    listed.record.runner_pid
}

// 3a. kill -9 of the worker during `sleep 3`, then a restart.
fn worker_kill9_and_restart_leaves_the_process_running(backend: Backend) {
    let Some(mut c) = Cluster::start(backend, Options::default()) else {
        return;
    };
    let api = c.api();
    let id = api.submit(&json!({"cmd": "sleep 3"}));
    let p = wait_running(&c, id);
    let pid = p.summary.pid.expect("a pid");
    let w = c.worker_of(&p);
    kill9_and_restart(&mut c, w, id);
    let end = api.wait_final(id, LONG);
    assert_eq!(
        end.summary.state,
        ProcState::Success,
        "{end:?}\n{}",
        c.logs()
    );
    assert_eq!(
        end.summary.pid,
        Some(pid),
        "the same command, not a second one"
    );
    assert_eq!(end.summary.exit_code, Some(0));
    assert_history(
        &end,
        &[
            ProcState::Queued,
            ProcState::Init,
            ProcState::Setup,
            ProcState::Running,
            ProcState::Success,
        ],
        &c,
    );
    wait_dir_removed(&c, id);
}
on_both_stores!(worker_kill9_and_restart_leaves_the_process_running);

// 3b. Ten kill -9 + restarts in a row while one process runs.
fn ten_worker_kill9_restarts_in_a_row(backend: Backend) {
    let Some(mut c) = Cluster::start(backend, Options::default()) else {
        return;
    };
    let api = c.api();
    let gate = gate_path(&c, "ten");
    let id = api.submit(&gated(&gate, "started", "finished"));
    let p = wait_running(&c, id);
    let pid = p.summary.pid.expect("a pid");
    let w = c.worker_of(&p);
    let mut runner_pids = Vec::new();
    for _ in 0..10 {
        runner_pids.push(kill9_and_restart(&mut c, w, id));
        assert!(pid_alive(pid), "the command (pid {pid}) survives");
    }
    runner_pids.dedup();
    assert_eq!(
        runner_pids.len(),
        1,
        "one runner all along: {runner_pids:?}"
    );
    open_gate(&gate);
    let end = api.wait_final(id, LONG);
    assert_eq!(
        end.summary.state,
        ProcState::Success,
        "{end:?}\n{}",
        c.logs()
    );
    assert_eq!(end.summary.pid, Some(pid));
    assert_history(
        &end,
        &[
            ProcState::Queued,
            ProcState::Init,
            ProcState::Setup,
            ProcState::Running,
            ProcState::Success,
        ],
        &c,
    );
    let log = api.log(id);
    assert_eq!(count_lines(&log, "started"), 1, "{log}");
    assert_eq!(count_lines(&log, "finished"), 1, "{log}");
    wait_dir_removed(&c, id);
}
on_both_stores!(ten_worker_kill9_restarts_in_a_row);

// 4. The master down while a process runs and ends; back 5 s later.
fn master_outage_loses_neither_state_nor_log(backend: Backend) {
    let Some(mut c) = Cluster::start(backend, Options::default()) else {
        return;
    };
    let api = c.api();
    let gate = gate_path(&c, "outage");
    let mut spec = gated(&gate, "before the outage", "after the gate");
    spec["cmd"][2] = json!(format!(
        "{}; for i in $(seq 1 500); do echo \"during the outage $i\"; done",
        spec["cmd"][2].as_str().expect("the script")
    ));
    let id = api.submit(&spec);
    let p = wait_running(&c, id);
    let w = c.worker_of(&p);
    wait_until("the first line to reach the master", LONG, || {
        count_lines(&api.log(id), "before the outage") == 1
    });
    c.master.stop(Signal::SIGKILL);
    let down = Instant::now();
    open_gate(&gate);
    // The command ends while the master is away: the runner holds the result.
    wait_until("the runner to record its end, undelivered", LONG, || {
        c.workers[w].procs().iter().any(|p| {
            p.process_id == Some(id)
                && p.record.state == ProcState::Success
                && p.record.delivery == Delivery::Pending
        })
    });
    if let Some(rest) = Duration::from_secs(5).checked_sub(down.elapsed()) {
        std::thread::sleep(rest); // the outage itself, not a synchronization
    }
    c.master.start();
    let end = api.wait_final(id, LONG);
    assert_eq!(
        end.summary.state,
        ProcState::Success,
        "{end:?}\n{}",
        c.logs()
    );
    assert_eq!(end.summary.exit_code, Some(0));
    let log = api.log(id);
    assert_eq!(count_lines(&log, "before the outage"), 1, "{log}");
    let mut want = String::from("after the gate\n");
    for i in 1..=500 {
        want.push_str(&format!("during the outage {i}\n"));
    }
    assert!(log.contains(&want), "the stored log is not whole:\n{log}");
    assert_history(
        &end,
        &[
            ProcState::Queued,
            ProcState::Init,
            ProcState::Setup,
            ProcState::Running,
            ProcState::Success,
        ],
        &c,
    );
    wait_dir_removed(&c, id);
}
on_both_stores!(master_outage_loses_neither_state_nor_log);

// 5. DELETE of a running process group: killed, no survivor.
fn delete_kills_the_whole_process_group(backend: Backend) {
    let Some(c) = Cluster::start(backend, Options::default()) else {
        return;
    };
    let api = c.api();
    let id = api.submit(&json!({"cmd": "sh -c 'sleep 300 & sleep 300'"}));
    let p = wait_running(&c, id);
    let pgid = p.summary.pid.expect("a pid");
    // sh and both sleeps.
    let members = wait_for(
        "the command's group to hold sh and two sleeps",
        LONG,
        || {
            let m = group_members(pgid);
            (m.len() >= 3).then_some(m)
        },
    );
    let ans = api.kill(id);
    assert!(
        ans.status == 202 || ans.status == 200,
        "DELETE answered {}: {}",
        ans.status,
        ans.text()
    );
    let end = api.wait_final(id, LONG);
    assert_eq!(
        end.summary.state,
        ProcState::Killed,
        "{end:?}\n{}",
        c.logs()
    );
    wait_until("the command's process group to be gone", LONG, || {
        group_members(pgid).is_empty()
    });
    for pid in members {
        assert!(!pid_alive(pid), "pid {pid} of the killed group survives");
    }
    wait_dir_removed(&c, id);
}
on_both_stores!(delete_kills_the_whole_process_group);

// 6. No worker: queued until one comes.
fn queued_until_a_worker_starts(backend: Backend) {
    let Some(mut c) = Cluster::start(
        backend,
        Options {
            workers: 0,
            ..Options::default()
        },
    ) else {
        return;
    };
    let api = c.api();
    let id = api.submit(&json!({"cmd": "echo ran on the late worker"}));
    // It stays queued: several dispatcher ticks (0.5 s) go by.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let p = api.proc(id);
        assert_eq!(p.summary.state, ProcState::Queued, "{p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let w = c.add_worker(4);
    let end = api.wait_final(id, LONG);
    assert_eq!(
        end.summary.state,
        ProcState::Success,
        "{end:?}\n{}",
        c.logs()
    );
    assert_eq!(
        end.summary.host.as_deref(),
        Some(c.workers[w].address().as_str())
    );
    assert_eq!(count_lines(&api.log(id), "ran on the late worker"), 1);
    assert_history(
        &end,
        &[
            ProcState::Queued,
            ProcState::Init,
            ProcState::Setup,
            ProcState::Running,
            ProcState::Success,
        ],
        &c,
    );
}
on_both_stores!(queued_until_a_worker_starts);

// 7. A worker killed for good: its processes are lost after the TTL and
//    notified; the runner's own late report still wins.
fn dead_worker_processes_are_lost_after_the_ttl(backend: Backend) {
    let ttl = 2.0;
    let Some(mut c) = Cluster::start(
        backend,
        Options {
            host_ttl_secs: ttl,
            ..Options::default()
        },
    ) else {
        return;
    };
    let api = c.api();
    let gate = gate_path(&c, "lost");
    let id = api.submit(&gated(&gate, "started", "finished"));
    let p = wait_running(&c, id);
    let w = c.worker_of(&p);
    let address = c.workers[w].address();
    c.workers[w].kill9();
    let killed = Instant::now();
    let lost = api.wait_state(id, ProcState::Lost, LONG);
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_secs_f64(ttl - 0.5),
        "lost after {after:?}, before the TTL of {ttl}s"
    );
    assert_eq!(
        lost.summary.reason.as_deref(),
        Some("host down"),
        "{lost:?}"
    );
    assert_eq!(host(&c, &address).status, HostStatus::Down);
    let notice = c.wait_notice(id, ProcState::Lost, LONG);
    assert_eq!(notice["host"], json!(address), "{notice}");
    // The runner never stopped: when its command ends, its report replaces `lost`.
    open_gate(&gate);
    let end = api.wait_state(id, ProcState::Success, LONG);
    assert_eq!(end.summary.exit_code, Some(0));
    assert_eq!(count_lines(&api.log(id), "finished"), 1);
}
on_both_stores!(dead_worker_processes_are_lost_after_the_ttl);

/// Reads a child's pipe line by line into a shared buffer, on a thread.
fn collect_lines(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = Arc::clone(&buf);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut b = b.lock().expect("lock");
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

// 8. `dadd submit --wait` exit codes, and `dadd logs -f` following a run.
fn dadd_submit_wait_codes_and_logs_follow(backend: Backend) {
    let Some(c) = Cluster::start(backend, Options::default()) else {
        return;
    };
    let api = c.api();
    let spec_file = |name: &str, spec: Value| {
        let path = c.dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec(&spec).expect("json")).expect("write spec");
        path
    };
    let submit_wait = |path: &Path| {
        let mut cmd = c.dadd();
        cmd.arg("submit").arg("--wait").arg(path);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        ChildGuard::new(cmd.spawn().expect("dadd starts"))
    };

    let ok = spec_file("ok.json", json!({"cmd": "true"}));
    let (status, _, err) = submit_wait(&ok).output(LONG);
    assert_eq!(status.code(), Some(0), "success is 0: {err}");

    let fail = spec_file("fail.json", json!({"cmd": "sh -c 'echo failing; exit 5'"}));
    let (status, _, err) = submit_wait(&fail).output(LONG);
    assert_eq!(status.code(), Some(1), "failed is 1: {err}");

    let long = spec_file("long.json", json!({"cmd": "sleep 300"}));
    let mut child = {
        let mut cmd = c.dadd();
        cmd.arg("submit").arg("--wait").arg(&long);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.spawn().expect("dadd starts")
    };
    let stderr = collect_lines(child.stderr.take().expect("stderr"));
    let mut child = ChildGuard::new(child);
    // `dadd` names the process on stderr: "process N queued".
    let id: ProcId = wait_for("dadd to print the process id", LONG, || {
        stderr.lock().expect("lock").lines().find_map(|l| {
            l.strip_prefix("process ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    });
    wait_running(&c, id);
    let ans = api.kill(id);
    assert!(ans.status == 202 || ans.status == 200, "{}", ans.text());
    let status = child.wait(LONG);
    assert_eq!(
        status.code(),
        Some(3),
        "killed is 3: {}",
        stderr.lock().expect("lock")
    );

    // logs -f: output shows while the process still runs, and it ends with it.
    let gate = gate_path(&c, "follow");
    let id = api.submit(&gated(&gate, "first line, while running", "last line"));
    wait_running(&c, id);
    let mut follow = c.dadd();
    follow
        .args(["logs", "-f", &id.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut follow = follow.spawn().expect("dadd logs -f starts");
    let out = collect_lines(follow.stdout.take().expect("stdout"));
    let mut follow = ChildGuard::new(follow);
    wait_until("dadd logs -f to print the first line", LONG, || {
        count_lines(&out.lock().expect("lock"), "first line, while running") == 1
    });
    assert_eq!(api.proc(id).summary.state, ProcState::Running);
    assert!(follow.try_wait().is_none(), "dadd logs -f ended early");
    assert_eq!(count_lines(&out.lock().expect("lock"), "last line"), 0);
    open_gate(&gate);
    let status = follow.wait(LONG);
    assert!(status.success(), "dadd logs -f: {status}");
    wait_until("dadd logs -f to have printed the last line", LONG, || {
        count_lines(&out.lock().expect("lock"), "last line") == 1
    });
    assert_eq!(api.proc(id).summary.state, ProcState::Success);
}
on_both_stores!(dadd_submit_wait_codes_and_logs_follow);
