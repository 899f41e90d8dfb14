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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    // Without the variables `cargo test` sets for this package: build
    // scripts watch some of them and would rebuild half the tree.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd.args(["build", "--workspace", "--bins"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let status = cmd.current_dir(workspace).status().expect("cargo runs");
    assert!(status.success(), "cargo build --workspace --bins failed");
    dir
}
