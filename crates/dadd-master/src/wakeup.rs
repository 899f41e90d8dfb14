//! Cross-master wake-up on Postgres: a `LISTEN` connection per master.
//!
//! Triggers in the database (migration 2) send `dadd_wake` when work is
//! queued, a process ends or a host comes up or changes its capacity, and
//! `dadd_notice` when a notification is written to the outbox; whichever
//! master made the change, every master's dispatcher and notifier wake at
//! once instead of waiting for their next tick. A lost connection is made
//! again, and both are woken then, since notifications sent meanwhile are
//! gone.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::app::Shared;

/// The channel the dispatchers listen on.
pub const WAKE_CHANNEL: &str = "dadd_wake";
/// The channel the notifiers listen on.
pub const NOTICE_CHANNEL: &str = "dadd_notice";

/// Listens until `stop`; returns at once on SQLite (one master).
pub async fn run(shared: Arc<Shared>, url: String, mut stop: watch::Receiver<bool>) {
    let mut retry = Duration::from_millis(200);
    loop {
        let listener = tokio::select! {
            l = connect(&url) => l,
            _ = stop.changed() => return,
        };
        match listener {
            Ok(mut listener) => {
                retry = Duration::from_millis(200);
                tracing::debug!("listening for other masters' wake-ups");
                // Whatever was sent while not listening is lost: look now.
                wake_all(&shared);
                loop {
                    tokio::select! {
                        n = listener.try_recv() => match n {
                            Ok(Some(n)) => match n.channel() {
                                WAKE_CHANNEL => shared.wake.notify_one(),
                                NOTICE_CHANNEL => shared.notifier.wake(),
                                _ => {}
                            },
                            Ok(None) => {
                                tracing::warn!("the wake-up connection to Postgres was lost; reconnecting");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "the wake-up connection to Postgres failed; reconnecting");
                                break;
                            }
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_secs = retry.as_secs_f64(), "cannot listen for other masters' wake-ups (dispatch falls back to dispatch.tick_secs)");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => return,
        }
        retry = (retry * 2).min(Duration::from_secs(10));
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen_all([WAKE_CHANNEL, NOTICE_CHANNEL]).await?;
    Ok(listener)
}

fn wake_all(shared: &Shared) {
    shared.wake.notify_one();
    shared.notifier.wake();
}
