//! [`Client`]: one typed async method per route of the master's REST API,
//! with failover between several masters that share one database.
//!
//! Built on awc, so it runs on an actix (single-threaded tokio) runtime:
//! call it from `#[actix_rt::main]`, `#[actix_web::test]` or an actix-web
//! handler. Bodies that can be large (logs, files) are streamed, never held
//! whole in memory.
//!
//! Several masters sharing one database: see [`Client`] for how calls fail
//! over between them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use awc::error::SendRequestError;
use awc::http::header;
use awc::http::{Method, StatusCode};
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
use crate::urls;

/// Largest JSON answer read whole (a page of processes, a host list).
const JSON_LIMIT: usize = 64 * 1024 * 1024;
/// Largest error body kept for the message.
const ERROR_LIMIT: usize = 64 * 1024;
/// Chunk size when streaming a file upload.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// The longest default time to open a connection (see
/// [`ClientBuilder::connect_timeout`]).
const MAX_DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the master (or the masters).
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    masters: Vec<String>,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    timeout: Duration,
    connect_timeout: Option<Duration>,
}

impl ClientBuilder {
    /// A client of the master at `master` (`http://127.0.0.1:5000`), or of
    /// the masters of a comma-separated list (`http://a:5000,http://b:5000`),
    /// tried in that order.
    pub fn new(master: impl Into<String>) -> Self {
        Self::from_urls([master])
    }

