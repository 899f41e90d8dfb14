//! Redelivery of kept results. A runner that could not hand its final
//! report and log to any master within `--report-deadline` marks its
//! `state.json` `undelivered`, keeps its working dir and exits; one killed
//! while delivering them leaves a final state still `pending`. Either way no
//! runner is left to deliver them, so the worker does, in the runner's
//! place:
//!
//! every `redeliver_interval_secs` (and right after start) it scans the work
//! root for dirs whose runner is not alive and whose record holds a final
//! state the runner reports (`success`, `failed`, `killed`) with delivery
//! `undelivered` or `pending`. For each, with the process token and masters
//! of the dir's `envelope.json` (its `master_url`, its `fallback_urls`, then
//! the worker's own masters), it
//!
//! 1. asks how much of `output.log` the master holds: an empty chunk at the
//!    file's length (`PUT …/logfile?offset=LEN`), answered with the length
//!    held (200) or the offset expected (409, `expected_offset`);
//! 2. sends the rest in chunks of at most 1 MiB, resuming wherever a 409
//!    says;
//! 3. sends the final state (`PUT …/state`: state, command pid, exit code,
//!    signal, reason), which the master takes over `lost`;
//! 4. rewrites `state.json` with `delivery: delivered` (atomically, as the
//!    runner does) and removes the working dir, as the runner does after a
//!    delivery: the worker never starts a runner with `--no-cleanup`, and
//!    no spec key keeps a dir.
//!
//! A dir without a readable `envelope.json` (a run by hand) is left alone.
//! When no master answers, the next interval tries again; one warning per
//! outage. A master that refuses (404 for a process it does not know, 401
//! or 403 for a token it does not take, or any other refusal) leaves the
//! dir undelivered; it is tried again each interval, with one warning per
//! dir per worker run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use chrono::Utc;
use dadd_client::{Client, ClientBuilder};
use dadd_spec::api::{Delivery, ProcId, RunEnvelope, RunnerRecord, StateReport};

use crate::workroot::{self, Entry};

/// The most bytes sent in one log chunk (the master's limit).
pub const MAX_CHUNK: u64 = dadd_spec::api::LOG_CHUNK_BYTES;
/// How long one call to a master may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How many 409s naming another offset one delivery accepts.
const MAX_GAPS: u32 = 8;

/// A result the master does not have and no runner will deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// The working dir.
    pub dir: PathBuf,
    /// The process id.
    pub process_id: ProcId,
    /// The runner's record.
    pub record: RunnerRecord,
}

/// Whether `record` is a result to redeliver: a final state the runner
/// reports, not delivered, and no runner `alive` to deliver it.
pub fn needs_redelivery(record: &RunnerRecord, alive: bool) -> bool {
    record.state.is_final()
        && record.state.is_runner_report()
        && matches!(record.delivery, Delivery::Undelivered | Delivery::Pending)
        && !alive
}

/// The entry as a result to redeliver, if it is one.
pub fn kept(entry: &Entry) -> Option<Kept> {
    let record = entry.record.as_ref()?;
    // Liveness last: it reads /proc.
    if !needs_redelivery(record, false) || entry.alive() {
        return None;
    }
    Some(Kept {
        dir: entry.dir.clone(),
        process_id: entry.process_id?,
        record: record.clone(),
    })
}

/// Every result under `root` to redeliver.
pub fn scan(root: &Path) -> Vec<Kept> {
    workroot::scan(root).iter().filter_map(kept).collect()
}

/// Why a delivery did not finish.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    /// No master answered (no connection, no answer, or 502/503/504).
    Unanswered(String),
    /// A master answered, and did not take it.
    Refused(String),
    /// A problem here (the dir's files).
    Local(String),
}

impl From<dadd_client::Error> for Failure {
    fn from(e: dadd_client::Error) -> Self {
        use dadd_client::Error as E;
        match (e.status(), &e) {
            (Some(502..=504), _)
            | (None, E::Connect { .. } | E::AllFailed { .. } | E::Unconfirmed { .. }) => {
                Failure::Unanswered(e.to_string())
            }
            _ => Failure::Refused(e.to_string()),
        }
    }
}

/// The offset a 409 on a log chunk names.
fn expected_offset(e: &dadd_client::Error) -> Option<u64> {
    if e.status() != Some(409) {
        return None;
    }
    e.body().and_then(|b| b.expected_offset)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a blocking task failed: {e}"))
}

/// The redelivery task's settings and what it has said so far.
#[derive(Debug)]
pub(crate) struct Redeliverer {
    root: PathBuf,
    /// The worker's own masters, tried after the envelope's.
    masters: Vec<String>,
    ca_file: Option<PathBuf>,
    /// Dirs warned about in this worker run.
    warned: HashSet<PathBuf>,
    /// Since when no master answered.
    outage: Option<Instant>,
}

impl Redeliverer {
    pub(crate) fn new(root: PathBuf, masters: Vec<String>, ca_file: Option<PathBuf>) -> Self {
        Self {
            root,
            masters,
            ca_file,
            warned: HashSet::new(),
            outage: None,
        }
    }

