//! `dadd-master` command line entry point.
fn main() {}
