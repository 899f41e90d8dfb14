//! The spec: what to run, and everything the runner sets up before running it.
//!
//! Parsing walks a `serde_json::Value` by hand rather than deriving
//! `Deserialize`, because serde stops at the first problem and cannot say
//! "did you mean"; users want every problem, each with its JSON path.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value};
use url::Url;

use crate::error::{JsonPath, SpecError, SpecErrors};

/// Every top-level key a spec may have.
pub const KNOWN_KEYS: &[&str] = &[
    "cmd",
    "download_urls",
    "config",
    "python_deps",
    "python_cheeseshop",
    "env",
    "timeout",
];

/// Names in the working dir that belong to the runner; a download may not take them.
pub const RESERVED_NAMES: &[&str] = &[
    "spec.json",
    "envelope.json",
    "settings.json",
    "pid",
    "output.log",
    "state.json",
    "state.json.partial",
    "runner.log",
    "venv",
];

/// The longest timeout accepted: about 31 years, far past any real process.
const MAX_TIMEOUT_SECS: f64 = 1e9;

/// The placeholder in `cmd` replaced by the settings file's path.
pub const SETTINGS_PLACEHOLDER: &str = "$APP_SETTINGS";

/// What to do with a top-level key that is not in [`KNOWN_KEYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKeys {
    /// An error (the master: a typo must not silently drop a setting).
    Deny,
    /// A warning, and parsing goes on (the runner: a newer master may know more keys).
    Warn,
}

/// A validated spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The program and its arguments, already split.
    pub cmd: Vec<String>,
    /// Files fetched into the working dir before the command starts.
    pub downloads: Vec<Download>,
    /// Written to `settings.json`.
    pub config: Map<String, Value>,
    /// Requirements installed into `venv/`; empty means no virtualenv.
    pub python_deps: Vec<PythonDep>,
    /// The package index for every dependency.
    pub python_cheeseshop: Option<Url>,
    /// Extra environment variables for the command.
    pub env: BTreeMap<String, String>,
    /// Past this, the command is stopped and the process fails.
    pub timeout: Option<Duration>,
}

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// A plain file name inside the working dir.
    pub filename: String,
    /// Where to fetch it (http or https).
    pub url: Url,
    /// Expected SHA-256, lowercase hex.
    pub sha256: Option<String>,
}

/// One `python_deps` entry: a requirement, possibly with installer arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonDep {
    /// The entry as written in the spec.
    pub raw: String,
    /// The entry split like a shell would (`-i URL pkg>=3` → three arguments).
    pub args: Vec<String>,
}

/// A parsed spec, with the warnings that did not stop it.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The spec.
    pub spec: Spec,
    /// Problems tolerated under [`UnknownKeys::Warn`].
    pub warnings: Vec<SpecError>,
}

impl Spec {
    /// Parses JSON text, refusing unknown keys (what the master does).
    pub fn parse_strict(text: &str) -> Result<Spec, SpecErrors> {
        parse(text, UnknownKeys::Deny).map(|p| p.spec)
    }

    /// The command line with every `$APP_SETTINGS` replaced by `settings_path`.
    ///
    /// `$APP_SETTINGS_JSON` (an environment variable's name) is left alone.
    pub fn command_line(&self, settings_path: &str) -> Vec<String> {
        self.cmd
            .iter()
            .map(|arg| replace_placeholder(arg, settings_path))
            .collect()
    }

