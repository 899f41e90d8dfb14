//! Wire types of the REST APIs (master, worker) and of the runner's `state.json`.
//!
//! Each daemon versions and ships on its own, so these types assume nothing
//! about the other side's build: unknown fields are ignored when reading,
//! and fields added later are optional (`#[serde(default)]`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::ProcState;

/// The most log bytes one `PUT /api/procs/{id}/logfile` chunk carries (the
/// master's default `limits.log_chunk_bytes`); runners and workers cut
/// `output.log` into chunks of this size.
pub const LOG_CHUNK_BYTES: u64 = 1 << 20;

/// A process id, as the master numbers them.
pub type ProcId = i64;

/// The body of every error answer: `{"error": "...", "details": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one line.
    pub error: String,
    /// Every problem, when there are several (one per spec problem).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
    /// On a 409 for a state report: the state the process is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_state: Option<ProcState>,
    /// On a 409 for a log chunk: the byte offset the master expects next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_offset: Option<u64>,
}

impl ErrorBody {
    /// An error with no details.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            details: Vec::new(),
            current_state: None,
            expected_offset: None,
        }
    }
}

/// A process as listed (`GET /api/procs`) and as answered on creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcSummary {
    /// The process id.
    pub id: ProcId,
    /// Its current state.
    pub state: ProcState,
    /// The command, split into arguments.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The host it was placed on (`host:port` of the worker).
    #[serde(default)]
    pub host: Option<String>,
    /// The command's pid on that host.
    #[serde(default)]
    pub pid: Option<i32>,
    /// The command's exit code, once it has exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended the command, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Why it is in this state (`timeout`, `host down`, a setup error).
    #[serde(default)]
    pub reason: Option<String>,
    /// When the master accepted it.
    pub created_at: DateTime<Utc>,
    /// When its command started running.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
}

/// One process in full (`GET /api/procs/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcDetail {
    /// The fields of the list.
    #[serde(flatten)]
    pub summary: ProcSummary,
    /// The spec as submitted.
    pub spec: Value,
    /// Every state change, oldest first.
    #[serde(default)]
    pub history: Vec<StateChange>,
    /// Where its log is (`/api/procs/{id}/logfile`).
    pub log_url: String,
    /// Bytes of log stored so far.
    #[serde(default)]
    pub log_size: u64,
}

/// One entry of a process's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    /// The state entered.
    pub state: ProcState,
    /// When.
    pub at: DateTime<Utc>,
    /// Why, when known.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A page of processes, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcList {
    /// The processes on this page.
    pub procs: Vec<ProcSummary>,
    /// The cursor of the next page (`?next=`), absent on the last page.
    #[serde(default)]
    pub next: Option<String>,
}

/// A runner's report of a state change (`PUT /api/procs/{id}/state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateReport {
    /// The state entered.
    pub state: ProcState,
    /// The command's pid, once it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The exit code, in a final report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why (`timeout`, `download failed: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to a log chunk: how many bytes the master now holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAppended {
    /// The log's length after this chunk; the next chunk starts here.
    pub offset: u64,
}

/// A worker's registration and heartbeat (`POST /api/hosts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostHeartbeat {
    /// The name or address the master reaches the worker at.
    pub host: String,
    /// The worker's port.
    pub port: u16,
    /// How many processes it runs at once, at most.
    pub max_procs: u32,
    /// The worker's version.
    #[serde(default)]
    pub version: String,
    /// The processes whose runners are alive on it now.
    #[serde(default)]
    pub running: Vec<ProcId>,
    /// `http` or `https`.
    #[serde(default = "default_scheme")]
    pub scheme: String,
}

fn default_scheme() -> String {
    "http".to_owned()
}

/// Whether a host is heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// Heartbeats arrive within the TTL.
    Up,
    /// No heartbeat within the TTL.
    Down,
}

/// A worker host as the master sees it (`GET /api/hosts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The master's id for it.
    pub id: i64,
    /// `host:port`.
    pub address: String,
    /// The URL the master calls it at.
    pub url: String,
    /// Up or down.
    pub status: HostStatus,
    /// Its capacity.
    pub max_procs: u32,
    /// Unfinished processes the master has placed on it.
    pub running: u32,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// Its last heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// Its first registration.
    pub registered_at: DateTime<Utc>,
}

/// What the master sends a worker's `POST /run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEnvelope {
    /// The process id.
    pub process_id: ProcId,
    /// A token good only for reporting on this process.
    pub token: String,
    /// Where the runner reports.
    pub master_url: String,
    /// Other masters sharing the same store, tried in order when
    /// `master_url` does not answer (the worker adds its own master list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_urls: Vec<String>,
    /// The spec as submitted.
    pub spec: Value,
}

/// The worker's answer to `POST /run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The runner's pid.
    pub pid: i32,
    /// The working dir.
    pub directory: String,
}

