//! Results a real runner could not deliver (its master closed past
//! `--report-deadline 1`) are delivered by the worker once a master answers:
//! the whole log, the final state, then the dir goes. A master holding part
//! of the log gets only the rest; a master that does not know the process
//! leaves the dir in place.

use std::path::{Path, PathBuf};

use dadd_spec::api::{Delivery, RunStarted, RunnerRecord};
use dadd_spec::ProcState;
use dadd_worker::workroot::Entry;
use serde_json::json;

use crate::support::*;

/// The real runner, giving up delivery 1 s after its command ends.
fn impatient_runner(sb: &Sandbox) -> PathBuf {
    script(
        sb.dir.path(),
        "impatient-runner",
        &format!(
            "#!/bin/sh\nexec '{}' --report-deadline 1 \"$@\"\n",
            real_runner().display()
        ),
    )
}

/// A loopback master URL nothing listens on (yet), and its address.
fn closed_master() -> (String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    (format!("http://{addr}"), addr)
}

/// A config whose worker looks for undelivered results every 0.2 s.
fn config(sb: &Sandbox, master: &str) -> dadd_worker::Config {
    let mut c = sb.config(master, &impatient_runner(sb), 2);
    c.redeliver_interval_secs = 0.2;
    c
}

/// Starts process `id` running `script` through the worker at `worker`
/// while `master` is closed; waits until its runner gave up and exited.
/// Answers the dir, its record and its log.
async fn undelivered(
    worker: &str,
    master: &str,
    id: i64,
    script: &str,
) -> (PathBuf, RunnerRecord, Vec<u8>) {
    let env = envelope(id, master, json!({"cmd": ["sh", "-c", script]}));
    let (status, body) = post_run(worker, Some(SECRET), &env).await;
    assert_eq!(status, 201, "{body}");
    let started: RunStarted = serde_json::from_value(body).expect("RunStarted");
    let dir = PathBuf::from(started.directory);
    wait_for(60, "the runner to give up and exit, undelivered", || {
        let dir = dir.clone();
        async move {
            Entry::read(&dir).is_some_and(|e| {
                e.record
                    .as_ref()
                    .is_some_and(|r| r.delivery == Delivery::Undelivered)
                    && !e.alive()
            })
        }
    })
    .await;
    let record = Entry::read(&dir)
        .and_then(|e| e.record)
        .expect("state.json");
    let log = std::fs::read(dir.join("output.log")).expect("output.log");
    (dir, record, log)
}

fn final_report(master: &FakeMaster, id: i64) -> Option<dadd_spec::api::StateReport> {
    master.reports(id).into_iter().find(|r| r.state.is_final())
}

async fn wait_removed(dir: &Path) {
    let dir = dir.to_path_buf();
    wait_for(30, "the working dir to be removed after delivery", || {
        let dir = dir.clone();
        async move { !dir.exists() }
    })
    .await;
}

#[actix_web::test]
async fn an_undelivered_result_reaches_the_master_once_it_answers() {
    let sb = Sandbox::new();
    let (master_url, master_addr) = closed_master();
    let worker = WorkerProcess::start(&sb, &config(&sb, &master_url), "worker").await;
    let (dir, record, log) = undelivered(
        &worker.url,
        &master_url,
        41,
        "echo to stdout; echo to stderr >&2; exit 3",
    )
    .await;
    assert_eq!(record.state, ProcState::Failed);
    assert_eq!(record.exit_code, Some(3));
    let text = String::from_utf8_lossy(&log).into_owned();
    assert!(text.contains("\nto stdout\n"), "{text}");
    wait_for(
        10,
        "the worker to try, and say no master answers",
        || async {
            worker
                .log()
                .contains("no master answers: the undelivered result of process 41")
        },
    )
    .await;
    assert!(dir.is_dir(), "kept while no master answers");

    let master = FakeMaster::start_on(&master_addr).await;
    wait_removed(&dir).await;
    let seen = master.seen.lock().expect("lock").logs.get(&41).cloned();
    assert_eq!(
        seen.as_deref(),
        Some(&log[..]),
        "the master holds the log byte for byte"
    );
    let report = final_report(&master, 41).expect("a final report");
    assert_eq!(report.state, ProcState::Failed);
    assert_eq!(report.exit_code, Some(3));
    assert_eq!(report.pid, record.command_pid);
    assert_eq!(report.reason, record.reason);
    let auths = master.seen.lock().expect("lock").proc_auths.clone();
    assert!(!auths.is_empty());
    assert!(
        auths
            .iter()
            .all(|(id, a)| *id == 41 && a.as_deref() == Some("Bearer token-of-41")),
        "the process token, never the cluster secret: {auths:?}"
    );
    let wlog = worker.log();
    assert!(
        wlog.contains(&format!(
            "delivered the kept result of process 41 to {master_url}"
        )),
        "{wlog}"
    );
    assert_eq!(
        wlog.matches("no master answers: the undelivered result")
            .count(),
        1,
        "one warning for the outage: {wlog}"
    );
    master.stop().await;
}

