//! The store: every SQL statement of the master lives in this module.
//!
//! One set of runtime queries serves SQLite and Postgres through
//! `sqlx::AnyPool`: `$N` placeholders (SQLite accepts them), times as BIGINT
//! unix milliseconds, JSON as TEXT, integers instead of booleans. Migrations
//! are embedded per backend and applied at start by a small migrator table.
//!
//! SQLite allows one writer at a time; rather than letting connections fight
//! over the lock (and sleep in SQLite's busy handler), writes go through a
//! one-connection pool and queue fairly in it, while reads use the others.
//! Every write transaction begins with a write, so it takes the lock at once.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dadd_spec::ProcState;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::config::{secs, SqliteSync, StoreConfig};

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// Production.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (or the pool is exhausted).
    #[error("the store is unreachable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A statement failed.
    #[error("store query failed: {0}")]
    Query(#[source] sqlx::Error),
    /// The URL names no supported database.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    BadUrl(String),
    /// The SQLite file's directory cannot be made.
    #[error("cannot create the store directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A migration failed.
    #[error(
        "store migration {version} failed: {source}; the database was left at the previous version"
    )]
    Migration {
        /// The migration's version.
        version: i64,
        /// Why.
        source: sqlx::Error,
    },
    /// A row holds something this build cannot read.
    #[error("the store holds an unreadable value: {0}")]
    Corrupt(String),
    /// Another master holds the SQLite file.
    #[error("another dadd-master{holder} is using the SQLite store {path}: SQLite serves one master; stop that one, or run several masters on Postgres (database_url = \"postgres://USER@HOST/DB\")")]
    Locked {
        /// The database file.
        path: String,
        /// " (pid N)" when the lock file names it.
        holder: String,
    },
    /// The lock file beside the SQLite file cannot be opened.
    #[error("cannot open the lock file {path}: {source}")]
    LockFile {
        /// The lock file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            other => StoreError::Query(other),
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Embedded migrations: (version, SQL) per backend.
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../migrations/sqlite/0002_several_masters.sql"),
    ),
    (3, include_str!("../migrations/sqlite/0003_notices.sql")),
    (4, include_str!("../migrations/sqlite/0004_file_blobs.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_several_masters.sql"),
    ),
    (3, include_str!("../migrations/postgres/0003_notices.sql")),
    (
        4,
        include_str!("../migrations/postgres/0004_file_blobs.sql"),
    ),
];

/// States of a process placed on a host and not over yet.
const UNFINISHED: &str = "('init','setup','running')";

/// Columns of a process row, without the spec.
const SUMMARY_COLS: &str = "id, state, cmd, host_id, host, pid, exit_code, signal, reason, \
     created_at, started_at, ended_at, updated_at, token_hash, token_hash_next, log_size";

/// Columns of a listed process, in the order of [`Listed`].
const LIST_COLS: &str = "id, state, cmd, host_id, host, pid, exit_code, signal, reason, \
     created_at, started_at, ended_at, updated_at, log_size";
/// The same as JSON array items (`cmd` is JSON text, embedded as JSON).
const LIST_COLS_SQLITE: &str = "id, state, json(cmd), host_id, host, pid, exit_code, signal, \
     reason, created_at, started_at, ended_at, updated_at, log_size";
const LIST_COLS_POSTGRES: &str = "id, state, cmd::json, host_id, host, pid, exit_code, signal, \
     reason, created_at, started_at, ended_at, updated_at, log_size";

/// The current time, unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A process as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    /// Id.
    pub id: i64,
    /// State.
    pub state: ProcState,
    /// The spec as submitted (empty in lists).
    pub spec: String,
    /// The command, split.
    pub cmd: Vec<String>,
    /// The host's id, while placed.
    pub host_id: Option<i64>,
    /// The host's `host:port`.
    pub host: Option<String>,
    /// The command's pid.
    pub pid: Option<i64>,
    /// Exit code.
    pub exit_code: Option<i64>,
    /// Signal.
    pub signal: Option<i64>,
    /// Why.
    pub reason: Option<String>,
    /// Created, ms.
    pub created_at: i64,
    /// Running since, ms.
    pub started_at: Option<i64>,
    /// Ended, ms.
    pub ended_at: Option<i64>,
    /// Last change, ms.
    pub updated_at: i64,
    /// SHA-256 (hex) of the per-process token (none in lists).
    pub token_hash: Option<String>,
    /// More accepted token hashes (space-separated), minted when a claim
    /// was taken over (see [`Store::renew_claim`]); none in lists.
    pub token_hash_next: Option<String>,
    /// Log bytes received (the runner's offsets).
    pub log_size: i64,
}

/// One process of a list page as the store's JSON aggregate holds it: an
/// array in [`LIST_COLS`] order.
#[derive(Debug, serde::Deserialize)]
struct Listed(
    i64,
    ProcState,
    Vec<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
);

