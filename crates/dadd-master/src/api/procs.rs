//! Process routes: submit, list, show, kill, and the runners' state reports.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use dadd_spec::api::{ProcDetail, ProcList, StateChange, StateReport};
use dadd_spec::{ProcState, UnknownKeys};
use serde::Deserialize;

use super::{json, parse_json, proc_id, query, read_body, State};
use crate::app::{summary, time, Outcome};
use crate::error::ApiError;
use crate::store::{Change, ListFilter};

/// Largest page of `GET /api/procs`.
const MAX_LIMIT: i64 = 1000;
/// Default page.
const DEFAULT_LIMIT: i64 = 100;

/// `POST /api/procs`: validate, store `queued`, answer 201 at once.
pub(super) async fn submit(
    st: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let body = read_body(&req, payload, st.cfg.limits.spec_bytes).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
            error: "invalid spec (1 problem)".into(),
            details: vec![format!("not valid JSON: {e}")],
        })?;
    let parsed =
        dadd_spec::parse_value(&value, UnknownKeys::Deny).map_err(|errs| ApiError::BadRequest {
            error: errs
                .to_string()
                .lines()
                .next()
                .unwrap_or("invalid spec")
                .to_owned(),
            details: errs.lines(),
        })?;
    let text = serde_json::to_string(&value).map_err(|e| ApiError::Internal(e.to_string()))?;
    let row = st
        .store
        .insert_proc(&text, &parsed.spec.cmd, st.now())
        .await?;
    tracing::info!(proc = row.id, cmd = ?row.cmd, "submitted");
    st.wake.notify_one();
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/procs/{}", row.id)))
        .json(summary(&row)))
}

/// `GET /api/procs?state=&host=&limit=&next=`.
pub(super) async fn list(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let q = query(&req);
    let mut f = ListFilter {
        limit: DEFAULT_LIMIT,
        ..ListFilter::default()
    };
    if let Some(s) = q.get("state").filter(|s| !s.is_empty()) {
        for part in s.split(',') {
            let state = part
                .trim()
                .parse::<ProcState>()
                .map_err(|e| ApiError::bad(format!("bad ?state=: {e}")))?;
            f.states.push(state);
        }
    }
    f.host = q.get("host").filter(|h| !h.is_empty()).cloned();
    if let Some(l) = q.get("limit") {
        f.limit = l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "bad ?limit={l}: give a number from 1 to {MAX_LIMIT}"
                ))
            })?;
    }
    if let Some(n) = q.get("next").filter(|n| !n.is_empty()) {
        f.before = Some(n.parse().map_err(|_| {
            ApiError::bad(format!(
                "bad ?next={n}: pass the `next` of the previous page"
            ))
        })?);
    }
    let limit = f.limit;
    f.limit += 1;
    let mut rows = st.store.list_procs(&f).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(json(
        StatusCode::OK,
        &ProcList {
            procs: rows.iter().map(summary).collect(),
            next,
        },
    ))
}

/// `GET /api/procs/{id}`.
pub(super) async fn show(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let id = proc_id(&req)?;
    let row = super::load_proc(&st.store, id).await?;
    let history = st.store.history(id).await?;
    let detail = ProcDetail {
        summary: summary(&row),
        spec: serde_json::from_str(&row.spec).unwrap_or(serde_json::Value::Null),
        history: history
            .into_iter()
            .map(|h| StateChange {
                state: h.state,
                at: time(h.at),
                reason: h.reason,
            })
            .collect(),
        log_url: format!("/api/procs/{id}/logfile"),
        log_size: u64::try_from(row.log_size).unwrap_or(0),
    };
    Ok(json(StatusCode::OK, &detail))
}

