//! The `dadd` binary against the in-process cluster: exit codes of
//! `submit --wait`, `--follow` and `logs -f`, tables and `--json`, files.

use std::process::Output;

use bytes::Bytes;
use dadd_client::Client;
use dadd_spec::api::{ProcId, ProcList};
use dadd_spec::ProcState;
use serde_json::json;

use crate::support::*;

/// Runs `dadd` with `args` (no terminal, no stdin) to its end.
fn dadd(master: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"));
    cmd.arg("--master")
        .arg(master)
        .args(args)
        .env_remove("DADD_TOKEN")
        .env_remove("DADD_MASTER_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run(master: &str, args: &[&str]) -> Output {
    dadd(master, args).output().await.expect("dadd runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The id of the newest process once there is one above `after`.
async fn newest_above(client: &Client, after: ProcId) -> ProcId {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let page = client.list(&Default::default()).await.expect("list");
        if let Some(p) = page.procs.first().filter(|p| p.id > after) {
            return p.id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new process within 20s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn write_spec(cluster: &Cluster, name: &str, spec: serde_json::Value) -> String {
    let path = cluster.dir.path().join(name);
    std::fs::write(&path, spec.to_string()).expect("write spec");
    path.display().to_string()
}

#[actix_web::test]
async fn submit_wait_exit_codes_say_how_the_process_ended() {
    let cluster = Cluster::start(None).await;
    let client = cluster.client(None);
    let spec = write_spec(&cluster, "sleep.json", json!({"cmd": "sleep 300"}));
    let mut last = 0;
    for (end, code) in [
        (ProcState::Success, 0),
        (ProcState::Failed, 1),
        (ProcState::Killed, 3),
        (ProcState::Lost, 4),
    ] {
        let child = dadd(&cluster.url, &["submit", &spec, "--wait"])
            .spawn()
            .expect("dadd starts");
        let id = newest_above(&client, last).await;
        last = id;
        let runner = cluster.runner_client(id).await;
        runner
            .report_state(id, &report(ProcState::Running))
            .await
            .expect("running");
        if end == ProcState::Lost {
            client
                .delete_host(&cluster.worker_addr())
                .await
                .expect("forget the host");
        } else {
            let mut r = report(end);
            r.exit_code = match end {
                ProcState::Success => Some(0),
                ProcState::Failed => Some(3),
                _ => None,
            };
            runner.report_state(id, &r).await.expect("final report");
        }
        let out = child.wait_with_output().await.expect("dadd ends");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{end}: {stderr}");
        assert!(
            stderr.contains(&format!("process {id}: {end}")),
            "{end}: {stderr}"
        );
        assert!(
            !stderr.contains('\r') && !stderr.contains('⠋'),
            "no spinner when stderr is not a terminal: {stderr:?}"
        );
    }
    cluster.stop().await;
}

#[actix_web::test]
async fn follow_and_logs_f_print_the_whole_log() {
    let cluster = Cluster::start(None).await;
    let client = cluster.client(None);
    let spec = write_spec(&cluster, "echo.json", json!({"cmd": "echo hi"}));

    let follower = dadd(&cluster.url, &["submit", &spec, "--follow"])
        .spawn()
        .expect("dadd starts");
    let id = newest_above(&client, 0).await;
    let runner = cluster.runner_client(id).await;
    runner
        .report_state(id, &report(ProcState::Running))
        .await
        .expect("running");
    runner
        .append_log(id, 0, Bytes::from_static(b"line one\n"))
        .await
        .expect("chunk");
    // A second follower joins while the log grows.
    let tail = dadd(&cluster.url, &["logs", "-f", &id.to_string()])
        .spawn()
        .expect("dadd logs starts");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    runner
        .append_log(id, 9, Bytes::from_static(b"line two\n"))
        .await
        .expect("chunk");
    let mut failed = report(ProcState::Failed);
    failed.exit_code = Some(2);
    runner.report_state(id, &failed).await.expect("failed");

    let out = follower.wait_with_output().await.expect("ends");
    assert_eq!(text(&out.stdout), "line one\nline two\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = tail.wait_with_output().await.expect("ends");
    assert_eq!(text(&out.stdout), "line one\nline two\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "logs -f ends when the process does"
    );
    let out = run(&cluster.url, &["logs", &id.to_string()]).await;
    assert_eq!(text(&out.stdout), "line one\nline two\n");
    cluster.stop().await;
}

#[actix_web::test]
async fn tables_json_show_kill_hosts_and_files() {
    let cluster = Cluster::start(None).await;
    let spec = write_spec(&cluster, "sleep.json", json!({"cmd": ["sleep", "300"]}));

    let out = run(&cluster.url, &["--json", "submit", &spec]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = created["id"].as_i64().expect("an id");
    let runner = cluster.runner_client(id).await;
    runner
        .report_state(id, &report(ProcState::Running))
        .await
        .expect("running");

    let out = run(&cluster.url, &["ps"]).await;
    let table = text(&out.stdout);
    assert!(table.starts_with("ID  STATE"), "{table}");
    assert!(
        table.contains(&format!("{id}   running  {}", cluster.worker_addr())),
        "{table}"
    );
    assert!(table.contains("sleep 300"), "{table}");
    let out = run(&cluster.url, &["ps", "--json", "--state", "running"]).await;
    let page: ProcList = serde_json::from_slice(&out.stdout).expect("a ProcList");
    assert_eq!(page.procs.len(), 1);
    let out = run(&cluster.url, &["ps", "--state", "failed"]).await;
    assert_eq!(text(&out.stdout).lines().count(), 1, "only the header");

    let out = run(&cluster.url, &["show", &id.to_string()]).await;
    let page = text(&out.stdout);
    assert!(page.contains("state:    running"), "{page}");
    assert!(page.contains(&format!("/api/procs/{id}/logfile")), "{page}");

    let out = run(&cluster.url, &["hosts"]).await;
    let hosts = text(&out.stdout);
    assert!(hosts.contains(&cluster.worker_addr()), "{hosts}");
    assert!(hosts.contains(" up "), "{hosts}");

    let out = run(&cluster.url, &["kill", &id.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("process {id}: kill requested")));

    // Files round trip.
    let local = cluster.dir.path().join("payload.bin");
    std::fs::write(&local, b"some bytes\n").expect("write");
    let out = run(
        &cluster.url,
        &[
            "files",
            "put",
            &local.display().to_string(),
            "in/payload.bin",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&cluster.url, &["files", "ls"]).await;
    assert!(
        text(&out.stdout).contains("in/payload.bin"),
        "{}",
        text(&out.stdout)
    );
    let back = cluster.dir.path().join("back.bin");
    let out = run(
        &cluster.url,
        &[
            "files",
            "get",
            "in/payload.bin",
            &back.display().to_string(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&back).expect("downloaded"), b"some bytes\n");
    let out = run(&cluster.url, &["files", "get", "in/payload.bin", "-"]).await;
    assert_eq!(out.stdout, b"some bytes\n");
    let out = run(&cluster.url, &["files", "rm", "in/payload.bin"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&cluster.url, &["files", "get", "in/payload.bin", "-"]).await;
    assert_eq!(out.status.code(), Some(5), "a missing file");
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
    cluster.stop().await;
}

#[actix_web::test]
async fn bad_specs_exit_2_and_an_absent_master_exits_5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("bad.json");
    std::fs::write(
        &spec,
        r#"{"python_dep": "x", "download_urls": ["ftp://h/f"]}"#,
    )
    .expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let master = format!("http://127.0.0.1:{port}");
    let out = run(&master, &["submit", &spec.display().to_string(), "--wait"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("invalid spec (3 problems)"), "{stderr}");
    assert!(stderr.contains("python_deps"), "{stderr}");
    assert!(stderr.contains("ftp"), "{stderr}");
    assert!(stderr.contains("cmd"), "{stderr}");

    let out = run(&master, &["ps"]).await;
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stderr).contains(&format!("127.0.0.1:{port}")),
        "{}",
        text(&out.stderr)
    );

    let out = run(&master, &["show", "not-a-number"]).await;
    assert_eq!(out.status.code(), Some(2), "a usage error");
}

#[actix_web::test]
async fn a_master_list_skips_a_master_that_is_down() {
    let cluster = Cluster::start(None).await;
    let client = cluster.client(None);
    let masters = format!("{},{}", closed_url(), cluster.url);
    let spec = write_spec(&cluster, "sleep.json", json!({"cmd": "sleep 300"}));

    let out = run(&masters, &["--json", "submit", &spec]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = created["id"].as_i64().expect("an id");
    let page = client.list(&Default::default()).await.expect("list");
    assert_eq!(
        page.procs.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![id],
        "submitted once"
    );

    let out = run(&masters, &["ps"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("sleep 300"),
        "{}",
        text(&out.stdout)
    );

    // The same list from the environment.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .args(["--json", "ps"])
        .env("DADD_MASTER_URL", &masters)
        .env_remove("DADD_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("dadd runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page: ProcList = serde_json::from_slice(&out.stdout).expect("a ProcList");
    assert_eq!(page.procs.len(), 1);
    cluster.stop().await;
}

#[actix_web::test]
async fn every_master_down_names_each_and_exits_5() {
    let (one, two) = (closed_url(), closed_url());
    let out = run(&format!("{one},{two}"), &["ps"]).await;
    assert_eq!(out.status.code(), Some(5));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no master answered"), "{stderr}");
    assert!(stderr.contains(&one) && stderr.contains(&two), "{stderr}");

    let out = run(&format!("{one},ftp://two"), &["ps"]).await;
    assert_eq!(out.status.code(), Some(2), "a bad URL is a usage error");
    assert!(
        text(&out.stderr).contains("ftp://two"),
        "{}",
        text(&out.stderr)
    );
}
