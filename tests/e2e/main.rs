//! End-to-end tests: each module starts real Dadd binaries.

mod cluster;
mod dashboard;
mod deploy;
mod masters;
mod runner;
mod support;
