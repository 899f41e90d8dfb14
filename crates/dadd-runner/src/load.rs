//! Reading the spec: from a file, standard input, or the worker's envelope;
//! validated with `dadd-spec` (unknown keys only warn: a newer master may
//! know more keys). Nothing here touches the disk beyond reading.

use std::io::Read;
use std::path::{Path, PathBuf};

use dadd_spec::api::{ProcId, RunEnvelope};
use dadd_spec::{Spec, SpecErrors, UnknownKeys};
use serde_json::Value;
use url::Url;

use crate::cli::{Cli, TOKEN_ENV};

/// Where and as whom the runner reports.
#[derive(Clone)]
pub struct MasterTarget {
    /// The master's base URL (no trailing slash).
    pub url: String,
    /// Other masters sharing its store, in the order they are tried when
    /// `url` does not answer (base URLs, no trailing slash; none repeats
    /// `url` or another).
    pub fallback_urls: Vec<String>,
    /// The process id at the master.
    pub process_id: ProcId,
    /// The per-process bearer token.
    pub token: String,
}

impl std::fmt::Debug for MasterTarget {
    // The token stays out of every debug print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterTarget")
            .field("url", &self.url)
            .field("fallback_urls", &self.fallback_urls)
            .field("process_id", &self.process_id)
            .finish_non_exhaustive()
    }
}

impl MasterTarget {
    /// Every master's base URL: `url` first, then `fallback_urls`.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.url.as_str()).chain(self.fallback_urls.iter().map(String::as_str))
    }
}

/// A validated job: the spec and, when dispatched, the master to report to.
#[derive(Debug, Clone)]
pub struct Job {
    /// The validated spec.
    pub spec: Spec,
    /// The spec as given (written to `spec.json` when the worker did not).
    pub spec_json: Value,
    /// Problems that did not stop the run (unknown keys), one line each.
    pub warnings: Vec<String>,
    /// The master, when there is one.
    pub master: Option<MasterTarget>,
}

impl Job {
    /// The master's process id, when dispatched by one.
    pub fn process_id(&self) -> Option<ProcId> {
        self.master.as_ref().map(|m| m.process_id)
    }
}

/// Why no job could be loaded; every variant is exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The spec or envelope could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// `spec` or `envelope`.
        what: &'static str,
        /// The file (`-` for standard input).
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The envelope is not a `RunEnvelope`.
    #[error("bad envelope {path}: {reason}")]
    Envelope {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The spec is invalid.
    #[error("{0}")]
    Spec(SpecErrors),
    /// The flags make no sense together.
    #[error("{0}")]
    Usage(String),
}

/// Reads and validates the job the command line names.
pub fn load(cli: &Cli) -> Result<Job, LoadError> {
    if let Some(path) = &cli.envelope {
        return load_envelope(path);
    }
    let source = cli
        .spec
        .as_deref()
        .ok_or_else(|| LoadError::Usage("give a SPEC file (or - for standard input)".into()))?;
    let text = read_spec_text(source)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        LoadError::Spec(SpecErrors(vec![dadd_spec::SpecError {
            path: String::new(),
            reason: format!("not valid JSON: {e}"),
        }]))
    })?;
    let master = match (&cli.master, cli.process_id) {
        (Some(url), Some(id)) => {
            let token = std::env::var(TOKEN_ENV).unwrap_or_default();
            if token.trim().is_empty() {
                return Err(LoadError::Usage(format!(
                    "--master needs the process's token in the environment variable {TOKEN_ENV}"
                )));
            }
            Some(target(url, &[], id, token).map_err(LoadError::Usage)?)
        }
        _ => None,
    };
    validate(value, master)
}

fn read_spec_text(source: &str) -> Result<String, LoadError> {
    let mut text = String::new();
    let result = if source == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(source).map(|t| text = t)
    };
    result.map_err(|source_err| LoadError::Read {
        what: "spec",
        path: PathBuf::from(source),
        source: source_err,
    })?;
    Ok(text)
}

