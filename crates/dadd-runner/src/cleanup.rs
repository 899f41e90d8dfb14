//! The end of a run: remove the working dir only when its results are safe
//! (delivered to the master, or, without one, a success), else keep it and
//! say where it is, so a log is never lost.

use std::path::Path;

use dadd_spec::api::Delivery;
use dadd_spec::ProcState;

use crate::outlog::diag;

/// Whether the working dir may go.
pub fn may_remove(no_cleanup: bool, delivery: Delivery, state: ProcState) -> bool {
    if no_cleanup {
        return false;
    }
    match delivery {
        Delivery::Delivered => true,
        Delivery::NoMaster => state == ProcState::Success,
        Delivery::Pending | Delivery::Undelivered => false,
    }
}

/// Removes `dir`, or says why it is kept.
pub fn finish(dir: &Path, no_cleanup: bool, delivery: Delivery, state: ProcState) {
    if may_remove(no_cleanup, delivery, state) {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            diag(format!(
                "cannot remove the working dir {}: {e}; remove it by hand",
                dir.display()
            ));
        }
        return;
    }
    let why = if no_cleanup {
        "--no-cleanup".to_owned()
    } else {
        match delivery {
            Delivery::NoMaster => format!("the process ended {state}"),
            _ => "the master does not have the final report and the whole log".to_owned(),
        }
    };
    diag(format!(
        "the working dir is kept ({why}): {} (output.log holds the log)",
        dir.display()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_results_are_removed() {
        assert!(may_remove(false, Delivery::Delivered, ProcState::Failed));
        assert!(may_remove(false, Delivery::NoMaster, ProcState::Success));
        assert!(!may_remove(false, Delivery::NoMaster, ProcState::Failed));
        assert!(!may_remove(false, Delivery::NoMaster, ProcState::Killed));
        assert!(!may_remove(
            false,
            Delivery::Undelivered,
            ProcState::Success
        ));
        assert!(!may_remove(true, Delivery::Delivered, ProcState::Success));
    }
}