impl Listed {
    fn into_row(self) -> ProcRow {
        let Listed(
            id,
            state,
            cmd,
            host_id,
            host,
            pid,
            exit_code,
            signal,
            reason,
            created_at,
            started_at,
            ended_at,
            updated_at,
            log_size,
        ) = self;
        ProcRow {
            id,
            state,
            spec: String::new(),
            cmd,
            host_id,
            host,
            pid,
            exit_code,
            signal,
            reason,
            created_at,
            started_at,
            ended_at,
            updated_at,
            token_hash: None,
            token_hash_next: None,
            log_size,
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// The state entered.
    pub state: ProcState,
    /// When, ms.
    pub at: i64,
    /// Why.
    pub reason: Option<String>,
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    /// Id.
    pub id: i64,
    /// Name or address.
    pub host: String,
    /// Port.
    pub port: i64,
    /// `http` or `https`.
    pub scheme: String,
    /// Capacity.
    pub max_procs: i64,
    /// Version.
    pub version: String,
    /// `up` or `down`, as last recorded.
    pub status: String,
    /// Last heartbeat, ms.
    pub last_heartbeat: i64,
    /// First registration, ms.
    pub registered_at: i64,
    /// Unfinished processes placed on it.
    pub busy: i64,
}

impl ProcRow {
    /// Every token hash good for this process's reports.
    pub fn token_hashes(&self) -> Vec<&str> {
        let next = self.token_hash_next.as_deref().unwrap_or_default();
        self.token_hash
            .as_deref()
            .into_iter()
            .chain(next.split(' ').filter(|h| !h.is_empty()))
            .collect()
    }
}

impl HostRow {
    /// `host:port`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The worker's base URL.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.address())
    }
}

/// A state change to store.
#[derive(Debug, Clone)]
pub struct Change {
    /// The state entered.
    pub to: ProcState,
    /// The command's pid.
    pub pid: Option<i64>,
    /// Exit code.
    pub exit_code: Option<i64>,
    /// Signal.
    pub signal: Option<i64>,
    /// Why.
    pub reason: Option<String>,
    /// When, ms.
    pub at: i64,
    /// Queue a notification (a row in the outbox, in the same transaction).
    pub notice: bool,
}

impl Change {
    /// A bare change with only a reason.
    pub fn to(to: ProcState, reason: Option<&str>, at: i64) -> Self {
        Self {
            to,
            pid: None,
            exit_code: None,
            signal: None,
            reason: reason.map(str::to_owned),
            at,
            notice: false,
        }
    }
}

/// A queued process ready to be placed.
#[derive(Debug, Clone)]
pub struct QueuedProc {
    /// Id.
    pub id: i64,
    /// The spec as submitted.
    pub spec: String,
    /// Created, ms.
    pub created_at: i64,
}

/// A placement to record: process, host, token hash.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The process.
    pub proc_id: i64,
    /// The host's id.
    pub host_id: i64,
    /// The host's `host:port`.
    pub host: String,
    /// SHA-256 (hex) of the freshly minted token.
    pub token_hash: String,
    /// Until when the claim is this master's, ms: past it, a process still
    /// `init` is sent again by any master.
    pub lease_until: i64,
}

/// A claim whose lease ran out with its process still `init`.
#[derive(Debug, Clone)]
pub struct ExpiredClaim {
    /// The process.
    pub proc: QueuedProc,
    /// The host it was claimed for.
    pub host_id: Option<i64>,
}

/// Advisory locks are per database: the first key is the schema's (so
/// stores in different schemas of one database never wait on each other),
/// the second says which lock.
const DISPATCH_LOCK: &str = "hashtext('dadd:' || current_schema()), 1";
/// The retention pass's lock (see [`DISPATCH_LOCK`]).
const RETENTION_LOCK: &str = "hashtext('dadd:' || current_schema()), 2";

fn live_hosts_sql() -> String {
    format!(
        "SELECT h.id, h.host, h.port, h.scheme, h.max_procs, h.version, h.status, h.last_heartbeat, h.registered_at, \
         (SELECT COUNT(*) FROM processes p WHERE p.host_id = h.id AND p.state IN {UNFINISHED}) AS busy \
         FROM hosts h WHERE h.status = 'up' AND h.last_heartbeat >= $1 ORDER BY h.id"
    )
}

/// One dispatch round's transaction (see [`Store::dispatch_round`]).
#[derive(Debug)]
pub struct DispatchRound {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
}

impl DispatchRound {
    /// Live hosts with their load, as of this round.
    pub async fn live_hosts(&mut self, cutoff: i64) -> Result<Vec<HostRow>> {
        let rows = sqlx::query(&live_hosts_sql())
            .bind(cutoff)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(host_row).collect()
    }

