//! The price engine: applies match events (jump, epoch, trade lock), ticks
//! prices between events from exactly one replica, and hands every new price
//! to the broadcast side through the [`PriceSink`] port.
//!
//! Owns the live columns of the player row (price, anchor, epoch, seq,
//! locked_until) and the `feed_events` table. Never formats wire messages and
//! never talks to sockets.
//!
//! The player row in Postgres is the authority: an event's transaction takes
//! it `FOR UPDATE` before it stamps `applied_at`, trades take it `FOR SHARE`,
//! so no order commits at a pre-event epoch once the event is applied.

mod pg;
pub mod rules;
pub mod ticker;

/// A correction's event id is its original's with this suffix.
pub const CORRECTION_SUFFIX: &str = ":deleted";

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use pg::PgPrices;
pub use rules::PricingRules;

use crate::domain::{Cents, PlayerId};
use crate::error::Unexpected;
use crate::ingest::EventKind;

/// Attempts at one correction before giving up.
const MAX_CORRECTION_ATTEMPTS: u32 = 3;

/// An event to apply, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: String,
    pub match_id: String,
    pub player: PlayerId,
    pub kind: EventKind,
    pub occurred_at: DateTime<Utc>,
    pub minute: Option<i32>,
    /// For the leader's own feed: apply only while this leadership holds.
    pub fence: Option<crate::leader::Fence>,
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEvent {
    pub event_id: String,
    pub player: PlayerId,
    pub kind: EventKind,
    pub price: Cents,
    pub epoch: i64,
    pub seq: i64,
    pub locked_until: DateTime<Utc>,
    pub applied_at: DateTime<Utc>,
    /// True when this withdraws an earlier event (a provider `Delete`).
    pub correction: bool,
    /// `void_window`: the provisional fills this event voided, reversed on
    /// the event's own transaction.
    pub voided: Vec<crate::trading::Voided>,
}

impl AppliedEvent {
    /// The new price as a tick.
    pub fn tick(&self) -> Tick {
        Tick {
            player: self.player,
            price: self.price,
            epoch: self.epoch,
            seq: self.seq,
            at: self.applied_at,
            locked_until: Some(self.locked_until),
        }
    }
}

/// A player's price as set by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub player: PlayerId,
    pub price: Cents,
    pub epoch: i64,
    /// Rises strictly with every price change of this player.
    pub seq: i64,
    /// When the engine set this price.
    pub at: DateTime<Utc>,
    pub locked_until: Option<DateTime<Utc>>,
}

/// Outcome of pushing an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Applied(AppliedEvent),
    /// Seen before (on any replica): nothing changed.
    Duplicate,
}

/// Expected failures.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("no such player")]
    UnknownPlayer,
    #[error("this replica no longer leads")]
    NotLeader,
    #[error(transparent)]
    Unexpected(#[from] Unexpected),
}

/// An applied event as the record keeps it: what the ticker and a player's
/// page list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub event_id: String,
    pub match_id: String,
    pub player: PlayerId,
    /// The kind as stored (an `EventKind` name).
    pub kind: String,
    pub minute: Option<i32>,
    pub occurred_at: DateTime<Utc>,
    pub applied_at: DateTime<Utc>,
    pub price_before: Cents,
    pub price_after: Cents,
    pub epoch: i64,
    /// This event withdraws an earlier one.
    pub correction: bool,
    /// A later correction withdrew this event.
    pub reverted: bool,
}

/// A player as a feed first describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPlayer {
    /// Provider identity, e.g. `sportec:DFL-OBJ-0001BX`.
    pub external_ref: String,
    pub name: String,
    pub team: String,
    pub position: String,
}

/// Storage port of the engine.
#[async_trait]
pub trait PriceStore: Send + Sync {
    /// Applies `event` once across all replicas.
    async fn apply_event(
        &self,
        event: &NewEvent,
        rules: &PricingRules,
        lock: Duration,
    ) -> Result<Applied, PricingError>;

    /// Withdraws every applied event derived from one provider message (their
    /// ids start with `event_id_prefix`): each gets a correcting event with
    /// id `<original>:deleted`, applied once like any event.
    async fn revert(
        &self,
        event_id_prefix: &str,
        rules: &PricingRules,
        lock: Duration,
    ) -> Result<Vec<AppliedEvent>, Unexpected>;

    /// Creates the players not yet known (by `external_ref`) at `price`;
    /// returns the ids of all of them.
    async fn ensure_players(
        &self,
        players: &[ListedPlayer],
        price: Cents,
    ) -> Result<HashMap<String, PlayerId>, Unexpected>;

    /// Every player's current price.
    async fn current(&self) -> Result<Vec<Tick>, Unexpected>;

