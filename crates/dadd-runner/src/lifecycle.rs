//! One run from start to end, step by step: load, working dir, daemonize,
//! setup (downloads, settings, virtualenv), the command, supervision, final
//! report, cleanup. Each step's failure ends the process in a definite state.

use std::ffi::OsString;
use std::path::Path;

use dadd_spec::api::{Delivery, StateReport};
use dadd_spec::ProcState;

use crate::cli::{Cli, TOKEN_ENV};
use crate::command::{self, Ending, Launch, StopCause};
use crate::daemon::{self, Handshake, Role};
use crate::download::{self, DownloadError};
use crate::load::{self, Job, LoadError};
use crate::outlog::{diag, OutputLog};
use crate::python::{self, PythonError};
use crate::record::Recorder;
use crate::report::Reporter;
use crate::signals::Signals;
use crate::{exit, http, workdir};

/// The settings file's name in the working dir.
pub const SETTINGS: &str = "settings.json";

/// Runs the whole life of one process; returns the exit code.
pub fn run(cli: Cli) -> i32 {
    let job = match load::load(&cli) {
        Ok(job) => job,
        Err(e) => {
            match &e {
                LoadError::Spec(errors) => eprintln!("dadd-runner: {errors}"),
                other => eprintln!("dadd-runner: {other}"),
            }
            return exit::USAGE;
        }
    };
    let dir = match workdir::prepare(cli.working_dir.as_deref(), cli.work_root.as_deref()) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("dadd-runner: {e}");
            return if e.is_usage() {
                exit::USAGE
            } else {
                exit::SETUP
            };
        }
    };
    // Single-threaded up to here: the fork below must not copy a thread.
    let handshake = if cli.foreground {
        None
    } else {
        match daemon::daemonize(&dir) {
            Role::Parent(code) => return code,
            Role::Daemon(h) => Some(h),
        }
    };
    Run::start(&cli, job, &dir, handshake)
}

/// How the process ended.
#[derive(Debug, Clone)]
struct Final {
    state: ProcState,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: Option<String>,
    /// The foreground exit code.
    code: i32,
}

impl Final {
    fn setup_failed(reason: String) -> Self {
        Self {
            state: ProcState::Failed,
            exit_code: None,
            signal: None,
            reason: Some(reason),
            code: exit::SETUP,
        }
    }

    fn killed(sig: nix::sys::signal::Signal, during: &str) -> Self {
        Self {
            state: ProcState::Killed,
            exit_code: None,
            signal: None,
            reason: Some(format!("stopped by {sig} during {during}")),
            code: exit::for_signal(sig as i32),
        }
    }
}

struct Run<'a> {
    cli: &'a Cli,
    job: Job,
    dir: &'a Path,
    log: OutputLog,
    signals: Signals,
    rec: Recorder,
    command_pid: Option<i32>,
}

/// Tells the waiting parent (daemon mode) or the terminal why the start failed.
fn fail_early(handshake: Option<Handshake>, reason: String) -> i32 {
    diag(&reason);
    if let Some(h) = handshake {
        h.failed(&reason);
    }
    exit::SETUP
}

