//! [`Client`]: one typed async method per route of the master's REST API.
//!
//! Built on awc, so it runs on an actix (single-threaded tokio) runtime:
//! call it from `#[actix_rt::main]`, `#[actix_web::test]` or an actix-web
//! handler. Bodies that can be large (logs, files) are streamed, never held
//! whole in memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use awc::http::header;
use awc::http::StatusCode;
use bytes::Bytes;
use dadd_spec::api::{
    ErrorBody, FileEntry, Health, HostHeartbeat, HostInfo, LogAppended, ProcDetail, ProcId,
    ProcList, ProcSummary, StateReport,
};
use dadd_spec::ProcState;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use url::Url;

use crate::error::{Error, Result};

/// Largest JSON answer read whole (a page of processes, a host list).
const JSON_LIMIT: usize = 64 * 1024 * 1024;
/// Largest error body kept for the message.
const ERROR_LIMIT: usize = 64 * 1024;
/// Chunk size when streaming a file upload.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// How to reach the master.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    master: String,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    timeout: Duration,
}

impl ClientBuilder {
    /// A client of the master at `master` (`http://127.0.0.1:5000`).
    pub fn new(master: impl Into<String>) -> Self {
        Self {
            master: master.into(),
            token: None,
            ca_file: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Send `Authorization: Bearer <token>` on every call (an API token, the
    /// cluster secret, or a per-process token).
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// Trust the CA certificates of this PEM file for an https master
    /// (default: the public web roots).
    pub fn ca_file(mut self, ca_file: Option<PathBuf>) -> Self {
        self.ca_file = ca_file;
        self
    }

    /// How long to wait for the master to answer (the head of the answer;
    /// streamed bodies have no deadline). Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client. Fails on a malformed URL or an unusable CA file.
    pub fn build(self) -> Result<Client> {
        let mut base = Url::parse(&self.master).map_err(|e| Error::Url {
            url: self.master.clone(),
            message: format!("{e}; expected something like http://127.0.0.1:5000"),
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Url {
                url: self.master.clone(),
                message: "the scheme must be http or https".into(),
            });
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(Error::Url {
                url: self.master.clone(),
                message: "it has no host".into(),
            });
        }
        // A base with a path prefix (`https://lb/dadd`) must end in `/` for joins.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut connector = awc::Connector::new().timeout(self.timeout);
        if base.scheme() == "https" {
            connector = connector.rustls_0_23(crate::tls::client_config(self.ca_file.as_deref())?);
        }
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(self.timeout)
            .disable_redirects()
            .finish();
        Ok(Client {
            base,
            token: self.token,
            http,
        })
    }
}

/// Filters and paging of `GET /api/procs`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListQuery {
    /// Only processes in this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ProcState>,
    /// Only processes on this host (`host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// At most this many per page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The cursor of a previous page's `next`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A typed client of the master's REST API.
#[derive(Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: awc::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.master_url())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Client {
    /// A client of `master` with default settings and no token.
    pub fn new(master: &str) -> Result<Client> {
        ClientBuilder::new(master).build()
    }

    /// The master's base URL, without credentials.
    pub fn master_url(&self) -> String {
        dadd_spec::redact_url(&self.base)
    }

    /// The URL of `path` (relative, no leading `/`) under the master.
    pub fn url(&self, path: &str) -> Result<Url> {
        self.base.join(path).map_err(|e| Error::Url {
            url: format!("{}{path}", self.master_url()),
            message: e.to_string(),
        })
    }

    /// The URL of a file in the master's store, each path segment encoded.
    pub fn file_url(&self, remote: &str) -> Result<Url> {
        let mut url = self.url("files/")?;
        {
            let mut segments = url.path_segments_mut().map_err(|()| Error::Url {
                url: self.master_url(),
                message: "it cannot hold a path".into(),
            })?;
            segments.pop_if_empty();
            for part in remote.split('/').filter(|p| !p.is_empty()) {
                segments.push(part);
            }
        }
        Ok(url)
    }

    fn request(&self, method: awc::http::Method, url: &Url) -> awc::ClientRequest {
        let req = self.http.request(method, url.as_str());
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Sends a request, turning connection failures and error statuses into [`Error`].
    async fn send(
        &self,
        req: awc::ClientRequest,
        url: &Url,
        body: Body,
    ) -> Result<
        awc::ClientResponse<
            impl Stream<Item = std::result::Result<Bytes, awc::error::PayloadError>>,
        >,
    > {
        let method = req.get_method().to_string();
        let sent = match body {
            Body::None => req.send().await,
            Body::Json(value) => req.send_json(&value).await,
            Body::Bytes(bytes) => {
                req.insert_header((header::CONTENT_TYPE, "application/octet-stream"))
                    .send_body(bytes)
                    .await
            }
            Body::File { file, len } => {
                let stream = file_stream(file);
                req.insert_header((header::CONTENT_TYPE, "application/octet-stream"))
                    .send_body(awc::body::SizedStream::new(len, stream))
                    .await
            }
        };
        let mut resp = sent.map_err(|e| Error::Connect {
            url: redact(url),
            message: e.to_string(),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let raw = resp.body().limit(ERROR_LIMIT).await.unwrap_or_default();
        Err(Error::Api {
            method,
            url: redact(url),
            status: status.as_u16(),
            body: error_body(status, &raw),
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Body,
    ) -> Result<T> {
        let url = self.url(path)?;
        self.json_at(method, &url, body).await
    }

    async fn json_at<T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        url: &Url,
        body: Body,
    ) -> Result<T> {
        let req = self.request(method, url);
        let mut resp = self.send(req, url, body).await?;
        let raw = resp
            .body()
            .limit(JSON_LIMIT)
            .await
            .map_err(|e| Error::Decode {
                url: redact(url),
                message: e.to_string(),
            })?;
        serde_json::from_slice(&raw).map_err(|e| Error::Decode {
            url: redact(url),
            message: e.to_string(),
        })
    }

    async fn no_content(&self, method: awc::http::Method, url: &Url, body: Body) -> Result<()> {
        let req = self.request(method, url);
        let mut resp = self.send(req, url, body).await?;
        // Drain the body so the connection can be reused.
        let _ = resp.body().limit(ERROR_LIMIT).await;
        Ok(())
    }

    // ---- health -------------------------------------------------------

    /// `GET /api/health`: the master is up and its store reachable.
    pub async fn health(&self) -> Result<Health> {
        self.json(awc::http::Method::GET, "api/health", Body::None)
            .await
    }

    // ---- processes ----------------------------------------------------

    /// `POST /api/procs`: submits a spec; the master validates it (400 with
    /// every problem) and answers the new process, `queued`.
    pub async fn submit(&self, spec: &Value) -> Result<ProcSummary> {
        self.json(
            awc::http::Method::POST,
            "api/procs",
            Body::Json(spec.clone()),
        )
        .await
    }

    /// `GET /api/procs`: one page, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<ProcList> {
        let mut url = self.url("api/procs")?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(state) = query.state {
                pairs.append_pair("state", state.as_str());
            }
            if let Some(host) = &query.host {
                pairs.append_pair("host", host);
            }
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(next) = &query.next {
                pairs.append_pair("next", next);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.json_at(awc::http::Method::GET, &url, Body::None).await
    }

    /// `GET /api/procs/{id}`: the process in full.
    pub async fn get(&self, id: ProcId) -> Result<ProcDetail> {
        self.json(
            awc::http::Method::GET,
            &format!("api/procs/{id}"),
            Body::None,
        )
        .await
    }

    /// `DELETE /api/procs/{id}`: stops the process (a queued one is `killed`
    /// at once; a placed one through its worker, and its runner then reports
    /// `killed`). Answers the process as the master sees it now.
    pub async fn kill(&self, id: ProcId) -> Result<ProcSummary> {
        self.json(
            awc::http::Method::DELETE,
            &format!("api/procs/{id}"),
            Body::None,
        )
        .await
    }

    /// `PUT /api/procs/{id}/state`: a runner's state report (use a client
    /// holding that process's token).
    pub async fn report_state(&self, id: ProcId, report: &StateReport) -> Result<ProcSummary> {
        let body = serde_json::to_value(report).map_err(|e| Error::Decode {
            url: format!("api/procs/{id}/state"),
            message: e.to_string(),
        })?;
        self.json(
            awc::http::Method::PUT,
            &format!("api/procs/{id}/state"),
            Body::Json(body),
        )
        .await
    }

    /// `PUT /api/procs/{id}/logfile?offset=N`: appends a chunk of log at byte
    /// `offset`. A gap is a 409 whose body names the offset expected.
    pub async fn append_log(&self, id: ProcId, offset: u64, chunk: Bytes) -> Result<LogAppended> {
        let mut url = self.url(&format!("api/procs/{id}/logfile"))?;
        url.query_pairs_mut()
            .append_pair("offset", &offset.to_string());
        self.json_at(awc::http::Method::PUT, &url, Body::Bytes(chunk))
            .await
    }

    /// `GET /api/procs/{id}/logfile[?offset=N]`: the log (from `offset`) as a
    /// stream of chunks.
    pub async fn log_stream(
        &self,
        id: ProcId,
        offset: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes>>> {
        let mut url = self.url(&format!("api/procs/{id}/logfile"))?;
        if let Some(offset) = offset {
            url.query_pairs_mut()
                .append_pair("offset", &offset.to_string());
        }
        let req = self.request(awc::http::Method::GET, &url);
        let resp = self.send(req, &url, Body::None).await?;
        let shown = redact(&url);
        Ok(resp.map(move |chunk| {
            chunk.map_err(|e| Error::Connect {
                url: shown.clone(),
                message: format!("the log stream broke: {e}"),
            })
        }))
    }

    /// The log (from `offset`) copied into `out`; answers the bytes copied.
    pub async fn copy_log<W: AsyncWrite + Unpin>(
        &self,
        id: ProcId,
        offset: Option<u64>,
        out: &mut W,
    ) -> Result<u64> {
        let stream = self.log_stream(id, offset).await?;
        copy_stream(stream, out, "standard output").await
    }

    // ---- hosts --------------------------------------------------------

    /// `GET /api/hosts`: every worker the master knows.
    pub async fn hosts(&self) -> Result<Vec<HostInfo>> {
        self.json(awc::http::Method::GET, "api/hosts", Body::None)
            .await
    }

    /// `GET /api/hosts/{id or host:port}`.
    pub async fn host(&self, key: &str) -> Result<HostInfo> {
        let url = self.host_url(key)?;
        self.json_at(awc::http::Method::GET, &url, Body::None).await
    }

    /// `DELETE /api/hosts/{id or host:port}`: forgets a worker.
    pub async fn delete_host(&self, key: &str) -> Result<()> {
        let url = self.host_url(key)?;
        self.no_content(awc::http::Method::DELETE, &url, Body::None)
            .await
    }

    fn host_url(&self, key: &str) -> Result<Url> {
        let mut url = self.url("api/hosts/")?;
        url.path_segments_mut()
            .map_err(|()| Error::Url {
                url: self.master_url(),
                message: "it cannot hold a path".into(),
            })?
            .pop_if_empty()
            .push(key);
        Ok(url)
    }

    /// `POST /api/hosts`: a worker's registration and heartbeat (use a client
    /// holding the cluster secret).
    pub async fn heartbeat(&self, beat: &HostHeartbeat) -> Result<HostInfo> {
        let body = serde_json::to_value(beat).map_err(|e| Error::Decode {
            url: "api/hosts".into(),
            message: e.to_string(),
        })?;
        self.json(awc::http::Method::POST, "api/hosts", Body::Json(body))
            .await
    }

    // ---- files --------------------------------------------------------

    /// `PUT /files/{remote}`: uploads a local file, streamed.
    pub async fn put_file(&self, local: &Path, remote: &str) -> Result<FileEntry> {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|source| Error::Io {
                action: "cannot open",
                path: local.display().to_string(),
                source,
            })?;
        let len = file
            .metadata()
            .await
            .map_err(|source| Error::Io {
                action: "cannot read the size of",
                path: local.display().to_string(),
                source,
            })?
            .len();
        let url = self.file_url(remote)?;
        self.json_at(awc::http::Method::PUT, &url, Body::File { file, len })
            .await
    }

    /// `GET /files/{remote}` copied into `out`; answers the bytes copied.
    pub async fn get_file<W: AsyncWrite + Unpin>(&self, remote: &str, out: &mut W) -> Result<u64> {
        let url = self.file_url(remote)?;
        let req = self.request(awc::http::Method::GET, &url);
        let resp = self.send(req, &url, Body::None).await?;
        let shown = redact(&url);
        let stream = resp.map(move |chunk| {
            chunk.map_err(|e| Error::Connect {
                url: shown.clone(),
                message: format!("the download broke: {e}"),
            })
        });
        copy_stream(stream, out, remote).await
    }

    /// `GET /files/`: every file in the store.
    pub async fn list_files(&self) -> Result<Vec<FileEntry>> {
        let value: Value = self
            .json(awc::http::Method::GET, "files", Body::None)
            .await?;
        // A bare list, or an object holding it under `files`.
        let list = match value {
            Value::Object(mut map) => map.remove("files").unwrap_or(Value::Null),
            other => other,
        };
        serde_json::from_value(list).map_err(|e| Error::Decode {
            url: format!("{}files", self.master_url()),
            message: e.to_string(),
        })
    }

    /// `DELETE /files/{remote}`.
    pub async fn delete_file(&self, remote: &str) -> Result<()> {
        let url = self.file_url(remote)?;
        self.no_content(awc::http::Method::DELETE, &url, Body::None)
            .await
    }
}

/// A request body.
enum Body {
    None,
    Json(Value),
    Bytes(Bytes),
    File { file: tokio::fs::File, len: u64 },
}

/// A file read in chunks, as a body stream.
fn file_stream(
    file: tokio::fs::File,
) -> impl Stream<Item = std::result::Result<Bytes, std::io::Error>> + 'static {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    })
}

async fn copy_stream<W: AsyncWrite + Unpin>(
    stream: impl Stream<Item = Result<Bytes>>,
    out: &mut W,
    what: &str,
) -> Result<u64> {
    let mut stream = std::pin::pin!(stream);
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        out.write_all(&chunk).await.map_err(|source| Error::Io {
            action: "cannot write to",
            path: what.to_owned(),
            source,
        })?;
        total += chunk.len() as u64;
    }
    out.flush().await.map_err(|source| Error::Io {
        action: "cannot write to",
        path: what.to_owned(),
        source,
    })?;
    Ok(total)
}

/// The server's error body, or one made from the status and raw text.
fn error_body(status: StatusCode, raw: &[u8]) -> ErrorBody {
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(raw) {
        return body;
    }
    let text = String::from_utf8_lossy(raw).trim().to_owned();
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    if text.is_empty() {
        ErrorBody::new(reason)
    } else {
        let mut body = ErrorBody::new(reason);
        body.details = vec![text.chars().take(500).collect()];
        body
    }
}

fn redact(url: &Url) -> String {
    dadd_spec::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_encode_each_segment() {
        let client = Client::new("http://127.0.0.1:5000").expect("valid");
        let url = client.file_url("dir/a b#c.json").expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:5000/files/dir/a%20b%23c.json"
        );
    }

    #[test]
    fn base_with_prefix_keeps_it() {
        let client = Client::new("https://lb.example/dadd").expect("valid");
        assert_eq!(
            client.url("api/procs").expect("url").as_str(),
            "https://lb.example/dadd/api/procs"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_a_hint() {
        let err = Client::new("127.0.0.1:5000").expect_err("no scheme");
        assert!(err.to_string().contains("invalid URL"), "{err}");
        let err = Client::new("ftp://x").expect_err("ftp");
        assert!(err.to_string().contains("http or https"), "{err}");
    }

    #[test]
    fn non_json_errors_keep_the_text() {
        let body = error_body(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(body.error, "bad gateway");
        assert_eq!(body.details, vec!["upstream down".to_owned()]);
    }
}
