//! Downloads: each file streamed to disk (never whole in memory), its
//! SHA-256 checked when the spec gives one, capped in size, retried on
//! connection errors and 5xx (never on 4xx). URLs are printed without
//! their credentials.
//!
//! A download from the master itself (its `/files` store) carries the
//! process's token and id: with API tokens configured, the master's store is
//! not open, and the runner holds no API token. Every master the runner may
//! report to (its master and the fallbacks sharing its store) counts as the
//! master here; any other origin never sees the token.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dadd_spec::{redact_url, Download};
use sha2::{Digest, Sha256};
use ureq::Agent;

use crate::load::MasterTarget;
use crate::outlog::OutputLog;
use crate::signals::Signals;

/// The header naming the process whose token a download carries.
pub const PROCESS_HEADER: &str = "X-Dadd-Process";

/// Retries after the first attempt (so at most four attempts).
pub const RETRIES: u32 = 3;
/// The wait before the first retry; it doubles for each next one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The server answered an error status.
    #[error("download of {name} from {url} failed: HTTP {status}")]
    Status {
        /// The file name.
        name: String,
        /// The URL, without credentials.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The connection failed (after every retry).
    #[error("download of {name} from {url} failed: {reason}")]
    Transport {
        /// The file name.
        name: String,
        /// The URL, without credentials.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The file is larger than the cap.
    #[error("download of {name} from {url} stopped: larger than the cap of {cap} bytes (raise --max-download-bytes if it is expected)")]
    TooLarge {
        /// The file name.
        name: String,
        /// The URL, without credentials.
        url: String,
        /// The cap.
        cap: u64,
    },
    /// The SHA-256 does not match (the file was removed).
    #[error("checksum mismatch for {name}: expected sha256 {expected}, got {actual}; the file was removed")]
    Checksum {
        /// The file name.
        name: String,
        /// What the spec says.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The runner was told to stop.
    #[error("stopped by {0} during the download")]
    Stopped(nix::sys::signal::Signal),
}

enum Attempt {
    Done { bytes: u64, sha256: String },
    Retry(DownloadError),
    Fail(DownloadError),
}

/// Fetches every download into `dir`, in order; stops at the first failure.
pub fn fetch_all(
    agent: &Agent,
    downloads: &[Download],
    dir: &Path,
    cap: u64,
    log: &OutputLog,
    signals: &mut Signals,
    master: Option<&MasterTarget>,
) -> Result<(), DownloadError> {
    for d in downloads {
        fetch(agent, d, dir, cap, log, signals, master)?;
    }
    Ok(())
}

/// Fetches one download into `dir`; on failure the partial file is removed.
pub fn fetch(
    agent: &Agent,
    d: &Download,
    dir: &Path,
    cap: u64,
    log: &OutputLog,
    signals: &mut Signals,
    master: Option<&MasterTarget>,
) -> Result<u64, DownloadError> {
    let url = redact_url(&d.url);
    let path = dir.join(&d.filename);
    log.line(format!("downloading {} from {url}", d.filename));
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    let result = loop {
        match try_once(agent, d, &url, &path, cap, signals, master) {
            Attempt::Done { bytes, sha256 } => break Ok((bytes, sha256)),
            Attempt::Fail(e) => break Err(e),
            Attempt::Retry(e) if attempt < RETRIES => {
                attempt += 1;
                log.line(format!(
                    "{e}; retry {attempt} of {RETRIES} in {:.1}s",
                    backoff.as_secs_f64()
                ));
                if let Some(sig) = signals.sleep(backoff) {
                    break Err(DownloadError::Stopped(sig));
                }
                backoff *= 2;
            }
            Attempt::Retry(e) => break Err(e),
        }
    };
    let outcome = result.and_then(|(bytes, actual)| match &d.sha256 {
        Some(expected) if !expected.eq_ignore_ascii_case(&actual) => Err(DownloadError::Checksum {
            name: d.filename.clone(),
            expected: expected.clone(),
            actual,
        }),
        _ => Ok(bytes),
    });
    match outcome {
        Ok(bytes) => {
            let checked = if d.sha256.is_some() {
                ", sha256 ok"
            } else {
                ""
            };
            log.line(format!(
                "downloaded {} ({bytes} bytes{checked})",
                d.filename
            ));
            Ok(bytes)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Whether `url` is served by the master at `master` (same scheme, host
/// and port).
fn same_origin(url: &url::Url, master: &str) -> bool {
    url::Url::parse(master).is_ok_and(|m| m.origin() == url.origin())
}

/// Whether `url` is served by one of the masters of `target` (its master or
/// a fallback): only there does the process token go.
fn at_a_master(url: &url::Url, target: &MasterTarget) -> bool {
    target.urls().any(|m| same_origin(url, m))
}

fn try_once(
    agent: &Agent,
    d: &Download,
    url: &str,
    path: &Path,
    cap: u64,
    signals: &mut Signals,
    master: Option<&MasterTarget>,
) -> Attempt {
    let name = || d.filename.clone();
    let transport = |reason: String| {
        Attempt::Retry(DownloadError::Transport {
            name: name(),
            url: url.to_owned(),
            reason,
        })
    };
    let mut req = agent.get(d.url.as_str());
    if let Some(m) = master.filter(|m| at_a_master(&d.url, m)) {
        req = req
            .header("Authorization", format!("Bearer {}", m.token))
            .header(PROCESS_HEADER, m.process_id.to_string());
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        Err(e) => return transport(e.to_string()),
    };
    let status = resp.status().as_u16();
    if status >= 300 {
        let err = DownloadError::Status {
            name: name(),
            url: url.to_owned(),
            status,
        };
        return if status >= 500 {
            Attempt::Retry(err)
        } else {
            Attempt::Fail(err)
        };
    }
    let too_large = || {
        Attempt::Fail(DownloadError::TooLarge {
            name: name(),
            url: url.to_owned(),
            cap,
        })
    };
    if resp.body().content_length().is_some_and(|n| n > cap) {
        return too_large();
    }
    let io = |source| {
        Attempt::Fail(DownloadError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut file = match File::create(path) {
        Ok(f) => f,
        Err(e) => return io(e),
    };
    let mut reader = resp.body_mut().as_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return transport(format!("reading the body: {e}")),
        };
        total += n as u64;
        if total > cap {
            return too_large();
        }
        hasher.update(&buf[..n]);
        if let Err(e) = file.write_all(&buf[..n]) {
            return io(e);
        }
        if let Some(sig) = signals.pending_stop() {
            return Attempt::Fail(DownloadError::Stopped(sig));
        }
    }
    if let Err(e) = file.sync_all() {
        return io(e);
    }
    Attempt::Done {
        bytes: total,
        sha256: hex::encode(hasher.finalize()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_the_masters_origin() {
        let url = |u: &str| url::Url::parse(u).expect("url");
        let master = "http://127.0.0.1:5000";
        assert!(same_origin(
            &url("http://127.0.0.1:5000/files/a.json"),
            master
        ));
        assert!(same_origin(
            &url("http://127.0.0.1:5000/files/a.json"),
            "http://127.0.0.1:5000/"
        ));
        assert!(!same_origin(
            &url("http://127.0.0.1:5001/files/a.json"),
            master
        ));
        assert!(!same_origin(
            &url("https://127.0.0.1:5000/files/a.json"),
            master
        ));
        assert!(!same_origin(&url("http://s3.example/files/a.json"), master));
        assert!(!same_origin(&url("http://127.0.0.1:5000/a"), "not a url"));
    }

    #[test]
    fn the_token_goes_to_every_master_of_the_list_and_nowhere_else() {
        let url = |u: &str| url::Url::parse(u).expect("url");
        let target = MasterTarget {
            url: "http://10.0.0.1:5000".into(),
            fallback_urls: vec!["https://m2.example".into(), "http://10.0.0.3:5000".into()],
            process_id: 1,
            token: "t".into(),
        };
        for yes in [
            "http://10.0.0.1:5000/files/a",
            "https://m2.example/files/a",
            "https://m2.example:443/files/a",
            "http://10.0.0.3:5000/files/a",
        ] {
            assert!(at_a_master(&url(yes), &target), "{yes}");
        }
        for no in [
            "http://m2.example/files/a",
            "https://m2.example:8443/files/a",
            "http://10.0.0.3:5001/files/a",
            "https://10.0.0.1:5000/files/a",
            "http://s3.example/files/a",
        ] {
            assert!(!at_a_master(&url(no), &target), "{no}");
        }
    }
}
