use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::Transaction;

use super::{AccountState, AuditReport, Ledger, Position};
use crate::domain::{Cents, UserId};
use crate::error::Unexpected;

/// The ledger in Postgres.
pub struct PgLedger {
    pool: Pool,
}

impl PgLedger {
    /// A ledger reading through `pool`.
    pub fn new(pool: Pool) -> PgLedger {
        PgLedger { pool }
    }
}

#[async_trait]
impl Ledger for PgLedger {
    #[tracing::instrument(skip_all)]
    async fn audit(&self) -> Result<AuditReport, Unexpected> {
        let mut client = self.pool.get().await?;
        // One snapshot for every figure, so concurrent trades cannot make a
        // balanced book look unbalanced.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let row = tx
            .query_one(
                "SELECT
                   (SELECT count(*) FROM users),
                   (SELECT coalesce(sum(cash_cents), 0)::bigint FROM users),
                   (SELECT coalesce(sum(held_cents), 0)::bigint FROM users),
                   (SELECT coalesce(sum(amount_cents), 0)::bigint FROM ledger_entries),
                   (SELECT count(*) FROM users WHERE cash_cents < 0 OR held_cents < 0
                                                  OR held_cents > cash_cents),
                   (SELECT count(*) FROM holdings WHERE quantity < 0 OR cost_cents < 0),
                   (SELECT count(*) FROM users u
                      LEFT JOIN (SELECT user_id, sum(amount_cents) AS total
                                   FROM ledger_entries WHERE user_id IS NOT NULL
                                  GROUP BY user_id) l ON l.user_id = u.id
                     WHERE u.cash_cents <> coalesce(l.total, 0)),
                   (SELECT count(*) FROM (SELECT 1 FROM ledger_entries GROUP BY txn
                                           HAVING sum(amount_cents) <> 0) t)",
                &[],
            )
            .await?;
        tx.commit().await?;
        Ok(AuditReport {
            users: row.get(0),
            cash_cents_total: row.get(1),
            held_cents_total: row.get(2),
            ledger_sum_cents: row.get(3),
            negative_cash: row.get(4),
            negative_holdings: row.get(5),
            cash_mismatches: row.get(6),
            unbalanced_transactions: row.get(7),
        })
    }
}

/// Gives each of `users` an opening balance of `amount` from the mint: two
/// entries per user. The users' `cash_cents` must already include it.
pub async fn open_accounts(
    tx: &Transaction<'_>,
    users: &[i64],
    amount: Cents,
) -> Result<(), tokio_postgres::Error> {
    if amount.get() == 0 || users.is_empty() {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO ledger_entries (txn, account, user_id, amount_cents)
         SELECT 'open:' || u, e.account, CASE WHEN e.account = 'user' THEN u END, e.sign * $2
           FROM unnest($1::bigint[]) AS u,
                (VALUES ('user', 1::bigint), ('mint', -1::bigint)) AS e(account, sign)",
        &[&users, &amount.get()],
    )
    .await?;
    Ok(())
}

/// Moves `amount` of the user's spendable cash (cash − held − the proceeds
/// of provisional sells, which a void would take back) to the market,
/// guarded in the statement itself: returns the user's balances after it,
/// or `None` (and changes nothing) when spendable cash is short.
pub async fn debit_to_market(
    tx: &Transaction<'_>,
    user: UserId,
    amount: Cents,
    txn: &str,
) -> Result<Option<Posted>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "WITH debit AS (
                 UPDATE users SET cash_cents = cash_cents - $2, revision = revision + 1
                  WHERE id = $1 AND cash_cents - held_cents - provisional_proceeds($1) >= $2
                 RETURNING cash_cents, held_cents, revision
             ), entries AS (
                 INSERT INTO ledger_entries (txn, account, user_id, amount_cents)
                 SELECT $3, e.account, e.user_id, e.amount
                   FROM debit, (VALUES ('user', $1::bigint, -$2::bigint),
                                       ('market', NULL::bigint, $2::bigint))
                               AS e(account, user_id, amount)
             )
             SELECT cash_cents, held_cents, revision FROM debit",
            &[&user.0, &amount.get(), &txn],
        )
        .await?;
    let posted = row.as_ref().map(Posted::from_row);
    if let Some(posted) = &posted {
        assert!(posted.cash.get() >= 0, "cash went negative for user {user}");
    }
    Ok(posted)
}

