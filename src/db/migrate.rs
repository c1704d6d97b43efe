use deadpool_postgres::Pool;

use super::DbError;

/// The migrations compiled into the binary, in the order they apply.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_foundation",
        include_str!("../../migrations/0001_foundation.sql"),
    ),
    (
        "0002_live_prices",
        include_str!("../../migrations/0002_live_prices.sql"),
    ),
    (
        "0003_drops",
        include_str!("../../migrations/0003_drops.sql"),
    ),
    (
        "0004_leaderboard",
        include_str!("../../migrations/0004_leaderboard.sql"),
    ),
    (
        "0005_recent_events",
        include_str!("../../migrations/0005_recent_events.sql"),
    ),
    (
        "0006_fairness_policies",
        include_str!("../../migrations/0006_fairness_policies.sql"),
    ),
    (
        "0007_set_based_references",
        include_str!("../../migrations/0007_set_based_references.sql"),
    ),
    (
        "0008_quiet_statistics",
        include_str!("../../migrations/0008_quiet_statistics.sql"),
    ),
    (
        "0009_lean_order_indexes",
        include_str!("../../migrations/0009_lean_order_indexes.sql"),
    ),
    (
        "0010_planned_reference_checks",
        include_str!("../../migrations/0010_planned_reference_checks.sql"),
    ),
    (
        "0011_small_statistics_samples",
        include_str!("../../migrations/0011_small_statistics_samples.sql"),
    ),
];

/// An arbitrary constant naming the advisory lock that serialises migrators.
const MIGRATION_LOCK_KEY: i64 = 0x6d61_7463_6864_6179; // "matchday"

/// Applies every migration not yet recorded in `schema_migrations`, each in
/// its own transaction. Returns the names applied.
pub async fn migrate(pool: &Pool) -> Result<Vec<String>, DbError> {
    let mut client = pool.get().await?;
    // Lock first: two replicas creating the table at once can collide.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = match client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 name       TEXT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
    {
        Ok(()) => apply_pending(&mut client).await,
        Err(error) => Err(error.into()),
    };
    // Unlock even when a migration failed; the session ends with the pooled
    // connection otherwise, but being explicit keeps the pool reusable.
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    result
}

async fn apply_pending(client: &mut deadpool_postgres::Object) -> Result<Vec<String>, DbError> {
    let mut applied = Vec::new();
    for (name, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        let done = tx
            .query_opt("SELECT 1 FROM schema_migrations WHERE name = $1", &[name])
            .await?
            .is_some();
        if done {
            tx.rollback().await?;
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (name) VALUES ($1)", &[name])
            .await?;
        tx.commit().await?;
        tracing::info!(migration = name, "applied migration");
        applied.push((*name).to_string());
    }
    Ok(applied)
}
