//! Group commit in SQL: a batch of orders in one transaction, with a fixed
//! number of set-based statements whatever its size, in four round trips
//! (begin, reads, writes, commit).
//!
//! 1. Every trade gate, then every user row, each in ascending order (as a
//!    lone order takes them: gate, then user), so batches on other
//!    connections, lone orders and events cannot deadlock with it.
//! 2. Every key's lock tried and every key read, then players, users and
//!    holdings read. Under the user locks nothing else writes those users'
//!    cash or holdings (every writer of either locks the user first), and
//!    inside the gates no event changes the players' epochs or voids fills.
//!    Steps 1 and 2 are one pipelined round trip: the server runs them in
//!    the order they were sent, each in a snapshot taken after the locks
//!    before it were granted.
//! 3. [`plan::decide`] settles each order against that state in arrival
//!    order, by the rules of the one-by-one path.
//! 4. One statement each writes users (guarded by the revision read in 2:
//!    a changed account fails the batch), ledger entries, holdings, orders
//!    and keys, pipelined; then one commit, and only then is any client
//!    answered.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::{encode, replay, PgOrders};
use crate::domain::{Cents, PlayerId, UserId};
use crate::error::Unexpected;
use crate::idempotency::{self, Claim};
use crate::ledger::{posting, AccountUpdate, HoldingChange, Position};
use crate::players::gate;
use crate::trading::plan::{self, BatchState, Decision, HoldingState, PlayerState, UserState};
use crate::trading::{Fill, NewOrder, Order, Placed, Rejection, TradingError, ORDERS_ENDPOINT};

type Answer = Result<Placed, TradingError>;

/// How a batch's statements are planned, for its transaction only (every
/// other query keeps the server's settings).
///
/// Generic plans, made once per connection and kept: planning every
/// statement for every batch cost about 0.7 ms of the 3 ms a batch of 35
/// orders spent in Postgres (docs/benchmarks-history.md, 2026-12-04,
/// fourth session). A kept plan
/// must stay right as the tables grow from nothing, so sequential scans,
/// hash joins and merge joins are off: each statement is planned as
/// primary-key probes, one per row of the batch, at any table size (with
/// them on, the key read's generic plan had been a sequential scan of
/// `idempotency_keys`, 10 ms a batch and growing with the table). The two
/// reads of `orders` ([`CUSTOM_PLANS`]) are the exception.
///
/// And priced for pages in memory: a batch probes rows its own locks and
/// reads have just touched, where the default random_page_cost (4, a disk
/// seek) had the planner hash all 5,000 holdings rather than probe 64 of
/// them (read 0.77 -> 0.34 ms, write 1.13 -> 0.58 ms a batch of 64).
const PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan;
     SET LOCAL enable_seqscan = off;
     SET LOCAL enable_hashjoin = off;
     SET LOCAL enable_mergejoin = off;
     SET LOCAL random_page_cost = 1.1";

/// For the reads of `orders` (a user's provisional proceeds, provisional
/// buys), planned for the batch's arrays and the tables' sizes now: there
/// the planner chooses between two partial indexes of provisional orders,
/// and a generic plan made while they were empty probed the player index
/// and filtered on the user, a scan of every provisional order that would
/// grow with them.
const CUSTOM_PLANS: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// Back to [`PLANS`]' generic plans, for the writes.
const GENERIC_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";

/// Why a batch has no answers.
pub(super) enum BatchFailure {
    /// Nothing of it committed: its orders may be placed again.
    RolledBack(Unexpected),
    /// Its commit failed in a way that leaves the outcome unknown: it may
    /// have committed, so its orders must not be placed again (a retry
    /// with the key tells).
    CommitUnknown(Unexpected),
}

fn rolled_back(error: impl Into<Unexpected>) -> BatchFailure {
    BatchFailure::RolledBack(error.into())
}

