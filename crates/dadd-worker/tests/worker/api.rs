//! The worker's API against a stand-in runner: auth, `/up`, `/run` once per
//! process id, capacity, `GET /procs`, `DELETE /procs/{id}`.

use std::os::unix::fs::PermissionsExt;

use dadd_spec::api::{RunStarted, WorkerProc, WorkerUp};
use serde_json::json;

use crate::support::*;

#[actix_web::test]
async fn up_says_available_with_capacity() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = sb.fake_runner();
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 3))
        .await
        .expect("worker starts");
    let (status, body) = get_json(&format!("{}/up", worker.url())).await;
    assert_eq!(status, 200);
    let up: WorkerUp = serde_json::from_value(body).expect("a WorkerUp");
    assert_eq!(up.worker_status, "available");
    assert_eq!(up.max_procs, 3);
    assert_eq!(up.running, 0);
    assert_eq!(up.version, dadd_spec::VERSION);
    // Trailing slashes are accepted.
    let (status, _) = get_json(&format!("{}/up/", worker.url())).await;
    assert_eq!(status, 200);

    // Heartbeats carry the secret, the bound address and the capacity.
    wait_for(10, "a heartbeat", || async { !master.beats().is_empty() }).await;
    let beat = &master.beats()[0];
    assert_eq!(beat.auth.as_deref(), Some(&*format!("Bearer {SECRET}")));
    assert_eq!(beat.beat.host, "127.0.0.1");
    assert_eq!(beat.beat.port, worker.addr().port());
    assert_eq!(beat.beat.max_procs, 3);
    assert_eq!(beat.beat.scheme, "http");
    assert!(beat.beat.running.is_empty());
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn run_without_or_with_a_wrong_secret_is_401() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = sb.fake_runner();
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 2))
        .await
        .expect("worker starts");
    let env = envelope(1, &master.url, json!({"cmd": "true"}));
    for secret in [None, Some("wrong"), Some("")] {
        let (status, body) = post_run(&worker.url(), secret, &env).await;
        assert_eq!(status, 401, "secret {secret:?}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("cluster secret")),
            "{body}"
        );
    }
    let (status, _) = delete_proc(&worker.url(), Some("wrong"), 1).await;
    assert_eq!(status, 401);
    assert!(
        std::fs::read_dir(sb.work_root())
            .expect("ls")
            .next()
            .is_none(),
        "nothing was started"
    );
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn run_starts_one_detached_runner_per_process_id() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = sb.fake_runner();
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 4))
        .await
        .expect("worker starts");
    let env = envelope(7, &master.url, json!({"cmd": "sleep 300"}));

    // The same envelope twice at once, then once more: one runner.
    let url = worker.url();
    let (a, b) = tokio::join!(
        post_run(&url, Some(SECRET), &env),
        post_run(&url, Some(SECRET), &env)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201], "one start, one repeat: {a:?} {b:?}");
    let first: RunStarted = serde_json::from_value(a.1).expect("RunStarted");
    let second: RunStarted = serde_json::from_value(b.1).expect("RunStarted");
    assert_eq!(first, second);
    let (status, again) = post_run(&worker.url(), Some(SECRET), &env).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_value::<RunStarted>(again).expect("RunStarted"),
        first
    );
    let dirs: Vec<_> = std::fs::read_dir(sb.work_root())
        .expect("ls")
        .filter_map(Result::ok)
        .collect();
    assert_eq!(dirs.len(), 1, "one working dir");

    // The working dir: under the work root, named for the process, envelope 0600.
    let dir = std::path::PathBuf::from(&first.directory);
    assert!(dir.starts_with(sb.work_root()), "{}", dir.display());
    assert!(dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("proc-7-")));
    let mode = std::fs::metadata(dir.join("envelope.json"))
        .expect("envelope.json")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(dir.join("spec.json").is_file());

    // The runner shares no session or process group with the worker.
    assert!(alive(first.pid));
    let runner_pid = nix::unistd::Pid::from_raw(first.pid);
    let sid = nix::unistd::getsid(Some(runner_pid)).expect("sid");
    assert_eq!(sid, runner_pid, "the runner leads its own session");
    assert_ne!(sid, nix::unistd::getsid(None).expect("our sid"));

    // Listed by heartbeats, /up and /procs.
    let seen = master.beats().len();
    wait_for(10, "a heartbeat listing process 7", || async {
        master.listed(7, seen)
    })
    .await;
    let (_, up) = get_json(&format!("{}/up", worker.url())).await;
    assert_eq!(up["running"], 1);
    let (status, procs) = get_json(&format!("{}/procs", worker.url())).await;
    assert_eq!(status, 200);
    let procs: Vec<WorkerProc> = serde_json::from_value(procs).expect("[WorkerProc]");
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].process_id, Some(7));
    assert!(procs[0].alive);
    assert_eq!(procs[0].record.runner_pid, first.pid);
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn at_max_procs_run_is_503() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = sb.fake_runner();
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 1))
        .await
        .expect("worker starts");
    let spec = json!({"cmd": "sleep 300"});
    let (status, _) = post_run(
        &worker.url(),
        Some(SECRET),
        &envelope(1, &master.url, spec.clone()),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = post_run(
        &worker.url(),
        Some(SECRET),
        &envelope(2, &master.url, spec.clone()),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("full")),
        "{body}"
    );
    let (_, up) = get_json(&format!("{}/up", worker.url())).await;
    assert_eq!(up["worker_status"], "full");
    // A repeat of the running one is still answered.
    let (status, _) = post_run(&worker.url(), Some(SECRET), &envelope(1, &master.url, spec)).await;
    assert_eq!(status, 200);
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn delete_stops_the_runner_and_its_command() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = sb.fake_runner();
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 2))
        .await
        .expect("worker starts");
    let (status, body) = post_run(
        &worker.url(),
        Some(SECRET),
        &envelope(3, &master.url, json!({"cmd": "sleep 300"})),
    )
    .await;
    assert_eq!(status, 201);
    let started: RunStarted = serde_json::from_value(body).expect("RunStarted");

    let (status, _) = delete_proc(&worker.url(), Some(SECRET), 99).await;
    assert_eq!(status, 404, "unknown process");
    let (status, body) = delete_proc(&worker.url(), Some(SECRET), 3).await;
    assert_eq!(status, 200, "{body}");
    wait_for(10, "the runner's group to be gone", || async {
        !group_alive(started.pid)
    })
    .await;
    let (status, body) = delete_proc(&worker.url(), Some(SECRET), 3).await;
    assert_eq!(status, 409, "already finished: {body}");
    assert_eq!(body["current_state"], "killed");
    // Finished but not delivered: still listed, not alive.
    let (_, procs) = get_json(&format!("{}/procs", worker.url())).await;
    assert_eq!(procs[0]["alive"], false, "{procs}");
    assert_eq!(procs[0]["record"]["state"], "killed");
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn a_runner_that_fails_to_start_is_500_with_its_stderr() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = script(
        sb.dir.path(),
        "broken-runner",
        "#!/bin/sh\necho 'cannot read the envelope: permission denied' >&2\nexit 2\n",
    );
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 2))
        .await
        .expect("worker starts");
    let env = envelope(4, &master.url, json!({"cmd": "true"}));
    let (status, body) = post_run(&worker.url(), Some(SECRET), &env).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        body["details"],
        json!(["cannot read the envelope: permission denied"]),
        "{body}"
    );
    assert!(
        std::fs::read_dir(sb.work_root())
            .expect("ls")
            .next()
            .is_none(),
        "the failed start's dir is removed, so the process can be sent again"
    );
    // An invalid spec is refused before any runner starts.
    let bad = envelope(5, &master.url, json!({"cmd": ""}));
    let (status, body) = post_run(&worker.url(), Some(SECRET), &bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["details"].as_array().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    worker.stop().await;
    master.stop().await;
}

