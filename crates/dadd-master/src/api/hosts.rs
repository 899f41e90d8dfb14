//! Host routes: registration and heartbeats from workers, listing, removal.

use std::collections::{BTreeMap, HashSet};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use dadd_spec::api::HostHeartbeat;
use dadd_spec::ProcState;

use super::{json, parse_json, read_body, State};
use crate::app::host_info;
use crate::error::ApiError;
use crate::store::{now_ms, Change};

/// `POST /api/hosts`: register or heartbeat (cluster secret).
pub(super) async fn heartbeat(
    st: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    st.auth.cluster(&req)?;
    let body = read_body(&req, payload, st.cfg.limits.json_bytes).await?;
    let hb: HostHeartbeat = parse_json(
        &body,
        "heartbeat ({\"host\", \"port\", \"max_procs\", \"version\", \"running\"})",
    )?;
    let mut problems = Vec::new();
    if hb.host.trim().is_empty() || hb.host.contains(['/', ' ', '@']) {
        problems.push(format!("host: {:?} is not a host name or address", hb.host));
    }
    if hb.port == 0 {
        problems.push("port: must be 1-65535".to_owned());
    }
    if hb.scheme != "http" && hb.scheme != "https" {
        problems.push(format!("scheme: {:?} is not http or https", hb.scheme));
    }
    if !problems.is_empty() {
        return Err(ApiError::BadRequest {
            error: "invalid heartbeat".into(),
            details: problems,
        });
    }
    let now = now_ms();
    let (host_id, _) = st
        .store
        .heartbeat(
            &hb.host,
            hb.port,
            &hb.scheme,
            hb.max_procs,
            &hb.version,
            now,
        )
        .await?;
    vanished(&st, host_id, &hb.running).await?;
    let row = st
        .store
        .get_host(&host_id.to_string())
        .await?
        .ok_or_else(|| ApiError::Internal(format!("host {host_id} vanished while heartbeating")))?;
    if row.busy < row.max_procs {
        st.wake.notify_one();
    }
    Ok(json(StatusCode::OK, &host_info(&row, st.ttl_ms(), now)))
}

/// A process the master placed on this host, setup or running, missing from
/// consecutive heartbeats is lost: its runner died without a word.
async fn vanished(st: &State, host_id: i64, running: &[i64]) -> Result<(), ApiError> {
    let alive: HashSet<i64> = running.iter().copied().collect();
    let limit = i64::from(st.cfg.liveness.missed_heartbeats.max(1));
    let mut reset = Vec::new();
    let mut bump: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (id, _state, missed) in st.store.active_on_host(host_id).await? {
        if alive.contains(&id) {
            if missed > 0 {
                reset.push(id);
            }
        } else if missed + 1 >= limit {
            tracing::warn!(
                proc = id,
                host = host_id,
                "runner missing from {} heartbeats: lost",
                missed + 1
            );
            st.change(
                id,
                Change::to(ProcState::Lost, Some("runner vanished"), now_ms()),
            )
            .await?;
        } else {
            bump.entry(missed + 1).or_default().push(id);
        }
    }
    st.store.set_missed(&reset, 0).await?;
    for (n, ids) in bump {
        st.store.set_missed(&ids, n).await?;
    }
    Ok(())
}

/// `GET /api/hosts`.
pub(super) async fn list(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let now = now_ms();
    let hosts = st.store.list_hosts().await?;
    let infos: Vec<_> = hosts
        .iter()
        .map(|h| host_info(h, st.ttl_ms(), now))
        .collect();
    Ok(json(StatusCode::OK, &infos))
}

fn key(req: &HttpRequest) -> String {
    req.match_info().get("host").unwrap_or_default().to_owned()
}

/// `GET /api/hosts/{id or host:port}`.
pub(super) async fn show(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let k = key(&req);
    let h = st.store.get_host(&k).await?.ok_or_else(|| no_host(&k))?;
    Ok(json(StatusCode::OK, &host_info(&h, st.ttl_ms(), now_ms())))
}

/// `DELETE /api/hosts/{id or host:port}`: its unfinished processes are lost.
pub(super) async fn delete(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let k = key(&req);
    let h = st.store.get_host(&k).await?.ok_or_else(|| no_host(&k))?;
    crate::liveness::lose_all(&st, h.id, "host removed").await?;
    st.store.delete_host(h.id).await?;
    tracing::info!(host = %h.address(), "host removed");
    Ok(HttpResponse::NoContent().finish())
}

fn no_host(k: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no host {k:?}: give its id or host:port (GET /api/hosts lists them)"
    ))
}
