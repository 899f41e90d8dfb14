//! `dadd-worker`'s command line: flags, logging, config layers, then [`crate::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::config::{Config, LogFormat, Overrides};

/// Dadd's worker: starts runners for the master on this host, finds them
/// again after a restart, heartbeats to the master.
///
/// Settings: defaults < TOML file (--config) < DADD_WORKER_* environment
/// (`__` for nested keys: DADD_WORKER_TLS__CERT) < these flags.
#[derive(Debug, Parser)]
#[command(name = "dadd-worker", version, about)]
pub struct Flags {
    /// A TOML config file (see deploy/worker.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the API listens [default: 127.0.0.1:6000].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// The master's URL, or several separated by commas (masters sharing one database) [default: http://127.0.0.1:5000].
    #[arg(long, value_name = "URL[,URL...]")]
    pub master: Option<String>,
    /// HOST:PORT the master reaches this worker at [default: the bound address].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// The directory of the runners' working dirs.
    #[arg(long, value_name = "DIR")]
    pub work_root: Option<PathBuf>,
    /// How many runners at once [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    pub max_procs: Option<u32>,
    /// The dadd-runner executable [default: next to dadd-worker, else on PATH].
    #[arg(long, value_name = "PATH")]
    pub runner: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Allow binding beyond loopback without a cluster secret.
    #[arg(long)]
    pub insecure: bool,
}

impl Flags {
    fn overrides(&self) -> Overrides {
        Overrides {
            bind: self.bind,
            master: self.master.clone(),
            advertise: self.advertise.clone(),
            work_root: self.work_root.clone(),
            max_procs: self.max_procs,
            runner: self.runner.clone(),
            log_format: self.log_format,
            insecure: self.insecure,
        }
    }
}

/// Starts tracing on stderr; `RUST_LOG` filters (default `info`).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The whole binary: parse, load, run; the answer is the exit code.
pub fn main() -> ExitCode {
    let flags = Flags::parse();
    let config =
        match Config::load(flags.config.as_deref(), None, &flags.overrides()).with_context(|| {
            match &flags.config {
                Some(p) => format!("config file {}", p.display()),
                None => "configuration".to_owned(),
            }
        }) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("dadd-worker: {e:#}");
                return ExitCode::from(2);
            }
        };
    init_tracing(config.log_format);
    let system = actix_rt::System::new();
    match system.block_on(crate::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("dadd-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}
