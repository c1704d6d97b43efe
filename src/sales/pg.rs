//! Sales, purchases, units and the waitlist in Postgres: the truth the
//! Redis inventory is rebuilt from.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::Row;

use super::batcher::{Durable, Reservation};
use super::redis::RedisInventory;
use super::{
    NewSale, Purchase, PurchaseStatus, SaleAudit, SaleInfo, SalesError, PURCHASES_ENDPOINT,
};
use crate::domain::{Cents, PlayerId, UserId};
use crate::error::Unexpected;
use crate::ledger::{posting, AccountState};

/// Advisory lock class of a sale's waitlist (see `players::gate` for the
/// trade gate's class): joins of one sale take positions one at a time.
const WAITLIST_LOCK_CLASS: i32 = 0x4d45;
/// Advisory lock class of a sale's inventory fence: reservation batches and
/// failures hold it shared, a rebuild exclusive.
const INVENTORY_FENCE_CLASS: i32 = 0x4d47;
/// Advisory lock class of one buyer in one sale: `max_per_user` is checked
/// under it in Postgres.
const BUYER_LOCK_CLASS: i32 = 0x4d46;
/// Waitlisted users looked at per failed purchase beyond twice its units
/// (some may already be at their limit, or busy buying).
const WAITLIST_SCAN: i64 = 256;
/// Why a purchase failed for want of cash.
pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";

/// Sales in Postgres.
pub struct PgSales {
    pool: Pool,
}

const SALE_COLUMNS: &str =
    "id, player_id, name, total_units, unit_price_cents, max_per_user, starts_at";

fn sale_info(row: &Row) -> SaleInfo {
    SaleInfo {
        id: row.get(0),
        player: PlayerId(row.get(1)),
        name: row.get(2),
        total_units: row.get(3),
        unit_price: Cents::new(row.get(4)),
        max_per_user: row.get(5),
        starts_at: row.get(6),
    }
}

const PURCHASE_COLUMNS: &str = "p.id, p.sale_id, p.quantity, p.status, p.failure_reason,
     CASE WHEN p.status = 'completed' THEN
         (SELECT array_agg(u.share_number ORDER BY u.share_number)
            FROM purchase_units u WHERE u.purchase_id = p.id)
     END";

fn purchase(row: &Row) -> Result<Purchase, Unexpected> {
    Ok(Purchase {
        id: row.get(0),
        sale_id: row.get(1),
        quantity: row.get(2),
        status: PurchaseStatus::parse(row.get(3))
            .ok_or_else(|| Unexpected::msg("corrupt purchase status"))?,
        failure_reason: row.get(4),
        share_numbers: row.get(5),
    })
}

/// The 202 body a reservation answers with, stored under its key.
pub fn reserved_body(purchase_id: i64, sale_id: i64, quantity: i64) -> serde_json::Value {
    serde_json::json!({
        "purchase_id": purchase_id,
        "sale_id": sale_id,
        "quantity": quantity,
        "status": "reserved",
        "failure_reason": null,
        "share_numbers": null,
    })
}

/// A purchase that failed in settlement, and where its units went.
#[derive(Debug)]
pub struct Failure {
    pub user: UserId,
    pub purchase: Purchase,
    /// The inventory generation the released units belong to.
    pub generation: i64,
    /// Waitlisted users each given one unit, with their new purchase.
    pub granted: Vec<(UserId, Purchase)>,
    /// Unit numbers going back to the counter.
    pub released: Vec<i64>,
}

/// What one HOLD step did.
#[derive(Debug, Default)]
pub struct HoldOutcome {
    pub held: Vec<(UserId, Purchase)>,
    pub failures: Vec<Failure>,
    /// The accounts whose cash was held, as this step's commit left them.
    pub accounts: Vec<AccountState>,
}

/// What a CAPTURE step completed.
#[derive(Debug, Default)]
pub struct Captured {
    pub completed: Vec<(UserId, Purchase)>,
    /// The buyers' accounts as this step's commit left them.
    pub accounts: Vec<AccountState>,
}

impl PgSales {
    /// Sales through `pool`.
    pub fn new(pool: Pool) -> PgSales {
        PgSales { pool }
    }

