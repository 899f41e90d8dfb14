//! The worker's settings: one typed, documented [`Config`], layered as
//! built-in defaults < TOML file (`--config`) < `DADD_WORKER_…` environment <
//! command-line flags. `deploy/worker.toml` shows every key with its default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The prefix of the worker's environment variables (`DADD_WORKER_MAX_PROCS`,
/// `DADD_WORKER_TLS__CERT`: `__` separates nested keys).
pub const ENV_PREFIX: &str = "DADD_WORKER";

/// Every setting of `dadd-worker`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the worker's API listens. Default `127.0.0.1:6000`.
    pub bind: SocketAddr,
    /// The master's base URL, or several masters sharing one database,
    /// separated by commas (`http://a:5000,http://b:5000`; in TOML also an
    /// array of strings). Heartbeats go to the first that answers and stay
    /// there until it stops answering; runners get the whole list. Default
    /// `http://127.0.0.1:5000`. Held as written (an array is joined with
    /// commas); [`Config::master_urls`] splits it.
    #[serde(deserialize_with = "string_or_list")]
    pub master: String,
    /// `HOST:PORT` the master reaches this worker at. Default: the bound
    /// address (this machine's host name when bound to all interfaces).
    pub advertise: Option<String>,
    /// The directory holding one working dir per process. Default
    /// `/var/lib/dadd-worker/work` when writable, else `<tmp>/dadd-worker-<uid>`.
    pub work_root: Option<PathBuf>,
    /// How many runners may be alive at once. Default: the number of CPUs.
    pub max_procs: Option<u32>,
    /// The `dadd-runner` executable. Default: `dadd-runner` next to the
    /// worker's own executable, else on `PATH`.
    pub runner: Option<PathBuf>,
    /// Shared with the master: sent on heartbeats, required on `/run` and
    /// `DELETE /procs/…`. Default: none (then only a loopback bind is allowed).
    pub cluster_secret: Option<Secret>,
    /// Allow binding beyond loopback without a cluster secret. Default false.
    pub insecure: bool,
    /// Seconds between heartbeats. Default 2.
    pub heartbeat_interval_secs: f64,
    /// While the master is unreachable, heartbeats back off up to this many seconds. Default 10.
    pub heartbeat_max_backoff_secs: f64,
    /// Seconds a runner gets to daemonize and print its pid. Default 10.
    pub runner_start_deadline_secs: f64,
    /// Seconds between scans of the work root for results a runner could
    /// not deliver (its masters down past its report deadline), which the
    /// worker then delivers itself. Default 30.
    pub redeliver_interval_secs: f64,
    /// A PEM file of CA certificates for an https master. Default: the public web roots.
    pub master_ca_file: Option<PathBuf>,
    /// `text` or `json` logs on stderr. Default `text`.
    pub log_format: LogFormat,
    /// TLS on the worker's own listener.
    pub tls: TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 6000)),
            master: "http://127.0.0.1:5000".to_owned(),
            advertise: None,
            work_root: None,
            max_procs: None,
            runner: None,
            cluster_secret: None,
            insecure: false,
            heartbeat_interval_secs: 2.0,
            heartbeat_max_backoff_secs: 10.0,
            runner_start_deadline_secs: 10.0,
            redeliver_interval_secs: 30.0,
            master_ca_file: None,
            log_format: LogFormat::Text,
            tls: TlsConfig::default(),
        }
    }
}

/// TLS on the listener: on when both files are set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain. Default: none (plain http).
    pub cert: Option<PathBuf>,
    /// PEM private key. Default: none.
    pub key: Option<PathBuf>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A string, or a list of strings joined with commas (`master` in TOML).
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a URL, URLs separated by commas, or an array of URL strings")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
            let mut all = Vec::new();
            while let Some(url) = seq.next_element::<String>()? {
                all.push(url);
            }
            Ok(all.join(","))
        }
    }
    d.deserialize_any(Visitor)
}

