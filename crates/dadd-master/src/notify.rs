//! Notifications when a process fails or is lost (and killed, when asked):
//! a webhook POST and an email over SMTP, delivered from a durable outbox.
//!
//! A state change that calls for a notice writes a row in the `notices`
//! table in the same transaction (`Store::transition`), so the notice exists
//! exactly when the change does, whichever master made it. Every master runs
//! [`run`]: it claims due notices by leasing them (on Postgres with
//! `SKIP LOCKED`, so two masters never claim the same row), builds each
//! notice from the store (so it carries the log's tail) and delivers it
//! concurrently: one attempt per channel not yet delivered. All delivered:
//! the notice is done. A failure keeps what got through, counts an attempt
//! and makes the notice due again after a backoff (`notify.webhook_backoff_secs`,
//! doubling, at most 5 minutes); after `notify.webhook_attempts` attempts it
//! is given up. Retries live in the store, so they survive a restart and are
//! taken over by another master.
//!
//! The loop runs when [`Notifier::wake`] is called (a change on this master,
//! or the Postgres `dadd_notice` channel for another master's), when the
//! earliest retry or expired lease is due, and every `notify.poll_secs`.
//!
//! Delivery is exactly once per state change and channel, with one window of
//! at-least-once: a master that dies (or stalls past its lease) after a
//! channel accepted the notice but before the outcome was recorded leaves
//! the row leased; when the lease expires another master (or this one,
//! restarted) delivers it again. The lease covers one attempt of each
//! channel (the webhook timeout, the SMTP timeout and a margin); leases
//! compare the masters' wall clocks, so keep them in sync (NTP).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dadd_spec::ProcState;
use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};

use crate::app::Shared;
use crate::config::{secs, NotifyConfig, SmtpSecurity};
use crate::outbox::{ClaimedNotice, NoticeOutcome};
use crate::store::now_ms;

/// Lines of log tail a notice carries.
pub const TAIL_LINES: usize = 50;

/// `sent` bit: the webhook accepted the notice.
const WEBHOOK: i64 = 1;
/// `sent` bit: the SMTP server accepted the email.
const EMAIL: i64 = 2;
/// Notices delivered at once by one master (and claimed at most per round).
const IN_FLIGHT: usize = 16;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Time an SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to build a notice from the store, within an attempt.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10);
/// Lease beyond an attempt's budget, to record its outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(20);
/// The shortest wait of the loop (a lease ending right now).
const MIN_WAIT: Duration = Duration::from_millis(5);

/// Wakes the delivery task; a no-op when nothing is configured.
#[derive(Debug, Default)]
pub struct Notifier {
    enabled: bool,
    wake: Notify,
}

impl Notifier {
    /// A notifier; `enabled` when a webhook or an SMTP server is configured.
    pub fn new(enabled: bool) -> Notifier {
        Notifier {
            enabled,
            wake: Notify::new(),
        }
    }

    /// Whether notifications are configured (state changes then write notices).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Wakes the delivery task: a notice was written to the outbox, or a
    /// delivery ended. A wake-up with nobody waiting is kept for the next wait.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What a webhook receives.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// Process id.
    pub id: i64,
    /// The state entered.
    pub state: ProcState,
    /// Exit code, when it exited.
    pub exit_code: Option<i64>,
    /// Why.
    pub reason: Option<String>,
    /// `host:port` of its worker.
    pub host: Option<String>,
    /// The command.
    pub cmd: Vec<String>,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
    /// Where to look at it.
    pub url: String,
}

/// Claims and delivers due notices until `stop`, then waits for the
/// deliveries in flight to record their outcome.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let poll = secs(shared.cfg.notify.poll_secs).max(Duration::from_millis(10));
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let wait = round(&shared, &slots, poll).await;
        tokio::select! {
            _ = shared.notifier.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    let in_flight = IN_FLIGHT - slots.available_permits();
    if in_flight > 0 {
        tracing::info!(in_flight, "waiting for the notifications in flight");
    }
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
}