impl PgOrders {
    /// Places `orders` (arrival order) in one transaction; their answers,
    /// in the same order, once it has committed.
    pub(super) async fn try_batch(&self, orders: &[NewOrder]) -> Result<Vec<Answer>, BatchFailure> {
        let mut answers: Vec<Option<Answer>> = orders.iter().map(|_| None).collect();
        // A key twice in one batch: the second is a retry racing the first.
        let mut keys = HashSet::new();
        let mut claiming = Vec::with_capacity(orders.len());
        for (at, order) in orders.iter().enumerate() {
            if keys.insert((order.user, order.key.as_str())) {
                claiming.push(at);
            } else {
                answers[at] = Some(Err(TradingError::InProgress));
            }
        }

        let mut client = self.pool.get().await.map_err(rolled_back)?;
        let tx = client.transaction().await.map_err(rolled_back)?;
        if let Err(error) = self.apply(&tx, orders, &claiming, &mut answers).await {
            let _ = tx.rollback().await;
            return Err(BatchFailure::RolledBack(error));
        }
        tx.commit()
            .await
            .map_err(|error| BatchFailure::CommitUnknown(error.into()))?;
        Ok(answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(TradingError::Unexpected(Unexpected::msg(
                        "an order of the batch was not answered",
                    )))
                })
            })
            .collect())
    }

    /// Steps 1–4 of the module's description on `tx`, filling `answers`
    /// for the orders at `claiming`. Err: roll back.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        orders: &[NewOrder],
        claiming: &[usize],
        answers: &mut [Option<Answer>],
    ) -> Result<(), Unexpected> {
        let players: Vec<PlayerId> = sorted(claiming.iter().map(|&at| orders[at].player));
        let users: Vec<i64> = sorted(claiming.iter().map(|&at| orders[at].user.0));
        let wanted: Vec<(UserId, &idempotency::IdempotencyKey, &str)> = claiming
            .iter()
            .map(|&at| {
                (
                    orders[at].user,
                    &orders[at].key,
                    orders[at].fingerprint.as_str(),
                )
            })
            .collect();
        let key_users: Vec<i64> = wanted.iter().map(|(user, _, _)| user.0).collect();
        let key_names: Vec<&str> = wanted.iter().map(|(_, key, _)| key.as_str()).collect();
        let claiming_orders: Vec<&NewOrder> = claiming.iter().map(|&at| &orders[at]).collect();
        // The whole read phase in one round trip, pipelined: the server runs
        // the statements one after another in the order they are sent, each
        // read in a snapshot taken after the locks before it were granted.
        // Every trade gate, then every user row (each ascending, as a lone
        // order takes them, so nothing can deadlock with the batch); then
        // the keys' locks and the keys stored, which a holder that committed
        // before its lock was granted is among; an id for each order (ids
        // are only unique, not gapless: a refused order's goes unused); then
        // the state every order touches, frozen by the locks. A statement
        // is sent when its future is first polled, unless it must be prepared
        // first: the locks' statements are prepared before anything is sent,
        // so on a new connection they still go out first.
        futures_util::future::try_join3(
            tx.prepare_cached(gate::ENTER_TRADE_GATES),
            tx.prepare_cached(posting::LOCK_USERS),
            tx.prepare_cached(idempotency::pg::TRY_LOCK_KEYS),
        )
        .await?;
        let (_, _, _, taken, stored, ids, mut state) = futures_util::try_join!(
            // How the batch's statements are planned: see PLANS.
            async { tx.batch_execute(PLANS).await.map_err(Unexpected::from) },
            async { Ok(gate::enter_trade_gates(tx, &players).await?) },
            async { Ok(posting::lock_users_prepared(tx, &users).await?) },
            async { Ok(idempotency::pg::try_lock_keys(tx, &wanted).await?) },
            async {
                let read = idempotency::pg::STORED_KEYS_GENERIC;
                Ok(idempotency::pg::stored_keys(tx, read, &key_users, &key_names).await?)
            },
            order_ids(tx, claiming.len()),
            // Last: it switches to custom plans for its reads of orders.
            read_state(tx, &claiming_orders),
        )?;
        let claims = idempotency::pg::judge_claims(&wanted, ORDERS_ENDPOINT, taken, stored);
        let mut fresh = Vec::with_capacity(claiming.len());
        for (&at, claim) in claiming.iter().zip(claims) {
            answers[at] = match claim {
                Claim::Fresh => {
                    fresh.push(at);
                    continue;
                }
                Claim::InProgress => Some(Err(TradingError::InProgress)),
                Claim::Reused => Some(Err(TradingError::KeyReused)),
                Claim::Replay(stored) => Some(Ok(Placed {
                    outcome: replay(tx, stored).await?,
                    replayed: true,
                    account: None,
                })),
            };
        }
        if fresh.is_empty() {
            return Ok(());
        }

        let fresh_orders: Vec<&NewOrder> = fresh.iter().map(|&at| &orders[at]).collect();
        let before = state.clone();
        let decisions = plan::decide(&fresh_orders, &mut state, &self.fairness)?;
        let mut ids = ids.into_iter();
        let mut writes = Writes::default();
        for ((&at, order), decision) in fresh.iter().zip(&fresh_orders).zip(decisions) {
            let outcome = match decision {
                Decision::UnknownPlayer => {
                    // Not remembered, as one by one: a retry looks again.
                    answers[at] = Some(Ok(Placed {
                        outcome: Err(Rejection::UnknownPlayer),
                        replayed: false,
                        account: None,
                    }));
                    continue;
                }
                Decision::Locked { .. } | Decision::Provisional { .. } => {
                    answers[at] = decision.refusal().map(Err);
                    continue;
                }
                Decision::Reject(rejection) => {
                    writes.key(order, &Err(rejection))?;
                    Placed {
                        outcome: Err(rejection),
                        replayed: false,
                        account: None,
                    }
                }
                Decision::Fill(planned) => {
                    let order_id = ids
                        .next()
                        .ok_or_else(|| Unexpected::msg("too few order ids"))?;
                    let fill = Fill {
                        order_id,
                        player: order.player,
                        side: order.side,
                        quantity: order.quantity,
                        price: planned.price,
                        total: planned.total,
                        balance: planned.balance,
                        epoch: planned.epoch,
                        executed_at: state.now,
                        status: planned.status,
                        final_at: planned.final_at,
                        reason: None,
                    };
                    writes.fill(order, &fill, planned.basis);
                    let account = AccountUpdate::Holding(HoldingChange {
                        user_id: order.user.0,
                        revision: planned.revision,
                        cash_cents: planned.balance.get(),
                        held_cents: planned.held.get(),
                        position: Position {
                            player_id: order.player.0,
                            quantity: planned.holding.0,
                            cost_cents: planned.holding.1,
                        },
                    });
                    let outcome = Ok(Order::Executed(fill));
                    writes.key(order, &outcome)?;
                    Placed {
                        outcome,
                        replayed: false,
                        account: Some(account),
                    }
                }
            };
            answers[at] = Some(Ok(outcome));
        }
        writes.apply(tx, &before, &state).await
    }
}

