//! Refusals: no token, a wrong token, a process token used elsewhere.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::json;

use crate::both;
use crate::support::{eventually, spec, Backend, FakeWorker, Mode, TestMaster};

async fn status(
    m: &TestMaster,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> StatusCode {
    let meth = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = m.client.request(meth, format!("{}{path}", m.url));
    if let Some(t) = token {
        r = r.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let resp = match body {
        Some(b) => r.send_json(&b).await,
        None => r.send().await,
    }
    .expect("sent");
    resp.status()
}

async fn refusals(b: Backend) {
    let Some(m) = TestMaster::start(b, |c| {
        c.auth.api_tokens = vec!["user-token".into()];
        c.auth.cluster_secret = Some("cluster-secret".into());
    })
    .await
    else {
        return;
    };
    let mut r = m
        .client
        .get(format!("{}/api/procs", m.url))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v["error"]
        .as_str()
        .expect("error")
        .contains("Authorization"));
    assert_eq!(
        status(&m, "GET", "/api/procs", Some("wrong"), None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&m, "GET", "/api/procs", Some("user-token"), None).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&m, "GET", "/files/", None, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&m, "GET", "/metrics", None, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&m, "GET", "/api/health", None, None).await,
        StatusCode::OK,
        "health stays open"
    );

    // Hosts register with the cluster secret only.
    let w = FakeWorker::start(Mode::Accept).await;
    let (s, _) = m.heartbeat(w.addr, 4, &[], None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = m.heartbeat(w.addr, 4, &[], Some("user-token")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = m.heartbeat(w.addr, 4, &[], Some("cluster-secret")).await;
    assert_eq!(s, StatusCode::OK);

    let a = m.submit(spec("echo a")).await;
    let b2 = m.submit(spec("echo b")).await;
    let runs = eventually("two placements", Duration::from_secs(10), || async {
        let r = w.runs();
        (r.len() == 2).then_some(r)
    })
    .await;
    let tok_a = runs
        .iter()
        .find(|e| e.process_id == a.id)
        .expect("a placed")
        .token
        .clone();
    let report = json!({"state": "setup"});
    assert_eq!(
        status(
            &m,
            "PUT",
            &format!("/api/procs/{}/state", a.id),
            Some(&tok_a),
            Some(report.clone())
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &m,
            "PUT",
            &format!("/api/procs/{}/state", b2.id),
            Some(&tok_a),
            Some(report.clone())
        )
        .await,
        StatusCode::FORBIDDEN,
        "a process token is good for its own process only"
    );
    assert_eq!(
        status(
            &m,
            "PUT",
            &format!("/api/procs/{}/state", b2.id),
            None,
            Some(report.clone())
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&m, "GET", "/api/procs", Some(&tok_a), None).await,
        StatusCode::FORBIDDEN,
        "not an API token"
    );
    assert_eq!(
        status(
            &m,
            "PUT",
            &format!("/api/procs/{}/logfile?offset=0", b2.id),
            Some(&tok_a),
            None
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(
            &m,
            "PUT",
            &format!("/api/procs/{}/state", b2.id),
            Some("user-token"),
            Some(report)
        )
        .await,
        StatusCode::OK,
        "API tokens are accepted on report routes"
    );
    assert!(w
        .seen
        .lock()
        .expect("seen")
        .auth
        .iter()
        .all(|a| a.as_deref() == Some("Bearer cluster-secret")));
    w.stop().await;
    m.stop().await;
}
both!(refusals);
