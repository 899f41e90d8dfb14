//! The web dashboard in a real browser: headless Chromium (through
//! chromedriver) against the real `dadd-master` (SQLite in a temp dir) and
//! one real `dadd-worker` running real `dadd-runner`s. Each test checks what
//! an operator would look at, and saves a screenshot of each page under
//! `target/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dadd_spec::api::{HostInfo, HostStatus, ProcDetail};
use dadd_spec::ProcState;
use fantoccini::Locator;
use serde_json::{json, Value};

use crate::support::browser::{eventually, Browser};
use crate::support::{bin, pid_alive, wait_for, ChildGuard, DaemonGuard};

/// How long a daemon gets to start, and a process to end.
const DEADLINE: Duration = Duration::from_secs(60);
/// The secret between the test master and its worker.
const CLUSTER_SECRET: &str = "dashboard-cluster-secret-0123456789";
/// The API token of the test that turns auth on.
const API_TOKEN: &str = "dashboard-api-token-0123456789";

/// A master and one worker from the real binaries, killed on drop (the
/// runners still alive in the work root too).
struct Cluster {
    dir: tempfile::TempDir,
    master: Option<ChildGuard>,
    worker: Option<ChildGuard>,
    url: String,
    worker_addr: String,
    token: Option<&'static str>,
    agent: ureq::Agent,
}

/// A daemon's command with no inherited `DADD_…` settings.
fn clean(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("DADD_")) {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
    cmd
}

/// Starts `cmd` with its output in `log`; returns it and the `addr` of its
/// JSON log line whose message is `message`.
fn start_daemon(what: &str, mut cmd: Command, log: &Path, message: &str) -> (ChildGuard, String) {
    let out = std::fs::File::create(log).expect("daemon log");
    let err = out.try_clone().expect("daemon log");
    cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let child = ChildGuard::new(cmd.spawn().unwrap_or_else(|e| panic!("{what} starts: {e}")));
    let addr = wait_for(&format!("{what} to listen"), DEADLINE, || {
        assert!(
            pid_alive(child.pid()),
            "{what} exited at start; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        let text = std::fs::read_to_string(log).ok()?;
        text.lines().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            let f = v.get("fields")?;
            (f.get("message")?.as_str()? == message)
                .then(|| f.get("addr")?.as_str().map(str::to_owned))?
        })
    });
    (child, addr)
}

impl Cluster {
    /// A master (with `token` as its one API token, or none) and a worker,
    /// once the worker is registered and up.
    fn start(token: Option<&'static str>) -> Cluster {
        Self::start_with(token, true)
    }

    /// A master alone: what is submitted stays `queued`.
    fn without_worker() -> Cluster {
        Self::start_with(None, false)
    }