    /// The canonical JSON form of this spec (lists and objects spelt out in full).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("cmd".into(), Value::from(self.cmd.clone()));
        if !self.downloads.is_empty() {
            let mut d = Map::new();
            for dl in &self.downloads {
                let mut entry = Map::new();
                entry.insert("url".into(), Value::from(dl.url.as_str()));
                if let Some(sum) = &dl.sha256 {
                    entry.insert("sha256".into(), Value::from(sum.as_str()));
                }
                d.insert(dl.filename.clone(), Value::Object(entry));
            }
            out.insert("download_urls".into(), Value::Object(d));
        }
        out.insert("config".into(), Value::Object(self.config.clone()));
        if !self.python_deps.is_empty() {
            let deps: Vec<Value> = self
                .python_deps
                .iter()
                .map(|d| Value::from(d.raw.as_str()))
                .collect();
            out.insert("python_deps".into(), Value::Array(deps));
        }
        if let Some(u) = &self.python_cheeseshop {
            out.insert("python_cheeseshop".into(), Value::from(u.as_str()));
        }
        if !self.env.is_empty() {
            let env: Map<String, Value> = self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            out.insert("env".into(), Value::Object(env));
        }
        if let Some(t) = self.timeout {
            out.insert("timeout".into(), Value::from(t.as_secs_f64()));
        }
        Value::Object(out)
    }
}

fn replace_placeholder(arg: &str, value: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(pos) = rest.find(SETTINGS_PLACEHOLDER) {
        let after = &rest[pos + SETTINGS_PLACEHOLDER.len()..];
        out.push_str(&rest[..pos]);
        let continues_name = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if continues_name {
            out.push_str(SETTINGS_PLACEHOLDER);
        } else {
            out.push_str(value);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Parses JSON text into a spec, reporting every problem at once.
pub fn parse(text: &str, unknown: UnknownKeys) -> Result<Parsed, SpecErrors> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => parse_value(&v, unknown),
        Err(e) => Err(SpecErrors(vec![SpecError {
            path: String::new(),
            reason: format!("not valid JSON: {e}"),
        }])),
    }
}

/// Validates a JSON value as a spec, reporting every problem at once.
pub fn parse_value(value: &Value, unknown: UnknownKeys) -> Result<Parsed, SpecErrors> {
    let mut v = Validator::default();
    let root = JsonPath::default();
    let Some(obj) = value.as_object() else {
        v.error(
            &root,
            format!("a spec must be a JSON object, not {}", kind(value)),
        );
        return Err(SpecErrors(v.errors));
    };

    for key in obj.keys() {
        if KNOWN_KEYS.contains(&key.as_str()) {
            continue;
        }
        let mut reason = "unknown key".to_owned();
        if let Some(s) = suggest(key) {
            reason.push_str(&format!(": did you mean \"{s}\"?"));
        }
        match unknown {
            UnknownKeys::Deny => v.error(&root.key(key), reason),
            UnknownKeys::Warn => v.warnings.push(SpecError::new(
                &root.key(key),
                format!("{reason} (ignored)"),
            )),
        }
    }

    let cmd = match obj.get("cmd") {
        None | Some(Value::Null) => {
            v.error(&root.key("cmd"), "is required");
            Vec::new()
        }
        Some(c) => v.cmd(&root.key("cmd"), c),
    };
    let downloads = obj
        .get("download_urls")
        .map(|d| v.downloads(&root.key("download_urls"), d))
        .unwrap_or_default();
    let config = match obj.get("config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            v.error(
                &root.key("config"),
                format!("must be a JSON object, not {}", kind(other)),
            );
            Map::new()
        }
    };
    let python_deps = obj
        .get("python_deps")
        .map(|d| v.python_deps(&root.key("python_deps"), d))
        .unwrap_or_default();
    let python_cheeseshop = match obj.get("python_cheeseshop") {
        None | Some(Value::Null) => None,
        Some(u) => v.url(&root.key("python_cheeseshop"), u),
    };
    let env = obj
        .get("env")
        .map(|e| v.env(&root.key("env"), e))
        .unwrap_or_default();
    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => None,
        Some(t) => v.timeout(&root.key("timeout"), t),
    };

    if v.errors.is_empty() {
        Ok(Parsed {
            spec: Spec {
                cmd,
                downloads,
                config,
                python_deps,
                python_cheeseshop,
                env,
                timeout,
            },
            warnings: v.warnings,
        })
    } else {
        Err(SpecErrors(v.errors))
    }
}

