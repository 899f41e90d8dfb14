//! Every route of the master through [`dadd_client::Client`].

use bytes::Bytes;
use dadd_client::{Error, ListQuery};
use dadd_spec::api::HostStatus;
use dadd_spec::ProcState;
use serde_json::json;

use crate::support::*;

#[actix_web::test]
async fn a_process_life_through_the_client() {
    let cluster = Cluster::start(None).await;
    let client = cluster.client(None);

    let health = client.health().await.expect("health");
    assert_eq!(health.status, "ok");
    assert_eq!(health.store, "sqlite");

    let created = client
        .submit(&json!({"cmd": ["sh", "-c", "echo hi"]}))
        .await
        .expect("submitted");
    assert_eq!(created.state, ProcState::Queued);
    let id = created.id;

    // The worker starts the runner; the test reports as the runner would.
    let runner = cluster.runner_client(id).await;
    runner
        .report_state(id, &report(ProcState::Setup))
        .await
        .expect("setup");
    let mut running = report(ProcState::Running);
    running.pid = Some(4242);
    let summary = runner.report_state(id, &running).await.expect("running");
    assert_eq!(summary.state, ProcState::Running);

    // Log chunks by offset: idempotent, a gap names the offset expected.
    let a = runner
        .append_log(id, 0, Bytes::from_static(b"hello\n"))
        .await
        .expect("chunk 1");
    assert_eq!(a.offset, 6);
    let again = runner
        .append_log(id, 0, Bytes::from_static(b"hello\n"))
        .await
        .expect("a repeat is harmless");
    assert_eq!(again.offset, 6);
    let b = runner
        .append_log(id, 6, Bytes::from_static(b"world\n"))
        .await
        .expect("chunk 2");
    assert_eq!(b.offset, 12);
    let gap = runner
        .append_log(id, 100, Bytes::from_static(b"x"))
        .await
        .expect_err("a gap");
    assert_eq!(gap.status(), Some(409));
    assert_eq!(gap.body().and_then(|b| b.expected_offset), Some(12));

    let mut whole = Vec::new();
    let n = client.copy_log(id, None, &mut whole).await.expect("log");
    assert_eq!(n, 12);
    assert_eq!(whole, b"hello\nworld\n");
    let mut tail = Vec::new();
    client.copy_log(id, Some(6), &mut tail).await.expect("tail");
    assert_eq!(tail, b"world\n");

    let mut done = report(ProcState::Success);
    done.exit_code = Some(0);
    runner.report_state(id, &done).await.expect("success");
    let detail = client.get(id).await.expect("get");
    assert_eq!(detail.summary.state, ProcState::Success);
    assert_eq!(detail.summary.exit_code, Some(0));
    assert_eq!(
        detail.summary.host.as_deref(),
        Some(&*cluster.worker_addr())
    );
    let states: Vec<_> = detail.history.iter().map(|h| h.state).collect();
    assert_eq!(
        states,
        [
            ProcState::Queued,
            ProcState::Init,
            ProcState::Setup,
            ProcState::Running,
            ProcState::Success
        ]
    );
    assert_eq!(detail.log_size, 12);

    // An illegal change is a 409 with the current state.
    let late = runner
        .report_state(id, &report(ProcState::Running))
        .await
        .expect_err("success is final");
    assert_eq!(late.status(), Some(409));
    assert_eq!(
        late.body().and_then(|b| b.current_state),
        Some(ProcState::Success)
    );

    // Lists and filters.
    let page = client
        .list(&ListQuery {
            state: Some(ProcState::Success),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(page.procs.iter().any(|p| p.id == id));
    let none = client
        .list(&ListQuery {
            state: Some(ProcState::Failed),
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(none.procs.is_empty());
    let by_host = client
        .list(&ListQuery {
            host: Some(cluster.worker_addr()),
            limit: Some(1),
            ..ListQuery::default()
        })
        .await
        .expect("list by host");
    assert_eq!(by_host.procs.len(), 1);
    cluster.stop().await;
}

#[actix_web::test]
async fn kill_goes_through_the_worker_to_the_runner() {
    let cluster = Cluster::start(None).await;
    let client = cluster.client(None);
    let id = client
        .submit(&json!({"cmd": "sleep 300"}))
        .await
        .expect("submitted")
        .id;
    let runner = cluster.runner_client(id).await;
    runner
        .report_state(id, &report(ProcState::Running))
        .await
        .expect("running");
    let answer = client.kill(id).await.expect("kill");
    assert_eq!(answer.id, id);
    // The stand-in runner got SIGTERM from the worker and wrote `killed`.
    let root = cluster.work_root();
    wait_for(20, "the runner to record killed", || async {
        dadd_worker::workroot::find(&root, id).iter().any(|e| {
            e.record
                .as_ref()
                .is_some_and(|r| r.state == ProcState::Killed)
        })
    })
    .await;
    let mut killed = report(ProcState::Killed);
    killed.signal = Some(15);
    runner.report_state(id, &killed).await.expect("killed");
    assert_eq!(
        client.get(id).await.expect("get").summary.state,
        ProcState::Killed
    );
    cluster.stop().await;
}

#[actix_web::test]
async fn hosts_files_and_errors() {
    let cluster = Cluster::start(Some("user-token")).await;
    let client = cluster.client(Some("user-token"));

    let hosts = client.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].status, HostStatus::Up);
    assert_eq!(hosts[0].max_procs, 8);
    let by_addr = client
        .host(&cluster.worker_addr())
        .await
        .expect("by address");
    let by_id = client.host(&hosts[0].id.to_string()).await.expect("by id");
    assert_eq!(by_addr.id, by_id.id);

    // Files: put streamed, list, get, delete.
    let local = cluster.dir.path().join("data.json");
    let content = "{\"rows\": [1, 2, 3]}\n".repeat(50_000);
    std::fs::write(&local, &content).expect("write");
    let entry = client
        .put_file(&local, "sets/data one.json")
        .await
        .expect("put");
    assert_eq!(entry.size, content.len() as u64);
    assert_eq!(entry.path, "sets/data one.json");
    let files = client.list_files().await.expect("ls");
    assert!(files.iter().any(|f| f.path == "sets/data one.json"));
    let mut back = Vec::new();
    let n = client
        .get_file("sets/data one.json", &mut back)
        .await
        .expect("get");
    assert_eq!(n, content.len() as u64);
    assert_eq!(back, content.as_bytes());
    client.delete_file("sets/data one.json").await.expect("rm");
    let gone = client
        .get_file("sets/data one.json", &mut Vec::new())
        .await
        .expect_err("deleted");
    assert_eq!(gone.status(), Some(404));

    // Errors carry the status and the master's words.
    let missing = client.get(987_654).await.expect_err("no such process");
    assert_eq!(missing.status(), Some(404));
    assert!(missing.to_string().contains("404"), "{missing}");
    let bad = client
        .submit(&json!({"cmd": "", "python_dep": "x"}))
        .await
        .expect_err("invalid spec");
    assert_eq!(bad.status(), Some(400));
    let details = &bad.body().expect("a body").details;
    assert!(
        details.iter().any(|d| d.contains("python_deps")),
        "{details:?}"
    );
    let anonymous = cluster.client(None).hosts().await.expect_err("no token");
    assert_eq!(anonymous.status(), Some(401));
    let wrong = cluster
        .client(Some("nope"))
        .list(&ListQuery::default())
        .await
        .expect_err("a wrong token");
    assert!(matches!(wrong.status(), Some(401 | 403)), "{wrong}");

    // Forgetting the host loses its unfinished processes.
    let id = client
        .submit(&json!({"cmd": "sleep 300"}))
        .await
        .expect("submitted")
        .id;
    let _runner = cluster.runner_client(id).await;
    client
        .delete_host(&cluster.worker_addr())
        .await
        .expect("delete host");
    assert_eq!(
        client.get(id).await.expect("get").summary.state,
        ProcState::Lost
    );
    cluster.stop().await;
}

#[actix_web::test]
async fn an_unreachable_master_names_its_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let client =
        dadd_client::Client::new(&format!("http://user:pw@127.0.0.1:{port}")).expect("client");
    let err = client.health().await.expect_err("nothing listens");
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("pw"), "credentials are not shown: {text}");
}

