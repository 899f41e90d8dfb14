//! The shared end-to-end harness: everything a test needs to start the real
//! Dadd binaries on loopback and check what a user would.
//!
//! - [`browser`]: headless Chromium under chromedriver, for the dashboard;
//! - [`bins`]: the workspace's binaries, built once per test run;
//! - [`wait`]: waiting for a condition with a deadline (never a bare sleep);
//! - [`procs`]: process guards that kill what a test started (whole groups
//!   too), and liveness checks that treat zombies as dead;
//! - [`http`]: a small loopback HTTP server (fixed files, a 404, a
//!   500-then-200 URL, request recording) and a fake master that records a
//!   runner's state reports and log chunks and can answer 503 or 409;
//! - [`pyindex`]: a PEP 503 simple index serving a wheel built by the test;
//! - [`cluster`]: a whole cluster of real daemons (master on SQLite or a
//!   fresh Postgres schema, restartable workers, a webhook sink) and a
//!   blocking client of the master's API.
//!
//! Everything binds 127.0.0.1 on port 0 and lives in the test's own temp dir.

#![allow(dead_code, unused_imports, unreachable_pub)]

pub mod bins;
pub mod browser;
pub mod cluster;
pub mod http;
pub mod procs;
pub mod pyindex;
pub mod wait;

pub use bins::bin;
pub use http::{FakeMaster, Request, Response, Routes, Server};
pub use procs::{pid_alive, ChildGuard, DaemonGuard};
pub use wait::{wait_for, wait_until};