    /// Creates a sale (inventory generation 1).
    pub async fn create(&self, new: &NewSale) -> Result<SaleInfo, SalesError> {
        let client = self.pool.get().await.map_err(Unexpected::from)?;
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO sales (player_id, name, total_units, unit_price_cents,
                                        max_per_user, starts_at)
                     SELECT id, $2, $3, $4, $5, coalesce($6, now()) FROM players WHERE id = $1
                     RETURNING {SALE_COLUMNS}"
                ),
                &[
                    &new.player.0,
                    &new.name,
                    &new.total_units,
                    &new.unit_price.get(),
                    &new.max_per_user,
                    &new.starts_at,
                ],
            )
            .await
            .map_err(Unexpected::from)?;
        row.map(|row| sale_info(&row))
            .ok_or(SalesError::UnknownPlayer)
    }

    /// One sale.
    pub async fn sale(&self, id: i64) -> Result<Option<SaleInfo>, Unexpected> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {SALE_COLUMNS} FROM sales WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.map(|row| sale_info(&row)))
    }

    /// Every sale, newest first.
    pub async fn sales(&self) -> Result<Vec<SaleInfo>, Unexpected> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {SALE_COLUMNS} FROM sales ORDER BY id DESC"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(sale_info).collect())
    }

    /// Every sale's id.
    pub async fn sale_ids(&self) -> Result<Vec<i64>, Unexpected> {
        let client = self.pool.get().await?;
        let rows = client.query("SELECT id FROM sales", &[]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Everyone who ever held a purchase in the sale.
    pub async fn buyers(&self, sale: i64) -> Result<Vec<i64>, Unexpected> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT DISTINCT user_id FROM purchases WHERE sale_id = $1",
                &[&sale],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Units held by live (not failed) purchases.
    pub async fn live_units(&self, sale: i64) -> Result<i64, Unexpected> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM purchase_units WHERE sale_id = $1",
                &[&sale],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The sale's inventory generation and the units live purchases hold.
    pub async fn inventory_truth(&self, sale: i64) -> Result<(i64, i64), Unexpected> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT generation, (SELECT count(*) FROM purchase_units WHERE sale_id = $1)
                   FROM sales WHERE id = $1",
                &[&sale],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Records a batch of reservations in one transaction (see
    /// [`Durable`] for what can become of each).
    pub async fn record_reservations(
        &self,
        batch: &[Reservation],
    ) -> Result<Vec<Durable>, Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut outcomes: Vec<Option<Durable>> = batch.iter().map(|_| None).collect();

        // The generation fence: a rebuild bumps the generation holding the
        // sale's fence exclusively, so either this batch (holding it
        // shared) commits first and the rebuild counts it, or it sees the
        // new generation and refuses the old one's reservations. An advisory
        // lock rather than a row lock: its queue is fair, so a stream of
        // batches cannot starve a rebuild (see `players::gate`).
        let mut sale_ids: Vec<i64> = batch.iter().map(|r| r.sale_id).collect();
        sale_ids.sort_unstable();
        sale_ids.dedup();
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared($2, (id % 2147483647)::int)
               FROM unnest($1::bigint[]) AS s(id) ORDER BY id",
            &[&sale_ids, &INVENTORY_FENCE_CLASS],
        )
        .await?;
        let sale_rows = tx
            .query(
                "SELECT id, generation, max_per_user FROM sales WHERE id = ANY($1)",
                &[&sale_ids],
            )
            .await?;
        let generations: HashMap<i64, i64> = sale_rows
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let limits: HashMap<i64, i64> = sale_rows
            .iter()
            .filter_map(|row| row.get::<_, Option<i64>>(2).map(|max| (row.get(0), max)))
            .collect();
        let mut live: Vec<usize> = Vec::with_capacity(batch.len());
        for (i, reservation) in batch.iter().enumerate() {
            if generations.get(&reservation.sale_id) == Some(&reservation.generation) {
                live.push(i);
            } else {
                outcomes[i] = Some(Durable::StaleGeneration);
            }
        }

        let ids: Vec<i64> = first_column(
            &tx,
            "SELECT nextval('purchases_id_seq') FROM generate_series(1, $1::bigint)",
            &[&(live.len() as i64)],
        )
        .await?;
        let purchase_of: HashMap<usize, i64> = live.iter().copied().zip(ids).collect();

        // Keys first: a key already used (Redis forgot it, or another
        // endpoint has it) is not a new purchase.
        let users: Vec<i64> = live.iter().map(|&i| batch[i].user.0).collect();
        let keys: Vec<&str> = live.iter().map(|&i| batch[i].key.as_str()).collect();
        let fingerprints: Vec<&str> = live
            .iter()
            .map(|&i| batch[i].fingerprint.as_str())
            .collect();
        let bodies: Vec<String> = live
            .iter()
            .map(|&i| {
                reserved_body(purchase_of[&i], batch[i].sale_id, batch[i].quantity).to_string()
            })
            .collect();
        let inserted: HashSet<(i64, String)> = tx
            .query(
                "INSERT INTO idempotency_keys (user_id, key, endpoint, fingerprint, outcome)
                 SELECT k.user_id, k.key, $3, k.fingerprint, k.outcome::jsonb
                   FROM unnest($1::bigint[], $2::text[], $4::text[], $5::text[])
                        AS k(user_id, key, fingerprint, outcome)
                 ON CONFLICT DO NOTHING
                 RETURNING user_id, key",
                &[&users, &keys, &PURCHASES_ENDPOINT, &fingerprints, &bodies],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        // A key can be inserted once per batch: a second reservation with
        // it in the same batch is a duplicate of the first.
        let mut claimed: HashSet<(i64, String)> = HashSet::new();
        let mut fresh: Vec<usize> = Vec::with_capacity(live.len());
        let mut conflicted: Vec<usize> = Vec::new();
        for &i in &live {
            let key = (batch[i].user.0, batch[i].key.clone());
            if inserted.contains(&key) && claimed.insert(key) {
                fresh.push(i);
            } else {
                conflicted.push(i);
            }
        }
        if !conflicted.is_empty() {
            let users: Vec<i64> = conflicted.iter().map(|&i| batch[i].user.0).collect();
            let keys: Vec<&str> = conflicted.iter().map(|&i| batch[i].key.as_str()).collect();
            let stored = crate::idempotency::pg::stored_keys(
                &tx,
                crate::idempotency::pg::STORED_KEYS,
                &users,
                &keys,
            )
            .await?;
            for &i in &conflicted {
                let reservation = &batch[i];
                outcomes[i] = Some(
                    match stored.get(&(reservation.user.0, reservation.key.clone())) {
                        Some(seen)
                            if seen.is_retry_of(PURCHASES_ENDPOINT, &reservation.fingerprint) =>
                        {
                            Durable::Replay(seen.outcome.clone())
                        }
                        _ => Durable::KeyReused,
                    },
                );
            }
        }

        let fresh = self
            .within_limits(&tx, batch, fresh, &limits, &mut outcomes)
            .await?;

        let ids: Vec<i64> = fresh.iter().map(|i| purchase_of[i]).collect();
        let sales: Vec<i64> = fresh.iter().map(|&i| batch[i].sale_id).collect();
        let users: Vec<i64> = fresh.iter().map(|&i| batch[i].user.0).collect();
        let quantities: Vec<i64> = fresh.iter().map(|&i| batch[i].quantity).collect();
        let keys: Vec<&str> = fresh.iter().map(|&i| batch[i].key.as_str()).collect();
        let amounts: Vec<i64> = fresh.iter().map(|&i| batch[i].amount.get()).collect();
        tx.execute(
            "INSERT INTO purchases (id, sale_id, user_id, quantity, status, idempotency_key,
                                    amount_cents)
             SELECT p.id, p.sale_id, p.user_id, p.quantity, 'reserved', p.key, p.amount
               FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                           $6::bigint[]) AS p(id, sale_id, user_id, quantity, key, amount)",
            &[&ids, &sales, &users, &quantities, &keys, &amounts],
        )
        .await?;

        // The units, under UNIQUE (sale_id, share_number): a number Redis
        // handed out twice is refused here, never sold twice.
        let mut unit_sales = Vec::new();
        let mut unit_numbers = Vec::new();
        let mut unit_purchases = Vec::new();
        for &i in &fresh {
            for &number in &batch[i].numbers {
                unit_sales.push(batch[i].sale_id);
                unit_numbers.push(number);
                unit_purchases.push(purchase_of[&i]);
            }
        }
        let mut recorded: HashMap<i64, Vec<i64>> = HashMap::new();
        for row in tx
            .query(
                "INSERT INTO purchase_units (sale_id, share_number, purchase_id)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
                 ON CONFLICT DO NOTHING
                 RETURNING purchase_id, share_number",
                &[&unit_sales, &unit_numbers, &unit_purchases],
            )
            .await?
        {
            recorded.entry(row.get(0)).or_default().push(row.get(1));
        }
        let mut refused: Vec<i64> = Vec::new();
        for &i in &fresh {
            let id = purchase_of[&i];
            let taken = recorded.remove(&id).unwrap_or_default();
            if taken.len() == batch[i].numbers.len() {
                outcomes[i] = Some(Durable::Recorded(id));
            } else {
                refused.push(id);
                outcomes[i] = Some(Durable::UnitsTaken { free: taken });
            }
        }
        if !refused.is_empty() {
            tracing::warn!(
                count = refused.len(),
                "reservations refused: their units are already sold"
            );
            tx.execute(
                "DELETE FROM purchase_units WHERE purchase_id = ANY($1)",
                &[&refused],
            )
            .await?;
            tx.execute(
                "DELETE FROM idempotency_keys i USING purchases p
                  WHERE p.id = ANY($1) AND i.user_id = p.user_id AND i.key = p.idempotency_key",
                &[&refused],
            )
            .await?;
            tx.execute("DELETE FROM purchases WHERE id = ANY($1)", &[&refused])
                .await?;
        }
        tx.commit().await?;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Durable::Failed {
                    kind: super::batcher::FailureKind::Other,
                    message: "reservation left without an outcome".into(),
                })
            })
            .collect())
    }

    /// Postgres' own check of `max_per_user` (Redis checks first, but its
    /// counts can be behind after a restart): under a per-(sale, user) lock,
    /// the user's live units plus this batch's must fit. Reservations that
    /// do not are refused (their keys forgotten); returns the rest.
    async fn within_limits(
        &self,
        tx: &Transaction<'_>,
        batch: &[Reservation],
        fresh: Vec<usize>,
        limits: &HashMap<i64, i64>,
        outcomes: &mut [Option<Durable>],
    ) -> Result<Vec<usize>, Unexpected> {
        let limited: Vec<usize> = fresh
            .iter()
            .copied()
            .filter(|&i| limits.contains_key(&batch[i].sale_id))
            .collect();
        if limited.is_empty() {
            return Ok(fresh);
        }
        let sales: Vec<i64> = limited.iter().map(|&i| batch[i].sale_id).collect();
        let users: Vec<i64> = limited.iter().map(|&i| batch[i].user.0).collect();
        // The locks in their own statement: a statement's snapshot is taken
        // before it waits, so the counts must be read by the next one.
        tx.execute(
            "SELECT pg_advisory_xact_lock($3, key)
               FROM (SELECT DISTINCT hashtext(sale_id || ':' || user_id) AS key
                       FROM unnest($1::bigint[], $2::bigint[]) AS p(sale_id, user_id)) k
              ORDER BY key",
            &[&sales, &users, &BUYER_LOCK_CLASS],
        )
        .await?;
        let owned: HashMap<(i64, i64), i64> = tx
            .query(
                "SELECT p.sale_id, p.user_id,
                        (SELECT coalesce(sum(quantity), 0)::bigint FROM purchases
                          WHERE sale_id = p.sale_id AND user_id = p.user_id
                            AND status <> 'failed')
                   FROM (SELECT DISTINCT sale_id, user_id
                           FROM unnest($1::bigint[], $2::bigint[]) AS p(sale_id, user_id)) p",
                &[&sales, &users],
            )
            .await?
            .iter()
            .map(|row| ((row.get(0), row.get(1)), row.get(2)))
            .collect();
        let mut running = owned;
        let mut kept = Vec::with_capacity(fresh.len());
        let mut refused_users = Vec::new();
        let mut refused_keys = Vec::new();
        for i in fresh {
            let reservation = &batch[i];
            let Some(&max) = limits.get(&reservation.sale_id) else {
                kept.push(i);
                continue;
            };
            let units = running
                .entry((reservation.sale_id, reservation.user.0))
                .or_insert(0);
            if *units + reservation.quantity <= max {
                *units += reservation.quantity;
                kept.push(i);
            } else {
                outcomes[i] = Some(Durable::LimitExceeded);
                refused_users.push(reservation.user.0);
                refused_keys.push(reservation.key.as_str());
            }
        }
        if !refused_keys.is_empty() {
            tracing::warn!(
                count = refused_keys.len(),
                "reservations over max_per_user refused by postgres"
            );
            tx.execute(
                "DELETE FROM idempotency_keys i
                  USING unnest($1::bigint[], $2::text[]) AS k(user_id, key)
                  WHERE i.user_id = k.user_id AND i.key = k.key",
                &[&refused_users, &refused_keys],
            )
            .await?;
        }
        Ok(kept)
    }

    /// What `idempotency_keys` holds for a key: endpoint, fingerprint and
    /// outcome.
    pub async fn stored_outcome(
        &self,
        user: UserId,
        key: &str,
    ) -> Result<Option<(String, String, serde_json::Value)>, Unexpected> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT endpoint, fingerprint, outcome FROM idempotency_keys
                  WHERE user_id = $1 AND key = $2",
                &[&user.0, &key],
            )
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1), row.get(2))))
    }

    /// One purchase of `user` in `sale`.
    pub async fn purchase(
        &self,
        user: UserId,
        sale: i64,
        id: i64,
    ) -> Result<Option<Purchase>, Unexpected> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {PURCHASE_COLUMNS} FROM purchases p
                      WHERE p.id = $1 AND p.sale_id = $2 AND p.user_id = $3"
                ),
                &[&id, &sale, &user.0],
            )
            .await?;
        row.map(|row| purchase(&row)).transpose()
    }

    /// Every purchase of `user` in `sale`, oldest first.
    pub async fn purchases(&self, user: UserId, sale: i64) -> Result<Vec<Purchase>, Unexpected> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {PURCHASE_COLUMNS} FROM purchases p
                      WHERE p.sale_id = $1 AND p.user_id = $2 ORDER BY p.id"
                ),
                &[&sale, &user.0],
            )
            .await?;
        rows.iter().map(purchase).collect()
    }

    /// The user's place on the sale's waitlist, if they joined.
    pub async fn waitlist_position(
        &self,
        sale: i64,
        user: UserId,
    ) -> Result<Option<i64>, Unexpected> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT position FROM sale_waitlist WHERE sale_id = $1 AND user_id = $2",
                &[&sale, &user.0],
            )
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Joins the waitlist: `(position, newly joined)`.
    pub async fn join_waitlist(&self, sale: i64, user: UserId) -> Result<(i64, bool), Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, ($2::bigint % 2147483647)::int)",
            &[&WAITLIST_LOCK_CLASS, &sale],
        )
        .await?;
        let joined = tx
            .query_opt(
                "INSERT INTO sale_waitlist (sale_id, user_id, position)
                 SELECT $1, $2, coalesce(max(position), 0) + 1 FROM sale_waitlist WHERE sale_id = $1
                 ON CONFLICT (sale_id, user_id) DO NOTHING
                 RETURNING position",
                &[&sale, &user.0],
            )
            .await?;
        let result = match joined {
            Some(row) => (row.get(0), true),
            None => {
                let row = tx
                    .query_one(
                        "SELECT position FROM sale_waitlist WHERE sale_id = $1 AND user_id = $2",
                        &[&sale, &user.0],
                    )
                    .await?;
                (row.get(0), false)
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    /// The sale's units and charges, from one snapshot.
    pub async fn audit(&self, sale: i64) -> Result<SaleAudit, Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let row = tx
            .query_one(
                "SELECT s.total_units,
                   (SELECT coalesce(sum(quantity), 0)::bigint FROM purchases
                     WHERE sale_id = s.id AND status = 'completed'),
                   (SELECT coalesce(sum(quantity), 0)::bigint FROM purchases
                     WHERE sale_id = s.id AND status = 'held'),
                   (SELECT coalesce(sum(quantity), 0)::bigint FROM purchases
                     WHERE sale_id = s.id AND status = 'reserved'),
                   (SELECT count(*) FROM purchases p WHERE p.sale_id = s.id
                       AND (SELECT count(*) FROM purchase_units u WHERE u.purchase_id = p.id)
                           <> CASE WHEN p.status = 'failed' THEN 0 ELSE p.quantity END)
                   + (SELECT count(*) FROM purchase_units u
                       WHERE u.sale_id = s.id AND u.share_number > s.total_units)
                   + (SELECT count(*) FROM purchase_units u
                       WHERE u.sale_id = s.id
                         AND NOT EXISTS (SELECT 1 FROM purchases p
                                          WHERE p.id = u.purchase_id AND p.sale_id = s.id
                                            AND p.status <> 'failed')),
                   (SELECT count(*) FROM purchases p WHERE p.sale_id = s.id
                       AND coalesce((SELECT sum(l.amount_cents) FROM ledger_entries l
                                      WHERE l.txn = 'purchase:' || p.id AND l.txn LIKE 'purchase:%'
                                        AND l.account = 'user'), 0)
                           <> CASE WHEN p.status = 'completed' THEN -p.amount_cents ELSE 0 END)
                   FROM sales s WHERE s.id = $1",
                &[&sale],
            )
            .await?;
        tx.commit().await?;
        let total: i64 = row.get(0);
        let (completed, held, reserved): (i64, i64, i64) = (row.get(1), row.get(2), row.get(3));
        Ok(SaleAudit {
            total_units: total,
            completed_units: completed,
            held_units: held,
            reserved_units: reserved,
            remaining_units: total - completed - held - reserved,
            inventory_counter: None,
            unit_mismatches: row.get(4),
            charge_mismatches: row.get(5),
        })
    }

    /// Rebuilds the sale's Redis inventory from Postgres as a new
    /// generation, unless someone else already has: `seen` is the Redis
    /// generation that looked wrong (`None`: Redis had none). The sale's
    /// fence stays held exclusively until the new inventory is installed,
    /// so no reservation batch, failure or other rebuild can interleave. Returns the
    /// new generation, or `None` when there was nothing to do.
    pub async fn rebuild(
        &self,
        info: &SaleInfo,
        seen: Option<i64>,
        inventory: &RedisInventory,
    ) -> Result<Option<i64>, Unexpected> {
        let mut client = self.pool.get().await?;
        // A cheap look first, without the fence: when someone else has
        // already rebuilt, taking the fence exclusively would stall every
        // batch for nothing.
        let current: i64 = client
            .query_one("SELECT generation FROM sales WHERE id = $1", &[&info.id])
            .await?
            .get(0);
        if rebuilt_elsewhere(inventory, info.id, current, seen)
            .await?
            .0
        {
            return Ok(None);
        }
        let tx = client.transaction().await?;
        // The fence, exclusive, first: its own statement, so the generation
        // read next is the one no batch or failure can still be using.
        tx.execute(
            "SELECT pg_advisory_xact_lock($2, ($1::bigint % 2147483647)::int)",
            &[&info.id, &INVENTORY_FENCE_CLASS],
        )
        .await?;
        let generation: i64 = tx
            .query_one("SELECT generation FROM sales WHERE id = $1", &[&info.id])
            .await?
            .get(0);
        // Looked at again under the fence: someone may have finished a
        // rebuild while this one waited for it.
        let (done, now) = rebuilt_elsewhere(inventory, info.id, generation, seen).await?;
        if done {
            tx.rollback().await?;
            return Ok(None);
        }
        let next_generation = generation.max(now.unwrap_or(0)) + 1;
        tx.execute(
            "UPDATE sales SET generation = $2 WHERE id = $1",
            &[&info.id, &next_generation],
        )
        .await?;
        let taken: Vec<i64> = first_column(
            &tx,
            "SELECT share_number FROM purchase_units WHERE sale_id = $1 ORDER BY share_number",
            &[&info.id],
        )
        .await?;
        let buyers: Vec<(i64, i64)> = tx
            .query(
                "SELECT user_id, sum(quantity)::bigint FROM purchases
                  WHERE sale_id = $1 AND status <> 'failed' GROUP BY user_id",
                &[&info.id],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let (next_fresh, free) = free_units(&taken);
        inventory
            .install(info, next_generation, next_fresh, &free, &buyers)
            .await
            .map_err(Unexpected::from_error)?;
        tx.commit().await?;
        tracing::info!(
            sale_id = info.id,
            generation = next_generation,
            remaining = info.total_units - taken.len() as i64,
            "sale inventory rebuilt from postgres"
        );
        Ok(Some(next_generation))
    }

    /// HOLD: claims up to `max` reserved purchases (each user's oldest
    /// pending one only, so a user's purchases settle in order and never
    /// block anyone else's) and holds their cash; those whose buyer is
    /// short fail, and their units go to the waitlist or back.
    pub async fn hold_step(&self, max: i64) -> Result<HoldOutcome, Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT p.id, p.user_id, p.sale_id, p.quantity, p.amount_cents
                   FROM purchases p
                  WHERE p.status = 'reserved'
                    AND NOT EXISTS (SELECT 1 FROM purchases o
                                     WHERE o.user_id = p.user_id AND o.id < p.id
                                       AND o.status IN ('reserved', 'held'))
                  ORDER BY p.id
                  LIMIT $1
                    FOR UPDATE OF p SKIP LOCKED",
                &[&max],
            )
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(HoldOutcome::default());
        }
        let holds: Vec<(UserId, Cents)> = rows
            .iter()
            .map(|row| (UserId(row.get(1)), Cents::new(row.get(4))))
            .collect();
        let held_users: HashSet<UserId> =
            posting::hold_cash(&tx, &holds).await?.into_iter().collect();
        let mut outcome = HoldOutcome::default();
        let mut held_ids = Vec::new();
        // Failures lock their sale's waitlist rows: in sale order, so two
        // workers failing purchases of the same sales cannot deadlock.
        let mut rows: Vec<&Row> = rows.iter().collect();
        rows.sort_by_key(|row| (row.get::<_, i64>(2), row.get::<_, i64>(0)));
        for row in rows {
            let user = UserId(row.get(1));
            let purchase = Purchase {
                id: row.get(0),
                sale_id: row.get(2),
                quantity: row.get(3),
                status: PurchaseStatus::Held,
                failure_reason: None,
                share_numbers: None,
            };
            if held_users.contains(&user) {
                held_ids.push(purchase.id);
                outcome.held.push((user, purchase));
            } else {
                outcome.failures.push(fail(&tx, user, purchase).await?);
            }
        }
        tx.execute(
            "UPDATE purchases SET status = 'held', updated_at = now() WHERE id = ANY($1)",
            &[&held_ids],
        )
        .await?;
        let held_users: Vec<i64> = held_users.iter().map(|user| user.0).collect();
        if !held_users.is_empty() {
            outcome.accounts = posting::account_states(&*tx, Some(&held_users)).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// CAPTURE: claims up to `max` held purchases and completes them: cash
    /// and held fall by the amount, which moves to the market in the
    /// ledger, and the units become holdings of the sale's player.
    pub async fn capture_step(&self, max: i64) -> Result<Captured, Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "SELECT p.id, p.user_id, p.sale_id, p.quantity, p.amount_cents, s.player_id
                   FROM purchases p JOIN sales s ON s.id = p.sale_id
                  WHERE p.status = 'held'
                  ORDER BY p.id
                  LIMIT $1
                    FOR UPDATE OF p SKIP LOCKED",
                &[&max],
            )
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Captured::default());
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        let captures: Vec<(UserId, Cents, String)> = rows
            .iter()
            .map(|row| {
                let id: i64 = row.get(0);
                (
                    UserId(row.get(1)),
                    Cents::new(row.get(4)),
                    format!("purchase:{id}"),
                )
            })
            .collect();
        let captured = posting::capture_holds(&tx, &captures).await?;
        if captured != rows.len() {
            // A held purchase whose cash is not held: a broken invariant.
            tx.rollback().await?;
            return Err(Unexpected::msg(format!(
                "captured {captured} of {} held purchases: held cash is missing",
                rows.len()
            )));
        }
        let users: Vec<i64> = rows.iter().map(|row| row.get(1)).collect();
        let players: Vec<i64> = rows.iter().map(|row| row.get(5)).collect();
        let quantities: Vec<i64> = rows.iter().map(|row| row.get(3)).collect();
        let amounts: Vec<i64> = rows.iter().map(|row| row.get(4)).collect();
        // Grouped: one user may have more than one purchase here (their
        // reservations can commit out of id order, and so be held apart).
        tx.execute(
            "INSERT INTO holdings (user_id, player_id, quantity, cost_cents)
             SELECT user_id, player_id, sum(quantity)::bigint, sum(cost)::bigint
               FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                    AS h(user_id, player_id, quantity, cost)
              GROUP BY user_id, player_id
             ON CONFLICT (user_id, player_id) DO UPDATE
                SET quantity = holdings.quantity + EXCLUDED.quantity,
                    cost_cents = holdings.cost_cents + EXCLUDED.cost_cents",
            &[&users, &players, &quantities, &amounts],
        )
        .await?;
        tx.execute(
            "UPDATE purchases SET status = 'completed', updated_at = now() WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
        let mut numbers: HashMap<i64, Vec<i64>> = tx
            .query(
                "SELECT purchase_id, array_agg(share_number ORDER BY share_number)
                   FROM purchase_units WHERE purchase_id = ANY($1) GROUP BY purchase_id",
                &[&ids],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let accounts = posting::account_states(&*tx, Some(&users)).await?;
        tx.commit().await?;
        let completed = rows
            .iter()
            .map(|row| {
                let id: i64 = row.get(0);
                (
                    UserId(row.get(1)),
                    Purchase {
                        id,
                        sale_id: row.get(2),
                        quantity: row.get(3),
                        status: PurchaseStatus::Completed,
                        failure_reason: None,
                        share_numbers: Some(numbers.remove(&id).unwrap_or_default()),
                    },
                )
            })
            .collect();
        Ok(Captured {
            completed,
            accounts,
        })
    }
}