/// The distinct values, ascending.
fn sorted<T: Ord>(values: impl Iterator<Item = T>) -> Vec<T> {
    values.collect::<BTreeSet<T>>().into_iter().collect()
}

/// Reads what `orders` touch, at once (pipelined on the connection).
async fn read_state(tx: &Transaction<'_>, orders: &[&NewOrder]) -> Result<BatchState, Unexpected> {
    let players: Vec<i64> = sorted(orders.iter().map(|order| order.player.0));
    let users: Vec<i64> = sorted(orders.iter().map(|order| order.user.0));
    let pairs: Vec<(i64, i64)> = sorted(orders.iter().map(|o| (o.user.0, o.player.0)));
    let sold: Vec<(i64, i64)> = sorted(
        orders
            .iter()
            .filter(|o| o.side == crate::domain::Side::Sell)
            .map(|o| (o.user.0, o.player.0)),
    );
    let (pair_users, pair_players): (Vec<i64>, Vec<i64>) = pairs.into_iter().unzip();
    let (sold_users, sold_players): (Vec<i64>, Vec<i64>) = sold.into_iter().unzip();

    let player_params: [&(dyn ToSql + Sync); 1] = [&players];
    let user_params: [&(dyn ToSql + Sync); 1] = [&users];
    let pair_params: [&(dyn ToSql + Sync); 2] = [&pair_users, &pair_players];
    let sold_params: [&(dyn ToSql + Sync); 2] = [&sold_users, &sold_players];
    let player_statement = tx
        .prepare_cached(
            "SELECT id, epoch, locked_until, price_cents FROM players WHERE id = ANY($1)",
        )
        .await?;
    let player_rows = tx.query(&player_statement, &player_params);
    let holding_statement = tx
        .prepare_cached(
            "SELECT h.user_id, h.player_id, h.quantity, h.cost_cents
             FROM holdings h
             JOIN unnest($1::bigint[], $2::bigint[]) AS p(user_id, player_id)
               ON h.user_id = p.user_id AND h.player_id = p.player_id",
        )
        .await?;
    let holding_rows = tx.query(&holding_statement, &pair_params);
    // `provisional_proceeds(id)` (migration 0006) written out as a lateral
    // join: called per user, the SQL function cost 7.6 µs a user, 0.43 ms
    // of a batch of 64 orders (docs/benchmarks-history.md, 2026-12-04).
    let user_statement = tx
        .prepare_cached(
            "SELECT u.id, u.cash_cents, u.held_cents, coalesce(p.proceeds, 0)::bigint,
                    u.revision, clock_timestamp()
               FROM users u
               LEFT JOIN LATERAL (
                   SELECT sum(o.total_cents) AS proceeds FROM orders o
                    WHERE o.user_id = u.id AND o.status = 'provisional' AND o.side = 'sell'
                      AND o.final_at > clock_timestamp()) p ON true
              WHERE u.id = ANY($1)",
        )
        .await?;
    // Provisional buys of the holdings being sold, as `sell_shares` reads them.
    let provisional_statement = tx
        .prepare_cached(
            "SELECT o.user_id, o.player_id, sum(o.quantity)::bigint,
                   sum(o.cost_basis_cents)::bigint, min(o.final_at)
              FROM orders o
              JOIN unnest($1::bigint[], $2::bigint[]) AS p(user_id, player_id)
                ON o.user_id = p.user_id AND o.player_id = p.player_id
             WHERE o.side = 'buy' AND o.status = 'provisional' AND o.final_at > clock_timestamp()
             GROUP BY o.user_id, o.player_id",
        )
        .await?;
    // Sent in this order (each when first polled): the two reads of
    // `orders` after the switch to custom plans.
    let custom = tx.batch_execute(CUSTOM_PLANS);
    let user_rows = tx.query(&user_statement, &user_params);
    let provisional_rows = tx.query(&provisional_statement, &sold_params);
    let (player_rows, holding_rows, _, user_rows, provisional_rows) = futures_util::try_join!(
        player_rows,
        holding_rows,
        custom,
        user_rows,
        provisional_rows
    )?;

    let now: DateTime<Utc> = user_rows
        .first()
        .map(|row| row.get(5))
        .ok_or_else(|| Unexpected::msg("the batch's users have no accounts"))?;
    let mut state = BatchState {
        now,
        ..BatchState::default()
    };
    for row in &player_rows {
        state.players.insert(
            PlayerId(row.get(0)),
            PlayerState {
                epoch: row.get(1),
                locked_until: row.get(2),
                price: Cents::new(row.get(3)),
            },
        );
    }
    for row in &user_rows {
        state.users.insert(
            UserId(row.get(0)),
            UserState {
                cash: Cents::new(row.get(1)),
                held: Cents::new(row.get(2)),
                provisional_proceeds: Cents::new(row.get(3)),
                revision: row.get(4),
            },
        );
    }
    for row in &holding_rows {
        let holding = state
            .holdings
            .entry((UserId(row.get(0)), PlayerId(row.get(1))))
            .or_default();
        holding.quantity = row.get(2);
        holding.cost = row.get(3);
    }
    for row in &provisional_rows {
        let holding: &mut HoldingState = state
            .holdings
            .entry((UserId(row.get(0)), PlayerId(row.get(1))))
            .or_default();
        holding.provisional_quantity = row.get(2);
        holding.provisional_cost = row.get(3);
        holding.first_final = row.get(4);
    }
    Ok(state)
}

