//! A small loopback HTTP/1.1 server on std threads, for tests: it serves
//! what a [`Routes`] table says (fixed files, fixed statuses, a URL that
//! fails a few times before it works), records every request, and plays a
//! fake master ([`FakeMaster`]) for a runner's state reports and log chunks.
//!
//! One thread accepts; each connection gets a thread, one request, and
//! `Connection: close`. Dropping the server stops it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use dadd_spec::api::{ErrorBody, LogAppended, StateReport};
use dadd_spec::ProcState;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path with its query (`/api/procs/1/logfile?offset=0`).
    pub target: String,
    /// Headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Query parameter `key`.
    pub fn query(&self, key: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.to_owned())
        })
    }

    /// Header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::with_status(200, body)
    }

    /// `status` with `body`.
    pub fn with_status(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: "application/octet-stream".into(),
            body: body.into(),
        }
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        Self {
            status,
            content_type: "application/json".into(),
            body: serde_json::to_vec(value).expect("serializable"),
        }
    }

    /// `status` with an HTML body.
    pub fn html(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            content_type: "text/html".into(),
            body: body.into().into_bytes(),
        }
    }
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running loopback server.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Request>>>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Starts a server on 127.0.0.1, port 0, answering with `handler`.
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let accept = {
            let stop = Arc::clone(&stop);
            let requests = Arc::clone(&requests);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let handler = Arc::clone(&handler);
                    let requests = Arc::clone(&requests);
                    std::thread::spawn(move || serve(conn, &handler, &requests));
                }
            })
        };
        Self {
            addr,
            stop,
            requests,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    /// How many requests had this path (query ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path() == path).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, handler: &Handler, requests: &Mutex<Vec<Request>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    let resp = handler(&req);
    if let Ok(mut all) = requests.lock() {
        all.push(req);
    }
    let reason = match resp.status {
        200 => "OK",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        resp.content_type,
        resp.body.len()
    );
    let mut w = write_half;
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(&resp.body);
    let _ = w.flush();
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

/// What one path answers.
#[derive(Debug, Clone)]
enum Route {
    /// Always this.
    Fixed(Response),
    /// `failures` times `status`, then `then`.
    Flaky {
        failures: usize,
        status: u16,
        then: Response,
    },
}

/// A table of paths and answers; anything else is 404.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: HashMap<String, Route>,
}

impl Routes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// `path` serves `body` with 200.
    pub fn file(mut self, path: &str, body: impl Into<Vec<u8>>) -> Self {
        self.routes
            .insert(path.to_owned(), Route::Fixed(Response::ok(body)));
        self
    }

    /// `path` answers `resp`.
    pub fn respond(mut self, path: &str, resp: Response) -> Self {
        self.routes.insert(path.to_owned(), Route::Fixed(resp));
        self
    }

    /// `path` answers `status` `failures` times, then serves `body`.
    pub fn flaky(
        mut self,
        path: &str,
        failures: usize,
        status: u16,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        self.routes.insert(
            path.to_owned(),
            Route::Flaky {
                failures,
                status,
                then: Response::ok(body),
            },
        );
        self
    }

    /// Starts a server for this table.
    pub fn serve(self) -> Server {
        let table = Mutex::new(self.routes);
        Server::start(move |req| {
            let mut table = table.lock().expect("lock");
            match table.get_mut(req.path()) {
                None => Response::with_status(404, "not found"),
                Some(Route::Fixed(r)) => r.clone(),
                Some(Route::Flaky {
                    failures,
                    status,
                    then,
                }) => {
                    if *failures > 0 {
                        *failures -= 1;
                        Response::with_status(*status, "try again")
                    } else {
                        then.clone()
                    }
                }
            }
        })
    }
}

/// What the fake master holds and how it misbehaves.
#[derive(Debug, Default)]
struct MasterState {
    token: String,
    reports: Vec<StateReport>,
    log: Vec<u8>,
    /// Chunks as received: (offset, length).
    chunks: Vec<(u64, usize)>,
    /// Answer 503 to everything while set.
    unavailable: bool,
    /// Accept the next log chunk with 200 but do not keep it (as a master
    /// restored from an older backup would), so the next chunk is a gap.
    forget_next_chunk: bool,
    /// 409s answered to log chunks.
    gaps: usize,
    /// Requests refused with 503.
    refused_503: usize,
}

