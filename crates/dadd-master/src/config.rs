//! The master's configuration: a typed, documented struct, loaded in layers.
//!
//! Layers, lowest first: built-in defaults < the TOML file (`--config`) <
//! `DADD_…` environment variables < command-line flags. A key the master does
//! not know is an error in the file, so a stale or misspelt setting is never
//! silently ignored; environment variables are filtered to the sections the
//! master owns, because the same environment often holds other daemons'
//! `DADD_…` settings.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// A configuration that cannot be loaded or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layers could not be merged or deserialized.
    #[error("cannot load the configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// An environment variable names a key the master does not know.
    #[error("environment variable {var} is not a known setting (is it misspelt? see deploy/master.toml)")]
    UnknownEnv {
        /// The variable.
        var: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The command line of `dadd-master`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "dadd-master",
    version,
    about = "Dadd's master: REST API, store, dispatcher, host liveness"
)]
pub struct Cli {
    /// A TOML configuration file (every key: deploy/master.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The address to listen on (default 127.0.0.1:5000).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// The store: sqlite://PATH or postgres://… (default sqlite://STATE_DIR/dadd-master.db).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Where the SQLite store and the file store live (default: the current dir).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The URL runners and workers reach the master at (default http://BIND).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Listen beyond loopback even with no API token configured.
    #[arg(long)]
    pub insecure: bool,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// How the daemon writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Everything the master can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:5000`.
    pub bind: String,
    /// The store URL: `sqlite://PATH` or `postgres://…`. Default
    /// `sqlite://<state_dir>/dadd-master.db` (created if missing).
    pub database_url: Option<String>,
    /// Directory for the SQLite store and the file store. Default `.`.
    pub state_dir: PathBuf,
    /// The URL runners and workers are told to reach the master at. Default `http://<bind>`
    /// (`https://` when TLS is on), with the actual bound port.
    pub public_url: Option<String>,
    /// Listen beyond loopback with no API token. Default `false`.
    pub insecure: bool,
    /// Log format, `text` or `json`. Default `text`.
    pub log_format: LogFormat,
    /// HTTP worker threads; 0 means one per CPU. Default `0`.
    pub http_workers: usize,
    /// Bearer tokens and secrets.
    pub auth: AuthConfig,
    /// Size and time limits.
    pub limits: LimitsConfig,
    /// Placement of queued processes.
    pub dispatch: DispatchConfig,
    /// Host liveness.
    pub liveness: LivenessConfig,
    /// Notifications on failed and lost processes.
    pub notify: NotifyConfig,
    /// Pruning of old finished processes.
    pub retention: RetentionConfig,
    /// TLS on the listener and for calls to workers.
    pub tls: TlsConfig,
    /// Store connection settings.
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:5000".to_owned(),
            database_url: None,
            state_dir: PathBuf::from("."),
            public_url: None,
            insecure: false,
            log_format: LogFormat::Text,
            http_workers: 0,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            dispatch: DispatchConfig::default(),
            liveness: LivenessConfig::default(),
            notify: NotifyConfig::default(),
            retention: RetentionConfig::default(),
            tls: TlsConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Bearer tokens and the cluster secret.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens for users and CI (`Authorization: Bearer …`), on every `/api`
    /// route, `/files` and `/metrics`. Env: comma-separated. Default: none,
    /// which leaves those routes open (loopback only, unless `insecure`).
    pub api_tokens: Vec<String>,
    /// Shared with the workers: required on `POST /api/hosts` and sent on every
    /// call to a worker. Default: none (registration open).
    pub cluster_secret: Option<String>,
}

/// Limits on bodies, logs and requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest spec accepted by `POST /api/procs`, bytes. Default 1 MiB.
    pub spec_bytes: usize,
    /// Largest JSON body of the other routes (reports, heartbeats), bytes. Default 256 KiB.
    pub json_bytes: usize,
    /// Largest log chunk (`PUT …/logfile`), bytes. Default 1 MiB.
    pub log_chunk_bytes: usize,
    /// Log kept per process; past it the head and the tail are kept. Default 64 MiB.
    pub log_cap_bytes: u64,
    /// Largest whole-log upload (`POST …/logfile`), bytes. Default 1 GiB.
    pub log_upload_bytes: u64,
    /// Largest file in the file store, bytes. Default 1 GiB.
    pub file_bytes: u64,
    /// Time a JSON request may take before the master answers 503, seconds. Default 30.
    pub request_timeout_secs: f64,
    /// Time a client has to send its request headers, seconds. Default 10.
    pub header_timeout_secs: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            spec_bytes: 1 << 20,
            json_bytes: 256 << 10,
            log_chunk_bytes: dadd_spec::api::LOG_CHUNK_BYTES as usize,
            log_cap_bytes: 64 << 20,
            log_upload_bytes: 1 << 30,
            file_bytes: 1 << 30,
            request_timeout_secs: 30.0,
            header_timeout_secs: 10.0,
        }
    }
}

