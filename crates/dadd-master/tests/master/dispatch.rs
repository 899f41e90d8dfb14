//! Placement: order, capacity, spreading, retries past bad hosts, queueing
//! until a host comes, and host liveness.

use std::time::Duration;

use awc::http::StatusCode;
use dadd_spec::api::{HostStatus, ProcList};
use dadd_spec::ProcState;
use serde_json::json;

use crate::both;
use crate::support::{dead_addr, eventually, spec, Backend, FakeWorker, Mode, TestMaster};

const WAIT: Duration = Duration::from_secs(10);

async fn states(m: &TestMaster) -> Vec<(i64, ProcState, Option<String>)> {
    let (_, v) = m.call("GET", "/api/procs?limit=1000", None).await;
    let l: ProcList = serde_json::from_value(v).expect("list");
    let mut out: Vec<_> = l
        .procs
        .into_iter()
        .map(|p| (p.id, p.state, p.host))
        .collect();
    out.sort_by_key(|p| p.0);
    out
}

async fn order_and_capacity(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let w1 = FakeWorker::start(Mode::Accept).await;
    let w2 = FakeWorker::start(Mode::Accept).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(m.submit(spec(&format!("echo {i}"))).await.id);
    }
    m.heartbeat(w1.addr, 2, &[], None).await;
    m.heartbeat(w2.addr, 2, &[], None).await;
    eventually("four placements", WAIT, || async {
        (w1.runs().len() + w2.runs().len() == 4).then_some(())
    })
    .await;
    let st = states(&m).await;
    let placed: Vec<i64> = st
        .iter()
        .filter(|p| p.1 == ProcState::Init)
        .map(|p| p.0)
        .collect();
    assert_eq!(placed, ids[..4], "oldest first");
    assert_eq!(st[4].1, ProcState::Queued, "never past max_procs");
    assert_eq!(w1.runs().len(), 2);
    assert_eq!(w2.runs().len(), 2);
    let env = &w1.runs()[0];
    assert_eq!(env.master_url, m.url);
    assert_eq!(env.token.len(), 64);
    assert!(env.spec["cmd"].is_string());
    let d = m.proc(env.process_id).await;
    assert_eq!(
        d.summary.host.as_deref(),
        Some(w1.addr.to_string().as_str())
    );
    let (_, v) = m
        .call("GET", &format!("/api/procs?host={}", w1.addr), None)
        .await;
    assert_eq!(
        v["procs"].as_array().expect("procs").len(),
        2,
        "host filter"
    );

    // A process ending frees a slot: the last one is placed at once.
    let (s, _) = m
        .report(ids[0], json!({"state": "success", "exit_code": 0}))
        .await;
    assert_eq!(s, StatusCode::OK);
    eventually("the fifth placement", WAIT, || async {
        (w1.runs().len() + w2.runs().len() == 5).then_some(())
    })
    .await;
    let hosts = m.hosts().await;
    assert!(hosts
        .iter()
        .all(|h| h.running == 2 && h.status == HostStatus::Up));
    w1.stop().await;
    w2.stop().await;
    m.stop().await;
}
both!(order_and_capacity);

async fn fewest_first(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let w1 = FakeWorker::start(Mode::Accept).await;
    let w2 = FakeWorker::start(Mode::Accept).await;
    m.heartbeat(w1.addr, 10, &[], None).await;
    m.heartbeat(w2.addr, 10, &[], None).await;
    let busy = m.submit(spec("first")).await;
    eventually("first placement", WAIT, || async {
        (w1.runs().len() + w2.runs().len() == 1).then_some(())
    })
    .await;
    for i in 0..5 {
        m.submit(spec(&format!("echo {i}"))).await;
    }
    eventually("six placements", WAIT, || async {
        (w1.runs().len() + w2.runs().len() == 6).then_some(())
    })
    .await;
    assert_eq!(w1.runs().len(), 3, "spread evenly");
    assert_eq!(w2.runs().len(), 3);
    assert!(m.proc(busy.id).await.summary.host.is_some());
    w1.stop().await;
    w2.stop().await;
    m.stop().await;
}
both!(fewest_first);

