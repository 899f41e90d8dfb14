//! The process state machine: the states, and which changes are allowed.
//!
//! Architecture invariant: this is the only place that decides whether a
//! state change is legal. The master asks it before storing a report; the
//! runner and the worker only ever move forward through it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a process is in its life.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ProcState {
    /// Accepted, no host yet.
    Queued,
    /// Sent to a worker; the runner is starting.
    Init,
    /// Downloads and virtualenv.
    Setup,
    /// The command runs.
    Running,
    /// The command exited 0.
    Success,
    /// Non-zero exit, setup error or timeout.
    Failed,
    /// Stopped on request.
    Killed,
    /// Its host stopped heartbeating, or its runner vanished without a report.
    Lost,
}

impl ProcState {
    /// Every state, in life order.
    pub const ALL: [ProcState; 8] = [
        ProcState::Queued,
        ProcState::Init,
        ProcState::Setup,
        ProcState::Running,
        ProcState::Success,
        ProcState::Failed,
        ProcState::Killed,
        ProcState::Lost,
    ];

    /// The name used on the wire and in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Queued => "queued",
            ProcState::Init => "init",
            ProcState::Setup => "setup",
            ProcState::Running => "running",
            ProcState::Success => "success",
            ProcState::Failed => "failed",
            ProcState::Killed => "killed",
            ProcState::Lost => "lost",
        }
    }

    /// A final state: the process is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ProcState::Success | ProcState::Failed | ProcState::Killed | ProcState::Lost
        )
    }

    /// A state a runner reports (the others are the master's own).
    pub fn is_runner_report(self) -> bool {
        matches!(
            self,
            ProcState::Setup
                | ProcState::Running
                | ProcState::Success
                | ProcState::Failed
                | ProcState::Killed
        )
    }

    /// Position in the life of a process; final states share the last rank.
    fn rank(self) -> u8 {
        match self {
            ProcState::Queued => 0,
            ProcState::Init => 1,
            ProcState::Setup => 2,
            ProcState::Running => 3,
            _ => 4,
        }
    }
}

impl fmt::Display for ProcState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`ProcState::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown state \"{0}\" (one of: queued, init, setup, running, success, failed, killed, lost)"
)]
pub struct UnknownState(pub String);

impl FromStr for ProcState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProcState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// What an allowed state change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The state changes.
    Apply,
    /// The process is already in that state: nothing changes (reports are idempotent).
    Repeat,
}

/// A state change the state machine refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} process cannot become {to}")]
pub struct IllegalTransition {
    /// The current state.
    pub from: ProcState,
    /// The state asked for.
    pub to: ProcState,
}

/// Whether a process in `from` may move to `to`.
///
/// States only move forward (a stage may be skipped: a setup failure goes
/// from `setup` straight to `failed`). Final states are final, with one
/// exception: the runner's own report replaces `lost`, because the runner's
/// word is the truth and `lost` was only the master's guess.
pub fn check_transition(from: ProcState, to: ProcState) -> Result<Transition, IllegalTransition> {
    if from == to {
        return Ok(Transition::Repeat);
    }
    let allowed = if from == ProcState::Lost {
        to.is_runner_report()
    } else if from.is_final() {
        false
    } else {
        to.rank() > from.rank()
    };
    if allowed {
        Ok(Transition::Apply)
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::ProcState::*;
    use super::*;

    #[test]
    fn names_round_trip() {
        for st in ProcState::ALL {
            assert_eq!(st.as_str().parse::<ProcState>(), Ok(st));
            assert_eq!(
                serde_json::to_string(&st).ok(),
                Some(format!("\"{}\"", st.as_str()))
            );
        }
        assert!("done".parse::<ProcState>().is_err());
    }

    #[test]
    fn forward_moves_are_allowed() {
        for (a, b) in [
            (Queued, Init),
            (Init, Setup),
            (Setup, Running),
            (Running, Success),
            (Running, Failed),
            (Running, Killed),
            (Running, Lost),
            (Queued, Killed),
            (Setup, Failed),
            (Init, Running),
        ] {
            assert_eq!(check_transition(a, b), Ok(Transition::Apply), "{a} -> {b}");
        }
    }

    #[test]
    fn backward_moves_are_refused() {
        for (a, b) in [(Running, Setup), (Setup, Init), (Init, Queued)] {
            assert_eq!(
                check_transition(a, b),
                Err(IllegalTransition { from: a, to: b })
            );
        }
    }

    #[test]
    fn final_states_are_final() {
        for a in [Success, Failed, Killed] {
            for b in ProcState::ALL {
                if a != b {
                    assert!(check_transition(a, b).is_err(), "{a} -> {b}");
                }
            }
        }
    }

    #[test]
    fn a_runner_report_replaces_lost() {
        for b in [Setup, Running, Success, Failed, Killed] {
            assert_eq!(check_transition(Lost, b), Ok(Transition::Apply));
        }
        assert!(check_transition(Lost, Queued).is_err());
        assert!(check_transition(Lost, Init).is_err());
    }

    #[test]
    fn repeats_are_harmless() {
        for st in ProcState::ALL {
            assert_eq!(check_transition(st, st), Ok(Transition::Repeat));
        }
    }

    #[test]
    fn illegal_transition_says_both_states() {
        let e = IllegalTransition {
            from: Success,
            to: Running,
        };
        assert_eq!(e.to_string(), "a success process cannot become running");
    }
}
