//! Calls from the master to workers: `POST /run` and `DELETE /procs/{id}`,
//! with the cluster secret, over http or https (rustls).

use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use awc::http::StatusCode;
use dadd_spec::api::RunEnvelope;

use crate::config::TlsConfig;

/// TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path} holds no usable {what}: give a PEM file")]
    Empty {
        /// The file.
        path: String,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the material.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client TLS settings: web roots plus `tls.ca_file`.
pub fn client_tls(cfg: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &cfg.ca_file {
        let pem = read_pem(ca)?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(TlsError::Empty {
                path: ca.display().to_string(),
                what: "certificate",
            });
        }
        for c in certs {
            roots.add(c)?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The listener's TLS settings from `tls.cert` and `tls.key`.
pub fn server_tls(cfg: &TlsConfig) -> Result<Option<rustls::ServerConfig>, TlsError> {
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let pem = read_pem(cert)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::Empty {
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let kpem = read_pem(key)?;
    let key_der = rustls_pemfile::private_key(&mut BufReader::new(kpem.as_slice()))
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Empty {
            path: key.display().to_string(),
            what: "private key",
        })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    Ok(Some(config))
}

/// An HTTP client for workers (one per thread: awc is not `Send`).
pub fn client(tls: &Arc<rustls::ClientConfig>, timeout: Duration, limit: usize) -> awc::Client {
    let connector = awc::Connector::new()
        .rustls_0_23(Arc::clone(tls))
        .timeout(timeout)
        .limit(limit);
    awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .disable_redirects()
        .finish()
}

/// Why a worker call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection: the request never reached the worker.
    #[error("cannot reach the worker at {url}: {message}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport error.
        message: String,
    },
    /// The request went out but no answer came back (a timeout, a dropped
    /// connection): the worker may have acted on it.
    #[error("no answer from the worker at {url}: {message}")]
    NoAnswer {
        /// The URL called.
        url: String,
        /// The transport error.
        message: String,
    },
    /// An answer other than success.
    #[error("the worker at {url} answered {status}: {body}")]
    Status {
        /// The URL called.
        url: String,
        /// Its status.
        status: StatusCode,
        /// The start of its body.
        body: String,
    },
}

fn bearer(secret: Option<&str>) -> Option<String> {
    secret.map(|s| format!("Bearer {s}"))
}

async fn finish(
    url: String,
    resp: Result<
        awc::ClientResponse<
            impl futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
        >,
        awc::error::SendRequestError,
    >,
) -> Result<StatusCode, CallError> {
    let mut resp = resp.map_err(|e| match e {
        awc::error::SendRequestError::Connect(_) | awc::error::SendRequestError::Url(_) => {
            CallError::Unreachable {
                url: url.clone(),
                message: e.to_string(),
            }
        }
        _ => CallError::NoAnswer {
            url: url.clone(),
            message: e.to_string(),
        },
    })?;
    let status = resp.status();
    // Reading the body lets the connection go back to the pool.
    let body = resp.body().limit(64 << 10).await.unwrap_or_default();
    if status.is_success() {
        Ok(status)
    } else {
        Err(CallError::Status {
            url,
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
        })
    }
}

/// `POST {worker}/run` with the envelope.
pub async fn run(
    client: &awc::Client,
    worker_url: &str,
    secret: Option<&str>,
    envelope: &RunEnvelope,
) -> Result<StatusCode, CallError> {
    let url = format!("{worker_url}/run");
    let mut req = client.post(&url);
    if let Some(b) = bearer(secret) {
        req = req.insert_header(("Authorization", b));
    }
    finish(url, req.send_json(envelope).await).await
}

/// `DELETE {worker}/procs/{id}`: the worker signals that process's runner.
pub async fn kill(
    client: &awc::Client,
    worker_url: &str,
    secret: Option<&str>,
    id: i64,
) -> Result<StatusCode, CallError> {
    let url = format!("{worker_url}/procs/{id}");
    let mut req = client.delete(&url);
    if let Some(b) = bearer(secret) {
        req = req.insert_header(("Authorization", b));
    }
    finish(url, req.send().await).await
}
