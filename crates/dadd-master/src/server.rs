//! Starting and stopping the master: bind, store, background tasks, and a
//! handle with the bound address and a graceful shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::middleware::{from_fn, NormalizePath, TrailingSlash};
use actix_web::{web, App, HttpServer};
use tokio::sync::{watch, Notify};

use crate::app::Shared;
use crate::auth::Auth;
use crate::config::{secs, Config, ConfigError};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::{now_ms, Store, StoreError};
use crate::workers::TlsError;

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Listening beyond loopback with no API token.
    #[error("refusing to listen on {0} with no API token: anyone who can reach it could run commands on your workers; set auth.api_tokens (env DADD_AUTH__API_TOKENS) or pass --insecure")]
    Unprotected(SocketAddr),
    /// The state dir cannot be made.
    #[error("cannot create the state dir {path}: {source}")]
    StateDir {
        /// The dir.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS material is wrong.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}; is another master running there?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running master.
#[derive(Debug)]
pub struct MasterHandle {
    addr: SocketAddr,
    url: String,
    server: actix_web::dev::ServerHandle,
    server_task: actix_rt::task::JoinHandle<std::io::Result<()>>,
    stop: watch::Sender<bool>,
    tasks: Vec<actix_rt::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl MasterHandle {
    /// The bound address (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL runners and workers are told (`public_url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The state, for tests and benchmarks that look inside.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Graceful stop: in-flight requests finish, background tasks end.
    pub async fn stop(self) {
        self.server.stop(true).await;
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.server_task.await;
        self.shared.store.close().await;
    }

    /// Waits until the server ends on its own (it does not, normally).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server_task).await;
    }
}

/// Starts the master on the current actix system (the caller runs inside
/// `#[actix_web::main]` or `#[actix_web::test]`).
pub async fn start(cfg: Config) -> Result<MasterHandle, StartError> {
    cfg.validate()?;
    let bind = cfg.bind_addr()?;
    if !bind.ip().is_loopback() && cfg.auth.api_tokens.is_empty() && !cfg.insecure {
        return Err(StartError::Unprotected(bind));
    }
    if !bind.ip().is_loopback() && cfg.auth.cluster_secret.is_none() {
        tracing::warn!(
            "no auth.cluster_secret: any host that reaches the master can register as a worker"
        );
    }
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| StartError::StateDir {
        path: cfg.state_dir.display().to_string(),
        source,
    })?;
    let store = Store::connect(&cfg.database_url(), &cfg.store).await?;
    let client_tls = crate::workers::client_tls(&cfg.tls)?;
    let server_tls = crate::workers::server_tls(&cfg.tls)?;
    let listener =
        TcpListener::bind(bind).map_err(|source| StartError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: bind, source })?;
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let public_url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let notify_on = cfg.notify.webhook_url.is_some() || cfg.notify.smtp.server.is_some();
    let notifier = Notifier::new(notify_on);
    let shared = Arc::new(Shared {
        store,
        auth: Auth::new(&cfg.auth),
        wake: Notify::new(),
        notifier,
        metrics: Metrics::default(),
        public_url: public_url.clone(),
        client_tls,
        started_at: now_ms(),
        cfg,
    });
    let data = web::Data::from(Arc::clone(&shared));
    let workers = match shared.cfg.http_workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    let header_timeout = secs(shared.cfg.limits.header_timeout_secs);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(from_fn(crate::api::timeout))
            .wrap(NormalizePath::new(TrailingSlash::Trim))
            .wrap(actix_web::middleware::Logger::new("%r %s %Dms").log_target("dadd_master::http"))
            .configure(crate::api::configure)
    })
    .workers(workers)
    .disable_signals()
    .client_request_timeout(header_timeout)
    .shutdown_timeout(25);
    let server = match server_tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .map_err(|source| StartError::Bind { addr, source })?
    .run();
    let handle = server.handle();
    let server_task = actix_rt::spawn(server);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = vec![
        actix_rt::spawn(crate::dispatch::run(Arc::clone(&shared), stop_rx.clone())),
        actix_rt::spawn(crate::liveness::run(Arc::clone(&shared), stop_rx.clone())),
        actix_rt::spawn(crate::liveness::retention(
            Arc::clone(&shared),
            stop_rx.clone(),
        )),
    ];
    if shared.store.backend() == crate::store::Backend::Postgres {
        tasks.push(actix_rt::spawn(crate::wakeup::run(
            Arc::clone(&shared),
            shared.cfg.database_url(),
            stop_rx.clone(),
        )));
    }
    if shared.notifier.enabled() {
        tasks.push(actix_rt::spawn(crate::notify::run(
            Arc::clone(&shared),
            stop_rx,
        )));
    }
    tracing::info!(%addr, url = %public_url, store = shared.store.backend().name(), "dadd-master listening");
    Ok(MasterHandle {
        addr,
        url: public_url,
        server: handle,
        server_task,
        stop,
        tasks,
        shared,
    })
}

/// Runs the master until SIGTERM or SIGINT, then stops gracefully.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut handle = start(cfg).await?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = handle.wait() => tracing::warn!("the HTTP server ended"),
    }
    handle.stop().await;
    tracing::info!("stopped");
    Ok(())
}
