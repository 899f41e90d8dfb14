//! Integration tests of `dadd-client` and the `dadd` command against the
//! real master and worker, both in-process on loopback port 0, with a
//! stand-in runner (the test itself reports for it, with its per-process
//! token), so every route and every exit code is checked end to end.

// Some support helpers serve only some modules.
#![allow(dead_code)]

mod client_api;
mod dadd_cmd;
mod dev;
mod support;
