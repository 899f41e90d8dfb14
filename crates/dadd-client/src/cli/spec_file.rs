//! Reading a spec from a file or standard input and checking it here, with
//! the same rules the master applies, so every problem shows before anything
//! is sent.

use std::io::Read;

use dadd_spec::UnknownKeys;
use serde_json::Value;

use super::exit::UsageError;

/// The spec at `source` (`-` for standard input), checked; every problem is
/// in the error, one per line.
pub(super) fn load(source: &str) -> Result<Value, UsageError> {
    let (text, name) = if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| UsageError(format!("cannot read the spec from standard input: {e}")))?;
        (text, "standard input".to_owned())
    } else {
        let text = std::fs::read_to_string(source)
            .map_err(|e| UsageError(format!("cannot read the spec file {source}: {e}")))?;
        (text, source.to_owned())
    };
    check(&text, &name)
}

/// Parses and validates spec text.
pub(super) fn check(text: &str, name: &str) -> Result<Value, UsageError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| UsageError(format!("{name} is not JSON: {e}")))?;
    match dadd_spec::parse_value(&value, UnknownKeys::Deny) {
        Ok(_) => Ok(value),
        Err(errors) => {
            let lines = errors.lines();
            let n = lines.len();
            Err(UsageError(format!(
                "{name}: invalid spec ({n} problem{}):\n  {}",
                if n == 1 { "" } else { "s" },
                lines.join("\n  ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed() {
        let err =
            check(r#"{"python_dep": ["x"], "timeout": -1}"#, "bad.json").expect_err("invalid");
        let text = err.to_string();
        assert!(text.starts_with("bad.json: invalid spec ("), "{text}");
        assert!(text.contains("python_dep"), "{text}");
        assert!(text.contains("python_deps"), "a suggestion: {text}");
        assert!(text.contains("cmd"), "the missing cmd: {text}");
        assert!(text.contains("timeout"), "{text}");
    }

    #[test]
    fn not_json_says_so() {
        let err = check("{cmd: true", "x.json").expect_err("not JSON");
        assert!(err.to_string().starts_with("x.json is not JSON:"), "{err}");
    }

    #[test]
    fn a_good_spec_is_kept_as_written() {
        let v = check(r#"{"cmd": "echo hi"}"#, "ok.json").expect("valid");
        assert_eq!(v, serde_json::json!({"cmd": "echo hi"}));
    }

    #[test]
    fn a_missing_file_is_a_usage_error() {
        let err = load("/nonexistent/spec.json").expect_err("missing");
        assert!(
            err.to_string().contains("cannot read the spec file"),
            "{err}"
        );
    }
}