impl<'a> Run<'a> {
    fn start(cli: &'a Cli, job: Job, dir: &'a Path, handshake: Option<Handshake>) -> i32 {
        // Before the reporter thread: a handler must be in place before anything can signal.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => return fail_early(handshake, format!("cannot set up signal handling: {e}")),
        };
        command::become_subreaper();
        let log = match OutputLog::open(dir) {
            Ok(l) => l,
            Err(e) => {
                return fail_early(
                    handshake,
                    format!("cannot open {}/output.log: {e}", dir.display()),
                )
            }
        };
        let (download_agent, master_agent) = match (
            http::download_agent(cli.ca_file.as_deref()),
            http::master_agent(cli.ca_file.as_deref()),
        ) {
            (Ok(d), Ok(m)) => (d, m),
            (Err(e), _) | (_, Err(e)) => return fail_early(handshake, e.to_string()),
        };
        let delivery = if job.master.is_some() {
            Delivery::Pending
        } else {
            Delivery::NoMaster
        };
        // The first record already says `setup`: that is where the runner
        // is from here on (one write less on every run).
        let rec = Recorder::new(dir, job.process_id(), ProcState::Setup, delivery);
        let pid = std::process::id();
        // `pid` is written whole before the parent is told, and never
        // rewritten, so a plain create is enough.
        let written = rec.write(workdir::Durability::Atomic).and_then(|()| {
            workdir::write_new(&dir.join("pid"), format!("{pid}\n").as_bytes(), 0o644)
        });
        if let Err(e) = written {
            return fail_early(
                handshake,
                format!("cannot write state.json and pid in {}: {e}", dir.display()),
            );
        }
        if let Some(h) = handshake {
            h.ready(pid);
        }
        let reporter = match Reporter::start(
            job.master.clone(),
            master_agent,
            log.path().to_path_buf(),
            cli.report_deadline,
        ) {
            Ok(r) => r,
            Err(e) => {
                // No thread, no reports: the results stay on disk.
                diag(format!("cannot start the reporter: {e}"));
                Reporter::Print
            }
        };
        let mut run = Run {
            cli,
            job,
            dir,
            log,
            signals,
            rec,
            command_pid: None,
        };
        run.go(reporter, &download_agent)
    }

    fn go(&mut self, reporter: Reporter, agent: &ureq::Agent) -> i32 {
        for w in &self.job.warnings {
            self.log.line(format!("warning: spec {w}"));
        }
        let fin = self.setup_and_run(&reporter, agent);
        self.end(reporter, fin)
    }

    fn change(&mut self, reporter: &Reporter, state: ProcState) {
        let pid = self.command_pid;
        if let Err(e) = self.rec.update(|r| {
            r.state = state;
            r.command_pid = pid;
        }) {
            diag(format!("cannot write state.json: {e}"));
        }
        reporter.state(StateReport {
            state,
            pid,
            exit_code: None,
            signal: None,
            reason: None,
        });
    }

    fn setup_and_run(&mut self, reporter: &Reporter, agent: &ureq::Agent) -> Final {
        // state.json says `setup` already; only the master is told.
        reporter.state(StateReport {
            state: ProcState::Setup,
            pid: None,
            exit_code: None,
            signal: None,
            reason: None,
        });
        self.log.line(format!("setup in {}", self.dir.display()));
        if let Some(sig) = self.signals.pending_stop() {
            return Final::killed(sig, "setup");
        }
        if let Err(e) = download::fetch_all(
            agent,
            &self.job.spec.downloads,
            self.dir,
            self.cli.max_download_bytes,
            &self.log,
            &mut self.signals,
            self.job.master.as_ref(),
        ) {
            self.log.line(&e);
            return match e {
                DownloadError::Stopped(sig) => Final::killed(sig, "downloads"),
                e => Final::setup_failed(e.to_string()),
            };
        }
        let settings = self.dir.join(SETTINGS);
        let config = serde_json::Value::Object(self.job.spec.config.clone());
        let text = serde_json::to_vec_pretty(&config).unwrap_or_default();
        if let Err(e) = workdir::write_new(&settings, &text, 0o600) {
            let reason = format!("cannot write {}: {e}", settings.display());
            self.log.line(&reason);
            return Final::setup_failed(reason);
        }
        self.log.line("wrote settings.json (mode 0600)");
        let runner_path = std::env::var_os("PATH");
        let base_path: Option<OsString> = self
            .job
            .spec
            .env
            .get("PATH")
            .map(OsString::from)
            .or(runner_path.clone());
        let mut env: Vec<(OsString, OsString)> = self
            .job
            .spec
            .env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        if !self.job.spec.python_deps.is_empty() {
            let cache = self
                .cli
                .python_cache_dir
                .clone()
                .unwrap_or_else(python::default_cache_dir);
            let setup = python::Setup {
                dir: self.dir,
                spec: &self.job.spec,
                cache_dir: &cache,
                installer: python::choose(runner_path.as_deref()),
                grace: self.cli.grace_period,
            };
            if let Err(e) = python::build(&setup, &self.log, &mut self.signals) {
                self.log.line(&e);
                return match e {
                    PythonError::Stopped(sig, step) => Final::killed(sig, &step),
                    e => Final::setup_failed(e.to_string()),
                };
            }
            env.extend(python::command_env(self.dir, base_path.as_deref()));
        }
        env.push((
            "APP_SETTINGS_JSON".into(),
            settings.clone().into_os_string(),
        ));
        if let Some(id) = self.job.process_id() {
            env.push(("DADD_PROCESS_ID".into(), id.to_string().into()));
        }
        let launch = Launch {
            argv: self.job.spec.command_line(&settings.to_string_lossy()),
            env,
            env_remove: vec![OsString::from(TOKEN_ENV)],
        };
        if let Some(sig) = self.signals.pending_stop() {
            return Final::killed(sig, "setup");
        }
        self.run_command(reporter, &launch)
    }

    fn run_command(&mut self, reporter: &Reporter, launch: &Launch) -> Final {
        // Before the spawn: once the command runs, it appends to the same
        // file, and a line of ours could land inside one of its lines.
        self.log.line(format!("running {}", shown(&launch.argv)));
        let running = match command::spawn(launch, self.dir, &self.log) {
            Ok(r) => r,
            Err(e) => {
                self.log.line(&e);
                let code = e.exit_code();
                return Final {
                    state: ProcState::Failed,
                    exit_code: Some(code),
                    signal: None,
                    reason: Some(e.to_string()),
                    code,
                };
            }
        };
        self.command_pid = Some(running.pid());
        self.change(reporter, ProcState::Running);
        let timeout = self.job.spec.timeout;
        let outcome = command::supervise(
            &running,
            &mut self.signals,
            timeout,
            self.cli.grace_period,
            &self.log,
        );
        let (exit_code, signal) = match outcome.ending {
            Ending::Exited(c) => (Some(c), None),
            Ending::Signaled(s) => (None, Some(s)),
        };
        let how = match outcome.ending {
            Ending::Exited(c) => format!("exit code {c}"),
            Ending::Signaled(s) => format!("signal {s}"),
        };
        let (state, reason) = match (outcome.stopped, outcome.ending) {
            (Some(StopCause::Timeout), _) => (ProcState::Failed, Some("timeout".to_owned())),
            (Some(StopCause::Signal(sig)), _) => {
                (ProcState::Killed, Some(format!("stopped by {sig}")))
            }
            (None, Ending::Exited(0)) => (ProcState::Success, None),
            (None, _) => (ProcState::Failed, Some(how.clone())),
        };
        self.log
            .line(format!("command ended: {how}; process {state}"));
        Final {
            state,
            exit_code,
            signal,
            reason,
            code: outcome.ending.exit_code(),
        }
    }

    fn end(&mut self, reporter: Reporter, fin: Final) -> i32 {
        if fin.state != ProcState::Success && self.command_pid.is_none() {
            self.log.line(format!(
                "process {}: {}",
                fin.state,
                fin.reason.as_deref().unwrap_or("")
            ));
        }
        let pid = self.command_pid;
        let f = fin.clone();
        // Without a master a success is removed right away: its final
        // record need not survive a power cut (there is no result to keep),
        // so it skips the fsyncs.
        let removed_at_once =
            !self.cli.no_cleanup && self.job.master.is_none() && fin.state == ProcState::Success;
        let durability = removed_at_once.then_some(workdir::Durability::Atomic);
        if let Err(e) = self.rec.update_with(durability, |r| {
            r.state = f.state;
            r.command_pid = pid;
            r.exit_code = f.exit_code;
            r.signal = f.signal;
            r.reason = f.reason.clone();
        }) {
            diag(format!("cannot write state.json: {e}"));
        }
        let report = StateReport {
            state: fin.state,
            pid,
            exit_code: fin.exit_code,
            signal: fin.signal,
            reason: fin.reason.clone(),
        };
        let delivery = reporter.finish(report, &mut self.signals);
        if delivery != self.rec.record().delivery {
            if let Err(e) = self.rec.update(|r| r.delivery = delivery) {
                diag(format!("cannot write state.json: {e}"));
            }
        }
        let kept = !crate::cleanup::may_remove(self.cli.no_cleanup, delivery, fin.state);
        let spec_path = self.dir.join("spec.json");
        if kept && !spec_path.exists() {
            // A kept dir says what ran (the worker writes spec.json itself;
            // a run by hand gets it here, only when it is kept).
            let text = serde_json::to_vec_pretty(&self.job.spec_json).unwrap_or_default();
            if let Err(e) = workdir::write_new(&spec_path, &text, 0o600) {
                diag(format!("cannot write {}: {e}", spec_path.display()));
            }
        }
        crate::cleanup::finish(self.dir, self.cli.no_cleanup, delivery, fin.state);
        fin.code
    }
}

/// A command line as shown in the log.
fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
