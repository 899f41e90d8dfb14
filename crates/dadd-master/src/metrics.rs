//! Prometheus metrics: counters kept in memory, gauges read from the store
//! at scrape time, rendered as the text exposition format by hand.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use dadd_spec::ProcState;

use crate::store::{Store, StoreError};

/// Upper bounds of the dispatch latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// The master's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// Processes a worker accepted.
    pub placements: AtomicU64,
    /// Calls to `/run` that failed (the process went back to the queue).
    pub dispatch_failures: AtomicU64,
    /// Notifications delivered.
    pub notifications_sent: AtomicU64,
    /// Notifications given up on.
    pub notifications_failed: AtomicU64,
}

impl Metrics {
    /// Records one placement's latency (from submission to the worker's yes).
    pub fn observe_dispatch(&self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add((seconds.max(0.0) * 1e6) as u64, Ordering::Relaxed);
        self.placements.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub async fn render(&self, store: &Store, hosts_up: u64) -> Result<String, StoreError> {
        let counts = store.count_by_state().await?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP dadd_processes Processes in the store, by state."
        );
        let _ = writeln!(out, "# TYPE dadd_processes gauge");
        for st in ProcState::ALL {
            let n = counts.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "dadd_processes{{state=\"{st}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP dadd_hosts_up Worker hosts heartbeating within the TTL."
        );
        let _ = writeln!(out, "# TYPE dadd_hosts_up gauge");
        let _ = writeln!(out, "dadd_hosts_up {hosts_up}");
        let _ = writeln!(
            out,
            "# HELP dadd_dispatch_latency_seconds Time from submission to a worker accepting the process."
        );
        let _ = writeln!(out, "# TYPE dadd_dispatch_latency_seconds histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "dadd_dispatch_latency_seconds_bucket{{le=\"{le}\"}} {n}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "dadd_dispatch_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "dadd_dispatch_latency_seconds_sum {sum}");
        let _ = writeln!(out, "dadd_dispatch_latency_seconds_count {count}");
        for (name, help, v) in [
            (
                "dadd_placements_total",
                "Processes a worker accepted.",
                &self.placements,
            ),
            (
                "dadd_dispatch_failures_total",
                "Calls to a worker's /run that failed.",
                &self.dispatch_failures,
            ),
            (
                "dadd_notifications_sent_total",
                "Notifications delivered.",
                &self.notifications_sent,
            ),
            (
                "dadd_notifications_failed_total",
                "Notifications given up on.",
                &self.notifications_failed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        Ok(out)
    }
}
