//! Trading: market orders (with an optional limit) against the live price,
//! order history and portfolios.
//!
//! Owns orders and holdings. Cash moves only through the ledger's posting
//! functions, in the same transaction as the order row, the holding change
//! and the idempotency record. Never computes prices: an order fills at the
//! player row's live price and epoch, read inside the player's trade gate
//! (`players::gate`), so no event can land between the read and the commit;
//! portfolios are valued through [`PriceReader`].

mod pg;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use pg::PgOrders;

use crate::domain::{Cents, PlayerId, Quantity, Side, UserId};
use crate::error::Unexpected;
use crate::idempotency::IdempotencyKey;
use crate::ledger::{AccountSink, AccountUpdate};
use crate::players::{PriceReader, Quote};

/// Endpoint name that scopes idempotency keys of orders.
pub const ORDERS_ENDPOINT: &str = "POST /api/v1/orders";

/// A validated order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub user: UserId,
    pub player: PlayerId,
    pub side: Side,
    pub quantity: Quantity,
    /// Buy: the most per share; sell: the least.
    pub limit: Option<Cents>,
    pub key: IdempotencyKey,
    /// See [`crate::idempotency::fingerprint`].
    pub fingerprint: String,
}

/// An executed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub order_id: i64,
    pub player: PlayerId,
    pub side: Side,
    pub quantity: Quantity,
    pub price: Cents,
    pub total: Cents,
    /// The user's cash right after the fill.
    pub balance: Cents,
    pub epoch: i64,
    pub executed_at: DateTime<Utc>,
}

/// Business outcomes that are final for an idempotency key: a retry with the
/// same key replays them (a genuinely new attempt needs a new key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UnknownPlayer,
    InsufficientFunds,
    InsufficientHoldings,
    /// The limit price was not met.
    PriceMoved,
}

impl Rejection {
    /// Stable snake_case name (also the API error code).
    pub fn code(self) -> &'static str {
        match self {
            Rejection::UnknownPlayer => "not_found",
            Rejection::InsufficientFunds => "insufficient_funds",
            Rejection::InsufficientHoldings => "insufficient_holdings",
            Rejection::PriceMoved => "price_moved",
        }
    }

    fn from_code(code: &str) -> Option<Rejection> {
        [
            Rejection::UnknownPlayer,
            Rejection::InsufficientFunds,
            Rejection::InsufficientHoldings,
            Rejection::PriceMoved,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

/// The result of placing an order: final, and remembered under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub outcome: Result<Fill, Rejection>,
    /// True when this is the stored outcome of an earlier request.
    pub replayed: bool,
    /// The user's account as this fill's commit left it (a new fill only).
    pub account: Option<AccountUpdate>,
}

/// Failures that are not remembered: a retry executes again.
#[derive(Debug, thiserror::Error)]
pub enum TradingError {
    #[error("a request with this idempotency key is in progress")]
    InProgress,
    #[error("this idempotency key was used with another request")]
    KeyReused,
    #[error("trading on this player is locked")]
    PlayerLocked { retry_after_ms: i64 },
    #[error(transparent)]
    Unexpected(#[from] Unexpected),
}

/// One position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub player: PlayerId,
    pub quantity: i64,
    /// Cost basis of the shares held.
    pub cost: Cents,
}

/// Cash and positions read in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    /// Total cash, including `held`.
    pub cash: Cents,
    pub held: Cents,
    pub holdings: Vec<Holding>,
}

/// A position valued at the live price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValuedHolding {
    pub player: PlayerId,
    pub quantity: i64,
    /// Cost basis per share, rounded down.
    pub avg_cost: Cents,
    /// Cost basis of the whole position.
    pub cost: Cents,
    pub price: Cents,
    pub value: Cents,
    /// Unrealised profit (negative: loss): `value − cost`.
    pub profit: Cents,
}

/// A portfolio valued at live prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portfolio {
    pub cash: Cents,
    pub held: Cents,
    pub holdings: Vec<ValuedHolding>,
    /// Σ of the holdings' values.
    pub holdings_value: Cents,
    /// Σ of the holdings' unrealised profits.
    pub profit: Cents,
    pub net_worth: Cents,
}

/// Storage port of trading.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Executes `order` at the live price atomically with its idempotency
    /// record, or reports why not.
    async fn place(&self, order: &NewOrder) -> Result<Placed, TradingError>;
    /// The user's latest orders, newest first.
    async fn orders(&self, user: UserId, limit: i64) -> Result<Vec<Fill>, Unexpected>;
    /// The user's cash and non-empty holdings.
    async fn positions(&self, user: UserId) -> Result<Positions, Unexpected>;
}

/// Told of every new fill (the broadcast side puts it on the user's socket).
#[async_trait]
pub trait FillNotifier: Send + Sync {
    /// `fill` was just committed for `user`.
    async fn order_filled(&self, user: UserId, fill: &Fill);
}

/// Places orders and values portfolios.
pub struct TradingService {
    store: Arc<dyn OrderStore>,
    prices: Arc<dyn PriceReader>,
    notifier: Arc<dyn FillNotifier>,
    accounts: Arc<dyn AccountSink>,
}

impl TradingService {
    /// A service over `store`, reading prices from `prices`, telling
    /// `notifier` of fills and `accounts` of the accounts they change.
    pub fn new(
        store: Arc<dyn OrderStore>,
        prices: Arc<dyn PriceReader>,
        notifier: Arc<dyn FillNotifier>,
        accounts: Arc<dyn AccountSink>,
    ) -> TradingService {
        TradingService {
            store,
            prices,
            notifier,
            accounts,
        }
    }