/// Moves `amount` from the market to the user; returns the user's balances
/// after it.
pub async fn credit_from_market(
    tx: &Transaction<'_>,
    user: UserId,
    amount: Cents,
    txn: &str,
) -> Result<Posted, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "WITH credit AS (
                 UPDATE users SET cash_cents = cash_cents + $2, revision = revision + 1
                  WHERE id = $1
                 RETURNING cash_cents, held_cents, revision
             ), entries AS (
                 INSERT INTO ledger_entries (txn, account, user_id, amount_cents)
                 SELECT $3, e.account, e.user_id, e.amount
                   FROM credit, (VALUES ('user', $1::bigint, $2::bigint),
                                        ('market', NULL::bigint, -$2::bigint))
                                AS e(account, user_id, amount)
             )
             SELECT cash_cents, held_cents, revision FROM credit",
            &[&user.0, &amount.get(), &txn],
        )
        .await?;
    Ok(Posted::from_row(&row))
}

/// A user's balances right after a posting, and the account's revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub cash: Cents,
    pub held: Cents,
    pub revision: i64,
}

impl Posted {
    fn from_row(row: &tokio_postgres::Row) -> Posted {
        Posted {
            cash: Cents::new(row.get(0)),
            held: Cents::new(row.get(1)),
            revision: row.get(2),
        }
    }
}

/// The user's total and held cash, read on the caller's transaction.
pub async fn balances(
    tx: &Transaction<'_>,
    user: UserId,
) -> Result<Option<(Cents, Cents)>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT cash_cents, held_cents FROM users WHERE id = $1",
            &[&user.0],
        )
        .await?;
    Ok(row.map(|row| (Cents::new(row.get(0)), Cents::new(row.get(1)))))
}

/// Locks `users`' rows in id order, as every transaction that locks more
/// than one user does (holds, captures, voids): two of them sharing users
/// (or an order, which locks one user row) cannot deadlock.
pub async fn lock_users(tx: &Transaction<'_>, users: &[i64]) -> Result<(), tokio_postgres::Error> {
    tx.execute(LOCK_USERS, &[&users]).await?;
    Ok(())
}

/// [`lock_users`] with the statement prepared once per connection (group
/// commit runs it for every batch).
pub async fn lock_users_prepared(
    tx: &deadpool_postgres::Transaction<'_>,
    users: &[i64],
) -> Result<(), tokio_postgres::Error> {
    let lock = tx.prepare_cached(LOCK_USERS).await?;
    tx.execute(&lock, &[&users]).await?;
    Ok(())
}

/// [`lock_users`]' statement.
pub const LOCK_USERS: &str = "SELECT 1 FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// Holds cash for each `(user, amount)` whose spendable cash (cash − held −
/// provisional sale proceeds) covers it, guarded in the statement: returns the users whose hold was
/// placed. Holding moves no money, so it writes no ledger entries; the
/// users' `held_cents` shows it. Users must be distinct.
pub async fn hold_cash(
    tx: &Transaction<'_>,
    holds: &[(UserId, Cents)],
) -> Result<Vec<UserId>, tokio_postgres::Error> {
    if holds.is_empty() {
        return Ok(Vec::new());
    }
    let (users, amounts): (Vec<i64>, Vec<i64>) = holds
        .iter()
        .map(|(user, amount)| (user.0, amount.get()))
        .unzip();
    lock_users(tx, &users).await?;
    let rows = tx
        .query(
            "UPDATE users u SET held_cents = u.held_cents + h.amount, revision = u.revision + 1
               FROM unnest($1::bigint[], $2::bigint[]) AS h(user_id, amount)
              WHERE u.id = h.user_id AND h.amount > 0
                AND u.cash_cents - u.held_cents - provisional_proceeds(u.id) >= h.amount
             RETURNING u.id",
            &[&users, &amounts],
        )
        .await?;
    Ok(rows.iter().map(|row| UserId(row.get(0))).collect())
}

