//! Keeping the Redis inventory true to Postgres: rebuilt when it is missing
//! (a flush, a restart without persistence), when its generation disagrees
//! with Postgres' (a restart that restored an older state), and when its
//! count disagrees with Postgres' and nothing moves (a leak: a replica that
//! died between taking units in Redis and recording or returning them).
//!
//! A rebuild is fenced by the sale's generation (see `pg.rs`), so it is
//! safe at any moment; reservations caught in it are refused and retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::book::Book;
use super::pg::PgSales;
use super::redis::RedisInventory;
use super::{SaleInfo, SalesService};
use crate::error::Unexpected;
use crate::leader::Leadership;

/// Every this many intervals each replica reloads every sale's buyers from
/// Postgres.
const BUYERS_RELOAD_ROUNDS: u64 = 10;

/// Rebuilds of one replica, one at a time per sale.
pub struct Recovery {
    store: Arc<PgSales>,
    inventory: RedisInventory,
    book: Arc<Book>,
    running: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

/// What reconciliation saw of a sale last time: Redis' version and count,
/// and Postgres' live units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observation {
    generation: i64,
    seq: i64,
    remaining: i64,
    live_units: i64,
}

impl Recovery {
    /// Recovery over the sale store and the Redis inventory.
    pub fn new(store: Arc<PgSales>, inventory: RedisInventory, book: Arc<Book>) -> Recovery {
        Recovery {
            store,
            inventory,
            book,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn lock_of(&self, sale: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.entry(sale).or_default().clone()
    }

    /// Rebuilds the sale's inventory if Redis holds none (other requests of
    /// this replica wait for the same rebuild rather than start their own).
    pub async fn ensure(&self, info: &SaleInfo) -> Result<(), Unexpected> {
        let lock = self.lock_of(info.id);
        let _guard = lock.lock().await;
        let present = self
            .inventory
            .state(info.id)
            .await
            .map_err(Unexpected::from_error)?;
        if present.is_none() {
            self.store.rebuild(info, None, &self.inventory).await?;
        }
        Ok(())
    }

    /// Rebuilds a generation found wrong, in the background.
    pub fn rebuild_soon(self: &Arc<Self>, info: SaleInfo, seen: i64) {
        let recovery = self.clone();
        tokio::spawn(async move {
            let lock = recovery.lock_of(info.id);
            let _guard = lock.lock().await;
            if let Err(error) = recovery
                .store
                .rebuild(&info, Some(seen), &recovery.inventory)
                .await
            {
                tracing::warn!(%error, sale_id = info.id, "rebuilding a sale's inventory failed");
            }
        });
    }

    /// Compares one sale's Redis inventory with Postgres and rebuilds it
    /// when it is missing, of another generation, or off by a count that
    /// did not move since `last`.
    async fn check(
        &self,
        info: &SaleInfo,
        last: Option<Observation>,
    ) -> Result<Option<Observation>, Unexpected> {
        let lock = self.lock_of(info.id);
        let _guard = lock.lock().await;
        let state = self
            .inventory
            .state(info.id)
            .await
            .map_err(Unexpected::from_error)?;
        let (generation, live_units) = self.store.inventory_truth(info.id).await?;
        let Some(state) = state else {
            self.store.rebuild(info, None, &self.inventory).await?;
            return Ok(None);
        };
        if state.generation != generation {
            self.store
                .rebuild(info, Some(state.generation), &self.inventory)
                .await?;
            return Ok(None);
        }
        let observation = Observation {
            generation: state.generation,
            seq: state.seq,
            remaining: state.remaining,
            live_units,
        };
        let agrees = state.remaining == info.total_units - live_units;
        if !agrees && last == Some(observation) {
            tracing::warn!(
                sale_id = info.id,
                redis_remaining = state.remaining,
                postgres_remaining = info.total_units - live_units,
                "sale inventory disagrees with postgres and is idle; rebuilding"
            );
            self.store
                .rebuild(info, Some(state.generation), &self.inventory)
                .await?;
            return Ok(None);
        }
        Ok(Some(observation))
    }
}

/// Every `interval`: each replica refreshes its sales' counts from Redis and
/// their states (a scheduled sale opening), and the leader reconciles every
/// sale's inventory with Postgres.
pub async fn reconcile_loop(
    service: Arc<SalesService>,
    leadership: Leadership,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let recovery = service.recovery();
    let mut last: HashMap<i64, Observation> = HashMap::new();
    let mut rounds: u64 = 0;
    let mut every = tokio::time::interval(interval.max(Duration::from_millis(10)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => {}
        }
        if let Err(error) = service.load_missing().await {
            tracing::warn!(%error, "loading sales created elsewhere failed");
        }
        // Buyers are announced over the bus; one lost announcement must not
        // leave a buyer told `sold_out` from memory for long.
        rounds += 1;
        if rounds.is_multiple_of(BUYERS_RELOAD_ROUNDS) {
            if let Err(error) = service.reload_all().await {
                tracing::warn!(%error, "reloading sales' buyers failed");
            }
        }
        // Every replica re-reads each sale's count, so a lost update (the
        // subscriber was reconnecting) leaves its book stale for at most an
        // interval.
        for entry in recovery.book.entries() {
            if let Ok(Some(state)) = recovery.inventory.state(entry.info.id).await {
                recovery.book.observe(
                    entry.info.id,
                    (state.generation, state.seq),
                    state.remaining,
                    &[],
                );
            }
        }
        recovery.book.refresh();
        if !leadership.is_leader() {
            last.clear();
            continue;
        }
        for entry in recovery.book.entries() {
            match recovery
                .check(&entry.info, last.get(&entry.info.id).copied())
                .await
            {
                Ok(Some(observation)) => {
                    last.insert(entry.info.id, observation);
                }
                Ok(None) => {
                    last.remove(&entry.info.id);
                }
                Err(error) => {
                    tracing::warn!(%error, sale_id = entry.info.id, "reconciling a sale failed")
                }
            }
        }
    }
}