    /// The oldest queued processes, locked for this round on Postgres
    /// (`FOR UPDATE SKIP LOCKED`: rows another transaction holds, such as
    /// a kill in progress, are left for a later round).
    pub async fn queued(&mut self, limit: i64) -> Result<Vec<QueuedProc>> {
        let sql = match self.backend {
            Backend::Postgres => {
                "SELECT id, spec, created_at FROM processes WHERE state = 'queued' \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => {
                "SELECT id, spec, created_at FROM processes WHERE state = 'queued' ORDER BY id LIMIT $1"
            }
        };
        let rows = sqlx::query(sql)
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedProc {
                    id: r.try_get(0)?,
                    spec: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Marks processes `init` on their hosts; returns the ids actually
    /// claimed (each update is conditional on `queued`, so a process killed
    /// meanwhile is skipped and none is placed twice).
    pub async fn claim(&mut self, claims: &[Claim], now: i64) -> Result<Vec<i64>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        match self.backend {
            Backend::Postgres => self.claim_set(claims, now).await,
            Backend::Sqlite => self.claim_each(claims, now).await,
        }
    }

    /// Ends the round: the claims are kept and the lock released.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Postgres: the whole batch in one statement (one round trip): the
    /// claims travel as one JSON parameter (the `Any` driver binds no
    /// arrays), the update and the history insert are one CTE.
    async fn claim_set(&mut self, claims: &[Claim], now: i64) -> Result<Vec<i64>> {
        let batch: Vec<serde_json::Value> = claims
            .iter()
            .map(|c| {
                serde_json::json!({
                    "proc_id": c.proc_id,
                    "host_id": c.host_id,
                    "host": c.host,
                    "token_hash": c.token_hash,
                    "lease_until": c.lease_until,
                })
            })
            .collect();
        let batch =
            serde_json::to_string(&batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rows = sqlx::query(
            "WITH c AS (SELECT * FROM json_to_recordset($1::json) \
                 AS c(proc_id BIGINT, host_id BIGINT, host TEXT, token_hash TEXT, lease_until BIGINT)), \
             u AS (UPDATE processes p SET state = 'init', host_id = c.host_id, host = c.host, \
                 token_hash = c.token_hash, token_hash_next = NULL, lease_until = c.lease_until, \
                 updated_at = $2, missed_heartbeats = 0, reason = NULL \
                 FROM c WHERE p.id = c.proc_id AND p.state = 'queued' RETURNING p.id), \
             h AS (INSERT INTO history (proc_id, state, at) SELECT id, 'init', $2 FROM u) \
             SELECT id FROM u ORDER BY id",
        )
        .bind(batch)
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// SQLite: statement by statement on the in-process write connection,
    /// where a statement costs no round trip.
    async fn claim_each(&mut self, claims: &[Claim], now: i64) -> Result<Vec<i64>> {
        let mut done = Vec::with_capacity(claims.len());
        for c in claims {
            let n = sqlx::query(
                "UPDATE processes SET state = 'init', host_id = $1, host = $2, token_hash = $3, \
                 token_hash_next = NULL, lease_until = $4, updated_at = $5, missed_heartbeats = 0, \
                 reason = NULL WHERE id = $6 AND state = 'queued'",
            )
            .bind(c.host_id)
            .bind(&c.host)
            .bind(&c.token_hash)
            .bind(c.lease_until)
            .bind(now)
            .bind(c.proc_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query("INSERT INTO history (proc_id, state, at) VALUES ($1, 'init', $2)")
                    .bind(c.proc_id)
                    .bind(now)
                    .execute(&mut *self.tx)
                    .await?;
                done.push(c.proc_id);
            }
        }
        Ok(done)
    }
}

/// What became of a log chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored (or already held): the log's length now.
    Size(u64),
    /// The chunk starts past the end: the offset expected.
    Gap(u64),
    /// No such process.
    NotFound,
}

/// A file in the file store.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    /// Its path under `/files/`.
    pub path: String,
    /// Bytes.
    pub size: i64,
    /// SHA-256 hex.
    pub sha256: String,
    /// Last change, ms.
    pub modified: i64,
}

/// A process list filter.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only these states (any, when empty).
    pub states: Vec<ProcState>,
    /// Only this host (`host:port`).
    pub host: Option<String>,
    /// Only ids below this (keyset cursor).
    pub before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) read: AnyPool,
    pub(crate) write: AnyPool,
    backend: Backend,
    /// SQLite: the lock file held while this master runs (one master per
    /// file); taken out (so unlocked) at close.
    lock: Option<Arc<std::sync::Mutex<Option<SqliteLock>>>>,
}

/// An argument of a query built at run time.
enum Arg {
    I(i64),
    S(String),
}