#[actix_web::test]
async fn undelivered_results_are_listed_and_not_heartbeated() {
    let sb = Sandbox::new();
    let master = FakeMaster::start().await;
    let runner = sb.fake_runner();
    // A runner that ended while the master was away: its dir stays, undelivered.
    let dir = sb.work_root().join("proc-11-abcdef");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(
        dir.join("state.json"),
        json!({
            "process_id": 11, "state": "success", "runner_pid": i32::MAX,
            "runner_start_ticks": 1, "exit_code": 0,
            "started_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:01Z",
            "delivery": "undelivered"
        })
        .to_string(),
    )
    .expect("write");
    let worker = dadd_worker::start(sb.config(&master.url, &runner, 2))
        .await
        .expect("worker starts");
    let (_, procs) = get_json(&format!("{}/procs", worker.url())).await;
    let procs: Vec<WorkerProc> = serde_json::from_value(procs).expect("[WorkerProc]");
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0].process_id, Some(11));
    assert!(!procs[0].alive);
    wait_for(10, "a heartbeat", || async { !master.beats().is_empty() }).await;
    assert!(
        master.beats()[0].beat.running.is_empty(),
        "not a live runner"
    );
    // Sent again, it is answered from the dir, not started a second time.
    let (status, _) = post_run(
        &worker.url(),
        Some(SECRET),
        &envelope(11, &master.url, json!({"cmd": "true"})),
    )
    .await;
    assert_eq!(status, 200);
    worker.stop().await;
    master.stop().await;
}