fn load_envelope(path: &Path) -> Result<Job, LoadError> {
    let text = std::fs::read(path).map_err(|source| LoadError::Read {
        what: "envelope",
        path: path.to_path_buf(),
        source,
    })?;
    let envelope: RunEnvelope = serde_json::from_slice(&text).map_err(|e| LoadError::Envelope {
        path: path.to_path_buf(),
        reason: format!("not a run envelope ({e})"),
    })?;
    if envelope.token.trim().is_empty() {
        return Err(LoadError::Envelope {
            path: path.to_path_buf(),
            reason: "its token is empty".into(),
        });
    }
    let master = target(
        &envelope.master_url,
        &envelope.fallback_urls,
        envelope.process_id,
        envelope.token,
    )
    .map_err(|reason| LoadError::Envelope {
        path: path.to_path_buf(),
        reason,
    })?;
    validate(envelope.spec, Some(master))
}

/// The master `url` and its `fallbacks`, each checked (http or https) and
/// without a trailing slash; a fallback naming a master already listed is
/// dropped. The error names the URL at fault.
fn target(
    url: &str,
    fallbacks: &[String],
    process_id: ProcId,
    token: String,
) -> Result<MasterTarget, String> {
    let primary = master_url(url).map_err(|e| format!("bad master URL {e}"))?;
    let mut seen = vec![primary.clone()];
    let mut fallback_urls = Vec::new();
    for (i, fallback) in fallbacks.iter().enumerate() {
        let parsed =
            master_url(fallback).map_err(|e| format!("fallback_urls[{i}]: bad master URL {e}"))?;
        if !seen.contains(&parsed) {
            seen.push(parsed);
            fallback_urls.push(fallback.trim_end_matches('/').to_owned());
        }
    }
    Ok(MasterTarget {
        url: url.trim_end_matches('/').to_owned(),
        fallback_urls,
        process_id,
        token,
    })
}

/// `url` parsed, if it is an http or https URL; else the URL and why not.
/// Parsed URLs compare equal when they name the same master (case of the
/// host, default port and a trailing slash aside).
fn master_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url.trim_end_matches('/')).map_err(|e| format!("{url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{}: give an http or https URL",
            dadd_spec::redact_url(&parsed)
        ));
    }
    Ok(parsed)
}

