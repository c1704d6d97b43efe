use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use deadpool_postgres::Transaction;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::{
    retry_after_ms, Fairness, FairnessPolicy, Fill, Holding, NewOrder, Order, OrderStatus,
    OrderStore, Placed, Positions, Rejection, Settled, TradingError, Voided, Waiting,
    ORDERS_ENDPOINT,
};
use crate::domain::{Cents, PlayerId, Quantity, Side, UserId};
use crate::error::Unexpected;
use crate::idempotency::{self, Claim};
use crate::ledger::{posting, AccountUpdate, HoldingChange, Position};
use crate::players::gate;

mod group;

/// Users whose orders a failed batch (or a `delay` batch) places at once.
const ONE_BY_ONE_USERS: usize = 8;

/// Orders and holdings in Postgres.
pub struct PgOrders {
    pool: Pool,
    fairness: Fairness,
    /// Counts batches that failed and were placed order by order.
    replayed: Option<prometheus::IntCounter>,
}

impl PgOrders {
    /// A store using `pool`, placing orders under `fairness`.
    pub fn new(pool: Pool, fairness: Fairness) -> PgOrders {
        PgOrders {
            pool,
            fairness,
            replayed: None,
        }
    }

    /// Counts in `counter` every batch that fails and is placed order by order.
    pub fn counting_replays(mut self, counter: prometheus::IntCounter) -> PgOrders {
        self.replayed = Some(counter);
        self
    }

    /// Places `orders` one transaction each: a user's one after another in
    /// arrival order (as a batch would have), at most
    /// [`ONE_BY_ONE_USERS`] users at once (a failed batch must not take
    /// every pooled connection).
    async fn place_each(&self, orders: &[NewOrder]) -> Vec<Result<Placed, TradingError>> {
        use futures_util::StreamExt;
        let mut chains: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
        for (at, order) in orders.iter().enumerate() {
            chains.entry(order.user.0).or_default().push(at);
        }
        let placed: Vec<Vec<(usize, Result<Placed, TradingError>)>> =
            futures_util::stream::iter(chains.into_values().map(|chain| async move {
                let mut placed = Vec::with_capacity(chain.len());
                for at in chain {
                    placed.push((at, self.place(&orders[at]).await));
                }
                placed
            }))
            .buffer_unordered(ONE_BY_ONE_USERS)
            .collect()
            .await;
        let mut answers: Vec<Option<Result<Placed, TradingError>>> =
            orders.iter().map(|_| None).collect();
        for (at, answer) in placed.into_iter().flatten() {
            answers[at] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| {
                answer
                    .unwrap_or_else(|| Err(unexpected(Unexpected::msg("an order was not placed"))))
            })
            .collect()
    }
}

fn unexpected(error: impl Into<Unexpected>) -> TradingError {
    TradingError::Unexpected(error.into())
}

/// How an outcome is kept in `idempotency_keys.outcome`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredOutcome {
    /// A fill in full, as stored before fills were stored by reference;
    /// still read.
    Fill(StoredFill),
    /// A fill by its order id: its `orders` row, written in the same
    /// transaction, holds every field of the answer, and a replay reads it
    /// back ([`replay`]). Storing the full fill again as JSONB cost about
    /// 4.5 µs a key (docs/benchmarks-history.md, 2026-12-04, fourth
    /// session).
    FillOf(i64),
    Pending(StoredWaiting),
    Rejected(String),
}