impl Store {
    /// Connects, creating the SQLite file if missing, and applies migrations.
    pub async fn connect(url: &str, cfg: &StoreConfig) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_owned()));
        };
        let acquire = secs(cfg.acquire_timeout_secs).max(Duration::from_millis(100));
        let store = match backend {
            Backend::Sqlite => {
                let sqlite = sqlite_url(url)?; // makes the file's directory
                let lock = lock_sqlite(url)?;
                let url = sqlite;
                let sync = cfg.sqlite_synchronous;
                let write = sqlite_pool(&url, 1, acquire, sync).await?;
                let read = sqlite_pool(&url, cfg.max_connections.max(1), acquire, sync).await?;
                Store {
                    read,
                    write,
                    backend,
                    lock,
                }
            }
            Backend::Postgres => {
                // A master frozen inside a transaction (SIGSTOP, a paused
                // VM, a cut network) would keep its locks, the dispatch lock
                // among them, for as long as its connection lives: the
                // server ends such a session after this long.
                let idle_ms = secs(cfg.pg_idle_transaction_timeout_secs).as_millis();
                let set_idle = format!("SET idle_in_transaction_session_timeout = {idle_ms}");
                let pool = AnyPoolOptions::new()
                    .max_connections(cfg.max_connections.max(2))
                    .acquire_timeout(acquire)
                    .after_connect(move |conn, _| {
                        let set_idle = set_idle.clone();
                        Box::pin(async move {
                            conn.execute(set_idle.as_str()).await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?;
                Store {
                    read: pool.clone(),
                    write: pool,
                    backend,
                    lock: None,
                }
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pools (at shutdown) and lets another master have the
    /// SQLite file.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
        if let Some(lock) = &self.lock {
            if let Ok(mut held) = lock.lock() {
                drop(held.take()); // dropping the flock releases it
            }
        }
    }

    async fn migrate(&self) -> Result<()> {
        self.write
            .execute(
                "CREATE TABLE IF NOT EXISTS dadd_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await?;
        let migrations = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        for &(version, sql) in migrations {
            let mut tx = self.write.begin().await?;
            // Claims the version first (a write), so two masters starting
            // together cannot both apply it: the second fails on the key.
            let claimed = sqlx::query(
                "INSERT INTO dadd_migrations (version, applied_at) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
            )
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                continue;
            }
            for stmt in split_sql(sql) {
                tx.execute(stmt.as_str())
                    .await
                    .map_err(|source| StoreError::Migration { version, source })?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    // ---- processes -------------------------------------------------------

    /// Stores a new `queued` process and its first history entry.
    pub async fn insert_proc(&self, spec: &str, cmd: &[String], now: i64) -> Result<ProcRow> {
        let cmd_json =
            serde_json::to_string(cmd).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.write.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO processes (state, spec, cmd, created_at, updated_at) VALUES ('queued', $1, $2, $3, $3) RETURNING id",
        )
        .bind(spec)
        .bind(&cmd_json)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        sqlx::query("INSERT INTO history (proc_id, state, at) VALUES ($1, 'queued', $2)")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ProcRow {
            id,
            state: ProcState::Queued,
            spec: spec.to_owned(),
            cmd: cmd.to_vec(),
            host_id: None,
            host: None,
            pid: None,
            exit_code: None,
            signal: None,
            reason: None,
            created_at: now,
            started_at: None,
            ended_at: None,
            updated_at: now,
            token_hash: None,
            token_hash_next: None,
            log_size: 0,
        })
    }

    /// One process, with its spec.
    pub async fn get_proc(&self, id: i64) -> Result<Option<ProcRow>> {
        let sql = format!("SELECT {SUMMARY_COLS}, spec FROM processes WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| proc_row(&r, true)).transpose()
    }

    /// A page of processes, newest first, without spec or token hash.
    ///
    /// The page is built in SQL as one JSON text row (an array of arrays,
    /// one per process) so the driver decodes a single row instead of one
    /// per process: per-row decoding through `AnyPool` was most of a page's
    /// time.
    pub async fn list_procs(&self, f: &ListFilter) -> Result<Vec<ProcRow>> {
        let mut inner = format!("SELECT {LIST_COLS} FROM processes");
        let mut args = Vec::new();
        let mut conds = Vec::new();
        if !f.states.is_empty() {
            let mut ph = Vec::new();
            for st in &f.states {
                args.push(Arg::S(st.as_str().to_owned()));
                ph.push(format!("${}", args.len()));
            }
            conds.push(format!("state IN ({})", ph.join(", ")));
        }
        if let Some(h) = &f.host {
            args.push(Arg::S(h.clone()));
            conds.push(format!("host = ${}", args.len()));
        }
        if let Some(b) = f.before {
            args.push(Arg::I(b));
            conds.push(format!("id < ${}", args.len()));
        }
        if !conds.is_empty() {
            inner.push_str(" WHERE ");
            inner.push_str(&conds.join(" AND "));
        }
        args.push(Arg::I(f.limit));
        inner.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
        let sql = match self.backend {
            Backend::Sqlite => format!(
                "SELECT json_group_array(json_array({LIST_COLS_SQLITE})) FROM ({inner}) AS p"
            ),
            Backend::Postgres => format!(
                "SELECT COALESCE(json_agg(json_build_array({LIST_COLS_POSTGRES})), '[]')::text \
                 FROM ({inner}) AS p"
            ),
        };
        let mut q = sqlx::query(&sql);
        for a in args {
            q = match a {
                Arg::I(i) => q.bind(i),
                Arg::S(s) => q.bind(s),
            };
        }
        let page: Option<String> = q.fetch_one(&self.read).await?.try_get(0)?;
        let Some(page) = page else {
            return Ok(Vec::new());
        };
        let listed: Vec<Listed> = serde_json::from_str(&page)
            .map_err(|e| StoreError::Corrupt(format!("process page: {e}")))?;
        let mut rows: Vec<ProcRow> = listed.into_iter().map(Listed::into_row).collect();
        // Both aggregate in the subquery's order in practice but do not
        // promise it; sorting here is cheaper than Postgres's ordered
        // aggregate.
        rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.id));
        Ok(rows)
    }

    /// A process's history, oldest first.
    pub async fn history(&self, id: i64) -> Result<Vec<HistoryRow>> {
        let rows =
            sqlx::query("SELECT state, at, reason FROM history WHERE proc_id = $1 ORDER BY at, id")
                .bind(id)
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    state: state_of(r.try_get::<String, _>(0)?)?,
                    at: r.try_get(1)?,
                    reason: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Applies a change if the process is still in `from`; appends it to the
    /// history. False when the process moved meanwhile (or does not exist).
    pub async fn transition(&self, id: i64, from: ProcState, c: &Change) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let n = sqlx::query(
            "UPDATE processes SET state = $1, pid = COALESCE($2, pid), exit_code = COALESCE($3, exit_code), \
             signal = COALESCE($4, signal), reason = $5, \
             started_at = CASE WHEN $6 = 1 THEN COALESCE(started_at, $7) ELSE started_at END, \
             ended_at = CASE WHEN $8 = 1 THEN $7 ELSE NULL END, \
             updated_at = $7, missed_heartbeats = 0 \
             WHERE id = $9 AND state = $10",
        )
        .bind(c.to.as_str())
        .bind(c.pid)
        .bind(c.exit_code)
        .bind(c.signal)
        .bind(c.reason.as_deref())
        .bind(i64::from(c.to == ProcState::Running))
        .bind(c.at)
        .bind(i64::from(c.to.is_final()))
        .bind(id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("INSERT INTO history (proc_id, state, at, reason) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(c.to.as_str())
            .bind(c.at)
            .bind(c.reason.as_deref())
            .execute(&mut *tx)
            .await?;
        if c.notice {
            // Once per state change: the update above is conditional, so
            // only one master (one request) gets here for it.
            sqlx::query(
                "INSERT INTO notices (proc_id, state, created_at, due_at) VALUES ($1, $2, $3, $3)",
            )
            .bind(id)
            .bind(c.to.as_str())
            .bind(c.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    // ---- dispatch --------------------------------------------------------

    /// Hosts that are up and heartbeated since `cutoff`, with their load.
    pub async fn live_hosts(&self, cutoff: i64) -> Result<Vec<HostRow>> {
        let rows = sqlx::query(&live_hosts_sql())
            .bind(cutoff)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(host_row).collect()
    }

    /// Opens a dispatch round: one transaction that, on Postgres, first
    /// takes the cluster-wide dispatch lock (a transaction-level advisory
    /// lock), so the masters sharing the database place one round after
    /// another, each seeing the last one's claims: no host is booked past
    /// its `max_procs`, whichever masters run. The lock goes with the
    /// transaction, also when a master dies holding it.
    pub async fn dispatch_round(&self) -> Result<DispatchRound> {
        let mut tx = self.write.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query(&format!("SELECT pg_advisory_xact_lock({DISPATCH_LOCK})"))
                .execute(&mut *tx)
                .await?;
        }
        Ok(DispatchRound {
            tx,
            backend: self.backend,
        })
    }

    /// Claims processes in a round of their own (tests, tools).
    pub async fn claim(&self, claims: &[Claim], now: i64) -> Result<Vec<i64>> {
        let mut round = self.dispatch_round().await?;
        let done = round.claim(claims, now).await?;
        round.commit().await?;
        Ok(done)
    }

    /// Undoes a claim whose worker refused it (so never started it): the
    /// process is `queued` again with no host, and the `init` entry goes.
    pub async fn unclaim(&self, proc_id: i64, host_id: i64) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let n = sqlx::query(
            "UPDATE processes SET state = 'queued', host_id = NULL, host = NULL, token_hash = NULL, \
             token_hash_next = NULL, lease_until = NULL WHERE id = $1 AND state = 'init' AND host_id = $2",
        )
        .bind(proc_id)
        .bind(host_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            sqlx::query("DELETE FROM history WHERE proc_id = $1 AND state = 'init'")
                .bind(proc_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Processes still `init` past their claim's lease: the master that
    /// claimed them died (or never heard from the worker) before the runner
    /// reported. Oldest first.
    pub async fn expired_claims(&self, now: i64, limit: i64) -> Result<Vec<ExpiredClaim>> {
        let rows = sqlx::query(
            "SELECT id, spec, created_at, host_id FROM processes \
             WHERE state = 'init' AND lease_until < $1 ORDER BY id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ExpiredClaim {
                    proc: QueuedProc {
                        id: r.try_get(0)?,
                        spec: r.try_get(1)?,
                        created_at: r.try_get(2)?,
                    },
                    host_id: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Takes over an expired claim: a new lease, and one more accepted
    /// token for the re-sent envelope (a runner the worker started already
    /// holds an earlier one, which stays good). False when another master
    /// took it first or the runner reported meanwhile.
    pub async fn renew_claim(
        &self,
        id: i64,
        now: i64,
        lease_until: i64,
        token_hash: &str,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE processes SET lease_until = $1, \
             token_hash_next = CASE WHEN token_hash_next IS NULL THEN $2 ELSE token_hash_next || ' ' || $2 END \
             WHERE id = $3 AND state = 'init' AND lease_until < $4",
        )
        .bind(lease_until)
        .bind(token_hash)
        .bind(id)
        .bind(now)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The worker started the runner with this token (answered 201): it is
    /// the process's token from now on, the others go.
    pub async fn settle_token(&self, id: i64, token_hash: &str) -> Result<()> {
        sqlx::query("UPDATE processes SET token_hash = $1, token_hash_next = NULL WHERE id = $2")
            .bind(token_hash)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Ends a claim's lease now (its worker gave no answer): the next
    /// takeover pass, on any master, asks the worker again.
    pub async fn expire_claim(&self, id: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE processes SET lease_until = $1 WHERE id = $2 AND state = 'init'")
            .bind(now - 1)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    // ---- hosts -----------------------------------------------------------

    /// Registers a host or records its heartbeat; returns its id and first registration.
    pub async fn heartbeat(
        &self,
        host: &str,
        port: u16,
        scheme: &str,
        max_procs: u32,
        version: &str,
        now: i64,
    ) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "INSERT INTO hosts (host, port, scheme, max_procs, version, status, last_heartbeat, registered_at) \
             VALUES ($1, $2, $3, $4, $5, 'up', $6, $6) \
             ON CONFLICT (host, port) DO UPDATE SET scheme = excluded.scheme, max_procs = excluded.max_procs, \
             version = excluded.version, status = 'up', last_heartbeat = excluded.last_heartbeat \
             RETURNING id, registered_at",
        )
        .bind(host)
        .bind(i64::from(port))
        .bind(scheme)
        .bind(i64::from(max_procs))
        .bind(version)
        .bind(now)
        .fetch_one(&self.write)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Processes the master believes are setup/running on a host, with their
    /// missed-heartbeat counts.
    pub async fn active_on_host(&self, host_id: i64) -> Result<Vec<(i64, ProcState, i64)>> {
        let rows = sqlx::query(
            "SELECT id, state, missed_heartbeats FROM processes WHERE host_id = $1 AND state IN ('setup','running')",
        )
        .bind(host_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    state_of(r.try_get::<String, _>(1)?)?,
                    r.try_get(2)?,
                ))
            })
            .collect()
    }

    /// Sets the missed-heartbeat count of processes still in `state`.
    pub async fn set_missed(&self, ids: &[i64], missed: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for id in ids {
            sqlx::query("UPDATE processes SET missed_heartbeats = $1 WHERE id = $2")
                .bind(missed)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every host, with its load.
    pub async fn list_hosts(&self) -> Result<Vec<HostRow>> {
        let sql = format!(
            "SELECT h.id, h.host, h.port, h.scheme, h.max_procs, h.version, h.status, h.last_heartbeat, h.registered_at, \
             (SELECT COUNT(*) FROM processes p WHERE p.host_id = h.id AND p.state IN {UNFINISHED}) AS busy \
             FROM hosts h ORDER BY h.id"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        rows.iter().map(host_row).collect()
    }

    /// One host by id, or by `host:port` (`[v6]:port` for IPv6).
    pub async fn get_host(&self, key: &str) -> Result<Option<HostRow>> {
        let base = format!(
            "SELECT h.id, h.host, h.port, h.scheme, h.max_procs, h.version, h.status, h.last_heartbeat, h.registered_at, \
             (SELECT COUNT(*) FROM processes p WHERE p.host_id = h.id AND p.state IN {UNFINISHED}) AS busy FROM hosts h"
        );
        let row = if let Ok(id) = key.parse::<i64>() {
            sqlx::query(&format!("{base} WHERE h.id = $1"))
                .bind(id)
                .fetch_optional(&self.read)
                .await?
        } else {
            let Some((host, port)) = key.rsplit_once(':') else {
                return Ok(None);
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let Ok(port) = port.parse::<u16>() else {
                return Ok(None);
            };
            sqlx::query(&format!("{base} WHERE h.host = $1 AND h.port = $2"))
                .bind(host)
                .bind(i64::from(port))
                .fetch_optional(&self.read)
                .await?
        };
        row.as_ref().map(host_row).transpose()
    }

    /// Forgets a host.
    pub async fn delete_host(&self, id: i64) -> Result<bool> {
        let n = sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Hosts recorded up whose last heartbeat is older than `cutoff`.
    pub async fn stale_hosts(&self, cutoff: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT id FROM hosts WHERE status = 'up' AND last_heartbeat < $1")
            .bind(cutoff)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Marks a host down if it is still stale (a heartbeat may have just come).
    pub async fn mark_host_down(&self, id: i64, cutoff: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE hosts SET status = 'down' WHERE id = $1 AND status = 'up' AND last_heartbeat < $2",
        )
        .bind(id)
        .bind(cutoff)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Unfinished processes placed on a host.
    pub async fn unfinished_on_host(&self, host_id: i64) -> Result<Vec<(i64, ProcState)>> {
        let sql =
            format!("SELECT id, state FROM processes WHERE host_id = $1 AND state IN {UNFINISHED}");
        let rows = sqlx::query(&sql)
            .bind(host_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, state_of(r.try_get::<String, _>(1)?)?)))
            .collect()
    }

    // ---- logs ------------------------------------------------------------

    /// Appends a chunk at `offset`, skipping bytes already held; past `cap`
    /// bytes stored, the oldest chunks after the head half are dropped.
    pub async fn append_log(
        &self,
        id: i64,
        offset: u64,
        data: &[u8],
        cap: u64,
    ) -> Result<Appended> {
        for _ in 0..16 {
            let row = sqlx::query("SELECT log_size, log_stored FROM processes WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
            let Some(row) = row else {
                return Ok(Appended::NotFound);
            };
            let size = u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0);
            let stored = u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0);
            if offset > size {
                return Ok(Appended::Gap(size));
            }
            let end = offset + data.len() as u64;
            if end <= size {
                return Ok(Appended::Size(size));
            }
            let fresh = &data[usize::try_from(size - offset).unwrap_or(0)..];
            let len = fresh.len() as i64;
            let mut tx = self.write.begin().await?;
            let n = sqlx::query(
                "UPDATE processes SET log_size = $1, log_stored = log_stored + $2 WHERE id = $3 AND log_size = $4",
            )
            .bind(end as i64)
            .bind(len)
            .bind(id)
            .bind(size as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                continue;
            }
            sqlx::query(
                "INSERT INTO log_chunks (proc_id, \"offset\", len, data) VALUES ($1, $2, $3, $4)",
            )
            .bind(id)
            .bind(size as i64)
            .bind(len)
            .bind(fresh)
            .execute(&mut *tx)
            .await?;
            let mut now_stored = stored + fresh.len() as u64;
            if now_stored > cap {
                let head = (cap / 2) as i64;
                let rows = sqlx::query(
                    "SELECT \"offset\", len FROM log_chunks WHERE proc_id = $1 AND \"offset\" >= $2 AND \"offset\" < $3 ORDER BY \"offset\" LIMIT 256",
                )
                .bind(id)
                .bind(head)
                .bind(size as i64)
                .fetch_all(&mut *tx)
                .await?;
                let mut dropped = 0i64;
                for r in rows {
                    if now_stored <= cap {
                        break;
                    }
                    let (off, l): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
                    sqlx::query("DELETE FROM log_chunks WHERE proc_id = $1 AND \"offset\" = $2")
                        .bind(id)
                        .bind(off)
                        .execute(&mut *tx)
                        .await?;
                    now_stored = now_stored.saturating_sub(l as u64);
                    dropped += l;
                }
                if dropped > 0 {
                    sqlx::query("UPDATE processes SET log_stored = log_stored - $1 WHERE id = $2")
                        .bind(dropped)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            return Ok(Appended::Size(end));
        }
        Err(StoreError::Corrupt(format!(
            "log of process {id} kept changing under concurrent uploads; retry the chunk"
        )))
    }

    /// The offset of the stored chunk holding byte `at` (or the first after it).
    pub async fn log_chunk_start(&self, id: i64, at: u64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(\"offset\") FROM log_chunks WHERE proc_id = $1 AND \"offset\" <= $2",
        )
        .bind(id)
        .bind(at as i64)
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Up to `limit` chunks at or after `from`, in order.
    pub async fn log_chunks(&self, id: i64, from: i64, limit: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT \"offset\", data FROM log_chunks WHERE proc_id = $1 AND \"offset\" >= $2 ORDER BY \"offset\" LIMIT $3",
        )
        .bind(id)
        .bind(from)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The last chunks of a log, newest last, about `max_bytes` of them.
    pub async fn log_tail(&self, id: i64, max_bytes: usize) -> Result<Vec<u8>> {
        let rows = sqlx::query(
            "SELECT data FROM log_chunks WHERE proc_id = $1 ORDER BY \"offset\" DESC LIMIT 8",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut total = 0;
        for r in rows {
            let d: Vec<u8> = r.try_get(0)?;
            total += d.len();
            parts.push(d);
            if total >= max_bytes {
                break;
            }
        }
        parts.reverse();
        let mut all = parts.concat();
        if all.len() > max_bytes {
            all.drain(..all.len() - max_bytes);
        }
        Ok(all)
    }

    // ---- files -----------------------------------------------------------

    /// Records a stored file.
    pub async fn put_file(&self, f: &FileRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO files (path, size, sha256, modified) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, modified = excluded.modified",
        )
        .bind(&f.path)
        .bind(f.size)
        .bind(&f.sha256)
        .bind(f.modified)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// One file's record.
    pub async fn get_file(&self, path: &str) -> Result<Option<FileRow>> {
        let row = sqlx::query("SELECT path, size, sha256, modified FROM files WHERE path = $1")
            .bind(path)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| file_row(&r)).transpose()
    }

    /// Forgets a file.
    pub async fn delete_file(&self, path: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM files WHERE path = $1")
            .bind(path)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Every file, by path.
    pub async fn list_files(&self) -> Result<Vec<FileRow>> {
        let rows = sqlx::query("SELECT path, size, sha256, modified FROM files ORDER BY path")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(file_row).collect()
    }

    // ---- metrics and retention ------------------------------------------

    /// Processes per state.
    pub async fn count_by_state(&self) -> Result<Vec<(ProcState, i64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM processes GROUP BY state")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((state_of(r.try_get::<String, _>(0)?)?, r.try_get(1)?)))
            .collect()
    }

    /// Deletes up to `batch` processes that ended before `cutoff`, with their
    /// history and log; returns how many went. On Postgres one master
    /// prunes at a time (a transaction-level advisory lock): a master that
    /// finds it taken prunes nothing (0), the other is at it.
    pub async fn prune(&self, cutoff: i64, batch: i64) -> Result<usize> {
        let mut tx = self.write.begin().await?;
        if self.backend == Backend::Postgres {
            let row = sqlx::query(&format!(
                "SELECT CASE WHEN pg_try_advisory_xact_lock({RETENTION_LOCK}) THEN 1 ELSE 0 END"
            ))
            .fetch_one(&mut *tx)
            .await?;
            if row.try_get::<i32, _>(0)? == 0 {
                tx.rollback().await?;
                return Ok(0);
            }
        }
        let rows = sqlx::query(
            "SELECT id FROM processes WHERE ended_at IS NOT NULL AND ended_at < $1 ORDER BY ended_at LIMIT $2",
        )
        .bind(cutoff)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let ids: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut gone = 0;
        for id in ids {
            let n = sqlx::query(
                "DELETE FROM processes WHERE id = $1 AND ended_at IS NOT NULL AND ended_at < $2",
            )
            .bind(id)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                for table in ["history", "log_chunks"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE proc_id = $1"))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                gone += 1;
            }
        }
        tx.commit().await?;
        Ok(gone)
    }
}

// ---- dashboard summary (GET /api/stats) --------------------------------

/// The figures behind the dashboard's summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DashboardStats {
    /// Unfinished processes per state, whenever submitted (states with
    /// none are absent).
    pub unfinished: Vec<(ProcState, i64)>,
    /// Processes submitted since the window start, per minute (index from
    /// the start) and state; empty groups are absent.
    pub window: Vec<(i64, ProcState, i64)>,
    /// Hosts heartbeating since the cutoff.
    pub hosts_up: i64,
    /// Hosts known.
    pub hosts_total: i64,
}

impl Store {
    /// The dashboard's summary: unfinished processes per state, processes
    /// submitted at or after `since` (ms) per minute and state, hosts up
    /// (heartbeat at or after `up_cutoff`) and known.
    ///
    /// Cheap with any number of processes, since the dashboard polls it:
    /// the unfinished states are a range of the `(state, id)` index; the
    /// window's first id is found by a binary search over the primary key
    /// (ids grow with `created_at`), so only the window's rows are read.
    /// Final states are counted within the window only, never over the
    /// whole history.
    pub async fn dashboard_stats(&self, since: i64, up_cutoff: i64) -> Result<DashboardStats> {
        let mut conn = self.read.acquire().await?;
        let rows = sqlx::query(
            "SELECT state, COUNT(*) FROM processes WHERE state IN ('queued','init','setup','running') GROUP BY state",
        )
        .fetch_all(&mut *conn)
        .await?;
        let unfinished = rows
            .iter()
            .map(|r| Ok((state_of(r.try_get::<String, _>(0)?)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>>>()?;
        let hosts_total: i64 = sqlx::query("SELECT COUNT(*) FROM hosts")
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        let hosts_up: i64 =
            sqlx::query("SELECT COUNT(*) FROM hosts WHERE status = 'up' AND last_heartbeat >= $1")
                .bind(up_cutoff)
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
        let mut window = Vec::new();
        if let Some(first) = first_id_since(&mut conn, since).await? {
            let rows = sqlx::query(
                "SELECT (created_at - $1) / 60000 AS m, state, COUNT(*) FROM processes \
                 WHERE id >= $2 AND created_at >= $1 GROUP BY m, state",
            )
            .bind(since)
            .bind(first)
            .fetch_all(&mut *conn)
            .await?;
            for r in rows {
                window.push((
                    r.try_get(0)?,
                    state_of(r.try_get::<String, _>(1)?)?,
                    r.try_get(2)?,
                ));
            }
        }
        Ok(DashboardStats {
            unfinished,
            window,
            hosts_up,
            hosts_total,
        })
    }
}

/// A lower bound of the ids created at or after `since`, by binary search
/// on the primary key (a few dozen index lookups at most, on one
/// connection); None when no process is that recent.
async fn first_id_since(conn: &mut sqlx::AnyConnection, since: i64) -> Result<Option<i64>> {
    // Two subqueries: SQLite answers a lone MIN or MAX from the index, but
    // both in one SELECT from a scan of the table.
    let row =
        sqlx::query("SELECT (SELECT MIN(id) FROM processes), (SELECT MAX(id) FROM processes)")
            .fetch_one(&mut *conn)
            .await?;
    let (Some(min), Some(max)) = (
        row.try_get::<Option<i64>, _>(0)?,
        row.try_get::<Option<i64>, _>(1)?,
    ) else {
        return Ok(None);
    };
    match probe_at(conn, max).await? {
        Some((_, at)) if at >= since => {}
        _ => return Ok(None),
    }
    // Invariant: the first process in the window is the first process at
    // or after some id in `lo..=hi`, and the one at or after `hi` is in it.
    let (mut lo, mut hi) = (min, max);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match probe_at(conn, mid).await? {
            Some((_, at)) if at >= since => hi = mid,
            Some((id, _)) => lo = id + 1,
            None => break,
        }
    }
    Ok(Some(lo))
}

/// The first process at or after id `at` (ids have gaps after pruning):
/// its id and creation time.
async fn probe_at(conn: &mut sqlx::AnyConnection, at: i64) -> Result<Option<(i64, i64)>> {
    let row =
        sqlx::query("SELECT id, created_at FROM processes WHERE id >= $1 ORDER BY id LIMIT 1")
            .bind(at)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// Makes sure a SQLite URL creates its file, and its directory exists.
/// The SQLite file a `sqlite:` URL names; None for an in-memory database.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    (path != ":memory:" && !path.is_empty()).then_some(path)
}

/// Takes `<file>.lock` beside a SQLite store for as long as this master
/// runs: a second master on the same file would dispatch the same queue
/// without the row locks only Postgres has. The lock file names the holder's
/// pid; the kernel drops the lock when the process ends, however it ends.
type SqliteLock = nix::fcntl::Flock<std::fs::File>;

fn lock_sqlite(url: &str) -> Result<Option<Arc<std::sync::Mutex<Option<SqliteLock>>>>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Read, Seek, Write};
    let Some(path) = sqlite_path(url) else {
        return Ok(None);
    };
    let lock_path = format!("{path}.lock");
    let lock_err = |source| StoreError::LockFile {
        path: lock_path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(lock_err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut held) => {
            held.set_len(0).map_err(lock_err)?;
            held.rewind().map_err(lock_err)?;
            writeln!(held, "{}", std::process::id()).map_err(lock_err)?;
            Ok(Some(Arc::new(std::sync::Mutex::new(Some(held)))))
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(StoreError::Locked {
                path: path.to_owned(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            })
        }
        Err((_, e)) => Err(lock_err(std::io::Error::from(e))),
    }
}

fn sqlite_url(url: &str) -> Result<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if let Some(path) = sqlite_path(url) {
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
    }
    let mut out = format!("sqlite://{path}");
    if query.contains("mode=") {
        out.push('?');
        out.push_str(query);
    } else if query.is_empty() {
        out.push_str("?mode=rwc");
    } else {
        out.push('?');
        out.push_str(query);
        out.push_str("&mode=rwc");
    }
    Ok(out)
}

async fn sqlite_pool(url: &str, max: u32, acquire: Duration, sync: SqliteSync) -> Result<AnyPool> {
    let sync_pragma = match sync {
        SqliteSync::Full => "PRAGMA synchronous = FULL",
        SqliteSync::Normal => "PRAGMA synchronous = NORMAL",
    };
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .acquire_timeout(acquire)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // WAL lets readers run beside the writer; FULL by default
                // because an acknowledged report is never resent by the runner.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute(sync_pragma).await?;
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// Splits a migration into statements at `;`, except inside `$$` bodies
/// (Postgres functions); whole-line `--` comments go.
fn split_sql(sql: &str) -> Vec<String> {
    let cleaned: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut current = String::new();
    for (i, part) in cleaned.split("$$").enumerate() {
        if i % 2 == 1 {
            // Inside a dollar-quoted body: kept whole.
            current.push_str("$$");
            current.push_str(part);
            current.push_str("$$");
            continue;
        }
        let mut pieces = part.split(';').peekable();
        while let Some(piece) = pieces.next() {
            current.push_str(piece);
            if pieces.peek().is_some() {
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn state_of(s: String) -> Result<ProcState> {
    ProcState::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn proc_row(r: &AnyRow, with_spec: bool) -> Result<ProcRow> {
    let cmd: String = r.try_get("cmd")?;
    Ok(ProcRow {
        id: r.try_get("id")?,
        state: state_of(r.try_get("state")?)?,
        spec: if with_spec {
            r.try_get("spec")?
        } else {
            String::new()
        },
        cmd: serde_json::from_str(&cmd).map_err(|e| StoreError::Corrupt(format!("cmd: {e}")))?,
        host_id: r.try_get("host_id")?,
        host: r.try_get("host")?,
        pid: r.try_get("pid")?,
        exit_code: r.try_get("exit_code")?,
        signal: r.try_get("signal")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        updated_at: r.try_get("updated_at")?,
        token_hash: r.try_get("token_hash")?,
        token_hash_next: r.try_get("token_hash_next")?,
        log_size: r.try_get("log_size")?,
    })
}

fn host_row(r: &AnyRow) -> Result<HostRow> {
    Ok(HostRow {
        id: r.try_get(0)?,
        host: r.try_get(1)?,
        port: r.try_get(2)?,
        scheme: r.try_get(3)?,
        max_procs: r.try_get(4)?,
        version: r.try_get(5)?,
        status: r.try_get(6)?,
        last_heartbeat: r.try_get(7)?,
        registered_at: r.try_get(8)?,
        busy: r.try_get(9)?,
    })
}

fn file_row(r: &AnyRow) -> Result<FileRow> {
    Ok(FileRow {
        path: r.try_get(0)?,
        size: r.try_get(1)?,
        sha256: r.try_get(2)?,
        modified: r.try_get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements() {
        let stmts = split_sql(SQLITE_MIGRATIONS[0].1);
        assert!(stmts.len() >= 8);
        assert!(stmts.iter().all(|s| !s.contains(';')));
        assert_eq!(split_sql(POSTGRES_MIGRATIONS[0].1).len(), stmts.len());
    }

    #[test]
    fn sqlite_urls_create_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/b/x.db");
        let url = sqlite_url(&format!("sqlite://{}", p.display())).expect("url");
        assert!(url.ends_with("?mode=rwc"));
        assert!(dir.path().join("a/b").is_dir());
    }
}
