//! Logs: chunks by offset (idempotent, gaps refused), whole uploads, reading
//! from an offset, and the cap that keeps head and tail.

use awc::http::StatusCode;
use bytes::Bytes;
use serde_json::Value;

use crate::both;
use crate::support::{spec, Backend, TestMaster};

async fn put(m: &TestMaster, id: i64, offset: u64, data: &'static [u8]) -> (StatusCode, Value) {
    let mut r = m
        .req("PUT", &format!("/api/procs/{id}/logfile?offset={offset}"))
        .send_body(Bytes::from_static(data))
        .await
        .expect("sent");
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn get(m: &TestMaster, path: &str) -> String {
    let mut r = m.req("GET", path).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    String::from_utf8(r.body().limit(64 << 20).await.expect("body").to_vec()).expect("utf8")
}

async fn chunks(b: Backend) {
    let Some(m) = TestMaster::start(b, |c| c.limits.log_chunk_bytes = 64).await else {
        return;
    };
    let p = m.submit(spec("true")).await;
    assert_eq!(
        put(&m, p.id, 0, b"hello ").await,
        (StatusCode::OK, serde_json::json!({"offset": 6}))
    );
    assert_eq!(
        put(&m, p.id, 0, b"hello ").await.1["offset"],
        6,
        "a resend is harmless"
    );
    assert_eq!(
        put(&m, p.id, 3, b"lo world").await.1["offset"],
        11,
        "overlap: only new bytes kept"
    );
    let (s, v) = put(&m, p.id, 20, b"later").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["expected_offset"], 11);
    let (s, _) = put(&m, p.id, 11, &[b'x'; 65]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = m
        .req("PUT", &format!("/api/procs/{}/logfile", p.id))
        .send_body("x")
        .await
        .map(|r| (r.status(), ()))
        .expect("sent");
    assert_eq!(s, StatusCode::BAD_REQUEST, "offset is required");
    assert_eq!(
        get(&m, &format!("/api/procs/{}/logfile", p.id)).await,
        "hello world"
    );
    assert_eq!(
        get(&m, &format!("/api/procs/{}/logfile?offset=6", p.id)).await,
        "world"
    );
    assert_eq!(
        get(&m, &format!("/api/procs/{}/logfile?offset=11", p.id)).await,
        ""
    );

    // The whole log, as the original runner sent it: held bytes are skipped.
    let whole =
        "hello world\nand the rest of it, longer than one chunk of sixty-four bytes for sure\n";
    let mut r = m
        .req("POST", &format!("/api/procs/{}/logfile", p.id))
        .send_body(whole)
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["offset"], whole.len());
    assert_eq!(
        get(&m, &format!("/api/procs/{}/logfile", p.id)).await,
        whole
    );
    assert_eq!(m.proc(p.id).await.log_size, whole.len() as u64);
    let (s, _) = put(&m, 999_999, 0, b"x").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    m.stop().await;
}
both!(chunks);

async fn cap_keeps_head_and_tail(b: Backend) {
    let Some(m) = TestMaster::start(b, |c| {
        c.limits.log_chunk_bytes = 16;
        c.limits.log_cap_bytes = 64;
    })
    .await
    else {
        return;
    };
    let p = m.submit(spec("true")).await;
    let mut all = String::new();
    for i in 0..20u32 {
        let line: &'static str = Box::leak(format!("line {i:02} .......\n").into_boxed_str());
        assert_eq!(line.len(), 16);
        let (s, v) = put(&m, p.id, all.len() as u64, line.as_bytes()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        all.push_str(line);
    }
    let text = get(&m, &format!("/api/procs/{}/logfile", p.id)).await;
    assert!(
        text.starts_with("line 00 .......\nline 01 .......\n"),
        "{text}"
    );
    assert!(text.ends_with("line 19 .......\n"), "{text}");
    assert!(text.contains("dropped"), "the cut is marked: {text}");
    assert!(!text.contains("line 10"), "the middle went: {text}");
    assert_eq!(m.proc(p.id).await.log_size, 320, "offsets keep counting");
    // Following from an offset inside the dropped part still works.
    let tail = get(&m, &format!("/api/procs/{}/logfile?offset=304", p.id)).await;
    assert_eq!(tail, "line 19 .......\n");
    m.stop().await;
}
both!(cap_keeps_head_and_tail);
