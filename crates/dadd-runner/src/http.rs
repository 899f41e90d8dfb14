//! HTTP agents (ureq: synchronous, rustls): one for downloads, one for the
//! master, with timeouts so a silent server can never hang the runner, and
//! optionally a CA file to trust instead of the built-in web roots.

use std::path::Path;
use std::time::Duration;

use ureq::tls::{PemItem, RootCerts, TlsConfig};
use ureq::Agent;

/// How long a TCP (and TLS) connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read may wait for the next bytes of a download.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one whole call to the master may take.
pub const MASTER_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an agent could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use CA file {path}: {reason}; give a PEM file with one or more certificates")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn tls(ca_file: Option<&Path>) -> Result<TlsConfig, AgentError> {
    let Some(path) = ca_file else {
        return Ok(TlsConfig::default());
    };
    let err = |reason: String| AgentError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) = item.map_err(|e| err(e.to_string()))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&certs))
        .build())
}

/// The agent for downloads: status codes are answers, not errors (the
/// caller decides what to retry).
pub fn download_agent(ca_file: Option<&Path>) -> Result<Agent, AgentError> {
    Ok(Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .tls_config(tls(ca_file)?)
        .user_agent(concat!("dadd-runner/", env!("CARGO_PKG_VERSION")))
        .build()
        .into())
}

/// The agent for the master's API.
pub fn master_agent(ca_file: Option<&Path>) -> Result<Agent, AgentError> {
    Ok(Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(MASTER_CALL_TIMEOUT))
        .tls_config(tls(ca_file)?)
        // Never follow a redirect with the token somewhere else.
        .max_redirects(0)
        // Small buffers and one idle connection: reports are small, log
        // chunks are streamed through, and the runner's memory is what it
        // costs to supervise (see docs/benchmarks.md).
        .input_buffer_size(16 * 1024)
        .output_buffer_size(32 * 1024)
        .max_idle_connections(1)
        .max_idle_connections_per_host(1)
        .user_agent(concat!("dadd-runner/", env!("CARGO_PKG_VERSION")))
        .build()
        .into())
}
