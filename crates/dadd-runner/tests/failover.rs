//! The runner reports to a fallback master when its own does not answer:
//! the real binary in the foreground, an envelope as the worker writes it,
//! and the end-to-end suite's fake master (loopback) as the masters.

// The end-to-end suite's fake master, waits and process guards, shared
// rather than copied; not everything in them is used here.
#[allow(dead_code, unreachable_pub)]
#[path = "../../../tests/e2e/support/http.rs"]
mod http;
#[allow(dead_code, unreachable_pub)]
#[path = "../../../tests/e2e/support/procs.rs"]
mod procs;
#[allow(dead_code, unreachable_pub)]
#[path = "../../../tests/e2e/support/wait.rs"]
mod wait;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dadd_spec::api::{Delivery, RunnerRecord};
use dadd_spec::ProcState;
use serde_json::{json, Value};

use http::FakeMaster;
use procs::ChildGuard;
use wait::wait_until;

const LONG: Duration = Duration::from_secs(30);
const TOKEN: &str = "per-process-secret";

/// A loopback URL nothing listens on (connection refused).
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// One run's temp dir and the working dir in it, made as the worker makes
/// it: `envelope.json` (0600) and `spec.json`.
struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Case {
    fn new(id: i64, master_url: &str, fallback_urls: &[String], spec: &Value) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(format!("proc-{id}-test"));
        std::fs::create_dir(&dir).expect("mkdir");
        let envelope = json!({
            "process_id": id,
            "token": TOKEN,
            "master_url": master_url,
            "fallback_urls": fallback_urls,
            "spec": spec,
        });
        let path = dir.join("envelope.json");
        std::fs::write(&path, serde_json::to_vec(&envelope).expect("json")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(
            dir.join("spec.json"),
            serde_json::to_vec(spec).expect("json"),
        )
        .expect("write");
        Self { _tmp: tmp, dir }
    }

    /// Starts `dadd-runner --foreground --working-dir DIR --envelope
    /// DIR/envelope.json ARGS`, with no Dadd variables from the test's
    /// environment.
    fn start(&self, args: &[&str]) -> ChildGuard {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dadd-runner"));
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("DADD_")) {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--foreground")
            .arg("--working-dir")
            .arg(&self.dir)
            .arg("--envelope")
            .arg(self.dir.join("envelope.json"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ChildGuard::new(cmd.spawn().expect("the runner starts"))
    }

    fn run(&self, args: &[&str]) -> (ExitStatus, String) {
        let (status, _, err) = self.start(args).output(LONG);
        (status, err)
    }

    fn record(&self) -> RunnerRecord {
        serde_json::from_slice(&std::fs::read(self.dir.join("state.json")).expect("state.json"))
            .expect("state.json is a RunnerRecord")
    }

    fn output_log(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("output.log")).expect("output.log")
    }
}

fn moved(to: &str, from: &str) -> String {
    format!("reporting to {to} now: {from} does not answer")
}

#[test]
fn a_master_that_does_not_answer_leaves_the_whole_run_to_the_fallback() {
    let closed = closed_url();
    let live = FakeMaster::start(21, TOKEN);
    let spec = json!({"cmd": ["sh", "-c", "echo one; echo two >&2; exit 3"]});
    let case = Case::new(21, &closed, &[live.url()], &spec);
    let (status, err) = case.run(&["--no-cleanup"]);
    assert_eq!(status.code(), Some(3), "the command's exit code: {err}");
    assert_eq!(
        live.states(),
        [ProcState::Setup, ProcState::Running, ProcState::Failed]
    );
    let last = live.reports().pop().expect("a final report");
    assert_eq!(last.exit_code, Some(3));
    let log = case.output_log();
    assert_eq!(live.log(), log, "the whole output.log reached the fallback");
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("one") && text.contains("two"), "{text}");
    assert_eq!(case.record().delivery, Delivery::Delivered);
    // It moved once and stayed: one line says so.
    assert_eq!(
        err.matches(&moved(&live.url(), &closed)).count(),
        1,
        "{err}"
    );
    assert!(!err.contains("retrying in"), "no backoff was needed: {err}");
}

