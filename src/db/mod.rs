//! Postgres connectivity and schema migrations.
//!
//! The pool is created here; every module's `pg.rs` borrows connections from
//! it. Migrations are the `.sql` files under `migrations/`, compiled into the
//! binary and applied in name order under an advisory lock, so replicas that
//! start together apply each one exactly once.

mod migrate;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime};

pub use migrate::{migrate, MIGRATIONS};

use crate::config::DatabaseSettings;

/// Errors while connecting or migrating.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("building the connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("getting a connection: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// Builds the connection pool. Connections are opened lazily.
pub fn pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    let pg_config =
        tokio_postgres::Config::from_str(settings.url.expose()).map_err(DbError::Url)?;
    let manager = deadpool_postgres::Manager::from_config(
        pg_config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(settings.max_connections)
        // Past this wait for a connection a request is shed with 429.
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(Runtime::Tokio1)
        .build()?;
    Ok(pool)
}

/// True when Postgres answers a trivial query within a second.
pub async fn is_ready(pool: &Pool) -> bool {
    let probe = async {
        let client = pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(_))
    )
}