    /// A client of these masters, tried in order (each entry may itself be
    /// a comma-separated list).
    pub fn from_urls<I, S>(masters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            masters: masters.into_iter().map(Into::into).collect(),
            token: None,
            ca_file: None,
            timeout: Duration::from_secs(30),
            connect_timeout: None,
        }
    }

    /// More masters, tried after those given so far (repeats are dropped).
    pub fn fallback_urls<I, S>(mut self, masters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.masters.extend(masters.into_iter().map(Into::into));
        self
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

    /// How long opening a connection (DNS and TCP) may take before the next
    /// master is tried. Default: half the [`timeout`](Self::timeout), at
    /// most 5 s. Kept below the timeout so that a master that does not even
    /// accept connections is told apart from one that got the request and
    /// did not answer.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The client. Fails on a malformed URL (naming it), an empty list, or
    /// an unusable CA file.
    pub fn build(self) -> Result<Client> {
        let bases = urls::parse_list(&self.masters)?;
        let connect_timeout = self
            .connect_timeout
            .unwrap_or_else(|| (self.timeout / 2).min(MAX_DEFAULT_CONNECT_TIMEOUT));
        let mut connector = awc::Connector::new().timeout(connect_timeout);
        if bases.iter().any(|b| b.scheme() == "https") {
            connector = connector.rustls_0_23(crate::tls::client_config(self.ca_file.as_deref())?);
        }
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(self.timeout)
            .disable_redirects()
            .finish();
        Ok(Client {
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
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

/// A typed client of the master's REST API. Clones share the connection
/// pool and the choice of master.
///
/// # Failover
///
/// A client holds a list of master URLs. Every call goes to the current one;
/// when that master cannot be reached, the call is sent to the next one, each
/// URL tried once, and the client then stays with the master that answered
/// (the choice is shared by every clone). What counts as "cannot be reached":
///
/// - a connection that never opened (refused, unreachable, DNS, TLS handshake,
///   connect timeout): the request was not sent, so any call moves on;
/// - no answer after the request went out (a response timeout, a connection
///   broken mid-request), or a 502, 503 or 504 (a proxy in front of a master
///   that is down): only idempotent calls move on (GET, PUT, DELETE, and the
///   worker's heartbeat). A submit (`POST /api/procs`) is not idempotent:
///   sent twice, it could start the process twice, so it stops there, with
///   [`Error::Unconfirmed`] when no answer came, or the 502/503/504 itself.
///
/// When every master failed, the error is [`Error::AllFailed`], naming each
/// one tried and holding the last failure (with a single master, that
/// failure itself). Any other answer (a 404, a 400, a 409) is the master's
/// word, returned as it is: every master reads the same database, so another
/// would say the same.
#[derive(Clone)]
pub struct Client {
    /// Every master's base URL (path ending in `/`), in the order given.
    bases: Arc<[Url]>,
    /// The index in `bases` of the master calls go to first.
    current: Arc<AtomicUsize>,
    token: Option<String>,
    http: awc::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("masters", &self.master_urls())
            .field("current", &self.master_url())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Whether a call may go to another master after it may have reached one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Repeating it is harmless (GET, PUT, DELETE, heartbeats).
    Idempotent,
    /// Repeating it could act twice (a submit): another master is tried
    /// only when the request provably never left.
    OnlyUnsent,
}

/// How one try at one master failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection: the request was not sent.
    NotSent,
    /// Sent (maybe partly), and no answer came.
    NoAnswer,
    /// 502, 503 or 504: a proxy (or the master) says it cannot serve now.
    Unavailable,
    /// An answer, or a local problem: trying another master would not help.
    Final,
}

impl Failure {
    fn of_send(err: &SendRequestError) -> Failure {
        match err {
            SendRequestError::Connect(_) => Failure::NotSent,
            // The request could not even be made: no master would take it.
            SendRequestError::Url(_)
            | SendRequestError::Http(_)
            | SendRequestError::TunnelNotSupported => Failure::Final,
            // Send, Response, H2, Timeout, Body, Custom and any later kind:
            // the request may have gone out.
            _ => Failure::NoAnswer,
        }
    }

    fn of_status(status: StatusCode) -> Failure {
        match status.as_u16() {
            502..=504 => Failure::Unavailable,
            _ => Failure::Final,
        }
    }

    /// Whether a call sent under `retry` goes on to the next master.
    fn moves_on(self, retry: Retry) -> bool {
        match self {
            Failure::NotSent => true,
            Failure::NoAnswer | Failure::Unavailable => retry == Retry::Idempotent,
            Failure::Final => false,
        }
    }
}

impl Client {
    /// A client of `master` (or of a comma-separated list of masters) with
    /// default settings and no token.
    pub fn new(master: &str) -> Result<Client> {
        ClientBuilder::new(master).build()
    }

    fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.bases.len()
    }

    fn current_base(&self) -> &Url {
        &self.bases[self.current_index()]
    }

    /// The base URL of the master calls go to first (the last one that
    /// answered), without credentials.
    pub fn master_url(&self) -> String {
        redact(self.current_base())
    }

    /// Every master's base URL, in the order given, without credentials.
    pub fn master_urls(&self) -> Vec<String> {
        self.bases.iter().map(redact).collect()
    }

    /// The URL of `path` (relative, no leading `/`) under the current master.
    pub fn url(&self, path: &str) -> Result<Url> {
        join(self.current_base(), path)
    }

    /// The URL of a file in the current master's store, each path segment
    /// encoded.
    pub fn file_url(&self, remote: &str) -> Result<Url> {
        file_url_in(self.current_base(), remote)
    }

    fn request(&self, method: Method, url: &Url) -> awc::ClientRequest {
        let req = self.http.request(method, url.as_str());
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Sends a request to the current master, moving on to the next ones as
    /// the module docs say; answers the URL that answered and its response.
    /// `target` makes the request's URL under a master's base.
    async fn send(
        &self,
        method: Method,
        retry: Retry,
        target: &dyn Fn(&Url) -> Result<Url>,
        body: &Body,
    ) -> Result<(
        Url,
        awc::ClientResponse<
            impl Stream<Item = std::result::Result<Bytes, awc::error::PayloadError>>,
        >,
    )> {
        let count = self.bases.len();
        let start = self.current_index();
        let mut tried = Vec::new();
        let mut step = 0;
        loop {
            let index = (start + step) % count;
            let base = &self.bases[index];
            let url = target(base)?;
            let (error, failure) = match self.send_once(method.clone(), &url, body).await {
                Ok(resp) => {
                    if index != start {
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return Ok((url, resp));
                }
                Err(failed) => failed,
            };
            tried.push(redact(base));
            step += 1;
            let others = step < count;
            if failure == Failure::NoAnswer && retry == Retry::OnlyUnsent {
                return Err(Error::Unconfirmed {
                    method: method.to_string(),
                    url: redact(&url),
                    message: match error {
                        Error::Connect { message, .. } => message,
                        other => other.to_string(),
                    },
                    others: count > 1,
                });
            }
            if !failure.moves_on(retry) || !others {
                return Err(if tried.len() > 1 && failure != Failure::Final {
                    Error::AllFailed {
                        tried,
                        last: Box::new(error),
                    }
                } else {
                    error
                });
            }
        }
    }

    /// One try at one master.
    async fn send_once(
        &self,
        method: Method,
        url: &Url,
        body: &Body,
    ) -> std::result::Result<
        awc::ClientResponse<
            impl Stream<Item = std::result::Result<Bytes, awc::error::PayloadError>>,
        >,
        (Error, Failure),
    > {
        let req = self.request(method.clone(), url);
        let sent = match body {
            Body::None => req.send().await,
            Body::Json(value) => req.send_json(value).await,
            Body::Bytes(bytes) => {
                req.insert_header((header::CONTENT_TYPE, "application/octet-stream"))
                    .send_body(bytes.clone())
                    .await
            }
            Body::File { path, len } => {
                // Opened for each try: a stream half sent to one master
                // cannot be sent again to the next.
                let file = tokio::fs::File::open(path).await.map_err(|source| {
                    let error = Error::Io {
                        action: "cannot open",
                        path: path.display().to_string(),
                        source,
                    };
                    (error, Failure::Final)
                })?;
                req.insert_header((header::CONTENT_TYPE, "application/octet-stream"))
                    .send_body(awc::body::SizedStream::new(*len, file_stream(file)))
                    .await
            }
        };
        let mut resp = sent.map_err(|e| {
            let failure = Failure::of_send(&e);
            let error = Error::Connect {
                url: redact(url),
                message: e.to_string(),
            };
            (error, failure)
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let raw = resp.body().limit(ERROR_LIMIT).await.unwrap_or_default();
        let error = Error::Api {
            method: method.to_string(),
            url: redact(url),
            status: status.as_u16(),
            body: error_body(status, &raw),
        };
        Err((error, Failure::of_status(status)))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        retry: Retry,
        path: &str,
        body: Body,
    ) -> Result<T> {
        self.json_at(method, retry, &|base| join(base, path), body)
            .await
    }

    async fn json_at<T: DeserializeOwned>(
        &self,
        method: Method,
        retry: Retry,
        target: &dyn Fn(&Url) -> Result<Url>,
        body: Body,
    ) -> Result<T> {
        let (url, mut resp) = self.send(method, retry, target, &body).await?;
        let raw = resp
            .body()
            .limit(JSON_LIMIT)
            .await
            .map_err(|e| Error::Decode {
                url: redact(&url),
                message: e.to_string(),
            })?;
        serde_json::from_slice(&raw).map_err(|e| Error::Decode {
            url: redact(&url),
            message: e.to_string(),
        })
    }

    async fn no_content(
        &self,
        method: Method,
        target: &dyn Fn(&Url) -> Result<Url>,
        body: Body,
    ) -> Result<()> {
        let (_, mut resp) = self.send(method, Retry::Idempotent, target, &body).await?;
        // Drain the body so the connection can be reused.
        let _ = resp.body().limit(ERROR_LIMIT).await;
        Ok(())
    }

    /// A GET whose answer is streamed; failover applies until the head of
    /// the answer arrives, not to a stream that breaks later.
    async fn stream(
        &self,
        target: &dyn Fn(&Url) -> Result<Url>,
        broke: &'static str,
    ) -> Result<impl Stream<Item = Result<Bytes>>> {
        let (url, resp) = self
            .send(Method::GET, Retry::Idempotent, target, &Body::None)
            .await?;
        let shown = redact(&url);
        Ok(resp.map(move |chunk| {
            chunk.map_err(|e| Error::Connect {
                url: shown.clone(),
                message: format!("{broke}: {e}"),
            })
        }))
    }

    // ---- health -------------------------------------------------------

    /// `GET /api/health`: the master is up and its store reachable.
    pub async fn health(&self) -> Result<Health> {
        self.json(Method::GET, Retry::Idempotent, "api/health", Body::None)
            .await
    }

    // ---- processes ----------------------------------------------------

    /// `POST /api/procs`: submits a spec; the master validates it (400 with
    /// every problem) and answers the new process, `queued`.
    ///
    /// Not idempotent: another master is tried only when the request never
    /// left; a request sent with no answer is [`Error::Unconfirmed`].
    pub async fn submit(&self, spec: &Value) -> Result<ProcSummary> {
        self.json(
            Method::POST,
            Retry::OnlyUnsent,
            "api/procs",
            Body::Json(spec.clone()),
        )
        .await
    }

    /// `GET /api/procs`: one page, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<ProcList> {
        let target = |base: &Url| {
            let mut url = join(base, "api/procs")?;
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
            Ok(url)
        };
        self.json_at(Method::GET, Retry::Idempotent, &target, Body::None)
            .await
    }

    /// `GET /api/procs/{id}`: the process in full.
    pub async fn get(&self, id: ProcId) -> Result<ProcDetail> {
        self.json(
            Method::GET,
            Retry::Idempotent,
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
            Method::DELETE,
            Retry::Idempotent,
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
            Method::PUT,
            Retry::Idempotent,
            &format!("api/procs/{id}/state"),
            Body::Json(body),
        )
        .await
    }

    /// `PUT /api/procs/{id}/logfile?offset=N`: appends a chunk of log at byte
    /// `offset`. A gap is a 409 whose body names the offset expected.
    pub async fn append_log(&self, id: ProcId, offset: u64, chunk: Bytes) -> Result<LogAppended> {
        let target = |base: &Url| {
            let mut url = join(base, &format!("api/procs/{id}/logfile"))?;
            url.query_pairs_mut()
                .append_pair("offset", &offset.to_string());
            Ok(url)
        };
        self.json_at(Method::PUT, Retry::Idempotent, &target, Body::Bytes(chunk))
            .await
    }

    /// `GET /api/procs/{id}/logfile[?offset=N]`: the log (from `offset`) as a
    /// stream of chunks.
    pub async fn log_stream(
        &self,
        id: ProcId,
        offset: Option<u64>,
    ) -> Result<impl Stream<Item = Result<Bytes>>> {
        let target = |base: &Url| {
            let mut url = join(base, &format!("api/procs/{id}/logfile"))?;
            if let Some(offset) = offset {
                url.query_pairs_mut()
                    .append_pair("offset", &offset.to_string());
            }
            Ok(url)
        };
        self.stream(&target, "the log stream broke").await
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
        self.json(Method::GET, Retry::Idempotent, "api/hosts", Body::None)
            .await
    }

    /// `GET /api/hosts/{id or host:port}`.
    pub async fn host(&self, key: &str) -> Result<HostInfo> {
        let target = |base: &Url| host_url_in(base, key);
        self.json_at(Method::GET, Retry::Idempotent, &target, Body::None)
            .await
    }

    /// `DELETE /api/hosts/{id or host:port}`: forgets a worker.
    pub async fn delete_host(&self, key: &str) -> Result<()> {
        let target = |base: &Url| host_url_in(base, key);
        self.no_content(Method::DELETE, &target, Body::None).await
    }

    /// `POST /api/hosts`: a worker's registration and heartbeat (use a client
    /// holding the cluster secret). Idempotent (the same host is updated),
    /// so it moves on to the next master whenever one does not answer.
    pub async fn heartbeat(&self, beat: &HostHeartbeat) -> Result<HostInfo> {
        let body = serde_json::to_value(beat).map_err(|e| Error::Decode {
            url: "api/hosts".into(),
            message: e.to_string(),
        })?;
        self.json(
            Method::POST,
            Retry::Idempotent,
            "api/hosts",
            Body::Json(body),
        )
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
        // Each try opens the file again (see `send_once`).
        drop(file);
        let target = |base: &Url| file_url_in(base, remote);
        let body = Body::File {
            path: local.to_path_buf(),
            len,
        };
        self.json_at(Method::PUT, Retry::Idempotent, &target, body)
            .await
    }

    /// `GET /files/{remote}` copied into `out`; answers the bytes copied.
    pub async fn get_file<W: AsyncWrite + Unpin>(&self, remote: &str, out: &mut W) -> Result<u64> {
        let target = |base: &Url| file_url_in(base, remote);
        let stream = self.stream(&target, "the download broke").await?;
        copy_stream(stream, out, remote).await
    }

    /// `GET /files/`: every file in the store.
    pub async fn list_files(&self) -> Result<Vec<FileEntry>> {
        let value: Value = self
            .json(Method::GET, Retry::Idempotent, "files", Body::None)
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
        let target = |base: &Url| file_url_in(base, remote);
        self.no_content(Method::DELETE, &target, Body::None).await
    }
}

/// `path` (relative, no leading `/`) under a master's base URL.
fn join(base: &Url, path: &str) -> Result<Url> {
    base.join(path).map_err(|e| Error::Url {
        url: format!("{}{path}", redact(base)),
        message: e.to_string(),
    })
}

/// A file of the store under a master's base URL, each segment encoded.
fn file_url_in(base: &Url, remote: &str) -> Result<Url> {
    let mut url = join(base, "files/")?;
    {
        let mut segments = url.path_segments_mut().map_err(|()| Error::Url {
            url: redact(base),
            message: "it cannot hold a path".into(),
        })?;
        segments.pop_if_empty();
        for part in remote.split('/').filter(|p| !p.is_empty()) {
            segments.push(part);
        }
    }
    Ok(url)
}

/// `api/hosts/{key}` under a master's base URL, the key encoded.
fn host_url_in(base: &Url, key: &str) -> Result<Url> {
    let mut url = join(base, "api/hosts/")?;
    url.path_segments_mut()
        .map_err(|()| Error::Url {
            url: redact(base),
            message: "it cannot hold a path".into(),
        })?
        .pop_if_empty()
        .push(key);
    Ok(url)
}

/// A request body, kept so that it can be sent again to another master.
enum Body {
    None,
    Json(Value),
    Bytes(Bytes),
    /// A local file of `len` bytes, streamed.
    File {
        path: PathBuf,
        len: u64,
    },
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
    fn a_list_of_masters_keeps_its_order_and_hides_credentials() {
        let client = ClientBuilder::new("http://a:5000, http://u:pw@b:5000/")
            .fallback_urls(["http://c:5000", "http://a:5000/"])
            .build()
            .expect("valid");
        assert_eq!(
            client.master_urls(),
            vec!["http://a:5000/", "http://b:5000/", "http://c:5000/"]
        );
        assert_eq!(client.master_url(), "http://a:5000/");
        let from_vec = ClientBuilder::from_urls(vec!["http://b:5000", "http://a:5000"])
            .build()
            .expect("valid");
        assert_eq!(from_vec.master_url(), "http://b:5000/");
        let err = ClientBuilder::new("http://a:5000,ftp://b")
            .build()
            .expect_err("ftp");
        assert!(err.to_string().contains("ftp://b"), "{err}");
    }

    #[test]
    fn non_json_errors_keep_the_text() {
        let body = error_body(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(body.error, "bad gateway");
        assert_eq!(body.details, vec!["upstream down".to_owned()]);
    }

    /// A loopback server answering every request alike, counting them.
    struct Fake {
        url: String,
        hits: Arc<AtomicUsize>,
        handle: actix_web::dev::ServerHandle,
    }

    impl Fake {
        /// Answers `status` with a body that reads as a process and as a
        /// health answer, after `delay`.
        async fn start(status: u16, delay: Duration) -> Fake {
            let hits = Arc::new(AtomicUsize::new(0));
            let counter = hits.clone();
            let server = actix_web::HttpServer::new(move || {
                let counter = counter.clone();
                actix_web::App::new().default_service(actix_web::web::to(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        let status = StatusCode::from_u16(status).expect("a status");
                        actix_web::HttpResponse::build(status).json(serde_json::json!({
                            "id": 7, "state": "queued", "created_at": "2024-01-01T00:00:00Z",
                            "status": "ok", "store": "sqlite", "error": "fake answer",
                        }))
                    }
                }))
            })
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")
            .expect("bind");
            let url = format!("http://{}", server.addrs()[0]);
            let server = server.run();
            let handle = server.handle();
            actix_rt::spawn(server);
            Fake { url, hits, handle }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        async fn stop(self) {
            self.handle.stop(false).await;
        }
    }

    /// A loopback URL where nothing listens.
    fn closed_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        format!("http://{addr}")
    }

    fn client_of(urls: &[&str]) -> Client {
        ClientBuilder::from_urls(urls.iter().copied())
            .timeout(Duration::from_millis(1500))
            .build()
            .expect("client")
    }

    #[actix_web::test]
    async fn calls_move_down_the_list_and_stay_where_answered() {
        let closed = closed_url();
        let gateway = Fake::start(503, Duration::ZERO).await;
        let a = Fake::start(200, Duration::ZERO).await;
        let b = Fake::start(200, Duration::ZERO).await;
        let client = client_of(&[&closed, &gateway.url, &a.url, &b.url]);
        client.health().await.expect("the third master answers");
        assert_eq!((gateway.hits(), a.hits(), b.hits()), (1, 1, 0));
        assert_eq!(client.master_url(), format!("{}/", a.url));

        // Later calls, from a clone too, go straight to the one that answered.
        let clone = client.clone();
        clone.kill(7).await.expect("delete");
        client.hosts().await.expect_err("not a host list, but sent");
        assert_eq!((gateway.hits(), a.hits(), b.hits()), (1, 3, 0));

        // When it stops answering, the next one in the list takes over,
        // wrapping around to the start of the list.
        let (a_url, b_url) = (a.url.clone(), b.url.clone());
        a.stop().await;
        clone.health().await.expect("b answers");
        assert_eq!(client.master_url(), format!("{b_url}/"));
        b.stop().await;
        let err = client.health().await.expect_err("all down");
        assert_eq!(gateway.hits(), 2, "wrapped around to the 503 master");
        match &err {
            Error::AllFailed { tried, last } => {
                let expected: Vec<String> = [&b_url, &closed, &gateway.url, &a_url]
                    .iter()
                    .map(|u| format!("{u}/"))
                    .collect();
                assert_eq!(tried, &expected, "from the current one, once each");
                assert!(matches!(**last, Error::Connect { .. }), "{last}");
            }
            other => panic!("not AllFailed: {other}"),
        }
        gateway.stop().await;
    }

    #[actix_web::test]
    async fn all_masters_down_names_every_one() {
        let (one, two) = (closed_url(), closed_url());
        let err = client_of(&[&one, &two])
            .list(&ListQuery::default())
            .await
            .expect_err("nothing listens");
        let text = err.to_string();
        assert!(text.starts_with("no master answered"), "{text}");
        assert!(text.contains(&format!("{one}/, {two}/")), "{text}");
        assert!(text.contains("cannot reach the master"), "{text}");

        // A single master keeps the plain error.
        let err = client_of(&[&one]).health().await.expect_err("down");
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }

    #[actix_web::test]
    async fn a_submit_moves_on_only_when_it_never_left() {
        let closed = closed_url();
        let live = Fake::start(201, Duration::ZERO).await;
        let client = client_of(&[&closed, &live.url]);
        let created = client
            .submit(&serde_json::json!({"cmd": "true"}))
            .await
            .expect("refused connection, then the live master");
        assert_eq!(created.id, 7);
        assert_eq!(live.hits(), 1);
        live.stop().await;
    }

    #[actix_web::test]
    async fn a_submit_sent_without_answer_is_not_sent_again() {
        let silent = Fake::start(201, Duration::from_secs(30)).await;
        let live = Fake::start(201, Duration::ZERO).await;
        let client = ClientBuilder::from_urls([&silent.url, &live.url])
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client");
        let err = client
            .submit(&serde_json::json!({"cmd": "true"}))
            .await
            .expect_err("no answer in time");
        assert!(
            matches!(err, Error::Unconfirmed { others: true, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("not sent again to another master"), "{text}");
        assert!(text.contains("dadd ps"), "{text}");
        assert_eq!(
            (silent.hits(), live.hits()),
            (1, 0),
            "sent once, to one master"
        );
        assert_eq!(client.master_url(), format!("{}/", silent.url));

        // An idempotent call after the same timeout moves on.
        client.health().await.expect("the live master answers");
        assert_eq!(live.hits(), 1);
        silent.stop().await;
        live.stop().await;
    }

    #[actix_web::test]
    async fn a_submit_answered_503_is_not_sent_again() {
        let gateway = Fake::start(503, Duration::ZERO).await;
        let live = Fake::start(201, Duration::ZERO).await;
        let client = client_of(&[&gateway.url, &live.url]);
        let err = client
            .submit(&serde_json::json!({"cmd": "true"}))
            .await
            .expect_err("503");
        assert_eq!(err.status(), Some(503), "{err}");
        assert_eq!(live.hits(), 0);
        gateway.stop().await;
        live.stop().await;
    }

    #[actix_web::test]
    async fn an_answer_is_not_failed_over() {
        let missing = Fake::start(404, Duration::ZERO).await;
        let live = Fake::start(200, Duration::ZERO).await;
        let client = client_of(&[&missing.url, &live.url]);
        let err = client.get(7).await.expect_err("404");
        assert!(matches!(err, Error::Api { status: 404, .. }), "{err}");
        assert_eq!(live.hits(), 0, "another master reads the same database");
        missing.stop().await;
        live.stop().await;
    }
}
