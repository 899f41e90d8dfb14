//! Health, metrics and the OpenAPI document.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use dadd_spec::api::Health;
use serde_json::{json, Map, Value};

use super::{json, State, ROUTES};
use crate::error::ApiError;
use crate::store::now_ms;

/// `GET /api/health`: open to all (load balancers), 503 when the store is down.
pub(super) async fn health(st: State) -> HttpResponse {
    let ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await,
        Ok(Ok(()))
    );
    let body = Health {
        status: if ok { "ok" } else { "degraded" }.to_owned(),
        store: st.store.backend().name().to_owned(),
        version: dadd_spec::VERSION.to_owned(),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

/// `GET /metrics` (Prometheus text).
pub(super) async fn metrics(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let up = st.store.live_hosts(now_ms() - st.ttl_ms()).await?.len() as u64;
    let text = st.metrics.render(&st.store, up).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// `GET /api/openapi.json`.
pub(super) async fn openapi() -> HttpResponse {
    json(StatusCode::OK, &document())
}

/// Which credential a route takes.
fn security(method: &str, path: &str) -> Value {
    if path == "/api/health" || path == "/api/openapi.json" {
        json!([])
    } else if path == "/api/hosts" && method == "post" {
        json!([{"clusterSecret": []}])
    } else if path.ends_with("/state")
        || path.ends_with("/{state}")
        || (path.ends_with("/logfile") && method != "get")
    {
        json!([{"processToken": []}, {"apiToken": []}])
    } else {
        json!([{"apiToken": []}])
    }
}

fn responses(method: &str, path: &str) -> Value {
    let err = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    let mut r = Map::new();
    let ok = match (method, path) {
        ("post", "/api/procs") => "201",
        ("delete", "/api/hosts/{host}") => "204",
        _ => "200",
    };
    r.insert(ok.into(), json!({"description": "success"}));
    if method == "delete" && path == "/api/procs/{id}" || path == "/api/procs/{id}/kill" {
        r.insert(
            "202".into(),
            json!({"description": "kill sent to the worker; the runner reports killed"}),
        );
        r.insert("502".into(), err.clone());
    }
    for code in ["400", "401", "403", "404", "409", "413", "503"] {
        r.insert(code.into(), err.clone());
    }
    Value::Object(r)
}

/// The OpenAPI 3 document, built from [`ROUTES`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "summary": summary,
            "parameters": params,
            "security": security(method, path),
            "responses": responses(method, path),
        });
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Dadd master API", "version": dadd_spec::VERSION,
                  "description": "See docs/api.md for every route's bodies, status codes and a curl example."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer", "description": "one of auth.api_tokens"},
                "clusterSecret": {"type": "http", "scheme": "bearer", "description": "auth.cluster_secret"},
                "processToken": {"type": "http", "scheme": "bearer", "description": "the per-process token of the RunEnvelope"}
            },
            "schemas": {
                "ErrorBody": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "string"}},
                    "current_state": {"type": "string"},
                    "expected_offset": {"type": "integer"}
                }}
            }
        }
    })
}