/// Values from the command line, the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--bind`.
    pub bind: Option<SocketAddr>,
    /// `--master` (one URL, or several separated by commas).
    pub master: Option<String>,
    /// `--advertise`.
    pub advertise: Option<String>,
    /// `--work-root`.
    pub work_root: Option<PathBuf>,
    /// `--max-procs`.
    pub max_procs: Option<u32>,
    /// `--runner`.
    pub runner: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--insecure`.
    pub insecure: bool,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layers could not be read or merged.
    #[error("cannot load the worker configuration: {0}")]
    Load(config::ConfigError),
    /// A `DADD_WORKER_…` variable names no setting.
    #[error("unknown environment variable {var}: there is no setting {key:?}; the settings are: {known}")]
    UnknownEnv {
        /// The variable.
        var: String,
        /// The key it maps to.
        key: String,
        /// Every top-level key.
        known: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid worker configuration: {0}")]
    Invalid(String),
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Load(e)
    }
}

/// Every key the environment may set (`tls.cert` as `TLS__CERT`).
fn env_keys() -> Vec<String> {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut keys = Vec::new();
    if let Some(map) = defaults.as_object() {
        for (k, v) in map {
            match v.as_object() {
                Some(inner) => keys.extend(inner.keys().map(|i| format!("{k}.{i}"))),
                None => keys.push(k.clone()),
            }
        }
    }
    keys
}

/// Refuses a `DADD_WORKER_…` variable that names no setting, saying which.
fn check_env(env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let keys = env_keys();
    let prefix = format!("{ENV_PREFIX}_");
    for var in env.keys() {
        let Some(rest) = var.strip_prefix(&prefix) else {
            continue;
        };
        let key = rest.to_lowercase().replace("__", ".");
        if !keys.contains(&key) {
            return Err(ConfigError::UnknownEnv {
                var: var.clone(),
                key,
                known: keys.join(", "),
            });
        }
    }
    Ok(())
}

impl Config {
    /// Loads the layers. `env` replaces the process environment (for tests).
    pub fn load(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = match env {
            Some(env) => env,
            None => std::env::vars().collect(),
        };
        check_env(&env)?;
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        builder = builder
            .set_override_option("bind", flags.bind.map(|b| b.to_string()))?
            .set_override_option("master", flags.master.clone())?
            .set_override_option("advertise", flags.advertise.clone())?
            .set_override_option("work_root", path(&flags.work_root))?
            .set_override_option("max_procs", flags.max_procs.map(i64::from))?
            .set_override_option("runner", path(&flags.runner))?
            .set_override_option(
                "log_format",
                flags.log_format.map(|f| match f {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }),
            )?;
        if flags.insecure {
            builder = builder.set_override("insecure", true)?;
        }
        let config: Config = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (name, v) in [
            ("heartbeat_interval_secs", self.heartbeat_interval_secs),
            (
                "heartbeat_max_backoff_secs",
                self.heartbeat_max_backoff_secs,
            ),
            (
                "runner_start_deadline_secs",
                self.runner_start_deadline_secs,
            ),
            ("redeliver_interval_secs", self.redeliver_interval_secs),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 86_400.0) {
                return bad(format!(
                    "{name} = {v}: give a number of seconds above 0 and below 86400"
                ));
            }
        }
        if self.max_procs == Some(0) {
            return bad("max_procs = 0: give at least 1".into());
        }
        if let Err(e) = dadd_client::urls::parse_list(&[&self.master]) {
            return bad(format!(
                "master = {:?}: {e}; give the master's URL, or several separated by commas (in TOML also an array of strings), like http://10.0.0.1:5000,http://10.0.0.2:5000",
                self.master
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key go together: set both or neither".into());
        }
        if let Some(adv) = &self.advertise {
            parse_advertise(adv).map_err(ConfigError::Invalid)?;
        }
        if self.cluster_secret.as_ref().is_some_and(|s| s.0.is_empty()) {
            return bad(
                "cluster_secret is empty: set a long random string, or remove the key".into(),
            );
        }
        if self.cluster_secret.is_none() && !self.bind.ip().is_loopback() && !self.insecure {
            return bad(format!(
                "bind = {} reaches beyond loopback but no cluster_secret is set, so anyone could run commands here; set cluster_secret (DADD_WORKER_CLUSTER_SECRET), or pass --insecure",
                self.bind
            ));
        }
        Ok(())
    }

    /// Every master URL of `master`, in order, trimmed, without empty
    /// entries (a trailing comma) or repeats.
    pub fn master_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        for url in dadd_client::urls::split_list(&self.master) {
            if !urls.iter().any(|u| dadd_client::urls::same_master(u, &url)) {
                urls.push(url);
            }
        }
        urls
    }

    /// The heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval_secs)
    }

    /// The longest wait between heartbeats while the master is unreachable.
    pub fn heartbeat_max_backoff(&self) -> Duration {
        Duration::from_secs_f64(
            self.heartbeat_max_backoff_secs
                .max(self.heartbeat_interval_secs),
        )
    }

    /// How long a runner gets to start.
    pub fn runner_start_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.runner_start_deadline_secs)
    }

    /// How often undelivered results are looked for and delivered.
    pub fn redeliver_interval(&self) -> Duration {
        Duration::from_secs_f64(self.redeliver_interval_secs)
    }

    /// `max_procs`, or the number of CPUs.
    pub fn max_procs(&self) -> u32 {
        self.max_procs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1)
        })
    }
}

/// Splits `HOST:PORT` (IPv6 in brackets).
pub fn parse_advertise(value: &str) -> Result<(String, u16), String> {
    let (host, port) = value.rsplit_once(':').ok_or_else(|| {
        format!("advertise = {value:?}: give HOST:PORT, like worker1.example:6000")
    })?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("advertise = {value:?}: {port:?} is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("advertise = {value:?}: the host is missing"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_documented_ones() {
        let c = Config::load(None, env(&[]), &Overrides::default()).expect("defaults load");
        assert_eq!(c, Config::default());
        assert_eq!(c.bind.to_string(), "127.0.0.1:6000");
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(2));
        assert_eq!(c.runner_start_deadline(), Duration::from_secs(10));
        assert_eq!(c.redeliver_interval(), Duration::from_secs(30));
        assert!(c.max_procs() >= 1);
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "max_procs = 3\nmaster = \"http://file:5000\"\nheartbeat_interval_secs = 0.5\n[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&file),
            env(&[
                ("DADD_WORKER_MAX_PROCS", "5"),
                ("DADD_WORKER_CLUSTER_SECRET", "12345"),
                ("DADD_WORKER_TLS__KEY", "/env-k.pem"),
            ]),
            &Overrides {
                max_procs: Some(7),
                ..Overrides::default()
            },
        )
        .expect("loads");
        assert_eq!(c.max_procs, Some(7), "flag beats env beats file");
        assert_eq!(c.master, "http://file:5000");
        assert_eq!(c.heartbeat_interval(), Duration::from_millis(500));
        assert_eq!(c.cluster_secret.as_ref().map(Secret::expose), Some("12345"));
        assert_eq!(c.tls.key, Some(PathBuf::from("/env-k.pem")));
        assert_eq!(c.tls.cert, Some(PathBuf::from("/c.pem")));
        assert!(
            !format!("{c:?}").contains("12345"),
            "the secret stays out of Debug"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "max_proc = 3\n").expect("write");
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).expect_err("typo");
        assert!(err.to_string().contains("max_proc"), "{err}");
    }

    #[test]
    fn open_bind_needs_a_secret() {
        let flags = Overrides {
            bind: Some("0.0.0.0:6000".parse().expect("addr")),
            ..Overrides::default()
        };
        let err = Config::load(None, env(&[]), &flags).expect_err("no secret");
        assert!(err.to_string().contains("cluster_secret"), "{err}");
        Config::load(
            None,
            env(&[("DADD_WORKER_CLUSTER_SECRET", "s3cret")]),
            &flags,
        )
        .expect("with a secret");
        let insecure = Overrides {
            insecure: true,
            ..flags
        };
        Config::load(None, env(&[]), &insecure).expect("insecure");
    }

    #[test]
    fn master_takes_a_list_from_every_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "master = [\"http://a:5000\", \"https://b.example/dadd/\"]\n",
        )
        .expect("write");
        let c = Config::load(Some(&file), env(&[]), &Overrides::default()).expect("an array");
        assert_eq!(
            c.master_urls(),
            vec![
                "http://a:5000".to_owned(),
                "https://b.example/dadd/".to_owned()
            ]
        );
        // The loaded config writes back as TOML the worker reads again.
        let again = dir.path().join("again.toml");
        std::fs::write(&again, toml::to_string(&c).expect("toml")).expect("write");
        let back = Config::load(Some(&again), env(&[]), &Overrides::default()).expect("reloads");
        assert_eq!(back.master_urls(), c.master_urls());

        let c = Config::load(
            Some(&file),
            env(&[("DADD_WORKER_MASTER", "http://e1:5000, http://e2:5000,")]),
            &Overrides::default(),
        )
        .expect("a comma list in the environment");
        assert_eq!(c.master_urls(), vec!["http://e1:5000", "http://e2:5000"]);

        let flags = Overrides {
            master: Some("http://f1:5000,http://f2:5000,http://f1:5000/".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(&file), env(&[]), &flags).expect("a comma list as a flag");
        assert_eq!(
            c.master_urls(),
            vec!["http://f1:5000", "http://f2:5000"],
            "repeats dropped"
        );
    }

    #[test]
    fn a_bad_master_url_is_named() {
        let flags = |m: &str| Overrides {
            master: Some(m.into()),
            ..Overrides::default()
        };
        let err =
            Config::load(None, env(&[]), &flags("http://a:5000,ftp://b:21")).expect_err("ftp");
        let text = err.to_string();
        assert!(text.contains("invalid URL ftp://b:21"), "{text}");
        assert!(text.contains("http or https"), "{text}");
        let err =
            Config::load(None, env(&[]), &flags("http://a:5000,b:5000")).expect_err("no scheme");
        assert!(err.to_string().contains("invalid URL b:5000"), "{err}");
        let err = Config::load(None, env(&[]), &flags(" , ")).expect_err("empty");
        assert!(err.to_string().contains("no master URL given"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "master = [\"http://a:5000\", 5]\n").expect("write");
        let err = Config::load(Some(&file), env(&[]), &Overrides::default())
            .expect_err("a number in the list");
        assert!(err.to_string().contains("master"), "{err}");
    }

    #[test]
    fn the_example_config_is_the_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/worker.toml");
        let c = Config::load(Some(&file), env(&[]), &Overrides::default())
            .expect("deploy/worker.toml loads");
        assert_eq!(c, Config::default(), "the example shows the defaults");
    }

    #[test]
    fn bad_values_say_what_to_do() {
        let err = Config::load(
            None,
            env(&[("DADD_WORKER_MAX_PROC", "3")]),
            &Overrides::default(),
        )
        .expect_err("a typo in the environment");
        assert!(
            err.to_string()
                .starts_with("unknown environment variable DADD_WORKER_MAX_PROC"),
            "{err}"
        );
        Config::load(
            None,
            env(&[
                ("DADD_WORKER_TLS__CERT", "/c"),
                ("DADD_WORKER_TLS__KEY", "/k"),
            ]),
            &Overrides::default(),
        )
        .expect("nested keys are known");
        let err = Config::load(
            None,
            env(&[("DADD_WORKER_HEARTBEAT_INTERVAL_SECS", "0")]),
            &Overrides::default(),
        )
        .expect_err("zero");
        assert!(err.to_string().contains("above 0"), "{err}");
        let err = Config::load(
            None,
            env(&[("DADD_WORKER_TLS__CERT", "/c.pem")]),
            &Overrides::default(),
        )
        .expect_err("half tls");
        assert!(err.to_string().contains("set both"), "{err}");
        assert!(parse_advertise("host").is_err());
        assert_eq!(parse_advertise("[::1]:6000"), Ok(("::1".to_owned(), 6000)));
    }
}
