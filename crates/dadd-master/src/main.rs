//! `dadd-master` command line entry point.

use anyhow::Context;
use clap::Parser;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = dadd_master::Cli::parse();
    let cfg = match dadd_master::Config::load(&cli, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dadd-master: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    dadd_master::init_tracing(cfg.log_format);
    match dadd_master::run(cfg)
        .await
        .context("dadd-master stopped on an error")
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
