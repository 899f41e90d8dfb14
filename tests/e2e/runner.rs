//! `dadd-runner` end to end: the real binary, real child processes, real
//! HTTP on loopback (file server, package index, fake master).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dadd_spec::api::{Delivery, RunStarted, RunnerRecord};
use dadd_spec::ProcState;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::procs::group_members;
use crate::support::{bin, pid_alive, pyindex, wait_for, wait_until};
use crate::support::{ChildGuard, DaemonGuard, FakeMaster, Routes};

const LONG: Duration = Duration::from_secs(30);

/// One test's temp dir, with a work root for the runner's dirs.
struct Case {
    tmp: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("work")).expect("work root");
        Self { tmp }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    fn spec(&self, spec: &Value) -> PathBuf {
        let path = self.tmp.path().join("spec.json");
        std::fs::write(&path, serde_json::to_vec(spec).expect("json")).expect("write spec");
        path
    }

    /// `dadd-runner --work-root ROOT <args>`, with a clean environment of
    /// Dadd variables.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("dadd-runner"));
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("DADD_")) {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--work-root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs the runner in the foreground on `spec` to its end.
    fn run_fg(&self, args: &[&str], spec: &Value) -> (ExitStatus, String, String) {
        let path = self.spec(spec);
        let mut cmd = self.command(&["--foreground"]);
        cmd.args(args).arg(&path);
        ChildGuard::new(cmd.spawn().expect("runner starts")).output(LONG)
    }

    /// The runner dirs under the work root.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.root())
            .expect("read work root")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        v
    }

    fn only_dir(&self) -> PathBuf {
        let dirs = self.dirs();
        assert_eq!(dirs.len(), 1, "one working dir expected: {dirs:?}");
        dirs.into_iter().next().expect("one")
    }
}

fn state(dir: &Path) -> RunnerRecord {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).expect("state.json"))
        .expect("state.json is a RunnerRecord")
}

fn try_state(dir: &Path) -> Option<RunnerRecord> {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()
}

fn output_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("output.log")).expect("output.log")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Starts a daemonized runner; returns its guard and start answer, and how
/// long the parent took to return.
fn start_daemon(mut cmd: Command) -> (DaemonGuard, RunStarted, Duration) {
    let started = Instant::now();
    let (status, out, err) = ChildGuard::new(cmd.spawn().expect("runner starts")).output(LONG);
    let took = started.elapsed();
    assert!(status.success(), "the parent failed: {status}\n{err}");
    let line = out.lines().next().expect("one line on stdout");
    let run: RunStarted = serde_json::from_str(line).expect("a RunStarted line");
    (
        DaemonGuard::new(run.pid, Path::new(&run.directory)),
        run,
        took,
    )
}

#[test]
fn success_path_downloads_writes_settings_sets_env_and_logs_output() {
    let data = b"{\"rows\": 3}\n".to_vec();
    let server = Routes::new()
        .file("/files/data.json", data.clone())
        .flaky("/flaky.txt", 1, 500, "second try\n")
        .serve();
    let case = Case::new();
    let spec = json!({
        "cmd": ["sh", "-c",
            "cat data.json; cat flaky.txt; echo \"greeting=$GREETING\"; echo \"settings=$APP_SETTINGS_JSON\"; echo \"arg=$1\"; echo \"cwd=$(pwd)\"",
            "sh", "$APP_SETTINGS"],
        "download_urls": {
            "data.json": {"url": server.url("/files/data.json"), "sha256": sha256_hex(&data)},
            "flaky.txt": server.url("/flaky.txt"),
        },
        "config": {"db": "postgres://u:secret@127.0.0.1/x"},
        "env": {"GREETING": "hi"},
    });
    let (status, _out, err) = case.run_fg(&["--no-cleanup"], &spec);
    assert_eq!(status.code(), Some(0), "{err}");
    let dir = case.only_dir();
    let log = output_log(&dir);
    let settings = dir.join("settings.json");
    for want in [
        "{\"rows\": 3}".to_owned(),
        "second try".to_owned(),
        "greeting=hi".to_owned(),
        format!("settings={}", settings.display()),
        format!("arg={}", settings.display()),
        format!("cwd={}", dir.display()),
    ] {
        assert!(log.contains(&want), "output.log lacks {want:?}:\n{log}");
    }
    // The runner's own lines stand apart, and a URL is shown without secrets.
    assert!(
        log.lines()
            .any(|l| l.starts_with("[dadd ") && l.contains("downloading data.json")),
        "{log}"
    );
    assert_eq!(
        std::fs::read(dir.join("data.json")).expect("download"),
        data
    );
    assert_eq!(server.hits("/flaky.txt"), 2, "a 500 is retried once");
    let rec = state(&dir);
    assert_eq!(rec.state, ProcState::Success);
    assert_eq!(rec.exit_code, Some(0));
    assert_eq!(rec.delivery, Delivery::NoMaster);
    assert!(rec.runner_start_ticks.is_some());
}

