//! Daemonizing (the `daemonize` crate does the forks): own session, standard
//! input from `/dev/null`, standard output and error into `runner.log`, cwd
//! the working dir.
//!
//! The parent stays until the daemon says it has written `pid` (over a
//! close-on-exec pipe made before the fork), then prints one JSON line
//! `{"pid", "directory"}` and exits 0; if the daemon fails before that, the
//! parent prints the daemon's reason and exits non-zero. The caller must not
//! have started any thread: this forks.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use dadd_spec::api::RunStarted;
use daemonize::{Daemonize, Outcome};
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

use crate::exit;

/// The daemon's diagnostics file in the working dir.
pub const RUNNER_LOG: &str = "runner.log";

/// How long the parent waits for the daemon to write `pid`.
pub const CONFIRM_DEADLINE: Duration = Duration::from_secs(30);

/// Which side of the fork this is.
#[derive(Debug)]
pub enum Role {
    /// The parent, done: exit with this code.
    Parent(i32),
    /// The daemon: go on, and tell the parent how the start went.
    Daemon(Handshake),
}

/// The daemon's end of the pipe to the waiting parent.
#[derive(Debug)]
pub struct Handshake {
    pipe: File,
}

impl Handshake {
    /// Tells the parent the daemon is up and has written `pid`.
    pub fn ready(mut self, pid: u32) {
        let _ = writeln!(self.pipe, "ok {pid}");
    }

    /// Tells the parent the daemon could not start, and why.
    pub fn failed(mut self, reason: &str) {
        let _ = writeln!(self.pipe, "error {reason}");
    }
}

/// Daemonizes with `dir` as cwd and `dir/runner.log` for diagnostics.
pub fn daemonize(dir: &Path) -> Role {
    let open_log = || {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(dir.join(RUNNER_LOG))
    };
    let (out, err) = match open_log().and_then(|a| Ok((a.try_clone()?, a))) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!(
                "dadd-runner: cannot open {}: {e}; check that the working dir is writable",
                dir.join(RUNNER_LOG).display()
            );
            return Role::Parent(exit::SETUP);
        }
    };
    let (read_end, write_end) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dadd-runner: cannot make a pipe to the daemon: {e}");
            return Role::Parent(exit::SETUP);
        }
    };
    // Keep the caller's umask (the crate's default would change it for the
    // command): read it by setting it, then put it back.
    let mask = nix::sys::stat::umask(Mode::empty());
    nix::sys::stat::umask(mask);
    let daemon = Daemonize::new()
        .working_directory(dir)
        .umask(mask.bits())
        .stdout(out)
        .stderr(err);
    match daemon.execute() {
        Outcome::Parent(Ok(_)) => {
            drop(write_end);
            Role::Parent(wait_for_daemon(File::from(read_end), dir))
        }
        Outcome::Parent(Err(e)) => {
            eprintln!("dadd-runner: cannot daemonize: {e}");
            Role::Parent(exit::SETUP)
        }
        Outcome::Child(Ok(_)) => {
            drop(read_end);
            Role::Daemon(Handshake {
                pipe: File::from(write_end),
            })
        }
        Outcome::Child(Err(e)) => {
            Handshake {
                pipe: File::from(write_end),
            }
            .failed(&format!("cannot daemonize: {e}"));
            std::process::exit(exit::SETUP);
        }
    }
}

/// The parent's side: waits for the daemon's word, prints `RunStarted`.
fn wait_for_daemon(mut pipe: File, dir: &Path) -> i32 {
    let deadline = Instant::now() + CONFIRM_DEADLINE;
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!(
                "dadd-runner: the daemon did not confirm its start within {}s; see {}",
                CONFIRM_DEADLINE.as_secs(),
                dir.join(RUNNER_LOG).display()
            );
            return exit::SETUP;
        }
        let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("dadd-runner: cannot wait for the daemon: {e}");
                return exit::SETUP;
            }
        }
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("dadd-runner: cannot read the daemon's answer: {e}");
                return exit::SETUP;
            }
        }
    }
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().next().unwrap_or("");
    if let Some(pid) = line
        .strip_prefix("ok ")
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let started = RunStarted {
            pid,
            directory: dir.display().to_string(),
        };
        match serde_json::to_string(&started) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("dadd-runner: cannot print the start answer: {e}");
                exit::SETUP
            }
        }
    } else if let Some(reason) = line.strip_prefix("error ") {
        eprintln!(
            "dadd-runner: the daemon failed to start: {reason}; see {}",
            dir.join(RUNNER_LOG).display()
        );
        exit::SETUP
    } else {
        eprintln!(
            "dadd-runner: the daemon exited before writing pid; see {}",
            dir.join(RUNNER_LOG).display()
        );
        exit::SETUP
    }
}