/// The dispatcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Dispatches in flight at once (calls to workers' `/run`). Default 64.
    pub concurrency: usize,
    /// Processes claimed per store transaction. Default 256.
    pub batch: usize,
    /// Safety tick: the dispatcher looks at the queue at least this often,
    /// seconds (it is woken by events before). Default 5.
    pub tick_secs: f64,
    /// Time a worker has to answer `/run`, seconds. Default 10.
    pub worker_timeout_secs: f64,
    /// After a failed call, a host is skipped for this long, seconds. Default 2.
    pub host_backoff_secs: f64,
    /// A claim's lease, seconds: a process still `init` this long after its
    /// master claimed it (that master died, or its worker gave no answer) is
    /// sent again to the same worker by any master. At least
    /// `worker_timeout_secs` is used. Default 30.
    pub lease_secs: f64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            batch: 256,
            tick_secs: 5.0,
            worker_timeout_secs: 10.0,
            host_backoff_secs: 2.0,
            lease_secs: 30.0,
        }
    }
}

/// Host liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessConfig {
    /// A host with no heartbeat for this long is down and its unfinished
    /// processes are lost, seconds. Default 10.
    pub host_ttl_secs: f64,
    /// How often hosts are checked against the TTL, seconds. Default 1.
    pub check_interval_secs: f64,
    /// Consecutive heartbeats a setup/running process may be missing from
    /// before it is lost. Default 2.
    pub missed_heartbeats: u32,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            host_ttl_secs: 10.0,
            check_interval_secs: 1.0,
            missed_heartbeats: 2,
        }
    }
}

/// Notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// A URL POSTed a JSON notice on every failed or lost process. Default: none.
    pub webhook_url: Option<String>,
    /// Attempts per notice (an attempt retries only the channels, webhook
    /// or email, not yet delivered). Default 5.
    pub webhook_attempts: u32,
    /// Wait before the first retry, doubled each time (at most 300),
    /// seconds. Default 1.
    pub webhook_backoff_secs: f64,
    /// Time a webhook call may take, seconds. Default 10.
    pub webhook_timeout_secs: f64,
    /// Notify `killed` processes too. Default `false`.
    pub on_killed: bool,
    /// How often a master looks for due notices it was not woken for (one
    /// another master wrote, a retry, an expired lease), seconds. Default 1.
    pub poll_secs: f64,
    /// Email over SMTP. Default: off.
    pub smtp: SmtpConfig,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_attempts: 5,
            webhook_backoff_secs: 1.0,
            webhook_timeout_secs: 10.0,
            on_killed: false,
            poll_secs: 1.0,
            smtp: SmtpConfig::default(),
        }
    }
}

/// How mail is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// STARTTLS required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text: only for a relay on loopback.
    None,
}

/// Email notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// The SMTP server's host name; unset means no email. Default: none.
    pub server: Option<String>,
    /// Its port. Default 587.
    pub port: u16,
    /// `starttls`, `tls` or `none`. Default `starttls`.
    pub security: SmtpSecurity,
    /// Login, when the server wants one. Default: none.
    pub username: Option<String>,
    /// Password for `username`. Default: none.
    pub password: Option<String>,
    /// The sender. Default `dadd@localhost`.
    pub from: String,
    /// Recipients (env: comma-separated). Default: none.
    pub to: Vec<String>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            server: None,
            port: 587,
            security: SmtpSecurity::Starttls,
            username: None,
            password: None,
            from: "dadd@localhost".to_owned(),
            to: Vec::new(),
        }
    }
}

/// Pruning of finished processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Finished processes older than this many days are deleted with their
    /// history and log. Default: none (keep everything).
    pub days: Option<f64>,
    /// How often the pruner runs, seconds; it also removes abandoned
    /// uploads' chunks (Postgres file store), with or without `days`.
    /// Default 3600.
    pub interval_secs: f64,
    /// Processes deleted per transaction. Default 200.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: None,
            interval_secs: 3600.0,
            batch: 200,
        }
    }
}

