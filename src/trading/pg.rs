use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use deadpool_postgres::Transaction;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::{
    retry_after_ms, Fill, Holding, NewOrder, OrderStore, Placed, Positions, Rejection,
    TradingError, ORDERS_ENDPOINT,
};
use crate::domain::{Cents, PlayerId, Quantity, Side, UserId};
use crate::error::Unexpected;
use crate::idempotency::{self, Claim};
use crate::ledger::{posting, AccountUpdate, HoldingChange, Position};
use crate::players::gate;

/// Orders and holdings in Postgres.
pub struct PgOrders {
    pool: Pool,
}

impl PgOrders {
    /// A store using `pool`.
    pub fn new(pool: Pool) -> PgOrders {
        PgOrders { pool }
    }
}

fn unexpected(error: impl Into<Unexpected>) -> TradingError {
    TradingError::Unexpected(error.into())
}

/// How an outcome is kept in `idempotency_keys.outcome`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredOutcome {
    Fill(StoredFill),
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
}

fn encode(outcome: &Result<Fill, Rejection>) -> Result<serde_json::Value, Unexpected> {
    let stored = match outcome {
        Ok(fill) => StoredOutcome::Fill(StoredFill {
            order_id: fill.order_id,
            player_id: fill.player.0,
            side: fill.side.as_str().to_string(),
            quantity: fill.quantity.get(),
            price_cents: fill.price.get(),
            total_cents: fill.total.get(),
            balance_cents: fill.balance.get(),
            epoch: fill.epoch,
            executed_at: fill.executed_at,
        }),
        Err(rejection) => StoredOutcome::Rejected(rejection.code().to_string()),
    };
    serde_json::to_value(stored).map_err(Unexpected::from_error)
}

fn decode(value: serde_json::Value) -> Result<Result<Fill, Rejection>, Unexpected> {
    let corrupt = || Unexpected::msg("corrupt stored order outcome");
    match serde_json::from_value(value).map_err(Unexpected::from_error)? {
        StoredOutcome::Fill(f) => Ok(Ok(Fill {
            order_id: f.order_id,
            player: PlayerId(f.player_id),
            side: Side::parse(&f.side).ok_or_else(corrupt)?,
            quantity: Quantity::new(f.quantity).ok_or_else(corrupt)?,
            price: Cents::new(f.price_cents),
            total: Cents::new(f.total_cents),
            balance: Cents::new(f.balance_cents),
            epoch: f.epoch,
            executed_at: f.executed_at,
        })),
        StoredOutcome::Rejected(code) => Ok(Err(Rejection::from_code(&code).ok_or_else(corrupt)?)),
    }
}

/// Records `outcome` under the order's key and commits.
async fn finish(
    tx: Transaction<'_>,
    order: &NewOrder,
    outcome: Result<Fill, Rejection>,
) -> Result<Placed, TradingError> {
    let stored = encode(&outcome)?;
    let recorded = idempotency::pg::record(
        &tx,
        order.user,
        &order.key,
        ORDERS_ENDPOINT,
        &order.fingerprint,
        &stored,
    )
    .await
    .map_err(unexpected)?;
    if !recorded {
        tx.rollback().await.map_err(unexpected)?;
        return Err(TradingError::KeyReused);
    }
    tx.commit().await.map_err(unexpected)?;
    Ok(Placed {
        outcome,
        replayed: false,
        account: None,
    })
}

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
    })
}

