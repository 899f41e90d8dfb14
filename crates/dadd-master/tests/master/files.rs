//! The file store: round trip, ETag, listing, size cap, hostile paths; on
//! Postgres, every master serving every file (the bytes in the database).

use std::time::Duration;

use awc::http::StatusCode;
use bytes::Bytes;
use dadd_master::config::StoreConfig;
use dadd_master::store::Store;
use dadd_spec::api::FileEntry;
use sha2::{Digest, Sha256};

use crate::both;
use crate::support::{eventually, Backend, Kept, TestMaster};

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

/// A path nested under a file, or a file over a directory, is refused the
/// same way on both stores.
async fn path_clashes_are_refused(b: Backend) {
    let Some(m) = TestMaster::start(b, |_| {}).await else {
        return;
    };
    let r = m
        .req("PUT", "/files/a/b")
        .send_body("x")
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::CREATED);
    for p in ["/files/a", "/files/a/b/c"] {
        let r = m.req("PUT", p).send_body("y").await.expect("sent");
        assert_eq!(r.status(), StatusCode::CONFLICT, "{p}");
    }
    let (s, v) = m.call("GET", "/files/", None).await;
    assert_eq!(s, StatusCode::OK);
    let list: Vec<FileEntry> = serde_json::from_value(v).expect("listing");
    assert_eq!(
        list.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        ["a/b"]
    );
    m.stop().await;
}
both!(path_clashes_are_refused);

/// Bytes that differ at every position (no chunk equals another).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The body and ETag of a download.
async fn download(m: &TestMaster, path: &str) -> (StatusCode, Bytes, Option<String>) {
    let mut r = m.req("GET", path).send().await.expect("sent");
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = r.body().limit(64 << 20).await.expect("body");
    (r.status(), body, etag)
}

/// Rows of `file_blobs` in a test database.
async fn chunks_in(url: &str) -> i64 {
    let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(url)
        .await
        .expect("connect");
    sqlx::Row::try_get(
        &sqlx::query("SELECT COUNT(*) FROM file_blobs")
            .fetch_one(&mut c)
            .await
            .expect("count"),
        0,
    )
    .expect("a count")
}

/// Two masters on one Postgres: a file uploaded through one is served by
/// the other, byte for byte, across chunk boundaries; replacing and
/// deleting through either is seen by both, and no chunk is left behind.
#[actix_web::test]
async fn every_master_serves_every_file() {
    let Some(kept) = Kept::new(Backend::Postgres).await else {
        return;
    };
    let db = kept.db.url.clone();
    let a = TestMaster::start_on(kept, |_| {}).await;
    let b = a.sibling(|_| {}).await;

    let big = pattern(3 * (1 << 20) + 12_345);
    let sum = hex::encode(Sha256::digest(&big));
    let r = a
        .req("PUT", "/files/dist/app.bin")
        .send_body(big.clone())
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(chunks_in(&db).await, 4, "3 MiB and a bit is four chunks");
    let (s, body, etag) = download(&b, "/files/dist/app.bin").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.len(), big.len());
    assert!(body == big, "the bytes served by the other master differ");
    assert_eq!(etag.as_deref(), Some(format!("\"{sum}\"").as_str()));
    let (_, _, etag_a) = download(&a, "/files/dist/app.bin").await;
    assert_eq!(etag_a, etag);
    assert!(
        !a.dir.path().join("files/dist/app.bin").exists(),
        "the bytes are in the database, not on the master's disk"
    );

    let r = b
        .req("PUT", "/files/dist/app.bin")
        .send_body("version 2\n")
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, body, etag) = download(&a, "/files/dist/app.bin").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, "version 2\n".as_bytes());
    assert_eq!(
        etag,
        Some(format!(
            "\"{}\"",
            hex::encode(Sha256::digest("version 2\n".as_bytes()))
        ))
    );
    assert_eq!(chunks_in(&db).await, 1, "the replaced file's chunks went");

    let r = a
        .req("PUT", "/files/empty")
        .send_body("")
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, body, _) = download(&b, "/files/empty").await;
    assert_eq!((s, body.len()), (StatusCode::OK, 0));

    let (s, _) = a.call("DELETE", "/files/dist/app.bin", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = download(&b, "/files/dist/app.bin").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(chunks_in(&db).await, 0);
    b.stop().await;
    a.stop().await;
}

/// An upload past `limits.file_bytes` with no Content-Length is cut off
/// after some chunks were written; they go with it.
#[actix_web::test]
async fn a_refused_upload_leaves_no_chunks() {
    let Some(kept) = Kept::new(Backend::Postgres).await else {
        return;
    };
    let db = kept.db.url.clone();
    let m = TestMaster::start_on(kept, |c| c.limits.file_bytes = 2 * (1 << 20) + 100).await;
    let body = pattern(3 << 20);
    let parts: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(64 << 10)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let sent = m
        .req("PUT", "/files/too/big.bin")
        .send_stream(futures_util::stream::iter(parts))
        .await;
    // The master answers 413 mid-upload; a client may see the connection
    // close before it reads the answer.
    if let Ok(r) = sent {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    eventually(
        "the chunks of the refused upload to go",
        Duration::from_secs(5),
        || {
            let db = db.clone();
            async move { (chunks_in(&db).await == 0).then_some(()) }
        },
    )
    .await;
    let (s, _, _) = download(&m, "/files/too/big.bin").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    m.stop().await;
}

/// Chunks no file names are pruned once old; a stored file's are kept.
#[actix_web::test]
async fn orphan_blobs_are_pruned() {
    let Some(kept) = Kept::new(Backend::Postgres).await else {
        return;
    };
    let db = kept.db.url.clone();
    let m = TestMaster::start_on(kept, |_| {}).await;
    let r = m
        .req("PUT", "/files/kept")
        .send_body("kept")
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::CREATED);
    let store = Store::connect(&db, &StoreConfig::default())
        .await
        .expect("store");
    store
        .put_blob_chunk("orphan-old", 0, b"left by a dead master")
        .await
        .expect("chunk");
    store
        .put_blob_chunk("orphan-new", 0, b"an upload in progress")
        .await
        .expect("chunk");
    let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&db)
        .await
        .expect("connect");
    sqlx::query("UPDATE file_blobs SET created_at = 0 WHERE blob <> 'orphan-new'")
        .execute(&mut c)
        .await
        .expect("age the chunks");
    let cutoff = dadd_master::store::now_ms() - 3_600_000;
    assert_eq!(
        store.prune_orphan_blobs(cutoff, 100).await.expect("prune"),
        1
    );
    assert_eq!(
        chunks_in(&db).await,
        2,
        "the file's chunk and the new upload's stay"
    );
    let (s, body, _) = download(&m, "/files/kept").await;
    assert_eq!((s, body), (StatusCode::OK, Bytes::from_static(b"kept")));
    store.close().await;
    m.stop().await;
}