/// `count` new order ids, ascending.
async fn order_ids(tx: &Transaction<'_>, count: usize) -> Result<Vec<i64>, Unexpected> {
    let count = i64::try_from(count).map_err(Unexpected::from_error)?;
    let statement = tx
        .prepare_cached(
            "SELECT coalesce(array_agg(id ORDER BY id), '{}')
               FROM (SELECT nextval('orders_id_seq') AS id FROM generate_series(1, $1::bigint)) ids",
        )
        .await?;
    Ok(tx.query_one(&statement, &[&count]).await?.get(0))
}

/// The rows a batch writes, column by column.
#[derive(Default)]
struct Writes<'a> {
    // orders
    ids: Vec<i64>,
    users: Vec<i64>,
    players: Vec<i64>,
    sides: Vec<&'static str>,
    quantities: Vec<i64>,
    prices: Vec<i64>,
    totals: Vec<i64>,
    balances: Vec<i64>,
    epochs: Vec<i64>,
    statuses: Vec<&'static str>,
    finals: Vec<Option<DateTime<Utc>>>,
    bases: Vec<i64>,
    // idempotency keys
    keys: Vec<(
        UserId,
        &'a idempotency::IdempotencyKey,
        &'a str,
        serde_json::Value,
    )>,
}

impl<'a> Writes<'a> {
    fn fill(&mut self, order: &NewOrder, fill: &Fill, basis: Cents) {
        self.ids.push(fill.order_id);
        self.users.push(order.user.0);
        self.players.push(order.player.0);
        self.sides.push(order.side.as_str());
        self.quantities.push(order.quantity.get());
        self.prices.push(fill.price.get());
        self.totals.push(fill.total.get());
        self.balances.push(fill.balance.get());
        self.epochs.push(fill.epoch);
        self.statuses.push(fill.status.as_str());
        self.finals.push(fill.final_at);
        self.bases.push(basis.get());
    }

