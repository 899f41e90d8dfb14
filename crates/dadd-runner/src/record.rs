//! `state.json`: the runner's own record of where it is (`RunnerRecord`),
//! rewritten crash-safely at every change so a restarted worker, or a person,
//! can always tell what happened, and a reused pid is never taken for the
//! runner (its start time is recorded beside its pid).
//!
//! Every write is atomic (`state.json.partial`, rename): a runner killed at
//! any moment leaves the old record or the new. Records that must outlive
//! a machine crash are also fsynced (file, then dir): a final state and any
//! delivery change, because an undelivered result is what a person or a
//! restarted worker needs after a reboot. Intermediate states (`setup`,
//! `running`) are not: after a machine crash the runner is gone and the
//! master marks the process lost whatever they said, and their fsyncs were
//! most of the runner's start-up cost (see docs/benchmarks.md).

use std::path::{Path, PathBuf};

use chrono::Utc;
use dadd_spec::api::{Delivery, ProcId, RunnerRecord};
use dadd_spec::ProcState;

use crate::workdir::{write_atomic, Durability};

/// The record's file name in the working dir.
pub const NAME: &str = "state.json";

/// The record and where it lives.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    record: RunnerRecord,
}

impl Recorder {
    /// A record for this runner (pid and start time read now, so call it in
    /// the daemon, not before the fork), in state `state`.
    pub fn new(
        dir: &Path,
        process_id: Option<ProcId>,
        state: ProcState,
        delivery: Delivery,
    ) -> Self {
        let now = Utc::now();
        Self {
            dir: dir.to_path_buf(),
            record: RunnerRecord {
                process_id,
                state,
                runner_pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
                runner_start_ticks: own_start_ticks(),
                command_pid: None,
                exit_code: None,
                signal: None,
                reason: None,
                started_at: now,
                updated_at: now,
                ended_at: None,
                delivery,
            },
        }
    }

    /// The record as it stands.
    pub fn record(&self) -> &RunnerRecord {
        &self.record
    }

    /// Changes the record with `f` and writes it (durably when the change
    /// is a final state or a delivery change).
    pub fn update(&mut self, f: impl FnOnce(&mut RunnerRecord)) -> std::io::Result<()> {
        self.update_with(None, f)
    }

    /// As [`Recorder::update`], with the durability chosen by the caller
    /// (`Some(Atomic)` for a final record of a dir removed right after: no
    /// result is left to keep).
    pub fn update_with(
        &mut self,
        durability: Option<Durability>,
        f: impl FnOnce(&mut RunnerRecord),
    ) -> std::io::Result<()> {
        let before = (self.record.state, self.record.delivery);
        f(&mut self.record);
        let durable = durability.map_or_else(
            || {
                (self.record.state.is_final() && before.0 != self.record.state)
                    || before.1 != self.record.delivery
            },
            |d| d == Durability::Durable,
        );
        let now = Utc::now();
        self.record.updated_at = now;
        if self.record.state.is_final() && self.record.ended_at.is_none() {
            self.record.ended_at = Some(now);
        }
        self.write(if durable {
            Durability::Durable
        } else {
            Durability::Atomic
        })
    }

    /// Writes the record to `state.json`, atomically.
    pub fn write(&self, durability: Durability) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.record).map_err(std::io::Error::other)?;
        write_atomic(&self.dir, NAME, &bytes, 0o644, durability)
    }
}

/// This process's start time in clock ticks since boot (`/proc/self/stat`
/// field 22).
pub fn own_start_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    start_ticks_of(&stat)
}

/// Field 22 of a `/proc/PID/stat` line. Field 2 (the command name, in
/// parentheses) may itself hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn start_ticks_of(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After `)`, the first field is field 3; field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_survive_odd_names() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(start_ticks_of(line), Some(987654));
        assert_eq!(start_ticks_of("junk"), None);
        assert!(own_start_ticks().is_some());
    }

    #[test]
    fn updates_are_written_and_final_states_get_an_end_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Recorder::new(dir.path(), Some(4), ProcState::Setup, Delivery::Pending);
        r.write(Durability::Atomic).expect("write");
        r.update(|rec| {
            rec.state = ProcState::Failed;
            rec.exit_code = Some(3);
        })
        .expect("update");
        let back: RunnerRecord =
            serde_json::from_slice(&std::fs::read(dir.path().join(NAME)).expect("read"))
                .expect("parse");
        assert_eq!(back.state, ProcState::Failed);
        assert_eq!(back.exit_code, Some(3));
        assert_eq!(back.process_id, Some(4));
        assert!(back.ended_at.is_some());
        assert_eq!(
            back.runner_pid,
            i32::try_from(std::process::id()).expect("pid")
        );
    }
}
