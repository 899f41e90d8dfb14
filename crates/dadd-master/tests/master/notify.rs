//! Notifications on failure: a webhook (retried) and an email, both to sinks
//! started here on loopback; the outbox across a master's stop, a dead
//! master's lease, and two masters on one database.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use dadd_master::config::StoreConfig;
use dadd_master::store::{now_ms, Change, Store};
use dadd_master::Config;
use dadd_spec::ProcState;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::both;
use crate::support::{eventually, spec, Backend, Kept, TestMaster};

/// A webhook answering with a status the test sets (500 to its first
/// `refuse` calls); it records every call and, for the accepted ones, when
/// (ms) and what.
struct Hook {
    url: String,
    status: Arc<AtomicU16>,
    calls: Arc<Mutex<u32>>,
    accepted: Arc<Mutex<Vec<(i64, Value)>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Hook {
    /// Answers `status` after `delay`.
    async fn start(status: u16, delay: Duration) -> Hook {
        Hook::refusing(0, status, delay).await
    }

    /// Answers 500 to the first `refuse` calls, then `status`, after `delay`.
    async fn refusing(refuse: u32, status: u16, delay: Duration) -> Hook {
        let status = Arc::new(AtomicU16::new(status));
        let calls: Arc<Mutex<u32>> = Arc::default();
        let accepted: Arc<Mutex<Vec<(i64, Value)>>> = Arc::default();
        let (s, c, a) = (
            Arc::clone(&status),
            Arc::clone(&calls),
            Arc::clone(&accepted),
        );
        let server = HttpServer::new(move || {
            let (s, c, a) = (Arc::clone(&s), Arc::clone(&c), Arc::clone(&a));
            App::new().route(
                "/hook",
                web::post().to(move |body: web::Json<Value>| {
                    let (s, c, a) = (Arc::clone(&s), Arc::clone(&c), Arc::clone(&a));
                    async move {
                        actix_rt::time::sleep(delay).await;
                        let call = {
                            let mut c = c.lock().expect("lock");
                            *c += 1;
                            *c
                        };
                        let code = if call <= refuse {
                            500
                        } else {
                            s.load(Ordering::SeqCst)
                        };
                        if code == 200 {
                            a.lock().expect("lock").push((now_ms(), body.into_inner()));
                        }
                        HttpResponse::build(awc::http::StatusCode::from_u16(code).expect("status"))
                            .finish()
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("bind");
        let url = format!("http://{}/hook", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Hook {
            url,
            status,
            calls,
            accepted,
            handle,
        }
    }

    fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    fn calls(&self) -> u32 {
        *self.calls.lock().expect("lock")
    }

    fn accepted(&self) -> Vec<(i64, Value)> {
        self.accepted.lock().expect("lock").clone()
    }

    /// The process ids of the accepted notices, sorted.
    fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .accepted()
            .iter()
            .map(|(_, n)| n["id"].as_i64().expect("id"))
            .collect();
        ids.sort_unstable();
        ids
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn webhook_on_failure(b: Backend) {
    let hook = Hook::refusing(1, 200, Duration::ZERO).await;
    let url = hook.url.clone();
    let Some(m) = TestMaster::start(b, |c| c.notify.webhook_url = Some(url)).await else {
        return;
    };
    let p = m.submit(spec("python fail.py")).await;
    let mut log = String::new();
    for i in 0..60 {
        log.push_str(&format!("log line {i}\n"));
    }
    let r = m
        .req("POST", &format!("/api/procs/{}/logfile", p.id))
        .send_body(log)
        .await
        .expect("sent");
    assert!(r.status().is_success());
    let ok = m.submit(spec("true")).await;
    m.report(ok.id, json!({"state": "success", "exit_code": 0}))
        .await;
    m.report(
        p.id,
        json!({"state": "failed", "exit_code": 2, "reason": "exit code 2"}),
    )
    .await;
    let notices = eventually("the webhook notice", Duration::from_secs(10), || async {
        let got = hook.accepted();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(hook.calls(), 2, "the refused first call was retried");
    let n = &notices[0].1;
    assert_eq!(n["id"], p.id);
    assert_eq!(n["state"], "failed");
    assert_eq!(n["exit_code"], 2);
    assert_eq!(n["reason"], "exit code 2");
    assert_eq!(n["cmd"], json!(["python", "fail.py"]));
    let tail = n["log_tail"].as_array().expect("log tail");
    assert_eq!(tail.len(), 50);
    assert_eq!(tail[49], "log line 59");
    assert_eq!(n["url"], format!("{}/api/procs/{}", m.url, p.id));
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hook.accepted().len(), 1, "success is not notified");
    m.stop().await;
    hook.stop().await;
}
both!(webhook_on_failure);

/// A minimal SMTP server that records each message's DATA.
async fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let m2 = Arc::clone(&mails);
    actix_rt::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let mails = Arc::clone(&m2);
            actix_rt::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            mails
                                .lock()
                                .expect("lock")
                                .push(data.take().unwrap_or_default());
                            let _ = w.write_all(b"250 queued\r\n").await;
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let upper = line.to_ascii_uppercase();
                    let answer: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("DATA") {
                        data = Some(String::new());
                        b"354 go on\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = w.write_all(answer).await;
                }
            });
        }
    });
    (port, mails)
}

async fn email_on_lost(b: Backend) {
    let (port, mails) = smtp_sink().await;
    let Some(m) = TestMaster::start(b, |c| {
        c.notify.smtp.server = Some("127.0.0.1".into());
        c.notify.smtp.port = port;
        c.notify.smtp.security = dadd_master::config::SmtpSecurity::None;
        c.notify.smtp.to = vec!["ops@example.com".into()];
    })
    .await
    else {
        return;
    };
    let p = m.submit(spec("sleep 100")).await;
    let (s, _) = m
        .call("DELETE", &format!("/api/procs/{}", p.id), None)
        .await;
    assert!(s.is_success());
    let q = m.submit(spec("sleep 100")).await;
    m.report(q.id, json!({"state": "failed", "exit_code": 1}))
        .await;
    let mail = eventually("the email", Duration::from_secs(10), || async {
        mails.lock().expect("lock").first().cloned()
    })
    .await;
    assert!(mail.contains(&format!("process {} failed", q.id)), "{mail}");
    assert!(mail.contains("ops@example.com"));
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mails.lock().expect("lock").len(),
        1,
        "killed is not notified by default"
    );
    m.stop().await;
}
both!(email_on_lost);

/// The webhook at `url`, short polls and retries.
fn hooked(url: &str) -> impl Fn(&mut Config) + Copy + '_ {
    move |c: &mut Config| {
        c.notify.webhook_url = Some(url.to_owned());
        c.notify.webhook_backoff_secs = 0.2;
        c.notify.webhook_attempts = 10;
        c.notify.poll_secs = 0.1;
    }
}

/// Long enough for several polls and retries of the configs above.
const QUIET: Duration = Duration::from_millis(800);

async fn fail(m: &TestMaster) -> i64 {
    let p = m.submit(spec("python fail.py")).await;
    let (s, v) = m
        .report(
            p.id,
            json!({"state": "failed", "exit_code": 2, "reason": "exit code 2"}),
        )
        .await;
    assert!(s.is_success(), "{v}");
    p.id
}

async fn notice_survives_a_master_stop(b: Backend) {
    let hook = Hook::start(503, Duration::ZERO).await;
    let Some(kept) = Kept::new(b).await else {
        return;
    };
    let m = TestMaster::start_on(kept, hooked(&hook.url)).await;
    let id = fail(&m).await;
    eventually("a refused attempt", Duration::from_secs(10), || async {
        (hook.calls() >= 1).then_some(())
    })
    .await;
    let kept = m.stop_keep_store().await;
    let refused = hook.calls();
    hook.set_status(200);
    actix_rt::time::sleep(QUIET).await;
    assert_eq!(hook.calls(), refused, "a stopped master sends nothing");

    let m = TestMaster::start_on(kept, hooked(&hook.url)).await;
    eventually(
        "the notice, from the new master",
        Duration::from_secs(10),
        || async { (!hook.accepted().is_empty()).then_some(()) },
    )
    .await;
    actix_rt::time::sleep(QUIET).await;
    let got = hook.accepted();
    assert_eq!(got.len(), 1, "delivered once: {got:?}");
    assert_eq!(got[0].1["id"], id);
    assert_eq!(got[0].1["state"], "failed");
    assert_eq!(got[0].1["exit_code"], 2);
    assert_eq!(m.metric("dadd_notifications_sent_total").await, 1.0);
    assert_eq!(m.metric("dadd_notifications_failed_total").await, 0.0);
    m.stop().await;
    hook.stop().await;
}
both!(notice_survives_a_master_stop);

async fn gives_up_after_the_attempts(b: Backend) {
    let hook = Hook::start(503, Duration::ZERO).await;
    let url = hook.url.clone();
    let Some(m) = TestMaster::start(b, |c| {
        hooked(&url)(c);
        c.notify.webhook_attempts = 3;
        c.notify.webhook_backoff_secs = 0.05;
    })
    .await
    else {
        return;
    };
    fail(&m).await;
    eventually("giving up", Duration::from_secs(10), || async {
        (m.metric("dadd_notifications_failed_total").await == 1.0).then_some(())
    })
    .await;
    actix_rt::time::sleep(QUIET).await;
    assert_eq!(
        hook.calls(),
        3,
        "one call per attempt, none after giving up"
    );
    assert_eq!(m.metric("dadd_notifications_sent_total").await, 0.0);
    m.stop().await;
    hook.stop().await;
}
both!(gives_up_after_the_attempts);

/// A master claimed a notice and died before delivering it: another master
/// delivers it once the lease has ended, not before.
async fn a_dead_masters_notice_is_sent_after_its_lease(b: Backend) {
    let hook = Hook::start(200, Duration::ZERO).await;
    let Some(kept) = Kept::new(b).await else {
        return;
    };
    let store = Store::connect(&kept.db.url, &StoreConfig::default())
        .await
        .expect("store");
    let now = now_ms();
    let p = store
        .insert_proc(r#"{"cmd": "false"}"#, &["false".to_owned()], now)
        .await
        .expect("insert");
    let mut change = Change::to(ProcState::Failed, Some("exit code 1"), now);
    change.exit_code = Some(1);
    change.notice = true;
    assert!(store
        .transition(p.id, ProcState::Queued, &change)
        .await
        .expect("transition"));
    let lease_until = now_ms() + 1500;
    let claimed = store
        .claim_notices(now_ms(), lease_until, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let again = store
        .claim_notices(now_ms(), now_ms() + 1500, 10)
        .await
        .expect("claim");
    assert!(again.is_empty(), "a leased notice is not claimed twice");
    store.close().await;

    let m = TestMaster::start_on(kept, hooked(&hook.url)).await;
    eventually("the notice", Duration::from_secs(10), || async {
        (!hook.accepted().is_empty()).then_some(())
    })
    .await;
    actix_rt::time::sleep(QUIET).await;
    let got = hook.accepted();
    assert_eq!(got.len(), 1, "delivered once: {got:?}");
    assert!(
        got[0].0 >= lease_until,
        "delivered {} ms before the lease ended",
        lease_until - got[0].0
    );
    assert_eq!(got[0].1["id"], p.id);
    assert_eq!(got[0].1["reason"], "exit code 1");
    m.stop().await;
    hook.stop().await;
}
both!(a_dead_masters_notice_is_sent_after_its_lease);

/// Two masters on one Postgres database, both woken for every change (as
/// their `dadd_notice` listeners would): each failure is POSTed once.
#[actix_web::test]
async fn two_masters_notify_once() {
    let hook = Hook::start(200, Duration::from_millis(30)).await;
    let Some(m1) = TestMaster::start(Backend::Postgres, hooked(&hook.url)).await else {
        return;
    };
    let m2 = m1.sibling(hooked(&hook.url)).await;
    let wake_both = || {
        for m in [&m1, &m2] {
            m.handle.as_ref().expect("running").shared().notifier.wake();
        }
    };
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(fail(if i % 2 == 0 { &m1 } else { &m2 }).await);
        wake_both();
    }
    eventually("every notice", Duration::from_secs(20), || async {
        (hook.accepted().len() >= ids.len()).then_some(())
    })
    .await;
    actix_rt::time::sleep(QUIET).await;
    assert_eq!(hook.ids(), ids, "each failure POSTed exactly once");
    let sent = m1.metric("dadd_notifications_sent_total").await
        + m2.metric("dadd_notifications_sent_total").await;
    assert_eq!(sent, ids.len() as f64);
    m2.stop().await;
    m1.stop().await;
    hook.stop().await;
}

/// Done notices older than the cutoff are pruned; pending ones never.
async fn done_notices_are_pruned(b: Backend) {
    let hook = Hook::start(200, Duration::ZERO).await;
    let Some(m) = TestMaster::start(b, hooked(&hook.url)).await else {
        return;
    };
    fail(&m).await;
    eventually("the notice", Duration::from_secs(10), || async {
        (!hook.accepted().is_empty()).then_some(())
    })
    .await;
    let store = &m.handle.as_ref().expect("running").shared().store;
    let now = now_ms();
    // A pending notice (an hour in the future) must stay.
    let p = store
        .insert_proc(r#"{"cmd": "false"}"#, &["false".to_owned()], now)
        .await
        .expect("insert");
    let mut change = Change::to(ProcState::Failed, None, now + 3_600_000);
    change.notice = true;
    assert!(store
        .transition(p.id, ProcState::Queued, &change)
        .await
        .expect("transition"));
    // The counter moves once the outcome is recorded.
    eventually(
        "the done notice recorded",
        Duration::from_secs(10),
        || async { (m.metric("dadd_notifications_sent_total").await == 1.0).then_some(()) },
    )
    .await;
    assert_eq!(
        store.prune_notices(now - 60_000, 10).await.expect("prune"),
        0,
        "too recent"
    );
    assert_eq!(
        store.prune_notices(now_ms() + 1, 10).await.expect("prune"),
        1
    );
    assert_eq!(
        store.prune_notices(i64::MAX, 10).await.expect("prune"),
        0,
        "pending stays"
    );
    m.stop().await;
    hook.stop().await;
}
both!(done_notices_are_pruned);