/// TLS.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain for the listener; with `key`, the master speaks
    /// https. Default: none (http).
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`. Default: none.
    pub key: Option<PathBuf>,
    /// PEM CA bundle trusted for https calls to workers, in addition to the
    /// bundled web roots. Default: none.
    pub ca_file: Option<PathBuf>,
}

/// How hard SQLite makes each commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// Every acknowledged write survives a power loss (an fsync per commit).
    #[default]
    Full,
    /// A power loss may undo the last commits (never corrupts); several times
    /// more writes per second.
    Normal,
}

/// Store connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Connections in the pool. Default 8.
    pub max_connections: u32,
    /// Time to wait for a connection before answering 503, seconds. Default 5.
    pub acquire_timeout_secs: f64,
    /// SQLite only: `full` or `normal` durability of commits. Default `full`.
    pub sqlite_synchronous: SqliteSync,
    /// Postgres only: the server ends a session of this master that stays
    /// idle inside a transaction this long (`idle_in_transaction_session_timeout`),
    /// so a master frozen or cut off in the middle of one (holding the
    /// dispatch lock or row locks) cannot stall the other masters for
    /// longer, seconds; 0 = never. Default 10.
    pub pg_idle_transaction_timeout_secs: f64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout_secs: 5.0,
            sqlite_synchronous: SqliteSync::Full,
            pg_idle_transaction_timeout_secs: 10.0,
        }
    }
}

/// Seconds (possibly fractional) as a duration, clamped to something sane.
pub fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e9))
    } else {
        Duration::ZERO
    }
}

impl Config {
    /// Loads the layers: defaults < `cli.config` file < `env` (`DADD_…`) < flags.
    ///
    /// `env` is passed in (normally `std::env::vars()`) so tests never touch
    /// the process environment.
    pub fn load(
        cli: &Cli,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let defaults = config::Config::try_from(&Config::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = &cli.config {
            builder = builder
                .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml));
        }
        let env_map = filter_env(env)?;
        builder = builder.add_source(
            config::Environment::with_prefix("DADD")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("auth.api_tokens")
                .with_list_parse_key("notify.smtp.to")
                .try_parsing(true)
                .source(Some(env_map)),
        );
        let mut cfg: Config = builder.build()?.try_deserialize()?;
        if let Some(v) = &cli.bind {
            cfg.bind = v.clone();
        }
        if let Some(v) = &cli.database_url {
            cfg.database_url = Some(v.clone());
        }
        if let Some(v) = &cli.state_dir {
            cfg.state_dir = v.clone();
        }
        if let Some(v) = &cli.public_url {
            cfg.public_url = Some(v.clone());
        }
        if cli.insecure {
            cfg.insecure = true;
        }
        if let Some(v) = cli.log_format {
            cfg.log_format = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        if let Some(u) = &self.public_url {
            url::Url::parse(u).map_err(|e| ConfigError::Invalid {
                key: "public_url",
                reason: format!("{u:?} is not a URL ({e})"),
            })?;
        }
        if self.auth.api_tokens.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "auth.api_tokens",
                reason: "an API token is empty; remove it or give it a value".into(),
            });
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls",
                reason: "set both tls.cert and tls.key, or neither".into(),
            });
        }
        if self.dispatch.concurrency == 0 || self.dispatch.batch == 0 {
            return Err(ConfigError::Invalid {
                key: "dispatch",
                reason: "concurrency and batch must be at least 1".into(),
            });
        }
        if self.limits.log_cap_bytes < 2 * self.limits.log_chunk_bytes as u64 {
            return Err(ConfigError::Invalid {
                key: "limits.log_cap_bytes",
                reason: "must be at least twice limits.log_chunk_bytes".into(),
            });
        }
        Ok(())
    }

    /// The address to listen on.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.bind.parse().map_err(|e| ConfigError::Invalid {
            key: "bind",
            reason: format!(
                "{:?} is not an address like 127.0.0.1:5000 ({e})",
                self.bind
            ),
        })
    }

    /// The store URL, defaulting to a SQLite file in the state dir.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", sqlite_path(&self.state_dir).display()),
        }
    }

    /// Whether TLS is on for the listener.
    pub fn tls_enabled(&self) -> bool {
        self.tls.cert.is_some() && self.tls.key.is_some()
    }
}

fn sqlite_path(state_dir: &Path) -> PathBuf {
    state_dir.join("dadd-master.db")
}

/// Every key path of the config (`auth.api_tokens`), from the defaults.
fn known_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(key.clone());
                walk(&key, v, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    if let Ok(v) = serde_json::to_value(Config::default()) {
        walk("", &v, &mut out);
    }
    out
}

/// Keeps the `DADD_…` variables meant for the master. A variable whose first
/// part is a master section (`DADD_AUTH__…`) but whose key is unknown is an
/// error; others (`DADD_MASTER_URL`, a worker's setting) are not ours.
fn filter_env(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Map<String, String>, ConfigError> {
    let known = known_keys();
    let sections: BTreeSet<&str> = known
        .iter()
        .filter_map(|k| k.split_once('.').map(|(s, _)| s))
        .collect();
    let mut out = config::Map::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix("DADD_") else {
            continue;
        };
        let key = rest.to_lowercase().replace("__", ".");
        if known.contains(&key) {
            out.insert(var, value);
        } else if key
            .split_once('.')
            .is_some_and(|(s, _)| sections.contains(s))
        {
            return Err(ConfigError::UnknownEnv { var });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_documented_values() {
        let cfg = Config::load(&Cli::default(), Vec::new()).expect("defaults load");
        assert_eq!(cfg.bind, "127.0.0.1:5000");
        assert_eq!(cfg.liveness.host_ttl_secs, 10.0);
        assert_eq!(cfg.limits.log_cap_bytes, 64 << 20);
        assert!(cfg.database_url().starts_with("sqlite://"));
        assert!(cfg.database_url().ends_with("dadd-master.db"));
    }

    #[test]
    fn layers_override_in_order() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            file,
            "bind = \"127.0.0.1:7000\"\ndatabase_url = \"sqlite://file.db\"\n[auth]\ncluster_secret = \"from-file\"\n[liveness]\nhost_ttl_secs = 3.0"
        )
        .expect("write");
        let cli = Cli {
            config: Some(file.path().to_owned()),
            bind: Some("127.0.0.1:9000".into()),
            ..Cli::default()
        };
        let cfg = Config::load(
            &cli,
            env(&[
                ("DADD_BIND", "127.0.0.1:8000"),
                ("DADD_DATABASE_URL", "postgres://x@y/z"),
                ("DADD_AUTH__API_TOKENS", "a,b"),
                ("DADD_LIVENESS__HOST_TTL_SECS", "0.5"),
                ("DADD_TEST_POSTGRES_URL", "ignored"),
                ("DADD_MASTER_URL", "ignored"),
            ]),
        )
        .expect("layers load");
        assert_eq!(cfg.bind, "127.0.0.1:9000", "flag beats env and file");
        assert_eq!(cfg.database_url.as_deref(), Some("postgres://x@y/z"));
        assert_eq!(cfg.auth.api_tokens, ["a", "b"]);
        assert_eq!(cfg.auth.cluster_secret.as_deref(), Some("from-file"));
        assert_eq!(cfg.liveness.host_ttl_secs, 0.5);
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "[auth]\napi_token = \"x\"").expect("write");
        let cli = Cli {
            config: Some(file.path().to_owned()),
            ..Cli::default()
        };
        let err = Config::load(&cli, Vec::new()).expect_err("a stale key is refused");
        assert!(err.to_string().contains("api_token"), "{err}");
    }

    #[test]
    fn unknown_env_key_in_a_master_section_is_an_error() {
        let err = Config::load(&Cli::default(), env(&[("DADD_AUTH__API_TOKEN", "x")]))
            .expect_err("misspelt env is refused");
        assert!(err.to_string().contains("DADD_AUTH__API_TOKEN"), "{err}");
    }

    #[test]
    fn the_example_file_lists_the_defaults() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(include_str!("../../../deploy/master.toml").as_bytes())
            .expect("write");
        let cli = Cli {
            config: Some(file.path().to_owned()),
            ..Cli::default()
        };
        let cfg = Config::load(&cli, Vec::new()).expect("deploy/master.toml loads");
        assert_eq!(
            cfg,
            Config::default(),
            "deploy/master.toml must state the defaults"
        );
    }

    #[test]
    fn bad_bind_says_what_to_write() {
        let cli = Cli {
            bind: Some("localhost".into()),
            ..Cli::default()
        };
        let err = Config::load(&cli, Vec::new()).expect_err("bad bind");
        assert!(err.to_string().contains("127.0.0.1:5000"), "{err}");
    }
}
