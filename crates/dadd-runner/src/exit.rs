//! The runner's exit codes, in one place (documented in the crate docs and `--help`).

/// A bad spec or bad usage; nothing was created on disk.
pub const USAGE: i32 = 2;
/// Setup failed: working dir, download, checksum, settings, virtualenv or
/// install; in daemon mode, also a daemon that failed before writing `pid`.
pub const SETUP: i32 = 125;
/// The command was found but could not be executed.
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;

/// The exit code for a command ended by signal `signal` (shell convention).
pub fn for_signal(signal: i32) -> i32 {
    128 + signal
}

/// The text `--help` shows after the options.
pub const HELP: &str = "\
Exit codes:
  foreground   the command's exit code; 128+N when it was ended by signal N
               (a timeout or a kill ends it with SIGTERM: 143)
  daemon mode  0 once the daemon has written `pid` (one JSON line
               {\"pid\", \"directory\"} on standard output); 125 when it failed
               before that, with the reason on standard error
  2            bad spec or usage; nothing was created on disk
  125          setup failed: working dir, download, checksum, settings,
               virtualenv or install (the working dir is kept)
  126          the command was found but is not executable
  127          the command was not found";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_codes_follow_the_shell() {
        assert_eq!(for_signal(15), 143);
        assert_eq!(for_signal(9), 137);
    }
}
