//! The dispatcher: places `queued` processes on live workers.
//!
//! Woken by a `Notify` on submission, on a heartbeat with room and when a
//! process ends (on Postgres also by the other masters, through `LISTEN`),
//! plus a slow safety tick. Each round claims a batch in one store
//! transaction (oldest first, each to the live host with the fewest
//! unfinished processes, never past `max_procs`), marking them `init` with a
//! fresh per-process token and a lease, and only then calls the workers,
//! many at once. On Postgres the round holds the cluster-wide dispatch lock,
//! so several masters never book a host twice over.
//!
//! What a failed call means decides what happens next:
//! - the worker refused (it answered an error; it answers a process it has
//!   with that process's runner), or the first call could not connect: it
//!   does not have the process, which goes back to the queue, and the host
//!   is skipped for a short backoff;
//! - no answer after the request went out (a timeout, a dropped
//!   connection): the worker may have started it, so the claim stays and its
//!   lease is cut short; the takeover below sends the envelope again to the
//!   same worker, which answers with the runner it started, or starts it.
//!
//! Takeover: a process still `init` past its claim's lease (its master died
//! between claiming and hearing from the worker, or got no answer) is sent
//! again to the same worker by whichever master gets to it first. A worker
//! that cannot be connected to then keeps it (an earlier call may have
//! reached it before it went down): asked again after the next lease, or
//! `lost` with its host when the host's TTL runs out.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use dadd_spec::api::RunEnvelope;
use dadd_spec::ProcState;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::app::Shared;
use crate::auth::{digest_hex, mint_token};
use crate::config::secs;
use crate::store::{now_ms, Change, Claim, ExpiredClaim, HostRow, QueuedProc, StoreError};
use crate::workers::CallError;

type Backoff = Rc<RefCell<HashMap<i64, Instant>>>;

/// Expired claims looked at per takeover pass.
const TAKEOVER_BATCH: i64 = 64;

/// What the dispatcher keeps between rounds.
struct Dispatcher {
    shared: Arc<Shared>,
    client: Rc<awc::Client>,
    sem: Arc<Semaphore>,
    backoff: Backoff,
}

