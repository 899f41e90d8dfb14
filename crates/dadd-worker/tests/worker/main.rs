//! Integration tests of `dadd-worker`: the worker in-process or as the real
//! binary on port 0, a fake master recording heartbeats, and runners (a
//! stand-in script keeping the runner's contract, and the real `dadd-runner`).

// Some support helpers serve only some modules.
#![allow(dead_code)]

mod api;
mod failover;
mod real_runner;
mod redeliver;
mod restart;
mod support;
mod tls;