fn validate(value: Value, master: Option<MasterTarget>) -> Result<Job, LoadError> {
    let parsed = dadd_spec::parse_value(&value, UnknownKeys::Warn).map_err(LoadError::Spec)?;
    Ok(Job {
        spec: parsed.spec,
        spec_json: value,
        warnings: parsed.warnings.iter().map(ToString::to_string).collect(),
        master,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("dadd-runner").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn a_spec_file_with_an_unknown_key_loads_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.json");
        std::fs::write(&path, r#"{"cmd": "true", "gpu": 1}"#).expect("write");
        let job = load(&cli(&[path.to_str().expect("utf-8")])).expect("loads");
        assert_eq!(job.spec.cmd, ["true"]);
        assert_eq!(job.warnings.len(), 1);
        assert!(job.master.is_none());
    }

    #[test]
    fn every_problem_is_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.json");
        std::fs::write(
            &path,
            r#"{"cmd": "", "download_urls": {"../escape": "http://x/y"}}"#,
        )
        .expect("write");
        match load(&cli(&[path.to_str().expect("utf-8")])) {
            Err(LoadError::Spec(e)) => assert!(e.0.len() >= 2, "{e}"),
            other => panic!("expected spec errors, got {other:?}"),
        }
    }

    #[test]
    fn an_envelope_carries_the_master() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("envelope.json");
        std::fs::write(
            &path,
            r#"{"process_id": 7, "token": "t0k", "master_url": "http://127.0.0.1:1/", "spec": {"cmd": ["true"]}}"#,
        )
        .expect("write");
        let job = load(&cli(&["--envelope", path.to_str().expect("utf-8")])).expect("loads");
        let m = job.master.expect("a master");
        assert_eq!(
            (m.url.as_str(), m.process_id, m.token.as_str()),
            ("http://127.0.0.1:1", 7, "t0k")
        );
        assert!(
            !format!("{m:?}").contains("t0k"),
            "the token is not printed"
        );
    }

    fn envelope(text: &str) -> Result<Job, LoadError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("envelope.json");
        std::fs::write(&path, text).expect("write");
        load(&cli(&["--envelope", path.to_str().expect("utf-8")]))
    }

    #[test]
    fn fallback_masters_follow_the_master_in_order_without_repeats() {
        let job = envelope(
            r#"{"process_id": 7, "token": "t0k", "master_url": "http://m1:8080/",
                "fallback_urls": ["http://M1:8080", "https://m2/", "http://m3", "https://m2", "http://m1:8080/"],
                "spec": {"cmd": ["true"]}}"#,
        )
        .expect("loads");
        let m = job.master.expect("a master");
        assert_eq!(
            m.urls().collect::<Vec<_>>(),
            ["http://m1:8080", "https://m2", "http://m3"]
        );
        assert_eq!(m.fallback_urls, ["https://m2", "http://m3"]);
    }

    #[test]
    fn an_envelope_without_fallbacks_has_only_its_master() {
        let job = envelope(
            r#"{"process_id": 7, "token": "t0k", "master_url": "http://m1", "spec": {"cmd": ["true"]}}"#,
        )
        .expect("loads");
        let m = job.master.expect("a master");
        assert_eq!(m.urls().collect::<Vec<_>>(), ["http://m1"]);
    }

    #[test]
    fn a_bad_fallback_is_refused_naming_it() {
        for (bad, says) in [
            (
                r#""ftp://m2/x""#,
                "fallback_urls[1]: bad master URL ftp://m2/x: give an http or https URL",
            ),
            (r#""m2:8080""#, "fallback_urls[1]: bad master URL"),
            (
                r#""http://user:secret@[::1""#,
                "fallback_urls[1]: bad master URL",
            ),
        ] {
            let text = format!(
                r#"{{"process_id": 7, "token": "t0k", "master_url": "http://m1",
                    "fallback_urls": ["http://m3", {bad}], "spec": {{"cmd": ["true"]}}}}"#
            );
            match envelope(&text) {
                Err(e @ LoadError::Envelope { .. }) => {
                    let e = e.to_string();
                    assert!(e.contains(says), "{e}");
                    assert!(e.starts_with("bad envelope "), "{e}");
                }
                other => panic!("expected an envelope error for {bad}, got {other:?}"),
            }
        }
        let e = envelope(
            r#"{"process_id": 7, "token": "t0k", "master_url": "http://m1",
                "fallback_urls": ["https://user:secret@m2/"], "spec": {"cmd": ["true"]}}"#,
        )
        .map(|j| j.master.expect("a master").fallback_urls);
        assert_eq!(
            e.expect("credentials are allowed"),
            ["https://user:secret@m2"]
        );
    }

    #[test]
    fn a_bad_master_url_in_an_envelope_is_an_envelope_error() {
        match envelope(
            r#"{"process_id": 7, "token": "t0k", "master_url": "file:///etc", "spec": {"cmd": ["true"]}}"#,
        ) {
            Err(e @ LoadError::Envelope { .. }) => {
                assert!(e.to_string().contains("bad master URL file:///etc"), "{e}");
            }
            other => panic!("expected an envelope error, got {other:?}"),
        }
    }

    #[test]
    fn a_scheme_error_does_not_print_credentials() {
        let e = target("ftp://u:secret@m/", &[], 1, "t".into()).expect_err("refused");
        assert!(!e.contains("secret"), "{e}");
        let e =
            target("http://m", &["ftp://u:secret@m2".into()], 1, "t".into()).expect_err("refused");
        assert!(
            !e.contains("secret") && e.contains("fallback_urls[0]"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_envelope_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("envelope.json");
        std::fs::write(&path, r#"{"process_id": 7}"#).expect("write");
        assert!(matches!(
            load(&cli(&["--envelope", path.to_str().expect("utf-8")])),
            Err(LoadError::Envelope { .. })
        ));
    }
}
