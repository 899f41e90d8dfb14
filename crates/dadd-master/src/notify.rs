//! Notifications when a process fails or is lost (and killed, when asked):
//! a webhook POST with retries and backoff, and an email over SMTP.
//!
//! Handlers only queue the process id; a background task builds the notice
//! from the store (so it carries the log's tail) and delivers it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dadd_spec::ProcState;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::app::Shared;
use crate::config::{secs, SmtpSecurity};

/// Lines of log tail a notice carries.
pub const TAIL_LINES: usize = 50;

/// The queue into the notification task.
#[derive(Debug)]
pub struct Notifier {
    tx: Option<mpsc::UnboundedSender<(i64, ProcState)>>,
}

impl Notifier {
    /// A notifier and the receiving end for [`run`]; a no-op when nothing is configured.
    pub fn new(enabled: bool) -> (Notifier, Option<mpsc::UnboundedReceiver<(i64, ProcState)>>) {
        if enabled {
            let (tx, rx) = mpsc::unbounded_channel();
            (Notifier { tx: Some(tx) }, Some(rx))
        } else {
            (Notifier { tx: None }, None)
        }
    }

    /// Whether notifications are configured.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Wakes the delivery task: a notice was written to the outbox.
    pub fn wake(&self) {}

    /// Queues a notice for a process that just entered `state`.
    pub fn send(&self, id: i64, state: ProcState) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((id, state));
        }
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

/// Delivers queued notices until `stop`.
pub async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(i64, ProcState)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = tokio::select! {
            n = rx.recv() => n,
            _ = stop.changed() => None,
        };
        let Some((id, state)) = next else { break };
        let shared = Arc::clone(&shared);
        actix_rt::spawn(async move {
            match build(&shared, id, state).await {
                Ok(notice) => deliver(&shared, &notice).await,
                Err(e) => tracing::warn!(proc = id, error = %e, "cannot build the notification"),
            }
        });
    }
}

async fn build(
    shared: &Shared,
    id: i64,
    state: ProcState,
) -> Result<Notice, crate::store::StoreError> {
    let row = shared.store.get_proc(id).await?;
    let tail = shared.store.log_tail(id, 64 << 10).await?;
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

async fn deliver(shared: &Shared, notice: &Notice) {
    let cfg = &shared.cfg.notify;
    if let Some(url) = &cfg.webhook_url {
        let ok = webhook(shared, url, notice).await;
        count(shared, ok);
    }
    if cfg.smtp.server.is_some() && !cfg.smtp.to.is_empty() {
        let ok = match email(shared, notice).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(proc = notice.id, error = %e, "email notification failed");
                false
            }
        };
        count(shared, ok);
    }
}

fn count(shared: &Shared, ok: bool) {
    let c = if ok {
        &shared.metrics.notifications_sent
    } else {
        &shared.metrics.notifications_failed
    };
    c.fetch_add(1, Ordering::Relaxed);
}

async fn webhook(shared: &Shared, url: &str, notice: &Notice) -> bool {
    let cfg = &shared.cfg.notify;
    let timeout = secs(cfg.webhook_timeout_secs).max(Duration::from_millis(100));
    let client = crate::workers::client(&shared.client_tls, timeout, 4);
    let mut wait = secs(cfg.webhook_backoff_secs);
    let attempts = cfg.webhook_attempts.max(1);
    for attempt in 1..=attempts {
        let res = client.post(url).send_json(notice).await;
        match res {
            Ok(mut resp) if resp.status().is_success() => {
                let _ = resp.body().await;
                tracing::info!(proc = notice.id, "webhook notified");
                return true;
            }
            Ok(resp) => {
                tracing::warn!(proc = notice.id, attempt, status = %resp.status(), "webhook refused the notification")
            }
            Err(e) => tracing::warn!(proc = notice.id, attempt, error = %e, "webhook unreachable"),
        }
        if attempt < attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(300));
        }
    }
    tracing::error!(
        proc = notice.id,
        attempts,
        "giving up on the webhook notification"
    );
    false
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
    .timeout(Some(Duration::from_secs(30)));
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