    /// Deletes price history older than `retention_hours`; returns how many
    /// points.
    async fn purge_history(&self, retention_hours: i64) -> Result<u64, Unexpected>;

    /// The `limit` most recently applied events, newest first: of one
    /// player, or of all.
    async fn recent_events(
        &self,
        player: Option<PlayerId>,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, Unexpected>;
}

/// Where new prices and events go (the broadcast side implements it).
#[async_trait]
pub trait PriceSink: Send + Sync {
    /// New prices set by ticks.
    async fn ticks(&self, ticks: &[Tick]);
    /// An applied event (its new price included).
    async fn event(&self, event: &AppliedEvent);
}

/// Told of the fills an event voided (trading tells their owners).
#[async_trait]
pub trait VoidSink: Send + Sync {
    async fn fills_voided(&self, voided: &[crate::trading::Voided]);
}

/// Applies events and publishes their results.
pub struct PricingService {
    store: Arc<dyn PriceStore>,
    sink: Arc<dyn PriceSink>,
    rules: PricingRules,
    lock: Duration,
    voids: Option<Arc<dyn VoidSink>>,
}

impl PricingService {
    /// The engine over `store`, publishing to `sink`.
    pub fn new(
        store: Arc<dyn PriceStore>,
        sink: Arc<dyn PriceSink>,
        rules: PricingRules,
        lock: Duration,
    ) -> PricingService {
        PricingService {
            store,
            sink,
            rules,
            lock,
            voids: None,
        }
    }

    /// Tells `voids` of the fills events void.
    pub fn with_void_sink(mut self, voids: Arc<dyn VoidSink>) -> PricingService {
        self.voids = Some(voids);
        self
    }

    /// The rules in force.
    pub fn rules(&self) -> &PricingRules {
        &self.rules
    }

    /// The store, for the feed drivers.
    pub fn store(&self) -> &Arc<dyn PriceStore> {
        &self.store
    }

    /// The sink, for the ticker.
    pub fn sink(&self) -> &Arc<dyn PriceSink> {
        &self.sink
    }

    /// The most recently applied events, newest first (of one player, or all).
    #[tracing::instrument(skip(self))]
    pub async fn recent_events(
        &self,
        player: Option<PlayerId>,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, Unexpected> {
        self.store.recent_events(player, limit).await
    }

    /// Applies one event; the lock is committed before anything is published.
    #[tracing::instrument(skip_all, fields(event_id = %event.event_id, player_id = %event.player))]
    pub async fn apply(&self, event: &NewEvent) -> Result<Applied, PricingError> {
        // Like a correction, an event that voids fills locks their users
        // and can lose a deadlock; it is idempotent, so it runs again.
        let mut attempt = 0;
        let applied = loop {
            attempt += 1;
            match self.store.apply_event(event, &self.rules, self.lock).await {
                Err(PricingError::Unexpected(error))
                    if attempt < MAX_CORRECTION_ATTEMPTS && error.is_retryable() =>
                {
                    tracing::warn!(%error, attempt, "applying an event failed; retrying");
                }
                result => break result?,
            }
        };
        if let Applied::Applied(applied) = &applied {
            self.sink.event(applied).await;
            if let (false, Some(voids)) = (applied.voided.is_empty(), &self.voids) {
                voids.fills_voided(&applied.voided).await;
            }
        }
        Ok(applied)
    }

    /// Creates the feed's players not yet known and announces their prices
    /// to every replica's hub at once (so sockets can subscribe right away).
    pub async fn list_players(
        &self,
        players: &[ListedPlayer],
        price: Cents,
    ) -> Result<HashMap<String, PlayerId>, Unexpected> {
        let ids = self.store.ensure_players(players, price).await?;
        let current = self.store.current().await?;
        let listed: std::collections::HashSet<PlayerId> = ids.values().copied().collect();
        let ticks: Vec<Tick> = current
            .into_iter()
            .filter(|tick| listed.contains(&tick.player))
            .collect();
        self.sink.ticks(&ticks).await;
        Ok(ids)
    }

    /// Withdraws the events of one provider message. A correction can lose
    /// a deadlock against the ticker's batch update (rows locked in another
    /// order); it is then retried, since it is idempotent.
    pub async fn revert(&self, event_id_prefix: &str) -> Result<usize, Unexpected> {
        let mut attempt = 0;
        let corrections = loop {
            attempt += 1;
            match self
                .store
                .revert(event_id_prefix, &self.rules, self.lock)
                .await
            {
                Ok(corrections) => break corrections,
                Err(error) if attempt < MAX_CORRECTION_ATTEMPTS && error.is_retryable() => {
                    tracing::warn!(%error, attempt, "correction failed; retrying");
                }
                Err(error) => return Err(error),
            }
        };
        for correction in &corrections {
            self.sink.event(correction).await;
        }
        Ok(corrections.len())
    }
}
