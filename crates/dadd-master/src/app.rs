//! What every handler and background task shares, and the one place where a
//! process changes state with all its consequences (history, dispatcher
//! wake-up, notification).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dadd_spec::api::{HostInfo, HostStatus, ProcSummary};
use dadd_spec::{check_transition, ProcState, Transition};
use tokio::sync::Notify;

use crate::auth::Auth;
use crate::config::{secs, Config};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::{now_ms, Change, HostRow, ProcRow, Store, StoreError};

/// State shared by the API and the background tasks.
#[derive(Debug)]
pub struct Shared {
    /// The store.
    pub store: Store,
    /// The configuration.
    pub cfg: Config,
    /// Hashed secrets.
    pub auth: Auth,
    /// Wakes the dispatcher (submit, heartbeat with room, a process ending).
    pub wake: Notify,
    /// Failure notifications.
    pub notifier: Notifier,
    /// Counters and histograms for `/metrics`.
    pub metrics: Metrics,
    /// The URL runners and workers reach the master at.
    pub public_url: String,
    /// TLS settings for calls to workers.
    pub client_tls: Arc<rustls::ClientConfig>,
    /// When this master started, ms.
    pub started_at: i64,
}

/// What came of a requested state change.
#[derive(Debug)]
pub enum Outcome {
    /// Applied; the process as it is now.
    Applied(ProcRow),
    /// Already in that state; nothing changed.
    Repeat(ProcRow),
    /// Refused by the state machine; the current state.
    Illegal(ProcState),
    /// No such process.
    NotFound,
}

impl Shared {
    /// The host TTL in milliseconds.
    pub fn ttl_ms(&self) -> i64 {
        secs(self.cfg.liveness.host_ttl_secs).as_millis() as i64
    }

    /// A dispatch claim's lease in milliseconds (at least the time a worker
    /// has to answer, so a live master's call is rarely overtaken; when it
    /// is, the worker answers both with the same runner).
    pub fn lease_ms(&self) -> i64 {
        let d = &self.cfg.dispatch;
        let lease = secs(d.lease_secs).max(secs(d.worker_timeout_secs));
        lease.as_millis().max(100) as i64
    }

    /// Moves a process to a new state if the state machine allows it,
    /// recording history and waking whoever must know.
    pub async fn change(&self, id: i64, change: Change) -> Result<Outcome, StoreError> {
        for _ in 0..16 {
            let Some(row) = self.store.get_proc(id).await? else {
                return Ok(Outcome::NotFound);
            };
            match check_transition(row.state, change.to) {
                Err(_) => return Ok(Outcome::Illegal(row.state)),
                Ok(Transition::Repeat) => return Ok(Outcome::Repeat(row)),
                Ok(Transition::Apply) => {
                    if !self.change_from(id, row.state, &change).await? {
                        continue; // it moved meanwhile: look again
                    }
                    let now = self.store.get_proc(id).await?;
                    return Ok(now.map_or(Outcome::NotFound, Outcome::Applied));
                }
            }
        }
        Err(StoreError::Corrupt(format!(
            "process {id} kept changing under concurrent reports; retry"
        )))
    }

    /// Applies a change only if the process is still in `from`, with its
    /// consequences; false when it moved meanwhile.
    pub async fn change_from(
        &self,
        id: i64,
        from: ProcState,
        change: &Change,
    ) -> Result<bool, StoreError> {
        let notice = self.notifier.enabled() && self.worth_a_notice(change.to);
        let change = &Change {
            notice,
            ..change.clone()
        };
        if !self.store.transition(id, from, change).await? {
            return Ok(false);
        }
        tracing::info!(proc = id, from = %from, to = %change.to, reason = change.reason.as_deref().unwrap_or(""), "state change");
        if change.to.is_final() {
            self.wake.notify_one();
        }
        if notice {
            self.notifier.wake();
        }
        Ok(true)
    }

    /// Whether entering `to` calls for a notification.
    fn worth_a_notice(&self, to: ProcState) -> bool {
        matches!(to, ProcState::Failed | ProcState::Lost)
            || (to == ProcState::Killed && self.cfg.notify.on_killed)
    }

    /// The change's time, now.
    pub fn now(&self) -> i64 {
        now_ms()
    }
}

/// Milliseconds to a UTC time.
pub fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A stored process as listed.
pub fn summary(r: &ProcRow) -> ProcSummary {
    ProcSummary {
        id: r.id,
        state: r.state,
        cmd: r.cmd.clone(),
        host: r.host.clone(),
        pid: r.pid.and_then(|p| i32::try_from(p).ok()),
        exit_code: r.exit_code.and_then(|p| i32::try_from(p).ok()),
        signal: r.signal.and_then(|p| i32::try_from(p).ok()),
        reason: r.reason.clone(),
        created_at: time(r.created_at),
        started_at: r.started_at.map(time),
        ended_at: r.ended_at.map(time),
    }
}

/// A stored host as answered; down when recorded so or silent past the TTL.
pub fn host_info(h: &HostRow, ttl_ms: i64, now: i64) -> HostInfo {
    let up = h.status == "up" && h.last_heartbeat >= now - ttl_ms;
    HostInfo {
        id: h.id,
        address: h.address(),
        url: h.url(),
        status: if up { HostStatus::Up } else { HostStatus::Down },
        max_procs: u32::try_from(h.max_procs).unwrap_or(0),
        running: u32::try_from(h.busy).unwrap_or(0),
        version: h.version.clone(),
        last_heartbeat: time(h.last_heartbeat),
        registered_at: time(h.registered_at),
    }
}
