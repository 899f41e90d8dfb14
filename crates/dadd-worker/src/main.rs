//! `dadd-worker` command line entry point.
fn main() {}
