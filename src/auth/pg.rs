use async_trait::async_trait;
use deadpool_postgres::Pool;
use rand::RngCore;

use super::token::Claims;
use super::{AccountStore, AuthError, Credentials, UserRecord, Username};
use crate::domain::{Cents, UserId};
use crate::error::Unexpected;
use crate::ledger::posting;

/// Accounts in Postgres.
pub struct PgAccountStore {
    pool: Pool,
}

impl PgAccountStore {
    /// A store using `pool`.
    pub fn new(pool: Pool) -> PgAccountStore {
        PgAccountStore { pool }
    }
}

fn unexpected(error: impl Into<Unexpected>) -> AuthError {
    AuthError::Unexpected(error.into())
}

#[async_trait]
impl AccountStore for PgAccountStore {
    #[tracing::instrument(skip_all)]
    async fn create_user(
        &self,
        username: &Username,
        password_hash: Option<String>,
        opening: Cents,
    ) -> Result<UserId, AuthError> {
        let mut client = self.pool.get().await.map_err(unexpected)?;
        let tx = client.transaction().await.map_err(unexpected)?;
        let row = tx
            .query_opt(
                "INSERT INTO users (username, password_hash, cash_cents) VALUES ($1, $2, $3)
                 ON CONFLICT (username) DO NOTHING RETURNING id",
                &[&username.as_str(), &password_hash, &opening.get()],
            )
            .await
            .map_err(unexpected)?;
        let Some(row) = row else {
            return Err(AuthError::UsernameTaken);
        };
        let id: i64 = row.get(0);
        posting::open_accounts(&tx, &[id], opening)
            .await
            .map_err(unexpected)?;
        tx.commit().await.map_err(unexpected)?;
        Ok(UserId(id))
    }

    #[tracing::instrument(skip_all, fields(count = usernames.len()))]
    async fn create_users(
        &self,
        usernames: &[Username],
        opening: Cents,
    ) -> Result<Vec<(UserId, String)>, AuthError> {
        let names: Vec<&str> = usernames.iter().map(Username::as_str).collect();
        let mut client = self.pool.get().await.map_err(unexpected)?;
        let tx = client.transaction().await.map_err(unexpected)?;
        let rows = tx
            .query(
                "INSERT INTO users (username, cash_cents)
                 SELECT name, $2 FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n) ORDER BY n
                 ON CONFLICT (username) DO NOTHING
                 RETURNING id, username",
                &[&names, &opening.get()],
            )
            .await
            .map_err(unexpected)?;
        if rows.len() != names.len() {
            // Dropping the transaction rolls it back: nothing is created.
            return Err(AuthError::UsernameTaken);
        }
        let mut created: Vec<(UserId, String)> = rows
            .iter()
            .map(|row| (UserId(row.get(0)), row.get(1)))
            .collect();
        created.sort_by_key(|(id, _)| *id);
        let ids: Vec<i64> = created.iter().map(|(id, _)| id.0).collect();
        posting::open_accounts(&tx, &ids, opening)
            .await
            .map_err(unexpected)?;
        tx.commit().await.map_err(unexpected)?;
        Ok(created)
    }

    #[tracing::instrument(skip_all)]
    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>, AuthError> {
        let client = self.pool.get().await.map_err(unexpected)?;
        let row = client
            .query_opt(
                "SELECT id, username, password_hash FROM users WHERE username = $1",
                &[&username.as_str()],
            )
            .await
            .map_err(unexpected)?;
        Ok(row.map(|row| Credentials {
            id: UserId(row.get(0)),
            username: row.get(1),
            password_hash: row.get(2),
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = %id))]
    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, AuthError> {
        let client = self.pool.get().await.map_err(unexpected)?;
        let row = client
            .query_opt(
                "SELECT id, username, cash_cents, held_cents FROM users WHERE id = $1",
                &[&id.0],
            )
            .await
            .map_err(unexpected)?;
        Ok(row.map(|row| UserRecord {
            id: UserId(row.get(0)),
            username: row.get(1),
            balance: Cents::new(row.get(2)),
            held: Cents::new(row.get(3)),
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = %claims.user_id))]
    async fn revoke(&self, claims: &Claims) -> Result<(), AuthError> {
        let client = self.pool.get().await.map_err(unexpected)?;
        client
            .execute(
                "INSERT INTO revoked_tokens (token_id, expires_at)
                 VALUES ($1, to_timestamp($2)) ON CONFLICT (token_id) DO NOTHING",
                &[&claims.token_id, &(claims.expires_at as f64)],
            )
            .await
            .map_err(unexpected)?;
        Ok(())
    }

    async fn revoked_tokens(&self) -> Result<Vec<(i64, i64)>, AuthError> {
        let client = self.pool.get().await.map_err(unexpected)?;
        let rows = client
            .query(
                "SELECT token_id, extract(epoch FROM expires_at)::bigint
                   FROM revoked_tokens WHERE expires_at > now()",
                &[],
            )
            .await
            .map_err(unexpected)?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    async fn purge_expired_revocations(&self) -> Result<u64, AuthError> {
        let client = self.pool.get().await.map_err(unexpected)?;
        client
            .execute("DELETE FROM revoked_tokens WHERE expires_at <= now()", &[])
            .await
            .map_err(unexpected)
    }

    async fn shared_token_secret(&self) -> Result<String, AuthError> {
        let mut candidate = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut candidate);
        let candidate: String = candidate.iter().map(|b| format!("{b:02x}")).collect();
        let client = self.pool.get().await.map_err(unexpected)?;
        // Whoever inserts first wins; everyone reads the winner.
        client
            .execute(
                "INSERT INTO settings (name, value) VALUES ('token_secret', $1)
                 ON CONFLICT (name) DO NOTHING",
                &[&candidate],
            )
            .await
            .map_err(unexpected)?;
        let row = client
            .query_one(
                "SELECT value FROM settings WHERE name = 'token_secret'",
                &[],
            )
            .await
            .map_err(unexpected)?;
        Ok(row.get(0))
    }
}
