//! The worker's runners, as the work root shows them: start one (once per
//! process id), list them, stop one. Every answer comes from scanning the
//! work root; the only memory kept is which starts are in flight right now,
//! so that two requests cannot both take the last slot or start one process
//! twice.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dadd_spec::api::{Delivery, ProcId, RunEnvelope, RunStarted, WorkerProc};
use dadd_spec::{ProcState, UnknownKeys};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::spawn::{prepare_dir, start_runner, SpawnError};
use crate::workroot::{self, Entry};

/// Why `/run` did not start a runner.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The spec in the envelope is not valid.
    #[error("invalid spec for process {id}")]
    BadSpec {
        /// The process id.
        id: ProcId,
        /// Every problem.
        problems: Vec<String>,
    },
    /// `max_procs` runners are alive or starting.
    #[error("worker is full: {running} of {max_procs} runners alive or starting; try another host or later")]
    Full {
        /// Alive or starting.
        running: usize,
        /// The limit.
        max_procs: u32,
    },
    /// No runner executable was found at start.
    #[error("no dadd-runner executable: put it next to dadd-worker or on PATH, or set `runner`")]
    NoRunner,
    /// The runner did not start.
    #[error("process {id}: {source}")]
    Spawn {
        /// The process id.
        id: ProcId,
        /// What went wrong.
        #[source]
        source: SpawnError,
    },
    /// A blocking task failed (a bug or a runtime shutting down).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why `DELETE /procs/{id}` did not signal a runner.
#[derive(Debug, thiserror::Error)]
pub enum KillError {
    /// No working dir for that process on this worker.
    #[error("process {0} is not known on this worker")]
    NotFound(ProcId),
    /// Its runner has exited already.
    #[error("process {id} has already finished ({state}) on this worker")]
    Finished {
        /// The process id.
        id: ProcId,
        /// The state its runner recorded.
        state: ProcState,
    },
    /// The signal could not be sent.
    #[error("cannot signal the runner of process {id} (pid {pid}): {errno}")]
    Signal {
        /// The process id.
        id: ProcId,
        /// The runner's pid.
        pid: i32,
        /// The cause.
        errno: nix::errno::Errno,
    },
    /// A blocking task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The outcome of a `/run`.
#[derive(Debug, Clone)]
pub struct Started {
    /// The runner's pid and working dir.
    pub started: RunStarted,
    /// False when the runner existed already (a repeated envelope).
    pub created: bool,
}

/// The runners of one work root.
#[derive(Debug)]
pub struct Runners {
    root: PathBuf,
    runner: Option<PathBuf>,
    max_procs: u32,
    start_deadline: Duration,
    ca_file: Option<PathBuf>,
    /// The worker's masters, passed on to runners as fallbacks.
    masters: Vec<String>,
    in_flight: Mutex<HashSet<ProcId>>,
    id_locks: Mutex<HashMap<ProcId, Arc<tokio::sync::Mutex<()>>>>,
    admission: tokio::sync::Mutex<()>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a blocking task failed: {e}"))
}

impl Runners {
    /// The runners under `root`, started with `runner` (which is told to
    /// trust `ca_file` for an https master).
    pub fn new(
        root: PathBuf,
        runner: Option<PathBuf>,
        max_procs: u32,
        start_deadline: Duration,
        ca_file: Option<PathBuf>,
    ) -> Self {
        Self {
            root,
            runner,
            max_procs,
            start_deadline,
            ca_file,
            masters: Vec::new(),
            in_flight: Mutex::new(HashSet::new()),
            id_locks: Mutex::new(HashMap::new()),
            admission: tokio::sync::Mutex::new(()),
        }
    }

    /// The worker's own master list: each runner started from now on may
    /// report to these masters when its envelope's master does not answer
    /// (see [`add_fallbacks`]).
    pub fn with_masters(mut self, masters: Vec<String>) -> Self {
        self.masters = masters;
        self
    }

    /// The work root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The capacity.
    pub fn max_procs(&self) -> u32 {
        self.max_procs
    }