/// Captures holds placed by [`hold_cash`]: for each `(user, amount, txn)`,
/// cash and held both fall by `amount` and the amount moves to the market
/// (two entries under `txn`). A user may appear more than once (their
/// amounts are captured together). Guarded: a user whose held cash is short
/// of their total is not touched. Returns how many captures were made.
pub async fn capture_holds(
    tx: &Transaction<'_>,
    captures: &[(UserId, Cents, String)],
) -> Result<usize, tokio_postgres::Error> {
    if captures.is_empty() {
        return Ok(0);
    }
    let users: Vec<i64> = captures.iter().map(|c| c.0 .0).collect();
    let amounts: Vec<i64> = captures.iter().map(|c| c.1.get()).collect();
    let txns: Vec<&str> = captures.iter().map(|c| c.2.as_str()).collect();
    lock_users(tx, &users).await?;
    let row = tx
        .query_one(
            "WITH c AS (
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])
                               AS c(user_id, amount, txn)
                  WHERE amount > 0
             ), per_user AS (
                 SELECT user_id, sum(amount)::bigint AS amount FROM c GROUP BY user_id
             ), capture AS (
                 UPDATE users u SET cash_cents = u.cash_cents - p.amount,
                                    held_cents = u.held_cents - p.amount,
                                    revision = u.revision + 1
                   FROM per_user p
                  WHERE u.id = p.user_id AND u.held_cents >= p.amount
                 RETURNING u.id
             ), entries AS (
                 INSERT INTO ledger_entries (txn, account, user_id, amount_cents)
                 SELECT c.txn, e.account, CASE WHEN e.account = 'user' THEN c.user_id END,
                        e.sign * c.amount
                   FROM c JOIN capture ON capture.id = c.user_id,
                        (VALUES ('user', -1::bigint), ('market', 1::bigint)) AS e(account, sign)
             )
             SELECT count(*) FROM c JOIN capture ON capture.id = c.user_id",
            &[&users, &amounts, &txns],
        )
        .await?;
    Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// The current state of each of `users` (every user when `None`), read on
/// the caller's transaction or connection: a writer calls it just before it
/// commits, so the state is the one its commit leaves.
pub async fn account_states(
    client: &impl tokio_postgres::GenericClient,
    users: Option<&[i64]>,
) -> Result<Vec<AccountState>, tokio_postgres::Error> {
    const COLUMNS: &str = "SELECT u.id, u.username, u.revision, u.cash_cents, u.held_cents,
               coalesce(array_agg(h.player_id ORDER BY h.player_id)
                        FILTER (WHERE h.quantity > 0), '{}'),
               coalesce(array_agg(h.quantity ORDER BY h.player_id)
                        FILTER (WHERE h.quantity > 0), '{}'),
               coalesce(array_agg(h.cost_cents ORDER BY h.player_id)
                        FILTER (WHERE h.quantity > 0), '{}')
          FROM users u LEFT JOIN holdings h ON h.user_id = u.id";
    // Two statements rather than `$1 IS NULL OR …`, which would cost a
    // writer a scan of every user under a generic plan.
    let rows = match users {
        Some(users) => {
            let sql = format!("{COLUMNS} WHERE u.id = ANY($1) GROUP BY u.id");
            client.query(&sql, &[&users]).await?
        }
        None => {
            let sql = format!("{COLUMNS} GROUP BY u.id");
            client.query(&sql, &[]).await?
        }
    };
    Ok(rows
        .iter()
        .map(|row| {
            let players: Vec<i64> = row.get(5);
            let quantities: Vec<i64> = row.get(6);
            let costs: Vec<i64> = row.get(7);
            AccountState {
                user_id: row.get(0),
                username: row.get(1),
                revision: row.get(2),
                cash_cents: row.get(3),
                held_cents: row.get(4),
                holdings: players
                    .into_iter()
                    .zip(quantities)
                    .zip(costs)
                    .map(|((player_id, quantity), cost_cents)| Position {
                        player_id,
                        quantity,
                        cost_cents,
                    })
                    .collect(),
            }
        })
        .collect())
}
