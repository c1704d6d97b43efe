//! WebSocket wire messages (API.md) and the bus formats behind them.

use bytestring::ByteString;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::Slot;
use crate::http::wire::{timestamp, LeaderboardEntry, OrderResponse, PurchaseResponse};
use crate::pricing::{AppliedEvent, Tick};
use crate::trading::Order;

/// A tick as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusTick {
    pub player_id: i64,
    pub price_cents: i64,
    pub epoch: i64,
    pub seq: i64,
    pub ts_ms: i64,
    pub locked_until_ms: Option<i64>,
}

/// A tick inside a `prices` frame.
#[derive(Serialize)]
struct WireTick {
    player_id: i64,
    price_cents: i64,
    epoch: i64,
    seq: i64,
    ts_ms: i64,
}

/// `data` of a `player:{id}` snapshot.
#[derive(Serialize)]
struct WirePlayerState {
    player_id: i64,
    price_cents: i64,
    epoch: i64,
    seq: i64,
    ts_ms: i64,
    locked_until: Option<String>,
}

fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

impl BusTick {
    /// Serialises the tick once, for every socket of this replica.
    pub fn slot(&self) -> Slot {
        let tick = WireTick {
            player_id: self.player_id,
            price_cents: self.price_cents,
            epoch: self.epoch,
            seq: self.seq,
            ts_ms: self.ts_ms,
        };
        let state = WirePlayerState {
            player_id: self.player_id,
            price_cents: self.price_cents,
            epoch: self.epoch,
            seq: self.seq,
            ts_ms: self.ts_ms,
            locked_until: self.locked_until_ms.and_then(from_ms).map(timestamp),
        };
        Slot {
            seq: self.seq,
            price_cents: self.price_cents,
            tick_json: ByteString::from(serde_json::to_string(&tick).unwrap_or_default()),
            snapshot_json: ByteString::from(serde_json::to_string(&state).unwrap_or_default()),
        }
    }
}

impl From<&Tick> for BusTick {
    fn from(tick: &Tick) -> BusTick {
        BusTick {
            player_id: tick.player.0,
            price_cents: tick.price.get(),
            epoch: tick.epoch,
            seq: tick.seq,
            ts_ms: tick.at.timestamp_millis(),
            locked_until_ms: tick.locked_until.map(|t| t.timestamp_millis()),
        }
    }
}

/// `{"type":"event",…}`: on the bus exactly as sockets receive it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventMessage {
    #[serde(rename = "type")]
    pub message_type: String,
    pub player_id: i64,
    #[serde(rename = "kind")]
    pub event_kind: String,
    pub price_cents: i64,
    pub epoch: i64,
    /// Extension: the price's `seq`, so the hub can order it with ticks.
    pub seq: i64,
    pub locked_until: Option<String>,
    pub ts_ms: i64,
    /// Extension: the feed's event id.
    pub event_id: String,
    /// Extension: true when this withdraws an earlier event.
    pub correction: bool,
}

impl EventMessage {
    /// The event's new price as a tick.
    pub fn tick(&self) -> BusTick {
        BusTick {
            player_id: self.player_id,
            price_cents: self.price_cents,
            epoch: self.epoch,
            seq: self.seq,
            ts_ms: self.ts_ms,
            locked_until_ms: self
                .locked_until
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis()),
        }
    }
}

impl From<&AppliedEvent> for EventMessage {
    fn from(event: &AppliedEvent) -> EventMessage {
        EventMessage {
            message_type: "event".to_string(),
            player_id: event.player.0,
            event_kind: event.kind.as_str().to_string(),
            price_cents: event.price.get(),
            epoch: event.epoch,
            seq: event.seq,
            locked_until: Some(timestamp(event.locked_until)),
            ts_ms: event.applied_at.timestamp_millis(),
            event_id: event.event_id.clone(),
            correction: event.correction,
        }
    }
}

/// `{"type":"order",…}` on the `user` channel: the order as `GET
/// /orders/{id}` shows it, sent when it is placed and whenever its status
/// changes (a delayed order filling or cancelled, a provisional fill voided).
#[derive(Serialize)]
pub struct OrderMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    order: OrderResponse,
}

impl From<&Order> for OrderMessage {
    fn from(order: &Order) -> OrderMessage {
        OrderMessage {
            kind: "order",
            order: OrderResponse::from(order.clone()),
        }
    }
}

/// `{"type":"purchase",…}` on the `user` channel: the purchase as
/// `GET …/purchases/{id}` shows it.
#[derive(Serialize)]
pub struct PurchaseMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    purchase: PurchaseResponse,
}

impl From<&crate::sales::Purchase> for PurchaseMessage {
    fn from(purchase: &crate::sales::Purchase) -> PurchaseMessage {
        PurchaseMessage {
            kind: "purchase",
            purchase: PurchaseResponse::from(purchase.clone()),
        }
    }
}

/// `data` of a `sale:{id}` snapshot.
pub fn sale_data(sale_id: i64, remaining_units: i64, status: &str) -> String {
    serde_json::json!({"sale_id": sale_id, "remaining_units": remaining_units, "status": status})
        .to_string()
}

/// `{"type":"sale",…}` on `sale:{id}`.
pub fn sale_message(sale_id: i64, remaining_units: i64, status: &str) -> String {
    serde_json::json!({
        "type": "sale",
        "sale_id": sale_id,
        "remaining_units": remaining_units,
        "status": status,
    })
    .to_string()
}

/// `{"type":"leaderboard",…}`: the top 10, on the bus exactly as sockets
/// receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderboardMessage {
    #[serde(rename = "type")]
    pub message_type: String,
    pub as_of: String,
    /// Extension: `as_of` in Unix milliseconds, so replicas keep the newest.
    pub as_of_ms: i64,
    pub entries: Vec<LeaderboardEntry>,
}

/// `data` of the `leaderboard` snapshot.
#[derive(Serialize)]
struct LeaderboardData<'a> {
    as_of: &'a str,
    entries: &'a [LeaderboardEntry],
}

impl LeaderboardMessage {
    /// The message for a cycle as of `as_of_ms`.
    pub fn new(as_of_ms: i64, entries: Vec<LeaderboardEntry>) -> LeaderboardMessage {
        LeaderboardMessage {
            message_type: "leaderboard".into(),
            as_of: from_ms(as_of_ms).map(timestamp).unwrap_or_default(),
            as_of_ms,
            entries,
        }
    }

    /// The `leaderboard` snapshot `data`: `{"as_of","entries"}`.
    pub fn data(&self) -> String {
        serde_json::to_string(&LeaderboardData {
            as_of: &self.as_of,
            entries: &self.entries,
        })
        .unwrap_or_default()
    }
}

/// The `leaderboard` snapshot before any cycle has been heard of.
pub const EMPTY_LEADERBOARD: &str = r#"{"as_of":null,"entries":[]}"#;
