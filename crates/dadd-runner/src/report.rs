//! Reports to the master: state changes (`PUT /api/procs/{id}/state`) and
//! `output.log` by byte offset (`PUT /api/procs/{id}/logfile?offset=N`),
//! both with the per-process bearer token.
//!
//! Delivery runs on its own thread, fed by a channel, so a master that is
//! slow or down never delays supervision (a timeout or a stop signal stays
//! prompt). Connection errors, 5xx and 429 are retried with capped
//! exponential backoff and jitter; a 409 on a log chunk resumes at the
//! offset the master names; other 4xx are not retried. At the end: the whole
//! log first, then the final state. Without a master, the runner only prints
//! what it would report.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dadd_spec::api::{Delivery, ErrorBody, LogAppended, StateReport};
use rand::Rng;
use ureq::Agent;

use crate::load::MasterTarget;
use crate::outlog::diag;
use crate::signals::{Event, Signals};

/// The most bytes sent in one log chunk (the master's limit).
pub const MAX_CHUNK: u64 = 1 << 20;
/// How often new log bytes are shipped while the command runs.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);
/// The first retry delay; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where reports go.
#[derive(Debug)]
pub enum Reporter {
    /// No master: print what would be reported.
    Print,
    /// A master, served by a delivery thread.
    Master(Box<Delivering>),
}

/// The delivery thread's handle.
#[derive(Debug)]
pub struct Delivering {
    tx: Sender<Msg>,
    done: OwnedFd,
    thread: JoinHandle<Delivery>,
}

#[derive(Debug)]
enum Msg {
    State(StateReport),
    Finish(StateReport),
    Abort,
}

impl Reporter {
    /// Starts reporting to `target` (a thread: only after daemonizing), or
    /// printing when there is none.
    pub fn start(
        target: Option<MasterTarget>,
        agent: Agent,
        log_path: PathBuf,
        deadline: Duration,
    ) -> std::io::Result<Self> {
        let Some(target) = target else {
            return Ok(Self::Print);
        };
        let (tx, rx) = mpsc::channel();
        // The thread holds the write end; its exit closes it, which wakes
        // the main thread's poll (together with its signalfd).
        let (done, done_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
        let shipper = Shipper {
            client: Client { agent, target },
            log_path,
            offset: 0,
            queue: VecDeque::new(),
            finishing: None,
            refused: false,
            log_refused: false,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            last_ship: Instant::now(),
            deadline,
            failing_since: None,
        };
        let thread = std::thread::Builder::new()
            .name("reporter".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let delivery = shipper.run(&rx);
                drop(done_w);
                delivery
            })?;
        Ok(Self::Master(Box::new(Delivering { tx, done, thread })))
    }

    /// Reports a state change (never blocks on the network).
    pub fn state(&self, report: StateReport) {
        match self {
            Self::Print => print_would(&report),
            Self::Master(d) => {
                let _ = d.tx.send(Msg::State(report));
            }
        }
    }

