//! `GET /api/stats`: the summary at the top of the dashboard (processes per
//! state, hosts up, processes submitted per minute over the last hour),
//! polled every few seconds, so it costs a handful of indexed queries.

use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use actix_web::HttpResponse;
use dadd_spec::api::Stats;
use dadd_spec::ProcState;

use crate::api::{json, State};
use crate::app::time;
use crate::error::ApiError;
use crate::store::DashboardStats;

/// Minutes in the per-minute window.
pub(super) const WINDOW_MINUTES: i64 = 60;
const MINUTE_MS: i64 = 60_000;

/// `GET /api/stats` (API token).
pub async fn stats(st: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    st.auth.user(&req)?;
    let now = st.now();
    let start = window_start(now);
    let raw = st.store.dashboard_stats(start, now - st.ttl_ms()).await?;
    Ok(json(StatusCode::OK, &summarize(&raw, start, now)))
}

/// The first minute of the window: whole minutes, the current one last.
pub(super) fn window_start(now: i64) -> i64 {
    (now.div_euclid(MINUTE_MS) + 1 - WINDOW_MINUTES) * MINUTE_MS
}

/// Store figures to the wire type: every state present, every minute of
/// the window present (zeros where nothing happened).
pub(super) fn summarize(raw: &DashboardStats, start: i64, now: i64) -> Stats {
    let mut by_state: std::collections::BTreeMap<ProcState, u64> =
        ProcState::ALL.iter().map(|s| (*s, 0)).collect();
    for (state, n) in &raw.by_state {
        by_state.insert(*state, u64::try_from(*n).unwrap_or(0));
    }
    let mut per_minute = vec![0u64; WINDOW_MINUTES as usize];
    for (m, n) in &raw.per_minute {
        if let Some(slot) = usize::try_from(*m).ok().and_then(|m| per_minute.get_mut(m)) {
            *slot += u64::try_from(*n).unwrap_or(0);
        }
    }
    Stats {
        total: by_state.values().sum(),
        by_state,
        hosts_up: u64::try_from(raw.hosts_up).unwrap_or(0),
        hosts_total: u64::try_from(raw.hosts_total).unwrap_or(0),
        per_minute,
        window_start: time(start),
        at: time(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::{Change, Store};

    #[test]
    fn the_window_ends_with_the_current_minute() {
        let now = 10 * 3_600_000 + 90_500; // 1.5 minutes into an hour
        let start = window_start(now);
        assert_eq!(start % MINUTE_MS, 0);
        assert_eq!((now - start) / MINUTE_MS, WINDOW_MINUTES - 1);
    }

    #[test]
    fn every_state_and_minute_is_present() {
        let raw = DashboardStats {
            by_state: vec![(ProcState::Failed, 2)],
            hosts_up: 1,
            hosts_total: 2,
            per_minute: vec![(0, 1), (59, 3), (60, 9), (-1, 9)],
        };
        let s = summarize(&raw, 0, 59 * MINUTE_MS);
        assert_eq!(s.by_state.len(), ProcState::ALL.len());
        assert_eq!(s.by_state[&ProcState::Failed], 2);
        assert_eq!(s.total, 2);
        assert_eq!(s.per_minute.len(), 60);
        assert_eq!((s.per_minute[0], s.per_minute[59]), (1, 3));
        assert_eq!(
            s.per_minute.iter().sum::<u64>(),
            4,
            "outside the window is dropped"
        );
    }

    async fn store(dir: &std::path::Path) -> Store {
        let url = format!("sqlite://{}", dir.join("s.db").display());
        Store::connect(&url, &StoreConfig::default())
            .await
            .expect("store opens")
    }

    #[actix_web::test]
    async fn counts_states_and_the_window_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path()).await;
        let empty = s.dashboard_stats(0, 0).await.expect("stats");
        assert_eq!(empty, DashboardStats::default());
        let hour = 3_600_000;
        let base = 100 * hour;
        // Old processes, then some within the last hour, two a minute apart.
        for i in 0..50 {
            s.insert_proc("{}", &["true".into()], base - 2 * hour + i)
                .await
                .expect("insert");
        }
        let since = base - hour;
        for (i, at) in [since, since + 10, since + MINUTE_MS, base]
            .iter()
            .enumerate()
        {
            let row = s
                .insert_proc("{}", &["true".into()], *at)
                .await
                .expect("insert");
            if i == 0 {
                let c = Change::to(ProcState::Killed, None, *at);
                assert!(s
                    .transition(row.id, ProcState::Queued, &c)
                    .await
                    .expect("kill"));
            }
        }
        s.heartbeat("127.0.0.1", 6000, "http", 2, "0", base)
            .await
            .expect("heartbeat");
        s.heartbeat("127.0.0.1", 6001, "http", 2, "0", base - hour)
            .await
            .expect("heartbeat");
        let st = s
            .dashboard_stats(since, base - 10_000)
            .await
            .expect("stats");
        let mut by_state = st.by_state.clone();
        by_state.sort();
        assert_eq!(
            by_state,
            vec![(ProcState::Queued, 53), (ProcState::Killed, 1)]
        );
        assert_eq!((st.hosts_up, st.hosts_total), (1, 2));
        assert_eq!(st.per_minute, vec![(0, 2), (1, 1), (60, 1)]);
        // Nothing recent: no window rows at all.
        let later = s.dashboard_stats(base + hour, 0).await.expect("stats");
        assert!(later.per_minute.is_empty());
        // Everything recent: the whole table.
        let all = s.dashboard_stats(0, 0).await.expect("stats");
        assert_eq!(all.per_minute.iter().map(|(_, n)| n).sum::<i64>(), 54);
    }
}
