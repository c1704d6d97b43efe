//! Trading: market orders (with an optional limit) against the live price,
//! order history and portfolios, under the fairness policy in force
//! (`trading.fairness_policy`): `lock` fills at once; `delay` keeps every
//! order waiting (`pending_orders`) and fills it later on a worker, unless an
//! event on the player occurred during the wait; `void_window` fills at once
//! but provisionally, and the event transaction voids a provisional fill that
//! the event occurred before ([`void_ahead`]).
//!
//! Owns orders and holdings. Cash moves only through the ledger's posting
//! functions, in the same transaction as the order row, the holding change
//! and the idempotency record. Never computes prices: an order fills at the
//! player row's live price and epoch, read inside the player's trade gate
//! (`players::gate`), so no event can land between the read and the commit;
//! portfolios are valued through [`PriceReader`].

pub mod batch;
mod pg;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use pg::{void_ahead, PgOrders};

pub use crate::config::FairnessPolicy;

use crate::domain::{Cents, PlayerId, Quantity, Side, UserId};
use crate::error::Unexpected;
use crate::idempotency::IdempotencyKey;
use crate::ledger::{AccountSink, AccountUpdate};
use crate::players::{PriceReader, Quote};

/// Delayed orders settled per round of [`TradingService::run_delayed`].
const DELAYED_BATCH: usize = 100;

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

/// The policy and its windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fairness {
    pub policy: FairnessPolicy,
    /// `delay`: how long an order waits.
    pub delay: Duration,
    /// `void_window`: how long a fill stays provisional.
    pub void_window: Duration,
}

impl Fairness {
    /// Today's trade lock alone.
    pub const LOCK: Fairness = Fairness {
        policy: FairnessPolicy::Lock,
        delay: Duration::ZERO,
        void_window: Duration::ZERO,
    };

    /// From `trading.*`.
    pub fn from_settings(settings: &crate::config::TradingSettings) -> Fairness {
        Fairness {
            policy: settings.fairness_policy,
            delay: Duration::from_secs_f64(settings.delay_seconds),
            void_window: Duration::from_secs(settings.max_feed_lag_seconds),
        }
    }
}

/// Where an order stands (the API's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Waiting out `trading.delay_seconds`.
    Pending,
    /// Filled, but voided if an event that occurred before the fill arrives
    /// before `final_at`.
    Provisional,
    Filled,
    /// Never filled (see its reason).
    Cancelled,
    /// Filled, then reversed exactly (see its reason).
    Voided,
}

impl OrderStatus {
    /// Every status, in the order an order can pass through them.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Provisional,
        OrderStatus::Filled,
        OrderStatus::Cancelled,
        OrderStatus::Voided,
    ];

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Provisional => "provisional",
            OrderStatus::Filled => "filled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Voided => "voided",
        }
    }

    /// The status named `name`.
    pub fn parse(name: &str) -> Option<OrderStatus> {
        OrderStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == name)
    }
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
    /// `Filled`, `Provisional` or `Voided`.
    pub status: OrderStatus,
    /// When a provisional fill becomes final.
    pub final_at: Option<DateTime<Utc>>,
    /// Why it was voided.
    pub reason: Option<String>,
}

/// An order under the `delay` policy before it filled, or one cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub order_id: i64,
    pub player: PlayerId,
    pub side: Side,
    pub quantity: Quantity,
    /// `Pending` or `Cancelled`.
    pub status: OrderStatus,
    pub requested_at: DateTime<Utc>,
    /// When it fills (or was due to).
    pub fills_at: DateTime<Utc>,
    /// Why it was cancelled.
    pub reason: Option<String>,
}

/// An order as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    Executed(Fill),
    Waiting(Waiting),
}

impl Order {
    /// Its id.
    pub fn id(&self) -> i64 {
        match self {
            Order::Executed(fill) => fill.order_id,
            Order::Waiting(waiting) => waiting.order_id,
        }
    }
}

/// A provisional fill an event voided, with what the reversal left the
/// user's account at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voided {
    pub user: UserId,
    pub fill: Fill,
    pub account: AccountUpdate,
}

/// A delayed order the worker settled: filled or cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub user: UserId,
    pub order: Order,
    pub account: Option<AccountUpdate>,
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
    /// A fill, or (`delay`) the order waiting.
    pub outcome: Result<Order, Rejection>,
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
    /// `void_window`: the shares to sell include provisional ones.
    #[error("some of these shares are still provisional")]
    HoldingsProvisional { retry_after_ms: i64 },
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
    /// Places `orders` together (group commit): each answered exactly as
    /// [`OrderStore::place`] would have, as if placed one by one in some
    /// order, and only once the whole batch is durable.
    async fn place_batch(&self, orders: Vec<NewOrder>) -> Vec<Result<Placed, TradingError>> {
        let mut results = Vec::with_capacity(orders.len());
        for order in &orders {
            results.push(self.place(order).await);
        }
        results
    }
    /// The user's latest orders, newest first.
    async fn orders(&self, user: UserId, limit: i64) -> Result<Vec<Order>, Unexpected>;
    /// One of the user's orders.
    async fn order(&self, user: UserId, order_id: i64) -> Result<Option<Order>, Unexpected>;
    /// The user's cash and non-empty holdings.
    async fn positions(&self, user: UserId) -> Result<Positions, Unexpected>;
    /// Fills or cancels up to `max` delayed orders that are due (any
    /// replica may; each order is settled once).
    async fn settle_due(&self, max: usize) -> Result<Vec<Settled>, Unexpected>;
}

