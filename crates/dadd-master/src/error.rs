//! API errors: one enum, mapped to a status and a JSON `ErrorBody`.
//!
//! Every refusal says what happened and, where it helps, what to do; store
//! failures are logged with their cause and answered 503 (unreachable) or 500.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use dadd_spec::api::ErrorBody;
use dadd_spec::ProcState;

use crate::store::StoreError;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A bad request; `details` lists every problem.
    #[error("{error}")]
    BadRequest {
        /// One line.
        error: String,
        /// Every problem.
        details: Vec<String>,
    },
    /// No credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials not good for this.
    #[error("{0}")]
    Forbidden(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// A state change the state machine refuses.
    #[error("{error}")]
    BadTransition {
        /// One line.
        error: String,
        /// The state the process is in.
        current: ProcState,
    },
    /// A log chunk past the end.
    #[error("log chunk starts past the end: send from byte {expected}")]
    LogGap {
        /// The offset expected.
        expected: u64,
    },
    /// Another conflict.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than this route accepts.
    #[error("request body too large: this route accepts at most {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// A worker could not be reached.
    #[error("{0}")]
    BadGateway(String),
    /// The store is unreachable, or the request took too long.
    #[error("{0}")]
    Unavailable(String),
    /// Something that should not happen; logged.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A bad request with no details.
    pub fn bad(error: impl Into<String>) -> Self {
        ApiError::BadRequest {
            error: error.into(),
            details: Vec::new(),
        }
    }

    /// A process that does not exist.
    pub fn no_proc(id: i64) -> Self {
        ApiError::NotFound(format!("no process {id}: list them with GET /api/procs"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::Unavailable(format!("{e}; retry later"))
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::Internal(format!("{other}"))
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadTransition { .. } | ApiError::LogGap { .. } | ApiError::Conflict(_) => {
                StatusCode::CONFLICT
            }
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = ErrorBody::new(self.to_string());
        match self {
            ApiError::BadRequest { details, .. } => body.details.clone_from(details),
            ApiError::BadTransition { current, .. } => body.current_state = Some(*current),
            ApiError::LogGap { expected } => body.expected_offset = Some(*expected),
            _ => {}
        }
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        resp.json(body)
    }
}
