//! The file store: round trip, ETag, listing, size cap, hostile paths.

use awc::http::StatusCode;
use dadd_spec::api::FileEntry;
use sha2::{Digest, Sha256};

use crate::both;
use crate::support::{Backend, TestMaster};

async fn round_trip(b: Backend) {
    let Some(m) = TestMaster::start(b, |c| c.limits.file_bytes = 1024).await else {
        return;
    };
    let body = "some data\n";
    let sum = hex::encode(Sha256::digest(body.as_bytes()));
    let mut r = m
        .req("PUT", "/files/bucket/data.json")
        .send_body(body)
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::CREATED);
    let e: FileEntry = r.json().await.expect("entry");
    assert_eq!(
        (e.path.as_str(), e.size, e.sha256.as_str()),
        ("bucket/data.json", 10, sum.as_str())
    );
    let mut r = m
        .req("GET", "/files/bucket/data.json")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r
        .headers()
        .get("etag")
        .expect("etag")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(etag, format!("\"{sum}\""));
    assert_eq!(r.body().await.expect("body"), body.as_bytes());
    let r = m
        .req("GET", "/files/bucket/data.json")
        .insert_header(("If-None-Match", etag))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let (s, v) = m.call("GET", "/files/", None).await;
    assert_eq!(s, StatusCode::OK);
    let list: Vec<FileEntry> = serde_json::from_value(v).expect("listing");
    assert_eq!(list.len(), 1);
    let r = m
        .req("PUT", "/files/big.bin")
        .send_body(vec![0u8; 2048])
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!m.dir.path().join("files/big.bin").exists());
    let (s, _) = m.call("DELETE", "/files/bucket/data.json", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = m.call("GET", "/files/bucket/data.json", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    m.stop().await;
}
both!(round_trip);

#[actix_web::test]
async fn hostile_paths_are_refused() {
    let Some(m) = TestMaster::start(Backend::Sqlite, |_| {}).await else {
        return;
    };
    std::fs::write(m.dir.path().join("secret"), "x").expect("write");
    for p in [
        "/files/%2e%2e/secret",
        "/files/a/%2E%2E/%2e%2e/secret",
        "/files/..%2fsecret",
        "/files/%2fetc%2fpasswd",
        "/files/a%5c..%5c..%5csecret",
        "/files/a%00b",
        "/files/%252e%252e/secret",
    ] {
        for method in ["PUT", "GET", "DELETE"] {
            let r = m.req(method, p).send_body("evil").await.expect("sent");
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {p}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(m.dir.path().join("secret")).expect("read"),
        "x"
    );
    m.stop().await;
}