/// Claims what is due (as many as there are free slots), starts delivering
/// it, and says how long to wait for the next round.
async fn round(shared: &Arc<Shared>, slots: &Arc<Semaphore>, poll: Duration) -> Duration {
    let free = slots.available_permits();
    if free == 0 {
        return poll; // a delivery that ends wakes the loop
    }
    let now = now_ms();
    let until = now + millis(lease(&shared.cfg.notify));
    let claimed = match shared.store.claim_notices(now, until, free as i64).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim notifications; trying again");
            return poll;
        }
    };
    let full = claimed.len() >= free;
    for n in claimed {
        // Never fails: the semaphore is never closed, and no more were
        // claimed than there are free slots.
        let Ok(permit) = Arc::clone(slots).acquire_owned().await else {
            break;
        };
        let shared = Arc::clone(shared);
        actix_rt::spawn(async move {
            attempt(&shared, n).await;
            drop(permit);
            shared.notifier.wake();
        });
    }
    if full {
        return poll;
    }
    match shared.store.next_notice_at().await {
        Ok(Some(at)) => {
            let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
            wait.clamp(MIN_WAIT, poll)
        }
        Ok(None) => poll,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read when the next notification is due");
            poll
        }
    }
}

/// The channels configured, as `sent` bits.
fn channels(cfg: &NotifyConfig) -> i64 {
    let mut c = 0;
    if cfg.webhook_url.is_some() {
        c |= WEBHOOK;
    }
    if cfg.smtp.server.is_some() && !cfg.smtp.to.is_empty() {
        c |= EMAIL;
    }
    c
}

fn webhook_timeout(cfg: &NotifyConfig) -> Duration {
    secs(cfg.webhook_timeout_secs).max(Duration::from_millis(100))
}

/// The most one attempt takes: building the notice, then each channel once.
fn attempt_budget(cfg: &NotifyConfig) -> Duration {
    BUILD_TIMEOUT + webhook_timeout(cfg) + SMTP_TIMEOUT
}

/// How long a claim holds a notice.
fn lease(cfg: &NotifyConfig) -> Duration {
    attempt_budget(cfg) + LEASE_MARGIN
}

/// The wait after the `failures`-th failed attempt: `base`, doubled after
/// each further failure, at most [`MAX_BACKOFF`].
fn backoff(base: Duration, failures: i64) -> Duration {
    let doublings = (failures.max(1) - 1).min(32) as i32;
    let s = base.as_secs_f64() * 2f64.powi(doublings);
    Duration::from_secs_f64(s.min(MAX_BACKOFF.as_secs_f64()))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn add(counter: &AtomicU64, bits: i64) {
    let n = bits.count_ones();
    if n > 0 {
        counter.fetch_add(u64::from(n), Ordering::Relaxed);
    }
}

/// One attempt at a claimed notice, and its outcome recorded.
async fn attempt(shared: &Shared, n: ClaimedNotice) {
    let cfg = &shared.cfg.notify;
    let number = n.attempts + 1;
    let pending = channels(cfg) & !n.sent;
    let mut delivered = 0;
    let mut errors = Vec::new();
    if pending != 0 {
        let budget = attempt_budget(cfg);
        let work = deliver(shared, &n, pending, &mut delivered, &mut errors);
        if tokio::time::timeout(budget, work).await.is_err() {
            tracing::warn!(
                proc = n.proc_id,
                attempt = number,
                "notification attempt timed out"
            );
            errors.push(format!(
                "the attempt took longer than {}s",
                budget.as_secs()
            ));
        }
    }
    let failed = !errors.is_empty();
    let give_up = failed && number >= i64::from(cfg.webhook_attempts.max(1));
    let now = now_ms();
    let wait = backoff(secs(cfg.webhook_backoff_secs), number);
    let outcome = NoticeOutcome {
        delivered,
        failed,
        due_at: if failed && !give_up {
            now + millis(wait)
        } else {
            now
        },
        done_at: (!failed || give_up).then_some(now),
        error: failed.then(|| errors.join("; ")),
    };
    let recorded = shared
        .store
        .finish_notice(n.id, n.lease_until, &outcome)
        .await;
    // Counted after the outcome is recorded (delivered is delivered,
    // whatever the store answered).
    add(&shared.metrics.notifications_sent, delivered);
    match recorded {
        Ok(true) if give_up => {
            let lost = pending & !delivered;
            add(&shared.metrics.notifications_failed, lost);
            if lost & WEBHOOK != 0 {
                tracing::error!(
                    proc = n.proc_id,
                    attempts = number,
                    "giving up on the webhook notification"
                );
            }
            if lost & EMAIL != 0 {
                tracing::error!(
                    proc = n.proc_id,
                    attempts = number,
                    "giving up on the email notification"
                );
            }
        }
        Ok(true) if failed => {
            tracing::info!(proc = n.proc_id, attempt = number, retry_in_ms = millis(wait), "notification to be retried");
        }
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            proc = n.proc_id,
            notice = n.id,
            "the notification's lease ended before its outcome was recorded; another master may deliver it again"
        ),
        Err(e) => tracing::warn!(
            proc = n.proc_id,
            notice = n.id,
            error = %e,
            "cannot record the notification's outcome; it is attempted again when its lease ends"
        ),
    }
}

