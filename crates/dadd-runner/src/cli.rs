//! The command line: flags, their `DADD_RUNNER_*` environment fallbacks, and defaults.
//!
//! The per-process token is never a flag (a command line is visible to every
//! user of the host): it comes from the envelope file or `DADD_PROCESS_TOKEN`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The environment variable holding the per-process token for `--master`.
pub const TOKEN_ENV: &str = "DADD_PROCESS_TOKEN";

/// The default size cap of one download: 1 GiB.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 1 << 30;

/// Runs one Dadd process: working dir, daemonize, downloads, settings,
/// virtualenv, the command, reports to the master, cleanup.
#[derive(Debug, Clone, Parser)]
#[command(name = "dadd-runner", version, after_help = crate::exit::HELP)]
pub struct Cli {
    /// Stay in the foreground: no daemon, exit with the command's exit code.
    #[arg(long)]
    pub foreground: bool,

    /// Keep the working dir at the end, whatever happened.
    #[arg(long)]
    pub no_cleanup: bool,

    /// The working dir (created when missing; an existing one must be empty
    /// or hold only the worker's `envelope.json` and `spec.json`). It is
    /// removed at the end unless `--no-cleanup`.
    #[arg(long, value_name = "DIR")]
    pub working_dir: Option<PathBuf>,

    /// Where a new `dadd-*` working dir is made when `--working-dir` is not
    /// given [default: the system temp dir].
    #[arg(long, value_name = "DIR", env = "DADD_RUNNER_WORK_ROOT")]
    pub work_root: Option<PathBuf>,

    /// The master to report to (with `--process-id`; the token is read from
    /// the environment variable DADD_PROCESS_TOKEN).
    #[arg(long, value_name = "URL", requires = "process_id")]
    pub master: Option<String>,

    /// The master's id of this process (with `--master`).
    #[arg(long, value_name = "ID", requires = "master")]
    pub process_id: Option<i64>,

    /// The worker's envelope (JSON: process id, token, master URL, fallback
    /// master URLs, spec); replaces SPEC, `--master` and `--process-id`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["spec", "master", "process_id"])]
    pub envelope: Option<PathBuf>,

    /// The size cap of each download, in bytes.
    #[arg(long, value_name = "N", env = "DADD_RUNNER_MAX_DOWNLOAD_BYTES",
          default_value_t = DEFAULT_MAX_DOWNLOAD_BYTES)]
    pub max_download_bytes: u64,

    /// Seconds between SIGTERM and SIGKILL when the command is stopped.
    #[arg(long, value_name = "SECS", env = "DADD_RUNNER_GRACE_PERIOD",
          default_value = "10", value_parser = parse_secs)]
    pub grace_period: Duration,

    /// The download and wheel cache shared by every run of this user
    /// [default: $XDG_CACHE_HOME/dadd, else ~/.cache/dadd].
    #[arg(long, value_name = "DIR", env = "DADD_RUNNER_PYTHON_CACHE_DIR")]
    pub python_cache_dir: Option<PathBuf>,

    /// How long, after the command ended, the runner keeps trying to deliver
    /// its final report and log to an unreachable master before it gives up,
    /// marks `state.json` undelivered and exits, keeping the working dir.
    #[arg(long, value_name = "SECS", env = "DADD_RUNNER_REPORT_DEADLINE",
          default_value = "3600", value_parser = parse_secs)]
    pub report_deadline: Duration,

    /// CA certificates (PEM) to trust for an https master and https
    /// downloads, instead of the built-in web roots.
    #[arg(long, value_name = "FILE", env = "DADD_RUNNER_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// The spec: a JSON file, or `-` for standard input.
    #[arg(value_name = "SPEC", required_unless_present = "envelope")]
    pub spec: Option<String>,
}

/// Parses a non-negative number of seconds (fractions allowed).
fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{text:?} is not a usable number of seconds (give 0 or more)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dadd-runner").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&["spec.json"]).expect("parses");
        assert!(!cli.foreground);
        assert_eq!(cli.grace_period, Duration::from_secs(10));
        assert_eq!(cli.report_deadline, Duration::from_secs(3600));
        assert_eq!(cli.max_download_bytes, 1 << 30);
        assert_eq!(cli.spec.as_deref(), Some("spec.json"));
    }

    #[test]
    fn spec_or_envelope_is_required_and_they_exclude_each_other() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--envelope", "e.json"]).is_ok());
        assert!(parse(&["--envelope", "e.json", "spec.json"]).is_err());
        assert!(parse(&[
            "--envelope",
            "e.json",
            "--master",
            "http://m",
            "--process-id",
            "1"
        ])
        .is_err());
    }

    #[test]
    fn master_and_process_id_go_together() {
        assert!(parse(&["--master", "http://m", "s.json"]).is_err());
        assert!(parse(&["--process-id", "3", "s.json"]).is_err());
        let cli = parse(&["--master", "http://m", "--process-id", "3", "s.json"]).expect("parses");
        assert_eq!(cli.process_id, Some(3));
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_junk() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn help_lists_exit_codes() {
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("Exit codes"));
        assert!(help.contains("127"));
    }
}
