//! The JSON Schema of the spec, for editors and for users' own checks.
//!
//! The schema is generated from [`SpecDocument`], a serde picture of the
//! spec's shape. The validator in `spec.rs` is the authority; a test keeps the
//! two in step (same keys) and keeps `docs/spec.schema.json` equal to what this
//! module generates.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde_json::Value;

/// The shape of a spec document, for the schema only.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, title = "Dadd spec")]
#[allow(dead_code)] // only read by the schema generator
pub struct SpecDocument {
    /// The command: a string split like a POSIX shell would (no shell runs), or a list of arguments.
    /// The argument `$APP_SETTINGS` is replaced by the settings file's path.
    cmd: Command,
    /// Files fetched into the working dir before the command starts (http or https).
    #[serde(default)]
    download_urls: Option<Downloads>,
    /// Written to `settings.json` (mode 0600); its path is in `APP_SETTINGS_JSON`.
    #[serde(default)]
    config: Option<serde_json::Map<String, Value>>,
    /// Requirements installed into `venv/`, each optionally with installer arguments (`-i URL pkg>=3`).
    #[serde(default)]
    python_deps: Option<StringOrList>,
    /// The package index used for every dependency.
    #[serde(default)]
    #[schemars(url)]
    python_cheeseshop: Option<String>,
    /// Extra environment variables for the command.
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// Seconds; past it the command is stopped and the process fails.
    #[serde(default)]
    #[schemars(range(min = 0.001, max = 1_000_000_000.0))]
    timeout: Option<f64>,
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Command {
    /// Split like a POSIX shell.
    Line(#[schemars(length(min = 1))] String),
    /// One string per argument.
    Args(#[schemars(length(min = 1))] Vec<String>),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Downloads {
    /// URLs; each file is named after the URL path's last segment.
    List(Vec<String>),
    /// File names to URLs, or to `{url, sha256}`.
    Named(BTreeMap<String, NamedDownload>),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum NamedDownload {
    Url(String),
    Checked(CheckedDownload),
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct CheckedDownload {
    url: String,
    /// SHA-256 of the file, 64 hexadecimal digits; a mismatch fails the process.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    sha256: Option<String>,
}

/// The spec's JSON Schema, as written to `docs/spec.schema.json`.
pub fn spec_schema() -> Value {
    let schema = schemars::schema_for!(SpecDocument);
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::KNOWN_KEYS;

    #[test]
    fn schema_keys_match_the_validator() {
        let schema = spec_schema();
        let mut props: Vec<&str> = schema["properties"]
            .as_object()
            .expect("the schema has properties")
            .keys()
            .map(String::as_str)
            .collect();
        props.sort_unstable();
        let mut known = KNOWN_KEYS.to_vec();
        known.sort_unstable();
        assert_eq!(props, known);
    }

    /// `docs/spec.schema.json` must be what the code generates.
    /// Run with `DADD_UPDATE_SCHEMA=1` to rewrite it after changing the spec.
    #[test]
    fn docs_schema_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/spec.schema.json");
        let generated = serde_json::to_string_pretty(&spec_schema()).expect("serializes") + "\n";
        if std::env::var_os("DADD_UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &generated).expect("docs/spec.schema.json is writable");
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/spec.schema.json is out of date: run `DADD_UPDATE_SCHEMA=1 cargo test -p dadd-spec`"
        );
    }
}
