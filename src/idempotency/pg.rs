//! The key table, used inside the caller's transaction.

use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;

use super::{Claim, IdempotencyKey};
use crate::domain::UserId;

/// The advisory lock id of one (user, key): 64 bits of a SHA-256, so two
/// different keys share a lock (and one sees a spurious 409) with negligible
/// probability.
fn lock_id(user: UserId, key: &IdempotencyKey) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(b"idempotency\0");
    hasher.update(user.0.to_be_bytes());
    hasher.update(key.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Takes the key's lock for the rest of `tx` and reports what the key says.
pub async fn claim(
    tx: &Transaction<'_>,
    user: UserId,
    key: &IdempotencyKey,
    endpoint: &str,
    fingerprint: &str,
) -> Result<Claim, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&lock_id(user, key)],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(Claim::InProgress);
    }
    let stored = tx
        .query_opt(
            "SELECT endpoint, fingerprint, outcome FROM idempotency_keys
              WHERE user_id = $1 AND key = $2",
            &[&user.0, &key.as_str()],
        )
        .await?;
    Ok(match stored {
        None => Claim::Fresh,
        Some(row) => {
            let same_endpoint = row.get::<_, &str>(0) == endpoint;
            let same_body = row.get::<_, &str>(1) == fingerprint;
            if same_endpoint && same_body {
                Claim::Replay(row.get(2))
            } else {
                Claim::Reused
            }
        }
    })
}

/// Remembers the outcome of a [`Claim::Fresh`] request. Returns false when
/// the key was taken meanwhile by a writer that does not claim keys this way
/// (drops record purchase keys in batches): the caller must roll back and
/// answer that the key was reused.
pub async fn record(
    tx: &Transaction<'_>,
    user: UserId,
    key: &IdempotencyKey,
    endpoint: &str,
    fingerprint: &str,
    outcome: &serde_json::Value,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = tx
        .execute(
            "INSERT INTO idempotency_keys (user_id, key, endpoint, fingerprint, outcome)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            &[&user.0, &key.as_str(), &endpoint, &fingerprint, outcome],
        )
        .await?;
    Ok(inserted == 1)
}

/// The first half of [`claim`] for many keys at once (group commit): tries
/// each key's lock; whether it was taken, in order. Keys must be distinct.
pub async fn try_lock_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    keys: &[(UserId, &IdempotencyKey, &str)],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let locks: Vec<i64> = keys
        .iter()
        .map(|(user, key, _)| lock_id(*user, key))
        .collect();
    let lock = tx.prepare_cached(TRY_LOCK_KEYS).await?;
    Ok(tx
        .query(&lock, &[&locks])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// [`try_lock_keys`]' statement.
pub const TRY_LOCK_KEYS: &str = "SELECT pg_try_advisory_xact_lock(t.lock)
 FROM unnest($1::bigint[]) WITH ORDINALITY AS t(lock, at) ORDER BY t.at";

/// The second half: what each key says, given whether its lock was `taken`
/// ([`try_lock_keys`]) and the keys `stored` ([`stored_keys`], read by a
/// statement that ran after the locks were tried, so in a later snapshot:
/// a holder that committed before the lock was granted is seen).
pub fn judge_claims(
    keys: &[(UserId, &IdempotencyKey, &str)],
    endpoint: &str,
    taken: Vec<bool>,
    mut stored: std::collections::HashMap<(i64, String), StoredKey>,
) -> Vec<Claim> {
    keys.iter()
        .zip(taken)
        .map(|((user, key, fingerprint), taken)| {
            if !taken {
                return Claim::InProgress;
            }
            match stored.remove(&(user.0, key.as_str().to_string())) {
                None => Claim::Fresh,
                Some(seen) if seen.is_retry_of(endpoint, fingerprint) => {
                    Claim::Replay(seen.outcome)
                }
                Some(_) => Claim::Reused,
            }
        })
        .collect()
}

/// [`record`] for many fresh claims of one endpoint at once: how many were
/// recorded (fewer than given: some key was taken meanwhile, roll back).
pub async fn record_many(
    tx: &deadpool_postgres::Transaction<'_>,
    records: &[(UserId, &IdempotencyKey, &str, serde_json::Value)],
    endpoint: &str,
) -> Result<u64, tokio_postgres::Error> {
    if records.is_empty() {
        return Ok(0);
    }
    let users: Vec<i64> = records.iter().map(|r| r.0 .0).collect();
    let keys: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
    let fingerprints: Vec<&str> = records.iter().map(|r| r.2).collect();
    let outcomes: Vec<&serde_json::Value> = records.iter().map(|r| &r.3).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys (user_id, key, endpoint, fingerprint, outcome)
             SELECT t.user_id, t.key, $3, t.fingerprint, t.outcome
               FROM unnest($1::bigint[], $2::text[], $4::text[], $5::jsonb[])
                    AS t(user_id, key, fingerprint, outcome)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(
        &insert,
        &[&users, &keys, &endpoint, &fingerprints, &outcomes],
    )
    .await
}

/// Forgets keys older than `retention_hours`; returns how many.
pub async fn purge(pool: &Pool, retention_hours: i64) -> Result<u64, crate::error::Unexpected> {
    let client = pool.get().await?;
    let deleted = client
        .execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1::int)",
            &[&(retention_hours.min(i32::MAX as i64) as i32)],
        )
        .await?;
    Ok(deleted)
}

/// A key as the key table holds it.
pub struct StoredKey {
    pub endpoint: String,
    pub fingerprint: String,
    pub outcome: serde_json::Value,
}

impl StoredKey {
    /// Whether a request to `endpoint` with this body (`fingerprint`) is a
    /// retry of the stored one, rather than the key used again for another.
    pub fn is_retry_of(&self, endpoint: &str, fingerprint: &str) -> bool {
        self.endpoint == endpoint && self.fingerprint == fingerprint
    }
}

/// The stored keys among (`users[i]`, `keys[i]`), by (user id, key), read
/// with `statement`: [`STORED_KEYS`] or [`STORED_KEYS_GENERIC`].
pub async fn stored_keys(
    tx: &deadpool_postgres::Transaction<'_>,
    statement: &str,
    users: &[i64],
    keys: &[&str],
) -> Result<std::collections::HashMap<(i64, String), StoredKey>, tokio_postgres::Error> {
    let read = tx.prepare_cached(statement).await?;
    Ok(tx
        .query(&read, &[&users, &keys])
        .await?
        .iter()
        .map(|row| {
            (
                (row.get(0), row.get(1)),
                StoredKey {
                    endpoint: row.get(2),
                    fingerprint: row.get(3),
                    outcome: row.get(4),
                },
            )
        })
        .collect())
}

macro_rules! stored_keys_statement {
    () => {
        "SELECT k.user_id, k.key, k.endpoint, k.fingerprint, k.outcome
   FROM idempotency_keys k
   JOIN unnest($1::bigint[], $2::text[]) AS t(user_id, key)
     ON k.user_id = t.user_id AND k.key = t.key"
    };
}

/// [`stored_keys`]' statement.
pub const STORED_KEYS: &str = stored_keys_statement!();

/// The same, under a text of its own, for a caller that runs it under a
/// forced generic plan with sequential scans off (group commit). A
/// connection keeps one generic plan per statement text: this keeps it
/// from reusing one made for another caller under the server's settings,
/// which may be a sequential scan planned while the table was small.
pub const STORED_KEYS_GENERIC: &str = concat!(stored_keys_statement!(), " -- generic");