#[derive(Serialize, Deserialize)]
struct StoredFill {
    order_id: i64,
    player_id: i64,
    side: String,
    quantity: i64,
    price_cents: i64,
    total_cents: i64,
    balance_cents: i64,
    epoch: i64,
    executed_at: DateTime<Utc>,
    /// Absent in outcomes stored before the fairness policies: `filled`.
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    final_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
struct StoredWaiting {
    order_id: i64,
    player_id: i64,
    side: String,
    quantity: i64,
    requested_at: DateTime<Utc>,
    fills_at: DateTime<Utc>,
}

fn encode(outcome: &Result<Order, Rejection>) -> Result<serde_json::Value, Unexpected> {
    let stored = match outcome {
        Ok(Order::Executed(fill)) => StoredOutcome::FillOf(fill.order_id),
        Ok(Order::Waiting(waiting)) => StoredOutcome::Pending(StoredWaiting {
            order_id: waiting.order_id,
            player_id: waiting.player.0,
            side: waiting.side.as_str().to_string(),
            quantity: waiting.quantity.get(),
            requested_at: waiting.requested_at,
            fills_at: waiting.fills_at,
        }),
        Err(rejection) => StoredOutcome::Rejected(rejection.code().to_string()),
    };
    serde_json::to_value(stored).map_err(Unexpected::from_error)
}

/// A stored outcome as first answered, reading a fill stored by reference
/// from its `orders` row on `tx`.
async fn replay(
    tx: &Transaction<'_>,
    value: serde_json::Value,
) -> Result<Result<Order, Rejection>, Unexpected> {
    match decode(value)? {
        Stored::Answer(outcome) => Ok(outcome),
        Stored::FillOf(order_id) => {
            let statement = tx.prepare_cached(FILL_AS_PLACED).await?;
            let row = tx
                .query_opt(&statement, &[&order_id])
                .await?
                .ok_or_else(|| Unexpected::msg("a stored fill's order is missing"))?;
            Ok(Ok(Order::Executed(fill(&row)?)))
        }
    }
}

/// A fill's [`FILL_COLUMNS`] as it was placed: a row's status changes only
/// when a provisional fill is voided, and its void reason came later.
const FILL_AS_PLACED: &str = "SELECT id, player_id, side, quantity, price_cents, total_cents,
    balance_cents, epoch, executed_at,
    CASE WHEN status = 'voided' THEN 'provisional' ELSE status END,
    final_at, NULL::text
  FROM orders WHERE id = $1";

/// A stored outcome, read: the answer, or the order a fill is stored by.
#[derive(Debug, PartialEq)]
enum Stored {
    Answer(Result<Order, Rejection>),
    FillOf(i64),
}

fn decode(value: serde_json::Value) -> Result<Stored, Unexpected> {
    let corrupt = || Unexpected::msg("corrupt stored order outcome");
    Ok(Stored::Answer(
        match serde_json::from_value(value).map_err(Unexpected::from_error)? {
            StoredOutcome::FillOf(order_id) => return Ok(Stored::FillOf(order_id)),
            StoredOutcome::Fill(f) => Ok(Order::Executed(Fill {
                order_id: f.order_id,
                player: PlayerId(f.player_id),
                side: Side::parse(&f.side).ok_or_else(corrupt)?,
                quantity: Quantity::new(f.quantity).ok_or_else(corrupt)?,
                price: Cents::new(f.price_cents),
                total: Cents::new(f.total_cents),
                balance: Cents::new(f.balance_cents),
                epoch: f.epoch,
                executed_at: f.executed_at,
                status: match f.status {
                    Some(status) => OrderStatus::parse(&status).ok_or_else(corrupt)?,
                    None => OrderStatus::Filled,
                },
                final_at: f.final_at,
                reason: None,
            })),
            StoredOutcome::Pending(w) => Ok(Order::Waiting(Waiting {
                order_id: w.order_id,
                player: PlayerId(w.player_id),
                side: Side::parse(&w.side).ok_or_else(corrupt)?,
                quantity: Quantity::new(w.quantity).ok_or_else(corrupt)?,
                status: OrderStatus::Pending,
                requested_at: w.requested_at,
                fills_at: w.fills_at,
                reason: None,
            })),
            StoredOutcome::Rejected(code) => Err(Rejection::from_code(&code).ok_or_else(corrupt)?),
        },
    ))
}

/// The columns [`fill`] reads, in its order. A provisional fill whose
/// window has passed reads as filled: finality needs no write.
const FILL_COLUMNS: &str = "id, player_id, side, quantity, price_cents, total_cents,
    balance_cents, epoch, executed_at,
    CASE WHEN status = 'provisional' AND final_at <= clock_timestamp() THEN 'filled'
         ELSE status END,
    final_at, void_reason";

fn fill(row: &Row) -> Result<Fill, Unexpected> {
    let corrupt = || Unexpected::msg("corrupt order row");
    Ok(Fill {
        order_id: row.get(0),
        player: PlayerId(row.get(1)),
        side: Side::parse(row.get(2)).ok_or_else(corrupt)?,
        quantity: Quantity::new(row.get(3)).ok_or_else(corrupt)?,
        price: Cents::new(row.get(4)),
        total: Cents::new(row.get(5)),
        balance: Cents::new(row.get(6)),
        epoch: row.get(7),
        executed_at: row.get(8),
        status: OrderStatus::parse(row.get(9)).ok_or_else(corrupt)?,
        final_at: row.get(10),
        reason: row.get(11),
    })
}

/// The columns [`waiting`] reads, in its order.
const WAITING_COLUMNS: &str = "id, player_id, side, quantity, status, requested_at, due_at, reason";

fn waiting(row: &Row) -> Result<Waiting, Unexpected> {
    let corrupt = || Unexpected::msg("corrupt pending order row");
    Ok(Waiting {
        order_id: row.get(0),
        player: PlayerId(row.get(1)),
        side: Side::parse(row.get(2)).ok_or_else(corrupt)?,
        quantity: Quantity::new(row.get(3)).ok_or_else(corrupt)?,
        status: OrderStatus::parse(row.get(4)).ok_or_else(corrupt)?,
        requested_at: row.get(5),
        fills_at: row.get(6),
        reason: row.get(7),
    })
}

/// A read-only transaction seeing one snapshot of every table.
async fn snapshot(
    client: &mut deadpool_postgres::Object,
) -> Result<Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// What to execute: a new order, or a delayed one under its own id.
struct Spec {
    user: UserId,
    player: PlayerId,
    side: Side,
    quantity: Quantity,
    limit: Option<Cents>,
    order_id: Option<i64>,
}

/// Executes `spec` at the live price on `tx`, whose caller is inside the
/// player's trade gate: the fill, or the business reason it cannot fill.
/// Under `void_window` the fill is provisional.
async fn execute(
    tx: &Transaction<'_>,
    spec: &Spec,
    fairness: &Fairness,
) -> Result<Result<(Fill, AccountUpdate), Rejection>, TradingError> {
    // The user row FOR NO KEY UPDATE, first: every order of one user
    // then takes its locks in the same order (user, then holding), so a
    // buy (cash, then holding) and a sell (holding, then cash) of the
    // same user cannot deadlock. They serialise on the user row anyway.
    let player = tx
        .query_opt(
            "SELECT p.epoch, p.locked_until, clock_timestamp(),
                    coalesce($3::bigint, nextval('orders_id_seq')), p.price_cents
               FROM players p, users u
              WHERE p.id = $1 AND u.id = $2
                FOR NO KEY UPDATE OF u",
            &[&spec.player.0, &spec.user.0, &spec.order_id],
        )
        .await
        .map_err(unexpected)?;
    let Some(player) = player else {
        return Ok(Err(Rejection::UnknownPlayer));
    };
    let epoch: i64 = player.get(0);
    let locked_until: Option<DateTime<Utc>> = player.get(1);
    let now: DateTime<Utc> = player.get(2);
    let order_id: i64 = player.get(3);
    // The live price and epoch as of this statement: events cannot change
    // them while the order is inside the gate; a tick may move the price
    // a moment later, which is the price an order placed a moment
    // earlier gets.
    let price = Cents::new(player.get(4));
    if let Some(retry_after_ms) = locked_until.and_then(|until| retry_after_ms(until, now)) {
        return Err(TradingError::PlayerLocked { retry_after_ms });
    }

    let limit_met = match (spec.side, spec.limit) {
        (_, None) => true,
        (Side::Buy, Some(limit)) => price <= limit,
        (Side::Sell, Some(limit)) => price >= limit,
    };
    if !limit_met {
        return Ok(Err(Rejection::PriceMoved));
    }
    let total = price.times(spec.quantity);
    let txn = format!("order:{order_id}");

    let (posted, holding, basis) = match (spec.side, total) {
        // Nobody has more than i64::MAX cents.
        (Side::Buy, None) => return Ok(Err(Rejection::InsufficientFunds)),
        (Side::Sell, None) => {
            return Err(unexpected(Unexpected::msg("sale proceeds overflow i64")));
        }
        (Side::Buy, Some(total)) => {
            let debited = posting::debit_to_market(tx, spec.user, total, &txn)
                .await
                .map_err(unexpected)?;
            let Some(posted) = debited else {
                return Ok(Err(Rejection::InsufficientFunds));
            };
            let holding = tx
                .query_one(
                    "INSERT INTO holdings (user_id, player_id, quantity, cost_cents)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (user_id, player_id) DO UPDATE
                        SET quantity = holdings.quantity + EXCLUDED.quantity,
                            cost_cents = holdings.cost_cents + EXCLUDED.cost_cents
                     RETURNING quantity, cost_cents",
                    &[
                        &spec.user.0,
                        &spec.player.0,
                        &spec.quantity.get(),
                        &total.get(),
                    ],
                )
                .await
                .map_err(unexpected)?;
            (posted, holding, total)
        }
        (Side::Sell, Some(total)) => {
            let sold = sell_shares(tx, spec, now).await?;
            let (holding, basis) = match sold {
                Ok(sold) => sold,
                Err(rejection) => return Ok(Err(rejection)),
            };
            let posted = posting::credit_from_market(tx, spec.user, total, &txn)
                .await
                .map_err(unexpected)?;
            (posted, holding, basis)
        }
    };
    let balance = posted.cash;
    // What this commit leaves the user with, for the leaderboard.
    let account = AccountUpdate::Holding(HoldingChange {
        user_id: spec.user.0,
        revision: posted.revision,
        cash_cents: posted.cash.get(),
        held_cents: posted.held.get(),
        position: Position {
            player_id: spec.player.0,
            quantity: holding.get(0),
            cost_cents: holding.get(1),
        },
    });
    let total = total.unwrap_or(Cents::ZERO);
    let (status, window) = match fairness.policy {
        FairnessPolicy::VoidWindow if !fairness.void_window.is_zero() => {
            (OrderStatus::Provisional, fairness.void_window.as_secs_f64())
        }
        _ => (OrderStatus::Filled, 0.0),
    };

    let row = tx
        .query_one(
            "WITH now AS (SELECT clock_timestamp() AS t)
             INSERT INTO orders (id, user_id, player_id, side, quantity, price_cents,
                                 total_cents, balance_cents, epoch, executed_at, status,
                                 final_at, cost_basis_cents)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, now.t, $10,
                    CASE WHEN $11::float8 > 0 THEN now.t + make_interval(secs => $11::float8) END, $12
               FROM now
             RETURNING executed_at, final_at",
            &[
                &order_id,
                &spec.user.0,
                &spec.player.0,
                &spec.side.as_str(),
                &spec.quantity.get(),
                &price.get(),
                &total.get(),
                &balance.get(),
                &epoch,
                &status.as_str(),
                &window,
                &basis.get(),
            ],
        )
        .await
        .map_err(unexpected)?;

    let filled = Fill {
        order_id,
        player: spec.player,
        side: spec.side,
        quantity: spec.quantity,
        price,
        total,
        balance,
        epoch,
        executed_at: row.get(0),
        status,
        final_at: row.get(1),
        reason: None,
    };
    Ok(Ok((filled, account)))
}

/// Takes `spec.quantity` shares out of the user's holding, never
/// provisional ones: the holding after it (quantity, cost) and the cost
/// basis the sale removed, or why not. The cost basis shrinks in proportion
/// (average cost) over the final shares only, so voiding a provisional buy
/// later takes back exactly what it added.
async fn sell_shares(
    tx: &Transaction<'_>,
    spec: &Spec,
    now: DateTime<Utc>,
) -> Result<Result<(Row, Cents), Rejection>, TradingError> {
    let held = tx
        .query_opt(
            "SELECT quantity, cost_cents FROM holdings
              WHERE user_id = $1 AND player_id = $2 FOR UPDATE",
            &[&spec.user.0, &spec.player.0],
        )
        .await
        .map_err(unexpected)?;
    let Some(held) = held else {
        return Ok(Err(Rejection::InsufficientHoldings));
    };
    let (quantity, cost): (i64, i64) = (held.get(0), held.get(1));
    let wanted = spec.quantity.get();
    if quantity < wanted {
        return Ok(Err(Rejection::InsufficientHoldings));
    }
    let provisional = tx
        .query_one(
            "SELECT coalesce(sum(quantity), 0)::bigint, coalesce(sum(cost_basis_cents), 0)::bigint,
                    min(final_at)
               FROM orders
              WHERE user_id = $1 AND player_id = $2 AND side = 'buy'
                AND status = 'provisional' AND final_at > $3",
            &[&spec.user.0, &spec.player.0, &now],
        )
        .await
        .map_err(unexpected)?;
    let (provisional_quantity, provisional_cost): (i64, i64) =
        (provisional.get(0), provisional.get(1));
    let sellable = quantity - provisional_quantity;
    if sellable < wanted {
        let first_final: Option<DateTime<Utc>> = provisional.get(2);
        return Err(TradingError::HoldingsProvisional {
            retry_after_ms: first_final
                .and_then(|at| retry_after_ms(at, now))
                .unwrap_or(1),
        });
    }
    let basis = removed_basis(cost - provisional_cost, sellable, wanted);
    let holding = tx
        .query_one(
            "UPDATE holdings SET quantity = quantity - $3, cost_cents = cost_cents - $4
              WHERE user_id = $1 AND player_id = $2
             RETURNING quantity, cost_cents",
            &[&spec.user.0, &spec.player.0, &wanted, &basis.get()],
        )
        .await
        .map_err(unexpected)?;
    Ok(Ok((holding, basis)))
}

/// The cost basis `sold` of `shares` shares costing `cost` take with them,
/// rounded down (average cost).
pub(crate) fn removed_basis(cost: i64, shares: i64, sold: i64) -> Cents {
    if shares <= 0 || cost <= 0 {
        return Cents::ZERO;
    }
    let removed = i128::from(cost) * i128::from(sold.min(shares)) / i128::from(shares);
    Cents::new(i64::try_from(removed).unwrap_or(cost))
}

/// What one order came to inside a transaction shared with others.
enum Step {
    /// Its writes (a fill, or a remembered refusal) must commit.
    Keep(Placed),
    /// It wrote nothing: the answer stands whatever the transaction does.
    Discard(Result<Placed, TradingError>),
    /// Its key was taken by another writer after the claim while the
    /// order's writes are in the transaction: roll back.
    Conflict,
}

/// Remembers `outcome` under the order's key, inside `tx`.
async fn record(
    tx: &Transaction<'_>,
    order: &NewOrder,
    outcome: Result<Order, Rejection>,
    account: Option<AccountUpdate>,
) -> Result<Step, TradingError> {
    let stored = encode(&outcome)?;
    let recorded = idempotency::pg::record(
        tx,
        order.user,
        &order.key,
        ORDERS_ENDPOINT,
        &order.fingerprint,
        &stored,
    )
    .await
    .map_err(unexpected)?;
    if !recorded {
        return Ok(Step::Conflict);
    }
    Ok(Step::Keep(Placed {
        outcome,
        replayed: false,
        account,
    }))
}

/// A 404 is not remembered under the key (nothing was decided about a
/// player that does not exist): a retry looks again.
fn unknown_player() -> Step {
    Step::Discard(Ok(Placed {
        outcome: Err(Rejection::UnknownPlayer),
        replayed: false,
        account: None,
    }))
}

/// Claims the order's key and places it on `tx`. `gated`: the caller has
/// already entered the player's trade gate.
async fn place_on(
    tx: &Transaction<'_>,
    order: &NewOrder,
    fairness: &Fairness,
    gated: bool,
) -> Result<Step, TradingError> {
    let claim = idempotency::pg::claim(
        tx,
        order.user,
        &order.key,
        ORDERS_ENDPOINT,
        &order.fingerprint,
    )
    .await
    .map_err(unexpected)?;
    match claim {
        Claim::Fresh => {}
        Claim::InProgress => return Ok(Step::Discard(Err(TradingError::InProgress))),
        Claim::Reused => return Ok(Step::Discard(Err(TradingError::KeyReused))),
        Claim::Replay(stored) => {
            return Ok(Step::Discard(Ok(Placed {
                outcome: replay(tx, stored).await?,
                replayed: true,
                account: None,
            })))
        }
    }

    if fairness.policy == FairnessPolicy::Delay {
        return match wait(tx, order, fairness).await {
            Ok(Ok(waiting)) => record(tx, order, Ok(Order::Waiting(waiting)), None).await,
            Ok(Err(Rejection::UnknownPlayer)) => Ok(unknown_player()),
            Ok(Err(rejection)) => record(tx, order, Err(rejection), None).await,
            Err(refusal) => refused(refusal),
        };
    }

    // The player's trade gate, shared: orders on one player run side by
    // side, but an event waits for them, and an order arriving after an
    // event queues behind it and then reads its epoch and lock. So no
    // order commits at a pre-event epoch once the event is applied.
    if !gated {
        gate::enter_trade_gate(tx, order.player)
            .await
            .map_err(unexpected)?;
    }
    let spec = Spec {
        user: order.user,
        player: order.player,
        side: order.side,
        quantity: order.quantity,
        limit: order.limit,
        order_id: None,
    };
    match execute(tx, &spec, fairness).await {
        Ok(Ok((fill, account))) => {
            record(tx, order, Ok(Order::Executed(fill)), Some(account)).await
        }
        Ok(Err(Rejection::UnknownPlayer)) => Ok(unknown_player()),
        Ok(Err(rejection)) => record(tx, order, Err(rejection), None).await,
        Err(refusal) => refused(refusal),
    }
}

/// A refusal that is not remembered (423, 409 `holdings_provisional`): it
/// wrote nothing. Unexpected failures stay errors.
fn refused(error: TradingError) -> Result<Step, TradingError> {
    match error {
        TradingError::Unexpected(cause) => Err(TradingError::Unexpected(cause)),
        refusal => Ok(Step::Discard(Err(refusal))),
    }
}

#[async_trait]
impl OrderStore for PgOrders {
    #[tracing::instrument(skip_all, fields(user_id = %order.user, player_id = %order.player))]
    async fn place(&self, order: &NewOrder) -> Result<Placed, TradingError> {
        let mut client = self.pool.get().await.map_err(unexpected)?;
        let tx = client.transaction().await.map_err(unexpected)?;
        match place_on(&tx, order, &self.fairness, false).await {
            Ok(Step::Keep(placed)) => {
                tx.commit().await.map_err(unexpected)?;
                Ok(placed)
            }
            // Refusals roll back explicitly and wait for it: a dropped
            // transaction rolls back in the background, and until it has,
            // its key lock is held, so the client's immediate retry after a
            // 423 would be told 409.
            Ok(Step::Discard(answer)) => {
                tx.rollback().await.map_err(unexpected)?;
                answer
            }
            Ok(Step::Conflict) => {
                tx.rollback().await.map_err(unexpected)?;
                Err(TradingError::KeyReused)
            }
            Err(error) => {
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    #[tracing::instrument(skip_all, fields(orders = orders.len()))]
    async fn place_batch(&self, orders: Vec<NewOrder>) -> Vec<Result<Placed, TradingError>> {
        // A lone order takes the one-by-one path: fewer round trips than a
        // batch's, so batching costs it only the queue's wait.
        if orders.len() > 1 && self.fairness.policy != FairnessPolicy::Delay {
            match self.try_batch(&orders).await {
                Ok(results) => return results,
                // Each order again on its own, so one that cannot be placed
                // fails alone.
                Err(group::BatchFailure::RolledBack(error)) => {
                    if let Some(counter) = &self.replayed {
                        counter.inc();
                    }
                    tracing::warn!(%error, orders = orders.len(), "a batch of orders failed; placing them one by one");
                }
                // It may have committed: as one by one when a commit's answer
                // is lost, the client is told it failed, and its retry with
                // the key finds out.
                Err(group::BatchFailure::CommitUnknown(error)) => {
                    tracing::warn!(%error, orders = orders.len(), "a batch's commit failed");
                    // Each caller gets its own copy; a connection cut off
                    // (a 503, retry) stays one.
                    let cut_off = error.is_unavailable();
                    return orders
                        .iter()
                        .map(|_| {
                            let message = format!("the batch's commit failed: {error}");
                            Err(unexpected(if cut_off {
                                Unexpected::from_error(std::io::Error::new(
                                    std::io::ErrorKind::ConnectionAborted,
                                    message,
                                ))
                            } else {
                                Unexpected::msg(message)
                            }))
                        })
                        .collect();
                }
            }
        }
        self.place_each(&orders).await
    }

    async fn orders(&self, user: UserId, limit: i64) -> Result<Vec<Order>, Unexpected> {
        let mut client = self.pool.get().await?;
        // One snapshot for both tables: a delayed order filling between two
        // reads would otherwise be in neither.
        let client = snapshot(&mut client).await?;
        let executed = client
            .query(
                &format!(
                    "SELECT {FILL_COLUMNS} FROM orders WHERE user_id = $1 ORDER BY id DESC LIMIT $2"
                ),
                &[&user.0, &limit],
            )
            .await?;
        // A delayed order that filled is listed by its `orders` row.
        let waiting_rows = client
            .query(
                &format!(
                    "SELECT {WAITING_COLUMNS} FROM pending_orders
                      WHERE user_id = $1 AND status <> 'filled' ORDER BY id DESC LIMIT $2"
                ),
                &[&user.0, &limit],
            )
            .await?;
        let mut orders = executed
            .iter()
            .map(|row| fill(row).map(Order::Executed))
            .chain(
                waiting_rows
                    .iter()
                    .map(|row| waiting(row).map(Order::Waiting)),
            )
            .collect::<Result<Vec<Order>, Unexpected>>()?;
        client.commit().await?;
        orders.sort_by_key(|order| std::cmp::Reverse(order.id()));
        orders.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(orders)
    }

    async fn order(&self, user: UserId, order_id: i64) -> Result<Option<Order>, Unexpected> {
        let mut client = self.pool.get().await?;
        let client = snapshot(&mut client).await?;
        let executed = client
            .query_opt(
                &format!("SELECT {FILL_COLUMNS} FROM orders WHERE id = $1 AND user_id = $2"),
                &[&order_id, &user.0],
            )
            .await?;
        if let Some(row) = executed {
            client.commit().await?;
            return Ok(Some(Order::Executed(fill(&row)?)));
        }
        let waiting_row = client
            .query_opt(
                &format!(
                    "SELECT {WAITING_COLUMNS} FROM pending_orders
                      WHERE id = $1 AND user_id = $2 AND status <> 'filled'"
                ),
                &[&order_id, &user.0],
            )
            .await?;
        client.commit().await?;
        waiting_row
            .map(|row| waiting(&row).map(Order::Waiting))
            .transpose()
    }

    async fn positions(&self, user: UserId) -> Result<Positions, Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = snapshot(&mut client).await?;
        let (cash, held) = posting::balances(&tx, user)
            .await?
            .ok_or_else(|| Unexpected::msg(format!("user {user} has no account")))?;
        let rows = tx
            .query(
                "SELECT player_id, quantity, cost_cents FROM holdings
                  WHERE user_id = $1 AND quantity > 0 ORDER BY player_id",
                &[&user.0],
            )
            .await?;
        tx.commit().await?;
        Ok(Positions {
            cash,
            held,
            holdings: rows
                .iter()
                .map(|row| Holding {
                    player: PlayerId(row.get(0)),
                    quantity: row.get(1),
                    cost: Cents::new(row.get(2)),
                })
                .collect(),
        })
    }

    async fn settle_due(&self, max: usize) -> Result<Vec<Settled>, Unexpected> {
        let mut settled = Vec::new();
        while settled.len() < max {
            match self.settle_one().await {
                Ok(Some(one)) => settled.push(one),
                Ok(None) => break,
                // What was settled is committed: its owners are told even
                // when the next one fails.
                Err(error) if !settled.is_empty() => {
                    tracing::warn!(%error, "settling a delayed order failed");
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(settled)
    }
}

impl PgOrders {
    /// Settles the delayed order due first, if any, in its own transaction:
    /// cancelled when an event on its player occurred or arrived since it
    /// was placed (its price moved while it waited), or when it cannot
    /// fill; else filled at the live price.
    async fn settle_one(&self) -> Result<Option<Settled>, Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // SKIP LOCKED: replicas settle side by side, each order once.
        let Some(row) = tx
            .query_opt(
                "SELECT id, user_id, player_id, side, quantity, limit_cents, requested_at
                   FROM pending_orders
                  WHERE status = 'pending' AND due_at <= clock_timestamp()
                  ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[],
            )
            .await?
        else {
            tx.commit().await?;
            return Ok(None);
        };
        let corrupt = || Unexpected::msg("corrupt pending order row");
        let order_id: i64 = row.get(0);
        let user = UserId(row.get(1));
        let requested_at: DateTime<Utc> = row.get(6);
        let spec = Spec {
            user,
            player: PlayerId(row.get(2)),
            side: Side::parse(row.get(3)).ok_or_else(corrupt)?,
            quantity: Quantity::new(row.get(4)).ok_or_else(corrupt)?,
            limit: row.get::<_, Option<i64>>(5).map(Cents::new),
            order_id: Some(order_id),
        };
        // Inside the gate, every event applied so far is visible.
        gate::enter_trade_gate(&tx, spec.player).await?;
        let occurred = tx
            .query_opt(
                "SELECT kind, occurred_at FROM feed_events
                  WHERE player_id = $1 AND (applied_at >= $2 OR occurred_at >= $2)
                    AND applied_at IS NOT NULL
                  ORDER BY occurred_at LIMIT 1",
                &[&spec.player.0, &requested_at],
            )
            .await?;
        let cancel_reason = match occurred {
            Some(event) => Some(format!(
                "event_during_delay: {} (occurred {}) came while the order waited",
                event.get::<_, String>(0),
                event.get::<_, DateTime<Utc>>(1).to_rfc3339()
            )),
            None => match execute(&tx, &spec, &self.fairness).await {
                Ok(Ok((fill, account))) => {
                    tx.execute(
                        "UPDATE pending_orders SET status = 'filled', settled_at = $2
                          WHERE id = $1",
                        &[&order_id, &fill.executed_at],
                    )
                    .await?;
                    tx.commit().await?;
                    return Ok(Some(Settled {
                        user,
                        order: Order::Executed(fill),
                        account: Some(account),
                    }));
                }
                Ok(Err(rejection)) => Some(rejection.code().to_string()),
                Err(TradingError::PlayerLocked { .. }) => Some("player_locked".to_string()),
                Err(TradingError::HoldingsProvisional { .. }) => {
                    Some("holdings_provisional".to_string())
                }
                Err(TradingError::Unexpected(error)) => return Err(error),
                Err(other) => return Err(Unexpected::msg(other.to_string())),
            },
        };
        // A refusal may have written nothing yet: the rows it locked are
        // released at commit.
        let row = tx
            .query_one(
                &format!(
                    "UPDATE pending_orders
                        SET status = 'cancelled', reason = $2, settled_at = clock_timestamp()
                      WHERE id = $1
                     RETURNING {WAITING_COLUMNS}"
                ),
                &[&order_id, &cancel_reason],
            )
            .await?;
        let cancelled = waiting(&row)?;
        tx.commit().await?;
        Ok(Some(Settled {
            user,
            order: Order::Waiting(cancelled),
            account: None,
        }))
    }
}

/// `delay`: records the order as waiting `fairness.delay`, or refuses it at
/// once (unknown player, or the player is locked).
async fn wait(
    tx: &Transaction<'_>,
    order: &NewOrder,
    fairness: &Fairness,
) -> Result<Result<Waiting, Rejection>, TradingError> {
    let player = tx
        .query_opt(
            "SELECT locked_until, clock_timestamp() FROM players WHERE id = $1",
            &[&order.player.0],
        )
        .await
        .map_err(unexpected)?;
    let Some(player) = player else {
        return Ok(Err(Rejection::UnknownPlayer));
    };
    let locked_until: Option<DateTime<Utc>> = player.get(0);
    if let Some(retry_after_ms) =
        locked_until.and_then(|until| retry_after_ms(until, player.get(1)))
    {
        return Err(TradingError::PlayerLocked { retry_after_ms });
    }
    let row = tx
        .query_one(
            &format!(
                "WITH now AS (SELECT clock_timestamp() AS t)
                 INSERT INTO pending_orders (id, user_id, player_id, side, quantity, limit_cents,
                                             requested_at, due_at)
                 SELECT nextval('orders_id_seq'), $1, $2, $3, $4, $5, now.t,
                        now.t + make_interval(secs => $6)
                   FROM now
                 RETURNING {WAITING_COLUMNS}"
            ),
            &[
                &order.user.0,
                &order.player.0,
                &order.side.as_str(),
                &order.quantity.get(),
                &order.limit.map(|limit| limit.get()),
                &fairness.delay.as_secs_f64(),
            ],
        )
        .await
        .map_err(unexpected)?;
    Ok(Ok(waiting(&row)?))
}

/// `void_window`: reverses, on the event's transaction `tx` (inside the
/// player's closed gate), every provisional fill on `player` that executed
/// after `occurred_at` and is not final yet: the order becomes `voided`
/// with `reason`, its cash goes back through the ledger (entries under
/// `void:{order id}`) and its shares and cost basis are restored. A fill is
/// voided once: a second event finds it `voided` already.
///
/// Cannot fail for want of money: the proceeds of a provisional sell are
/// not spendable (`provisional_proceeds`), and provisional shares cannot be
/// sold, so the reversal's guards always hold.
pub async fn void_ahead(
    tx: &tokio_postgres::Transaction<'_>,
    player: PlayerId,
    occurred_at: DateTime<Utc>,
    reason: &str,
) -> Result<Vec<Voided>, Unexpected> {
    let ahead = tx
        .query(
            "SELECT id, user_id FROM orders
              WHERE player_id = $1 AND status = 'provisional'
                AND final_at > clock_timestamp() AND executed_at > $2",
            &[&player.0, &occurred_at],
        )
        .await?;
    if ahead.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = ahead.iter().map(|row| row.get(0)).collect();
    let mut users: Vec<i64> = ahead.iter().map(|row| row.get(1)).collect();
    users.sort_unstable();
    users.dedup();
    // Waiting for the users can take past a candidate's `final_at`; so the
    // set is decided again below, with the users locked: a fill that became
    // final meanwhile (its proceeds perhaps spent) is final, not voided.
    posting::lock_users(tx, &users).await?;
    let rows = tx
        .query(
            &format!(
                "UPDATE orders SET status = 'voided', voided_at = clock_timestamp(),
                                   void_reason = $2
                  WHERE id = ANY($1) AND status = 'provisional'
                    AND final_at > clock_timestamp() AND executed_at > $3
                 RETURNING {FILL_COLUMNS}, user_id, cost_basis_cents"
            ),
            &[&ids, &reason, &occurred_at],
        )
        .await?;
    let mut voided = Vec::with_capacity(rows.len());
    for row in rows {
        let fill = fill(&row)?;
        let user = UserId(row.get(12));
        let basis: i64 = row.get::<_, Option<i64>>(13).unwrap_or(fill.total.get());
        let txn = format!("void:{}", fill.order_id);
        let (posted, holding) = match fill.side {
            Side::Buy => {
                let holding = tx
                    .query_opt(
                        "UPDATE holdings SET quantity = quantity - $3, cost_cents = cost_cents - $4
                          WHERE user_id = $1 AND player_id = $2 AND quantity >= $3
                         RETURNING quantity, cost_cents",
                        &[&user.0, &player.0, &fill.quantity.get(), &basis],
                    )
                    .await?
                    .ok_or_else(|| {
                        Unexpected::msg(format!(
                            "voiding order {}: the provisional shares are gone",
                            fill.order_id
                        ))
                    })?;
                let posted = posting::credit_from_market(tx, user, fill.total, &txn).await?;
                (posted, holding)
            }
            Side::Sell => {
                let holding = tx
                    .query_one(
                        "UPDATE holdings SET quantity = quantity + $3, cost_cents = cost_cents + $4
                          WHERE user_id = $1 AND player_id = $2
                         RETURNING quantity, cost_cents",
                        &[&user.0, &player.0, &fill.quantity.get(), &basis],
                    )
                    .await?;
                let posted = posting::debit_to_market(tx, user, fill.total, &txn)
                    .await?
                    .ok_or_else(|| {
                        Unexpected::msg(format!(
                            "voiding order {}: the provisional proceeds are spent",
                            fill.order_id
                        ))
                    })?;
                (posted, holding)
            }
        };
        let account = AccountUpdate::Holding(HoldingChange {
            user_id: user.0,
            revision: posted.revision,
            cash_cents: posted.cash.get(),
            held_cents: posted.held.get(),
            position: Position {
                player_id: player.0,
                quantity: holding.get(0),
                cost_cents: holding.get(1),
            },
        });
        voided.push(Voided {
            user,
            fill,
            account,
        });
    }
    voided.sort_by_key(|v| v.fill.order_id);
    Ok(voided)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sale_takes_its_share_of_the_final_basis_rounded_down() {
        assert_eq!(removed_basis(1_000, 10, 5), Cents::new(500));
        assert_eq!(removed_basis(999, 10, 3), Cents::new(299));
        assert_eq!(removed_basis(1_000, 10, 10), Cents::new(1_000));
        assert_eq!(removed_basis(0, 10, 5), Cents::ZERO);
        assert_eq!(removed_basis(1_000, 0, 5), Cents::ZERO);
        // Never more than the whole basis, and no overflow on the product.
        assert_eq!(
            removed_basis(i64::MAX, 3, 2),
            Cents::new(6_148_914_691_236_517_204)
        );
        assert_eq!(removed_basis(1_000, 10, 50), Cents::new(1_000));
    }

    #[test]
    fn stored_outcomes_round_trip_and_old_ones_read_as_filled() {
        let fill = Fill {
            order_id: 7,
            player: PlayerId(3),
            side: Side::Sell,
            quantity: Quantity::new(2).unwrap(),
            price: Cents::new(150),
            total: Cents::new(300),
            balance: Cents::new(1_300),
            epoch: 4,
            executed_at: Utc::now(),
            status: OrderStatus::Provisional,
            final_at: Some(Utc::now()),
            reason: None,
        };
        // A fill is stored by its order (read back from the orders row).
        let stored = encode(&Ok(Order::Executed(fill.clone()))).unwrap();
        assert_eq!(stored, serde_json::json!({"fill_of": 7}));
        assert_eq!(decode(stored).unwrap(), Stored::FillOf(7));
        // One stored in full still reads as itself.
        let full = |status: Option<&str>| {
            serde_json::to_value(StoredOutcome::Fill(StoredFill {
                order_id: fill.order_id,
                player_id: fill.player.0,
                side: fill.side.as_str().to_string(),
                quantity: fill.quantity.get(),
                price_cents: fill.price.get(),
                total_cents: fill.total.get(),
                balance_cents: fill.balance.get(),
                epoch: fill.epoch,
                executed_at: fill.executed_at,
                status: status.map(str::to_string),
                final_at: fill.final_at,
            }))
            .unwrap()
        };
        assert_eq!(
            decode(full(Some("provisional"))).unwrap(),
            Stored::Answer(Ok(Order::Executed(fill.clone())))
        );
        // And one from before the fairness policies, without a status, as filled.
        match decode(full(None)).unwrap() {
            Stored::Answer(Ok(Order::Executed(fill))) => {
                assert_eq!(fill.status, OrderStatus::Filled)
            }
            other => panic!("{other:?}"),
        }
        let rejected = encode(&Err(Rejection::PriceMoved)).unwrap();
        assert_eq!(
            decode(rejected).unwrap(),
            Stored::Answer(Err(Rejection::PriceMoved))
        );
    }
}
