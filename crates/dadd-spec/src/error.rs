//! Validation problems: each one names the JSON path it is about and says why.
//!
//! Validation never stops at the first problem: a user fixing a spec wants the
//! whole list at once, so [`SpecErrors`] collects every [`SpecError`].

use std::fmt;

/// One problem in a spec, at one JSON path (`download_urls[1]`, `env.HOME`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecError {
    /// Where the problem is; empty for the document itself.
    pub path: String,
    /// What is wrong, in plain words, lowercase, no trailing period.
    pub reason: String,
}

impl SpecError {
    pub(crate) fn new(path: &JsonPath, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Every problem found in a spec; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    /// The problems, one line each (`path: reason`), for error bodies and terminals.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid spec ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// A JSON path being walked, rendered as `a.b[2]["odd key"]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonPath(Vec<Segment>);

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

impl JsonPath {
    pub(crate) fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(k.to_owned()));
        p
    }

    pub(crate) fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }
}

fn is_identifier(k: &str) -> bool {
    !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit())
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if is_identifier(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => write!(f, "[{}]", serde_json::Value::from(k.as_str()))?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_javascript() {
        let p = JsonPath::default().key("download_urls").index(1);
        assert_eq!(p.to_string(), "download_urls[1]");
        let p = JsonPath::default()
            .key("download_urls")
            .key("data.json")
            .key("sha256");
        assert_eq!(p.to_string(), r#"download_urls["data.json"].sha256"#);
        assert_eq!(JsonPath::default().to_string(), "");
    }

    #[test]
    fn errors_display_every_problem() {
        let errs = SpecErrors(vec![
            SpecError {
                path: "cmd".into(),
                reason: "is required".into(),
            },
            SpecError {
                path: "timeout".into(),
                reason: "must be positive".into(),
            },
        ]);
        let text = errs.to_string();
        assert!(text.starts_with("invalid spec (2 problems)"));
        assert!(text.contains("\n  cmd: is required"));
        assert!(text.contains("\n  timeout: must be positive"));
    }
}
