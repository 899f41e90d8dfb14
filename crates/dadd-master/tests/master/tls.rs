//! TLS: the listener speaks https with the configured certificate, and the
//! client side trusts `tls.ca_file` (what the master uses to call workers).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{Backend, TestMaster};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dadd test ca",
    ]);
    openssl(dir, &a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &a);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[actix_web::test]
async fn https_listener_and_ca_file() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    let c = certs.path().to_owned();
    let Some(m) = TestMaster::start(Backend::Sqlite, |cfg| {
        cfg.tls.cert = Some(c.join("cert.pem"));
        cfg.tls.key = Some(c.join("key.pem"));
    })
    .await
    else {
        return;
    };
    let addr = m.handle.as_ref().expect("running").addr();
    assert!(
        m.handle
            .as_ref()
            .expect("running")
            .url()
            .starts_with("https://"),
        "public_url follows TLS"
    );
    let tls = dadd_master::workers::client_tls(&dadd_master::config::TlsConfig {
        ca_file: Some(certs.path().join("ca.pem")),
        ..Default::default()
    })
    .expect("CA file loads");
    let client = dadd_master::workers::client(&tls, Duration::from_secs(10), 2);
    let mut r = client
        .get(format!("https://{addr}/api/health"))
        .send()
        .await
        .expect("https works");
    assert!(r.status().is_success());
    let body = r.body().await.expect("body");
    assert!(String::from_utf8_lossy(&body).contains("\"ok\""));
    // Without the CA, the certificate is refused.
    let plain = dadd_master::workers::client_tls(&Default::default()).expect("web roots");
    let strict = dadd_master::workers::client(&plain, Duration::from_secs(10), 2);
    assert!(strict
        .get(format!("https://{addr}/api/health"))
        .send()
        .await
        .is_err());
    m.stop().await;
}
