//! The `dadd` command: a thin shell over [`dadd_client::cli`].

fn main() -> std::process::ExitCode {
    dadd_client::cli::main()
}
