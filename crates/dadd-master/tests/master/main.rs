//! Integration tests of `dadd-master`: the real server in-process on port 0,
//! spoken to over HTTP with awc, on SQLite always and on Postgres when
//! `DADD_TEST_POSTGRES_URL` is set; fake workers are small actix apps.

// Test helpers are `pub` for the sibling modules, not for other crates.
#![allow(unreachable_pub)]

mod support;

mod api;
mod auth;
mod dispatch;
mod files;
mod logs;
mod notify;
mod store;
mod tls;
