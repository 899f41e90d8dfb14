//! The workspace's binaries (`dadd-runner`, `dadd-master`, `dadd-worker`,
//! `dadd`), built once per test run with the same cargo and profile as the
//! tests: `cargo test` builds only this package's targets, not other
//! packages' binaries.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The path of workspace binary `name`, building every binary first (once).
pub fn bin(name: &str) -> PathBuf {
    let dir = BUILT.get_or_init(build);
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "no binary {} after cargo build --bins",
        path.display()
    );
    path
}

static BUILT: OnceLock<PathBuf> = OnceLock::new();

/// `target/<profile>`: this test executable lives in `target/<profile>/deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps")
        .to_path_buf()
}

fn build() -> PathBuf {
    let dir = profile_dir();
    let mut args = vec!["build", "--workspace", "--bins"];
    if dir.file_name().is_some_and(|n| n == "release") {
        args.push("--release");
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    dadd_tests::cargo(workspace, &args);
    dir
}
