//! What the master's benches share: sizes from the environment, a fresh
//! Postgres schema per run, percentiles.

use std::time::Duration;

use sqlx::Connection;

/// `name` from the environment as a number, else `default`.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0..=1) of sorted durations.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A schema made for one run on the database at `base`, dropped by
/// [`PgSchema::drop`].
pub(crate) struct PgSchema {
    /// The database URL with the schema as its search path.
    pub(crate) url: String,
    base: String,
    name: String,
}

impl PgSchema {
    /// A fresh schema; None when Postgres cannot be reached.
    pub(crate) async fn create(base: &str) -> Option<PgSchema> {
        sqlx::any::install_default_drivers();
        let name = format!("bench_{}", &dadd_master::auth::mint_token()[..12]);
        let mut c = sqlx::AnyConnection::connect(base).await.ok()?;
        sqlx::Executor::execute(&mut c, format!("CREATE SCHEMA {name}").as_str())
            .await
            .ok()?;
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(PgSchema {
            url: format!("{base}{sep}options=-c%20search_path%3D{name}"),
            base: base.to_owned(),
            name,
        })
    }

    /// Drops the schema and all in it.
    pub(crate) async fn drop(self) {
        if let Ok(mut c) = sqlx::AnyConnection::connect(&self.base).await {
            let sql = format!("DROP SCHEMA {} CASCADE", self.name);
            let _ = sqlx::Executor::execute(&mut c, sql.as_str()).await;
        }
    }
}
