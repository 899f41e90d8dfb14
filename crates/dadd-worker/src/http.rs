//! The worker's HTTP API for the master: `GET /up`, `POST /run`,
//! `GET /procs`, `DELETE /procs/{process_id}`. Errors are `ErrorBody` JSON.

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use dadd_spec::api::{ErrorBody, ProcId, RunEnvelope, WorkerUp};

use crate::config::Secret;
use crate::runners::{KillError, RunError, Runners};

/// Largest `/run` body accepted (the spec's `config` can be large).
const RUN_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) runners: Arc<Runners>,
    pub(crate) secret: Option<Secret>,
}

/// Mounts the routes.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(RUN_BODY_LIMIT)
            .error_handler(|err, _req| {
                ApiError::BadRequest(format!("cannot read the envelope: {err}")).into()
            }),
    )
    .route("/up", web::get().to(up))
    .route("/run", web::post().to(run))
    .route("/procs", web::get().to(procs))
    .route("/procs/{process_id}", web::delete().to(kill));
}

/// Errors of the API, each with its status.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("missing or wrong cluster secret: send `Authorization: Bearer <cluster secret>`")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Kill(#[from] KillError),
    #[error("{0}")]
    Internal(String),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Run(RunError::BadSpec { .. }) => StatusCode::BAD_REQUEST,
            ApiError::Run(RunError::Full { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Run(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Kill(KillError::NotFound(_)) => StatusCode::NOT_FOUND,
            ApiError::Kill(KillError::Finished { .. }) => StatusCode::CONFLICT,
            ApiError::Kill(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = ErrorBody::new(self.to_string());
        match self {
            ApiError::Run(RunError::BadSpec { problems, .. }) => body.details = problems.clone(),
            ApiError::Run(RunError::Spawn { source, .. }) => {
                body.error = format!("{self}: {source}");
                body.details = source.details();
            }
            ApiError::Kill(KillError::Finished { state, .. }) => body.current_state = Some(*state),
            _ => {}
        }
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %body.error, details = ?body.details, "request failed");
        }
        let mut resp = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            resp.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        resp.json(body)
    }
}

/// Equal without an early exit, so the time taken does not reveal the secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(secret) = &state.secret else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), secret.expose().as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

async fn up(state: web::Data<AppState>) -> HttpResponse {
    let running = state.runners.live_ids().await.len();
    let max_procs = state.runners.max_procs();
    HttpResponse::Ok().json(WorkerUp {
        worker_status: if running >= max_procs as usize {
            "full"
        } else {
            "available"
        }
        .to_owned(),
        version: dadd_spec::VERSION.to_owned(),
        running: u32::try_from(running).unwrap_or(u32::MAX),
        max_procs,
    })
}

async fn run(
    req: HttpRequest,
    state: web::Data<AppState>,
    envelope: web::Json<RunEnvelope>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let started = state.runners.run(envelope.into_inner()).await?;
    Ok(if started.created {
        HttpResponse::Created().json(started.started)
    } else {
        // The same envelope again: the runner already started, not a second one.
        HttpResponse::Ok().json(started.started)
    })
}

async fn procs(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let list = state.runners.list().await.map_err(ApiError::Internal)?;
    Ok(HttpResponse::Ok().json(list))
}

async fn kill(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let id: ProcId = path
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{:?} is not a process id", path.as_str())))?;
    let signalled = state.runners.kill(id).await?;
    Ok(HttpResponse::Ok().json(signalled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
