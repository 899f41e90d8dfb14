//! `dadd-worker` command line entry point: a thin shell over [`dadd_worker::cli`].

fn main() -> std::process::ExitCode {
    dadd_worker::cli::main()
}
