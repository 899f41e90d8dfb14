//! Waiting for a process to end, following its log by byte offset, and the
//! spinner on stderr that shows it is alive (only when stderr is a terminal).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use dadd_spec::api::{ProcDetail, ProcId};

use crate::{Client, Error};

/// Polling starts fast (most processes are short) and slows down to this.
const MAX_POLL: Duration = Duration::from_secs(1);
const MIN_POLL: Duration = Duration::from_millis(100);
/// How long the master may stay unreachable before waiting gives up.
const OUTAGE_LIMIT: Duration = Duration::from_secs(120);

/// A one-line spinner on stderr; silent when stderr is not a terminal.
#[derive(Debug)]
pub(super) struct Spinner {
    enabled: bool,
    frame: usize,
    drawn: bool,
    started: Instant,
}

impl Spinner {
    /// A spinner that draws only when stderr is a terminal.
    pub(super) fn for_stderr() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    /// A spinner drawn or not as told.
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            frame: 0,
            drawn: false,
            started: Instant::now(),
        }
    }

    /// Redraws the line with `message` and the time waited.
    pub(super) fn tick(&mut self, message: &str) {
        if !self.enabled {
            return;
        }
        const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        let frame = FRAMES[self.frame % FRAMES.len()];
        self.frame += 1;
        let secs = self.started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{frame} {message} ({secs:.1}s)");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the line (before other output, and at the end).
    pub(super) fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A transient failure worth waiting out (the master restarting).
fn transient(err: &Error) -> bool {
    match err {
        Error::Connect { .. } => true,
        Error::Api { status, .. } => *status >= 500,
        Error::AllFailed { last, .. } => transient(last),
        _ => false,
    }
}

/// Waits until process `id` is in a final state; with `follow`, prints its
/// log to stdout as it grows, and all of it by the end.
pub(super) async fn wait_final(
    client: &Client,
    id: ProcId,
    follow: bool,
    spinner: &mut Spinner,
) -> anyhow::Result<ProcDetail> {
    let mut offset = 0u64;
    let mut poll = MIN_POLL;
    let mut outage: Option<Instant> = None;
    let mut stdout = tokio::io::stdout();
    loop {
        // The state first, then the log: a runner sends its whole log before
        // its final state, so a log read after a final state is complete.
        let step = async {
            let detail = client.get(id).await?;
            let mut grew = 0;
            if follow {
                spinner.clear();
                grew = match client.copy_log(id, Some(offset), &mut stdout).await {
                    Ok(n) => n,
                    // No log stored yet.
                    Err(Error::Api { status: 404, .. }) if !detail.summary.state.is_final() => 0,
                    Err(e) => return Err(e),
                };
            }
            Ok::<_, Error>((detail, grew))
        };
        match step.await {
            Ok((detail, grew)) => {
                outage = None;
                offset += grew;
                if detail.summary.state.is_final() {
                    spinner.clear();
                    return Ok(detail);
                }
                poll = if grew > 0 {
                    MIN_POLL
                } else {
                    (poll * 3 / 2).min(MAX_POLL)
                };
                spinner.tick(&format!("process {id}: {}", detail.summary.state));
            }
            Err(e) if transient(&e) => {
                let since = *outage.get_or_insert_with(Instant::now);
                if since.elapsed() > OUTAGE_LIMIT {
                    return Err(anyhow::Error::new(e).context(format!(
                        "gave up waiting for process {id} after {}s without the master",
                        OUTAGE_LIMIT.as_secs()
                    )));
                }
                spinner.tick(&format!("process {id}: master unreachable, retrying"));
                poll = MAX_POLL;
            }
            Err(e) => return Err(anyhow::Error::new(e)),
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dadd_spec::api::ErrorBody;

    #[test]
    fn only_outages_are_waited_out() {
        let connect = Error::Connect {
            url: "http://m".into(),
            message: "refused".into(),
        };
        assert!(transient(&connect));
        let api = |status| Error::Api {
            method: "GET".into(),
            url: "http://m".into(),
            status,
            body: ErrorBody::new("x"),
        };
        assert!(transient(&api(503)));
        assert!(!transient(&api(404)));
        assert!(!transient(&api(401)));
    }

    #[test]
    fn a_disabled_spinner_draws_nothing() {
        let mut s = Spinner::new(false);
        s.tick("waiting");
        assert!(!s.drawn);
    }
}