    fn start_with(token: Option<&'static str>, with_worker: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("master");
        let tokens = token.map_or(String::new(), |t| format!("api_tokens = [\"{t}\"]"));
        let config = dir.path().join("master.toml");
        std::fs::write(
            &config,
            format!(
                "bind = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nhttp_workers = 2\nlog_format = \"json\"\n\
                 [auth]\n{tokens}\ncluster_secret = \"{CLUSTER_SECRET}\"\n\
                 [dispatch]\ntick_secs = 0.5\n",
                state.display()
            ),
        )
        .expect("master.toml");
        let mut cmd = clean(&bin("dadd-master"));
        cmd.arg("--config").arg(&config);
        let (master, addr) = start_daemon(
            "dadd-master",
            cmd,
            &dir.path().join("master.log"),
            "dadd-master listening",
        );
        let url = format!("http://{addr}");
        let work_root = dir.path().join("work");
        std::fs::create_dir(&work_root).expect("work root");
        let (worker, worker_addr) = if with_worker {
            let mut cmd = clean(&bin("dadd-worker"));
            cmd.args(["--bind", "127.0.0.1:0", "--master", &url])
                .args(["--log-format", "json", "--max-procs", "4"])
                .arg("--work-root")
                .arg(&work_root)
                .arg("--runner")
                .arg(bin("dadd-runner"))
                .env("DADD_WORKER_CLUSTER_SECRET", CLUSTER_SECRET)
                .env("DADD_WORKER_HEARTBEAT_INTERVAL_SECS", "0.25")
                .env("DADD_RUNNER_GRACE_PERIOD", "3");
            let (w, addr) = start_daemon(
                "dadd-worker",
                cmd,
                &dir.path().join("worker.log"),
                "worker listening",
            );
            (Some(w), addr)
        } else {
            (None, String::new())
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let cluster = Cluster {
            dir,
            master: Some(master),
            worker,
            url,
            worker_addr,
            token,
            agent,
        };
        if !with_worker {
            wait_for("the master to answer", DEADLINE, || {
                cluster.get_json::<Value>("/api/health").map(|_| ())
            });
            return cluster;
        }
        wait_for("the worker to be up at the master", DEADLINE, || {
            let hosts: Vec<HostInfo> = cluster.get_json("/api/hosts")?;
            hosts
                .iter()
                .any(|h| h.address == cluster.worker_addr && h.status == HostStatus::Up)
                .then_some(())
        });
        cluster
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn auth(&self) -> Option<String> {
        self.token.map(|t| format!("Bearer {t}"))
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let mut req = self.agent.get(&self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", &a);
        }
        let mut resp = req.call().ok()?;
        if resp.status() != 200 {
            return None;
        }
        serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
    }

    fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let mut req = self.agent.get(&self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", &a);
        }
        let mut resp = req.call().expect("GET reaches the master");
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_vec().expect("body");
        (status, body)
    }

    fn submit(&self, spec: &Value) -> i64 {
        let mut req = self.agent.post(&self.url("/api/procs"));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", &a);
        }
        let body = serde_json::to_vec(spec).expect("json");
        let mut resp = req
            .header("Content-Type", "application/json")
            .send(&body[..])
            .expect("POST /api/procs");
        let text = resp.body_mut().read_to_string().expect("body");
        assert_eq!(resp.status(), 201, "the spec is accepted: {text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        v["id"].as_i64().expect("an id")
    }

    fn proc(&self, id: i64) -> ProcDetail {
        self.get_json(&format!("/api/procs/{id}"))
            .unwrap_or_else(|| panic!("GET /api/procs/{id}"))
    }

    fn wait_state(&self, id: i64, state: ProcState) -> ProcDetail {
        wait_for(&format!("process {id} to be {state}"), DEADLINE, || {
            let p = self.proc(id);
            (p.summary.state == state).then_some(p)
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The worker first, so it starts nothing more; then its runners.
        drop(self.worker.take());
        if let Ok(dirs) = std::fs::read_dir(self.dir.path().join("work")) {
            for dir in dirs.filter_map(Result::ok).map(|e| e.path()) {
                let pid = std::fs::read_to_string(dir.join("pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok());
                if let Some(pid) = pid {
                    drop(DaemonGuard::new(pid, &dir));
                }
            }
        }
        drop(self.master.take());
    }
}

/// Runs an async test body on a small runtime.
fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f);
}

/// The visible text at `css`, waiting until `ok` accepts it.
async fn wait_text(b: &Browser, what: &str, css: &str, ok: impl Fn(&str) -> bool) -> String {
    eventually(what, DEADLINE, || async {
        match b.text(css).await {
            Some(t) if ok(&t) => Ok(t),
            Some(t) => Err(format!("{css}: {t:?}")),
            None => Err(format!("no {css} yet")),
        }
    })
    .await
}

/// Whether the element at `css` is shown.
async fn displayed(b: &Browser, css: &str) -> bool {
    match b.client.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

#[test]
fn a_submitted_process_appears_and_succeeds_without_a_reload_and_its_page_shows_the_log() {
    let c = Cluster::start(None);
    run(async {
        let b = Browser::start().await;
        b.goto(&c.url("/")).await;
        wait_text(&b, "the empty list", "#procs-status", |t| {
            t.starts_with("No process yet")
        })
        .await;
        // Anything that reloads the page would drop this.
        b.js("window.__stayed = 'yes'; return null;").await;
        let id = c.submit(&json!({
            "cmd": ["sh", "-c", "echo hello from the dashboard; sleep 1; echo all done"],
            "config": {"db": "postgres://app:very-secret-pw@db/app", "level": 3},
        }));
        let row = format!("tr[data-id=\"{id}\"]");
        wait_text(
            &b,
            "the new row to say success",
            &format!("{row} td:nth-child(2)"),
            |t| t == "success",
        )
        .await;
        assert_eq!(
            b.js("return window.__stayed || null;").await,
            json!("yes"),
            "the page updated in place, without a reload"
        );
        let text = b.text(&row).await.expect("the row");
        assert!(text.contains("sh -c"), "the command is shown: {text}");
        assert!(text.contains(&c.worker_addr), "the host is shown: {text}");
        assert_eq!(
            b.text(&format!("{row} td.exit")).await.as_deref(),
            Some("0"),
            "exit code"
        );
        let duration = b.text(&format!("{row} td.dur")).await.unwrap_or_default();
        assert!(duration.ends_with(" s"), "a duration: {duration:?}");
        // The summary counts it, and its minute has a bar.
        wait_text(&b, "the summary to count it", "#final-counts", |t| {
            t.contains("success\n1") || t.contains("success 1")
        })
        .await;
        eventually("a bar in the chart", DEADLINE, || async {
            let n = b
                .js("return document.querySelectorAll('#chart rect').length;")
                .await;
            if n.as_u64().unwrap_or(0) >= 1 {
                Ok(())
            } else {
                Err(format!("{n} bars"))
            }
        })
        .await;
        let hosts = b.text("#hosts-up").await.unwrap_or_default();
        assert_eq!(hosts, "1 of 1", "hosts up in the summary");
        b.screenshot("processes").await;

        // Its page, by its link.
        b.click(&format!("{row} a")).await;
        let log = wait_text(&b, "the whole log", "#log", |t| t.contains("all done")).await;
        assert!(log.contains("hello from the dashboard"), "{log}");
        wait_text(&b, "the log to be complete", "#log-status", |t| {
            t.starts_with("Complete")
        })
        .await;
        let timeline = b.text("#timeline").await.unwrap_or_default();
        for state in ["queued", "init", "setup", "running", "success"] {
            assert!(
                timeline.contains(state),
                "{state} in the timeline: {timeline}"
            );
        }
        let spec = b.text("#spec").await.unwrap_or_default();
        assert!(
            !spec.contains("very-secret-pw") && !spec.contains("postgres://"),
            "config values are masked: {spec}"
        );
        assert!(spec.contains("\"db\"") && spec.contains("hidden"), "{spec}");
        assert!(!displayed(&b, "#kill").await, "no kill button once over");
        // Tall enough to show the spec under the log.
        b.client.set_window_size(1280, 1500).await.expect("resize");
        b.screenshot("process-success").await;
    });
}

#[test]
fn a_running_process_is_killed_from_its_page() {
    let c = Cluster::start(None);
    let id = c.submit(&json!({"cmd": ["sh", "-c", "echo waiting to be killed; sleep 300"]}));
    c.wait_state(id, ProcState::Running);
    run(async {
        let b = Browser::start().await;
        b.goto(&c.url(&format!("/ui/procs/{id}"))).await;
        wait_text(&b, "the state", "#proc-state", |t| t == "running").await;
        wait_text(&b, "the log so far", "#log", |t| {
            t.contains("waiting to be killed")
        })
        .await;
        let following = b.text("#log-status").await.unwrap_or_default();
        assert!(following.starts_with("Following"), "{following}");
        let duration = b.text("#facts").await.unwrap_or_default();
        assert!(duration.contains("Duration"), "{duration}");
        b.screenshot("process-running").await;
        assert!(displayed(&b, "#kill").await, "a kill button while it runs");
        b.click("#kill").await;
        let question = b.client.get_alert_text().await.expect("a confirmation");
        assert!(
            question.contains(&format!("Kill process {id}")),
            "{question}"
        );
        b.client.accept_alert().await.expect("accept");
        wait_text(&b, "the page to show killed", "#proc-state", |t| {
            t == "killed"
        })
        .await;
        eventually("the kill button to go", DEADLINE, || async {
            if displayed(&b, "#kill").await {
                Err("still shown".to_owned())
            } else {
                Ok(())
            }
        })
        .await;
        wait_text(&b, "killed in the timeline", "#timeline", |t| {
            t.contains("killed")
        })
        .await;
        let log = wait_text(&b, "the log to be complete", "#log-status", |t| {
            t.starts_with("Complete")
        })
        .await;
        assert!(log.contains('B'), "{log}");
        b.screenshot("process-killed").await;
    });
    assert_eq!(c.proc(id).summary.state, ProcState::Killed);
}

#[test]
fn a_failed_process_shows_its_exit_code_and_log() {
    let c = Cluster::start(None);
    let id = c.submit(&json!({"cmd": ["sh", "-c", "echo about to fail >&2; exit 3"]}));
    c.wait_state(id, ProcState::Failed);
    run(async {
        let b = Browser::start().await;
        // The list, filtered to failures, by the page's own control.
        b.goto(&c.url("/")).await;
        let row = format!("tr[data-id=\"{id}\"]");
        wait_text(&b, "the row", &format!("{row} td:nth-child(2)"), |t| {
            t == "failed"
        })
        .await;
        b.client
            .find(Locator::Css("#state-filter"))
            .await
            .expect("the state filter")
            .select_by_value("failed,lost")
            .await
            .expect("choose failed or lost");
        wait_text(&b, "the filtered list", "#procs-status", |t| {
            t.contains("Failed or lost")
        })
        .await;
        let url = b.client.current_url().await.expect("url");
        assert_eq!(
            url.query(),
            Some("state=failed%2Clost"),
            "the filter is in the URL"
        );
        assert_eq!(
            b.text(&format!("{row} td.exit")).await.as_deref(),
            Some("3")
        );
        b.screenshot("processes-failed").await;
        b.goto(&c.url(&format!("/ui/procs/{id}"))).await;
        wait_text(&b, "the state", "#proc-state", |t| t == "failed").await;
        let log = wait_text(&b, "the log", "#log", |t| t.contains("about to fail")).await;
        assert!(log.contains("about to fail"));
        let facts = wait_text(&b, "the facts", "#facts", |t| t.contains("Exit code")).await;
        assert!(
            facts.contains("Exit code\n3") || facts.contains("Exit code 3"),
            "{facts}"
        );
        b.screenshot("process-failed").await;
    });
}

#[test]
fn the_hosts_page_shows_the_worker() {
    let c = Cluster::start(None);
    run(async {
        let b = Browser::start().await;
        b.goto(&c.url("/ui/hosts")).await;
        let row = format!("tr[data-address=\"{}\"]", c.worker_addr);
        let text = wait_text(&b, "the worker's row", &row, |t| t.contains("up")).await;
        assert!(text.contains(&c.worker_addr), "{text}");
        assert!(text.contains("0 / 4"), "running / max_procs: {text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "version: {text}");
        assert!(
            text.contains("ago") || text.contains("just now"),
            "heartbeat age: {text}"
        );
        let summary = b.text("#hosts-summary").await.unwrap_or_default();
        assert_eq!(summary, "1 of 1 host up.");
        b.screenshot("hosts").await;
    });
}

#[test]
fn a_file_uploaded_through_the_page_can_be_downloaded_and_deleted() {
    let c = Cluster::start(None);
    run(async {
        let b = Browser::start().await;
        let local: PathBuf = b.scratch().join("artifact.txt");
        let content = b"data for a spec's download_urls\n".repeat(40);
        std::fs::write(&local, &content).expect("a file to upload");
        b.goto(&c.url("/ui/files")).await;
        wait_text(&b, "the empty store", "#files-status", |t| {
            t.contains("empty")
        })
        .await;
        b.client
            .find(Locator::Css("#upload-file"))
            .await
            .expect("the file input")
            .send_keys(&local.display().to_string())
            .await
            .expect("choose the file");
        b.client
            .find(Locator::Css("#upload-path"))
            .await
            .expect("the path input")
            .send_keys("bucket/artifact.txt")
            .await
            .expect("type the path");
        b.click("#upload-submit").await;
        wait_text(&b, "the upload to be stored", "#upload-status", |t| {
            t.starts_with("Stored bucket/artifact.txt")
        })
        .await;
        let row = "tr[data-path=\"bucket/artifact.txt\"]";
        let text = wait_text(&b, "the file's row", row, |_| true).await;
        assert!(text.contains("1.3 KiB"), "its size: {text}");
        b.screenshot("files").await;
        // The master holds the same bytes...
        let (status, held) = c.get_bytes("/files/bucket/artifact.txt");
        assert_eq!((status, held.as_slice()), (200, content.as_slice()));
        // ...and the page's link downloads them.
        b.click(&format!("{row} a")).await;
        let saved = b.downloads().join("artifact.txt");
        eventually("the download to land", DEADLINE, || async {
            match std::fs::read(&saved) {
                Ok(bytes) if bytes == content => Ok(()),
                Ok(bytes) => Err(format!("{} bytes so far", bytes.len())),
                Err(e) => Err(format!("{}: {e}", saved.display())),
            }
        })
        .await;
        // Delete, after a confirmation.
        b.click(&format!("{row} button")).await;
        b.client.accept_alert().await.expect("confirm the delete");
        wait_text(&b, "the store to be empty again", "#files-status", |t| {
            t.contains("empty")
        })
        .await;
        assert_eq!(c.get_bytes("/files/bucket/artifact.txt").0, 404);
    });
}

#[test]
fn with_api_tokens_the_page_asks_for_one_once() {
    let c = Cluster::start(Some(API_TOKEN));
    let id = c.submit(&json!({"cmd": ["sh", "-c", "echo behind a token"]}));
    c.wait_state(id, ProcState::Success);
    run(async {
        let b = Browser::start().await;
        b.goto(&c.url("/")).await;
        eventually("the token dialog", DEADLINE, || async {
            if displayed(&b, "#auth-token").await {
                Ok(())
            } else {
                Err("not shown".to_owned())
            }
        })
        .await;
        b.screenshot("token-dialog").await;
        // A wrong token is refused and asked again.
        let input = b
            .client
            .find(Locator::Css("#auth-token"))
            .await
            .expect("input");
        input.send_keys("not-the-token").await.expect("type");
        b.click("#auth-submit").await;
        wait_text(&b, "the refusal", "#auth-error", |t| {
            t.contains("not accepted")
        })
        .await;
        let input = b
            .client
            .find(Locator::Css("#auth-token"))
            .await
            .expect("input");
        input.send_keys(API_TOKEN).await.expect("type");
        b.click("#auth-submit").await;
        let row = format!("tr[data-id=\"{id}\"]");
        wait_text(
            &b,
            "the list behind the token",
            &format!("{row} td:nth-child(2)"),
            |t| t == "success",
        )
        .await;
        // Another page in the same tab: no second question.
        b.goto(&c.url("/ui/hosts")).await;
        let host = format!("tr[data-address=\"{}\"]", c.worker_addr);
        wait_text(&b, "the hosts", &host, |t| t.contains("up")).await;
        assert!(!displayed(&b, "#auth-token").await, "asked once per tab");
        b.goto(&c.url(&format!("/ui/procs/{id}"))).await;
        wait_text(&b, "the log behind the token", "#log", |t| {
            t.contains("behind a token")
        })
        .await;
    });
    // The token went in a header, never in a URL (the master logs URLs).
    let log = std::fs::read_to_string(c.dir.path().join("master.log")).expect("master log");
    assert!(log.contains("/api/procs"), "the master logs requests");
    assert!(!log.contains(API_TOKEN), "no token in any logged URL");
}

#[test]
fn the_list_pages_by_the_api_cursor() {
    // No worker: everything stays queued, so 60 processes cost nothing.
    let c = Cluster::without_worker();
    let ids: Vec<i64> = (0..60)
        .map(|i| c.submit(&json!({"cmd": ["echo", format!("number {i}")]})))
        .collect();
    run(async {
        let b = Browser::start().await;
        b.goto(&c.url("/")).await;
        let rows = "#procs tr";
        let count = || async {
            let n = b
                .js("return document.querySelectorAll('#procs tr').length;")
                .await;
            n.as_u64().unwrap_or(0)
        };
        wait_text(&b, "the first page", "#procs-status", |t| {
            t.starts_with("Showing 50")
        })
        .await;
        assert_eq!(count().await, 50);
        let first = b.text(rows).await.unwrap_or_default();
        assert!(
            first.starts_with(&ids[59].to_string()),
            "newest first: {first}"
        );
        wait_text(&b, "the summary", "#live-counts", |t| {
            t.contains("queued\n60") || t.contains("queued 60")
        })
        .await;
        b.screenshot("processes-queued").await;
        b.click("#older").await;
        wait_text(&b, "the second page", "#procs-status", |t| {
            t.starts_with("Showing 10")
        })
        .await;
        assert_eq!(count().await, 10);
        let first = b.text(rows).await.unwrap_or_default();
        assert!(
            first.starts_with(&ids[9].to_string()),
            "the older ten: {first}"
        );
        assert_eq!(b.text("#page-no").await.as_deref(), Some("Page 2"));
        let older = b.client.find(Locator::Css("#older")).await.expect("older");
        assert!(
            !older.is_enabled().await.expect("enabled?"),
            "no page after the last"
        );
        b.click("#newer").await;
        wait_text(&b, "the first page again", "#procs-status", |t| {
            t.starts_with("Showing 50")
        })
        .await;
        // A queued process is killed at once from its page.
        b.goto(&c.url(&format!("/ui/procs/{}", ids[0]))).await;
        wait_text(&b, "the state", "#proc-state", |t| t == "queued").await;
        b.click("#kill").await;
        b.client.accept_alert().await.expect("confirm");
        wait_text(&b, "killed", "#proc-state", |t| t == "killed").await;
    });
    assert_eq!(c.proc(ids[0]).summary.state, ProcState::Killed);
}