    /// Redelivers every `interval`, starting now, until the task is aborted.
    pub(crate) async fn run(mut self, interval: Duration) {
        loop {
            self.pass().await;
            tokio::time::sleep(interval).await;
        }
    }

    /// One scan of the work root, and a delivery of each result found.
    async fn pass(&mut self) {
        let root = self.root.clone();
        let kept = match blocking(move || scan(&root)).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(error = %e, "cannot scan the work root for undelivered results");
                return;
            }
        };
        for k in kept {
            let id = k.process_id;
            match self.deliver(&k).await {
                Ok(master) => {
                    self.answered();
                    tracing::info!(process_id = id, %master, dir = %k.dir.display(), "delivered the kept result of process {id} to {master}");
                    self.finish(k).await;
                }
                Err(Failure::Unanswered(e)) => {
                    if self.outage.is_none() {
                        self.outage = Some(Instant::now());
                        tracing::warn!(process_id = id, dir = %k.dir.display(), error = %e, "no master answers: the undelivered result of process {id} is tried again every interval (logged once per outage)");
                    }
                }
                Err(Failure::Refused(e)) => {
                    self.answered();
                    if self.warned.insert(k.dir.clone()) {
                        tracing::warn!(process_id = id, dir = %k.dir.display(), error = %e, "the master did not take the kept result of process {id}; the dir stays undelivered and is tried again every interval (logged once); see \"Undelivered results\" in docs/operations.md");
                    }
                }
                Err(Failure::Local(e)) => {
                    if self.warned.insert(k.dir.clone()) {
                        tracing::warn!(process_id = id, dir = %k.dir.display(), error = %e, "cannot redeliver the kept result of process {id}; the dir is kept (logged once); copy output.log and state.json by hand");
                    }
                }
            }
        }
    }

    /// A master answered: an outage, if any, is over.
    fn answered(&mut self) {
        if let Some(since) = self.outage.take() {
            tracing::info!(
                after_secs = since.elapsed().as_secs(),
                "a master answers again; delivering undelivered results"
            );
        }
    }

    /// Sends the log and the final state; answers the master that took them.
    async fn deliver(&self, k: &Kept) -> Result<String, Failure> {
        let dir = k.dir.clone();
        let envelope = blocking(move || read_envelope(&dir))
            .await
            .map_err(Failure::Local)??;
        if envelope.process_id != k.process_id {
            return Err(Failure::Local(format!(
                "envelope.json is for process {}, state.json for process {}",
                envelope.process_id, k.process_id
            )));
        }
        let client = ClientBuilder::from_urls([envelope.master_url.clone()])
            .fallback_urls(envelope.fallback_urls.iter().cloned())
            .fallback_urls(self.masters.iter().cloned())
            .token(Some(envelope.token.clone()))
            .ca_file(self.ca_file.clone())
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| {
                Failure::Local(format!("cannot call the masters of envelope.json: {e}"))
            })?;
        ship_log(&client, k).await?;
        let r = &k.record;
        let report = StateReport {
            state: r.state,
            pid: r.command_pid,
            exit_code: r.exit_code,
            signal: r.signal,
            reason: r.reason.clone(),
        };
        client.report_state(k.process_id, &report).await?;
        Ok(client.master_url().trim_end_matches('/').to_owned())
    }

    /// Records the delivery and removes the dir.
    async fn finish(&mut self, k: Kept) {
        let dir = k.dir.clone();
        let done = blocking(move || {
            let mut record = k.record;
            record.delivery = Delivery::Delivered;
            record.updated_at = Utc::now();
            let marked = workroot::write_record(&k.dir, &record);
            (marked, std::fs::remove_dir_all(&k.dir))
        })
        .await;
        let (marked, removed) = match done {
            Ok(done) => done,
            Err(e) => (
                Err(std::io::Error::other(e.clone())),
                Err(std::io::Error::other(e)),
            ),
        };
        if let Err(e) = removed {
            if self.warned.insert(dir.clone()) {
                let marked = match marked {
                    Ok(()) => "state.json says delivered".to_owned(),
                    Err(e) => format!("state.json could not be marked delivered either ({e})"),
                };
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the working dir of a delivered result ({marked}); remove it by hand");
            }
        }
    }
}

