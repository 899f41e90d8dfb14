//! TLS on the worker's listener (rustls 0.23 with the ring provider), from
//! PEM certificate chain and key files.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

/// A listener certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the TLS certificate {cert} with key {key}: {message}")]
pub struct TlsError {
    cert: String,
    key: String,
    message: String,
}

/// The server configuration for `cert` (chain) and `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let err = |message: String| TlsError {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        message,
    };
    let chain = dadd_client::tls::read_certs(cert).map_err(|e| err(e.to_string()))?;
    let key_pem = std::fs::read(key).map_err(|e| err(format!("cannot read the key: {e}")))?;
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| err(format!("cannot parse the key: {e}")))?
        .ok_or_else(|| err("no private key in the key file".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| err(e.to_string()))
}
