//! The `dadd` command line: arguments, the commands, and how they end.
//!
//! `main` parses the arguments, runs the command on an actix runtime (awc
//! needs one) and maps the outcome to an exit code in one place ([`exit`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dadd_spec::api::ProcId;
use dadd_spec::ProcState;

mod commands;
mod dev;
pub mod exit;
mod render;
mod spec_file;
mod table;
mod wait;

pub use exit::Code;

/// Runs `dadd` with the process's arguments; the answer is its exit code.
pub fn main() -> ExitCode {
    let args = Args::parse();
    run_args(args).into()
}

/// Runs parsed arguments to an exit code, printing errors on stderr.
pub fn run_args(args: Args) -> Code {
    let system = actix_rt::System::new();
    match system.block_on(commands::run(args)) {
        Ok(code) => code,
        Err(err) => {
            let code = Code::for_error(&err);
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "dadd: {err:#}");
            code
        }
    }
}

/// `dadd`: submit processes to a Dadd master, follow them, manage files and hosts.
#[derive(Debug, Parser)]
#[command(name = "dadd", version, about, after_help = exit::EXIT_CODES_HELP)]
pub struct Args {
    /// The master's URL, or several separated by commas (masters sharing one
    /// database): requests go to the first that answers, in order.
    #[arg(
        long,
        global = true,
        value_name = "URL[,URL...]",
        env = "DADD_MASTER_URL",
        default_value = "http://127.0.0.1:5000"
    )]
    pub master: String,
    /// A bearer API token for the master.
    #[arg(long, global = true, env = "DADD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for an https master (default: the public web roots).
    #[arg(long, global = true, env = "DADD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print JSON (the API's own types) instead of tables, for pipelines.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `dadd`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a spec (a JSON file, or `-` for standard input); it is checked here first.
    #[command(after_help = exit::EXIT_CODES_HELP)]
    Submit {
        /// The spec file, or `-` to read standard input.
        spec: String,
        /// Wait until the process ends; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        /// Print the process's log as it runs (implies --wait).
        #[arg(long)]
        follow: bool,
    },
    /// List processes, newest first.
    Ps {
        /// Only processes in this state (queued, init, setup, running, success, failed, killed, lost).
        #[arg(long)]
        state: Option<ProcState>,
        /// Only processes on this host (`host:port`).
        #[arg(long)]
        host: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one process: state, host, times, history.
    Show {
        /// The process id.
        id: ProcId,
    },
    /// Print a process's log.
    Logs {
        /// The process id.
        id: ProcId,
        /// Keep printing as the log grows, until the process ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop a process (its whole process group); it ends `killed`.
    Kill {
        /// The process id.
        id: ProcId,
    },
    /// List the worker hosts the master knows.
    Hosts,
    /// The master's file store (`/files/`), which specs can download from.
    Files {
        /// What to do with files.
        #[command(subcommand)]
        command: FilesCommand,
    },
    /// Start a local master (SQLite in a temp dir) and one worker on loopback.
    #[command(after_help = exit::EXIT_CODES_HELP)]
    Dev {
        /// Submit this spec, follow its log to the end, stop both daemons and
        /// exit with the `submit --wait` exit code.
        #[arg(long, value_name = "SPEC")]
        run: Option<String>,
        /// Where the master listens.
        #[arg(long, default_value = "127.0.0.1:5000")]
        bind_master: std::net::SocketAddr,
        /// Where the worker listens.
        #[arg(long, default_value = "127.0.0.1:6000")]
        bind_worker: std::net::SocketAddr,
    },
}

/// The commands of `dadd files`.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Upload a local file (to REMOTE, default: its file name).
    Put {
        /// The local file.
        local: PathBuf,
        /// Its path in the store.
        remote: Option<String>,
    },
    /// Download a file (to LOCAL, default: its file name; `-` for standard output).
    Get {
        /// Its path in the store.
        remote: String,
        /// Where to write it.
        local: Option<PathBuf>,
    },
    /// List the stored files.
    Ls,
    /// Delete a stored file.
    Rm {
        /// Its path in the store.
        remote: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("dadd").chain(args.iter().copied()))
    }

    #[test]
    fn globals_go_anywhere() {
        let a = parse(&[
            "ps",
            "--json",
            "--master",
            "http://m:5000",
            "--state",
            "running",
        ])
        .expect("valid");
        assert!(a.json);
        assert_eq!(a.master, "http://m:5000");
        match a.command {
            Command::Ps { state, host, limit } => {
                assert_eq!(state, Some(ProcState::Running));
                assert_eq!(host, None);
                assert_eq!(limit, None);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn submit_takes_a_file_or_stdin() {
        let a = parse(&["submit", "-", "--follow"]).expect("valid");
        match a.command {
            Command::Submit { spec, wait, follow } => {
                assert_eq!(spec, "-");
                assert!(!wait);
                assert!(follow);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn usage_errors_exit_2() {
        let err = parse(&["ps", "--state", "sleeping"]).expect_err("unknown state");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("unknown state"), "{err}");
        let err = parse(&["show", "abc"]).expect_err("not an id");
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["submit"]).expect_err("spec missing");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn files_and_dev_parse() {
        let a = parse(&["files", "put", "data.json"]).expect("valid");
        assert!(matches!(
            a.command,
            Command::Files {
                command: FilesCommand::Put { remote: None, .. }
            }
        ));
        let a = parse(&[
            "dev",
            "--run",
            "examples/hello.json",
            "--bind-worker",
            "127.0.0.1:0",
        ])
        .expect("valid");
        match a.command {
            Command::Dev {
                run,
                bind_master,
                bind_worker,
            } => {
                assert_eq!(run.as_deref(), Some("examples/hello.json"));
                assert_eq!(bind_master.port(), 5000);
                assert_eq!(bind_worker.port(), 0);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn help_documents_exit_codes() {
        let err = parse(&["submit", "--help"]).expect_err("help exits");
        let text = err.to_string();
        assert!(
            text.contains("3    with --wait: the process ended killed"),
            "{text}"
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
