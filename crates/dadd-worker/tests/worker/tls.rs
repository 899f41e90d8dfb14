//! TLS: the worker's listener with a certificate, and heartbeats to an
//! https master trusted through a CA file.

use std::sync::Arc;

use dadd_worker::config::TlsConfig;

use crate::support::*;

#[actix_web::test]
async fn https_listener_and_https_master() {
    let sb = Sandbox::new();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a self-signed certificate");
    let cert_file = sb.dir.path().join("cert.pem");
    let key_file = sb.dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("write key");

    let master_tls = dadd_worker::tls::server_config(&cert_file, &key_file).expect("tls config");
    let master = FakeMaster::start_with("127.0.0.1:0", Some(master_tls)).await;
    assert!(master.url.starts_with("https://"));

    let runner = sb.fake_runner();
    let mut config = sb.config(&master.url, &runner, 2);
    config.master_ca_file = Some(cert_file.clone());
    config.tls = TlsConfig {
        cert: Some(cert_file.clone()),
        key: Some(key_file.clone()),
    };
    let worker = dadd_worker::start(config).await.expect("worker starts");
    assert!(worker.url().starts_with("https://"), "{}", worker.url());

    // Heartbeats reach the https master (trusted by the CA file) and say https.
    wait_for(10, "an https heartbeat", || async {
        !master.beats().is_empty()
    })
    .await;
    assert_eq!(master.beats()[0].beat.scheme, "https");

    // The listener speaks TLS with that certificate.
    let client_tls = dadd_client::tls::client_config(Some(&cert_file)).expect("client tls");
    let https = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::clone(&client_tls)))
        .finish();
    let mut resp = https
        .get(format!("{}/up", worker.url()))
        .send()
        .await
        .expect("an https answer");
    assert_eq!(resp.status().as_u16(), 200);
    let up: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(up["worker_status"], "available");
    // Plain http is not answered as http.
    let plain = http()
        .get(format!("http://{}/up", worker.addr()))
        .send()
        .await;
    assert!(!matches!(plain, Ok(r) if r.status().is_success()));
    worker.stop().await;
    master.stop().await;
}