/// Runs until `stop`, then waits for the calls in flight.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let cfg = &shared.cfg.dispatch;
    let timeout = secs(cfg.worker_timeout_secs).max(Duration::from_millis(100));
    let concurrency = cfg.concurrency;
    let d = Dispatcher {
        client: Rc::new(crate::workers::client(
            &shared.client_tls,
            timeout,
            concurrency.max(1) * 2,
        )),
        sem: Arc::new(Semaphore::new(concurrency)),
        backoff: Rc::default(),
        shared,
    };
    let tick = secs(d.shared.cfg.dispatch.tick_secs).max(Duration::from_millis(10));
    // Expired claims are looked for this often (a cheap indexed query).
    let takeover_every = Duration::from_millis((d.shared.lease_ms() / 4).clamp(100, 1000) as u64);
    let mut next_takeover = Instant::now();
    loop {
        let wait = tokio::select! {
            w = d.round() => w.min(tick),
            _ = stop.changed() => break,
        };
        if Instant::now() >= next_takeover {
            tokio::select! {
                _ = d.take_over() => {}
                _ = stop.changed() => break,
            }
            next_takeover = Instant::now() + takeover_every;
        }
        let wait = wait.min(next_takeover.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = d.shared.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    // Let the calls in flight finish (or time out) so no claim is left half-done.
    let _ = d.sem.acquire_many(concurrency as u32).await;
}

/// Fewest unfinished first, ties to the oldest host: which host each
/// process goes to, never past a host's `max_procs`.
fn plan(usable: &[HostRow], queued: Vec<QueuedProc>) -> Vec<(QueuedProc, HostRow)> {
    let mut heap: BinaryHeap<Reverse<(i64, i64, usize)>> = usable
        .iter()
        .enumerate()
        .filter(|(_, h)| h.busy < h.max_procs)
        .map(|(i, h)| Reverse((h.busy, h.id, i)))
        .collect();
    let mut plans = Vec::with_capacity(queued.len());
    for q in queued {
        let Some(Reverse((busy, hid, i))) = heap.pop() else {
            break;
        };
        let host = &usable[i];
        plans.push((q, host.clone()));
        if busy + 1 < host.max_procs {
            heap.push(Reverse((busy + 1, hid, i)));
        }
    }
    plans
}

/// What one claim pass came to.
struct Claimed {
    /// Claimed processes with their host and plain token.
    placed: Vec<(QueuedProc, HostRow, String)>,
    /// The queue held fewer than wanted: nothing more to do for now.
    exhausted: bool,
}

impl Dispatcher {
    /// Places as much as possible; returns how long to sleep if not woken.
    async fn round(&self) -> Duration {
        let idle = Duration::from_secs(3600);
        loop {
            // Wait for a free call slot, then take as many as are free.
            let Ok(first) = Arc::clone(&self.sem).acquire_owned().await else {
                return idle;
            };
            let mut permits = vec![first];
            let batch = self.shared.cfg.dispatch.batch;
            while permits.len() < batch {
                match Arc::clone(&self.sem).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let (excluded, retry) = self.backed_off();
            let claimed = match self.claim(permits.len(), &excluded).await {
                Ok(Some(c)) => c,
                Ok(None) => return retry.unwrap_or(idle),
                Err(e) => {
                    tracing::warn!(error = %e, "dispatcher cannot claim processes");
                    return Duration::from_secs(1);
                }
            };
            let exhausted = claimed.exhausted;
            for (q, host, token) in claimed.placed {
                let Some(permit) = permits.pop() else { break };
                self.spawn_place(q, host, token, permit);
            }
            drop(permits);
            if exhausted {
                return retry.unwrap_or(idle);
            }
        }
    }

    /// Hosts in backoff, and the time until the first of them is free.
    fn backed_off(&self) -> (Vec<i64>, Option<Duration>) {
        let now = Instant::now();
        let mut b = self.backoff.borrow_mut();
        b.retain(|_, until| *until > now);
        let first = b
            .values()
            .map(|until| until.saturating_duration_since(now))
            .min();
        (b.keys().copied().collect(), first)
    }

    /// One claim transaction: hosts with room, the oldest queued processes,
    /// the plan, the claims. None when there is no room or no work.
    async fn claim(&self, slots: usize, excluded: &[i64]) -> Result<Option<Claimed>, StoreError> {
        let shared = &self.shared;
        let now = now_ms();
        let mut round = shared.store.dispatch_round().await?;
        let usable: Vec<HostRow> = round
            .live_hosts(now - shared.ttl_ms())
            .await?
            .into_iter()
            .filter(|h| h.busy < h.max_procs && !excluded.contains(&h.id))
            .collect();
        let free: i64 = usable.iter().map(|h| h.max_procs - h.busy).sum();
        let want = (free.max(0) as usize).min(slots);
        if want == 0 {
            round.commit().await?;
            return Ok(None);
        }
        let queued = round.queued(want as i64).await?;
        if queued.is_empty() {
            round.commit().await?;
            return Ok(None);
        }
        let exhausted = queued.len() < want;
        let lease_until = now + shared.lease_ms();
        let plans: Vec<(QueuedProc, HostRow, String)> = plan(&usable, queued)
            .into_iter()
            .map(|(q, h)| (q, h, mint_token()))
            .collect();
        let claims: Vec<Claim> = plans
            .iter()
            .map(|(q, h, t)| Claim {
                proc_id: q.id,
                host_id: h.id,
                host: h.address(),
                token_hash: digest_hex(t),
                lease_until,
            })
            .collect();
        let ids = round.claim(&claims, now_ms()).await?;
        round.commit().await?;
        let placed = plans
            .into_iter()
            .filter(|(q, _, _)| ids.contains(&q.id))
            .collect();
        Ok(Some(Claimed { placed, exhausted }))
    }

    fn spawn_place(
        &self,
        q: QueuedProc,
        host: HostRow,
        token: String,
        permit: OwnedSemaphorePermit,
    ) {
        let shared = Arc::clone(&self.shared);
        let client = Rc::clone(&self.client);
        let backoff = Rc::clone(&self.backoff);
        actix_rt::spawn(async move {
            call_worker(&shared, &client, &backoff, q, host, token, Attempt::First).await;
            drop(permit);
        });
    }

    /// Sends again the envelopes of claims whose lease ran out.
    async fn take_over(&self) {
        let shared = &self.shared;
        let now = now_ms();
        let expired = match shared.store.expired_claims(now, TAKEOVER_BATCH).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher cannot read expired claims");
                return;
            }
        };
        for claim in expired {
            if let Err(e) = self.take_over_one(claim, now).await {
                tracing::warn!(error = %e, "cannot take an expired claim over");
            }
        }
    }

    async fn take_over_one(&self, claim: ExpiredClaim, now: i64) -> Result<(), StoreError> {
        let shared = &self.shared;
        let id = claim.proc.id;
        let token = mint_token();
        let hash = digest_hex(&token);
        if !shared
            .store
            .renew_claim(id, now, now + shared.lease_ms(), &hash)
            .await?
        {
            return Ok(()); // another master took it, or its runner reported
        }
        let host = match claim.host_id {
            Some(h) => shared.store.get_host(&h.to_string()).await?,
            None => None,
        };
        let Some(host) = host else {
            let c = Change::to(
                ProcState::Lost,
                Some("its placement was never confirmed and its host is no longer known"),
                now_ms(),
            );
            shared.change(id, c).await?;
            return Ok(());
        };
        tracing::info!(proc = id, host = %host.address(), "claim expired before the worker confirmed it: sending it to the same worker again");
        let Ok(permit) = Arc::clone(&self.sem).acquire_owned().await else {
            return Ok(());
        };
        let shared = Arc::clone(shared);
        let client = Rc::clone(&self.client);
        let backoff = Rc::clone(&self.backoff);
        actix_rt::spawn(async move {
            let again = Attempt::Again { hash };
            call_worker(&shared, &client, &backoff, claim.proc, host, token, again).await;
            drop(permit);
        });
        Ok(())
    }
}

