//! The `dadd` command.
fn main() {}