    fn key(
        &mut self,
        order: &'a NewOrder,
        outcome: &Result<Order, Rejection>,
    ) -> Result<(), Unexpected> {
        let stored = encode(outcome)?;
        self.keys
            .push((order.user, &order.key, order.fingerprint.as_str(), stored));
        Ok(())
    }

    /// Writes everything, one statement per table, pipelined. `before` and
    /// `after` are the state as read and as [`plan::decide`] left it.
    async fn apply(
        self,
        tx: &Transaction<'_>,
        before: &BatchState,
        after: &BatchState,
    ) -> Result<(), Unexpected> {
        // Each account: its net cash change and how many postings it had,
        // applied only if it is still at the revision read.
        let mut account_users = Vec::new();
        let (mut deltas, mut postings, mut revisions) = (Vec::new(), Vec::new(), Vec::new());
        for (user, now) in &after.users {
            let then = before.users.get(user).copied().unwrap_or(*now);
            if now.revision != then.revision {
                account_users.push(user.0);
                deltas.push(now.cash.get() - then.cash.get());
                postings.push(now.revision - then.revision);
                revisions.push(then.revision);
            }
        }
        let account_params: [&(dyn ToSql + Sync); 4] =
            [&account_users, &deltas, &postings, &revisions];
        let accounts_statement = tx
            .prepare_cached(
                "UPDATE users u SET cash_cents = u.cash_cents + d.delta,
                                   revision = u.revision + d.postings
                  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                       AS d(user_id, delta, postings, revision)
                 WHERE u.id = d.user_id AND u.revision = d.revision",
            )
            .await?;
        let accounts = tx.execute(&accounts_statement, &account_params);
        // Two entries per fill: the user's and the market's, under `order:{id}`.
        let entry_params: [&(dyn ToSql + Sync); 4] =
            [&self.ids, &self.users, &self.sides, &self.totals];
        let entries_statement = tx
            .prepare_cached(
                "INSERT INTO ledger_entries (txn, account, user_id, amount_cents)
                 SELECT 'order:' || f.id, e.account,
                        CASE WHEN e.account = 'user' THEN f.user_id END,
                        CASE WHEN (f.side = 'buy') = (e.account = 'user') THEN -f.total ELSE f.total END
                   FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[])
                        AS f(id, user_id, side, total),
                        (VALUES ('user'), ('market')) AS e(account)",
            )
            .await?;
        let entries = tx.execute(&entries_statement, &entry_params);
        let (mut holding_users, mut holding_players) = (Vec::new(), Vec::new());
        let (mut quantities, mut costs) = (Vec::new(), Vec::new());
        for (pair, now) in &after.holdings {
            let then = before.holdings.get(pair).copied().unwrap_or_default();
            if (now.quantity, now.cost) != (then.quantity, then.cost) {
                holding_users.push(pair.0 .0);
                holding_players.push(pair.1 .0);
                quantities.push(now.quantity - then.quantity);
                costs.push(now.cost - then.cost);
            }
        }
        let holding_params: [&(dyn ToSql + Sync); 4] =
            [&holding_users, &holding_players, &quantities, &costs];
        let holdings_statement = tx
            .prepare_cached(
                // Not an upsert: its CHECKs would judge a sale's negative
                // change as the row to insert. Existing rows are updated, and
                // only the rest inserted (a buy's first shares): those the
                // statement's snapshot has no row for (the user locks keep
                // anyone else from adding one), a primary-key probe each.
                "WITH d AS (
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                               AS d(user_id, player_id, quantity, cost)
             ), updated AS (
                 UPDATE holdings h SET quantity = h.quantity + d.quantity,
                                       cost_cents = h.cost_cents + d.cost
                   FROM d
                  WHERE h.user_id = d.user_id AND h.player_id = d.player_id
             )
             INSERT INTO holdings (user_id, player_id, quantity, cost_cents)
             SELECT d.user_id, d.player_id, d.quantity, d.cost FROM d
              WHERE NOT EXISTS (SELECT 1 FROM holdings h
                                 WHERE h.user_id = d.user_id AND h.player_id = d.player_id)",
            )
            .await?;
        let holdings = tx.execute(&holdings_statement, &holding_params);
        // Every fill of the batch is stamped with the time of its reads.
        let executed_at = after.now;
        let order_params: [&(dyn ToSql + Sync); 13] = [
            &self.ids,
            &self.users,
            &self.players,
            &self.sides,
            &self.quantities,
            &self.prices,
            &self.totals,
            &self.balances,
            &self.epochs,
            &executed_at,
            &self.statuses,
            &self.finals,
            &self.bases,
        ];
        let orders_statement = tx
            .prepare_cached(
                "INSERT INTO orders (id, user_id, player_id, side, quantity, price_cents,
                                     total_cents, balance_cents, epoch, executed_at, status,
                                     final_at, cost_basis_cents)
                 SELECT o.id, o.user_id, o.player_id, o.side, o.quantity, o.price, o.total,
                        o.balance, o.epoch, $10, o.status, o.final_at, o.basis
                   FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                               $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $11::text[],
                               $12::timestamptz[], $13::bigint[])
                        AS o(id, user_id, player_id, side, quantity, price, total, balance, epoch,
                             status, final_at, basis)",
            )
            .await?;
        let orders = tx.execute(&orders_statement, &order_params);
        let keys = idempotency::pg::record_many(tx, &self.keys, ORDERS_ENDPOINT);
        // Sent first: the reads left custom plans on.
        let generic = async {
            tx.batch_execute(GENERIC_PLANS)
                .await
                .map_err(Unexpected::from)
        };
        let (_, accounts_updated, _, _, _, keys_recorded) = futures_util::try_join!(
            generic,
            async { Ok(accounts.await?) },
            async { Ok(entries.await?) },
            async { Ok(holdings.await?) },
            async { Ok(orders.await?) },
            async { Ok(keys.await?) },
        )?;
        if accounts_updated != account_users.len() as u64 {
            return Err(Unexpected::msg(
                "an account changed under the batch's lock: its revision moved",
            ));
        }
        if keys_recorded != self.keys.len() as u64 {
            return Err(Unexpected::msg("an order key was taken during the batch"));
        }
        Ok(())
    }
}
