//! The file store: `PUT|GET|DELETE /files/{path}` and `GET /files/`.
//!
//! Names, sizes and checksums are rows of the store's `files` table. The
//! bytes depend on the database:
//!
//! - SQLite (one master): under `<state_dir>/files`; an upload is streamed to
//!   a temp file beside it (hashing as it goes) and renamed into place, so a
//!   reader never sees half a file.
//! - Postgres (one or several masters): in the database, as chunks of a blob
//!   (`crate::filestore`), so every master serves every file; an upload is
//!   streamed into a fresh blob and the row switched to it at the end, so a
//!   reader never sees half a file either. A row without a blob (uploaded
//!   before the bytes moved into the database) is served from this master's
//!   disk, as before.
//!
//! Paths are checked on the raw URL, decoded once by us, so no encoding trick
//! can climb out of the store.

use std::path::{Component, Path, PathBuf};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use dadd_spec::api::FileEntry;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{content_length, json, State};
use crate::app::time;
use crate::error::ApiError;
use crate::filestore::{Committed, CHUNK_BYTES};
use crate::store::{now_ms, Backend, FileRow, Store};

/// Blob chunks read from the store per step of a streamed download.
const CHUNKS_PER_READ: i64 = 2;

/// A path that cannot be a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad file path {path:?}: {reason}")]
pub struct BadPath {
    /// The path as given.
    pub path: String,
    /// Why.
    pub reason: &'static str,
}

/// Checks a raw (still percent-encoded) path under `/files/` and returns
/// it decoded: relative, plain segments, no `..`, NUL or backslash.
pub fn clean_path(raw: &str) -> Result<String, BadPath> {
    let bad = |reason| BadPath {
        path: raw.to_owned(),
        reason,
    };
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| bad("not UTF-8 once decoded"))?
        .into_owned();
    if decoded.is_empty() {
        return Err(bad("empty"));
    }
    if decoded.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if decoded.contains('\\') {
        return Err(bad("contains a backslash"));
    }
    if decoded.contains('%') {
        return Err(bad("contains '%' (double encoding is refused)"));
    }
    if decoded.starts_with('/') {
        return Err(bad("absolute"));
    }
    if decoded.len() > 1024 {
        return Err(bad("longer than 1024 bytes"));
    }
    for seg in decoded.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad("has an empty, '.' or '..' segment"));
        }
        if seg.chars().any(char::is_control) {
            return Err(bad("contains a control character"));
        }
    }
    let p = Path::new(&decoded);
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("leaves the store"));
    }
    Ok(decoded)
}

fn root(st: &State) -> PathBuf {
    st.cfg.state_dir.join("files")
}

fn path_of(req: &HttpRequest) -> Result<String, ApiError> {
    let raw = req.uri().path();
    let raw = raw.strip_prefix("/files/").unwrap_or("");
    clean_path(raw).map_err(|e| ApiError::bad(e.to_string()))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ApiError {
    tracing::error!(path = %path.display(), error = %e, "file store {what} failed");
    ApiError::Internal(format!(
        "file store {what} failed for {}: {e}",
        path.display()
    ))
}

/// `PUT /files/{path}`: stream to the store (disk or database), answer the
/// entry (sha256 as ETag).
pub async fn put(
    st: State,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let rel = path_of(&req)?;
    let limit = st.cfg.limits.file_bytes;
    if content_length(&req).is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let row = match st.store.backend() {
        Backend::Postgres => put_db(&st, rel, payload, limit).await?,
        Backend::Sqlite => put_disk(&st, rel, payload, limit).await?,
    };
    tracing::info!(path = %row.path, size = row.size, "file stored");
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, format!("\"{}\"", row.sha256)))
        .json(entry(&row)))
}

/// Streams an upload to `<state_dir>/files` and records it.
async fn put_disk(
    st: &State,
    rel: String,
    mut payload: web::Payload,
    limit: u64,
) -> Result<FileRow, ApiError> {
    let root = root(st);
    let dest = root.join(&rel);
    let tmp_dir = st.cfg.state_dir.join("files.tmp");
    for d in [&root, &tmp_dir] {
        tokio::fs::create_dir_all(d)
            .await
            .map_err(|e| io_err("mkdir", d, e))?;
    }
    let tmp = tmp_dir.join(crate::auth::mint_token());
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| io_err("create", &tmp, e))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let result: Result<(), ApiError> = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::bad(format!("cannot read the upload: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(ApiError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| io_err("write", &tmp, e))?;
        }
        file.sync_all().await.map_err(|e| io_err("sync", &tmp, e))?;
        if let Some(parent) = dest.parent() {
            if parent.is_file() {
                return Err(ApiError::Conflict(format!(
                    "{rel}: a parent of this path is a file"
                )));
            }
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_err("mkdir", parent, e))?;
        }
        if dest.is_dir() {
            return Err(ApiError::Conflict(format!(
                "{rel} is a directory of the store"
            )));
        }
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(|e| io_err("rename", &dest, e))?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let row = FileRow {
        path: rel,
        size: size as i64,
        sha256: hex::encode(hasher.finalize()),
        modified: now_ms(),
    };
    st.store.put_file(&row).await?;
    Ok(row)
}

