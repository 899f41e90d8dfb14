//! Typed HTTP client of Dadd's master API, and the `dadd` command line.
//!
//! [`Client`] has one async method per route of the master (processes, logs,
//! hosts, files, health), built on awc: run it on an actix runtime. Errors are
//! [`Error`]s carrying the HTTP status and the master's own `error` and
//! `details`, or the URL that could not be reached.
//!
//! A client may be given several masters that share one database
//! (`http://a:5000,http://b:5000`, or a list): a call that cannot reach one
//! goes to the next, and the client stays with the one that answered. A
//! submit goes to another master only when it provably never reached the
//! first; see [`Client`] for the exact rule, and [`urls`] for
//! the list syntax.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dadd_client::Error> {
//! let client = dadd_client::ClientBuilder::new("http://127.0.0.1:5000")
//!     .token(std::env::var("DADD_TOKEN").ok())
//!     .build()?;
//! let proc = client.submit(&serde_json::json!({"cmd": "true"})).await?;
//! println!("process {} is {}", proc.id, proc.state);
//! # Ok(()) }
//! ```
//!
//! # The `dadd` command
//!
//! `dadd [--master URL[,URL...]] [--token T] [--ca-file PEM] [--json] COMMAND`,
//! where `--master` defaults to `$DADD_MASTER_URL`, else
//! `http://127.0.0.1:5000`, and `--token` to `$DADD_TOKEN`. Several masters
//! (comma-separated) are tried in order until one answers. Commands: `submit`, `ps`, `show`, `logs`,
//! `kill`, `hosts`, `files put|get|ls|rm`, and `dev` (a local master and
//! worker on loopback). Human tables by default; `--json` prints JSON for
//! pipelines.
//!
//! ## Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done; with `--wait`, the process ended `success` |
//! | 1 | with `--wait`: the process ended `failed` |
//! | 2 | usage error, or the spec is invalid (every problem is printed) |
//! | 3 | with `--wait`: the process ended `killed` |
//! | 4 | with `--wait`: the process ended `lost` |
//! | 5 | the request failed: master unreachable, refused, not found, or a local I/O error |
//! | 130 | interrupted (Ctrl-C) while waiting |

pub mod cli;
mod client;
mod error;
pub mod tls;
pub mod urls;

pub use client::{Client, ClientBuilder, ListQuery};
pub use error::{Error, Result};