async fn retry_past_bad_hosts(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let good = FakeWorker::start(Mode::Accept).await;
    let full = FakeWorker::start(Mode::Full).await;
    let broken = FakeWorker::start(Mode::Broken).await;
    // The dead and failing hosts are registered first, so they are tried first.
    m.heartbeat(dead_addr(), 5, &[], None).await;
    m.heartbeat(full.addr, 5, &[], None).await;
    m.heartbeat(broken.addr, 5, &[], None).await;
    m.heartbeat(good.addr, 5, &[], None).await;
    for i in 0..4 {
        m.submit(spec(&format!("echo {i}"))).await;
    }
    eventually("all on the good host", WAIT, || async {
        (good.runs().len() == 4).then_some(())
    })
    .await;
    let st = states(&m).await;
    assert!(
        st.iter()
            .all(|p| p.1 == ProcState::Init
                && p.2.as_deref() == Some(good.addr.to_string().as_str())),
        "{st:?}"
    );
    for p in &st {
        let d = m.proc(p.0).await;
        let h: Vec<_> = d.history.iter().map(|h| h.state).collect();
        assert_eq!(
            h,
            [ProcState::Queued, ProcState::Init],
            "an undone placement leaves no trace"
        );
    }
    for w in [good, full, broken] {
        w.stop().await;
    }
    m.stop().await;
}
both!(retry_past_bad_hosts);

async fn queued_until_a_host_comes(b: Backend) {
    // A backoff well past the look below: the full host is not tried again
    // meanwhile (each try would show the process `init` for a moment).
    let Some(m) = TestMaster::start(b, |c| c.dispatch.host_backoff_secs = 5.0).await else {
        return;
    };
    let p = m.submit(spec("echo wait")).await;
    let w = FakeWorker::start(Mode::Full).await;
    m.heartbeat(w.addr, 1, &[], None).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        m.proc(p.id).await.summary.state,
        ProcState::Queued,
        "no host with room: it waits"
    );
    w.set_mode(Mode::Accept);
    let w2 = FakeWorker::start(Mode::Accept).await;
    m.heartbeat(w2.addr, 1, &[], None).await;
    eventually("placement after registration", WAIT, || async {
        (w2.runs().len() + w.runs().len() == 1).then_some(())
    })
    .await;
    assert_eq!(m.proc(p.id).await.summary.state, ProcState::Init);
    w.stop().await;
    w2.stop().await;
    m.stop().await;
}
both!(queued_until_a_host_comes);

async fn silent_host_goes_down(b: Backend) {
    let Some(m) = TestMaster::start(b, |c| c.liveness.host_ttl_secs = 0.6).await else {
        return;
    };
    let w = FakeWorker::start(Mode::Accept).await;
    m.heartbeat(w.addr, 2, &[], None).await;
    let p = m.submit(spec("sleep 100")).await;
    eventually("placement", WAIT, || async {
        (!w.runs().is_empty()).then_some(())
    })
    .await;
    m.report(p.id, json!({"state": "running"})).await;
    // No more heartbeats: past the TTL the host is down and its process lost.
    let d = eventually("lost", WAIT, || async {
        let d = m.proc(p.id).await;
        (d.summary.state == ProcState::Lost).then_some(d)
    })
    .await;
    assert_eq!(d.summary.reason.as_deref(), Some("host down"));
    assert_eq!(m.hosts().await[0].status, HostStatus::Down);
    // It comes back; the runner's report replaces lost.
    m.heartbeat(w.addr, 2, &[p.id], None).await;
    assert_eq!(m.hosts().await[0].status, HostStatus::Up);
    let (s, _) = m
        .report(p.id, json!({"state": "success", "exit_code": 0}))
        .await;
    assert_eq!(s, StatusCode::OK);
    w.stop().await;
    m.stop().await;
}
both!(silent_host_goes_down);
