//! The dispatcher: places `queued` processes on live workers.
//!
//! Woken by a `Notify` on submission, on a heartbeat with room and when a
//! process ends, plus a slow safety tick. Each round claims a batch in one
//! store transaction (oldest first, each to the live host with the fewest
//! unfinished processes, never past `max_procs`), marking them `init` with a
//! fresh per-process token, and only then calls the workers, many at once.
//! A worker that cannot be reached or refuses puts its process back in the
//! queue and is skipped for a short backoff, so the next host is tried.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dadd_spec::api::RunEnvelope;
use tokio::sync::{watch, Semaphore};

use crate::app::Shared;
use crate::auth::{digest_hex, mint_token};
use crate::config::secs;
use crate::store::{now_ms, Claim, HostRow};

type Backoff = Rc<RefCell<HashMap<i64, Instant>>>;

/// Runs until `stop`, then waits for the calls in flight.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let cfg = &shared.cfg.dispatch;
    let timeout = secs(cfg.worker_timeout_secs).max(Duration::from_millis(100));
    let client = Rc::new(crate::workers::client(
        &shared.client_tls,
        timeout,
        cfg.concurrency.max(1) * 2,
    ));
    let sem = Arc::new(Semaphore::new(cfg.concurrency));
    let backoff: Backoff = Rc::default();
    let tick = secs(cfg.tick_secs).max(Duration::from_millis(10));
    loop {
        let wait = tokio::select! {
            w = round(&shared, &client, &sem, &backoff) => w.min(tick),
            _ = stop.changed() => break,
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    // Let the calls in flight finish (or time out) so no claim is left half-done.
    let _ = sem.acquire_many(cfg.concurrency as u32).await;
}

/// Places as much as possible; returns how long to sleep if not woken.
async fn round(
    shared: &Arc<Shared>,
    client: &Rc<awc::Client>,
    sem: &Arc<Semaphore>,
    backoff: &Backoff,
) -> Duration {
    let idle = Duration::from_secs(3600);
    loop {
        // Wait for a free call slot, then take as many as are free.
        let Ok(first) = Arc::clone(sem).acquire_owned().await else {
            return idle;
        };
        let mut permits = vec![first];
        let batch = shared.cfg.dispatch.batch;
        while permits.len() < batch {
            match Arc::clone(sem).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let hosts = match shared.store.live_hosts(now - shared.ttl_ms()).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher cannot read hosts");
                return Duration::from_secs(1);
            }
        };
        let instant = Instant::now();
        let mut next_backoff: Option<Duration> = None;
        let usable: Vec<HostRow> = {
            let mut b = backoff.borrow_mut();
            b.retain(|_, until| *until > instant);
            hosts
                .into_iter()
                .filter(|h| match b.get(&h.id) {
                    Some(until) => {
                        let left = until.saturating_duration_since(instant);
                        next_backoff = Some(next_backoff.map_or(left, |n| n.min(left)));
                        false
                    }
                    None => h.busy < h.max_procs,
                })
                .collect()
        };
        let free: i64 = usable.iter().map(|h| h.max_procs - h.busy).sum();
        let want = (free.max(0) as usize).min(permits.len());
        let retry = next_backoff.unwrap_or(idle);
        if want == 0 {
            return retry;
        }
        let queued = match shared.store.queued(want as i64).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher cannot read the queue");
                return Duration::from_secs(1);
            }
        };
        if queued.is_empty() {
            return retry;
        }
        let exhausted = queued.len() < want;
        // Fewest unfinished first; ties go to the oldest host.
        let mut heap: BinaryHeap<Reverse<(i64, i64, usize)>> = usable
            .iter()
            .enumerate()
            .map(|(i, h)| Reverse((h.busy, h.id, i)))
            .collect();
        let mut plans = Vec::with_capacity(queued.len());
        for q in queued {
            let Some(Reverse((busy, hid, i))) = heap.pop() else {
                break;
            };
            let host = &usable[i];
            let token = mint_token();
            plans.push((q, host.clone(), token));
            if busy + 1 < host.max_procs {
                heap.push(Reverse((busy + 1, hid, i)));
            }
        }
        let claims: Vec<Claim> = plans
            .iter()
            .map(|(q, h, t)| Claim {
                proc_id: q.id,
                host_id: h.id,
                host: h.address(),
                token_hash: digest_hex(t),
            })
            .collect();
        let claimed = match shared.store.claim(&claims, now_ms()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher cannot claim processes");
                return Duration::from_secs(1);
            }
        };
        for (q, host, token) in plans {
            if !claimed.contains(&q.id) {
                continue;
            }
            let Some(permit) = permits.pop() else { break };
            let shared = Arc::clone(shared);
            let client = Rc::clone(client);
            let backoff = Rc::clone(backoff);
            actix_rt::spawn(async move {
                place(&shared, &client, &backoff, q, host, token).await;
                drop(permit);
            });
        }
        drop(permits);
        if exhausted {
            return retry;
        }
    }
}

/// Calls the worker for one claimed process; undoes the claim on failure.
async fn place(
    shared: &Shared,
    client: &awc::Client,
    backoff: &Backoff,
    q: crate::store::QueuedProc,
    host: HostRow,
    token: String,
) {
    let spec = serde_json::from_str(&q.spec).unwrap_or(serde_json::Value::Null);
    let envelope = RunEnvelope {
        fallback_urls: Vec::new(),
        process_id: q.id,
        token,
        master_url: shared.public_url.clone(),
        spec,
    };
    let secret = shared.cfg.auth.cluster_secret.as_deref();
    match crate::workers::run(client, &host.url(), secret, &envelope).await {
        Ok(_) => {
            let latency = (now_ms() - q.created_at).max(0) as f64 / 1000.0;
            shared.metrics.observe_dispatch(latency);
            tracing::debug!(proc = q.id, host = %host.address(), "placed");
        }
        Err(e) => {
            shared
                .metrics
                .dispatch_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(proc = q.id, host = %host.address(), error = %e, "placement failed; the process goes back to the queue");
            let backoff_for = secs(shared.cfg.dispatch.host_backoff_secs);
            backoff
                .borrow_mut()
                .insert(host.id, Instant::now() + backoff_for);
            if let Err(e) = shared.store.unclaim(q.id, host.id).await {
                tracing::error!(proc = q.id, error = %e, "cannot put the process back in the queue");
            }
            shared.wake.notify_one();
        }
    }
}