/// Builds the notice and tries each pending channel once, noting what got
/// through in `delivered` and what did not in `errors` (kept if the attempt
/// is cut short).
async fn deliver(
    shared: &Shared,
    n: &ClaimedNotice,
    pending: i64,
    delivered: &mut i64,
    errors: &mut Vec<String>,
) {
    let attempt = n.attempts + 1;
    let notice = match build(shared, n).await {
        Ok(notice) => notice,
        Err(e) => {
            tracing::warn!(proc = n.proc_id, attempt, error = %e, "cannot build the notification");
            errors.push(format!("cannot build the notice: {e}"));
            return;
        }
    };
    if pending & WEBHOOK != 0 {
        if let Some(url) = &shared.cfg.notify.webhook_url {
            match webhook(shared, url, &notice, attempt).await {
                Ok(()) => *delivered |= WEBHOOK,
                Err(e) => errors.push(format!("webhook: {e}")),
            }
        }
    }
    if pending & EMAIL != 0 {
        match email(shared, &notice).await {
            Ok(()) => *delivered |= EMAIL,
            Err(e) => {
                tracing::warn!(proc = notice.id, attempt, error = %e, "email notification failed");
                errors.push(format!("email: {e}"));
            }
        }
    }
}

/// Why a notice could not be built.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the outbox holds an unknown state {0:?}")]
    State(String),
    #[error("reading the process took longer than {0}s")]
    Timeout(u64),
}