#[test]
fn a_successful_run_without_a_master_removes_its_working_dir() {
    let case = Case::new();
    let (status, _out, err) = case.run_fg(&[], &json!({"cmd": "true"}));
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(case.dirs().is_empty(), "the working dir is removed");
}

#[test]
fn settings_json_holds_the_config_with_mode_0600() {
    let case = Case::new();
    let config = json!({"db": "postgres://user:pw@127.0.0.1:5432/db", "nested": {"n": [1, 2]}});
    let (status, _out, err) = case.run_fg(
        &["--no-cleanup"],
        &json!({"cmd": ["cat", "$APP_SETTINGS"], "config": config}),
    );
    assert_eq!(status.code(), Some(0), "{err}");
    let dir = case.only_dir();
    let path = dir.join("settings.json");
    let mode = std::fs::metadata(&path)
        .expect("settings.json")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let back: Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    assert_eq!(back, config);
    assert!(
        !err.contains("pw@"),
        "the config's secrets are not echoed: {err}"
    );
}

#[test]
fn a_failing_command_keeps_its_dir_and_exits_with_its_code() {
    let case = Case::new();
    let (status, _out, err) =
        case.run_fg(&[], &json!({"cmd": ["sh", "-c", "echo oops >&2; exit 3"]}));
    assert_eq!(status.code(), Some(3), "{err}");
    let dir = case.only_dir();
    assert!(
        err.contains(&dir.display().to_string()),
        "the kept dir is named: {err}"
    );
    assert!(output_log(&dir).contains("oops"));
    let rec = state(&dir);
    assert_eq!((rec.state, rec.exit_code), (ProcState::Failed, Some(3)));
}

#[test]
fn missing_and_unexecutable_commands_exit_127_and_126() {
    let case = Case::new();
    let (status, _, err) = case.run_fg(&[], &json!({"cmd": "no-such-command-anywhere"}));
    assert_eq!(status.code(), Some(127), "{err}");
    let script = case.tmp.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write");
    let (status, _, err) = case.run_fg(&[], &json!({"cmd": [script.to_str().expect("utf-8")]}));
    assert_eq!(status.code(), Some(126), "{err}");
}

#[test]
fn a_404_fails_setup_at_once_without_retry() {
    let server = Routes::new().serve();
    let case = Case::new();
    let (status, _, err) = case.run_fg(
        &[],
        &json!({"cmd": ["touch", "ran"], "download_urls": [server.url("/missing.txt")]}),
    );
    assert_eq!(status.code(), Some(125), "{err}");
    assert_eq!(server.hits("/missing.txt"), 1, "a 4xx is not retried");
    let dir = case.only_dir();
    assert!(!dir.join("ran").exists(), "the command never ran");
    let rec = state(&dir);
    assert_eq!(rec.state, ProcState::Failed);
    assert!(
        rec.reason.as_deref().is_some_and(|r| r.contains("404")),
        "{rec:?}"
    );
}

