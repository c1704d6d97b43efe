//! JSON shapes of the public API (API.md), kept apart from domain types.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::UserRecord;
use crate::ledger::AuditReport;
use crate::players::{Player, PricePoint};
use crate::trading::{Order, Portfolio};

/// RFC 3339 UTC with microseconds.
pub fn timestamp(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
}

/// `GET /readyz`: whether each backing service answers.
#[derive(Serialize, ToSchema)]
pub struct ReadyResponse {
    pub postgres: bool,
    pub redis: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct CredentialsRequest {
    /// 3–32 characters of `a-z`, `0-9` and `_`; capitals are lower-cased
    /// (`Alice` is `alice`). Registration refuses any other with 422; login
    /// answers 401 `invalid_credentials`.
    #[schema(example = "alice", pattern = "^[A-Za-z0-9_]{3,32}$")]
    pub username: String,
    /// 8–128 characters.
    #[schema(example = "correct horse", min_length = 8, max_length = 128)]
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct RegisterResponse {
    pub user_id: i64,
    pub username: String,
    pub token: String,
    pub balance_cents: i64,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub user_id: i64,
    pub username: String,
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    pub user_id: i64,
    pub username: String,
    pub balance_cents: i64,
    pub held_cents: i64,
}

impl From<UserRecord> for MeResponse {
    fn from(user: UserRecord) -> MeResponse {
        MeResponse {
            user_id: user.id.0,
            username: user.username,
            balance_cents: user.balance.get(),
            held_cents: user.held.get(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct BulkUsersRequest {
    #[schema(minimum = 1, maximum = 10000)]
    pub count: i64,
    /// Usernames are `prefix1` … `prefix{count}`; each must be a valid
    /// username.
    #[schema(example = "bot_")]
    pub prefix: String,
    /// Opening cash of each; default `accounts.starting_balance_cents`.
    #[schema(minimum = 0, maximum = 1000000000000_i64)]
    pub balance_cents: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct BulkUsersResponse {
    pub users: Vec<LoginResponse>,
}

#[derive(Deserialize, ToSchema)]
pub struct NewPlayerRequest {
    /// 1–100 characters once surrounding whitespace is trimmed, none of
    /// them control characters (422 otherwise); so are `team` and
    /// `position`.
    #[schema(min_length = 1)]
    pub name: String,
    #[schema(min_length = 1)]
    pub team: String,
    #[schema(min_length = 1)]
    pub position: String,
    #[schema(minimum = 1, maximum = 100000000000_i64)]
    pub price_cents: i64,
}

#[derive(Serialize, ToSchema)]
pub struct PlayerResponse {
    pub id: i64,
    pub name: String,
    pub team: String,
    pub position: String,
    pub price_cents: i64,
    pub epoch: i64,
    #[schema(format = DateTime, required = true)]
    pub locked_until: Option<String>,
    /// Addition: the day's opening price (see `Player::open_price`).
    pub open_price_cents: i64,
}

impl From<Player> for PlayerResponse {
    fn from(player: Player) -> PlayerResponse {
        PlayerResponse {
            id: player.id.0,
            name: player.name,
            team: player.team,
            position: player.position,
            price_cents: player.price.get(),
            epoch: player.epoch,
            locked_until: player.locked_until.map(timestamp),
            open_price_cents: player.open_price.get(),
        }
    }
}

/// Addition: an applied event, as `GET /events` and
/// `GET /players/{id}/events` list it.
#[derive(Serialize, ToSchema)]
pub struct RecordedEventResponse {
    pub event_id: String,
    pub match_id: String,
    #[schema(example = 1)]
    pub player_id: i64,
    #[schema(value_type = super::openapi::EventKindName)]
    pub kind: String,
    #[schema(required = true)]
    pub minute: Option<i32>,
    #[schema(format = DateTime)]
    pub occurred_at: String,
    #[schema(format = DateTime)]
    pub applied_at: String,
    pub price_before_cents: i64,
    pub price_cents: i64,
    pub epoch: i64,
    pub ts_ms: i64,
    pub correction: bool,
    pub reverted: bool,
}

impl From<crate::pricing::RecordedEvent> for RecordedEventResponse {
    fn from(event: crate::pricing::RecordedEvent) -> RecordedEventResponse {
        RecordedEventResponse {
            ts_ms: event.applied_at.timestamp_millis(),
            event_id: event.event_id,
            match_id: event.match_id,
            player_id: event.player.0,
            kind: event.kind,
            minute: event.minute,
            occurred_at: timestamp(event.occurred_at),
            applied_at: timestamp(event.applied_at),
            price_before_cents: event.price_before.get(),
            price_cents: event.price_after.get(),
            epoch: event.epoch,
            correction: event.correction,
            reverted: event.reverted,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PricePointResponse {
    #[schema(format = DateTime)]
    pub ts: String,
    pub price_cents: i64,
}

impl From<PricePoint> for PricePointResponse {
    fn from(point: PricePoint) -> PricePointResponse {
        PricePointResponse {
            ts: timestamp(point.ts),
            price_cents: point.price.get(),
        }
    }
}

/// An order as sent; the canonical re-serialisation of this is what the
/// idempotency fingerprint covers.
#[derive(Deserialize, Serialize, ToSchema)]
pub struct OrderRequest {
    #[schema(example = 1)]
    pub player_id: i64,
    #[schema(value_type = super::openapi::SideName)]
    pub side: String,
    #[schema(minimum = 1, maximum = 1000000)]
    pub quantity: i64,
    /// A buy fills only at or below it, a sell only at or above it;
    /// otherwise 409 `price_moved`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub limit_price_cents: Option<i64>,
}

/// An order: the 201 body (filled, provisional), the 202 body (pending),
/// and what `GET /orders` lists (also cancelled and voided ones). The fill
/// fields are null while nothing has filled.
#[derive(Serialize, ToSchema)]
pub struct OrderResponse {
    pub order_id: i64,
    pub player_id: i64,
    #[schema(value_type = super::openapi::SideName)]
    pub side: &'static str,
    pub quantity: i64,
    #[schema(required = true)]
    pub price_cents: Option<i64>,
    #[schema(required = true)]
    pub total_cents: Option<i64>,
    #[schema(required = true)]
    pub balance_cents: Option<i64>,
    #[schema(required = true)]
    pub epoch: Option<i64>,
    #[schema(value_type = super::openapi::OrderStatusName)]
    pub status: &'static str,
    #[schema(format = DateTime, required = true)]
    pub executed_at: Option<String>,
    /// Extension (`void_window`): when a provisional fill becomes final.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub final_at: Option<String>,
    /// Extension (`delay`): when the order was placed and when it fills.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub requested_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub fills_at: Option<String>,
    /// Extension: why an order was cancelled or voided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl From<Order> for OrderResponse {
    fn from(order: Order) -> OrderResponse {
        match order {
            Order::Executed(fill) => OrderResponse {
                order_id: fill.order_id,
                player_id: fill.player.0,
                side: fill.side.as_str(),
                quantity: fill.quantity.get(),
                price_cents: Some(fill.price.get()),
                total_cents: Some(fill.total.get()),
                balance_cents: Some(fill.balance.get()),
                epoch: Some(fill.epoch),
                status: fill.status.as_str(),
                executed_at: Some(timestamp(fill.executed_at)),
                final_at: fill.final_at.map(timestamp),
                requested_at: None,
                fills_at: None,
                reason: fill.reason,
            },
            Order::Waiting(waiting) => OrderResponse {
                order_id: waiting.order_id,
                player_id: waiting.player.0,
                side: waiting.side.as_str(),
                quantity: waiting.quantity.get(),
                price_cents: None,
                total_cents: None,
                balance_cents: None,
                epoch: None,
                status: waiting.status.as_str(),
                executed_at: None,
                final_at: None,
                requested_at: Some(timestamp(waiting.requested_at)),
                fills_at: Some(timestamp(waiting.fills_at)),
                reason: waiting.reason,
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct HoldingResponse {
    pub player_id: i64,
    pub quantity: i64,
    pub avg_cost_cents: i64,
    /// Extension: the position's cost basis.
    pub cost_cents: i64,
    pub price_cents: i64,
    pub value_cents: i64,
    /// Extension: unrealised profit (negative: loss), `value − cost`.
    pub profit_cents: i64,
}

#[derive(Serialize, ToSchema)]
pub struct PortfolioResponse {
    pub cash_cents: i64,
    pub held_cents: i64,
    pub holdings: Vec<HoldingResponse>,
    /// Extension: Σ of the holdings' values.
    pub holdings_value_cents: i64,
    /// Extension: Σ of the holdings' unrealised profits.
    pub profit_cents: i64,
    pub net_worth_cents: i64,
}

impl From<Portfolio> for PortfolioResponse {
    fn from(portfolio: Portfolio) -> PortfolioResponse {
        PortfolioResponse {
            cash_cents: portfolio.cash.get(),
            held_cents: portfolio.held.get(),
            holdings: portfolio
                .holdings
                .into_iter()
                .map(|h| HoldingResponse {
                    player_id: h.player.0,
                    quantity: h.quantity,
                    avg_cost_cents: h.avg_cost.get(),
                    cost_cents: h.cost.get(),
                    price_cents: h.price.get(),
                    value_cents: h.value.get(),
                    profit_cents: h.profit.get(),
                })
                .collect(),
            holdings_value_cents: portfolio.holdings_value.get(),
            profit_cents: portfolio.profit.get(),
            net_worth_cents: portfolio.net_worth.get(),
        }
    }
}

/// One row of the leaderboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaderboardEntry {
    pub rank: i64,
    pub user_id: i64,
    pub username: String,
    pub net_worth_cents: i64,
}

#[derive(Serialize, ToSchema)]
pub struct LeaderboardResponse {
    #[schema(format = DateTime)]
    pub as_of: String,
    pub entries: Vec<LeaderboardEntry>,
}

#[derive(Serialize, ToSchema)]
pub struct StandingResponse {
    pub rank: i64,
    pub net_worth_cents: i64,
    pub total_users: i64,
    #[schema(format = DateTime)]
    pub as_of: String,
}

/// `{"type":"portfolio",…}` on the `user` channel (an extension): the
/// `/portfolio` body valued at the replica's live prices.
#[derive(Serialize, ToSchema)]
pub struct PortfolioMessage {
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^portfolio$")]
    pub message_type: &'static str,
    #[schema(format = DateTime)]
    pub as_of: String,
    #[serde(flatten)]
    pub portfolio: PortfolioResponse,
}

#[derive(Serialize, ToSchema)]
pub struct AuditResponse {
    pub users: i64,
    pub cash_cents_total: i64,
    pub held_cents_total: i64,
    pub ledger_sum_cents: i64,
    pub negative_cash: i64,
    pub negative_holdings: i64,
    /// Extension: users whose cash differs from their ledger entries.
    pub cash_mismatches: i64,
    /// Extension: ledger transactions that do not sum to zero.
    pub unbalanced_transactions: i64,
    pub ok: bool,
}

impl From<AuditReport> for AuditResponse {
    fn from(report: AuditReport) -> AuditResponse {
        AuditResponse {
            ok: report.ok(),
            users: report.users,
            cash_cents_total: report.cash_cents_total,
            held_cents_total: report.held_cents_total,
            ledger_sum_cents: report.ledger_sum_cents,
            negative_cash: report.negative_cash,
            negative_holdings: report.negative_holdings,
            cash_mismatches: report.cash_mismatches,
            unbalanced_transactions: report.unbalanced_transactions,
        }
    }
}

/// A pushed match event (`POST /api/v1/admin/feed/events`).
#[derive(Deserialize, ToSchema)]
pub struct EventRequest {
    /// The feed's id: an event is applied once, a repeat is a 200
    /// duplicate. 1–200 printable characters.
    #[schema(min_length = 1, max_length = 200)]
    pub event_id: String,
    /// 1–100 printable characters.
    #[schema(min_length = 1, max_length = 100)]
    pub match_id: String,
    #[schema(example = 1)]
    pub player_id: i64,
    #[schema(value_type = super::openapi::EventKindName)]
    pub kind: String,
    /// When it happened at the stadium (RFC 3339).
    #[schema(format = DateTime)]
    pub occurred_at: String,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 200)]
    pub minute: Option<i32>,
}

#[derive(Serialize, ToSchema)]
pub struct EventAppliedResponse {
    pub applied: bool,
    pub player_id: i64,
    pub price_cents: i64,
    pub epoch: i64,
    #[schema(format = DateTime)]
    pub locked_until: String,
    #[schema(format = DateTime)]
    pub applied_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct EventDuplicateResponse {
    pub applied: bool,
    pub duplicate: bool,
}

/// `POST /api/v1/admin/sales`.
#[derive(Deserialize, ToSchema)]
pub struct NewSaleRequest {
    #[schema(example = 1)]
    pub player_id: i64,
    /// 1–100 characters once surrounding whitespace is trimmed, none of
    /// them control characters (422 otherwise).
    #[schema(min_length = 1)]
    pub name: String,
    #[schema(minimum = 1, maximum = 1000000)]
    pub total_units: i64,
    #[schema(minimum = 1, maximum = 100000000000_i64)]
    pub unit_price_cents: i64,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_per_user: Option<i64>,
    /// Default: now.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub starts_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SaleResponse {
    pub sale_id: i64,
    pub player_id: i64,
    pub name: String,
    pub total_units: i64,
    pub remaining_units: i64,
    pub unit_price_cents: i64,
    #[schema(required = true)]
    pub max_per_user: Option<i64>,
    #[schema(value_type = super::openapi::SaleStatusName)]
    pub status: &'static str,
    #[schema(format = DateTime)]
    pub starts_at: String,
}

impl From<crate::sales::Sale> for SaleResponse {
    fn from(sale: crate::sales::Sale) -> SaleResponse {
        SaleResponse {
            sale_id: sale.info.id,
            player_id: sale.info.player.0,
            name: sale.info.name,
            total_units: sale.info.total_units,
            remaining_units: sale.remaining_units,
            unit_price_cents: sale.info.unit_price.get(),
            max_per_user: sale.info.max_per_user,
            status: sale.status.as_str(),
            starts_at: timestamp(sale.info.starts_at),
        }
    }
}

/// `POST /api/v1/sales/{id}/purchases`.
#[derive(Deserialize, ToSchema)]
pub struct PurchaseRequestBody {
    #[schema(minimum = 1, maximum = 1000000)]
    pub quantity: i64,
}

#[derive(Serialize, Clone, ToSchema)]
pub struct PurchaseResponse {
    pub purchase_id: i64,
    pub sale_id: i64,
    pub quantity: i64,
    #[schema(value_type = super::openapi::PurchaseStatusName)]
    pub status: &'static str,
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    #[schema(required = true)]
    pub share_numbers: Option<Vec<i64>>,
}

impl From<crate::sales::Purchase> for PurchaseResponse {
    fn from(purchase: crate::sales::Purchase) -> PurchaseResponse {
        PurchaseResponse {
            purchase_id: purchase.id,
            sale_id: purchase.sale_id,
            quantity: purchase.quantity,
            status: purchase.status.as_str(),
            failure_reason: purchase.failure_reason,
            share_numbers: purchase.share_numbers,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WaitlistResponse {
    pub position: i64,
}

#[derive(Serialize, ToSchema)]
pub struct SaleAuditResponse {
    pub total_units: i64,
    pub completed_units: i64,
    pub held_units: i64,
    pub reserved_units: i64,
    pub remaining_units: i64,
    #[schema(required = true)]
    pub inventory_counter: Option<i64>,
    pub unit_mismatches: i64,
    pub charge_mismatches: i64,
    pub consistent: bool,
}

impl From<crate::sales::SaleAudit> for SaleAuditResponse {
    fn from(audit: crate::sales::SaleAudit) -> SaleAuditResponse {
        SaleAuditResponse {
            consistent: audit.consistent(),
            total_units: audit.total_units,
            completed_units: audit.completed_units,
            held_units: audit.held_units,
            reserved_units: audit.reserved_units,
            remaining_units: audit.remaining_units,
            inventory_counter: audit.inventory_counter,
            unit_mismatches: audit.unit_mismatches,
            charge_mismatches: audit.charge_mismatches,
        }
    }
}
