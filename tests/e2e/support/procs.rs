//! Processes a test starts are killed when the test ends, pass or fail:
//! [`ChildGuard`] for a direct child (and its process group when it leads
//! one), [`DaemonGuard`] for a daemonized runner (and its command's group,
//! read from `state.json`). Liveness checks treat zombies as dead.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::wait::wait_for;

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X" | "x")),
        Err(_) => false,
    }
}

/// Every live pid in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 1..];
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    // Fields 3 (state) and 5 (pgrp), after the name.
                    Some(!matches!(f.first(), Some(&"Z")) && f.get(2)?.parse::<i32>().ok()? == pgid)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// A started child, killed (with its group when it leads one) on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map_or(0, |c| i32::try_from(c.id()).expect("pid fits"))
    }

    /// Sends `sig` to it.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for it to exit, at most `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("not yet waited");
        wait_for("the process to exit", deadline, || {
            child.try_wait().expect("try_wait")
        })
    }

    /// Waits for it and returns its status, stdout and stderr (for a child
    /// started with piped output).
    pub fn output(mut self, deadline: Duration) -> (ExitStatus, String, String) {
        use std::io::Read;
        let mut child = self.child.take().expect("not yet waited");
        let mut out = String::new();
        let mut err = String::new();
        let out_pipe = child.stdout.take();
        let err_pipe = child.stderr.take();
        // Read both pipes on threads: a full pipe must not stall the child.
        let o = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = out_pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        });
        let e = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = err_pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        });
        let status = wait_for("the process to exit", deadline, || {
            child.try_wait().expect("try_wait")
        });
        out.push_str(&o.join().unwrap_or_default());
        err.push_str(&e.join().unwrap_or_default());
        (status, out, err)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
                // Its own group, if it made one, then the child itself.
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

/// A daemonized runner: on drop, its command's process group and the
/// runner itself are killed if still alive.
#[derive(Debug)]
pub struct DaemonGuard {
    /// The runner's pid.
    pub pid: i32,
    /// Its working dir.
    pub dir: PathBuf,
    command_pid: Option<i32>,
}

impl DaemonGuard {
    /// Guards the runner `pid` working in `dir`.
    pub fn new(pid: i32, dir: &Path) -> Self {
        Self {
            pid,
            dir: dir.to_path_buf(),
            command_pid: None,
        }
    }

    /// Remembers the command's pid (its group is killed on drop).
    pub fn set_command_pid(&mut self, pid: i32) {
        self.command_pid = Some(pid);
    }

    /// Waits until the runner has exited.
    pub fn wait_gone(&self, deadline: Duration) {
        let pid = self.pid;
        wait_for("the runner to exit", deadline, || {
            (!pid_alive(pid)).then_some(())
        });
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let from_state = std::fs::read(self.dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("command_pid")?.as_i64())
            .and_then(|p| i32::try_from(p).ok());
        for pgid in self.command_pid.into_iter().chain(from_state) {
            if pgid > 0 {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
        // Only if that pid is still a runner (never a reused pid).
        let is_runner = std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .is_ok_and(|c| c.starts_with("dadd-runner"));
        if pid_alive(self.pid) && is_runner {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}