    /// Delivers the whole log, then `report`; waits until both were accepted,
    /// the deadline passed, or a stop signal came (then it gives up).
    pub fn finish(self, report: StateReport, signals: &mut Signals) -> Delivery {
        match self {
            Self::Print => {
                print_would(&report);
                Delivery::NoMaster
            }
            Self::Master(d) => {
                let Delivering { tx, done, thread } = *d;
                let _ = tx.send(Msg::Finish(report));
                let mut aborted = false;
                loop {
                    match signals.wait_fd(done.as_fd()) {
                        Ok(Event::Stop(sig)) if !aborted => {
                            diag(format!("got {sig} while delivering the final report: giving up, the working dir is kept"));
                            let _ = tx.send(Msg::Abort);
                            aborted = true;
                        }
                        Ok(Event::Ready) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                thread.join().unwrap_or(Delivery::Undelivered)
            }
        }
    }
}

fn print_would(report: &StateReport) {
    let json = serde_json::to_string(report).unwrap_or_default();
    diag(format!("no master: would report {json}"));
}

/// Why a call to the master did not succeed.
#[derive(Debug)]
enum CallError {
    /// Worth retrying: connection error, 5xx, 429.
    Retry(String),
    /// Refused for good (another 4xx).
    Refused(String),
    /// 409 on a log chunk: the master expects this offset.
    Gap(u64),
}

struct Client {
    agent: Agent,
    target: MasterTarget,
}

impl Client {
    fn url(&self, tail: &str) -> String {
        format!(
            "{}/api/procs/{}/{tail}",
            self.target.url, self.target.process_id
        )
    }

    fn put(
        &self,
        url: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<ureq::http::Response<ureq::Body>, CallError> {
        self.agent
            .put(url)
            .header("Authorization", &format!("Bearer {}", self.target.token))
            .header("Content-Type", content_type)
            .send(body)
            .map_err(|e| CallError::Retry(e.to_string()))
    }

    fn put_state(&self, report: &StateReport) -> Result<(), CallError> {
        let body = serde_json::to_vec(report).map_err(|e| CallError::Refused(e.to_string()))?;
        let mut resp = self.put(&self.url("state"), "application/json", &body)?;
        match classify(&mut resp) {
            Ok(_) => Ok(()),
            Err((_, e)) => Err(e),
        }
    }

    fn put_log(&self, offset: u64, chunk: &[u8]) -> Result<u64, CallError> {
        let url = format!("{}?offset={offset}", self.url("logfile"));
        let mut resp = self.put(&url, "application/octet-stream", chunk)?;
        match classify(&mut resp) {
            Ok(body) => serde_json::from_str::<LogAppended>(&body)
                .map(|a| a.offset)
                .map_err(|e| CallError::Retry(format!("unreadable answer to a log chunk ({e})"))),
            Err((Some(expected), _)) => Err(CallError::Gap(expected)),
            Err((None, e)) => Err(e),
        }
    }
}

/// Success with the body, or the error (with `expected_offset` of a 409).
fn classify(
    resp: &mut ureq::http::Response<ureq::Body>,
) -> Result<String, (Option<u64>, CallError)> {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let parsed = serde_json::from_str::<ErrorBody>(&body).ok();
    let message = parsed
        .as_ref()
        .map_or_else(|| body.chars().take(200).collect(), |b| b.error.clone());
    let text = format!("HTTP {status}: {message}");
    if status == 409 {
        if let Some(expected) = parsed.and_then(|b| b.expected_offset) {
            return Err((Some(expected), CallError::Gap(expected)));
        }
    }
    if status >= 500 || status == 429 {
        Err((None, CallError::Retry(text)))
    } else {
        Err((None, CallError::Refused(text)))
    }
}

/// The delivery thread's state.
struct Shipper {
    client: Client,
    log_path: PathBuf,
    /// Log bytes the master holds.
    offset: u64,
    queue: VecDeque<StateReport>,
    /// Since when the final report waits.
    finishing: Option<Instant>,
    /// A final report or the log was refused for good.
    refused: bool,
    log_refused: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
    last_ship: Instant,
    deadline: Duration,
    failing_since: Option<Instant>,
}

impl Shipper {
    fn run(mut self, rx: &Receiver<Msg>) -> Delivery {
        loop {
            let now = Instant::now();
            if let Some(since) = self.finishing {
                if now.duration_since(since) >= self.deadline {
                    diag(format!(
                        "the master did not take the final report within --report-deadline ({}s): giving up; state.json says undelivered and the working dir is kept",
                        self.deadline.as_secs_f64()
                    ));
                    return Delivery::Undelivered;
                }
            }
            let wait = match (self.retry_at, self.finishing) {
                (Some(t), Some(since)) => {
                    t.min(since + self.deadline).saturating_duration_since(now)
                }
                (Some(t), None) => t.saturating_duration_since(now),
                (None, Some(_)) => Duration::ZERO,
                (None, None) if !self.queue.is_empty() => Duration::ZERO,
                (None, None) => LOG_INTERVAL.saturating_sub(now.duration_since(self.last_ship)),
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::State(r)) => self.queue.push_back(r),
                Ok(Msg::Finish(r)) => {
                    self.queue.push_back(r);
                    self.finishing = Some(Instant::now());
                    // Deliver at once: no reason to wait out a backoff
                    // taken while the command ran.
                    self.retry_at = None;
                }
                Ok(Msg::Abort) | Err(RecvTimeoutError::Disconnected) => {
                    return Delivery::Undelivered
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            self.retry_at = None;
            match self.step() {
                Ok(()) => {
                    if let Some(since) = self.failing_since.take() {
                        diag(format!(
                            "the master answers again (after {:.1}s)",
                            since.elapsed().as_secs_f64()
                        ));
                    }
                    self.backoff = FIRST_BACKOFF;
                }
                Err(reason) => {
                    let delay = jitter(self.backoff);
                    self.failing_since.get_or_insert_with(Instant::now);
                    diag(format!(
                        "cannot reach the master ({reason}); retrying in {:.1}s",
                        delay.as_secs_f64()
                    ));
                    self.retry_at = Some(Instant::now() + delay);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            if self.finishing.is_some() && self.queue.is_empty() {
                return if self.refused {
                    Delivery::Undelivered
                } else {
                    Delivery::Delivered
                };
            }
        }
    }

    /// One pass: states and log, in the order the moment asks for.
    fn step(&mut self) -> Result<(), String> {
        if self.finishing.is_some() {
            // The whole log before the final state: the master's failure
            // notification carries the log's tail.
            self.ship_log()?;
            self.send_states()
        } else {
            self.send_states()?;
            if self.last_ship.elapsed() >= LOG_INTERVAL {
                self.ship_log()?;
                self.last_ship = Instant::now();
            }
            Ok(())
        }
    }

    fn send_states(&mut self) -> Result<(), String> {
        while let Some(report) = self.queue.front() {
            match self.client.put_state(report) {
                Ok(()) => {}
                Err(CallError::Retry(e)) => return Err(e),
                Err(e) if report.state.is_final() => {
                    diag(format!(
                        "the master refused the final report {} ({}): not retried; the working dir is kept",
                        report.state,
                        refused_text(&e)
                    ));
                    self.refused = true;
                }
                Err(e) => diag(format!(
                    "the master refused the report {} ({}): not retried",
                    report.state,
                    refused_text(&e)
                )),
            }
            self.queue.pop_front();
        }
        Ok(())
    }

    fn ship_log(&mut self) -> Result<(), String> {
        let mut gaps = 0;
        while !self.log_refused {
            let len = std::fs::metadata(&self.log_path)
                .map(|m| m.len())
                .unwrap_or(0);
            if self.offset >= len {
                return Ok(());
            }
            let chunk = read_chunk(
                &self.log_path,
                self.offset,
                (len - self.offset).min(MAX_CHUNK),
            )
            .map_err(|e| format!("cannot read {}: {e}", self.log_path.display()))?;
            match self.client.put_log(self.offset, &chunk) {
                Ok(held) if held > self.offset => self.offset = held,
                Ok(held) => {
                    diag(format!(
                        "the master answered offset {held} to a chunk at {}: log shipping stops; the working dir is kept",
                        self.offset
                    ));
                    self.log_refused = true;
                    self.refused = true;
                }
                Err(CallError::Gap(expected)) => {
                    gaps += 1;
                    diag(format!(
                        "the master expects the log at offset {expected}, not {}: resuming there",
                        self.offset
                    ));
                    self.offset = expected;
                    if gaps > 8 {
                        return Err("the master keeps naming other log offsets".into());
                    }
                }
                Err(CallError::Retry(e)) => return Err(e),
                Err(CallError::Refused(e)) => {
                    diag(format!(
                        "the master refused a log chunk ({e}): not retried; the working dir is kept"
                    ));
                    self.log_refused = true;
                    self.refused = true;
                }
            }
        }
        Ok(())
    }
}

fn refused_text(e: &CallError) -> String {
    match e {
        CallError::Retry(t) | CallError::Refused(t) => t.clone(),
        CallError::Gap(o) => format!("HTTP 409, expected offset {o}"),
    }
}

fn read_chunk(path: &PathBuf, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// A delay between half and all of `d`, so many runners retrying at once
/// after an outage do not hit the master in step.
fn jitter(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(
                j >= Duration::from_secs(1) && j <= Duration::from_secs(2),
                "{j:?}"
            );
        }
    }

    #[test]
    fn chunks_are_read_from_an_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("output.log");
        std::fs::write(&p, b"0123456789").expect("write");
        assert_eq!(read_chunk(&p, 3, 4).expect("read"), b"3456");
        assert_eq!(read_chunk(&p, 8, 10).expect("read"), b"89");
    }
}
