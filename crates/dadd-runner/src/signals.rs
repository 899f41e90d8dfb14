//! Signals as events: the runner wakes the moment its command exits
//! (SIGCHLD) or it is told to stop (SIGTERM, SIGINT, SIGHUP), with no
//! polling loop.
//!
//! The self-pipe pattern (signal-hook's safe handlers): each handler writes
//! a byte to a socket the runner polls; a stop signal also records which
//! signal it was. Signals are handled, never blocked, so the command starts
//! with the empty signal mask it expects (a blocked mask would be inherited
//! across exec, and a child with SIGTERM blocked could not be stopped), and
//! handlers are reset to the defaults by exec. Registering starts no thread.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

/// The signals that tell the runner to stop its command.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// The runner's signal handlers, readable as events.
#[derive(Debug)]
pub struct Signals {
    child: UnixStream,
    stop: UnixStream,
    /// The last stop signal's number, 0 when none is pending.
    which: Arc<AtomicUsize>,
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A child changed state (SIGCHLD), or may have.
    Child,
    /// A stop signal arrived.
    Stop(Signal),
    /// The timeout passed.
    Timeout,
    /// The other file descriptor given to [`Signals::wait_fd`] is readable or closed.
    Ready,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        let (child, child_w) = UnixStream::pair()?;
        let (stop, stop_w) = UnixStream::pair()?;
        child.set_nonblocking(true)?;
        stop.set_nonblocking(true)?;
        let which = Arc::new(AtomicUsize::new(0));
        for sig in STOP_SIGNALS {
            let n = sig as i32;
            // The flag first, then the wake-up: a reader that drains the
            // socket and then reads the flag never misses a signal.
            signal_hook::flag::register_usize(n, Arc::clone(&which), n as usize)?;
            signal_hook::low_level::pipe::register(n, stop_w.try_clone()?)?;
        }
        signal_hook::low_level::pipe::register(Signal::SIGCHLD as i32, child_w)?;
        Ok(Self { child, stop, which })
    }

    /// Waits for a signal, at most `timeout` (`None`: no limit).
    pub fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<Event> {
        self.wait_inner(timeout, None)
    }

    /// Waits for a signal or for `other` to become readable (or closed).
    pub fn wait_fd(&mut self, other: BorrowedFd<'_>) -> std::io::Result<Event> {
        self.wait_inner(None, Some(other))
    }

    fn wait_inner(
        &mut self,
        timeout: Option<Duration>,
        other: Option<BorrowedFd<'_>>,
    ) -> std::io::Result<Event> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(sig) = self.pending_stop() {
                return Ok(Event::Stop(sig));
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(Event::Timeout);
                    }
                    // Round up: a wait cut short by rounding would spin.
                    let ms = (d - now).as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms.min(i32::MAX as u128)).unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let mut fds = vec![
                PollFd::new(self.child.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(o) = other {
                fds.push(PollFd::new(o, PollFlags::POLLIN));
            }
            match poll(&mut fds, left) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let child_ready = ready(&fds[0]);
            let other_ready = fds.get(2).is_some_and(ready);
            drop(fds);
            if child_ready {
                drain(&mut self.child);
                return Ok(Event::Child);
            }
            if other_ready {
                return Ok(Event::Ready);
            }
            // The stop socket (or nothing): loop, `pending_stop` reads it.
        }
    }

    /// A stop signal that arrived since the last look, without waiting.
    pub fn pending_stop(&mut self) -> Option<Signal> {
        drain(&mut self.stop);
        match self.which.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Signal::try_from(i32::try_from(n).unwrap_or(0)).ok(),
        }
    }

    /// Sleeps `d` unless a stop signal arrives first (then returns it).
    pub fn sleep(&mut self, d: Duration) -> Option<Signal> {
        let deadline = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            match self.wait(Some(deadline - now)) {
                Ok(Event::Stop(s)) => return Some(s),
                Ok(Event::Child | Event::Ready) => continue,
                Ok(Event::Timeout) => return None,
                Err(_) => {
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    return None;
                }
            }
        }
    }
}

/// Reads whatever wake-up bytes are waiting.
fn drain(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}
