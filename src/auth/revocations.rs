//! The in-memory set of revoked token ids every replica keeps, so checking a
//! token needs no round trip. Kept current three ways: the replica that
//! revokes inserts at once; others hear it on the bus; and every replica
//! reloads the full set from Postgres at start, after each bus reconnect and
//! every [`RELOAD_INTERVAL`], so a message missed during a Redis outage is
//! never missed for long.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::token::Claims;
use super::{unix_now, AccountStore};
use crate::bus::Bus;

/// The bus channel revocations travel on.
pub const CHANNEL: &str = "auth:revocations";
/// How often the whole set is reloaded from Postgres.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// Revoked token ids with their expiry (unix seconds).
#[derive(Default)]
pub struct Revocations {
    revoked: RwLock<HashMap<i64, i64>>,
}

impl Revocations {
    /// True when `token_id` was revoked.
    pub fn contains(&self, token_id: i64) -> bool {
        match self.revoked.read() {
            Ok(set) => set.contains_key(&token_id),
            Err(poisoned) => poisoned.into_inner().contains_key(&token_id),
        }
    }

    /// Records a revocation until `expires_at`.
    pub fn insert(&self, token_id: i64, expires_at: i64) {
        let mut set = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        set.insert(token_id, expires_at);
    }

    /// Merges a full list from the store and forgets expired entries.
    pub fn reload(&self, entries: Vec<(i64, i64)>) {
        let now = unix_now();
        let mut set = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        set.retain(|_, expires| *expires > now);
        set.extend(entries);
    }

    /// How many revocations are held.
    pub fn len(&self) -> usize {
        self.revoked.read().map(|s| s.len()).unwrap_or(0)
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bus message for a revocation: `token_id:expires_at`.
pub fn encode(claims: &Claims) -> String {
    format!("{}:{}", claims.token_id, claims.expires_at)
}

fn decode(message: &str) -> Option<(i64, i64)> {
    let (id, expires) = message.split_once(':')?;
    Some((id.parse().ok()?, expires.parse().ok()?))
}

/// Subscribes to revocations, then keeps `revocations` current until
/// `shutdown` flips. Returns once subscribed.
pub async fn start(
    revocations: Arc<Revocations>,
    store: Arc<dyn AccountStore>,
    bus: Bus,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let messages = bus.messages();
    bus.subscribe_retrying(CHANNEL).await;
    tokio::spawn(keep_current(revocations, store, bus, messages, shutdown))
}

async fn keep_current(
    revocations: Arc<Revocations>,
    store: Arc<dyn AccountStore>,
    bus: Bus,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reconnections = bus.reconnections();
    let channel = bus.key(CHANNEL);
    let mut reload = tokio::time::interval(RELOAD_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = reload.tick() => reload_from_store(&revocations, store.as_ref()).await,
            _ = reconnections.recv() => reload_from_store(&revocations, store.as_ref()).await,
            message = messages.recv() => match message {
                Ok(message) if *message.channel == *channel => {
                    if let Some((id, expires)) = message.value.as_str().as_deref().and_then(decode) {
                        revocations.insert(id, expires);
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    reload_from_store(&revocations, store.as_ref()).await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn reload_from_store(revocations: &Revocations, store: &dyn AccountStore) {
    match store.revoked_tokens().await {
        Ok(entries) => revocations.reload(entries),
        Err(error) => tracing::warn!(%error, "could not reload revocations"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;

    #[test]
    fn a_revocation_message_round_trips() {
        let claims = Claims {
            user_id: UserId(1),
            token_id: 99,
            expires_at: 12345,
        };
        assert_eq!(decode(&encode(&claims)), Some((99, 12345)));
        assert_eq!(decode("garbage"), None);
    }

    #[test]
    fn reloading_forgets_expired_revocations() {
        let revocations = Revocations::default();
        revocations.insert(1, 0);
        revocations.insert(2, i64::MAX);
        revocations.reload(vec![(3, i64::MAX)]);
        assert!(!revocations.contains(1));
        assert!(revocations.contains(2));
        assert!(revocations.contains(3));
    }
}
