//! The one place that decides `dadd`'s exit code: from how a process ended,
//! or from the kind of error that stopped the command.

use std::process::ExitCode;

use dadd_spec::ProcState;

/// The exit codes of `dadd`, as documented in `--help` and the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Done; with `--wait`, the process ended `success`.
    Success = 0,
    /// With `--wait`: the process ended `failed`.
    Failed = 1,
    /// A usage error or an invalid spec.
    Usage = 2,
    /// With `--wait`: the process ended `killed`.
    Killed = 3,
    /// With `--wait`: the process ended `lost`.
    Lost = 4,
    /// The request failed (master unreachable, refused, not found, local I/O).
    Error = 5,
    /// Interrupted by Ctrl-C while waiting.
    Interrupted = 130,
}

impl Code {
    /// The code for a process that ended in `state`; `None` while it is not final.
    pub fn for_state(state: ProcState) -> Option<Code> {
        match state {
            ProcState::Success => Some(Code::Success),
            ProcState::Failed => Some(Code::Failed),
            ProcState::Killed => Some(Code::Killed),
            ProcState::Lost => Some(Code::Lost),
            ProcState::Queued | ProcState::Init | ProcState::Setup | ProcState::Running => None,
        }
    }

    /// The code for an error that stopped the command.
    pub fn for_error(err: &anyhow::Error) -> Code {
        if err.downcast_ref::<UsageError>().is_some() {
            Code::Usage
        } else if err.downcast_ref::<Interrupted>().is_some() {
            Code::Interrupted
        } else {
            Code::Error
        }
    }
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> ExitCode {
        ExitCode::from(code as u8)
    }
}

/// The text of `--help` that lists the exit codes.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    done; with --wait, the process ended success
  1    with --wait: the process ended failed
  2    usage error, or an invalid spec (every problem is printed)
  3    with --wait: the process ended killed
  4    with --wait: the process ended lost
  5    the request failed: master unreachable, refused, not found, or local I/O
  130  interrupted (Ctrl-C) while waiting";

/// A mistake in what the user asked (a bad spec, a bad argument): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Ctrl-C while waiting: exit 130.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; the process goes on (see `dadd show` and `dadd kill`)")]
pub struct Interrupted;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_map_to_documented_codes() {
        assert_eq!(Code::for_state(ProcState::Success), Some(Code::Success));
        assert_eq!(Code::for_state(ProcState::Failed), Some(Code::Failed));
        assert_eq!(Code::for_state(ProcState::Killed), Some(Code::Killed));
        assert_eq!(Code::for_state(ProcState::Lost), Some(Code::Lost));
        for s in [
            ProcState::Queued,
            ProcState::Init,
            ProcState::Setup,
            ProcState::Running,
        ] {
            assert_eq!(Code::for_state(s), None, "{s} is not final");
        }
        assert_eq!(Code::Killed as u8, 3);
        assert_eq!(Code::Lost as u8, 4);
    }

    #[test]
    fn errors_map_to_usage_or_error() {
        let usage = anyhow::Error::new(UsageError("bad spec".into())).context("reading spec");
        assert_eq!(Code::for_error(&usage), Code::Usage);
        let other = anyhow::anyhow!("connection refused");
        assert_eq!(Code::for_error(&other), Code::Error);
        assert_eq!(Code::for_error(&Interrupted.into()), Code::Interrupted);
    }

    #[test]
    fn help_lists_every_code() {
        for code in ["0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "130"] {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {code}")), "{code}");
        }
    }
}
