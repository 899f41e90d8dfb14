//! Several masters: heartbeats move to the next master when one stops
//! answering, and runners are given the other masters as fallbacks.

use dadd_spec::api::{RunEnvelope, RunStarted};
use serde_json::json;

use crate::support::*;

#[actix_web::test]
async fn heartbeats_move_to_the_next_master_when_one_stops() {
    let sb = Sandbox::new();
    let first = FakeMaster::start().await;
    let second = FakeMaster::start().await;
    let runner = sb.fake_runner();
    let config = sb.config("http://127.0.0.1:1", &runner, 2);
    // `master` as a TOML array, the way an operator writes a list.
    let masters = [first.url.clone(), second.url.clone()];
    let worker = WorkerProcess::start_edited(&sb, &config, "worker", |t| {
        t.insert(
            "master".into(),
            toml::Value::try_from(masters).expect("array"),
        );
    })
    .await;

    wait_for(10, "heartbeats to the first master", || async {
        first.beats().len() >= 2
    })
    .await;
    assert!(second.beats().is_empty(), "one master at a time");

    first.stop().await;
    wait_for(10, "heartbeats to the second master", || async {
        second.beats().len() >= 2
    })
    .await;
    let log = worker.log();
    assert!(
        log.contains(&format!("heartbeats now go to {}/", second.url)),
        "{log}"
    );
    assert!(
        !log.contains("heartbeat failed"),
        "a master changing is not an outage:\n{log}"
    );
    second.stop().await;
}

#[actix_web::test]
async fn runners_get_the_other_masters_as_fallbacks() {
    let sb = Sandbox::new();
    let first = FakeMaster::start().await;
    let other = "http://127.0.0.1:1";
    let runner = sb.fake_runner();
    let masters = format!("{},{other}/", first.url);
    let worker = dadd_worker::start(sb.config(&masters, &runner, 2))
        .await
        .expect("worker starts");

    let mut env = envelope(3, &format!("{}/", first.url), json!({"cmd": "sleep 300"}));
    env.fallback_urls = vec!["https://lb.example/dadd".into()];
    let (status, body) = post_run(&worker.url(), Some(SECRET), &env).await;
    assert_eq!(status, 201, "{body}");
    let started: RunStarted = serde_json::from_value(body).expect("RunStarted");
    let written = std::fs::read(std::path::Path::new(&started.directory).join("envelope.json"))
        .expect("envelope.json");
    let written: RunEnvelope = serde_json::from_slice(&written).expect("an envelope");
    assert_eq!(written.master_url, env.master_url, "the sender stays first");
    assert_eq!(
        written.fallback_urls,
        vec!["https://lb.example/dadd".to_owned(), format!("{other}/")],
        "the master's own fallbacks, then the worker's other masters"
    );
    worker.stop().await;
    first.stop().await;
}
