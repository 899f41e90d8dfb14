//! Dadd's worker daemon: it starts a runner for each process the master
//! sends (`POST /run`), lists its runners (`GET /procs`, heartbeats), stops
//! one on request (`DELETE /procs/{id}`), and finds them all again after a
//! restart.
//!
//! The worker may be given several masters sharing one database (`master`
//! in [`Config`]): it heartbeats to one that answers, moving on when it
//! stops answering, and passes the list on to each runner it starts
//! (`fallback_urls` of the run envelope).
//!
//! Results a runner could not deliver (every master down past its
//! `--report-deadline`, or the runner killed while delivering) are
//! delivered by the worker once a master answers again ([`redeliver`]).
//!
//! Architecture invariant: the work root is the worker's only state. A
//! worker can be restarted or `kill -9`ed at any time; its runners are in
//! their own sessions and never notice, and the next worker scans the work
//! root and lists them again.
//!
//! [`start`] runs the daemon inside the current actix system and answers a
//! [`Worker`] handle (bound address, stop), so tests run it in-process;
//! [`run`] is what the binary does: start, then stop on SIGTERM or SIGINT.

pub mod cli;
pub mod config;
mod heartbeat;
mod http;
pub mod procfs;
pub mod redeliver;
pub mod runners;
pub mod spawn;
pub mod tls;
pub mod workroot;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::{NormalizePath, TrailingSlash};
use actix_web::{web, App, HttpServer};

pub use config::Config;
use runners::Runners;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The work root cannot be used.
    #[error("cannot use the work root {path}: {source}; set work_root to a writable directory")]
    WorkRoot {
        /// The work root.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}; is another worker running there?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS files unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The master's URL or CA file unusable.
    #[error("cannot set up calls to the master: {0}")]
    Client(#[from] dadd_client::Error),
    /// `advertise` unusable.
    #[error("{0}")]
    Advertise(String),
}

/// A running worker.
pub struct Worker {
    addr: SocketAddr,
    scheme: &'static str,
    work_root: PathBuf,
    server: actix_web::dev::ServerHandle,
    server_task: actix_rt::task::JoinHandle<std::io::Result<()>>,
    heartbeat: actix_rt::task::JoinHandle<()>,
    redeliver: actix_rt::task::JoinHandle<()>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("addr", &self.addr)
            .field("work_root", &self.work_root)
            .finish()
    }
}

impl Worker {
    /// The address the API listens on (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The work root in use.
    pub fn work_root(&self) -> &Path {
        &self.work_root
    }

    /// Stops heartbeats, redelivery and the API, letting requests in flight finish.
    /// Runners are never touched.
    pub async fn stop(self) {
        self.heartbeat.abort();
        self.redeliver.abort();
        self.server.stop(true).await;
        let _ = self.server_task.await;
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    async fn wait_server(&mut self) {
        let _ = (&mut self.server_task).await;
    }
}

/// Starts the worker in the current actix system.
pub async fn start(config: Config) -> Result<Worker, StartError> {
    let work_root = match &config.work_root {
        Some(path) => {
            workroot::ensure_writable(path).map_err(|source| StartError::WorkRoot {
                path: path.clone(),
                source,
            })?;
            tracing::info!(work_root = %path.display(), "work root (configured)");
            path.clone()
        }
        None => {
            let chosen = workroot::default_work_root().map_err(|source| StartError::WorkRoot {
                path: std::env::temp_dir(),
                source,
            })?;
            tracing::info!(work_root = %chosen.path.display(), why = %chosen.why, "work root (default)");
            chosen.path
        }
    };
    let runner = spawn::find_runner(config.runner.as_deref());
    match &runner {
        Some(r) if r.is_file() => tracing::info!(runner = %r.display(), "runner executable"),
        // Not fatal: the worker still lists and heartbeats the runners it
        // has, which a restart must never lose; only `/run` fails.
        Some(r) => {
            tracing::error!(runner = %r.display(), "the runner executable does not exist; /run will fail until it does")
        }
        None => tracing::error!(
            "no dadd-runner next to dadd-worker nor on PATH; set `runner`; /run will fail"
        ),
    }
    let max_procs = config.max_procs();
    let runners = Arc::new(
        Runners::new(
            work_root.clone(),
            runner,
            max_procs,
            config.runner_start_deadline(),
            config.master_ca_file.clone(),
        )
        .with_masters(config.master_urls()),
    );
    let found = runners.live_ids().await;
    tracing::info!(live_runners = found.len(), process_ids = ?found, max_procs, "scanned the work root");

    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        _ => None,
    };
    if config.cluster_secret.is_none() {
        tracing::warn!("no cluster_secret: anyone who reaches this worker can run commands on it");
    }
    let state = web::Data::new(http::AppState {
        runners: runners.clone(),
        secret: config.cluster_secret.clone(),
    });
    let workers = std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(2);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(NormalizePath::new(TrailingSlash::Trim))
            .configure(http::routes)
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(10);
    let bind_err = |source| StartError::Bind {
        addr: config.bind,
        source,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = match tls {
        Some(tls) => server
            .bind_rustls_0_23(config.bind, tls)
            .map_err(bind_err)?,
        None => server.bind(config.bind).map_err(bind_err)?,
    };
    let addr = server.addrs().first().copied().unwrap_or(config.bind);
    let server = server.run();
    let handle = server.handle();
    let server_task = actix_rt::spawn(server);
    tracing::info!(%addr, scheme, "worker listening");

    let (host, port) = match &config.advertise {
        Some(adv) => config::parse_advertise(adv).map_err(StartError::Advertise)?,
        None => (default_host(addr.ip()), addr.port()),
    };
    let client = dadd_client::ClientBuilder::from_urls(config.master_urls())
        .token(
            config
                .cluster_secret
                .as_ref()
                .map(|s| s.expose().to_owned()),
        )
        .ca_file(config.master_ca_file.clone())
        .timeout(Duration::from_secs(5).max(config.heartbeat_interval()))
        .build()?;
    let heartbeat = actix_rt::spawn(heartbeat::run(
        client,
        runners,
        heartbeat::Identity { host, port, scheme },
        config.heartbeat_interval(),
        config.heartbeat_max_backoff(),
    ));
    let redeliver = actix_rt::spawn(
        redeliver::Redeliverer::new(
            work_root.clone(),
            config.master_urls(),
            config.master_ca_file.clone(),
        )
        .run(config.redeliver_interval()),
    );
    Ok(Worker {
        addr,
        scheme,
        work_root,
        server: handle,
        server_task,
        heartbeat,
        redeliver,
    })
}

/// The host the master should call: the bound IP, or this machine's name
/// when bound to every interface.
fn default_host(ip: IpAddr) -> String {
    if ip.is_unspecified() {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| ip.to_string())
    } else {
        ip.to_string()
    }
}

/// Runs the worker until SIGTERM or SIGINT, then stops it gracefully
/// (runners go on).
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut worker = start(config).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping (runners go on)"),
        _ = int.recv() => tracing::info!("SIGINT: stopping (runners go on)"),
        _ = worker.wait_server() => anyhow::bail!("the HTTP server stopped unexpectedly"),
    }
    worker.stop().await;
    tracing::info!("stopped");
    Ok(())
}
