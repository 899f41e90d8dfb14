//! Who may call what: API tokens, the cluster secret, per-process tokens.
//!
//! Secrets are kept only as SHA-256 digests and compared in constant time,
//! so neither a stored hash nor response timing gives a token away.

use actix_web::http::header;
use actix_web::HttpRequest;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::error::ApiError;

/// The configured secrets, hashed.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    api: Vec<[u8; 32]>,
    cluster: Option<[u8; 32]>,
}

/// SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// SHA-256 of a token, lowercase hex (how per-process tokens are stored).
pub fn digest_hex(secret: &str) -> String {
    hex::encode(digest(secret))
}

/// A fresh per-process token: 32 random bytes, hex.
pub fn mint_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Equal in time independent of where the bytes differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Auth {
    /// Hashes the configured secrets.
    pub fn new(cfg: &AuthConfig) -> Self {
        Self {
            api: cfg.api_tokens.iter().map(|t| digest(t)).collect(),
            cluster: cfg.cluster_secret.as_deref().map(digest),
        }
    }

    /// Whether user routes are open (no API token configured).
    pub fn open(&self) -> bool {
        self.api.is_empty()
    }

    fn is_api_token(&self, token: &str) -> bool {
        let d = digest(token);
        // Check every token, so the time does not say which one matched.
        self.api.iter().fold(false, |acc, h| acc | ct_eq(h, &d))
    }

    /// A user route: an API token, unless none is configured.
    pub fn user(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.open() {
            return Ok(());
        }
        match bearer(req) {
            None => Err(missing()),
            Some(t) if self.is_api_token(t) => Ok(()),
            Some(_) => Err(ApiError::Forbidden(
                "this token is not accepted: use one of the master's auth.api_tokens".into(),
            )),
        }
    }

    /// A worker route: the cluster secret, unless none is configured.
    pub fn cluster(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(secret) = &self.cluster else {
            return Ok(());
        };
        match bearer(req) {
            None => Err(missing()),
            Some(t) if ct_eq(&digest(t), secret) => Ok(()),
            Some(_) => Err(ApiError::Forbidden(
                "wrong cluster secret: set the worker's cluster secret to the master's auth.cluster_secret".into(),
            )),
        }
    }

    /// A process's report or log route: that process's token, or an API token.
    /// `token_hashes`: every hash good for that process (see
    /// [`crate::store::ProcRow::token_hashes`]).
    pub fn process(&self, req: &HttpRequest, token_hashes: &[&str]) -> Result<(), ApiError> {
        if self.open() {
            return Ok(());
        }
        let Some(t) = bearer(req) else {
            return Err(missing());
        };
        let presented = digest(t);
        let own = token_hashes
            .iter()
            .filter_map(|h| hex::decode(h).ok())
            .any(|h| ct_eq(&h, &presented));
        if own || self.is_api_token(t) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this token is not good for this process: a runner reports only on its own process"
                    .into(),
            ))
        }
    }

    /// The cluster secret in clear is not kept; callers pass it for outgoing calls.
    pub fn has_cluster_secret(&self) -> bool {
        self.cluster.is_some()
    }
}

fn missing() -> ApiError {
    ApiError::Unauthorized("missing credentials: send Authorization: Bearer <token>".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn cfg() -> AuthConfig {
        AuthConfig {
            api_tokens: vec!["user-token".into()],
            cluster_secret: Some("cluster".into()),
        }
    }

    #[test]
    fn compare_is_exact() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn user_routes_need_an_api_token() {
        let a = Auth::new(&cfg());
        let none = TestRequest::default().to_http_request();
        assert!(matches!(a.user(&none), Err(ApiError::Unauthorized(_))));
        let wrong = TestRequest::default()
            .insert_header(("Authorization", "Bearer nope"))
            .to_http_request();
        assert!(matches!(a.user(&wrong), Err(ApiError::Forbidden(_))));
        let good = TestRequest::default()
            .insert_header(("Authorization", "bearer user-token"))
            .to_http_request();
        assert!(a.user(&good).is_ok());
        assert!(Auth::new(&AuthConfig::default()).user(&none).is_ok());
    }

    #[test]
    fn process_tokens_are_per_process() {
        let a = Auth::new(&cfg());
        let tok = mint_token();
        let hash = digest_hex(&tok);
        let req = TestRequest::default()
            .insert_header(("Authorization", format!("Bearer {tok}")))
            .to_http_request();
        let other = digest_hex("other");
        assert!(a.process(&req, &[&hash]).is_ok());
        assert!(a.process(&req, &[&other, &hash]).is_ok(), "any of them");
        assert!(a.process(&req, &[&other]).is_err());
        assert!(a.process(&req, &[]).is_err());
        assert!(a.user(&req).is_err(), "a process token is not an API token");
    }
}
