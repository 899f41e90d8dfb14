//! Log routes: chunks by byte offset (idempotent), the whole log, reading.
//!
//! Offsets are the runner's: past the per-process cap the master keeps the
//! head and the tail, drops the middle and says so in the log it serves, but
//! offsets keep counting, so a runner's next chunk always fits.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use dadd_spec::api::LogAppended;
use futures_util::StreamExt;

use super::{content_length, json, proc_id, query, read_body, State};
use crate::error::ApiError;
use crate::store::{Appended, Store};

/// Chunks read from the store per step of a streamed answer.
const CHUNKS_PER_READ: i64 = 4;

async fn authorize(st: &State, req: &HttpRequest, id: i64) -> Result<(), ApiError> {
    let row = st.store.get_proc(id).await?;
    let hashes = row.as_ref().map(|r| r.token_hashes()).unwrap_or_default();
    st.auth.process(req, &hashes)?;
    if row.is_none() {
        return Err(ApiError::no_proc(id));
    }
    Ok(())
}

fn appended(id: i64, a: Appended) -> Result<u64, ApiError> {
    match a {
        Appended::Size(n) => Ok(n),
        Appended::Gap(expected) => Err(ApiError::LogGap { expected }),
        Appended::NotFound => Err(ApiError::no_proc(id)),
    }
}

/// `PUT /api/procs/{id}/logfile?offset=N` with raw bytes.
pub(super) async fn append(
    st: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = proc_id(&req)?;
    authorize(&st, &req, id).await?;
    let q = query(&req);
    let offset: u64 = match q.get("offset") {
        Some(o) => o
            .parse()
            .map_err(|_| ApiError::bad(format!("bad ?offset={o}: give the chunk's byte offset")))?,
        None => {
            return Err(ApiError::bad(
                "missing ?offset=: give the chunk's byte offset",
            ))
        }
    };
    let body = read_body(&req, payload, st.cfg.limits.log_chunk_bytes).await?;
    let a = st
        .store
        .append_log(id, offset, &body, st.cfg.limits.log_cap_bytes)
        .await?;
    let offset = appended(id, a)?;
    Ok(json(StatusCode::OK, &LogAppended { offset }))
}

/// `POST /api/procs/{id}/logfile`: the whole log, streamed into chunks;
/// bytes already held are skipped, so a re-upload is harmless.
pub(super) async fn upload(
    st: State,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = proc_id(&req)?;
    authorize(&st, &req, id).await?;
    let limit = st.cfg.limits.log_upload_bytes;
    if content_length(&req).is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let chunk = st.cfg.limits.log_chunk_bytes.max(1);
    let cap = st.cfg.limits.log_cap_bytes;
    let mut pos = 0u64;
    let mut buf = BytesMut::with_capacity(chunk);
    let mut size = 0u64;
    while let Some(part) = payload.next().await {
        let part = part.map_err(|e| ApiError::bad(format!("cannot read the log: {e}")))?;
        if pos + (buf.len() + part.len()) as u64 > limit {
            return Err(ApiError::TooLarge { limit });
        }
        buf.extend_from_slice(&part);
        while buf.len() >= chunk {
            let piece = buf.split_to(chunk);
            size = appended(id, st.store.append_log(id, pos, &piece, cap).await?)?;
            pos += piece.len() as u64;
        }
    }
    if !buf.is_empty() || pos == 0 {
        size = appended(id, st.store.append_log(id, pos, &buf, cap).await?)?;
    }
    Ok(json(StatusCode::OK, &LogAppended { offset: size }))
}

/// `GET /api/procs/{id}/logfile[?offset=N]`, streamed from the chunks.
pub(super) async fn read(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let id = proc_id(&req)?;
    let row = super::load_proc(&st.store, id).await?;
    let q = query(&req);
    let offset: u64 = match q.get("offset") {
        Some(o) => o
            .parse()
            .map_err(|_| ApiError::bad(format!("bad ?offset={o}: give a byte offset")))?,
        None => 0,
    };
    let start = if offset > 0 {
        st.store.log_chunk_start(id, offset).await?.unwrap_or(0)
    } else {
        0
    };
    let stream = log_stream(st.store.clone(), id, start, offset);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header(("X-Dadd-Log-Size", row.log_size.to_string()))
        .streaming(stream))
}

struct Cursor {
    store: Store,
    id: i64,
    from: i64,
    skip_to: u64,
    prev_end: Option<u64>,
    done: bool,
}

/// Reads a few chunks at a time; a hole left by the cap becomes a marker line.
fn log_stream(
    store: Store,
    id: i64,
    from: i64,
    skip_to: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let cur = Cursor {
        store,
        id,
        from,
        skip_to,
        prev_end: None,
        done: false,
    };
    futures_util::stream::unfold(cur, |mut c| async move {
        if c.done {
            return None;
        }
        let chunks = match c.store.log_chunks(c.id, c.from, CHUNKS_PER_READ).await {
            Ok(ch) => ch,
            Err(e) => {
                c.done = true;
                let err: actix_web::Error = ApiError::from(e).into();
                return Some((Err(err), c));
            }
        };
        if chunks.is_empty() {
            return None;
        }
        let mut out = BytesMut::new();
        for (off, data) in chunks {
            let off_u = u64::try_from(off).unwrap_or(0);
            let end = off_u + data.len() as u64;
            if let Some(pe) = c.prev_end {
                if off_u > pe && end > c.skip_to {
                    out.extend_from_slice(
                        format!(
                            "\n[dadd: {} bytes of this log were dropped here: it passed the master's log cap (limits.log_cap_bytes)]\n",
                            off_u - pe
                        )
                        .as_bytes(),
                    );
                }
            }
            let skip = usize::try_from(c.skip_to.saturating_sub(off_u)).unwrap_or(usize::MAX);
            if skip < data.len() {
                out.extend_from_slice(&data[skip..]);
            }
            c.prev_end = Some(end);
            c.from = off + 1;
        }
        Some((Ok(out.freeze()), c))
    })
}