/// Told of every new fill and every change of an order's status (the
/// broadcast side puts it on the user's socket).
#[async_trait]
pub trait FillNotifier: Send + Sync {
    /// `order` was just committed (or changed) for `user`.
    async fn order_changed(&self, user: UserId, order: &Order);
}

/// Places orders and values portfolios.
pub struct TradingService {
    store: Arc<dyn OrderStore>,
    prices: Arc<dyn PriceReader>,
    notifier: Arc<dyn FillNotifier>,
    accounts: Arc<dyn AccountSink>,
    /// Group commit, when on.
    batches: Option<batch::Batcher<NewOrder, Result<Placed, TradingError>>>,
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
            batches: None,
        }
    }

    /// Places orders in group-commit batches (`limits.max` > 1), telling
    /// `observe` of each batch. Needs a Tokio runtime.
    pub fn with_batches(
        mut self,
        limits: batch::BatchLimits,
        observe: impl Fn(batch::BatchShape) + Send + Sync + 'static,
    ) -> TradingService {
        if limits.max > 1 {
            let store = self.store.clone();
            self.batches = Some(batch::Batcher::spawn(
                limits,
                move |orders| {
                    let store = store.clone();
                    async move { store.place_batch(orders).await }
                },
                observe,
            ));
        }
        self
    }

    /// Places an order at the live price.
    #[tracing::instrument(skip_all, fields(user_id = %order.user, player_id = %order.player))]
    pub async fn place(&self, order: &NewOrder) -> Result<Placed, TradingError> {
        let placed = match &self.batches {
            Some(batches) => batches
                .submit(order.user.0.unsigned_abs(), order.clone())
                .await
                .unwrap_or_else(|| {
                    Err(TradingError::Unexpected(Unexpected::msg(
                        "the order executors have stopped",
                    )))
                }),
            None => self.store.place(order).await,
        };
        let mut placed = placed?;
        if let Some(account) = placed.account.take() {
            self.accounts.accounts_changed(vec![account]);
        }
        if let (false, Ok(placed_order)) = (placed.replayed, &placed.outcome) {
            self.notifier.order_changed(order.user, placed_order).await;
        }
        Ok(placed)
    }

    /// The user's latest orders, newest first.
    pub async fn orders(&self, user: UserId, limit: i64) -> Result<Vec<Order>, Unexpected> {
        self.store.orders(user, limit).await
    }

    /// One of the user's orders (`None` for anyone else's).
    pub async fn order(&self, user: UserId, order_id: i64) -> Result<Option<Order>, Unexpected> {
        self.store.order(user, order_id).await
    }

    /// Settles delayed orders as they fall due, until `shutdown`: every
    /// `poll` while any may be waiting.
    pub async fn run_delayed(
        self: Arc<Self>,
        poll: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            match self.store.settle_due(DELAYED_BATCH).await {
                Ok(settled) => {
                    let accounts: Vec<AccountUpdate> =
                        settled.iter().filter_map(|s| s.account.clone()).collect();
                    if !accounts.is_empty() {
                        self.accounts.accounts_changed(accounts);
                    }
                    let more = settled.len() == DELAYED_BATCH;
                    for settled in settled {
                        self.notifier
                            .order_changed(settled.user, &settled.order)
                            .await;
                    }
                    if more {
                        continue;
                    }
                }
                Err(error) => tracing::warn!(%error, "settling delayed orders failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => return,
            }
        }
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

/// Tells the owners and the leaderboard of fills an event voided.
#[async_trait]
impl crate::pricing::VoidSink for TradingService {
    async fn fills_voided(&self, voided: &[Voided]) {
        if voided.is_empty() {
            return;
        }
        self.accounts
            .accounts_changed(voided.iter().map(|v| v.account.clone()).collect());
        for void in voided {
            self.notifier
                .order_changed(void.user, &Order::Executed(void.fill.clone()))
                .await;
        }
    }
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
    fn order_statuses_round_trip() {
        for status in [
            OrderStatus::Pending,
            OrderStatus::Provisional,
            OrderStatus::Filled,
            OrderStatus::Cancelled,
            OrderStatus::Voided,
        ] {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("done"), None);
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
