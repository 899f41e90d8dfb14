//! The work root: one working dir per process, `proc-<id>-XXXXXX`, each with
//! the runner's `state.json`. It is the worker's only truth about its
//! runners: nothing is kept in memory that a restart (even `kill -9`) would
//! lose, so a new worker finds every runner again by scanning it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::Utc;
use dadd_spec::api::{Delivery, ProcId, RunnerRecord, WorkerProc};
use dadd_spec::ProcState;

use crate::procfs;

/// The default work root for a system install.
pub const SYSTEM_WORK_ROOT: &str = "/var/lib/dadd-worker/work";

/// The prefix of process `id`'s working dir.
pub fn dir_prefix(id: ProcId) -> String {
    format!("proc-{id}-")
}

/// The process id a working dir's name holds.
pub fn id_from_name(name: &str) -> Option<ProcId> {
    let rest = name.strip_prefix("proc-")?;
    let (id, suffix) = rest.split_once('-')?;
    if suffix.is_empty() {
        return None;
    }
    id.parse().ok()
}

/// One working dir, as found on disk.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The working dir.
    pub dir: PathBuf,
    /// The process id (from `state.json`, else the dir's name).
    pub process_id: Option<ProcId>,
    /// The runner's `state.json`, when written.
    pub record: Option<RunnerRecord>,
    /// The `pid` file's content, when written.
    pub pid_file: Option<i32>,
    /// When the dir was last changed (to tell a start in progress from debris).
    pub modified: SystemTime,
}

impl Entry {
    /// Reads one working dir.
    pub fn read(dir: &Path) -> Option<Entry> {
        let name = dir.file_name()?.to_str()?;
        let name_id = id_from_name(name)?;
        let meta = std::fs::symlink_metadata(dir).ok()?;
        if !meta.is_dir() {
            return None;
        }
        let record: Option<RunnerRecord> = std::fs::read(dir.join(RECORD))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok());
        let pid_file = std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        Some(Entry {
            dir: dir.to_path_buf(),
            process_id: record.as_ref().and_then(|r| r.process_id).or(Some(name_id)),
            record,
            pid_file,
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    /// The runner's pid, from `state.json`, else from `pid`.
    pub fn runner_pid(&self) -> Option<i32> {
        self.record.as_ref().map(|r| r.runner_pid).or(self.pid_file)
    }

    /// Whether the runner is alive, checked against pid reuse.
    pub fn alive(&self) -> bool {
        match (&self.record, self.pid_file) {
            (Some(r), _) => procfs::is_runner(r.runner_pid, r.runner_start_ticks, &self.dir),
            (None, Some(pid)) => procfs::is_runner(pid, None, &self.dir),
            (None, None) => false,
        }
    }

    /// A dir with neither `state.json` nor `pid`: its runner is starting, or
    /// its start failed.
    pub fn unstarted(&self) -> bool {
        self.record.is_none() && self.pid_file.is_none()
    }

    /// Younger than `age`.
    pub fn younger_than(&self, age: std::time::Duration) -> bool {
        self.modified
            .elapsed()
            .map(|elapsed| elapsed < age)
            .unwrap_or(true)
    }

    /// As listed by `GET /procs`: the record, or one made up from the `pid`
    /// file while the runner has not written `state.json` yet.
    pub fn to_worker_proc(&self, alive: bool) -> Option<WorkerProc> {
        let record = match &self.record {
            Some(r) => r.clone(),
            None => {
                let now = Utc::now();
                RunnerRecord {
                    process_id: self.process_id,
                    state: ProcState::Init,
                    runner_pid: self.pid_file?,
                    runner_start_ticks: None,
                    command_pid: None,
                    exit_code: None,
                    signal: None,
                    reason: None,
                    started_at: now,
                    updated_at: now,
                    ended_at: None,
                    delivery: Delivery::Pending,
                }
            }
        };
        Some(WorkerProc {
            process_id: self.process_id,
            directory: self.dir.display().to_string(),
            record,
            alive,
        })
    }
}

/// Every working dir under `root` (unreadable ones are skipped).
pub fn scan(root: &Path) -> Vec<Entry> {
    scan_matching(root, "proc-")
}

/// The working dirs of process `id`.
pub fn find(root: &Path, id: ProcId) -> Vec<Entry> {
    scan_matching(root, &dir_prefix(id))
}

fn scan_matching(root: &Path, prefix: &str) -> Vec<Entry> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<Entry> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter_map(|e| Entry::read(&e.path()))
        .collect();
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// Which default work root was chosen, and why (for the log).
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The work root.
    pub path: PathBuf,
    /// Why this one.
    pub why: String,
}

/// `/var/lib/dadd-worker/work` when it is writable, else `<tmp>/dadd-worker-<uid>`.
pub fn default_work_root() -> Result<Chosen, std::io::Error> {
    let system = PathBuf::from(SYSTEM_WORK_ROOT);
    match ensure_writable(&system) {
        Ok(()) => Ok(Chosen {
            path: system,
            why: "the system work root is writable".into(),
        }),
        Err(e) => {
            let uid = nix::unistd::getuid().as_raw();
            let path = std::env::temp_dir().join(format!("dadd-worker-{uid}"));
            prepare_private_dir(&path, uid)?;
            Ok(Chosen {
                path,
                why: format!("{SYSTEM_WORK_ROOT} is not writable ({e})"),
            })
        }
    }
}

/// Creates `dir` (and parents) and checks a file can be made in it.
pub fn ensure_writable(dir: &Path) -> Result<(), std::io::Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    let mut probe = tempfile::Builder::new()
        .prefix(".write-test-")
        .tempfile_in(dir)?;
    probe.write_all(b"ok")?;
    Ok(())
}