#[test]
fn a_checksum_mismatch_removes_the_file_and_fails_with_125() {
    let server = Routes::new().file("/data.bin", "the real bytes").serve();
    let case = Case::new();
    let spec = json!({
        "cmd": ["touch", "ran"],
        "download_urls": {"data.bin": {"url": server.url("/data.bin"), "sha256": sha256_hex(b"other bytes")}},
    });
    let (status, _, err) = case.run_fg(&[], &spec);
    assert_eq!(status.code(), Some(125), "{err}");
    let dir = case.only_dir();
    assert!(!dir.join("data.bin").exists(), "the bad file is removed");
    assert!(!dir.join("ran").exists(), "the command never ran");
    let rec = state(&dir);
    assert_eq!(rec.state, ProcState::Failed);
    assert!(
        rec.reason
            .as_deref()
            .is_some_and(|r| r.contains("checksum")),
        "{rec:?}"
    );
    assert!(output_log(&dir).contains("checksum mismatch for data.bin"));
}

#[test]
fn a_spec_naming_escape_exits_2_and_creates_nothing() {
    let case = Case::new();
    let spec = json!({"cmd": "true", "download_urls": {"../escape": "http://127.0.0.1:9/x"}, "timeout": -1});
    let (status, _, err) = case.run_fg(&[], &spec);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("../escape"), "{err}");
    assert!(err.contains("timeout"), "every problem is listed: {err}");
    assert!(case.dirs().is_empty(), "nothing under the work root");
    assert!(!case.tmp.path().join("escape").exists());
    // The same with an explicit working dir: it is not created either.
    let wanted = case.tmp.path().join("wd");
    let (status, _, _) = case.run_fg(&["--working-dir", wanted.to_str().expect("utf-8")], &spec);
    assert_eq!(status.code(), Some(2));
    assert!(!wanted.exists());
}

#[test]
fn daemon_mode_returns_at_once_and_the_dir_goes_when_the_command_ends() {
    let case = Case::new();
    let spec = case.spec(&json!({"cmd": ["sh", "-c", "echo started; sleep 1.5; echo done"]}));
    let mut cmd = case.command(&[]);
    cmd.arg(&spec);
    let (guard, run, took) = start_daemon(cmd);
    assert!(took < Duration::from_secs(1), "the parent took {took:?}");
    let dir = PathBuf::from(&run.directory);
    assert!(dir.starts_with(std::fs::canonicalize(case.root()).expect("canonical")));
    let pid_file: i32 = std::fs::read_to_string(dir.join("pid"))
        .expect("pid written before the parent returned")
        .trim()
        .parse()
        .expect("a pid");
    assert_eq!(pid_file, run.pid);
    assert!(pid_alive(run.pid), "the daemon runs on");
    // Its own session: not ours.
    let sid = nix::unistd::getsid(Some(Pid::from_raw(run.pid))).expect("sid");
    assert_ne!(sid, nix::unistd::getsid(None).expect("our sid"));
    wait_until("the command to start", LONG, || {
        try_state(&dir).is_some_and(|r| r.state == ProcState::Running)
            && std::fs::read_to_string(dir.join("output.log")).is_ok_and(|l| l.contains("started"))
    });
    assert!(dir.exists(), "the dir stays while the command runs");
    wait_until("the working dir to go", LONG, || !dir.exists());
    guard.wait_gone(LONG);
}

