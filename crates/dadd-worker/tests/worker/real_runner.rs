//! The worker with the real `dadd-runner` binary (built if missing), which
//! reports to the fake master with its per-process token.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use dadd_spec::api::RunStarted;
use dadd_spec::ProcState;
use serde_json::json;

use crate::support::*;

fn final_state(master: &FakeMaster, id: i64) -> Option<ProcState> {
    master
        .reports(id)
        .iter()
        .map(|r| r.state)
        .find(|s| s.is_final())
}

#[actix_web::test]
async fn a_real_runner_starts_once_reports_and_cleans_up() {
    let runner = real_runner();
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 4))
        .await
        .expect("worker starts");
    let env = envelope(
        31,
        &master.url,
        json!({"cmd": ["sh", "-c", "echo hello from the runner; sleep 2"]}),
    );
    let (status, body) = post_run(&worker.url(), Some(SECRET), &env).await;
    assert_eq!(status, 201, "{body}");
    let started: RunStarted = serde_json::from_value(body).expect("RunStarted");
    let dir = PathBuf::from(&started.directory);
    assert!(dir.starts_with(sb.work_root()));
    let mode = std::fs::metadata(dir.join("envelope.json"))
        .expect("envelope.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the envelope holds the token");

    // The same envelope again: the same runner.
    let (status, again) = post_run(&worker.url(), Some(SECRET), &env).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["pid"], started.pid);

    let seen = master.beats().len();
    wait_for(10, "a heartbeat listing process 31", || async {
        master.listed(31, seen)
    })
    .await;
    wait_for(30, "the final report", || async {
        final_state(&master, 31).is_some()
    })
    .await;
    assert_eq!(final_state(&master, 31), Some(ProcState::Success));
    let states: Vec<_> = master.reports(31).iter().map(|r| r.state).collect();
    assert!(states.contains(&ProcState::Running), "{states:?}");
    let log = master.seen.lock().expect("lock").logs.get(&31).cloned();
    let log = String::from_utf8_lossy(&log.unwrap_or_default()).into_owned();
    assert!(
        log.contains("\nhello from the runner\n"),
        "the whole log arrived: {log}"
    );
    wait_for(
        10,
        "the working dir to be removed after delivery",
        || async { !dir.exists() },
    )
    .await;
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn delete_stops_a_real_runners_whole_command_group() {
    let runner = real_runner();
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 1))
        .await
        .expect("worker starts");
    let spec = json!({"cmd": "sh -c 'sleep 300 & sleep 300'"});
    let (status, body) = post_run(
        &worker.url(),
        Some(SECRET),
        &envelope(32, &master.url, spec.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // At max_procs (1): another process is refused.
    let (status, _) = post_run(
        &worker.url(),
        Some(SECRET),
        &envelope(33, &master.url, spec),
    )
    .await;
    assert_eq!(status, 503);

    wait_for(30, "the running report with the command's pid", || async {
        master
            .reports(32)
            .iter()
            .any(|r| r.state == ProcState::Running && r.pid.is_some())
    })
    .await;
    let command_pid = master
        .reports(32)
        .iter()
        .find_map(|r| r.pid)
        .expect("a pid");
    assert!(group_alive(command_pid), "the command's group runs");
    let (status, body) = delete_proc(&worker.url(), Some(SECRET), 32).await;
    assert_eq!(status, 200, "{body}");
    wait_for(30, "the killed report", || async {
        final_state(&master, 32).is_some()
    })
    .await;
    assert_eq!(final_state(&master, 32), Some(ProcState::Killed));
    wait_for(15, "no survivor of the command's group", || async {
        !group_alive(command_pid)
    })
    .await;
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn kill_9_of_the_worker_never_stops_a_real_runner() {
    let runner = real_runner();
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let config = sb.config(&master.url, &runner, 2);
    let mut first = WorkerProcess::start(&sb, &config, "worker-1").await;
    let (status, body) = post_run(
        &first.url,
        Some(SECRET),
        &envelope(
            34,
            &master.url,
            json!({"cmd": ["sh", "-c", "sleep 3; echo done"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let started: RunStarted = serde_json::from_value(body).expect("RunStarted");
    wait_for(30, "the running report", || async {
        master
            .reports(34)
            .iter()
            .any(|r| r.state == ProcState::Running)
    })
    .await;
    let command_pid = master.reports(34).iter().find_map(|r| r.pid);

    first.kill9();
    assert!(
        alive(started.pid),
        "the runner outlives kill -9 of its worker"
    );
    let seen = master.beats().len();
    let _second = WorkerProcess::start(&sb, &config, "worker-2").await;
    wait_for(10, "the restarted worker to list process 34", || async {
        master.listed(34, seen) || final_state(&master, 34).is_some()
    })
    .await;
    wait_for(30, "the final report", || async {
        final_state(&master, 34).is_some()
    })
    .await;
    assert_eq!(final_state(&master, 34), Some(ProcState::Success));
    let success = master
        .reports(34)
        .into_iter()
        .find(|r| r.state == ProcState::Success)
        .expect("success");
    if let (Some(a), Some(b)) = (command_pid, success.pid) {
        assert_eq!(a, b, "the same command, not a second one");
    }
    let log = master.seen.lock().expect("lock").logs.get(&34).cloned();
    let log = String::from_utf8_lossy(&log.unwrap_or_default()).into_owned();
    assert!(log.contains("\ndone\n"), "the whole log arrived: {log}");
    master.stop().await;
}
