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
//!
//! # Other masters
//!
//! The envelope may name fallback masters sharing the master's store. When
//! the master in use does not answer (no HTTP answer at all: connection
//! refused, unreachable, timed out, TLS failure; or 502, 503, 504), the next
//! one of the list is tried at once, round robin, and the move is logged;
//! only when none of them answered in a row does the backoff apply. A master
//! that answers is kept until it stops answering. Any other answer (a 4xx,
//! a 500, a 429) comes from a master that works and is handled as above,
//! without moving. The log's byte offsets need no care: the masters share
//! the store, and a 409 names the offset it holds whichever master sends it.
//! `--report-deadline` bounds the whole outage, whatever the number of
//! masters.

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
pub const MAX_CHUNK: u64 = dadd_spec::api::LOG_CHUNK_BYTES;
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
        let shipper = Shipper::new(target, agent, log_path, deadline);
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
#[derive(Debug, PartialEq)]
enum CallError {
    /// The master did not answer: no HTTP answer at all, or 502, 503, 504.
    /// Worth trying another master, then retrying.
    Unanswered(String),
    /// Worth retrying at the same master: another 5xx, 429, an unreadable
    /// answer.
    Retry(String),
    /// Refused for good (another 4xx).
    Refused(String),
    /// 409 on a log chunk: the master expects this offset.
    Gap(u64),
}

/// Why one pass of delivery stopped short.
#[derive(Debug)]
struct Trouble {
    reason: String,
    /// The master in use did not answer (another one may).
    unanswered: bool,
}

impl Trouble {
    fn other(reason: String) -> Self {
        Self {
            reason,
            unanswered: false,
        }
    }
}

impl From<CallError> for Trouble {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unanswered(reason) => Self {
                reason,
                unanswered: true,
            },
            other => Self::other(refused_text(&other)),
        }
    }
}

/// The masters reports go to: the runner's own first, then the fallbacks
/// sharing its store; the one in use, and how many did not answer in a row.
#[derive(Debug)]
struct Masters {
    /// Base URLs, as called.
    urls: Vec<String>,
    /// The same, as logged (without credentials).
    shown: Vec<String>,
    current: usize,
    /// Masters that did not answer in a row since the last answer or the
    /// last backoff.
    unanswered: usize,
}

impl Masters {
    fn new<'a>(urls: impl Iterator<Item = &'a str>) -> Self {
        let urls: Vec<String> = urls.map(str::to_owned).collect();
        let shown = urls
            .iter()
            .map(|u| url::Url::parse(u).map_or_else(|_| u.clone(), |p| redact(&p)))
            .collect();
        Self {
            urls,
            shown,
            current: 0,
            unanswered: 0,
        }
    }

    /// The base URL in use.
    fn url(&self) -> &str {
        &self.urls[self.current]
    }

    /// The base URL in use, as logged.
    fn shown(&self) -> &str {
        &self.shown[self.current]
    }

    /// How many masters there are.
    fn len(&self) -> usize {
        self.urls.len()
    }

    /// The master in use did not answer: moves to the next one (round
    /// robin) and returns true, to be tried at once; or, when every master
    /// of the list failed to answer in a row, stays and returns false (back
    /// off; the next round starts with the master in use).
    fn unanswered(&mut self) -> bool {
        self.unanswered += 1;
        if self.unanswered >= self.urls.len() {
            self.unanswered = 0;
            return false;
        }
        self.current = (self.current + 1) % self.urls.len();
        true
    }

    /// The master in use answered (whatever it said).
    fn answered(&mut self) {
        self.unanswered = 0;
    }
}

/// `url` without credentials and without the trailing slash of a bare host.
fn redact(url: &url::Url) -> String {
    dadd_spec::redact_url(url).trim_end_matches('/').to_owned()
}

struct Client {
    agent: Agent,
    masters: Masters,
    target: MasterTarget,
}