/// A dir in a shared place (`/tmp`) that must be ours and private: another
/// user could have made it first to read tokens or plant runners' dirs.
fn prepare_private_dir(path: &Path, uid: u32) -> Result<(), std::io::Error> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private directory of uid {uid}; remove it or set work_root",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Writes `path` with mode 0600, fsynced (the envelope holds a token).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), std::io::Error> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The runner's record's file name in a working dir.
pub const RECORD: &str = "state.json";

/// Rewrites `dir`'s `state.json` with `record` the way the runner does:
/// `state.json.partial` (mode 0644), fsync, rename, fsync of the dir, so a
/// crash at any moment leaves the old record or the new one.
pub fn write_record(dir: &Path, record: &RunnerRecord) -> Result<(), std::io::Error> {
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let partial = dir.join(format!("{RECORD}.partial"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&partial)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&partial, dir.join(RECORD))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Process ids an entry list holds, with whether each entry counts against
/// `max_procs` (alive, or still starting).
pub fn occupied(entries: &[Entry], start_deadline: std::time::Duration) -> Vec<ProcId> {
    entries
        .iter()
        .filter(|e| e.alive() || (e.unstarted() && e.younger_than(start_deadline)))
        .filter_map(|e| e.process_id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_hold_the_id() {
        assert_eq!(id_from_name("proc-42-aB3xYz"), Some(42));
        assert_eq!(id_from_name("proc-42-"), None);
        assert_eq!(id_from_name("proc-x-abc"), None);
        assert_eq!(id_from_name("other"), None);
        assert!(dir_prefix(7) == "proc-7-");
        assert!(!"proc-70-abc".starts_with(&dir_prefix(7)), "7 is not 70");
    }

    fn record(pid: i32, ticks: Option<u64>, delivery: Delivery) -> RunnerRecord {
        RunnerRecord {
            process_id: Some(5),
            state: ProcState::Running,
            runner_pid: pid,
            runner_start_ticks: ticks,
            command_pid: None,
            exit_code: None,
            signal: None,
            reason: None,
            started_at: Utc::now(),
            updated_at: Utc::now(),
            ended_at: None,
            delivery,
        }
    }

    #[test]
    fn scan_reads_records_and_checks_liveness() {
        let root = tempfile::tempdir().expect("tempdir");
        let me = i32::try_from(std::process::id()).expect("pid");
        let ticks = procfs::start_ticks(me);
        let live = root.path().join("proc-5-aaaaaa");
        std::fs::create_dir(&live).expect("mkdir");
        std::fs::write(
            live.join("state.json"),
            serde_json::to_vec(&record(me, ticks, Delivery::Pending)).expect("json"),
        )
        .expect("write");
        let reused = root.path().join("proc-6-bbbbbb");
        std::fs::create_dir(&reused).expect("mkdir");
        std::fs::write(
            reused.join("state.json"),
            serde_json::to_vec(&record(me, ticks.map(|t| t + 1), Delivery::Undelivered))
                .expect("json"),
        )
        .expect("write");
        let starting = root.path().join("proc-7-cccccc");
        std::fs::create_dir(&starting).expect("mkdir");
        std::fs::create_dir(root.path().join("unrelated")).expect("mkdir");

        let all = scan(root.path());
        assert_eq!(all.len(), 3);
        assert!(all[0].alive(), "this process, with its real start time");
        assert_eq!(
            all[1].process_id,
            Some(5),
            "the record's id wins over the name"
        );
        assert!(!all[1].alive(), "a reused pid is not the runner");
        assert!(all[2].unstarted());
        assert_eq!(occupied(&all, Duration::from_secs(10)), vec![5, 7]);
        assert_eq!(occupied(&all, Duration::ZERO), vec![5]);
        assert_eq!(find(root.path(), 7).len(), 1);
        assert!(find(root.path(), 8).is_empty());
        assert!(
            all[2].to_worker_proc(false).is_none(),
            "nothing to list yet"
        );
    }

    #[test]
    fn a_rewritten_record_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = record(1, None, Delivery::Undelivered);
        write_record(dir.path(), &r).expect("write");
        r.delivery = Delivery::Delivered;
        write_record(dir.path(), &r).expect("rewrite");
        let back: RunnerRecord =
            serde_json::from_slice(&std::fs::read(dir.path().join(RECORD)).expect("read"))
                .expect("parse");
        assert_eq!(back, r);
        assert!(!dir.path().join("state.json.partial").exists());
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("envelope.json");
        write_private(&p, b"{}").expect("write");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_private(&p, b"{}").is_err(), "never overwrites");
    }

    #[test]
    fn a_shared_dir_of_someone_else_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("open");
        std::fs::create_dir(&p).expect("mkdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let uid = nix::unistd::getuid().as_raw();
        assert!(prepare_private_dir(&p, uid).is_err());
        let q = dir.path().join("mine");
        prepare_private_dir(&q, uid).expect("made private");
    }
}
