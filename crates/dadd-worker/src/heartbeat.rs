//! Registration and heartbeat: `POST {master}/api/hosts` every interval with
//! the ids of the live runners. While the master is unreachable the worker
//! backs off (capped) and says so once per outage, never exiting for it: its
//! runners go on, and so must the worker that lists them.
//!
//! With several masters (sharing one database), heartbeats go to one of
//! them; the [`Client`] moves to the next when it stops answering, and this
//! task says so in one line ("heartbeats now go to …"). An outage is when
//! no master answers.

use std::sync::Arc;
use std::time::Duration;

use dadd_client::Client;
use dadd_spec::api::HostHeartbeat;

use crate::runners::Runners;

/// Who this worker says it is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) scheme: &'static str,
}

/// The delay before the next try after `failures` failures in a row.
pub(crate) fn backoff(interval: Duration, max: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let factor = 2u32.saturating_pow(failures.min(16) - 1);
    interval.saturating_mul(factor).min(max)
}

/// Heartbeats until the task is aborted.
pub(crate) async fn run(
    client: Client,
    runners: Arc<Runners>,
    me: Identity,
    interval: Duration,
    max_backoff: Duration,
) {
    let mut failures: u32 = 0;
    let mut registered = false;
    // The master that took the last heartbeat.
    let mut master = client.master_url();
    loop {
        let beat = HostHeartbeat {
            host: me.host.clone(),
            port: me.port,
            max_procs: runners.max_procs(),
            version: dadd_spec::VERSION.to_owned(),
            running: runners.live_ids().await,
            scheme: me.scheme.to_owned(),
        };
        match client.heartbeat(&beat).await {
            Ok(info) => {
                let now = client.master_url();
                if registered && now != master {
                    tracing::info!(master = %now, previous = %master, "heartbeats now go to {now}");
                }
                master = now;
                if failures > 0 {
                    tracing::info!(master = %client.master_url(), failed_tries = failures, "master reachable again; heartbeats resumed");
                } else if !registered {
                    tracing::info!(master = %client.master_url(), host_id = info.id, address = %info.address, "registered with the master");
                }
                registered = true;
                failures = 0;
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(
                        masters = %client.master_urls().join(","),
                        error = %err,
                        "heartbeat failed; retrying with backoff up to {}s (logged once per outage; runners are not affected)",
                        max_backoff.as_secs_f64()
                    );
                }
            }
        }
        tokio::time::sleep(backoff(interval, max_backoff, failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let i = Duration::from_secs(2);
        let max = Duration::from_secs(10);
        assert_eq!(backoff(i, max, 0), i);
        assert_eq!(backoff(i, max, 1), i);
        assert_eq!(backoff(i, max, 2), Duration::from_secs(4));
        assert_eq!(backoff(i, max, 3), Duration::from_secs(8));
        assert_eq!(backoff(i, max, 4), max);
        assert_eq!(backoff(i, max, u32::MAX), max);
    }
}