/// The worker's `GET /up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerUp {
    /// `available` (the original dadd's word) or `full`.
    pub worker_status: String,
    /// The worker's version.
    #[serde(default)]
    pub version: String,
    /// Live runners.
    #[serde(default)]
    pub running: u32,
    /// Capacity.
    #[serde(default)]
    pub max_procs: u32,
}

/// One runner a worker knows (`GET /procs` on the worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerProc {
    /// The master's process id, when the runner was dispatched by one.
    pub process_id: Option<ProcId>,
    /// The working dir.
    pub directory: String,
    /// What the runner's `state.json` says.
    pub record: RunnerRecord,
    /// Whether the runner process is alive (checked against pid reuse).
    pub alive: bool,
}

/// Where the runner is with handing its results to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Reports or log still to send.
    Pending,
    /// The final state and the whole log were accepted.
    Delivered,
    /// The master stayed unreachable past the deadline; the working dir is kept.
    Undelivered,
    /// Run without a master (by hand).
    NoMaster,
}

/// The runner's own record, `state.json` in the working dir.
///
/// Written crash-safely at every change, so a restarted worker can find the
/// runner again and a person can see where a run stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerRecord {
    /// The master's process id, when dispatched by one.
    #[serde(default)]
    pub process_id: Option<ProcId>,
    /// The state.
    pub state: ProcState,
    /// The runner's pid.
    pub runner_pid: i32,
    /// The runner's start time in clock ticks since boot (`/proc/PID/stat`
    /// field 22), so a reused pid is never taken for the runner.
    #[serde(default)]
    pub runner_start_ticks: Option<u64>,
    /// The command's pid (also its process group id).
    #[serde(default)]
    pub command_pid: Option<i32>,
    /// The command's exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended the command.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Why it is in this state.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the runner started.
    pub started_at: DateTime<Utc>,
    /// The last change.
    pub updated_at: DateTime<Utc>,
    /// When the process ended.
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    /// Where delivery to the master stands.
    pub delivery: Delivery,
}

/// One file in the master's file store (`GET /files/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Its path under `/files/`.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex (also its `ETag`).
    pub sha256: String,
    /// Last change.
    pub modified: DateTime<Utc>,
}

/// `GET /api/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// The master's version.
    #[serde(default)]
    pub version: String,
}

/// The dashboard's summary (`GET /api/stats`): cheap enough to poll, so
/// it never counts the whole history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Processes per state; every state is present (zero when none). An
    /// unfinished state (`queued`, `init`, `setup`, `running`) counts every
    /// such process; a final state counts those submitted since
    /// `window_start`.
    #[serde(default)]
    pub by_state: std::collections::BTreeMap<ProcState, u64>,
    /// Hosts heartbeating within the TTL.
    #[serde(default)]
    pub hosts_up: u64,
    /// Hosts the master knows, up or down.
    #[serde(default)]
    pub hosts_total: u64,
    /// Processes submitted per minute, oldest first: one entry per minute
    /// from `window_start`; the last is the current minute so far.
    #[serde(default)]
    pub per_minute: Vec<u64>,
    /// The start of the first minute of `per_minute`.
    pub window_start: DateTime<Utc>,
    /// When these figures were taken.
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored() {
        let up: WorkerUp = serde_json::from_str(
            r#"{"worker_status":"available","version":"9","running":1,"max_procs":4,"gpu":true}"#,
        )
        .expect("a newer worker's answer still reads");
        assert_eq!(up.max_procs, 4);
    }

    #[test]
    fn heartbeat_defaults_to_http() {
        let hb: HostHeartbeat =
            serde_json::from_str(r#"{"host":"127.0.0.1","port":6000,"max_procs":2}"#)
                .expect("a minimal heartbeat reads");
        assert_eq!(hb.scheme, "http");
        assert!(hb.running.is_empty());
    }

    #[test]
    fn stats_keys_states_by_name() {
        let mut by_state = std::collections::BTreeMap::new();
        by_state.insert(ProcState::Running, 2);
        let s = Stats {
            by_state,
            hosts_up: 1,
            hosts_total: 1,
            per_minute: vec![0, 2],
            window_start: DateTime::from_timestamp(0, 0).expect("epoch"),
            at: DateTime::from_timestamp(120, 0).expect("time"),
        };
        let v = serde_json::to_value(&s).expect("serializes");
        assert_eq!(v["by_state"]["running"], 2);
        let back: Stats = serde_json::from_value(v).expect("reads back");
        assert_eq!(back, s);
    }

    #[test]
    fn error_body_omits_empty_fields() {
        let text = serde_json::to_string(&ErrorBody::new("not found")).expect("serializes");
        assert_eq!(text, r#"{"error":"not found"}"#);
    }
}
