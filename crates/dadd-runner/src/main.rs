//! `dadd-runner` command line entry point: parse the flags, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = dadd_runner::Cli::parse();
    let code = dadd_runner::run(cli);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
