//! Running a program under the runner's watch: spawned in its own process
//! group with its output appended straight to `output.log`, then supervised
//! until it exits, its timeout passes, or the runner is told to stop.
//!
//! Stopping is always the same: SIGTERM to the whole process group, a grace
//! period, SIGKILL to the group. Whatever the program left running in its
//! group when it exits is stopped the same way, so nothing outlives a
//! process. The runner is a child subreaper, so such leftovers become its
//! children when their parent dies and are reaped here, never left as zombies.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::outlog::OutputLog;
use crate::signals::{Event, Signals};

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Environment variables to set.
    pub env: Vec<(OsString, OsString)>,
    /// Environment variables to remove.
    pub env_remove: Vec<OsString>,
}

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No such program (exit 127).
    #[error("command not found: {program}; check the spelling and PATH (a virtualenv's bin/ leads PATH when python_deps is set)")]
    NotFound {
        /// The program as named.
        program: String,
    },
    /// The program exists but cannot be run (exit 126).
    #[error("command not executable: {program}: {source}; check its mode and interpreter line")]
    NotExecutable {
        /// The program as named.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The command line is empty.
    #[error("empty command line")]
    Empty,
    /// Something else failed (setting up output, fork).
    #[error("cannot start {program}: {source}")]
    Other {
        /// The program as named.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl SpawnError {
    /// The foreground exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound { .. } => crate::exit::NOT_FOUND,
            Self::NotExecutable { .. } => crate::exit::NOT_EXECUTABLE,
            Self::Empty | Self::Other { .. } => crate::exit::SETUP,
        }
    }
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
}

impl Ending {
    /// The shell-style exit code (128+N for signal N).
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Exited(c) => c,
            Self::Signaled(s) => crate::exit::for_signal(s),
        }
    }
}

/// Why the runner stopped a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// Its timeout passed.
    Timeout,
    /// The runner got this signal.
    Signal(Signal),
}

/// The end of a supervised program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub ending: Ending,
    /// Whether (and why) the runner stopped it.
    pub stopped: Option<StopCause>,
}

/// A started program: its pid is also its process group id.
#[derive(Debug)]
pub struct Running {
    pid: Pid,
}

impl Running {
    /// The program's pid.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }
}

