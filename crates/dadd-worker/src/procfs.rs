//! Is this pid still that runner? Answered from `/proc`, so a pid the kernel
//! has reused for another process is never taken for (or signalled as) a runner.

use std::path::Path;

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field
/// 22); `None` when there is no such process or it is a zombie.
pub fn start_ticks(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Field 22 of a `/proc/PID/stat` line, unless the state (field 3) is a zombie.
fn parse_stat(stat: &str) -> Option<u64> {
    // Field 2 is the command name in parentheses and may hold spaces or
    // parentheses itself: the fields after it start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); field 22 is `fields[19]`.
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | Some(&"x")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive and is the runner of `dir`: its start time equals
/// `ticks` when the runner recorded one, else its command line names `dir`.
pub fn is_runner(pid: i32, ticks: Option<u64>, dir: &Path) -> bool {
    let Some(actual) = start_ticks(pid) else {
        return false;
    };
    match ticks {
        Some(expected) => actual == expected,
        None => std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmdline| {
                let dir = dir.as_os_str().as_encoded_bytes();
                cmdline.split(|b| *b == 0).any(|arg| arg == dir)
            })
            .unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_stat(line), Some(987654));
        let zombie = "1234 (x) Z 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_found_and_a_wrong_start_time_is_not() {
        let me = i32::try_from(std::process::id()).expect("pid fits");
        let ticks = start_ticks(me).expect("this process has a start time");
        assert!(is_runner(me, Some(ticks), Path::new("/nowhere")));
        assert!(!is_runner(me, Some(ticks + 1), Path::new("/nowhere")));
        assert!(
            !is_runner(me, None, Path::new("/nowhere")),
            "cmdline does not name it"
        );
        assert_eq!(start_ticks(-1), None);
        assert_eq!(start_ticks(i32::MAX), None);
    }
}