#[test]
fn a_master_answering_503_leaves_the_run_to_the_fallback_and_the_dir_goes() {
    let unavailable = FakeMaster::start(22, TOKEN);
    unavailable.set_unavailable(true);
    let live = FakeMaster::start(22, TOKEN);
    let spec = json!({"cmd": ["sh", "-c", "echo out"]});
    let case = Case::new(22, &unavailable.url(), &[live.url()], &spec);
    let (status, err) = case.run(&[]);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(
        live.states(),
        [ProcState::Setup, ProcState::Running, ProcState::Success]
    );
    let log = String::from_utf8_lossy(&live.log()).into_owned();
    assert!(
        log.contains("out") && log.contains("command ended: exit code 0"),
        "the whole log: {log}"
    );
    assert!(unavailable.reports().is_empty());
    assert_eq!(unavailable.refused_503(), 1, "asked once, then left");
    assert!(
        err.contains(&moved(&live.url(), &unavailable.url())),
        "{err}"
    );
    assert!(
        !case.dir.exists(),
        "delivered, so the working dir is removed"
    );
}

#[test]
fn a_master_that_dies_mid_run_leaves_the_rest_to_the_next() {
    let first = FakeMaster::start(23, TOKEN);
    let second = FakeMaster::start(23, TOKEN);
    let first_url = first.url();
    // The command waits for the test's go (at most 30 s, so nothing
    // outlives a failed test).
    let spec = json!({"cmd": ["sh", "-c",
        "echo before; i=0; while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo after"]});
    let case = Case::new(23, &first_url, &[second.url()], &spec);
    let runner = case.start(&["--no-cleanup"]);
    wait_until(
        "the first master to hold running and some log",
        LONG,
        || {
            first.states().contains(&ProcState::Running)
                && String::from_utf8_lossy(&first.log()).contains("before")
        },
    );
    let first_states = first.states();
    let first_log = first.log();
    drop(first);
    std::fs::write(case.dir.join("go"), b"").expect("go");
    let (status, _, err) = runner.output(LONG);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(first_states, [ProcState::Setup, ProcState::Running]);
    assert_eq!(
        second.states(),
        [ProcState::Success],
        "the rest, not a repeat"
    );
    // The second master's store is not the first's here, so it named the
    // offset it holds (409) and the runner sent the log again from there.
    let log = case.output_log();
    assert!(log.starts_with(&first_log), "the first held a prefix");
    assert!(second.gaps() >= 1, "{:?}", second.chunks());
    assert_eq!(second.log(), log, "the whole log reached the second");
    assert!(String::from_utf8_lossy(&log).contains("after"));
    assert_eq!(case.record().delivery, Delivery::Delivered);
    assert!(err.contains(&moved(&second.url(), &first_url)), "{err}");
}

#[test]
fn the_report_deadline_bounds_an_outage_of_every_master() {
    let spec = json!({"cmd": "true"});
    let case = Case::new(24, &closed_url(), &[closed_url(), closed_url()], &spec);
    let started = Instant::now();
    let (status, err) = case.run(&["--report-deadline", "1"]);
    assert_eq!(status.code(), Some(0), "the command's code still: {err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    let rec = case.record();
    assert_eq!(
        (rec.state, rec.delivery),
        (ProcState::Success, Delivery::Undelivered)
    );
    assert!(case.dir.join("output.log").exists(), "kept: {:?}", case.dir);
    assert!(err.contains("none of the 3 masters answers"), "{err}");
    assert!(err.contains("--report-deadline"), "{err}");
}

#[test]
fn a_bad_fallback_url_is_a_usage_error_naming_it() {
    let case = Case::new(
        25,
        "http://127.0.0.1:1",
        &["ftp://127.0.0.1/x".to_owned()],
        &json!({"cmd": "true"}),
    );
    let (status, err) = case.run(&[]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("fallback_urls[0]: bad master URL ftp://127.0.0.1/x"),
        "{err}"
    );
    assert!(!case.dir.join("output.log").exists(), "nothing ran");
}
