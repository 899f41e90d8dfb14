//! Library of `dadd-runner`: one Dadd process's whole life, from a spec to a
//! removed working dir. The binary is a thin shell over [`run`].
//!
//! # What a run does, in order
//!
//! 1. read and validate the spec (a file, standard input, or the worker's
//!    envelope); a bad spec prints every problem and exits 2 with nothing
//!    created on disk;
//! 2. make the working dir (`--working-dir`, else a new `dadd-*` dir under
//!    `--work-root`);
//! 3. unless `--foreground`, daemonize (own session, standard input from
//!    `/dev/null`, diagnostics in `runner.log`) and write `pid`;
//! 4. report `setup`; download files, write `settings.json`, build `venv/`;
//! 5. report `running`; run the command in its own process group with its
//!    output appended straight to `output.log`;
//! 6. supervise it: exit, `timeout`, SIGTERM/SIGINT to the runner;
//! 7. ship the whole log, then the final state, to the master (when there is
//!    one), and remove the working dir once both were accepted.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | the command's | foreground: the command exited with it |
//! | 128+N | foreground: the command was ended by signal N (timeout or kill: 143) |
//! | 0 | daemon mode: the daemon started and wrote `pid` (one `{"pid","directory"}` line on standard output) |
//! | 2 | bad spec or usage; nothing was created on disk |
//! | 125 | setup failed: working dir, download, checksum, settings, virtualenv or install; or the daemon failed to start |
//! | 126 | the command was found but could not be executed |
//! | 127 | the command was not found |
//!
//! Architecture invariant: the runner starts no thread before it has
//! daemonized. Everything up to [`daemon::daemonize`] is single-threaded
//! and synchronous; the reporter thread starts after it.

pub mod cleanup;
pub mod cli;
pub mod command;
pub mod daemon;
pub mod download;
pub mod exit;
pub mod http;
pub mod lifecycle;
pub mod load;
pub mod outlog;
pub mod python;
pub mod record;
pub mod report;
pub mod signals;
pub mod workdir;

pub use cli::Cli;

/// Runs the runner as the command line asks; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    lifecycle::run(cli)
}