#[test]
fn a_timeout_stops_the_command_and_fails_the_process() {
    let case = Case::new();
    let started = Instant::now();
    let (status, _, err) = case.run_fg(
        &["--grace-period", "1"],
        &json!({"cmd": ["sleep", "30"], "timeout": 0.5}),
    );
    assert_eq!(status.code(), Some(128 + 15), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let rec = state(&case.only_dir());
    assert_eq!(rec.state, ProcState::Failed);
    assert_eq!(rec.reason.as_deref(), Some("timeout"));
    assert_eq!(rec.signal, Some(15));

    // A command that ignores SIGTERM gets SIGKILL after the grace period.
    let case = Case::new();
    let started = Instant::now();
    let (status, _, err) = case.run_fg(
        &["--grace-period", "1"],
        &json!({"cmd": ["sh", "-c", "trap '' TERM; sleep 30"], "timeout": 0.3}),
    );
    let took = started.elapsed();
    assert_eq!(status.code(), Some(128 + 9), "{err}");
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(state(&case.only_dir()).reason.as_deref(), Some("timeout"));
}

#[test]
fn sigterm_to_the_runner_leaves_no_survivor() {
    let case = Case::new();
    let spec = case.spec(&json!({"cmd": "sh -c 'sleep 300 & sleep 300'"}));
    let mut cmd = case.command(&["--grace-period", "2"]);
    cmd.arg(&spec);
    let (mut guard, run, _) = start_daemon(cmd);
    let dir = PathBuf::from(&run.directory);
    let pgid = wait_for("the command's pid", LONG, || try_state(&dir)?.command_pid);
    guard.set_command_pid(pgid);
    // sh and both sleeps.
    let members = wait_for("three processes in the command's group", LONG, || {
        let m = group_members(pgid);
        (m.len() >= 3).then_some(m)
    });
    kill(Pid::from_raw(run.pid), Signal::SIGTERM).expect("signal the runner");
    guard.wait_gone(LONG);
    for pid in &members {
        assert!(!pid_alive(*pid), "process {pid} of the command survived");
    }
    assert!(group_members(pgid).is_empty());
    let rec = state(&dir);
    assert_eq!(rec.state, ProcState::Killed);
    assert!(
        dir.exists(),
        "a killed process keeps its dir without a master"
    );
}

/// PATH without any directory holding `uv`, so the runner takes the pip path.
fn path_without_uv() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|d| !d.join("uv").exists())
        .collect();
    std::env::join_paths(dirs)
        .expect("joinable")
        .into_string()
        .expect("utf-8 PATH")
}

fn uv_on_path() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join("uv").is_file())
}

fn python_deps_case(use_uv: bool) {
    let case = Case::new();
    let index = pyindex::serve(case.tmp.path());
    let spec = json!({
        "cmd": ["python", "-c",
            "import os, dadd_probe; print(dadd_probe.MESSAGE); print('venv=' + os.environ['VIRTUAL_ENV'])"],
        "python_deps": [pyindex::PACKAGE],
        "python_cheeseshop": index.url("/simple/"),
    });
    let cache = case.tmp.path().join("cache");
    let path = case.spec(&spec);
    let mut cmd = case.command(&["--foreground", "--no-cleanup", "--python-cache-dir"]);
    cmd.arg(&cache).arg(&path);
    if !use_uv {
        cmd.env("PATH", path_without_uv());
    }
    let (status, _, err) =
        ChildGuard::new(cmd.spawn().expect("runner starts")).output(Duration::from_secs(300));
    let dir = case.only_dir();
    let log = output_log(&dir);
    assert_eq!(status.code(), Some(0), "{err}\n{log}");
    assert!(log.contains(pyindex::MESSAGE), "{log}");
    assert!(
        log.contains(&format!("venv={}", dir.join("venv").display())),
        "{log}"
    );
    let tool = if use_uv { "with uv" } else { "python3 -m venv" };
    assert!(log.contains(tool), "{log}");
    assert!(
        index.hits(&format!("/simple/{}/", pyindex::PACKAGE)) >= 1,
        "the index saw the request"
    );
    assert!(index.hits(&format!("/packages/{}", pyindex::WHEEL)) >= 1);
    assert!(dir.join("venv/bin/python").exists());
}

#[test]
fn python_deps_are_installed_from_the_spec_index_with_venv_and_pip() {
    python_deps_case(false);
}

#[test]
fn python_deps_are_installed_with_uv_when_it_is_on_path() {
    if !uv_on_path() {
        eprintln!("uv is not on PATH: the uv path is not exercised on this machine");
        return;
    }
    python_deps_case(true);
}

