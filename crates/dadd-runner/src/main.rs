//! `dadd-runner` command line entry point.
fn main() {}