/// The known key closest to a misspelt one, if any is close enough.
fn suggest(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    KNOWN_KEYS
        .iter()
        .map(|k| (k, strsim::jaro_winkler(&key, k)))
        .filter(|(_, score)| *score >= 0.85)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(k, _)| *k)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<SpecError>,
    warnings: Vec<SpecError>,
}

impl Validator {
    fn error(&mut self, path: &JsonPath, reason: impl Into<String>) {
        self.errors.push(SpecError::new(path, reason));
    }

    fn cmd(&mut self, path: &JsonPath, value: &Value) -> Vec<String> {
        match value {
            Value::String(s) => {
                if s.contains('\0') {
                    self.error(path, "contains a NUL character");
                    return Vec::new();
                }
                match shlex::split(s) {
                    Some(args) if args.is_empty() => {
                        self.error(path, "is empty");
                        args
                    }
                    Some(args) => args,
                    None => {
                        self.error(path, "cannot be split into arguments: unbalanced quotes or a trailing backslash");
                        Vec::new()
                    }
                }
            }
            Value::Array(items) => {
                if items.is_empty() {
                    self.error(path, "is empty");
                }
                let mut args = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if s.contains('\0') => {
                            self.error(&path.index(i), "contains a NUL character")
                        }
                        Value::String(s) if i == 0 && s.is_empty() => {
                            self.error(&path.index(i), "the program name is empty")
                        }
                        Value::String(s) => args.push(s.clone()),
                        other => self.error(
                            &path.index(i),
                            format!("must be a string, not {}", kind(other)),
                        ),
                    }
                }
                args
            }
            other => {
                self.error(
                    path,
                    format!("must be a string or a list of strings, not {}", kind(other)),
                );
                Vec::new()
            }
        }
    }

    fn url(&mut self, path: &JsonPath, value: &Value) -> Option<Url> {
        let Value::String(s) = value else {
            self.error(path, format!("must be a URL string, not {}", kind(value)));
            return None;
        };
        match Url::parse(s) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                if u.host_str().is_none_or(str::is_empty) {
                    self.error(path, "URL has no host");
                    None
                } else {
                    Some(u)
                }
            }
            Ok(u) => {
                self.error(
                    path,
                    format!(
                        "scheme \"{}\" is not supported (use http or https)",
                        u.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                self.error(path, format!("not a valid URL: {e}"));
                None
            }
        }
    }

    fn filename(&mut self, path: &JsonPath, name: &str) -> bool {
        let problem = if name.is_empty() {
            Some("the file name is empty")
        } else if name.contains('\0') {
            Some("the file name contains a NUL character")
        } else if name.starts_with('/') {
            Some("the file name is an absolute path; use a plain name")
        } else if name == "." || name == ".." || name.split(['/', '\\']).any(|p| p == "..") {
            Some("the file name would leave the working dir (\"..\")")
        } else if name.contains('/') || name.contains('\\') {
            Some("the file name contains a path separator; use a plain name")
        } else if RESERVED_NAMES.contains(&name) {
            Some("the file name is used by the runner itself; choose another")
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.error(path, p);
                false
            }
            None => true,
        }
    }

    fn sha256(&mut self, path: &JsonPath, value: &Value) -> Option<String> {
        match value {
            Value::Null => None,
            Value::String(s) if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Value::String(_) => {
                self.error(path, "must be 64 hexadecimal digits (a SHA-256 digest)");
                None
            }
            other => {
                self.error(path, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn downloads(&mut self, path: &JsonPath, value: &Value) -> Vec<Download> {
        let mut out = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut push = |this: &mut Self, p: &JsonPath, d: Download| {
            if seen.insert(d.filename.clone()) {
                out.push(d);
            } else {
                this.error(
                    p,
                    format!("a second download to the file name \"{}\"", d.filename),
                );
            }
        };
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = path.index(i);
                    let Some(url) = self.url(&p, item) else {
                        continue;
                    };
                    let Some(name) = filename_from_url(&url) else {
                        self.error(&p, "cannot take a file name from this URL (its path ends in \"/\"); use the {\"name\": \"url\"} form");
                        continue;
                    };
                    if self.filename(&p, &name) {
                        push(
                            self,
                            &p,
                            Download {
                                filename: name,
                                url,
                                sha256: None,
                            },
                        );
                    }
                }
            }
            Value::Object(map) => {
                for (name, entry) in map {
                    let p = path.key(name);
                    let name_ok = self.filename(&p, name);
                    let (url, sha256) = match entry {
                        Value::String(_) => (self.url(&p, entry), None),
                        Value::Object(fields) => {
                            for k in fields.keys() {
                                if k != "url" && k != "sha256" {
                                    self.error(
                                        &p.key(k),
                                        "unknown key (a download has \"url\" and \"sha256\")",
                                    );
                                }
                            }
                            let url = match fields.get("url") {
                                Some(u) => self.url(&p.key("url"), u),
                                None => {
                                    self.error(&p.key("url"), "is required");
                                    None
                                }
                            };
                            let sum = fields
                                .get("sha256")
                                .and_then(|s| self.sha256(&p.key("sha256"), s));
                            (url, sum)
                        }
                        other => {
                            self.error(
                                &p,
                                format!(
                                    "must be a URL or an object {{\"url\", \"sha256\"}}, not {}",
                                    kind(other)
                                ),
                            );
                            (None, None)
                        }
                    };
                    if let (true, Some(url)) = (name_ok, url) {
                        push(
                            self,
                            &p,
                            Download {
                                filename: name.clone(),
                                url,
                                sha256,
                            },
                        );
                    }
                }
            }
            other => self.error(
                path,
                format!(
                    "must be a list of URLs or an object of file names to URLs, not {}",
                    kind(other)
                ),
            ),
        }
        out
    }

    fn python_deps(&mut self, path: &JsonPath, value: &Value) -> Vec<PythonDep> {
        let entries: Vec<(JsonPath, &Value)> = match value {
            Value::Null => return Vec::new(),
            Value::String(_) => vec![(path.clone(), value)],
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (path.index(i), v))
                .collect(),
            other => {
                self.error(
                    path,
                    format!("must be a string or a list of strings, not {}", kind(other)),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (p, entry) in entries {
            let Value::String(raw) = entry else {
                self.error(&p, format!("must be a string, not {}", kind(entry)));
                continue;
            };
            if raw.contains('\0') {
                self.error(&p, "contains a NUL character");
                continue;
            }
            match shlex::split(raw) {
                Some(args) if args.is_empty() => self.error(&p, "is empty"),
                Some(args) => out.push(PythonDep {
                    raw: raw.clone(),
                    args,
                }),
                None => self.error(
                    &p,
                    "cannot be split into arguments: unbalanced quotes or a trailing backslash",
                ),
            }
        }
        out
    }

    fn env(&mut self, path: &JsonPath, value: &Value) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match value {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    let p = path.key(k);
                    if k.is_empty() || k.contains('=') || k.contains('\0') {
                        self.error(
                            &p,
                            "not a usable variable name (empty, or contains \"=\" or NUL)",
                        );
                        continue;
                    }
                    match v {
                        Value::String(s) if s.contains('\0') => {
                            self.error(&p, "contains a NUL character")
                        }
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        other => self.error(
                            &p,
                            format!(
                                "must be a string, not {} (quote it: \"{}\")",
                                kind(other),
                                other
                            ),
                        ),
                    }
                }
            }
            other => self.error(
                path,
                format!(
                    "must be an object of variable names to strings, not {}",
                    kind(other)
                ),
            ),
        }
        out
    }

    fn timeout(&mut self, path: &JsonPath, value: &Value) -> Option<Duration> {
        let Some(secs) = value.as_f64() else {
            self.error(
                path,
                format!("must be a number of seconds, not {}", kind(value)),
            );
            return None;
        };
        if secs.is_nan() || secs <= 0.0 || !secs.is_finite() {
            self.error(path, "must be a positive number of seconds");
            None
        } else if secs > MAX_TIMEOUT_SECS {
            self.error(
                path,
                format!("must be at most {MAX_TIMEOUT_SECS:.0} seconds"),
            );
            None
        } else {
            Some(Duration::from_secs_f64(secs))
        }
    }
}