fn clash_err(rel: &str, other: &str) -> ApiError {
    if rel.starts_with(&format!("{other}/")) {
        ApiError::Conflict(format!("{rel}: a parent of this path is a file"))
    } else {
        ApiError::Conflict(format!("{rel} is a directory of the store"))
    }
}

/// A blob being uploaded: dropped with its chunks unless the upload was
/// committed (also when the request is dropped mid-upload).
struct BlobGuard {
    store: Store,
    blob: String,
    armed: bool,
}

impl BlobGuard {
    /// Deletes the blob's chunks now.
    async fn discard(mut self) {
        self.armed = false;
        if let Err(e) = self.store.drop_blob(&self.blob).await {
            tracing::warn!(blob = %self.blob, error = %e, "cannot delete the chunks of a failed upload; the orphan pruning removes them later");
        }
    }
}

impl Drop for BlobGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // shutting down: the orphan pruning removes it later
        };
        let store = self.store.clone();
        let blob = std::mem::take(&mut self.blob);
        rt.spawn(async move {
            if let Err(e) = store.drop_blob(&blob).await {
                tracing::warn!(%blob, error = %e, "cannot delete the chunks of an abandoned upload; the orphan pruning removes them later");
            }
        });
    }
}

/// Streams an upload into a fresh blob in the database, chunk by chunk
/// (memory stays near one chunk), and points the file's row at it.
async fn put_db(
    st: &State,
    rel: String,
    mut payload: web::Payload,
    limit: u64,
) -> Result<FileRow, ApiError> {
    if let Some(other) = st.store.file_path_clash(&rel).await? {
        return Err(clash_err(&rel, &other));
    }
    let guard = BlobGuard {
        store: st.store.clone(),
        blob: crate::auth::mint_token(),
        armed: true,
    };
    let result: Result<FileRow, ApiError> = async {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut seq = 0i64;
        let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
        while let Some(part) = payload.next().await {
            let part = part.map_err(|e| ApiError::bad(format!("cannot read the upload: {e}")))?;
            size += part.len() as u64;
            if size > limit {
                return Err(ApiError::TooLarge { limit });
            }
            hasher.update(&part);
            buf.extend_from_slice(&part);
            while buf.len() >= CHUNK_BYTES {
                let piece = buf.split_to(CHUNK_BYTES);
                st.store.put_blob_chunk(&guard.blob, seq, &piece).await?;
                seq += 1;
            }
        }
        if !buf.is_empty() {
            st.store.put_blob_chunk(&guard.blob, seq, &buf).await?;
            seq += 1;
        }
        let row = FileRow {
            path: rel.clone(),
            size: size as i64,
            sha256: hex::encode(hasher.finalize()),
            modified: now_ms(),
        };
        match st.store.commit_blob(&row, &guard.blob, seq).await? {
            Committed::Stored => Ok(row),
            Committed::Clash(other) => Err(clash_err(&rel, &other)),
            Committed::Incomplete { found } => Err(ApiError::Unavailable(format!(
                "{rel}: the upload lost chunks while it was written ({found} of {seq} left; a stalled upload is pruned as an orphan): upload it again"
            ))),
        }
    }
    .await;
    match result {
        Ok(row) => {
            let mut guard = guard;
            guard.armed = false;
            Ok(row)
        }
        Err(e) => {
            guard.discard().await;
            Err(e)
        }
    }
}

fn entry(r: &FileRow) -> FileEntry {
    FileEntry {
        path: r.path.clone(),
        size: u64::try_from(r.size).unwrap_or(0),
        sha256: r.sha256.clone(),
        modified: time(r.modified),
    }
}

/// The header a runner names its process with when it downloads from the
/// store with that process's token.
pub const PROCESS_HEADER: &str = "x-dadd-process";

