//! The store on its own, on both backends: conditional changes, claims,
//! leases and their takeover, log chunks and pruning; the SQLite lock.

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
        lease_until: 31_000,
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

/// A claim left `init` past its lease is taken over once, with one more
/// accepted token; the token the worker started with becomes the one.
async fn leases_are_taken_over_once(b: Backend) {
    let Some((s, _db, _dir)) = open(b).await else {
        return;
    };
    let p = s.insert_proc("{}", &[], 1000).await.expect("insert");
    let (host, _) = s
        .heartbeat("127.0.0.1", 6000, "http", 2, "t", 1000)
        .await
        .expect("host");
    let claim = Claim {
        proc_id: p.id,
        host_id: host,
        host: "127.0.0.1:6000".into(),
        token_hash: "aa".into(),
        lease_until: 5000,
    };
    assert_eq!(s.claim(&[claim], 1000).await.expect("claim"), [p.id]);
    assert!(
        s.expired_claims(4999, 10)
            .await
            .expect("expired")
            .is_empty(),
        "the lease runs"
    );
    let expired = s.expired_claims(5001, 10).await.expect("expired");
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].proc.id, expired[0].host_id), (p.id, Some(host)));
    // Two masters race for it: one wins.
    assert!(s.renew_claim(p.id, 5001, 9000, "bb").await.expect("renew"));
    assert!(!s.renew_claim(p.id, 5001, 9000, "cc").await.expect("renew"));
    let row = s.get_proc(p.id).await.expect("get").expect("row");
    assert_eq!(row.token_hashes(), ["aa", "bb"], "both tokens are good");
    // Expired again with no answer: a third token joins, none is dropped.
    s.expire_claim(p.id, 6000).await.expect("expire");
    assert!(s.renew_claim(p.id, 6000, 9000, "cc").await.expect("renew"));
    let row = s.get_proc(p.id).await.expect("get").expect("row");
    assert_eq!(row.token_hashes(), ["aa", "bb", "cc"]);
    // The worker started it with the last one.
    s.settle_token(p.id, "cc").await.expect("settle");
    let row = s.get_proc(p.id).await.expect("get").expect("row");
    assert_eq!(row.token_hashes(), ["cc"]);
    // A runner's report ends the claim: nothing to take over any more.
    let c = Change::to(ProcState::Setup, None, 7000);
    assert!(s.transition(p.id, ProcState::Init, &c).await.expect("t"));
    assert!(s.expired_claims(99_999, 10).await.expect("e").is_empty());
    assert!(!s.renew_claim(p.id, 99_999, 1, "dd").await.expect("renew"));
    s.close().await;
}
both!(leases_are_taken_over_once);

/// A dispatch round sees the claims of the round before it (the count of
/// unfinished processes per host), whichever store handle made them.
async fn rounds_see_earlier_claims(b: Backend) {
    let Some((s, db, _dir)) = open(b).await else {
        return;
    };
    let other = if b == Backend::Postgres {
        Store::connect(&db.url, &StoreConfig::default())
            .await
            .expect("second handle")
    } else {
        s.clone()
    };
    let (host, _) = s
        .heartbeat("127.0.0.1", 6001, "http", 1, "t", 1000)
        .await
        .expect("host");
    let a = s.insert_proc("{}", &[], 1000).await.expect("insert");
    let b2 = s.insert_proc("{}", &[], 1000).await.expect("insert");
    let mut round = s.dispatch_round().await.expect("round");
    assert_eq!(round.live_hosts(0).await.expect("hosts")[0].busy, 0);
    let q = round.queued(10).await.expect("queued");
    assert_eq!(q.iter().map(|q| q.id).collect::<Vec<_>>(), [a.id, b2.id]);
    let claim = |id| Claim {
        proc_id: id,
        host_id: host,
        host: "127.0.0.1:6001".into(),
        token_hash: "aa".into(),
        lease_until: 9000,
    };
    assert_eq!(round.claim(&[claim(a.id)], 1000).await.expect("c"), [a.id]);
    round.commit().await.expect("commit");
    let mut next = other.dispatch_round().await.expect("round");
    assert_eq!(next.live_hosts(0).await.expect("hosts")[0].busy, 1, "full");
    assert_eq!(
        next.queued(10)
            .await
            .expect("queued")
            .iter()
            .map(|q| q.id)
            .collect::<Vec<_>>(),
        [b2.id]
    );
    next.commit().await.expect("commit");
    if b == Backend::Postgres {
        other.close().await;
    }
    s.close().await;
}
both!(rounds_see_earlier_claims);

/// SQLite serves one master: a second store on the same file is refused
/// with a message naming the file and the way out, until the first closes.
#[actix_web::test]
async fn a_second_sqlite_master_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("dadd.db").display());
    let first = Store::connect(&url, &StoreConfig::default())
        .await
        .expect("first opens");
    let err = Store::connect(&url, &StoreConfig::default())
        .await
        .expect_err("second refused")
        .to_string();
    assert!(err.contains("another dadd-master"), "{err}");
    assert!(
        err.contains(&format!("(pid {})", std::process::id())),
        "{err}"
    );
    assert!(err.contains("dadd.db") && err.contains("Postgres"), "{err}");
    first.close().await;
    let again = Store::connect(&url, &StoreConfig::default())
        .await
        .expect("opens once the first closed");
    again.close().await;
}
