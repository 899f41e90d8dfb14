//! Notifications on failure: a webhook (retried) and an email, both to sinks
//! started here on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::both;
use crate::support::{eventually, spec, Backend, TestMaster};

type Got = Arc<Mutex<(u32, Vec<Value>)>>;

/// A webhook that refuses the first call and records the rest.
async fn sink() -> (String, Got, actix_web::dev::ServerHandle) {
    let got: Got = Arc::default();
    let g = Arc::clone(&got);
    let server = HttpServer::new(move || {
        let g = Arc::clone(&g);
        App::new().route(
            "/hook",
            web::post().to(move |body: web::Json<Value>| {
                let g = Arc::clone(&g);
                async move {
                    let mut g = g.lock().expect("lock");
                    g.0 += 1;
                    if g.0 == 1 {
                        return HttpResponse::InternalServerError().finish();
                    }
                    g.1.push(body.into_inner());
                    HttpResponse::Ok().finish()
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
    let h = server.handle();
    actix_rt::spawn(server);
    (url, got, h)
}

async fn webhook_on_failure(b: Backend) {
    let (url, got, h) = sink().await;
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
        let g = got.lock().expect("lock");
        (!g.1.is_empty()).then(|| g.clone())
    })
    .await;
    assert_eq!(notices.0, 2, "the refused first call was retried");
    let n = &notices.1[0];
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
    assert_eq!(
        got.lock().expect("lock").1.len(),
        1,
        "success is not notified"
    );
    m.stop().await;
    h.stop(false).await;
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
