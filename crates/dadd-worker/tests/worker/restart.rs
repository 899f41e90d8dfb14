//! The real `dadd-worker` binary: `kill -9` and a restart never stop a
//! runner, and the master being away never stops the worker.

use dadd_spec::api::{RunStarted, WorkerProc};
use serde_json::json;

use crate::support::*;

#[actix_web::test]
async fn kill_9_of_the_worker_leaves_the_runner_and_a_restart_lists_it() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = sb.fake_runner();
    let config = sb.config(&master.url, &runner, 2);
    let mut first = WorkerProcess::start(&sb, &config, "worker-1").await;
    let (status, body) = post_run(
        &first.url,
        Some(SECRET),
        &envelope(21, &master.url, json!({"cmd": "sleep 300"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let started: RunStarted = serde_json::from_value(body).expect("RunStarted");

    first.kill9();
    assert!(
        alive(started.pid),
        "the runner outlives kill -9 of its worker"
    );
    assert!(group_alive(started.pid), "and so does its command");

    let seen = master.beats().len();
    let second = WorkerProcess::start(&sb, &config, "worker-2").await;
    wait_for(
        10,
        "the restarted worker's heartbeat listing 21",
        || async { master.listed(21, seen) },
    )
    .await;
    let (_, procs) = get_json(&format!("{}/procs", second.url)).await;
    let procs: Vec<WorkerProc> = serde_json::from_value(procs).expect("[WorkerProc]");
    assert_eq!(procs.len(), 1);
    assert!(procs[0].alive);
    assert_eq!(procs[0].record.runner_pid, started.pid);
    // The restarted worker can stop it.
    let (status, _) = delete_proc(&second.url, Some(SECRET), 21).await;
    assert_eq!(status, 200);
    wait_for(10, "the runner to stop", || async {
        !group_alive(started.pid)
    })
    .await;
    master.stop().await;
}

#[actix_web::test]
async fn sigterm_stops_the_worker_and_not_its_runners() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = sb.fake_runner();
    let config = sb.config(&master.url, &runner, 2);
    let mut worker = WorkerProcess::start(&sb, &config, "worker").await;
    let (status, body) = post_run(
        &worker.url,
        Some(SECRET),
        &envelope(22, &master.url, json!({"cmd": "sleep 300"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let started: RunStarted = serde_json::from_value(body).expect("RunStarted");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal");
    let status = tokio::task::spawn_blocking(move || {
        let s = worker.child.wait();
        (s, worker)
    })
    .await
    .expect("join");
    assert!(status.0.expect("wait").success(), "a clean exit on SIGTERM");
    assert!(alive(started.pid), "the runner goes on");
}

#[actix_web::test]
async fn an_unreachable_master_is_logged_once_and_heartbeats_resume() {
    let sb = Sandbox::new();
    // A master address with nothing listening yet.
    let port = free_port();
    let master_url = format!("http://127.0.0.1:{port}");
    let runner = sb.fake_runner();
    let config = sb.config(&master_url, &runner, 2);
    let worker = WorkerProcess::start(&sb, &config, "worker").await;
    // Several tries fail (0.2 s interval, 0.5 s cap) ...
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (status, _) = get_json(&format!("{}/up", worker.url)).await;
    assert_eq!(status, 200, "the worker stays up without its master");
    let log = worker.log();
    assert_eq!(
        log.matches("heartbeat failed").count(),
        1,
        "one line per outage, not per try:\n{log}"
    );
    // ... then the master comes up and the worker registers.
    let master = FakeMaster::start_on(&format!("127.0.0.1:{port}")).await;
    wait_for(10, "a heartbeat after the outage", || async {
        !master.beats().is_empty()
    })
    .await;
    wait_for(10, "the recovery in the log", || async {
        worker.log().contains("master reachable again")
    })
    .await;
    master.stop().await;
}
