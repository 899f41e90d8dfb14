//! End-to-end tests: each module starts real Dadd binaries.

mod dashboard;
mod deploy;
mod runner;
mod support;
