//! Library of `dadd-master`; the binary is a thin shell over it.
//!
//! The master keeps the processes and hosts in a store (SQLite embedded,
//! Postgres in production), places each queued process on a live worker,
//! records every state change and log, and tells someone when a process fails.
//! [`start`] runs it in-process (tests, benchmarks) and returns a handle with
//! the bound address and a graceful stop.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod dispatch;
pub mod error;
mod filestore;
pub mod liveness;
pub mod metrics;
pub mod notify;
mod outbox;
pub mod server;
pub mod store;
pub mod wakeup;
pub mod workers;

pub use config::{Cli, Config, LogFormat};
pub use server::{run, start, MasterHandle, StartError};

/// Starts `tracing` output (`RUST_LOG` filters; default `info`).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