/// A fake master for a runner's reports: `PUT /api/procs/{id}/state` and
/// `PUT /api/procs/{id}/logfile?offset=N`, with bearer-token checks, the
/// real master's offset rules (overlap ignored, a gap is 409 with
/// `expected_offset`), and switches for outages.
pub struct FakeMaster {
    server: Server,
    state: Arc<Mutex<MasterState>>,
    id: i64,
}

impl std::fmt::Debug for FakeMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeMaster")
            .field("server", &self.server)
            .finish()
    }
}

impl FakeMaster {
    /// A fake master for process `id` accepting `token`.
    pub fn start(id: i64, token: &str) -> Self {
        let state = Arc::new(Mutex::new(MasterState {
            token: token.to_owned(),
            ..MasterState::default()
        }));
        let s = Arc::clone(&state);
        let server = Server::start(move |req| answer(&s, id, req));
        Self { server, state, id }
    }

    /// The master's base URL.
    pub fn url(&self) -> String {
        self.server.url("")
    }

    /// The underlying server (for its request log).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Every accepted state report, in order.
    pub fn reports(&self) -> Vec<StateReport> {
        self.state.lock().expect("lock").reports.clone()
    }

    /// The states reported, in order, repeats collapsed.
    pub fn states(&self) -> Vec<ProcState> {
        let mut out: Vec<ProcState> = Vec::new();
        for r in self.reports() {
            if out.last() != Some(&r.state) {
                out.push(r.state);
            }
        }
        out
    }

    /// The log as reassembled from the chunks.
    pub fn log(&self) -> Vec<u8> {
        self.state.lock().expect("lock").log.clone()
    }

    /// The log chunks received: (offset, length).
    pub fn chunks(&self) -> Vec<(u64, usize)> {
        self.state.lock().expect("lock").chunks.clone()
    }

    /// How many 409s were answered to log chunks.
    pub fn gaps(&self) -> usize {
        self.state.lock().expect("lock").gaps
    }

    /// How many requests were refused with 503.
    pub fn refused_503(&self) -> usize {
        self.state.lock().expect("lock").refused_503
    }

    /// Answer 503 to everything (true) or serve again (false).
    pub fn set_unavailable(&self, on: bool) {
        self.state.lock().expect("lock").unavailable = on;
    }

    /// Accept the next log chunk but drop it, so the one after is a gap.
    pub fn forget_next_chunk(&self) {
        self.state.lock().expect("lock").forget_next_chunk = true;
    }

    /// The process id it serves.
    pub fn id(&self) -> i64 {
        self.id
    }
}

fn answer(state: &Mutex<MasterState>, id: i64, req: &Request) -> Response {
    let mut st = state.lock().expect("lock");
    if st.unavailable {
        st.refused_503 += 1;
        return Response::json(503, &ErrorBody::new("the store is unavailable"));
    }
    let bearer = format!("Bearer {}", st.token);
    if req.header("authorization") != Some(bearer.as_str()) {
        return Response::json(401, &ErrorBody::new("bad or missing process token"));
    }
    let base = format!("/api/procs/{id}/");
    let Some(tail) = req.path().strip_prefix(&base) else {
        return Response::json(404, &ErrorBody::new("no such process"));
    };
    match (req.method.as_str(), tail) {
        ("PUT", "state") => match serde_json::from_slice::<StateReport>(&req.body) {
            Ok(r) => {
                st.reports.push(r);
                Response::json(200, &serde_json::json!({"id": id}))
            }
            Err(e) => Response::json(400, &ErrorBody::new(format!("bad report: {e}"))),
        },
        ("PUT", "logfile") => {
            let Some(offset) = req.query("offset").and_then(|o| o.parse::<u64>().ok()) else {
                return Response::json(400, &ErrorBody::new("missing ?offset="));
            };
            st.chunks.push((offset, req.body.len()));
            let held = st.log.len() as u64;
            if offset > held {
                st.gaps += 1;
                let mut body = ErrorBody::new("log chunk leaves a gap");
                body.expected_offset = Some(held);
                return Response::json(409, &body);
            }
            if std::mem::take(&mut st.forget_next_chunk) {
                let end = offset + req.body.len() as u64;
                return Response::json(200, &LogAppended { offset: end });
            }
            let skip = usize::try_from(held - offset).expect("fits");
            if skip < req.body.len() {
                let new = req.body[skip..].to_vec();
                st.log.extend_from_slice(&new);
            }
            let offset = st.log.len() as u64;
            Response::json(200, &LogAppended { offset })
        }
        _ => Response::json(404, &ErrorBody::new("no such route")),
    }
}