/// Whether someone else has rebuilt since the caller looked: Redis holds
/// Postgres' `generation`, and it is not the one that looked wrong (`seen`).
/// Also returns the generation Redis holds.
async fn rebuilt_elsewhere(
    inventory: &RedisInventory,
    sale: i64,
    generation: i64,
    seen: Option<i64>,
) -> Result<(bool, Option<i64>), Unexpected> {
    let installed = inventory
        .state(sale)
        .await
        .map_err(Unexpected::from_error)?
        .map(|state| state.generation);
    Ok((
        installed == Some(generation) && installed != seen,
        installed,
    ))
}

/// The first column of every row `sql` returns, on the caller's transaction.
async fn first_column(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    Ok(tx
        .query(sql, params)
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The next never-sold number and the gaps below it, from the sorted unit
/// numbers live purchases hold.
pub fn free_units(taken: &[i64]) -> (i64, Vec<i64>) {
    let next_fresh = taken.last().map_or(1, |last| last + 1);
    let mut free = Vec::new();
    let mut expected = 1;
    for &number in taken {
        free.extend(expected..number);
        expected = number + 1;
    }
    (next_fresh, free)
}

/// Fails a purchase for want of cash, inside the HOLD transaction: each of
/// its units goes to the next waitlisted user who may still buy (as a new
/// reserved purchase of one unit), the rest back to the counter.
async fn fail(
    tx: &Transaction<'_>,
    user: UserId,
    mut purchase: Purchase,
) -> Result<Failure, Unexpected> {
    tx.execute(
        "UPDATE purchases SET status = 'failed', failure_reason = $2, updated_at = now()
          WHERE id = $1",
        &[&purchase.id, &INSUFFICIENT_FUNDS],
    )
    .await?;
    purchase.status = PurchaseStatus::Failed;
    purchase.failure_reason = Some(INSUFFICIENT_FUNDS.to_string());
    // Under the sale's fence, shared: the generation read here is the one
    // whose inventory does not yet count these units; a rebuild waits for
    // this commit.
    // Two statements: a statement's snapshot is taken before it waits, so
    // the generation must be read by the next one.
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($2, ($1::bigint % 2147483647)::int)",
        &[&purchase.sale_id, &INVENTORY_FENCE_CLASS],
    )
    .await?;
    let sale = tx
        .query_one(
            "SELECT generation, max_per_user, unit_price_cents FROM sales WHERE id = $1",
            &[&purchase.sale_id],
        )
        .await?;
    let generation: i64 = sale.get(0);
    let max_per_user: Option<i64> = sale.get(1);
    let unit_price: i64 = sale.get(2);
    let mut units: Vec<i64> = first_column(
        tx,
        "SELECT share_number FROM purchase_units WHERE purchase_id = $1 ORDER BY share_number",
        &[&purchase.id],
    )
    .await?;
    let mut granted = Vec::new();
    if !units.is_empty() {
        let waiting = tx
            .query(
                "SELECT w.user_id
                   FROM sale_waitlist w
                  WHERE w.sale_id = $1 AND w.purchase_id IS NULL AND w.user_id <> $2
                  ORDER BY w.position
                  LIMIT $3
                    FOR UPDATE OF w",
                &[
                    &purchase.sale_id,
                    &user.0,
                    &(units.len() as i64 * 2 + WAITLIST_SCAN),
                ],
            )
            .await?;
        for row in waiting {
            let Some(&number) = units.first() else { break };
            let waiter = UserId(row.get(0));
            if let Some(max) = max_per_user {
                // The same lock reservation batches check the limit under;
                // a try-lock, so this can never deadlock with a batch (a
                // waiter whose lock is busy is skipped this time).
                let locked: bool = tx
                    .query_one(
                        "SELECT pg_try_advisory_xact_lock($3, hashtext($1::bigint || ':' || $2::bigint))",
                        &[&purchase.sale_id, &waiter.0, &BUYER_LOCK_CLASS],
                    )
                    .await?
                    .get(0);
                if !locked {
                    continue;
                }
                // Counted after the lock, in a statement of its own.
                let owned: i64 = tx
                    .query_one(
                        "SELECT coalesce(sum(quantity), 0)::bigint FROM purchases
                          WHERE sale_id = $1 AND user_id = $2 AND status <> 'failed'",
                        &[&purchase.sale_id, &waiter.0],
                    )
                    .await?
                    .get(0);
                if owned + 1 > max {
                    continue;
                }
            }
            let id: i64 = tx
                .query_one(
                    "INSERT INTO purchases (sale_id, user_id, quantity, status, amount_cents)
                     VALUES ($1, $2, 1, 'reserved', $3) RETURNING id",
                    &[&purchase.sale_id, &waiter.0, &unit_price],
                )
                .await?
                .get(0);
            tx.execute(
                "UPDATE purchase_units SET purchase_id = $3 WHERE sale_id = $1 AND share_number = $2",
                &[&purchase.sale_id, &number, &id],
            )
            .await?;
            tx.execute(
                "UPDATE sale_waitlist SET purchase_id = $3 WHERE sale_id = $1 AND user_id = $2",
                &[&purchase.sale_id, &waiter.0, &id],
            )
            .await?;
            units.remove(0);
            granted.push((waiter, Purchase::reserved(id, purchase.sale_id, 1)));
        }
    }
    let released: Vec<i64> = first_column(
        tx,
        "DELETE FROM purchase_units WHERE purchase_id = $1 RETURNING share_number",
        &[&purchase.id],
    )
    .await?;
    tracing::info!(
        purchase_id = purchase.id,
        granted = granted.len(),
        released = released.len(),
        at = %Utc::now(),
        "purchase failed: insufficient funds"
    );
    Ok(Failure {
        user,
        purchase,
        generation,
        granted,
        released,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_units_are_the_gaps_below_the_highest_taken_number() {
        assert_eq!(free_units(&[]), (1, vec![]));
        assert_eq!(free_units(&[1, 2, 3]), (4, vec![]));
        assert_eq!(free_units(&[2, 5]), (6, vec![1, 3, 4]));
    }

    #[test]
    fn the_stored_reservation_body_is_the_apis_purchase_shape() {
        let body = reserved_body(7, 3, 2);
        assert_eq!(body["purchase_id"], 7);
        assert_eq!(body["status"], "reserved");
        assert!(body["share_numbers"].is_null() && body["failure_reason"].is_null());
    }
}
