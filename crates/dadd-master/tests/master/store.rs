//! The store on its own, on both backends: conditional changes, claims,
//! log chunks and pruning.

use dadd_master::config::StoreConfig;
use dadd_master::store::{Appended, Change, Claim, Store};
use dadd_spec::ProcState;

use crate::both;
use crate::support::{Backend, TestDb};

async fn open(b: Backend) -> Option<(Store, TestDb, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::new(b, dir.path()).await?;
    let s = Store::connect(&db.url, &StoreConfig::default())
        .await
        .expect("store opens");
    Some((s, db, dir))
}

async fn changes_and_claims(b: Backend) {
    let Some((s, db, _dir)) = open(b).await else {
        return;
    };
    let cmd = vec!["true".to_owned()];
    let p = s
        .insert_proc("{\"cmd\":\"true\"}", &cmd, 1000)
        .await
        .expect("insert");
    let (host, _) = s
        .heartbeat("127.0.0.1", 6000, "http", 2, "t", 1000)
        .await
        .expect("host");
    let claim = Claim {
        proc_id: p.id,
        host_id: host,
        host: "127.0.0.1:6000".into(),
        token_hash: "ab".into(),
    };
    assert_eq!(
        s.claim(std::slice::from_ref(&claim), 1001)
            .await
            .expect("claim"),
        [p.id]
    );
    assert!(
        s.claim(&[claim], 1002).await.expect("claim").is_empty(),
        "claimed once"
    );
    assert_eq!(s.live_hosts(0).await.expect("hosts")[0].busy, 1);
    assert!(s.unclaim(p.id, host).await.expect("unclaim"));
    let row = s.get_proc(p.id).await.expect("get").expect("row");
    assert_eq!((row.state, row.host_id), (ProcState::Queued, None));
    assert_eq!(s.history(p.id).await.expect("history").len(), 1);
    let c = Change::to(ProcState::Running, None, 2000);
    assert!(s.transition(p.id, ProcState::Queued, &c).await.expect("t"));
    assert!(
        !s.transition(p.id, ProcState::Queued, &c).await.expect("t"),
        "conditional on the current state"
    );
    let row = s.get_proc(p.id).await.expect("get").expect("row");
    assert_eq!(row.started_at, Some(2000));
    // Reopening runs no migration twice.
    s.close().await;
    let s2 = Store::connect(&db.url, &StoreConfig::default())
        .await
        .expect("reopen");
    assert!(s2.get_proc(p.id).await.expect("get").is_some());
    s2.close().await;
}
both!(changes_and_claims);

async fn log_chunks_and_prune(b: Backend) {
    let Some((s, _db, _dir)) = open(b).await else {
        return;
    };
    let p = s.insert_proc("{}", &[], 1000).await.expect("insert");
    assert_eq!(
        s.append_log(p.id, 0, b"abc", 100).await.expect("a"),
        Appended::Size(3)
    );
    assert_eq!(
        s.append_log(p.id, 1, b"bcde", 100).await.expect("a"),
        Appended::Size(5)
    );
    assert_eq!(
        s.append_log(p.id, 9, b"x", 100).await.expect("a"),
        Appended::Gap(5)
    );
    assert_eq!(
        s.append_log(-1, 0, b"x", 100).await.expect("a"),
        Appended::NotFound
    );
    let chunks = s.log_chunks(p.id, 0, 10).await.expect("chunks");
    assert_eq!(chunks, [(0, b"abc".to_vec()), (3, b"de".to_vec())]);
    assert_eq!(s.log_tail(p.id, 4).await.expect("tail"), b"bcde");
    s.transition(
        p.id,
        ProcState::Queued,
        &Change::to(ProcState::Failed, None, 5000),
    )
    .await
    .expect("t");
    let q = s.insert_proc("{}", &[], 1000).await.expect("insert");
    assert_eq!(s.prune(4000, 10).await.expect("prune"), 0, "too young");
    assert_eq!(s.prune(6000, 10).await.expect("prune"), 1);
    assert!(s.get_proc(p.id).await.expect("get").is_none());
    assert!(s.log_chunks(p.id, 0, 10).await.expect("chunks").is_empty());
    assert!(
        s.get_proc(q.id).await.expect("get").is_some(),
        "unfinished kept"
    );
    s.close().await;
}
both!(log_chunks_and_prune);