const TOKEN: &str = "per-process-secret";

/// A working dir made as the worker makes it: envelope.json (0600) and spec.json.
fn worker_dir(case: &Case, master: &FakeMaster, spec: &Value) -> PathBuf {
    let dir = case.root().join(format!("proc-{}-test", master.id()));
    std::fs::create_dir(&dir).expect("mkdir");
    let envelope = json!({
        "process_id": master.id(),
        "token": TOKEN,
        "master_url": master.url(),
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
    dir
}

#[test]
fn reports_reach_the_master_and_log_chunks_reassemble_output_log_exactly() {
    let case = Case::new();
    let master = FakeMaster::start(7, TOKEN);
    let spec = json!({"cmd": ["sh", "-c",
        "echo one; sleep 1.3; echo two; env | grep '^DADD_' | sort; sleep 1.3; echo three; exit 4"]});
    let dir = worker_dir(&case, &master, &spec);
    let mut cmd = case.command(&["--no-cleanup", "--working-dir"]);
    cmd.arg(&dir)
        .arg("--envelope")
        .arg(dir.join("envelope.json"));
    let (guard, run, _) = start_daemon(cmd);
    assert_eq!(
        PathBuf::from(&run.directory),
        std::fs::canonicalize(&dir).expect("canonical")
    );
    // The log can be followed live: bytes arrive while the command runs.
    wait_until("log bytes while the command runs", LONG, || {
        String::from_utf8_lossy(&master.log()).contains("one")
            && try_state(&dir).is_some_and(|r| r.state == ProcState::Running)
    });
    guard.wait_gone(LONG);
    assert_eq!(
        master.states(),
        [ProcState::Setup, ProcState::Running, ProcState::Failed]
    );
    let last = master.reports().pop().expect("a final report");
    assert_eq!(last.exit_code, Some(4));
    assert_eq!(last.reason.as_deref(), Some("exit code 4"));
    let rec = state(&dir);
    assert_eq!(last.pid, rec.command_pid);
    assert_eq!(rec.delivery, Delivery::Delivered);
    let local = std::fs::read(dir.join("output.log")).expect("output.log");
    assert_eq!(
        master.log(),
        local,
        "the chunks reassemble output.log exactly"
    );
    assert!(
        master.chunks().len() >= 2,
        "shipped while running: {:?}",
        master.chunks()
    );
    let text = String::from_utf8_lossy(&local);
    assert!(text.contains("DADD_PROCESS_ID=7"), "{text}");
    assert!(!text.contains("DADD_PROCESS_TOKEN"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
}

#[test]
fn a_master_answering_503_for_a_while_still_gets_everything_and_the_dir_goes_after() {
    let case = Case::new();
    let master = FakeMaster::start(8, TOKEN);
    master.set_unavailable(true);
    let spec = case.spec(&json!({"cmd": ["sh", "-c", "echo out; echo err >&2"]}));
    let mut cmd = case.command(&[
        "--foreground",
        "--master",
        &master.url(),
        "--process-id",
        "8",
    ]);
    cmd.env("DADD_PROCESS_TOKEN", TOKEN).arg(&spec);
    let runner = cmd.spawn().expect("runner starts");
    let guard = ChildGuard::new(runner);
    let dir = wait_for("the working dir", LONG, || case.dirs().into_iter().next());
    wait_until("the command to end while the master is down", LONG, || {
        try_state(&dir).is_some_and(|r| r.state.is_final())
    });
    wait_until("a few refused attempts", LONG, || master.refused_503() >= 3);
    assert!(dir.exists(), "the dir stays while the master is down");
    assert_eq!(state(&dir).delivery, Delivery::Pending);
    master.set_unavailable(false);
    let (status, _, err) = guard.output(LONG);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!dir.exists(), "removed once delivered");
    assert_eq!(
        master.states(),
        [ProcState::Setup, ProcState::Running, ProcState::Success]
    );
    let log = String::from_utf8_lossy(&master.log()).into_owned();
    assert!(log.contains("out") && log.contains("err"), "{log}");
    assert!(
        log.contains("command ended: exit code 0"),
        "the whole log: {log}"
    );
    // The whole log before the final state.
    let reqs: Vec<crate::support::Request> = master
        .server()
        .requests()
        .into_iter()
        .filter(|r| r.path().ends_with("/logfile") || r.path().ends_with("/state"))
        .collect();
    let last_log = reqs
        .iter()
        .rposition(|r| r.path().ends_with("/logfile"))
        .expect("log chunks");
    let final_state = reqs
        .iter()
        .rposition(|r| String::from_utf8_lossy(&r.body).contains("\"success\""))
        .expect("final report");
    assert!(last_log < final_state, "log first, then the final state");
    assert!(err.contains("cannot reach the master"), "{err}");
}

#[test]
fn a_409_on_a_log_chunk_resumes_at_the_expected_offset() {
    let case = Case::new();
    let master = FakeMaster::start(9, TOKEN);
    master.forget_next_chunk();
    let spec = case.spec(&json!({"cmd": ["sh", "-c", "echo first; sleep 2.5; echo second"]}));
    let mut cmd = case.command(&[
        "--foreground",
        "--no-cleanup",
        "--master",
        &master.url(),
        "--process-id",
        "9",
    ]);
    cmd.env("DADD_PROCESS_TOKEN", TOKEN).arg(&spec);
    let (status, _, err) = ChildGuard::new(cmd.spawn().expect("runner starts")).output(LONG);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        master.gaps() >= 1,
        "a gap was answered: {:?}",
        master.chunks()
    );
    let dir = case.only_dir();
    let local = std::fs::read(dir.join("output.log")).expect("output.log");
    assert_eq!(master.log(), local, "resumed at the expected offset");
    assert_eq!(state(&dir).delivery, Delivery::Delivered);
}

#[test]
fn past_the_report_deadline_the_runner_exits_and_keeps_everything() {
    let case = Case::new();
    let master = FakeMaster::start(10, TOKEN);
    master.set_unavailable(true);
    let spec = case.spec(&json!({"cmd": "true"}));
    let mut cmd = case.command(&[
        "--foreground",
        "--report-deadline",
        "1",
        "--master",
        &master.url(),
        "--process-id",
        "10",
    ]);
    cmd.env("DADD_PROCESS_TOKEN", TOKEN).arg(&spec);
    let started = Instant::now();
    let (status, _, err) = ChildGuard::new(cmd.spawn().expect("runner starts")).output(LONG);
    assert_eq!(status.code(), Some(0), "the command's code still: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let dir = case.only_dir();
    let rec = state(&dir);
    assert_eq!(
        (rec.state, rec.delivery),
        (ProcState::Success, Delivery::Undelivered)
    );
    assert!(dir.join("output.log").exists());
    assert!(err.contains("--report-deadline"), "{err}");
}

#[test]
fn a_refused_final_report_keeps_the_working_dir() {
    let case = Case::new();
    let master = FakeMaster::start(11, TOKEN);
    let spec = case.spec(&json!({"cmd": "true"}));
    let mut cmd = case.command(&[
        "--foreground",
        "--master",
        &master.url(),
        "--process-id",
        "11",
    ]);
    cmd.env("DADD_PROCESS_TOKEN", "a-wrong-token").arg(&spec);
    let (status, _, err) = ChildGuard::new(cmd.spawn().expect("runner starts")).output(LONG);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(master.reports().is_empty());
    let dir = case.only_dir();
    assert_eq!(state(&dir).delivery, Delivery::Undelivered);
    assert!(err.contains("401"), "the refusal is logged: {err}");
    // A 401 is not retried: a handful of calls, not a retry storm.
    assert!(
        master.server().requests().len() <= 6,
        "{:?}",
        master.server().requests().len()
    );
}
