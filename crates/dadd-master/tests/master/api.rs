//! The process, host and service routes as a user and a runner see them.

use std::time::Duration;

use awc::http::StatusCode;
use dadd_spec::api::{ProcList, ProcSummary};
use dadd_spec::ProcState;
use serde_json::json;

use crate::both;
use crate::support::{eventually, spec, Backend, FakeWorker, Mode, TestMaster};

async fn submit_list_show(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let mut resp = m
        .req("POST", "/api/procs/")
        .send_json(&spec("echo one"))
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let loc = resp
        .headers()
        .get("location")
        .expect("Location")
        .to_str()
        .expect("ascii")
        .to_owned();
    let first: ProcSummary = resp.json().await.expect("summary");
    assert_eq!(loc, format!("/api/procs/{}", first.id));
    assert_eq!(first.state, ProcState::Queued);
    assert_eq!(first.cmd, ["echo", "one"]);
    let second = m.submit(spec("echo two")).await;
    let third = m
        .submit(json!({"cmd": ["echo", "three"], "timeout": 5}))
        .await;

    let (s, v) = m.call("GET", "/api/procs?limit=2", None).await;
    assert_eq!(s, StatusCode::OK);
    let page: ProcList = serde_json::from_value(v).expect("list");
    assert_eq!(
        page.procs.iter().map(|p| p.id).collect::<Vec<_>>(),
        [third.id, second.id],
        "newest first"
    );
    let next = page.next.expect("a next cursor");
    let (_, v) = m
        .call("GET", &format!("/api/procs/?limit=2&next={next}"), None)
        .await;
    let page: ProcList = serde_json::from_value(v).expect("list");
    assert_eq!(
        page.procs.iter().map(|p| p.id).collect::<Vec<_>>(),
        [first.id]
    );
    assert!(page.next.is_none());

    let (_, v) = m.call("GET", "/api/procs?state=running", None).await;
    assert!(serde_json::from_value::<ProcList>(v)
        .expect("list")
        .procs
        .is_empty());
    let (s, v) = m.call("GET", "/api/procs?state=bogus", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = m.call("GET", "/api/procs?limit=0", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let d = m.proc(third.id).await;
    assert_eq!(d.spec, json!({"cmd": ["echo", "three"], "timeout": 5}));
    assert_eq!(d.history.len(), 1);
    assert_eq!(d.log_url, format!("/api/procs/{}/logfile", third.id));
    let (s, v) = m.call("GET", "/api/procs/999999", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().expect("error").contains("999999"));
    m.stop().await;
}
both!(submit_list_show);

async fn hostile_bodies(b: Backend) {
    let Some(m) = TestMaster::start(b, |c| c.limits.spec_bytes = 2048).await else {
        return;
    };
    let (s, v) = m
        .call("POST", "/api/procs", Some(json!({"cmd": "", "python_dep": "x", "timeout": -1, "download_urls": ["ftp://x/y"]})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let details: Vec<String> = serde_json::from_value(v["details"].clone()).expect("details");
    assert!(details.len() >= 4, "every problem listed: {details:?}");
    assert!(
        details.iter().any(|d| d.contains("python_deps")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d.starts_with("download_urls[0]")),
        "{details:?}"
    );

    let mut resp = m
        .req("POST", "/api/procs")
        .content_type("application/json")
        .send_body("{not json")
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: serde_json::Value = resp.json().await.expect("json error");
    assert!(v["error"].is_string());

    let big = json!({"cmd": "echo", "config": {"x": "y".repeat(4096)}});
    let (s, v) = m.call("POST", "/api/procs", Some(big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(v["error"].as_str().expect("error").contains("2048"));

    let (s, _) = m.call("POST", "/api/procs", Some(json!([1, 2]))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = m
        .call("PUT", "/api/procs/1/state", Some(json!({"state": "nope"})))
        .await;
    assert!(
        s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND,
        "{s} {v}"
    );
    let (s, _) = m
        .call(
            "POST",
            "/api/hosts",
            Some(json!({"host": "", "port": 0, "max_procs": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    m.stop().await;
}
both!(hostile_bodies);

async fn transitions(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let p = m.submit(spec("true")).await;
    let (s, v) = m.report(p.id, json!({"state": "setup"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "setup");
    let (s, v) = m.report(p.id, json!({"state": "setup"})).await;
    assert_eq!(s, StatusCode::OK, "a repeat is harmless: {v}");
    let (s, _) = m.report(p.id, json!({"state": "running", "pid": 77})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = m.report(p.id, json!({"state": "init"})).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "init is the master's own state: {v}"
    );
    let (s, v) = m
        .call(
            "POST",
            &format!("/api/procs/{}/failed", p.id),
            Some(json!({"exit_code": 3, "reason": "boom"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["exit_code"], 3);
    let (s, v) = m.report(p.id, json!({"state": "running"})).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["current_state"], "failed");
    let (s, _) = m
        .call("POST", &format!("/api/procs/{}/failed", p.id), None)
        .await;
    assert_eq!(s, StatusCode::OK, "a repeated final report is 200");
    let d = m.proc(p.id).await;
    let states: Vec<ProcState> = d.history.iter().map(|h| h.state).collect();
    assert_eq!(
        states,
        [
            ProcState::Queued,
            ProcState::Setup,
            ProcState::Running,
            ProcState::Failed
        ]
    );
    assert_eq!(d.summary.pid, Some(77));
    assert!(d.summary.started_at.is_some() && d.summary.ended_at.is_some());
    let (s, v) = m
        .call("POST", &format!("/api/procs/{}/bogus", p.id), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    m.stop().await;
}
both!(transitions);

async fn vanished_runner_is_lost_then_replaced(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let w = FakeWorker::start(Mode::Accept).await;
    m.heartbeat(w.addr, 4, &[], None).await;
    let p = m.submit(spec("sleep 100")).await;
    eventually("placement", Duration::from_secs(10), || async {
        (!w.runs().is_empty()).then_some(())
    })
    .await;
    m.report(p.id, json!({"state": "running"})).await;
    m.heartbeat(w.addr, 4, &[p.id], None).await;
    m.heartbeat(w.addr, 4, &[], None).await;
    assert_eq!(
        m.proc(p.id).await.summary.state,
        ProcState::Running,
        "one miss is tolerated"
    );
    m.heartbeat(w.addr, 4, &[], None).await;
    let d = m.proc(p.id).await;
    assert_eq!(d.summary.state, ProcState::Lost);
    assert_eq!(d.summary.reason.as_deref(), Some("runner vanished"));
    let (s, v) = m
        .report(p.id, json!({"state": "success", "exit_code": 0}))
        .await;
    assert_eq!(s, StatusCode::OK, "the runner's word replaces lost: {v}");
    let d = m.proc(p.id).await;
    assert_eq!(d.summary.state, ProcState::Success);
    assert_eq!(d.summary.reason, None);
    w.stop().await;
    m.stop().await;
}
both!(vanished_runner_is_lost_then_replaced);

async fn kill(b: Backend) {
    let Some(m) = TestMaster::start(b, |c| c.auth.cluster_secret = Some("s3cret".into())).await
    else {
        return;
    };
    let q = m.submit(spec("sleep 1")).await;
    let (s, v) = m
        .call("DELETE", &format!("/api/procs/{}/", q.id), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "killed");
    let (s, v) = m
        .call("POST", &format!("/api/procs/{}/kill", q.id), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["current_state"], "killed");

    let w = FakeWorker::start(Mode::Accept).await;
    m.heartbeat(w.addr, 4, &[], Some("s3cret")).await;
    let p = m.submit(spec("sleep 100")).await;
    eventually("placement", Duration::from_secs(10), || async {
        (!w.runs().is_empty()).then_some(())
    })
    .await;
    let (s, v) = m
        .call("DELETE", &format!("/api/procs/{}", p.id), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    {
        let seen = w.seen.lock().expect("seen");
        assert_eq!(seen.kills, [p.id]);
        assert!(
            seen.auth
                .iter()
                .all(|a| a.as_deref() == Some("Bearer s3cret")),
            "cluster secret on every call"
        );
    }
    let (s, _) = m
        .report(p.id, json!({"state": "killed", "signal": 15}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m.proc(p.id).await.summary.state, ProcState::Killed);
    w.stop().await;
    m.stop().await;
}
both!(kill);

async fn hosts(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let w = FakeWorker::start(Mode::Accept).await;
    let (s, v) = m.heartbeat(w.addr, 3, &[], None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "up");
    assert_eq!(v["max_procs"], 3);
    let id = v["id"].as_i64().expect("id");
    let addr = w.addr.to_string();
    let hosts = m.hosts().await;
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].address, addr);
    let (s, v) = m.call("GET", &format!("/api/hosts/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["address"], addr.as_str());
    let (s, _) = m.call("GET", &format!("/api/hosts/{addr}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = m.heartbeat(w.addr, 5, &[], None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        m.hosts().await[0].max_procs,
        5,
        "a heartbeat updates, never duplicates"
    );
    let (s, _) = m.call("DELETE", &format!("/api/hosts/{addr}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = m.call("GET", &format!("/api/hosts/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    w.stop().await;
    m.stop().await;
}
both!(hosts);

async fn health_metrics_openapi(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let (s, v) = m.call("GET", "/api/health", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(
        v["store"],
        if b == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    m.submit(spec("true")).await;
    let mut resp = m.req("GET", "/metrics").send().await.expect("sent");
    let text = String::from_utf8(resp.body().await.expect("body").to_vec()).expect("utf8");
    assert!(
        text.contains("dadd_processes{state=\"queued\"} 1"),
        "{text}"
    );
    assert!(text.contains("dadd_hosts_up 0"));
    assert!(text.contains("dadd_dispatch_latency_seconds_bucket{le=\"+Inf\"}"));
    let (s, doc) = m.call("GET", "/api/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    // Every route in the document answers with something other than "no route".
    for (method, path, _) in dadd_master::api::ROUTES {
        assert!(
            doc["paths"][*path][*method].is_object(),
            "{method} {path} documented"
        );
        let concrete = path
            .replace("{id}", "1")
            .replace("{state}", "running")
            .replace("{host}", "1")
            .replace("{path}", "a.txt");
        let (_, v) = m.call(&method.to_uppercase(), &concrete, None).await;
        let err = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
        assert!(
            !err.starts_with("no route"),
            "{method} {path} is routed: {err}"
        );
    }
    m.stop().await;
}
both!(health_metrics_openapi);

async fn retention_prunes_old_finished(b: Backend) {
    let Some(m) = TestMaster::start(b, |c| {
        c.retention.days = Some(1e-8); // about a millisecond
        c.retention.interval_secs = 0.05;
    })
    .await
    else {
        return;
    };
    let done = m.submit(spec("true")).await;
    let (s, _) = m
        .report(done.id, json!({"state": "success", "exit_code": 0}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let kept = m.submit(spec("true")).await;
    eventually("pruning", Duration::from_secs(10), || async {
        let (s, _) = m
            .call("GET", &format!("/api/procs/{}", done.id), None)
            .await;
        (s == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(
        m.proc(kept.id).await.summary.state,
        ProcState::Queued,
        "unfinished processes stay"
    );
    m.stop().await;
}
both!(retention_prunes_old_finished);

#[actix_web::test]
async fn refuses_open_listener_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = crate::support::TestDb::new(Backend::Sqlite, dir.path())
        .await
        .expect("db");
    let mut cfg = crate::support::test_config(dir.path(), &db);
    cfg.bind = "0.0.0.0:0".into();
    let err = dadd_master::start(cfg.clone()).await.expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("--insecure") && msg.contains("DADD_AUTH__API_TOKENS"),
        "{msg}"
    );
    cfg.insecure = true;
    let h = dadd_master::start(cfg).await.expect("--insecure allows it");
    h.stop().await;
}