impl Client {
    fn url(&self, tail: &str) -> String {
        format!(
            "{}/api/procs/{}/{tail}",
            self.masters.url(),
            self.target.process_id
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
            // No HTTP answer at all: this master does not answer.
            .map_err(|e| CallError::Unanswered(e.to_string()))
    }

    fn put_state(&self, report: &StateReport) -> Result<(), CallError> {
        let body = serde_json::to_vec(report).map_err(|e| CallError::Refused(e.to_string()))?;
        let mut resp = self.put(&self.url("state"), "application/json", &body)?;
        classify(&mut resp).map(|_| ())
    }

    fn put_log(&self, offset: u64, chunk: &[u8]) -> Result<u64, CallError> {
        let url = format!("{}?offset={offset}", self.url("logfile"));
        let mut resp = self.put(&url, "application/octet-stream", chunk)?;
        let body = classify(&mut resp)?;
        serde_json::from_str::<LogAppended>(&body)
            .map(|a| a.offset)
            .map_err(|e| CallError::Retry(format!("unreadable answer to a log chunk ({e})")))
    }
}

/// Success with the body, or the error.
fn classify(resp: &mut ureq::http::Response<ureq::Body>) -> Result<String, CallError> {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    verdict(status, body)
}

/// What an answer with `status` and `body` means.
fn verdict(status: u16, body: String) -> Result<String, CallError> {
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
            return Err(CallError::Gap(expected));
        }
    }
    match status {
        // A proxy that cannot reach its master, or a master without its
        // store: another master of the list may serve.
        502..=504 => Err(CallError::Unanswered(text)),
        500.. | 429 => Err(CallError::Retry(text)),
        _ => Err(CallError::Refused(text)),
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
    fn new(target: MasterTarget, agent: Agent, log_path: PathBuf, deadline: Duration) -> Self {
        Self {
            client: Client {
                agent,
                masters: Masters::new(target.urls()),
                target,
            },
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
        }
    }

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
                    self.client.masters.answered();
                    if let Some(since) = self.failing_since.take() {
                        let after = since.elapsed().as_secs_f64();
                        if self.client.masters.len() > 1 {
                            diag(format!(
                                "the master at {} answers (after {after:.1}s)",
                                self.client.masters.shown()
                            ));
                        } else {
                            diag(format!("the master answers again (after {after:.1}s)"));
                        }
                    }
                    self.backoff = FIRST_BACKOFF;
                }
                Err(trouble) => {
                    self.failing_since.get_or_insert_with(Instant::now);
                    let masters = &mut self.client.masters;
                    let previous = masters.shown().to_owned();
                    if !trouble.unanswered {
                        masters.answered();
                    } else if masters.unanswered() {
                        diag(format!(
                            "reporting to {} now: {previous} does not answer ({})",
                            masters.shown(),
                            trouble.reason
                        ));
                        continue;
                    }
                    let delay = jitter(self.backoff);
                    let seconds = delay.as_secs_f64();
                    let reason = trouble.reason;
                    match masters.len() {
                        1 => diag(format!(
                            "cannot reach the master ({reason}); retrying in {seconds:.1}s"
                        )),
                        n if trouble.unanswered => diag(format!(
                            "cannot reach the master: none of the {n} masters answers (the last, {previous}: {reason}); retrying in {seconds:.1}s"
                        )),
                        _ => diag(format!(
                            "cannot reach the master at {previous} ({reason}); retrying in {seconds:.1}s"
                        )),
                    }
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
    fn step(&mut self) -> Result<(), Trouble> {
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

    fn send_states(&mut self) -> Result<(), Trouble> {
        while let Some(report) = self.queue.front() {
            match self.client.put_state(report) {
                Ok(()) => {}
                Err(e @ (CallError::Retry(_) | CallError::Unanswered(_))) => return Err(e.into()),
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

    fn ship_log(&mut self) -> Result<(), Trouble> {
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
            .map_err(|e| Trouble::other(format!("cannot read {}: {e}", self.log_path.display())))?;
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
                        return Err(Trouble::other(
                            "the master keeps naming other log offsets".into(),
                        ));
                    }
                }
                Err(e @ (CallError::Retry(_) | CallError::Unanswered(_))) => return Err(e.into()),
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
        CallError::Unanswered(t) | CallError::Retry(t) | CallError::Refused(t) => t.clone(),
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
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

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

    fn masters(n: usize) -> Masters {
        let urls: Vec<String> = (1..=n).map(|i| format!("http://m{i}")).collect();
        Masters::new(urls.iter().map(String::as_str))
    }

    #[test]
    fn a_master_that_does_not_answer_hands_over_to_the_next_round_robin() {
        let mut m = masters(3);
        assert_eq!(m.url(), "http://m1");
        assert!(m.unanswered(), "m2 is tried at once");
        assert_eq!(m.url(), "http://m2");
        assert!(m.unanswered(), "m3 is tried at once");
        assert_eq!(m.url(), "http://m3");
        assert!(!m.unanswered(), "none answered: back off");
        assert_eq!(m.url(), "http://m3", "the next round starts where it is");
        assert!(m.unanswered());
        assert_eq!(m.url(), "http://m1", "round robin wraps");
        m.answered();
        assert_eq!(m.url(), "http://m1", "a master that answers is kept");
        assert!(m.unanswered());
        assert!(m.unanswered());
        assert!(!m.unanswered(), "a new count after an answer");
    }

    #[test]
    fn a_single_master_backs_off_at_once() {
        let mut m = masters(1);
        assert!(!m.unanswered());
        assert!(!m.unanswered());
        assert_eq!(m.url(), "http://m1");
    }

    #[test]
    fn masters_are_logged_without_credentials() {
        let m = Masters::new(["https://u:secret@m1:8443/", "http://m2/base"].into_iter());
        assert_eq!(m.shown, ["https://m1:8443", "http://m2/base"]);
        assert_eq!(m.url(), "https://u:secret@m1:8443/", "called as given");
    }

    #[test]
    fn only_502_503_504_among_answers_mean_another_master() {
        let err = |status: u16, body: &str| verdict(status, body.to_owned()).expect_err("error");
        for status in [502, 503, 504] {
            assert!(
                matches!(
                    err(status, "{\"error\": \"no store\"}"),
                    CallError::Unanswered(_)
                ),
                "{status}"
            );
        }
        for status in [500, 501, 507, 429] {
            assert!(matches!(err(status, ""), CallError::Retry(_)), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 413] {
            assert!(
                matches!(err(status, "{}"), CallError::Refused(_)),
                "{status}"
            );
        }
        assert_eq!(
            err(409, r#"{"error": "gap", "expected_offset": 12}"#),
            CallError::Gap(12)
        );
        assert_eq!(
            err(503, r#"{"error": "the store is unavailable"}"#),
            CallError::Unanswered("HTTP 503: the store is unavailable".into())
        );
        assert_eq!(verdict(200, "{}".into()), Ok("{}".into()));
    }

    /// A loopback HTTP stub answering every request with `status` and
    /// `body`, recording each request line; stopped on drop.
    struct Stub {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<String>>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Stub {
        fn start(status: u16, body: &'static str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
            let thread = std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let mut reader = BufReader::new(&conn);
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body_in = vec![0; len];
                    let _ = reader.read_exact(&mut body_in);
                    s.lock().expect("lock").push(line.trim().to_owned());
                    let _ = write!(
                        &conn,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            Self {
                addr,
                seen,
                stop,
                thread: Some(thread),
            }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().expect("lock").clone()
        }
    }

    impl Drop for Stub {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// A loopback URL nothing listens on.
    fn closed_url() -> String {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        format!("http://{addr}")
    }

    /// Runs a shipper for process 5 on `urls` to the end: one log line,
    /// `running`, then `success`.
    fn deliver(urls: &[String], deadline: Duration) -> Delivery {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("output.log");
        std::fs::write(&log, b"hello\n").expect("write");
        let target = MasterTarget {
            url: urls[0].clone(),
            fallback_urls: urls[1..].to_vec(),
            process_id: 5,
            token: "t".into(),
        };
        let agent = crate::http::master_agent(None).expect("agent");
        let shipper = Shipper::new(target, agent, log, deadline);
        let (tx, rx) = mpsc::channel();
        let report = |state| StateReport {
            state,
            pid: None,
            exit_code: None,
            signal: None,
            reason: None,
        };
        tx.send(Msg::State(report(dadd_spec::ProcState::Running)))
            .expect("send");
        tx.send(Msg::Finish(report(dadd_spec::ProcState::Success)))
            .expect("send");
        shipper.run(&rx)
    }

    #[test]
    fn reports_go_to_the_first_master_that_answers() {
        let down = Stub::start(503, r#"{"error": "the store is unavailable"}"#);
        let up = Stub::start(200, r#"{"id": 5, "offset": 6}"#);
        let urls = [closed_url(), down.url(), up.url()];
        assert_eq!(deliver(&urls, Duration::from_secs(30)), Delivery::Delivered);
        assert_eq!(
            up.seen(),
            [
                "PUT /api/procs/5/logfile?offset=0 HTTP/1.1",
                "PUT /api/procs/5/state HTTP/1.1",
                "PUT /api/procs/5/state HTTP/1.1",
            ],
            "the whole log, then both states, once each"
        );
        assert_eq!(
            down.seen(),
            ["PUT /api/procs/5/logfile?offset=0 HTTP/1.1"],
            "asked once, then left"
        );
    }

    #[test]
    fn a_refusal_is_an_answer_and_no_other_master_is_asked() {
        let refusing = Stub::start(401, r#"{"error": "bad or missing process token"}"#);
        let other = Stub::start(200, r#"{"id": 5, "offset": 6}"#);
        let urls = [refusing.url(), other.url()];
        assert_eq!(
            deliver(&urls, Duration::from_secs(30)),
            Delivery::Undelivered
        );
        assert!(other.seen().is_empty(), "{:?}", other.seen());
        assert_eq!(refusing.seen().len(), 3, "{:?}", refusing.seen());
    }

    #[test]
    fn the_report_deadline_bounds_an_outage_of_every_master() {
        let urls = [closed_url(), closed_url(), closed_url()];
        let started = Instant::now();
        assert_eq!(
            deliver(&urls, Duration::from_millis(1500)),
            Delivery::Undelivered
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "{took:?}"
        );
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
