//! The notification outbox's SQL (table `notices`, migration 3): claiming
//! due notices under a lease, recording how an attempt went, pruning.
//!
//! Rows are written by `Store::transition` in the same transaction as the
//! state change; delivery is in `notify`. A claim's `lease_until` also names
//! the claim: a later claim of the same row always sets a later one, so an
//! outcome is recorded only by the claim that still holds the row.

use sqlx::Row;

use crate::store::{Backend, Store, StoreError};

/// A notice claimed for one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedNotice {
    /// The notice's id.
    pub id: i64,
    /// The process it is about.
    pub proc_id: i64,
    /// The state the process entered, as stored.
    pub state: String,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Channels already delivered (bitmask).
    pub sent: i64,
    /// The claim's lease, ms; it identifies the claim.
    pub lease_until: i64,
}

/// How one attempt at a claimed notice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeOutcome {
    /// Channels delivered by this attempt (added to `sent`).
    pub delivered: i64,
    /// Whether a channel failed (counts an attempt).
    pub failed: bool,
    /// When to try again, ms (unchanged when `done_at` is set).
    pub due_at: i64,
    /// Set when the notice needs nothing more: all delivered, or given up.
    pub done_at: Option<i64>,
    /// What went wrong, when something did.
    pub error: Option<String>,
}

impl Store {
    /// Leases up to `limit` due notices (not done, due by `now`, no live
    /// lease) until `lease_until`, oldest first. On Postgres the rows are
    /// locked with `SKIP LOCKED`, so two masters never claim the same one.
    pub async fn claim_notices(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedNotice>, StoreError> {
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            // One master, one writer connection: the UPDATE is atomic.
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE notices SET lease_until = $1 WHERE id IN (\
             SELECT id FROM notices WHERE done_at IS NULL AND due_at <= $2 \
             AND (lease_until IS NULL OR lease_until < $2) ORDER BY id LIMIT $3{lock}) \
             RETURNING id, proc_id, state, attempts, sent, lease_until"
        );
        let rows = sqlx::query(&sql)
            .bind(lease_until)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.write)
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(ClaimedNotice {
                    id: r.try_get(0)?,
                    proc_id: r.try_get(1)?,
                    state: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                    sent: r.try_get(4)?,
                    lease_until: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    /// Records an attempt's outcome and releases the lease; false when the
    /// claim no longer holds the row (its lease expired and another claim
    /// took it), in which case nothing is written.
    pub async fn finish_notice(
        &self,
        id: i64,
        lease_until: i64,
        o: &NoticeOutcome,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE notices SET sent = sent | $1, attempts = attempts + $2, due_at = $3, \
             done_at = $4, last_error = COALESCE($5, last_error), lease_until = NULL \
             WHERE id = $6 AND lease_until = $7 AND done_at IS NULL",
        )
        .bind(o.delivered)
        .bind(i64::from(o.failed))
        .bind(o.due_at)
        .bind(o.done_at)
        .bind(o.error.as_deref())
        .bind(id)
        .bind(lease_until)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// When the next notice not done becomes claimable, ms: its due time,
    /// or its lease's end when later. None when none is pending.
    pub async fn next_notice_at(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > due_at \
             THEN lease_until ELSE due_at END) FROM notices WHERE done_at IS NULL",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Deletes up to `batch` notices done before `cutoff_ms`; returns how
    /// many went. Pending notices are never deleted.
    pub async fn prune_notices(&self, cutoff_ms: i64, batch: i64) -> Result<usize, StoreError> {
        let n = sqlx::query(
            "DELETE FROM notices WHERE id IN (SELECT id FROM notices \
             WHERE done_at IS NOT NULL AND done_at < $1 ORDER BY id LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(batch)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
