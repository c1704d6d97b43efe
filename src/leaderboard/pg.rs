//! What the leaderboard reads from Postgres: every account, and usernames.

use std::collections::HashMap;

use deadpool_postgres::Pool;

use crate::error::Unexpected;
use crate::ledger::{posting, AccountState};

/// Every account, in one statement (one snapshot).
pub async fn all_accounts(pool: &Pool) -> Result<Vec<AccountState>, Unexpected> {
    let client = pool.get().await?;
    Ok(posting::account_states(&**client, None).await?)
}

/// The accounts of `users`.
pub async fn accounts_of(pool: &Pool, users: &[i64]) -> Result<Vec<AccountState>, Unexpected> {
    let client = pool.get().await?;
    Ok(posting::account_states(&**client, Some(users)).await?)
}

/// The usernames of `users` (those that exist).
pub async fn usernames(pool: &Pool, users: &[i64]) -> Result<HashMap<i64, String>, Unexpected> {
    let client = pool.get().await?;
    Ok(client
        .query(
            "SELECT id, username FROM users WHERE id = ANY($1)",
            &[&users],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// Whether the session `fence` names still holds the leader lock.
pub async fn holds_leader_lock(
    pool: &Pool,
    fence: crate::leader::Fence,
) -> Result<bool, Unexpected> {
    let client = pool.get().await?;
    Ok(client
        .query_one(&crate::leader::fence_sql(), &[&fence.leader_pid])
        .await?
        .get(0))
}