#[async_trait]
impl OrderStore for PgOrders {
    #[tracing::instrument(skip_all, fields(user_id = %order.user, player_id = %order.player))]
    async fn place(&self, order: &NewOrder) -> Result<Placed, TradingError> {
        let mut client = self.pool.get().await.map_err(unexpected)?;
        let tx = client.transaction().await.map_err(unexpected)?;

        match idempotency::pg::claim(
            &tx,
            order.user,
            &order.key,
            ORDERS_ENDPOINT,
            &order.fingerprint,
        )
        .await
        .map_err(unexpected)?
        {
            Claim::Fresh => {}
            Claim::InProgress => {
                tx.rollback().await.map_err(unexpected)?;
                return Err(TradingError::InProgress);
            }
            Claim::Reused => {
                tx.rollback().await.map_err(unexpected)?;
                return Err(TradingError::KeyReused);
            }
            Claim::Replay(stored) => {
                tx.rollback().await.map_err(unexpected)?;
                return Ok(Placed {
                    outcome: decode(stored)?,
                    replayed: true,
                    account: None,
                });
            }
        }

        // The player's trade gate, shared: orders on one player run side by
        // side, but an event waits for them, and an order arriving after an
        // event queues behind it and then reads its epoch and lock. So no
        // order commits at a pre-event epoch once the event is applied.
        gate::enter_trade_gate(&tx, order.player)
            .await
            .map_err(unexpected)?;
        // The user row FOR NO KEY UPDATE, first: every order of one user
        // then takes its locks in the same order (user, then holding), so a
        // buy (cash, then holding) and a sell (holding, then cash) of the
        // same user cannot deadlock. They serialise on the user row anyway.
        let player = tx
            .query_opt(
                "SELECT p.epoch, p.locked_until, clock_timestamp(), nextval('orders_id_seq'),
                        p.price_cents
                   FROM players p, users u
                  WHERE p.id = $1 AND u.id = $2
                    FOR NO KEY UPDATE OF u",
                &[&order.player.0, &order.user.0],
            )
            .await
            .map_err(unexpected)?;
        let Some(player) = player else {
            return finish(tx, order, Err(Rejection::UnknownPlayer)).await;
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
        // Early exits roll back explicitly and wait for it: a dropped
        // transaction rolls back in the background, and until it has, its
        // key lock is held, so the client's immediate retry after a 423
        // would be told 409.
        if let Some(retry_after_ms) = locked_until.and_then(|until| retry_after_ms(until, now)) {
            tx.rollback().await.map_err(unexpected)?;
            return Err(TradingError::PlayerLocked { retry_after_ms });
        }

        let limit_met = match (order.side, order.limit) {
            (_, None) => true,
            (Side::Buy, Some(limit)) => price <= limit,
            (Side::Sell, Some(limit)) => price >= limit,
        };
        if !limit_met {
            return finish(tx, order, Err(Rejection::PriceMoved)).await;
        }
        let total = price.times(order.quantity);
        let txn = format!("order:{order_id}");

        let (posted, holding) = match (order.side, total) {
            // Nobody has more than i64::MAX cents.
            (Side::Buy, None) => {
                return finish(tx, order, Err(Rejection::InsufficientFunds)).await;
            }
            (Side::Sell, None) => {
                return Err(unexpected(Unexpected::msg("sale proceeds overflow i64")));
            }
            (Side::Buy, Some(total)) => {
                let debited = posting::debit_to_market(&tx, order.user, total, &txn)
                    .await
                    .map_err(unexpected)?;
                let Some(posted) = debited else {
                    return finish(tx, order, Err(Rejection::InsufficientFunds)).await;
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
                            &order.user.0,
                            &order.player.0,
                            &order.quantity.get(),
                            &total.get(),
                        ],
                    )
                    .await
                    .map_err(unexpected)?;
                (posted, holding)
            }
            (Side::Sell, Some(total)) => {
                // The guard is the write: no row means too few shares.
                // The cost basis shrinks in proportion (average cost).
                let sold = tx
                    .query_opt(
                        "UPDATE holdings
                            SET quantity = quantity - $3,
                                cost_cents = cost_cents - div(cost_cents::numeric * $3, quantity)::bigint
                          WHERE user_id = $1 AND player_id = $2 AND quantity >= $3
                         RETURNING quantity, cost_cents",
                        &[&order.user.0, &order.player.0, &order.quantity.get()],
                    )
                    .await
                    .map_err(unexpected)?;
                let Some(holding) = sold else {
                    return finish(tx, order, Err(Rejection::InsufficientHoldings)).await;
                };
                let posted = posting::credit_from_market(&tx, order.user, total, &txn)
                    .await
                    .map_err(unexpected)?;
                (posted, holding)
            }
        };
        let balance = posted.cash;
        // What this commit leaves the user with, for the leaderboard.
        let account = AccountUpdate::Holding(HoldingChange {
            user_id: order.user.0,
            revision: posted.revision,
            cash_cents: posted.cash.get(),
            held_cents: posted.held.get(),
            position: Position {
                player_id: order.player.0,
                quantity: holding.get(0),
                cost_cents: holding.get(1),
            },
        });
        let total = total.unwrap_or(Cents::ZERO);

        let executed_at: DateTime<Utc> = tx
            .query_one(
                "INSERT INTO orders (id, user_id, player_id, side, quantity, price_cents,
                                     total_cents, balance_cents, epoch, executed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, clock_timestamp())
                 RETURNING executed_at",
                &[
                    &order_id,
                    &order.user.0,
                    &order.player.0,
                    &order.side.as_str(),
                    &order.quantity.get(),
                    &price.get(),
                    &total.get(),
                    &balance.get(),
                    &epoch,
                ],
            )
            .await
            .map_err(unexpected)?
            .get(0);

        let filled = Fill {
            order_id,
            player: order.player,
            side: order.side,
            quantity: order.quantity,
            price,
            total,
            balance,
            epoch,
            executed_at,
        };
        let mut placed = finish(tx, order, Ok(filled)).await?;
        placed.account = Some(account);
        Ok(placed)
    }

    async fn orders(&self, user: UserId, limit: i64) -> Result<Vec<Fill>, Unexpected> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, player_id, side, quantity, price_cents, total_cents,
                        balance_cents, epoch, executed_at
                   FROM orders WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
                &[&user.0, &limit],
            )
            .await?;
        rows.iter().map(fill).collect()
    }

    async fn positions(&self, user: UserId) -> Result<Positions, Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
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
}
