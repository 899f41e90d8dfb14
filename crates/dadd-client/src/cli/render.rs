//! How `dadd` shows processes, hosts and files to people (the `--json` form
//! is the wire types themselves).

use chrono::{DateTime, Utc};
use dadd_spec::api::{FileEntry, HostInfo, HostStatus, ProcDetail, ProcSummary};

use super::table::Table;

/// A command line as a shell would read it back.
pub(super) fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%$".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A time for a table: UTC, to the second.
pub(super) fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_owned())
}

/// How a process ended, in a few words (`success (exit 0)`, `killed (signal 15)`).
pub(super) fn outcome(p: &ProcSummary) -> String {
    let mut s = p.state.to_string();
    match (p.exit_code, p.signal) {
        (Some(code), _) => s.push_str(&format!(" (exit {code})")),
        (None, Some(sig)) => s.push_str(&format!(" (signal {sig})")),
        (None, None) => {}
    }
    if let Some(reason) = p.reason.as_deref().filter(|r| !r.is_empty()) {
        s.push_str(&format!(": {reason}"));
    }
    s
}

/// The `dadd ps` table.
pub(super) fn procs_table(procs: &[ProcSummary]) -> String {
    let mut t = Table::new(&["ID", "STATE", "HOST", "PID", "EXIT", "CREATED", "CMD"]);
    for p in procs {
        t.row(vec![
            p.id.to_string(),
            p.state.to_string(),
            opt(p.host.as_deref()),
            opt(p.pid),
            match (p.exit_code, p.signal) {
                (Some(c), _) => c.to_string(),
                (None, Some(s)) => format!("sig {s}"),
                (None, None) => "-".to_owned(),
            },
            time(&p.created_at),
            shell_join(&p.cmd),
        ]);
    }
    t.render()
}

/// The `dadd show` page.
pub(super) fn proc_detail(d: &ProcDetail, master: &str) -> String {
    let p = &d.summary;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<9} {v}\n"));
    line("id:", p.id.to_string());
    line("state:", outcome(p));
    line("cmd:", shell_join(&p.cmd));
    line("host:", opt(p.host.as_deref()));
    line("pid:", opt(p.pid));
    line("created:", time(&p.created_at));
    line("started:", opt(p.started_at.as_ref().map(time)));
    line("ended:", opt(p.ended_at.as_ref().map(time)));
    let log_url = if d.log_url.starts_with('/') {
        format!("{}{}", master.trim_end_matches('/'), d.log_url)
    } else {
        d.log_url.clone()
    };
    line("log:", format!("{log_url} ({} bytes)", d.log_size));
    if !d.history.is_empty() {
        out.push_str("history:\n");
        for h in &d.history {
            out.push_str(&format!("  {}  {}", time(&h.at), h.state));
            if let Some(reason) = h.reason.as_deref().filter(|r| !r.is_empty()) {
                out.push_str(&format!(" ({reason})"));
            }
            out.push('\n');
        }
    }
    out
}

/// The `dadd hosts` table.
pub(super) fn hosts_table(hosts: &[HostInfo]) -> String {
    let mut t = Table::new(&[
        "ID",
        "ADDRESS",
        "STATUS",
        "PROCS",
        "VERSION",
        "LAST HEARTBEAT",
    ]);
    for h in hosts {
        t.row(vec![
            h.id.to_string(),
            h.address.clone(),
            match h.status {
                HostStatus::Up => "up".to_owned(),
                HostStatus::Down => "down".to_owned(),
            },
            format!("{}/{}", h.running, h.max_procs),
            h.version.clone(),
            time(&h.last_heartbeat),
        ]);
    }
    t.render()
}

/// The `dadd files ls` table.
pub(super) fn files_table(files: &[FileEntry]) -> String {
    let mut t = Table::new(&["PATH", "SIZE", "SHA256", "MODIFIED"]);
    for f in files {
        t.row(vec![
            f.path.clone(),
            f.size.to_string(),
            f.sha256.chars().take(12).collect(),
            time(&f.modified),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dadd_spec::api::StateChange;
    use dadd_spec::ProcState;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("a valid time")
    }

    fn summary() -> ProcSummary {
        ProcSummary {
            id: 7,
            state: ProcState::Failed,
            cmd: vec!["sh".into(), "-c".into(), "echo 'hi'; exit 3".into()],
            host: Some("127.0.0.1:6000".into()),
            pid: Some(4242),
            exit_code: Some(3),
            signal: None,
            reason: None,
            created_at: at("2025-01-02T03:04:05Z"),
            started_at: Some(at("2025-01-02T03:04:06Z")),
            ended_at: Some(at("2025-01-02T03:04:07Z")),
        }
    }

    #[test]
    fn commands_quote_like_a_shell() {
        assert_eq!(
            shell_join(&summary().cmd),
            r"sh -c 'echo '\''hi'\''; exit 3'"
        );
        assert_eq!(shell_join(&["a b".into(), String::new()]), "'a b' ''");
    }

    #[test]
    fn ps_table_shows_one_row_per_process() {
        let mut queued = summary();
        queued.id = 8;
        queued.state = ProcState::Queued;
        queued.host = None;
        queued.pid = None;
        queued.exit_code = None;
        queued.cmd = vec!["true".into()];
        let text = procs_table(&[queued, summary()]);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID  STATE   HOST"), "{text}");
        assert!(lines[1].starts_with("8   queued  -"), "{text}");
        assert!(
            lines[2].contains("failed  127.0.0.1:6000  4242  3"),
            "{text}"
        );
        assert!(
            lines[2].ends_with(r"sh -c 'echo '\''hi'\''; exit 3'"),
            "{text}"
        );
    }

    #[test]
    fn show_lists_history_and_absolute_log_url() {
        let d = ProcDetail {
            summary: summary(),
            spec: serde_json::json!({"cmd": "true"}),
            history: vec![
                StateChange {
                    state: ProcState::Queued,
                    at: at("2025-01-02T03:04:05Z"),
                    reason: None,
                },
                StateChange {
                    state: ProcState::Failed,
                    at: at("2025-01-02T03:04:07Z"),
                    reason: Some("exit 3".into()),
                },
            ],
            log_url: "/api/procs/7/logfile".into(),
            log_size: 12,
        };
        let text = proc_detail(&d, "http://127.0.0.1:5000/");
        assert!(text.contains("state:    failed (exit 3)\n"), "{text}");
        assert!(
            text.contains("log:      http://127.0.0.1:5000/api/procs/7/logfile (12 bytes)"),
            "{text}"
        );
        assert!(
            text.contains("  2025-01-02 03:04:07  failed (exit 3)\n"),
            "{text}"
        );
    }

    #[test]
    fn hosts_table_shows_capacity() {
        let h = HostInfo {
            id: 1,
            address: "127.0.0.1:6000".into(),
            url: "http://127.0.0.1:6000".into(),
            status: HostStatus::Up,
            max_procs: 4,
            running: 1,
            version: "0.1.0".into(),
            last_heartbeat: at("2025-01-02T03:04:05Z"),
            registered_at: at("2025-01-02T03:00:00Z"),
        };
        let text = hosts_table(&[h]);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("1   127.0.0.1:6000  up      1/4")),
            "{text}"
        );
    }
}
