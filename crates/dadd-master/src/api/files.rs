//! The file store: `PUT|GET|DELETE /files/{path}` and `GET /files/`.
//!
//! Files live under `<state_dir>/files`; an upload is streamed to a temp file
//! beside it (hashing as it goes) and renamed into place, so a reader never
//! sees half a file. Paths are checked on the raw URL, decoded once by us, so
//! no encoding trick can climb out of the store.

use std::path::{Component, Path, PathBuf};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use dadd_spec::api::FileEntry;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{content_length, json, State};
use crate::app::time;
use crate::error::ApiError;
use crate::store::{now_ms, FileRow};

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

/// `PUT /files/{path}`: stream to disk, answer the entry (sha256 as ETag).
pub async fn put(
    st: State,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let rel = path_of(&req)?;
    let limit = st.cfg.limits.file_bytes;
    if content_length(&req).is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let root = root(&st);
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
    tracing::info!(path = %row.path, size, "file stored");
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, format!("\"{}\"", row.sha256)))
        .json(entry(&row)))
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
    let row = st.store.get_file(&rel).await?.ok_or_else(|| {
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
    let path = root(&st).join(&rel);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError::NotFound(format!(
                "file {rel:?} is recorded in the store but missing from this master's {}: upload it again; with several masters, share that directory between them (docs/operations.md, \"Several masters\")",
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
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((header::ETAG, etag))
        .insert_header((header::CONTENT_LENGTH, row.size.to_string()))
        .streaming(stream))
}

/// `DELETE /files/{path}`.
pub async fn delete(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let rel = path_of(&req)?;
    if !st.store.delete_file(&rel).await? {
        return Err(ApiError::NotFound(format!("no file {rel:?} in the store")));
    }
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
