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

/// Store figures to the wire type: every state present (unfinished ones
/// whenever submitted, final ones within the window), every minute of the
/// window present (zeros where nothing happened).
pub(super) fn summarize(raw: &DashboardStats, start: i64, now: i64) -> Stats {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let mut by_state: std::collections::BTreeMap<ProcState, u64> =
        ProcState::ALL.iter().map(|s| (*s, 0)).collect();
    for (state, n) in &raw.unfinished {
        by_state.insert(*state, count(*n));
    }
    let mut per_minute = vec![0u64; WINDOW_MINUTES as usize];
    for (m, state, n) in &raw.window {
        let Some(slot) = usize::try_from(*m).ok().and_then(|m| per_minute.get_mut(m)) else {
            continue; // a clock step put it outside the window
        };
        *slot += count(*n);
        if state.is_final() {
            *by_state.entry(*state).or_default() += count(*n);
        }
    }
    Stats {
        by_state,
        hosts_up: count(raw.hosts_up),
        hosts_total: count(raw.hosts_total),
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
            unfinished: vec![(ProcState::Running, 4)],
            window: vec![
                (0, ProcState::Failed, 1),
                (59, ProcState::Success, 3),
                (59, ProcState::Running, 2),
                (60, ProcState::Failed, 9),
                (-1, ProcState::Failed, 9),
            ],
            hosts_up: 1,
            hosts_total: 2,
        };
        let s = summarize(&raw, 0, 59 * MINUTE_MS);
        assert_eq!(s.by_state.len(), ProcState::ALL.len());
        assert_eq!(
            s.by_state[&ProcState::Failed],
            1,
            "outside the window is dropped"
        );
        assert_eq!(s.by_state[&ProcState::Success], 3);
        assert_eq!(
            s.by_state[&ProcState::Running],
            4,
            "unfinished: whenever submitted"
        );
        assert_eq!(s.by_state[&ProcState::Queued], 0);
        assert_eq!(s.per_minute.len(), 60);
        assert_eq!((s.per_minute[0], s.per_minute[59]), (1, 5));
        assert_eq!(s.per_minute.iter().sum::<u64>(), 6);
        assert_eq!((s.hosts_up, s.hosts_total), (1, 2));
    }

    /// A fresh Postgres schema, dropped at the end (when configured).
    struct PgSchema {
        base: String,
        schema: String,
    }

    impl Drop for PgSchema {
        fn drop(&mut self) {
            let (base, schema) = (self.base.clone(), self.schema.clone());
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    use sqlx::{Connection, Executor};
                    if let Ok(mut c) = sqlx::AnyConnection::connect(&base).await {
                        let _ = c
                            .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                            .await;
                    }
                });
            })
            .join();
        }
    }

    async fn postgres() -> Option<(Store, PgSchema)> {
        use sqlx::{Connection, Executor};
        let base = std::env::var("DADD_TEST_POSTGRES_URL").ok()?;
        sqlx::any::install_default_drivers();
        let schema = format!("t_{}", &crate::auth::mint_token()[..16]);
        let mut c = sqlx::AnyConnection::connect(&base)
            .await
            .expect("DADD_TEST_POSTGRES_URL is set but Postgres is unreachable");
        c.execute(format!("CREATE SCHEMA {schema}").as_str())
            .await
            .expect("create a test schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let store = Store::connect(&url, &StoreConfig::default())
            .await
            .expect("store opens");
        Some((store, PgSchema { base, schema }))
    }

    #[actix_web::test]
    async fn counts_states_and_the_window_only_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let s = Store::connect(&url, &StoreConfig::default())
            .await
            .expect("store opens");
        counts_states_and_the_window_only(s).await;
    }

    #[actix_web::test]
    async fn counts_states_and_the_window_only_postgres() {
        if let Some((s, _schema)) = postgres().await {
            counts_states_and_the_window_only(s).await;
        }
    }

    async fn counts_states_and_the_window_only(s: Store) {
        let empty = s.dashboard_stats(0, 0).await.expect("stats");
        assert_eq!(empty, DashboardStats::default());
        let hour = 3_600_000;
        let base = 100 * hour;
        // Old processes (ten of them killed), then four within the last
        // hour: two in its first minute (one killed), one in the next, one
        // at its end.
        for i in 0..50 {
            let row = s
                .insert_proc("{}", &["true".into()], base - 2 * hour + i)
                .await
                .expect("insert");
            if i % 5 == 0 {
                kill(&s, row.id, base - 2 * hour).await;
            }
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
                kill(&s, row.id, *at).await;
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
        assert_eq!(
            st.unfinished,
            vec![(ProcState::Queued, 43)],
            "every queued one"
        );
        let mut window = st.window.clone();
        window.sort();
        assert_eq!(
            window,
            vec![
                (0, ProcState::Queued, 1),
                (0, ProcState::Killed, 1),
                (1, ProcState::Queued, 1),
                (60, ProcState::Queued, 1),
            ],
            "the window only: the ten old kills are not read"
        );
        assert_eq!((st.hosts_up, st.hosts_total), (1, 2));
        // Nothing recent: no window rows at all.
        let later = s.dashboard_stats(base + hour, 0).await.expect("stats");
        assert!(later.window.is_empty());
        // Everything recent: the whole table.
        let all = s.dashboard_stats(0, 0).await.expect("stats");
        assert_eq!(all.window.iter().map(|(_, _, n)| n).sum::<i64>(), 54);
    }

    async fn kill(s: &Store, id: i64, at: i64) {
        let c = Change::to(ProcState::Killed, None, at);
        assert!(s.transition(id, ProcState::Queued, &c).await.expect("kill"));
    }
}