/// Makes this process a child subreaper, so orphans of its programs become
/// its children and are reaped (best effort: without it, init reaps them).
pub fn become_subreaper() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// Starts `launch` in `cwd` in its own process group, stdin from
/// `/dev/null`, stdout and stderr appended to `log`.
pub fn spawn(launch: &Launch, cwd: &Path, log: &OutputLog) -> Result<Running, SpawnError> {
    let (program, args) = launch.argv.split_first().ok_or(SpawnError::Empty)?;
    let other = |source| SpawnError::Other {
        program: program.clone(),
        source,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(log.stdio().map_err(other)?)
        .stderr(log.stdio().map_err(other)?)
        .process_group(0);
    for key in &launch.env_remove {
        cmd.env_remove(key);
    }
    for (k, v) in &launch.env {
        cmd.env(k, v);
    }
    match cmd.spawn() {
        Ok(child) => {
            let raw = i32::try_from(child.id())
                .map_err(|_| other(std::io::Error::other("pid out of range")))?;
            // The std handle is dropped without waiting: the child is reaped
            // with waitpid in `supervise`, alongside any orphans it leaves.
            drop(child);
            Ok(Running {
                pid: Pid::from_raw(raw),
            })
        }
        Err(e) => Err(match e.kind() {
            std::io::ErrorKind::NotFound => SpawnError::NotFound {
                program: program.clone(),
            },
            std::io::ErrorKind::PermissionDenied => SpawnError::NotExecutable {
                program: program.clone(),
                source: e,
            },
            _ if e.raw_os_error() == Some(Errno::ENOEXEC as i32) => SpawnError::NotExecutable {
                program: program.clone(),
                source: e,
            },
            _ => other(e),
        }),
    }
}

/// Waits for `running` to end, stopping its group when `timeout` passes or a
/// stop signal arrives (SIGTERM, `grace`, SIGKILL), then stops whatever it
/// left in its group. Wakes at once on the child's exit (SIGCHLD).
pub fn supervise(
    running: &Running,
    signals: &mut Signals,
    timeout: Option<Duration>,
    grace: Duration,
    log: &OutputLog,
) -> Outcome {
    let pgid = running.pid;
    let timeout_at = timeout.map(|t| Instant::now() + t);
    let mut stopped: Option<StopCause> = None;
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    let ending = loop {
        if let Some(ending) = reap(pgid) {
            break ending;
        }
        let now = Instant::now();
        if stopped.is_none() && timeout_at.is_some_and(|t| now >= t) {
            stopped = Some(StopCause::Timeout);
            log.line(format!(
                "timeout ({}s) passed: sending SIGTERM to the command's process group",
                timeout.map_or(0.0, |t| t.as_secs_f64())
            ));
            signal_group(pgid, Signal::SIGTERM);
            kill_at = Some(now + grace);
        }
        if !killed && kill_at.is_some_and(|k| now >= k) {
            log.line(format!(
                "still running {}s after SIGTERM: sending SIGKILL to the process group",
                grace.as_secs_f64()
            ));
            signal_group(pgid, Signal::SIGKILL);
            killed = true;
        }
        let next = [
            if stopped.is_none() { timeout_at } else { None },
            if killed { None } else { kill_at },
        ]
        .into_iter()
        .flatten()
        .min();
        match signals.wait(next.map(|n| n.saturating_duration_since(now))) {
            Ok(Event::Stop(sig)) => {
                if stopped.is_none() {
                    stopped = Some(StopCause::Signal(sig));
                    log.line(format!(
                        "the runner got {sig}: sending SIGTERM to the command's process group"
                    ));
                    signal_group(pgid, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + grace);
                } else if !killed {
                    // Asked twice: do not make the caller wait out the grace period.
                    log.line(format!(
                        "the runner got {sig} again: sending SIGKILL to the process group"
                    ));
                    signal_group(pgid, Signal::SIGKILL);
                    killed = true;
                }
            }
            Ok(Event::Child | Event::Timeout | Event::Ready) => {}
            // The signalfd failing is not expected; fall back to a short
            // sleep so supervision still makes progress.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    stop_leftovers(pgid, signals, grace, kill_at, killed, log);
    Outcome { ending, stopped }
}

/// Reaps every child that has ended; returns the ending of `leader` if it did.
fn reap(leader: Pid) -> Option<Ending> {
    let mut found = None;
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == leader => {
                found = Some(Ending::Exited(code))
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == leader => {
                found = Some(Ending::Signaled(sig as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            // An orphan the runner adopted as subreaper, or a stop/continue report.
            Ok(_) => {}
        }
    }
}

/// Whether any process is left in group `pgid`.
fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

fn signal_group(pgid: Pid, sig: Signal) {
    // ESRCH: the group is already gone, which is what we want.
    let _ = killpg(pgid, sig);
}

fn stop_leftovers(
    pgid: Pid,
    signals: &mut Signals,
    grace: Duration,
    kill_at: Option<Instant>,
    mut killed: bool,
    log: &OutputLog,
) {
    reap(pgid);
    if !group_alive(pgid) {
        return;
    }
    let kill_at = match kill_at {
        Some(k) => k,
        None => {
            log.line("the command left processes in its group: sending them SIGTERM");
            signal_group(pgid, Signal::SIGTERM);
            Instant::now() + grace
        }
    };
    // Past SIGKILL, only zombies that someone else must reap can remain; do
    // not wait for them for ever.
    let give_up = kill_at + Duration::from_secs(2);
    loop {
        reap(pgid);
        if !group_alive(pgid) {
            return;
        }
        let now = Instant::now();
        if now >= give_up {
            log.line("processes of the command's group are still listed after SIGKILL; going on");
            return;
        }
        if !killed && now >= kill_at {
            log.line("leftover processes still running after the grace period: sending SIGKILL");
            signal_group(pgid, Signal::SIGKILL);
            killed = true;
        }
        // Leftovers are not necessarily our children (no SIGCHLD for them):
        // look again every 20 ms; this path is only taken when there are some.
        match signals.wait(Some(Duration::from_millis(20))) {
            Ok(Event::Stop(_)) if !killed => {
                signal_group(pgid, Signal::SIGKILL);
                killed = true;
            }
            _ => {}
        }
    }
}