    fn in_flight(&self) -> HashSet<ProcId> {
        self.in_flight.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn scan(&self) -> Result<Vec<Entry>, String> {
        let root = self.root.clone();
        blocking(move || workroot::scan(&root)).await
    }

    async fn find(&self, id: ProcId) -> Result<Vec<Entry>, String> {
        let root = self.root.clone();
        blocking(move || workroot::find(&root, id)).await
    }

    /// Process ids whose runners are alive or starting now.
    pub async fn live_ids(&self) -> Vec<ProcId> {
        let entries = self.scan().await.unwrap_or_default();
        let mut ids: HashSet<ProcId> = entries
            .iter()
            .filter(|e| e.alive())
            .filter_map(|e| e.process_id)
            .collect();
        ids.extend(self.in_flight());
        let mut ids: Vec<_> = ids.into_iter().collect();
        ids.sort_unstable();
        ids
    }

    /// What `GET /procs` lists: live runners, and finished ones whose results
    /// have not reached the master (pending or undelivered).
    pub async fn list(&self) -> Result<Vec<WorkerProc>, String> {
        let entries = self.scan().await?;
        Ok(entries
            .iter()
            .filter_map(|e| {
                let alive = e.alive();
                let undelivered = e.record.as_ref().is_some_and(|r| {
                    matches!(r.delivery, Delivery::Pending | Delivery::Undelivered)
                });
                if alive || undelivered {
                    e.to_worker_proc(alive)
                } else {
                    None
                }
            })
            .collect())
    }

    fn id_lock(&self, id: ProcId) -> Arc<tokio::sync::Mutex<()>> {
        match self.id_locks.lock() {
            Ok(mut map) => map.entry(id).or_default().clone(),
            // A poisoned map only loses the once-per-id guarantee for this call.
            Err(_) => Arc::default(),
        }
    }

    fn release_id_lock(&self, id: ProcId) {
        if let Ok(mut map) = self.id_locks.lock() {
            if map.get(&id).is_some_and(|l| Arc::strong_count(l) == 1) {
                map.remove(&id);
            }
        }
    }

    /// Starts process `envelope.process_id`'s runner, or answers the one
    /// already there.
    pub async fn run(&self, mut envelope: RunEnvelope) -> Result<Started, RunError> {
        let id = envelope.process_id;
        add_fallbacks(&mut envelope, &self.masters);
        // Warn, not deny, on unknown keys: a newer master may know more.
        if let Err(errors) = dadd_spec::parse_value(&envelope.spec, UnknownKeys::Warn) {
            return Err(RunError::BadSpec {
                id,
                problems: errors.lines(),
            });
        }
        let lock = self.id_lock(id);
        let result = {
            let _one_start_per_id = lock.lock().await;
            self.run_locked(envelope).await
        };
        drop(lock);
        self.release_id_lock(id);
        result
    }

    async fn run_locked(&self, envelope: RunEnvelope) -> Result<Started, RunError> {
        let id = envelope.process_id;
        if let Some(existing) = self.existing(id).await? {
            return Ok(existing);
        }
        {
            let _admission = self.admission.lock().await;
            let entries = self.scan().await.map_err(RunError::Internal)?;
            let mut busy: HashSet<ProcId> = workroot::occupied(&entries, self.start_deadline)
                .into_iter()
                .collect();
            busy.extend(self.in_flight());
            if busy.len() >= self.max_procs as usize {
                return Err(RunError::Full {
                    running: busy.len(),
                    max_procs: self.max_procs,
                });
            }
            if let Ok(mut set) = self.in_flight.lock() {
                set.insert(id);
            }
        }
        let _in_flight = InFlight { runners: self, id };
        let runner = self.runner.clone().ok_or(RunError::NoRunner)?;
        let root = self.root.clone();
        let dir = blocking(move || prepare_dir(&root, &envelope))
            .await
            .map_err(RunError::Internal)?
            .map_err(|source| RunError::Spawn { id, source })?;
        match start_runner(&runner, &dir, self.start_deadline, self.ca_file.as_deref()).await {
            Ok(started) => {
                tracing::info!(process_id = id, pid = started.pid, dir = %dir.display(), "runner started");
                Ok(Started {
                    started,
                    created: true,
                })
            }
            Err(source) => {
                // Remove the dir so the master can send the process again,
                // unless a daemon did come up in it after all.
                let keep = Entry::read(&dir).is_some_and(|e| e.alive());
                if !keep {
                    let _ = blocking(move || std::fs::remove_dir_all(&dir)).await;
                }
                Err(RunError::Spawn { id, source })
            }
        }
    }

    /// The runner already there for `id`, waiting out a start that a
    /// previous worker left half done.
    async fn existing(&self, id: ProcId) -> Result<Option<Started>, RunError> {
        let give_up = tokio::time::Instant::now() + self.start_deadline + Duration::from_secs(1);
        loop {
            let entries = self.find(id).await.map_err(RunError::Internal)?;
            if let Some((e, pid)) = entries
                .iter()
                .find_map(|e| e.runner_pid().map(|pid| (e, pid)))
            {
                return Ok(Some(Started {
                    started: RunStarted {
                        pid,
                        directory: e.dir.display().to_string(),
                    },
                    created: false,
                }));
            }
            if tokio::time::Instant::now() < give_up
                && entries.iter().any(|e| e.younger_than(self.start_deadline))
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // Debris of a start that never produced a runner: set it aside
            // (kept for inspection) so a fresh start can go ahead.
            for e in entries {
                let aside = e.dir.with_file_name(format!(
                    "failed-start-{}",
                    e.dir.file_name().and_then(|n| n.to_str()).unwrap_or("proc")
                ));
                tracing::warn!(process_id = id, dir = %e.dir.display(), "a previous start left no runner; moving its dir aside");
                let _ = blocking(move || std::fs::rename(&e.dir, &aside)).await;
            }
            return Ok(None);
        }
    }

    /// Sends SIGTERM to process `id`'s runner, after checking the pid is
    /// still that runner's.
    pub async fn kill(&self, id: ProcId) -> Result<Vec<WorkerProc>, KillError> {
        // Wait for a start of this id in progress, so it is not missed.
        let lock = self.id_lock(id);
        let entries = {
            let _g = lock.lock().await;
            self.find(id).await.map_err(KillError::Internal)?
        };
        drop(lock);
        self.release_id_lock(id);
        if entries.is_empty() {
            return Err(KillError::NotFound(id));
        }
        let mut signalled = Vec::new();
        for e in &entries {
            // Checked right before the signal: a reused pid is never signalled.
            if !e.alive() {
                continue;
            }
            let Some(pid) = e.runner_pid() else { continue };
            match kill(Pid::from_raw(pid), Signal::SIGTERM) {
                Ok(()) => {
                    tracing::info!(process_id = id, pid, "sent SIGTERM to the runner");
                    signalled.extend(e.to_worker_proc(true));
                }
                Err(nix::errno::Errno::ESRCH) => {}
                Err(errno) => return Err(KillError::Signal { id, pid, errno }),
            }
        }
        if signalled.is_empty() {
            let state = entries
                .iter()
                .find_map(|e| e.record.as_ref().map(|r| r.state))
                .unwrap_or(ProcState::Lost);
            return Err(KillError::Finished { id, state });
        }
        Ok(signalled)
    }
}

/// Adds the worker's `masters` to the envelope's `fallback_urls`, so that
/// the runner can report to another master sharing the same database when
/// the one that sent it does not answer. The master's own fallbacks come
/// first; the envelope's `master_url` and repeats (compared without a
/// trailing `/`) are left out.
pub fn add_fallbacks(envelope: &mut RunEnvelope, masters: &[String]) {
    use dadd_client::urls::same_master;
    for master in masters {
        let known = same_master(master, &envelope.master_url)
            || envelope
                .fallback_urls
                .iter()
                .any(|f| same_master(f, master));
        if !known {
            envelope.fallback_urls.push(master.clone());
        }
    }
}

/// Removes an id from the in-flight set however the start ends.
struct InFlight<'a> {
    runners: &'a Runners,
    id: ProcId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.runners.in_flight.lock() {
            set.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(master_url: &str, fallback_urls: &[&str]) -> RunEnvelope {
        RunEnvelope {
            process_id: 1,
            token: "t".into(),
            master_url: master_url.into(),
            fallback_urls: fallback_urls.iter().map(|u| (*u).to_owned()).collect(),
            spec: serde_json::json!({"cmd": "true"}),
        }
    }

    fn masters(urls: &[&str]) -> Vec<String> {
        urls.iter().map(|u| (*u).to_owned()).collect()
    }

    #[test]
    fn the_other_masters_become_fallbacks() {
        let mut env = envelope("http://b:5000/", &[]);
        add_fallbacks(
            &mut env,
            &masters(&["http://a:5000", "http://b:5000", "http://c:5000/"]),
        );
        assert_eq!(env.fallback_urls, vec!["http://a:5000", "http://c:5000/"]);
    }

    #[test]
    fn the_masters_own_fallbacks_stay_first() {
        let mut env = envelope(
            "http://a:5000",
            &["http://lb.example/dadd", "http://c:5000"],
        );
        add_fallbacks(
            &mut env,
            &masters(&["http://a:5000/", "http://c:5000/", "http://d:5000"]),
        );
        assert_eq!(
            env.fallback_urls,
            vec!["http://lb.example/dadd", "http://c:5000", "http://d:5000"]
        );
    }

    #[test]
    fn one_master_adds_nothing() {
        let mut env = envelope("http://a:5000", &[]);
        add_fallbacks(&mut env, &masters(&["http://a:5000/"]));
        assert!(env.fallback_urls.is_empty());
        // A worker told a different master than the one that sent the
        // process still offers its own.
        add_fallbacks(&mut env, &masters(&["http://127.0.0.1:5000"]));
        assert_eq!(env.fallback_urls, vec!["http://127.0.0.1:5000"]);
    }
}