#[actix_web::test]
async fn requests_move_to_the_live_master_and_stay() {
    let cluster = Cluster::start(None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_master(&dir.path().join("first"), None).await;
    let first_url = first.url().to_owned();
    let client = dadd_client::ClientBuilder::new(format!("{first_url},{}", cluster.url))
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .expect("client");
    assert_eq!(
        client.master_urls(),
        vec![format!("{first_url}/"), format!("{}/", cluster.url)]
    );
    client.health().await.expect("the first master answers");
    assert_eq!(client.master_url(), format!("{first_url}/"));

    // The first master goes away: requests go to the second, and stay there.
    first.stop().await;
    let page = client
        .list(&ListQuery::default())
        .await
        .expect("the second master answers");
    assert!(page.procs.is_empty());
    assert_eq!(client.master_url(), format!("{}/", cluster.url));
    let created = client
        .submit(&json!({"cmd": "sleep 300"}))
        .await
        .expect("a submit goes to the master that answered");
    let seen = cluster
        .client(None)
        .get(created.id)
        .await
        .expect("stored there");
    assert_eq!(seen.summary.id, created.id);
    let hosts = client.hosts().await.expect("hosts");
    assert!(hosts.iter().any(|h| h.address == cluster.worker_addr()));

    // Both gone: the error names both.
    let master_url = cluster.url.clone();
    cluster.stop().await;
    let err = client.health().await.expect_err("no master left");
    let text = err.to_string();
    assert!(matches!(err, Error::AllFailed { .. }), "{text}");
    assert!(text.contains(&first_url), "{text}");
    assert!(text.contains(&master_url), "{text}");
}
