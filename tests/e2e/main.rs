//! End-to-end tests: each module starts real Dadd binaries.

mod runner;
mod support;