/// `DELETE /api/procs/{id}` and `POST /api/procs/{id}/kill`.
///
/// A queued process is killed at once (200); a placed one is stopped through
/// its worker and its runner reports `killed` (202); a final one is 409.
pub(super) async fn kill(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let id = proc_id(&req)?;
    for _ in 0..8 {
        let row = super::load_proc(&st.store, id).await?;
        if row.state.is_final() {
            return Err(ApiError::BadTransition {
                error: format!("process {id} is already {}", row.state),
                current: row.state,
            });
        }
        if row.state == ProcState::Queued {
            let c = Change::to(ProcState::Killed, Some("killed before placement"), st.now());
            if st.change_from(id, ProcState::Queued, &c).await? {
                let row = super::load_proc(&st.store, id).await?;
                return Ok(json(StatusCode::OK, &summary(&row)));
            }
            continue; // placed meanwhile: stop it through its worker
        }
        let host = match row.host_id {
            Some(h) => st.store.get_host(&h.to_string()).await?,
            None => None,
        };
        let Some(host) = host else {
            return killed_here(&st, id, "its host is no longer known").await;
        };
        let timeout = crate::config::secs(st.cfg.dispatch.worker_timeout_secs);
        let client = crate::workers::client(&st.client_tls, timeout, 2);
        let secret = st.cfg.auth.cluster_secret.as_deref();
        return match crate::workers::kill(&client, &host.url(), secret, id).await {
            Ok(_) => {
                tracing::info!(proc = id, host = %host.address(), "kill sent to the worker");
                Ok(json(StatusCode::ACCEPTED, &summary(&row)))
            }
            Err(crate::workers::CallError::Status { status, .. })
                if status == StatusCode::NOT_FOUND =>
            {
                killed_here(&st, id, "not running on its worker when killed").await
            }
            Err(e) => Err(ApiError::BadGateway(format!(
                "{e}; the process may still run: retry the kill"
            ))),
        };
    }
    Err(ApiError::Conflict(format!(
        "process {id} keeps changing state; retry the kill"
    )))
}

async fn killed_here(st: &State, id: i64, reason: &str) -> Result<HttpResponse, ApiError> {
    match st
        .change(id, Change::to(ProcState::Killed, Some(reason), st.now()))
        .await?
    {
        Outcome::Applied(r) | Outcome::Repeat(r) => Ok(json(StatusCode::OK, &summary(&r))),
        Outcome::Illegal(current) => Err(ApiError::BadTransition {
            error: format!("process {id} is already {current}"),
            current,
        }),
        Outcome::NotFound => Err(ApiError::no_proc(id)),
    }
}

/// The optional body of the original `POST /api/procs/{id}/{state}`.
#[derive(Debug, Default, Deserialize)]
struct ReportFields {
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    signal: Option<i32>,
    #[serde(default)]
    reason: Option<String>,
}

/// `PUT /api/procs/{id}/state` with a `StateReport`.
pub(super) async fn report(
    st: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = proc_id(&req)?;
    authorize_report(&st, &req, id).await?;
    let body = read_body(&req, payload, st.cfg.limits.json_bytes).await?;
    let r: StateReport = parse_json(
        &body,
        "state report ({\"state\", \"pid\", \"exit_code\", \"signal\", \"reason\"})",
    )?;
    apply(&st, id, r).await
}

/// `POST /api/procs/{id}/{state}`, the original form; the body is optional.
pub(super) async fn report_original(
    st: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = proc_id(&req)?;
    let name = req.match_info().get("state").unwrap_or_default().to_owned();
    let state: ProcState = name.parse().map_err(|e: dadd_spec::UnknownState| {
        ApiError::NotFound(format!("no route POST /api/procs/{id}/{name}: {e}"))
    })?;
    authorize_report(&st, &req, id).await?;
    let body = read_body(&req, payload, st.cfg.limits.json_bytes).await?;
    let f: ReportFields = if body.iter().all(u8::is_ascii_whitespace) {
        ReportFields::default()
    } else {
        parse_json(
            &body,
            "report body ({\"pid\", \"exit_code\", \"signal\", \"reason\"})",
        )?
    };
    apply(
        &st,
        id,
        StateReport {
            state,
            pid: f.pid,
            exit_code: f.exit_code,
            signal: f.signal,
            reason: f.reason,
        },
    )
    .await
}

async fn authorize_report(st: &State, req: &HttpRequest, id: i64) -> Result<(), ApiError> {
    // Unknown process: only an API token gets through (to the 404).
    let row = st.store.get_proc(id).await?;
    let hashes = row.as_ref().map(|r| r.token_hashes()).unwrap_or_default();
    st.auth.process(req, &hashes)
}

async fn apply(st: &State, id: i64, r: StateReport) -> Result<HttpResponse, ApiError> {
    if !r.state.is_runner_report() {
        return Err(ApiError::bad(format!(
            "a runner cannot report {}: it reports setup, running, success, failed or killed",
            r.state
        )));
    }
    let change = Change {
        to: r.state,
        pid: r.pid.map(i64::from),
        exit_code: r.exit_code.map(i64::from),
        signal: r.signal.map(i64::from),
        reason: r.reason,
        at: st.now(),
        notice: false,
    };
    match st.change(id, change).await? {
        Outcome::Applied(row) | Outcome::Repeat(row) => Ok(json(StatusCode::OK, &summary(&row))),
        Outcome::Illegal(current) => Err(ApiError::BadTransition {
            error: format!("a {current} process cannot become {}", r.state),
            current,
        }),
        Outcome::NotFound => Err(ApiError::no_proc(id)),
    }
}
