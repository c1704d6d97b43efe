//! Hooks for integration tests that need a settlement worker stopped at a
//! precise point. Not used by the application.

use std::sync::Arc;

use super::pg::PgSales;
use crate::config::{DatabaseSettings, Secret};

/// Runs only the HOLD step of settlement (reserved → held, cash held) for
/// up to `max` purchases on the database at `database_url`, as a worker
/// killed between HOLD and CAPTURE would leave them. Returns how many
/// purchases it held. Panics on failure: it is for tests only.
pub async fn hold_only(database_url: &str, max: usize) -> usize {
    let settings = DatabaseSettings {
        url: Secret::new(database_url),
        max_connections: 2,
    };
    let pool = crate::db::pool(&settings).expect("test database pool");
    let store = Arc::new(PgSales::new(pool));
    store
        .hold_step(max as i64)
        .await
        .map(|outcome| outcome.held.len())
        .expect("hold step")
}
