//! Master URL lists: several `dadd-master`s may share one database, so a
//! client, a worker and a runner are given a list (`http://a:5000,http://b:5000`)
//! and fail over between them. This module is the one parser of such lists,
//! shared by [`crate::ClientBuilder`] and the worker's configuration, so both
//! accept and refuse exactly the same things.

use url::Url;

use crate::error::{Error, Result};

/// The entries of a comma-separated list of master URLs, each trimmed;
/// empty entries (a trailing comma, `a,,b`) are dropped.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One master's base URL, checked: http or https, with a host. The path
/// always ends in `/`, so that API paths join under a prefix
/// (`https://lb.example/dadd` becomes `https://lb.example/dadd/`).
pub fn parse_base(raw: &str) -> Result<Url> {
    let raw = raw.trim();
    let mut base = Url::parse(raw).map_err(|e| Error::Url {
        url: raw.to_owned(),
        message: format!("{e}; expected something like http://127.0.0.1:5000"),
    })?;
    // Named as written, unless that would show credentials.
    let shown = || {
        if base.username().is_empty() && base.password().is_none() {
            raw.to_owned()
        } else {
            dadd_spec::redact_url(&base)
        }
    };
    if !matches!(base.scheme(), "http" | "https") {
        return Err(Error::Url {
            url: shown(),
            message: "the scheme must be http or https".into(),
        });
    }
    if base.cannot_be_a_base() || base.host().is_none() {
        return Err(Error::Url {
            url: shown(),
            message: "it has no host".into(),
        });
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

/// Every URL of `entries` (each entry itself may be a comma-separated list),
/// checked, in order, without repeats. An error names the first bad URL; an
/// empty list is an error too.
pub fn parse_list<S: AsRef<str>>(entries: &[S]) -> Result<Vec<Url>> {
    let mut bases: Vec<Url> = Vec::new();
    for entry in entries {
        for raw in split_list(entry.as_ref()) {
            let base = parse_base(&raw)?;
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
    }
    if bases.is_empty() {
        return Err(Error::Url {
            url: String::new(),
            message: "no master URL given; give one, or several separated by commas, like http://10.0.0.1:5000,http://10.0.0.2:5000".into(),
        });
    }
    Ok(bases)
}

/// Whether `a` and `b` name the same master: equal once parsed (so a
/// trailing `/`, the case of the host and a default port do not matter),
/// or, when either does not parse, equal once trimmed of a trailing `/`.
pub fn same_master(a: &str, b: &str) -> bool {
    match (parse_base(a), parse_base(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas_and_drop_blanks() {
        assert_eq!(
            split_list(" http://a:5000 , http://b:5000,,"),
            vec!["http://a:5000".to_owned(), "http://b:5000".to_owned()]
        );
        assert!(split_list(" , ").is_empty());
    }

    #[test]
    fn a_list_keeps_its_order_and_drops_repeats() {
        let bases = parse_list(&["http://b:5000,http://a:5000/", "http://B:5000/"]).expect("valid");
        let shown: Vec<&str> = bases.iter().map(Url::as_str).collect();
        assert_eq!(shown, vec!["http://b:5000/", "http://a:5000/"]);
    }

    #[test]
    fn a_bad_entry_is_named() {
        let err = parse_list(&["http://a:5000,ftp://b:21,http://c:5000"]).expect_err("ftp");
        let text = err.to_string();
        assert!(text.contains("invalid URL ftp://b:21:"), "{text}");
        assert!(text.contains("http or https"), "{text}");
        let err = parse_list(&["http://a:5000,b:5000"]).expect_err("no scheme");
        assert!(err.to_string().contains("invalid URL b:5000"), "{err}");
        let err = parse_list(&[" , "]).expect_err("empty");
        assert!(err.to_string().contains("no master URL given"), "{err}");
    }

    #[test]
    fn bad_urls_do_not_show_credentials() {
        let err = parse_base("ftp://user:pw@host/").expect_err("ftp");
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn same_master_ignores_a_trailing_slash() {
        assert!(same_master("http://m:5000", "http://m:5000/"));
        assert!(same_master("http://M:80/", "http://m"));
        assert!(!same_master("http://m:5000", "http://m:5001"));
        assert!(same_master("not a url/", "not a url"));
    }
}