fn read_envelope(dir: &Path) -> Result<RunEnvelope, Failure> {
    let path = dir.join("envelope.json");
    let text = std::fs::read(&path).map_err(|e| {
        Failure::Local(format!(
            "cannot read {} (it holds the process token): {e}",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| Failure::Local(format!("cannot parse {}: {e}", path.display())))
}

/// Sends the part of `output.log` the master does not hold.
async fn ship_log(client: &Client, k: &Kept) -> Result<(), Failure> {
    let id = k.process_id;
    let path = k.dir.join("output.log");
    let len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            return Err(Failure::Local(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    if len == 0 {
        return Ok(());
    }
    // An empty chunk at the end: the master answers the length it holds
    // (200), or the offset it expects (409) when it holds less.
    let mut offset = match client.append_log(id, len, Bytes::new()).await {
        Ok(held) => held.offset,
        Err(e) => expected_offset(&e).ok_or_else(|| Failure::from(e))?,
    };
    let mut gaps = 0;
    while offset < len {
        let want = (len - offset).min(MAX_CHUNK);
        let p = path.clone();
        let chunk = blocking(move || read_chunk(&p, offset, want))
            .await
            .map_err(Failure::Local)?
            .map_err(|e| Failure::Local(format!("cannot read {}: {e}", path.display())))?;
        match client.append_log(id, offset, Bytes::from(chunk)).await {
            Ok(held) if held.offset > offset => offset = held.offset,
            Ok(held) => {
                return Err(Failure::Refused(format!(
                    "the master answered offset {} to a log chunk at {offset}",
                    held.offset
                )))
            }
            Err(e) => match expected_offset(&e) {
                Some(expected) if gaps < MAX_GAPS => {
                    gaps += 1;
                    offset = expected;
                }
                Some(_) => {
                    return Err(Failure::Refused(
                        "the master keeps naming other log offsets".into(),
                    ))
                }
                None => return Err(e.into()),
            },
        }
    }
    Ok(())
}

fn read_chunk(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs;
    use dadd_spec::ProcState;

    fn record(state: ProcState, delivery: Delivery, ticks: Option<u64>) -> RunnerRecord {
        RunnerRecord {
            process_id: Some(9),
            state,
            runner_pid: i32::try_from(std::process::id()).expect("pid"),
            runner_start_ticks: ticks,
            command_pid: Some(77),
            exit_code: Some(3),
            signal: None,
            reason: Some("exit code 3".into()),
            started_at: Utc::now(),
            updated_at: Utc::now(),
            ended_at: Some(Utc::now()),
            delivery,
        }
    }

    #[test]
    fn only_final_undelivered_results_of_dead_runners_are_taken() {
        use Delivery::*;
        use ProcState::*;
        for (state, delivery, alive, want) in [
            (Failed, Undelivered, false, true),
            (Success, Undelivered, false, true),
            (Killed, Pending, false, true),
            (Failed, Undelivered, true, false),
            (Success, Pending, true, false),
            (Running, Pending, false, false),
            (Setup, Undelivered, false, false),
            (Success, Delivered, false, false),
            (Success, NoMaster, false, false),
            (Lost, Undelivered, false, false),
        ] {
            assert_eq!(
                needs_redelivery(&record(state, delivery, None), alive),
                want,
                "{state} {delivery:?} alive={alive}"
            );
        }
    }

    #[test]
    fn the_scan_checks_the_runner_is_gone() {
        let root = tempfile::tempdir().expect("tempdir");
        let me = i32::try_from(std::process::id()).expect("pid");
        let ticks = procfs::start_ticks(me).expect("ticks");
        let write = |name: &str, r: &RunnerRecord| {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::write(dir.join("state.json"), serde_json::to_vec(r).expect("json"))
                .expect("write");
        };
        // This process stands for a live runner; a start time off by one
        // for one that is gone (its pid reused).
        write(
            "proc-1-aaaaaa",
            &record(ProcState::Failed, Delivery::Undelivered, Some(ticks)),
        );
        write(
            "proc-2-bbbbbb",
            &record(ProcState::Failed, Delivery::Undelivered, Some(ticks + 1)),
        );
        write(
            "proc-3-cccccc",
            &record(ProcState::Success, Delivery::Delivered, Some(ticks + 1)),
        );
        std::fs::create_dir(root.path().join("proc-4-dddddd")).expect("a dir starting");
        let found = scan(root.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].dir, root.path().join("proc-2-bbbbbb"));
        assert_eq!(found[0].process_id, 9, "the record's id");
        assert_eq!(found[0].record.exit_code, Some(3));
    }

    #[test]
    fn chunks_are_read_from_an_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("output.log");
        std::fs::write(&p, b"0123456789").expect("write");
        assert_eq!(read_chunk(&p, 3, 4).expect("read"), b"3456");
        assert_eq!(read_chunk(&p, 8, 10).expect("read"), b"89");
    }

    #[test]
    fn failures_are_told_apart() {
        let connect = dadd_client::Error::Connect {
            url: "http://m".into(),
            message: "refused".into(),
        };
        assert!(matches!(Failure::from(connect), Failure::Unanswered(_)));
        let api = |status| dadd_client::Error::Api {
            method: "PUT".into(),
            url: "http://m".into(),
            status,
            body: dadd_spec::api::ErrorBody::new("x"),
        };
        assert!(matches!(Failure::from(api(503)), Failure::Unanswered(_)));
        for status in [401, 403, 404, 409, 500] {
            assert!(
                matches!(Failure::from(api(status)), Failure::Refused(_)),
                "{status}"
            );
        }
        let mut gap = dadd_spec::api::ErrorBody::new("gap");
        gap.expected_offset = Some(12);
        let gap = dadd_client::Error::Api {
            method: "PUT".into(),
            url: "http://m".into(),
            status: 409,
            body: gap,
        };
        assert_eq!(expected_offset(&gap), Some(12));
        assert_eq!(expected_offset(&api(409)), None);
    }
}
