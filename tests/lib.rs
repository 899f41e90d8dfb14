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

/// A shell stand-in for `dadd-runner`, for suites that test the worker
/// without the real runner: the contract of `dadd-runner --working-dir DIR
/// --envelope FILE` (daemonizes into its own session, writes `pid` and a
/// `state.json` with its start ticks, prints `RunStarted`, runs `sleep 300`
/// in its group, reports `killed` in `state.json` on SIGTERM).
pub const STAND_IN_RUNNER: &str = r#"#!/bin/sh
dir="$2"
id=$(sed -n 's/^ *"process_id": *\([0-9-]*\).*/\1/p' "$4")
setsid sh -c '
dir="$1"; id="$2"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ticks=$(sed "s/.*) //" /proc/$$/stat | cut -d" " -f20)
sleep 300 &
cmd=$!
put_state() {
  printf "{\"process_id\": %s, \"state\": \"%s\", \"runner_pid\": %s, \"runner_start_ticks\": %s, \"command_pid\": %s, \"started_at\": \"%s\", \"updated_at\": \"%s\", \"delivery\": \"pending\"}" "$id" "$1" "$$" "$ticks" "$cmd" "$now" "$now" > "$dir/state.json.partial"
  mv "$dir/state.json.partial" "$dir/state.json"
}
put_state running
trap "kill $cmd; put_state killed; exit 0" TERM
echo $$ > "$dir/pid"
wait
' sh "$dir" "$id" </dev/null >/dev/null 2>&1 &
i=0
while [ ! -s "$dir/pid" ]; do sleep 0.02; i=$((i+1)); [ $i -gt 500 ] && exit 1; done
printf '{"pid": %s, "directory": "%s"}\n' "$(cat "$dir/pid")" "$dir"
"#;
