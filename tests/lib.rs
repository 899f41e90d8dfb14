//! Support shared by every test suite that starts the workspace's binaries:
//! the end-to-end tests in `e2e/`, and the crates' own integration tests.

use std::path::Path;
use std::process::Command;

/// Runs `cargo ARGS` in `dir` with the same cargo as the running tests, and
/// panics when it fails (a test cannot go on without the binaries).
///
/// `cargo test` builds only the tested package's binaries, so suites that
/// start other packages' binaries build them first; this is a no-op when they
/// are up to date. The variables `cargo test` sets for the tested package are
/// removed: build scripts watch some of them and would rebuild half the tree.
pub fn cargo(dir: &Path, args: &[&str]) {
    let program = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(program);
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
    let status = cmd
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo {args:?}: {e}"));
    assert!(status.success(), "cargo {args:?} failed");
}