async fn build(shared: &Shared, n: &ClaimedNotice) -> Result<Notice, BuildError> {
    let state: ProcState = n
        .state
        .parse()
        .map_err(|_| BuildError::State(n.state.clone()))?;
    let id = n.proc_id;
    let read = async {
        let row = shared.store.get_proc(id).await?;
        let tail = shared.store.log_tail(id, 64 << 10).await?;
        Ok::<_, crate::store::StoreError>((row, tail))
    };
    let (row, tail) = tokio::time::timeout(BUILD_TIMEOUT, read)
        .await
        .map_err(|_| BuildError::Timeout(BUILD_TIMEOUT.as_secs()))??;
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text.lines().collect();
    let log_tail = lines[lines.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let url = format!("{}/api/procs/{id}", shared.public_url);
    Ok(match row {
        Some(r) => Notice {
            id,
            state,
            exit_code: r.exit_code,
            reason: r.reason,
            host: r.host,
            cmd: r.cmd,
            log_tail,
            url,
        },
        None => Notice {
            id,
            state,
            exit_code: None,
            reason: None,
            host: None,
            cmd: Vec::new(),
            log_tail,
            url,
        },
    })
}

/// One POST of the notice; the error says what the webhook answered.
async fn webhook(shared: &Shared, url: &str, notice: &Notice, attempt: i64) -> Result<(), String> {
    let client = crate::workers::client(&shared.client_tls, webhook_timeout(&shared.cfg.notify), 4);
    match client.post(url).send_json(notice).await {
        Ok(mut resp) if resp.status().is_success() => {
            let _ = resp.body().await;
            tracing::info!(proc = notice.id, attempt, "webhook notified");
            Ok(())
        }
        Ok(resp) => {
            tracing::warn!(proc = notice.id, attempt, status = %resp.status(), "webhook refused the notification");
            Err(format!("answered HTTP {}", resp.status()))
        }
        Err(e) => {
            tracing::warn!(proc = notice.id, attempt, error = %e, "webhook unreachable");
            Err(format!("unreachable: {e}"))
        }
    }
}

/// Why an email could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// An address or the message is malformed.
    #[error("cannot build the email: {0}")]
    Build(String),
    /// The SMTP exchange failed.
    #[error("SMTP delivery failed: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

async fn email(shared: &Shared, n: &Notice) -> Result<(), MailError> {
    use lettre::message::Mailbox;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let s = &shared.cfg.notify.smtp;
    let server = s.server.as_deref().unwrap_or("localhost");
    let mut builder = match s.security {
        SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server),
        SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(server)?,
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(server)?,
    }
    .port(s.port)
    .timeout(Some(SMTP_TIMEOUT));
    if let (Some(u), Some(p)) = (&s.username, &s.password) {
        builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
    }
    let mailer = builder.build();
    let from: Mailbox = s
        .from
        .parse()
        .map_err(|e| MailError::Build(format!("notify.smtp.from {:?}: {e}", s.from)))?;
    let mut msg = Message::builder()
        .from(from)
        .subject(format!("dadd: process {} {}", n.id, n.state));
    for to in &s.to {
        let mb: Mailbox = to
            .parse()
            .map_err(|e| MailError::Build(format!("notify.smtp.to {to:?}: {e}")))?;
        msg = msg.to(mb);
    }
    let body = format!(
        "Process {id} is {state}.\n\ncommand:   {cmd}\nhost:      {host}\nexit code: {code}\nreason:    {reason}\ndetails:   {url}\n\nlast {n} log lines:\n{tail}\n",
        id = n.id,
        state = n.state,
        cmd = n.cmd.join(" "),
        host = n.host.as_deref().unwrap_or("-"),
        code = n.exit_code.map_or("-".to_owned(), |c| c.to_string()),
        reason = n.reason.as_deref().unwrap_or("-"),
        url = n.url,
        n = n.log_tail.len(),
        tail = n.log_tail.join("\n"),
    );
    let msg = msg
        .body(body)
        .map_err(|e| MailError::Build(e.to_string()))?;
    mailer.send(msg).await?;
    tracing::info!(proc = n.id, "email notified");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_from_the_base() {
        let waits: Vec<Duration> = (1..=5).map(|f| backoff(ms(1000), f)).collect();
        assert_eq!(waits, [ms(1000), ms(2000), ms(4000), ms(8000), ms(16000)]);
        assert_eq!(backoff(ms(50), 3), ms(200));
    }

    #[test]
    fn backoff_stops_at_five_minutes() {
        assert_eq!(backoff(ms(1000), 9), ms(256_000));
        assert_eq!(backoff(ms(1000), 10), MAX_BACKOFF);
        assert_eq!(backoff(ms(1000), i64::MAX), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(900), 1), MAX_BACKOFF);
    }

    #[test]
    fn backoff_without_a_base_or_failures() {
        assert_eq!(backoff(Duration::ZERO, 4), Duration::ZERO);
        assert_eq!(
            backoff(ms(1000), 0),
            ms(1000),
            "no failure yet waits the base"
        );
    }

    #[test]
    fn the_lease_outlasts_one_attempt_of_each_channel() {
        let cfg = NotifyConfig {
            webhook_timeout_secs: 10.0,
            ..NotifyConfig::default()
        };
        assert!(lease(&cfg) >= Duration::from_secs(10) + SMTP_TIMEOUT + LEASE_MARGIN);
    }

    #[test]
    fn channels_follow_the_config() {
        let mut cfg = NotifyConfig::default();
        assert_eq!(channels(&cfg), 0);
        cfg.webhook_url = Some("http://127.0.0.1:1/hook".into());
        assert_eq!(channels(&cfg), WEBHOOK);
        cfg.smtp.server = Some("127.0.0.1".into());
        assert_eq!(channels(&cfg), WEBHOOK, "no recipients, no email");
        cfg.smtp.to = vec!["ops@example.com".into()];
        assert_eq!(channels(&cfg), WEBHOOK | EMAIL);
    }
}
