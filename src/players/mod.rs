//! The player catalog: who can be traded, and the read side of prices.
//!
//! Owns player rows (name, team, position, epoch, trade lock) and price
//! history. Prices are read through [`PriceReader`], the port the live price
//! engine plugs into; until it lands, a player's price is the one it was
//! created with, read from Postgres.

mod pg;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use pg::PgPlayers;

/// The per-player trade gate that orders take shared and events exclusive,
/// in the caller's transaction: the fairness invariant's mechanism.
pub mod gate {
    pub use super::pg::{close_trade_gate, enter_trade_gate, enter_trade_gates, ENTER_TRADE_GATES};
}

use crate::domain::{Cents, PlayerId};
use crate::error::Unexpected;

/// Longest name, team or position accepted.
pub const MAX_TEXT_CHARS: usize = 100;
/// Highest price a player may be created at (1 billion units).
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;

/// A tradeable player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Player {
    pub id: PlayerId,
    pub name: String,
    pub team: String,
    pub position: String,
    pub price: Cents,
    /// Match events applied so far.
    pub epoch: i64,
    /// Trading on the player is suspended until then.
    pub locked_until: Option<DateTime<Utc>>,
    /// The price the current UTC day opened at (the last one recorded
    /// before midnight; for a player listed today, the listing price): what
    /// "change since open" is measured from.
    pub open_price: Cents,
}

/// A new player, validated.
#[derive(Debug, Clone)]
pub struct NewPlayer {
    pub name: String,
    pub team: String,
    pub position: String,
    pub price: Cents,
}

/// One point of a price chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PricePoint {
    pub ts: DateTime<Utc>,
    pub price: Cents,
}

/// The current tradeable state of one player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub player_id: PlayerId,
    pub price: Cents,
    pub epoch: i64,
    pub locked_until: Option<DateTime<Utc>>,
}

/// Storage port of the catalog.
#[async_trait]
pub trait PlayerStore: Send + Sync {
    /// Adds a player with its first price point.
    async fn create(&self, player: NewPlayer) -> Result<Player, Unexpected>;
    /// Every player, by id.
    async fn list(&self) -> Result<Vec<Player>, Unexpected>;
    /// One player.
    async fn get(&self, id: PlayerId) -> Result<Option<Player>, Unexpected>;
    /// The latest `limit` price points, oldest first.
    async fn history(&self, id: PlayerId, limit: i64) -> Result<Vec<PricePoint>, Unexpected>;
}

/// Where trading and portfolios read live prices.
#[async_trait]
pub trait PriceReader: Send + Sync {
    /// The current quote of one player, or `None` if it does not exist.
    async fn quote(&self, id: PlayerId) -> Result<Option<Quote>, Unexpected>;
    /// Current quotes of several players (unknown ids are left out).
    async fn quotes(&self, ids: &[PlayerId]) -> Result<Vec<Quote>, Unexpected>;
}