/// Who may read a file: a user (an API token), or the runner of an
/// unfinished process with that process's token, named by `X-Dadd-Process`:
/// specs download from the store, and runners hold no API token.
async fn may_read(st: &State, req: &HttpRequest) -> Result<(), ApiError> {
    let user = st.auth.user(req);
    if user.is_ok() {
        return user;
    }
    let Some(id) = req
        .headers()
        .get(PROCESS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
    else {
        return user;
    };
    match st.store.get_proc(id).await? {
        Some(row) if !row.state.is_final() && row.token_hash.is_some() => {
            st.auth.process(req, &row.token_hashes())
        }
        _ => user,
    }
}

/// `GET /files/{path}`: streamed, with the sha256 ETag (304 on a match).
pub async fn get(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    may_read(&st, &req).await?;
    let rel = path_of(&req)?;
    let (row, blob) = st.store.file_blob(&rel).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no file {rel:?} in the store (GET /files/ lists them)"
        ))
    })?;
    let etag = format!("\"{}\"", row.sha256);
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    let ok = || {
        let mut r = HttpResponse::Ok();
        r.content_type("application/octet-stream")
            .insert_header((header::ETAG, etag.clone()))
            .insert_header((header::CONTENT_LENGTH, row.size.to_string()));
        r
    };
    if let Some(blob) = blob {
        let size = u64::try_from(row.size).unwrap_or(0);
        return Ok(ok().streaming(blob_stream(st.store.clone(), blob, size)));
    }
    let path = root(&st).join(&rel);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            let fix = match st.store.backend() {
                Backend::Postgres => "it was uploaded before the masters kept file bytes in the database, through another master: upload it again",
                Backend::Sqlite => "upload it again",
            };
            ApiError::NotFound(format!(
                "file {rel:?} is recorded in the store but missing from this master's {}: {fix}",
                root(&st).display()
            ))
        } else {
            io_err("open", &path, e)
        }
    })?;
    let stream = futures_util::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 64 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(ok().streaming(stream))
}

struct BlobCursor {
    store: Store,
    blob: String,
    next: i64,
    sent: u64,
    size: u64,
}

fn changed(what: &str) -> actix_web::Error {
    tracing::warn!("file download cut short: {what}");
    ApiError::Conflict(format!(
        "the file changed while it was being sent ({what}): download it again"
    ))
    .into()
}

/// Streams a blob's chunks in order, a few per read; a blob replaced or
/// deleted meanwhile ends the answer with an error (never a short file).
fn blob_stream(
    store: Store,
    blob: String,
    size: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    let cur = BlobCursor {
        store,
        blob,
        next: 0,
        sent: 0,
        size,
    };
    futures_util::stream::unfold(Some(cur), |c| async move {
        let mut c = c?;
        let chunks = match c.store.blob_chunks(&c.blob, c.next, CHUNKS_PER_READ).await {
            Ok(ch) => ch,
            Err(e) => return Some((Err(ApiError::from(e).into()), None)),
        };
        if chunks.is_empty() {
            if c.sent == c.size {
                return None;
            }
            return Some((Err(changed("chunks went missing")), None));
        }
        let mut out = BytesMut::new();
        for (seq, data) in chunks {
            if seq != c.next {
                return Some((Err(changed("a chunk went missing")), None));
            }
            c.sent += data.len() as u64;
            c.next += 1;
            out.extend_from_slice(&data);
        }
        if c.sent > c.size {
            return Some((Err(changed("longer than recorded")), None));
        }
        Some((Ok(out.freeze()), Some(c)))
    })
}

/// `DELETE /files/{path}`: the row and the bytes.
pub async fn delete(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let rel = path_of(&req)?;
    let existed = match st.store.backend() {
        Backend::Postgres => st.store.delete_file_blob(&rel).await?,
        Backend::Sqlite => st.store.delete_file(&rel).await?,
    };
    if !existed {
        return Err(ApiError::NotFound(format!("no file {rel:?} in the store")));
    }
    // Also a copy on this master's disk (SQLite, or a file uploaded to
    // Postgres before its bytes moved into the database).
    let path = root(&st).join(&rel);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("delete", &path, e)),
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /files/`: every file, by path.
pub async fn list(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let rows = st.store.list_files().await?;
    let entries: Vec<FileEntry> = rows.iter().map(entry).collect();
    Ok(json(StatusCode::OK, &entries))
}

#[cfg(test)]
mod tests {
    use super::clean_path;

    #[test]
    fn plain_paths_pass() {
        assert_eq!(clean_path("a/b.json").as_deref(), Ok("a/b.json"));
        assert_eq!(clean_path("my%20file.txt").as_deref(), Ok("my file.txt"));
        assert_eq!(clean_path(".env").as_deref(), Ok(".env"));
    }

    #[test]
    fn escapes_are_refused() {
        for p in [
            "../x",
            "a/../../x",
            "%2e%2e/x",
            "%2E%2E%2Fx",
            "a/%2e%2e",
            "/etc/passwd",
            "%2fetc",
            "a\\..\\x",
            "a%5c..",
            "a%00b",
            "a//b",
            "./a",
            "%252e%252e/x",
            "",
        ] {
            assert!(clean_path(p).is_err(), "{p} must be refused");
        }
    }
}
