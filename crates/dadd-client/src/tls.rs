//! TLS for calls to an https master: the public web roots by default, or the
//! certificates of a CA file (a private cluster CA), never both silently.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::error::Error;

/// A rustls client configuration trusting `ca_file` when given, else the
/// public web roots (webpki-roots).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = read_certs(path)?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::Tls(format!(
                    "no usable certificate in CA file {}; give a PEM file with at least one CA certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("cannot set TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = std::fs::read(path).map_err(|source| Error::Io {
        action: "cannot read certificate file",
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Error::Tls(format!(
                "cannot parse PEM certificates in {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "no certificate found in {}; expected PEM blocks \"BEGIN CERTIFICATE\"",
            path.display()
        )));
    }
    Ok(certs)
}
