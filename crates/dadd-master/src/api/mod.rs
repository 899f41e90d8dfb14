//! The REST API: routes, body and query helpers, timeouts, the JSON 404.
//!
//! Bodies are read by hand (not with `web::Json`) so that every refusal (too
//! large, not JSON, a bad spec) is the same JSON `ErrorBody` with the right
//! status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::app::Shared;
use crate::config::secs;
use crate::error::ApiError;

pub mod files;
mod hosts;
mod logs;
pub mod misc;
mod procs;

/// The shared state as handlers see it.
pub type State = web::Data<Shared>;

/// Every route: (method, path, what it does). The OpenAPI document is built
/// from this table, and a test checks each one answers.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("post", "/api/procs", "submit a spec"),
    ("get", "/api/procs", "list processes, newest first"),
    ("get", "/api/procs/{id}", "one process in full"),
    ("delete", "/api/procs/{id}", "kill a process"),
    ("post", "/api/procs/{id}/kill", "kill a process"),
    ("put", "/api/procs/{id}/state", "a runner's state report"),
    (
        "post",
        "/api/procs/{id}/{state}",
        "a runner's state report (original form)",
    ),
    (
        "put",
        "/api/procs/{id}/logfile",
        "append a log chunk at ?offset=",
    ),
    ("post", "/api/procs/{id}/logfile", "upload the whole log"),
    (
        "get",
        "/api/procs/{id}/logfile",
        "read the log, whole or from ?offset=",
    ),
    ("post", "/api/hosts", "a worker's registration or heartbeat"),
    ("get", "/api/hosts", "list worker hosts"),
    ("get", "/api/hosts/{host}", "one host, by id or host:port"),
    ("delete", "/api/hosts/{host}", "forget a host"),
    ("get", "/api/health", "whether the store answers"),
    ("get", "/api/openapi.json", "this API's OpenAPI document"),
    (
        "get",
        "/api/stats",
        "the dashboard's summary: processes per state, hosts up, submissions per minute",
    ),
    ("get", "/metrics", "Prometheus metrics"),
    ("get", "/files", "list the file store"),
    ("put", "/files/{path}", "store a file"),
    ("get", "/files/{path}", "fetch a file"),
    ("delete", "/files/{path}", "delete a file"),
];

/// Registers every route on an app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("")
            .route("/api/procs", web::post().to(procs::submit))
            .route("/api/procs", web::get().to(procs::list))
            .route("/api/procs/{id}", web::get().to(procs::show))
            .route("/api/procs/{id}", web::delete().to(procs::kill))
            .route("/api/procs/{id}/kill", web::post().to(procs::kill))
            .route("/api/procs/{id}/state", web::put().to(procs::report))
            .route("/api/procs/{id}/logfile", web::put().to(logs::append))
            .route("/api/procs/{id}/logfile", web::post().to(logs::upload))
            .route("/api/procs/{id}/logfile", web::get().to(logs::read))
            .route(
                "/api/procs/{id}/{state}",
                web::post().to(procs::report_original),
            )
            .route("/api/hosts", web::post().to(hosts::heartbeat))
            .route("/api/hosts", web::get().to(hosts::list))
            .route("/api/hosts/{host}", web::get().to(hosts::show))
            .route("/api/hosts/{host}", web::delete().to(hosts::delete))
            .route("/api/health", web::get().to(misc::health))
            .route("/api/openapi.json", web::get().to(misc::openapi))
            .route("/api/stats", web::get().to(crate::dashboard::stats))
            .route("/metrics", web::get().to(misc::metrics))
            .route("/files", web::get().to(files::list))
            .route("/files/{path:.*}", web::put().to(files::put))
            .route("/files/{path:.*}", web::get().to(files::get))
            .route("/files/{path:.*}", web::delete().to(files::delete))
            .configure(crate::dashboard::configure)
            .default_service(web::to(no_route)),
    );
}

async fn no_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route {} {}: the routes are listed at GET /api/openapi.json",
        req.method(),
        req.path()
    )))
}

/// Bounds the time of JSON requests; streamed logs and files are exempt
/// (their size, not a clock, bounds them).
pub async fn timeout(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let path = req.path();
    let streamed = path.ends_with("/logfile") || path.starts_with("/files");
    let limit = req
        .app_data::<State>()
        .map(|s| secs(s.cfg.limits.request_timeout_secs))
        .unwrap_or(Duration::from_secs(30));
    if streamed || limit.is_zero() {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    match tokio::time::timeout(limit, next.call(req)).await {
        Ok(r) => r.map(ServiceResponse::map_into_boxed_body),
        Err(_) => Err(ApiError::Unavailable(format!(
            "the request took longer than {:.1} s; retry later",
            limit.as_secs_f64()
        ))
        .into()),
    }
}

/// Reads a body of at most `limit` bytes (413 past it).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    if let Some(len) = content_length(req) {
        if len > limit as u64 {
            return Err(ApiError::TooLarge {
                limit: limit as u64,
            });
        }
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge {
                limit: limit as u64,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The request's declared length.
pub fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Parses a JSON body.
pub fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        error: format!("the body is not a valid {what}"),
        details: vec![e.to_string()],
    })
}

/// The query string as a map (last value wins).
pub fn query(req: &HttpRequest) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

/// A path segment that must be a process id.
pub fn proc_id(req: &HttpRequest) -> Result<i64, ApiError> {
    let raw = req.match_info().get("id").unwrap_or_default();
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no process {raw:?}: process ids are integers")))
}

/// The process `id`, or a 404 naming it.
pub async fn load_proc(
    store: &crate::store::Store,
    id: i64,
) -> Result<crate::store::ProcRow, ApiError> {
    store
        .get_proc(id)
        .await?
        .ok_or_else(|| ApiError::no_proc(id))
}

/// The state behind the request (set by the server).
pub fn shared(state: &State) -> Arc<Shared> {
    state.clone().into_inner()
}

/// A JSON answer.
pub fn json<T: serde::Serialize>(status: actix_web::http::StatusCode, v: &T) -> HttpResponse {
    HttpResponse::build(status).json(v)
}
