//! Waiting with a deadline: poll a condition every few milliseconds and fail
//! the test, saying what was awaited, when the deadline passes.

use std::time::{Duration, Instant};

/// Waits until `f` returns `Some`, at most `deadline`; panics naming `what`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Waits until `f` is true, at most `deadline`; panics naming `what`.
pub fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    wait_for(what, deadline, || f().then_some(()));
}