/// The last segment of a URL's path, percent-decoded, as the original dadd named downloads.
fn filename_from_url(url: &Url) -> Option<String> {
    let last = url.path_segments()?.next_back()?;
    if last.is_empty() {
        return None;
    }
    Some(
        percent_encoding::percent_decode_str(last)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// A URL as it may be printed: user name and password removed.
pub fn redact_url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut u = url.clone();
    // Both setters only fail for URLs that cannot have credentials at all.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(text, UnknownKeys::Deny) {
            Ok(p) => panic!("expected errors, parsed {:?}", p.spec),
            Err(e) => e.lines(),
        }
    }

    fn ok(text: &str) -> Spec {
        match Spec::parse_strict(text) {
            Ok(s) => s,
            Err(e) => panic!("expected a valid spec: {e}"),
        }
    }

    /// The original dadd's example spec, with its missing comma put back.
    const SEED: &str = r#"{
        "cmd": "python -m mypackage",
        "download_urls": ["https://s3.example/mybucket/some_data.json"],
        "config": {"db": "postgres://username:pw@dbhost:5432/mydb"},
        "python_deps": ["mypackage"],
        "python_cheeseshop": "http://cheese.mydomain.net/simple"
    }"#;

    #[test]
    fn the_seed_example_parses() {
        let s = ok(SEED);
        assert_eq!(s.cmd, ["python", "-m", "mypackage"]);
        assert_eq!(s.downloads.len(), 1);
        assert_eq!(s.downloads[0].filename, "some_data.json");
        assert_eq!(
            s.config["db"],
            Value::from("postgres://username:pw@dbhost:5432/mydb")
        );
        assert_eq!(s.python_deps[0].args, ["mypackage"]);
        assert_eq!(
            s.python_cheeseshop.as_ref().map(Url::as_str),
            Some("http://cheese.mydomain.net/simple")
        );
        assert!(s.timeout.is_none());
    }

    #[test]
    fn cmd_string_is_split_like_a_shell() {
        let s = ok(r#"{"cmd": "sh -c 'echo \"a b\"; exit 3'"}"#);
        assert_eq!(s.cmd, ["sh", "-c", "echo \"a b\"; exit 3"]);
        let s = ok(r#"{"cmd": ["echo", "a b"]}"#);
        assert_eq!(s.cmd, ["echo", "a b"]);
    }

    #[test]
    fn cmd_problems() {
        assert_eq!(errors(r#"{}"#), ["cmd: is required"]);
        assert_eq!(errors(r#"{"cmd": ""}"#), ["cmd: is empty"]);
        assert_eq!(errors(r#"{"cmd": "   "}"#), ["cmd: is empty"]);
        assert_eq!(errors(r#"{"cmd": []}"#), ["cmd: is empty"]);
        assert_eq!(
            errors(r#"{"cmd": ["ls", 3]}"#),
            ["cmd[1]: must be a string, not a number"]
        );
        assert!(errors(r#"{"cmd": "echo 'oops"}"#)[0].contains("unbalanced quotes"));
        assert!(errors(r#"{"cmd": 5}"#)[0].starts_with("cmd: must be a string or a list"));
    }

    #[test]
    fn not_an_object() {
        assert_eq!(errors("[1]"), ["a spec must be a JSON object, not a list"]);
        assert!(errors("{")
            .pop()
            .is_some_and(|e| e.starts_with("not valid JSON")));
    }

    #[test]
    fn unknown_key_suggests_the_right_one() {
        assert_eq!(
            errors(r#"{"cmd": "true", "python_dep": "x"}"#),
            ["python_dep: unknown key: did you mean \"python_deps\"?"]
        );
        assert_eq!(
            errors(r#"{"cmd": "true", "timout": 3}"#),
            ["timeout"]
                .iter()
                .map(|_| "timout: unknown key: did you mean \"timeout\"?".to_owned())
                .collect::<Vec<_>>()
        );
        assert_eq!(errors(r#"{"cmd": "true", "zzz": 1}"#), ["zzz: unknown key"]);
    }

    #[test]
    fn unknown_key_is_a_warning_for_the_runner() {
        let p = parse(r#"{"cmd": "true", "gpu": 1}"#, UnknownKeys::Warn).expect("parses");
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(p.warnings[0].path, "gpu");
        assert_eq!(p.spec.cmd, ["true"]);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errs = errors(
            r#"{"cmd": "", "config": [1], "timeout": -1,
                "download_urls": ["ftp://h/x", "http://h/ok"], "env": {"A": 1}}"#,
        );
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert!(errs.contains(
            &"download_urls[0]: scheme \"ftp\" is not supported (use http or https)".to_owned()
        ));
        assert!(errs.contains(&"config: must be a JSON object, not a list".to_owned()));
        assert!(errs.contains(&"timeout: must be a positive number of seconds".to_owned()));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("env.A: must be a string, not a number")));
    }

    #[test]
    fn config_must_be_an_object() {
        assert_eq!(
            errors(r#"{"cmd": "true", "config": "x"}"#),
            ["config: must be a JSON object, not a string"]
        );
        assert!(ok(r#"{"cmd": "true"}"#).config.is_empty());
    }

    #[test]
    fn download_forms() {
        let s = ok(r#"{"cmd": "true", "download_urls": {"a.csv": "http://h/x?y=1"}}"#);
        assert_eq!(s.downloads[0].filename, "a.csv");
        assert_eq!(s.downloads[0].sha256, None);
        let sum = "AB".repeat(32);
        let s = ok(&format!(
            r#"{{"cmd": "true", "download_urls": {{"b": {{"url": "https://h/b", "sha256": "{sum}"}}}}}}"#
        ));
        assert_eq!(
            s.downloads[0].sha256.as_deref(),
            Some("ab".repeat(32).as_str())
        );
        let s = ok(r#"{"cmd": "true", "download_urls": ["http://h/dir/my%20file.txt"]}"#);
        assert_eq!(s.downloads[0].filename, "my file.txt");
    }

    #[test]
    fn download_names_stay_inside_the_working_dir() {
        for (name, why) in [
            ("../escape", "leave the working dir"),
            ("..", "leave the working dir"),
            ("/etc/passwd", "absolute path"),
            ("a/b", "path separator"),
            ("a\\b", "path separator"),
            ("", "empty"),
            ("a\u{0}b", "NUL"),
            ("settings.json", "used by the runner"),
        ] {
            let spec = serde_json::json!({"cmd": "true", "download_urls": {name: "http://h/x"}});
            let errs = match parse_value(&spec, UnknownKeys::Deny) {
                Ok(_) => panic!("{name:?} was accepted"),
                Err(e) => e.lines(),
            };
            assert_eq!(errs.len(), 1, "{name:?}: {errs:?}");
            assert!(errs[0].contains(why), "{name:?}: {errs:?}");
        }
        // A URL whose last segment is `..` once decoded cannot escape either
        // (URL parsing folds it away, leaving a path with no file name).
        let errs = errors(r#"{"cmd": "true", "download_urls": ["http://h/a/%2e%2e"]}"#);
        assert!(errs[0].contains("cannot take a file name"), "{errs:?}");
        let errs = errors(r#"{"cmd": "true", "download_urls": ["http://h/a/..%2f..%2fetc"]}"#);
        assert!(errs[0].contains("leave the working dir"), "{errs:?}");
        let errs = errors(r#"{"cmd": "true", "download_urls": ["http://h/a/"]}"#);
        assert!(errs[0].contains("cannot take a file name"), "{errs:?}");
    }

    #[test]
    fn download_problems() {
        assert_eq!(
            errors(r#"{"cmd": "true", "download_urls": ["http://h/a/x", "http://g/x"]}"#),
            ["download_urls[1]: a second download to the file name \"x\""]
        );
        assert_eq!(
            errors(
                r#"{"cmd": "true", "download_urls": {"x": {"url": "http://h/x", "sha256": "zz"}}}"#
            ),
            ["download_urls.x.sha256: must be 64 hexadecimal digits (a SHA-256 digest)"]
        );
        assert_eq!(
            errors(r#"{"cmd": "true", "download_urls": {"x": {"sha256": null}}}"#),
            ["download_urls.x.url: is required"]
        );
        assert!(
            errors(r#"{"cmd": "true", "download_urls": ["not a url"]}"#)[0]
                .starts_with("download_urls[0]: not a valid URL")
        );
        assert!(
            errors(r#"{"cmd": "true", "download_urls": "http://h/x"}"#)[0]
                .starts_with("download_urls: must be a list")
        );
    }

    #[test]
    fn python_deps_forms() {
        let s = ok(r#"{"cmd": "true", "python_deps": "-i http://idx/simple pkg>=3"}"#);
        assert_eq!(s.python_deps[0].args, ["-i", "http://idx/simple", "pkg>=3"]);
        let s = ok(r#"{"cmd": "true", "python_deps": ["a", "b==1"]}"#);
        assert_eq!(s.python_deps.len(), 2);
        assert_eq!(
            errors(r#"{"cmd": "true", "python_deps": ["a", ""]}"#),
            ["python_deps[1]: is empty"]
        );
        assert_eq!(
            errors(r#"{"cmd": "true", "python_cheeseshop": "file:///x"}"#),
            ["python_cheeseshop: scheme \"file\" is not supported (use http or https)"]
        );
    }

    #[test]
    fn env_and_timeout() {
        let s = ok(r#"{"cmd": "true", "env": {"A": "1"}, "timeout": 2.5}"#);
        assert_eq!(s.env["A"], "1");
        assert_eq!(s.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(
            errors(r#"{"cmd": "true", "timeout": 0}"#),
            ["timeout: must be a positive number of seconds"]
        );
        assert_eq!(
            errors(r#"{"cmd": "true", "timeout": "5"}"#),
            ["timeout: must be a number of seconds, not a string"]
        );
        assert_eq!(
            errors(r#"{"cmd": "true", "env": {"A=B": "1"}}"#),
            ["env[\"A=B\"]: not a usable variable name (empty, or contains \"=\" or NUL)"]
        );
    }

    #[test]
    fn settings_placeholder_is_replaced() {
        let s =
            ok(r#"{"cmd": ["prog", "$APP_SETTINGS", "--c=$APP_SETTINGS", "$APP_SETTINGS_JSON"]}"#);
        assert_eq!(
            s.command_line("/w/settings.json"),
            [
                "prog",
                "/w/settings.json",
                "--c=/w/settings.json",
                "$APP_SETTINGS_JSON"
            ]
        );
    }

    #[test]
    fn canonical_form_parses_to_the_same_spec() {
        let s = ok(SEED);
        let again = parse_value(&s.to_json(), UnknownKeys::Deny).expect("canonical form parses");
        assert_eq!(again.spec, s);
    }

    #[test]
    fn credentials_are_redacted() {
        let u = Url::parse("https://user:secret@h/x").expect("url");
        assert_eq!(redact_url(&u), "https://h/x");
        let u = Url::parse("https://h/x").expect("url");
        assert_eq!(redact_url(&u), "https://h/x");
    }
}