#[actix_web::test]
async fn a_master_holding_part_of_the_log_gets_only_the_rest() {
    let sb = Sandbox::new();
    let (master_url, master_addr) = closed_master();
    let worker = dadd_worker::start(config(&sb, &master_url))
        .await
        .expect("worker starts");
    // About 2.4 MB: three chunks from the start, two from where the master is.
    let (dir, _, log) = undelivered(
        &worker.url(),
        &master_url,
        42,
        "i=0; while [ $i -lt 60000 ]; do echo \"line $i of a log longer than two chunks\"; i=$((i+1)); done",
    )
    .await;
    let held = 1_000_000;
    assert!(log.len() > 2 << 20, "{}", log.len());

    let mut seed = Recorded::default();
    seed.logs.insert(42, log[..held].to_vec());
    let master = FakeMaster::start_seeded(&master_addr, None, seed).await;
    wait_removed(&dir).await;
    let (stored, chunks) = {
        let seen = master.seen.lock().expect("lock");
        (seen.logs.get(&42).cloned(), seen.chunks.clone())
    };
    assert_eq!(
        stored.as_deref(),
        Some(&log[..]),
        "the whole log, byte for byte"
    );
    let sent: Vec<_> = chunks
        .iter()
        .filter(|(id, _, len)| *id == 42 && *len > 0)
        .collect();
    assert!(
        sent.iter()
            .all(|(_, offset, len)| *offset >= held as u64 && *len <= 1 << 20),
        "only the rest, in chunks of at most 1 MiB: {sent:?}"
    );
    assert_eq!(
        sent.iter().map(|(_, _, len)| len).sum::<usize>(),
        log.len() - held,
        "each byte once: {sent:?}"
    );
    assert_eq!(
        final_report(&master, 42).map(|r| r.state),
        Some(ProcState::Success)
    );
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn a_master_that_does_not_know_the_process_leaves_the_dir() {
    let sb = Sandbox::new();
    let (master_url, master_addr) = closed_master();
    let worker = WorkerProcess::start(&sb, &config(&sb, &master_url), "worker").await;
    let (dir, record, log) = undelivered(&worker.url, &master_url, 43, "echo kept").await;

    let seed = Recorded {
        refuse_procs: Some(404),
        ..Recorded::default()
    };
    let master = FakeMaster::start_seeded(&master_addr, None, seed).await;
    wait_for(30, "three refused redeliveries", || async {
        master.seen.lock().expect("lock").refused >= 3
    })
    .await;
    assert!(dir.is_dir(), "the dir stays");
    let now = Entry::read(&dir)
        .and_then(|e| e.record)
        .expect("state.json");
    assert_eq!(now.delivery, Delivery::Undelivered);
    assert_eq!(now, record, "state.json untouched");
    assert_eq!(
        std::fs::read(dir.join("output.log")).expect("output.log"),
        log
    );
    assert!(master.reports(43).is_empty());
    let wlog = worker.log();
    assert_eq!(
        wlog.matches("did not take the kept result of process 43")
            .count(),
        1,
        "warned once: {wlog}"
    );
    master.stop().await;
}