fn envelope(shared: &Shared, q: &QueuedProc, token: String) -> RunEnvelope {
    RunEnvelope {
        process_id: q.id,
        token,
        master_url: shared.public_url.clone(),
        fallback_urls: Vec::new(),
        spec: serde_json::from_str(&q.spec).unwrap_or(serde_json::Value::Null),
    }
}

/// Whether a failed call proves the worker does not have the process.
fn not_started(e: &CallError, attempt: &Attempt) -> bool {
    match e {
        // No connection proves nothing was sent this time; only the first
        // call has no earlier one that may have got through (to a worker
        // since gone down, whose runner may be running).
        CallError::Unreachable { .. } => matches!(attempt, Attempt::First),
        // 409: it ran there already (its result is on the way or kept on
        // the worker): never start it elsewhere.
        CallError::Status { status, .. } => *status != StatusCode::CONFLICT,
        CallError::NoAnswer { .. } => false,
    }
}

fn back_off(shared: &Shared, backoff: &Backoff, host: &HostRow) {
    shared
        .metrics
        .dispatch_failures
        .fetch_add(1, Ordering::Relaxed);
    let until = Instant::now() + secs(shared.cfg.dispatch.host_backoff_secs);
    backoff.borrow_mut().insert(host.id, until);
}

/// Puts a process the worker does not have back in the queue.
async fn requeue(shared: &Shared, id: i64, host: &HostRow) {
    match shared.store.unclaim(id, host.id).await {
        Ok(_) => shared.wake.notify_one(),
        Err(e) => {
            tracing::error!(proc = id, error = %e, "cannot put the process back in the queue")
        }
    }
}

/// Which call to a worker this is.
enum Attempt {
    /// The first, right after the claim.
    First,
    /// Again after the claim's lease ran out, with a fresh token whose hash
    /// this is.
    Again { hash: String },
}

