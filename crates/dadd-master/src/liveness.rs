//! Host liveness and retention: background loops that turn silence into
//! `down`/`lost`, and prune old finished processes in small batches (and
//! abandoned uploads' chunks).

use std::sync::Arc;
use std::time::Duration;

use dadd_spec::ProcState;
use tokio::sync::watch;

use crate::app::Shared;
use crate::config::secs;
use crate::store::{now_ms, Change};

/// Marks hosts silent past the TTL down, and their unfinished processes lost.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = secs(shared.cfg.liveness.check_interval_secs).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        // A master that was itself down saw no heartbeats: give hosts a TTL
        // after its start before calling them down.
        if now_ms() - shared.started_at < shared.ttl_ms() {
            continue;
        }
        if let Err(e) = sweep(&shared).await {
            tracing::warn!(error = %e, "liveness check failed");
        }
    }
}

/// One pass over the hosts.
pub async fn sweep(shared: &Shared) -> Result<(), crate::store::StoreError> {
    let cutoff = now_ms() - shared.ttl_ms();
    for host_id in shared.store.stale_hosts(cutoff).await? {
        if !shared.store.mark_host_down(host_id, cutoff).await? {
            continue;
        }
        tracing::warn!(
            host = host_id,
            "host missed its heartbeats past the TTL: down"
        );
        lose_all(shared, host_id, "host down").await?;
    }
    Ok(())
}

/// Every unfinished process of a host becomes lost.
pub async fn lose_all(
    shared: &Shared,
    host_id: i64,
    reason: &str,
) -> Result<(), crate::store::StoreError> {
    for (id, _) in shared.store.unfinished_on_host(host_id).await? {
        shared
            .change(id, Change::to(ProcState::Lost, Some(reason), now_ms()))
            .await?;
    }
    Ok(())
}

/// Abandoned uploads' chunks (Postgres file store) older than this go.
const ORPHAN_BLOB_AGE_MS: i64 = 3_600_000;

/// Every `retention.interval_secs`: prunes finished processes (with their
/// notices) older than `retention.days`, when set, in small batches; and,
/// always, the chunks of uploads abandoned over an hour ago.
pub async fn retention(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = secs(shared.cfg.retention.interval_secs).max(Duration::from_millis(10));
    let batch = shared.cfg.retention.batch.max(1) as i64;
    loop {
        if let Some(days) = shared.cfg.retention.days {
            let cutoff = now_ms() - (days * 86_400_000.0) as i64;
            if !prune_processes(&shared, &mut stop, cutoff, batch, days).await {
                return;
            }
        }
        match shared
            .store
            .prune_orphan_blobs(now_ms() - ORPHAN_BLOB_AGE_MS, batch)
            .await
        {
            Ok(n) if n > 0 => {
                tracing::info!(chunks = n, "removed the chunks of abandoned uploads")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "removing abandoned uploads failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One retention pass over processes and notices; false when stopped.
async fn prune_processes(
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    cutoff: i64,
    batch: i64,
    days: f64,
) -> bool {
    let mut total = 0;
    loop {
        match shared.store.prune(cutoff, batch).await {
            Ok(n) => {
                total += n;
                if (n as i64) < batch {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention pass failed");
                break;
            }
        }
        // Small batches with a pause: the API keeps the store meanwhile.
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.changed() => return false,
        }
    }
    if total > 0 {
        tracing::info!(pruned = total, days, "pruned old finished processes");
    }
    // Delivered (or given up) notices of the same age go too.
    match shared.store.prune_notices(cutoff, batch).await {
        Ok(n) if n > 0 => tracing::debug!(pruned = n, "pruned old notices"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning old notices failed"),
    }
    true
}
