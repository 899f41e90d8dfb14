//! The client's error type: what went wrong talking to the master, with the
//! URL and the server's own words, so a caller can say what to do next.

use dadd_spec::api::ErrorBody;

/// Everything a [`crate::Client`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The master could not be reached (refused, DNS, TLS handshake, timeout).
    #[error("cannot reach the master at {url}: {message}; check the master URL and that dadd-master runs there")]
    Connect {
        /// The URL tried (without credentials).
        url: String,
        /// What the connection layer said.
        message: String,
    },
    /// Several masters were tried, in order, and none answered; `last` is
    /// how the last one failed.
    #[error("no master answered (tried {}); the last error: {last}", tried.join(", "))]
    AllFailed {
        /// Every master tried (base URLs without credentials), in order.
        tried: Vec<String>,
        /// The last master's failure.
        last: Box<Error>,
    },
    /// A request that must not be carried out twice (a submit) was sent and
    /// no answer came: it may or may not have been carried out, so it was
    /// not sent again, to this master or another.
    #[error("{method} {url}: no answer after the request was sent ({message}); it may have been carried out, so it was not sent again{}; check (for a submit: `dadd ps`) before retrying", if *others { " to another master" } else { "" })]
    Unconfirmed {
        /// The HTTP method.
        method: String,
        /// The URL called (without credentials).
        url: String,
        /// What the connection layer said.
        message: String,
        /// Whether other masters were configured (and deliberately not tried).
        others: bool,
    },
    /// The master answered with an error status.
    #[error("{method} {url} failed with {status}: {}{}", body.error, details_suffix(&body.details))]
    Api {
        /// The HTTP method.
        method: String,
        /// The URL called (without credentials).
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The server's `{"error", "details"}` (or the raw body as `error`).
        body: ErrorBody,
    },
    /// The master answered 2xx with a body this client cannot read.
    #[error("cannot read the answer of {url}: {message}; is this a dadd-master of a compatible version?")]
    Decode {
        /// The URL called.
        url: String,
        /// What the decoder said.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`cannot read`, `cannot write`).
        action: &'static str,
        /// The local path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The master URL or a path in it is not usable.
    #[error("invalid URL {url}: {message}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it is not usable.
        message: String,
    },
    /// The TLS setup (CA file) is not usable.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

fn details_suffix(details: &[String]) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join("; "))
    }
}

impl Error {
    /// The HTTP status of an [`Error::Api`], if this is one (or the last
    /// error of an [`Error::AllFailed`] is one).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            Error::AllFailed { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The server's error body of an [`Error::Api`], if this is one (or the
    /// last error of an [`Error::AllFailed`] is one).
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            Error::Api { body, .. } => Some(body),
            Error::AllFailed { last, .. } => last.body(),
            _ => None,
        }
    }
}

/// The result of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_shows_status_and_details() {
        let mut body = ErrorBody::new("invalid spec");
        body.details = vec!["cmd: required".into(), "timeout: must be positive".into()];
        let e = Error::Api {
            method: "POST".into(),
            url: "http://m/api/procs".into(),
            status: 400,
            body,
        };
        assert_eq!(
            e.to_string(),
            "POST http://m/api/procs failed with 400: invalid spec (cmd: required; timeout: must be positive)"
        );
        assert_eq!(e.status(), Some(400));
    }
}