    /// Places an order at the live price.
    #[tracing::instrument(skip_all, fields(user_id = %order.user, player_id = %order.player))]
    pub async fn place(&self, order: &NewOrder) -> Result<Placed, TradingError> {
        let mut placed = self.store.place(order).await?;
        if let Some(account) = placed.account.take() {
            self.accounts.accounts_changed(vec![account]);
        }
        if let (false, Ok(fill)) = (placed.replayed, &placed.outcome) {
            self.notifier.order_filled(order.user, fill).await;
        }
        Ok(placed)
    }

    /// The user's latest orders, newest first.
    pub async fn orders(&self, user: UserId, limit: i64) -> Result<Vec<Fill>, Unexpected> {
        self.store.orders(user, limit).await
    }

    /// Cash and holdings valued at live prices.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn portfolio(&self, user: UserId) -> Result<Portfolio, Unexpected> {
        let positions = self.store.positions(user).await?;
        let ids: Vec<PlayerId> = positions.holdings.iter().map(|h| h.player).collect();
        let quotes = self.prices.quotes(&ids).await?;
        value_portfolio(positions, &quotes)
    }
}

/// Values positions at `quotes`; pure, so it is tested without a database.
pub fn value_portfolio(positions: Positions, quotes: &[Quote]) -> Result<Portfolio, Unexpected> {
    let overflow = || Unexpected::msg("portfolio value overflows i64");
    let mut holdings_value = Cents::ZERO;
    let mut profit: i64 = 0;
    let mut holdings = Vec::with_capacity(positions.holdings.len());
    for holding in positions.holdings {
        let quote = quotes
            .iter()
            .find(|q| q.player_id == holding.player)
            .ok_or_else(|| Unexpected::msg(format!("no price for player {}", holding.player)))?;
        let value = quote
            .price
            .get()
            .checked_mul(holding.quantity)
            .ok_or_else(overflow)?;
        let gain = value.checked_sub(holding.cost.get()).ok_or_else(overflow)?;
        holdings_value = holdings_value
            .checked_add(Cents::new(value))
            .ok_or_else(overflow)?;
        profit = profit.checked_add(gain).ok_or_else(overflow)?;
        holdings.push(ValuedHolding {
            player: holding.player,
            quantity: holding.quantity,
            avg_cost: Cents::new(holding.cost.get() / holding.quantity.max(1)),
            cost: holding.cost,
            price: quote.price,
            value: Cents::new(value),
            profit: Cents::new(gain),
        });
    }
    Ok(Portfolio {
        cash: positions.cash,
        held: positions.held,
        holdings,
        holdings_value,
        profit: Cents::new(profit),
        net_worth: positions
            .cash
            .checked_add(holdings_value)
            .ok_or_else(overflow)?,
    })
}

/// Milliseconds until `locked_until`, at least 1 while the lock holds.
pub fn retry_after_ms(locked_until: DateTime<Utc>, now: DateTime<Utc>) -> Option<i64> {
    let remaining = (locked_until - now).num_milliseconds();
    (locked_until > now).then_some(remaining.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(id: i64, price: i64) -> Quote {
        Quote {
            player_id: PlayerId(id),
            price: Cents::new(price),
            epoch: 0,
            locked_until: None,
        }
    }

    #[test]
    fn net_worth_is_cash_plus_holdings_at_live_prices() {
        let positions = Positions {
            cash: Cents::new(1_000),
            held: Cents::new(100),
            holdings: vec![
                Holding {
                    player: PlayerId(1),
                    quantity: 3,
                    cost: Cents::new(301),
                },
                Holding {
                    player: PlayerId(2),
                    quantity: 2,
                    cost: Cents::new(50),
                },
            ],
        };
        let portfolio = value_portfolio(positions, &[quote(2, 7), quote(1, 110)]).unwrap();
        assert_eq!(portfolio.net_worth, Cents::new(1_000 + 330 + 14));
        assert_eq!(portfolio.holdings[0].avg_cost, Cents::new(100));
        assert_eq!(portfolio.holdings[0].value, Cents::new(330));
        assert_eq!(portfolio.holdings[1].avg_cost, Cents::new(25));
        assert_eq!(portfolio.holdings[0].profit, Cents::new(330 - 301));
        assert_eq!(portfolio.holdings[1].profit, Cents::new(14 - 50));
        assert_eq!(portfolio.holdings_value, Cents::new(344));
        assert_eq!(portfolio.profit, Cents::new(29 - 36));
    }

    #[test]
    fn valuing_a_holding_without_a_price_is_an_error_not_a_zero() {
        let positions = Positions {
            cash: Cents::ZERO,
            held: Cents::ZERO,
            holdings: vec![Holding {
                player: PlayerId(9),
                quantity: 1,
                cost: Cents::new(1),
            }],
        };
        assert!(value_portfolio(positions, &[]).is_err());
    }

    #[test]
    fn retry_after_counts_down_to_the_lock_end() {
        let now = Utc::now();
        let until = now + chrono::Duration::milliseconds(1_500);
        assert_eq!(retry_after_ms(until, now), Some(1_500));
        assert_eq!(retry_after_ms(now, now), None);
    }

    #[test]
    fn rejection_codes_round_trip() {
        for rejection in [
            Rejection::UnknownPlayer,
            Rejection::InsufficientFunds,
            Rejection::InsufficientHoldings,
            Rejection::PriceMoved,
        ] {
            assert_eq!(Rejection::from_code(rejection.code()), Some(rejection));
        }
    }
}