/// Calls the worker for one claimed process; what a failure means is in
/// the module doc.
async fn call_worker(
    shared: &Shared,
    client: &awc::Client,
    backoff: &Backoff,
    q: QueuedProc,
    host: HostRow,
    token: String,
    attempt: Attempt,
) {
    let id = q.id;
    let envelope = envelope(shared, &q, token);
    let secret = shared.cfg.auth.cluster_secret.as_deref();
    let answer = crate::workers::run(client, &host.url(), secret, &envelope).await;
    match (answer, attempt) {
        (Ok(_), Attempt::First) => {
            let latency = (now_ms() - q.created_at).max(0) as f64 / 1000.0;
            shared.metrics.observe_dispatch(latency);
            tracing::debug!(proc = id, host = %host.address(), "placed");
        }
        (Ok(status), Attempt::Again { hash }) => {
            // 201: started now, with the token just sent; 200: its runner
            // was there already and keeps the token it has.
            let started = status == StatusCode::CREATED;
            tracing::info!(proc = id, host = %host.address(), started, "expired claim confirmed by the worker");
            if started {
                if let Err(e) = shared.store.settle_token(id, &hash).await {
                    tracing::warn!(proc = id, error = %e, "cannot settle the process token");
                }
            }
        }
        (Err(e), ref attempt) if not_started(&e, attempt) => {
            back_off(shared, backoff, &host);
            tracing::warn!(proc = id, host = %host.address(), error = %e, "the worker does not have the process: it goes back to the queue");
            requeue(shared, id, &host).await;
        }
        (Err(e), Attempt::First) => {
            back_off(shared, backoff, &host);
            tracing::warn!(proc = id, host = %host.address(), error = %e, "no answer from the worker: it may have started the process, so it is asked again rather than placed elsewhere");
            if let Err(e) = shared.store.expire_claim(id, now_ms()).await {
                tracing::error!(proc = id, error = %e, "cannot cut the claim short; it is retried when its lease ends");
            }
        }
        (Err(e), Attempt::Again { .. }) => {
            back_off(shared, backoff, &host);
            tracing::warn!(proc = id, host = %host.address(), error = %e, "no answer from the worker: asked again when the lease ends (the host's liveness decides if it is gone)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: i64, busy: i64, max: i64) -> HostRow {
        HostRow {
            id,
            host: "127.0.0.1".into(),
            port: 6000 + id,
            scheme: "http".into(),
            max_procs: max,
            version: String::new(),
            status: "up".into(),
            last_heartbeat: 0,
            registered_at: 0,
            busy,
        }
    }

    fn queued(n: i64) -> Vec<QueuedProc> {
        (1..=n)
            .map(|id| QueuedProc {
                id,
                spec: "{}".into(),
                created_at: 0,
            })
            .collect()
    }

    #[test]
    fn plans_fill_the_least_busy_and_never_past_capacity() {
        let hosts = [host(1, 1, 2), host(2, 0, 3), host(3, 4, 4)];
        let placed: Vec<(i64, i64)> = plan(&hosts, queued(10))
            .iter()
            .map(|(q, h)| (q.id, h.id))
            .collect();
        // Room: host 1 has 1, host 2 has 3, host 3 none.
        assert_eq!(placed.len(), 4);
        assert_eq!(placed.iter().filter(|(_, h)| *h == 1).count(), 1);
        assert_eq!(placed.iter().filter(|(_, h)| *h == 2).count(), 3);
        assert_eq!(placed[0], (1, 2), "the idle host first");
    }

    #[test]
    fn only_proofs_of_absence_requeue() {
        let url = "http://w".to_owned();
        let first = Attempt::First;
        let again = Attempt::Again {
            hash: String::new(),
        };
        let refused = CallError::Unreachable {
            url: url.clone(),
            message: "refused".into(),
        };
        assert!(not_started(&refused, &first));
        assert!(
            !not_started(&refused, &again),
            "an earlier call may have reached a worker now down"
        );
        let full = CallError::Status {
            url: url.clone(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: String::new(),
        };
        assert!(not_started(&full, &first) && not_started(&full, &again));
        let ran = CallError::Status {
            url: url.clone(),
            status: StatusCode::CONFLICT,
            body: String::new(),
        };
        assert!(!not_started(&ran, &first) && !not_started(&ran, &again));
        let timeout = CallError::NoAnswer {
            url,
            message: "timeout".into(),
        };
        assert!(!not_started(&timeout, &first) && !not_started(&timeout, &again));
    }
}
