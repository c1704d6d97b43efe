use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::{NewPlayer, Player, PlayerStore, PricePoint, PriceReader, Quote};
use crate::domain::{Cents, PlayerId};
use crate::error::Unexpected;

/// The catalog and its prices in Postgres.
pub struct PgPlayers {
    pool: Pool,
}

impl PgPlayers {
    /// A catalog using `pool`.
    pub fn new(pool: Pool) -> PgPlayers {
        PgPlayers { pool }
    }
}

const PLAYER_COLUMNS: &str = "id, name, team, position, price_cents, epoch, locked_until";

/// The catalog's columns plus the day's opening price: the last history
/// point before midnight UTC (the price the day opened at), else the day's
/// first (a player listed today), else the current price. Each is one probe
/// of `price_history_player_ts` per player.
const PLAYER_WITH_OPEN: &str = "SELECT p.id, p.name, p.team, p.position, p.price_cents, p.epoch,
            p.locked_until, COALESCE(before_midnight.price_cents, first_today.price_cents, p.price_cents)
       FROM players p
       LEFT JOIN LATERAL (
            SELECT h.price_cents FROM price_history h
             WHERE h.player_id = p.id
               AND h.ts < date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             ORDER BY h.ts DESC LIMIT 1
       ) before_midnight ON true
       LEFT JOIN LATERAL (
            SELECT h.price_cents FROM price_history h
             WHERE h.player_id = p.id
               AND h.ts >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             ORDER BY h.ts ASC LIMIT 1
       ) first_today ON true";

fn player(row: &Row) -> Player {
    Player {
        id: PlayerId(row.get(0)),
        name: row.get(1),
        team: row.get(2),
        position: row.get(3),
        price: Cents::new(row.get(4)),
        epoch: row.get(5),
        locked_until: row.get::<_, Option<DateTime<Utc>>>(6),
        open_price: Cents::new(row.get(7)),
    }
}

fn quote(row: &Row) -> Quote {
    Quote {
        player_id: PlayerId(row.get(0)),
        price: Cents::new(row.get(1)),
        epoch: row.get(2),
        locked_until: row.get(3),
    }
}

#[async_trait]
impl PlayerStore for PgPlayers {
    #[tracing::instrument(skip_all)]
    async fn create(&self, new: NewPlayer) -> Result<Player, Unexpected> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO players (name, team, position, price_cents, anchor_cents)
                     VALUES ($1, $2, $3, $4, $4) RETURNING {PLAYER_COLUMNS}, price_cents"
                ),
                &[&new.name, &new.team, &new.position, &new.price.get()],
            )
            .await?;
        let created = player(&row);
        tx.execute(
            "INSERT INTO price_history (player_id, ts, price_cents) VALUES ($1, now(), $2)",
            &[&created.id.0, &created.price.get()],
        )
        .await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn list(&self) -> Result<Vec<Player>, Unexpected> {
        let client = self.pool.get().await?;
        let rows = client
            .query(&format!("{PLAYER_WITH_OPEN} ORDER BY p.id"), &[])
            .await?;
        Ok(rows.iter().map(player).collect())
    }

    async fn get(&self, id: PlayerId) -> Result<Option<Player>, Unexpected> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(&format!("{PLAYER_WITH_OPEN} WHERE p.id = $1"), &[&id.0])
            .await?;
        Ok(row.as_ref().map(player))
    }

    async fn history(&self, id: PlayerId, limit: i64) -> Result<Vec<PricePoint>, Unexpected> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT ts, price_cents FROM (
                     SELECT ts, price_cents FROM price_history WHERE player_id = $1
                      ORDER BY ts DESC LIMIT $2
                 ) latest ORDER BY ts",
                &[&id.0, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| PricePoint {
                ts: row.get(0),
                price: Cents::new(row.get(1)),
            })
            .collect())
    }
}

#[async_trait]
impl PriceReader for PgPlayers {
    async fn quote(&self, id: PlayerId) -> Result<Option<Quote>, Unexpected> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id, price_cents, epoch, locked_until FROM players WHERE id = $1",
                &[&id.0],
            )
            .await?;
        Ok(row.as_ref().map(quote))
    }

    async fn quotes(&self, ids: &[PlayerId]) -> Result<Vec<Quote>, Unexpected> {
        let raw: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, price_cents, epoch, locked_until FROM players WHERE id = ANY($1)",
                &[&raw],
            )
            .await?;
        Ok(rows.iter().map(quote).collect())
    }
}

/// Lock class of the per-player trade gate, in Postgres' two-integer
/// advisory lock space (apart from every single-bigint key we use).
const TRADE_GATE_CLASS: i32 = 0x4d44; // "MD"

fn gate_key(player: PlayerId) -> i32 {
    // Ids beyond i32 fold onto others: two players then share a gate, which
    // only serialises more, never less.
    i32::try_from(player.0).unwrap_or((player.0 % i32::MAX as i64) as i32)
}

/// An order passes the gate of its player (shared: orders run side by side)
/// until its transaction ends.
pub async fn enter_trade_gate(
    tx: &tokio_postgres::Transaction<'_>,
    player: PlayerId,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1, $2)",
        &[&TRADE_GATE_CLASS, &gate_key(player)],
    )
    .await?;
    Ok(())
}

/// A batch of orders passes the gates of all its players, in ascending
/// order of their lock keys (so two batches cannot deadlock).
pub async fn enter_trade_gates(
    tx: &deadpool_postgres::Transaction<'_>,
    players: &[PlayerId],
) -> Result<(), tokio_postgres::Error> {
    let mut keys: Vec<i32> = players.iter().map(|player| gate_key(*player)).collect();
    keys.sort_unstable();
    keys.dedup();
    let enter = tx.prepare_cached(ENTER_TRADE_GATES).await?;
    tx.execute(&enter, &[&TRADE_GATE_CLASS, &keys]).await?;
    Ok(())
}

/// [`enter_trade_gates`]'s statement.
pub const ENTER_TRADE_GATES: &str = "SELECT count(pg_advisory_xact_lock_shared($1, k))
   FROM (SELECT k FROM unnest($2::int[]) AS k ORDER BY k) gates";

/// An event closes its player's gate (exclusive) until its transaction
/// ends: it waits for the orders inside, and orders arriving after it queue
/// behind it. Heavyweight locks queue fairly, so a stream of orders cannot
/// starve an event the way it starves an UPDATE behind `FOR SHARE` row locks.
pub async fn close_trade_gate(
    tx: &tokio_postgres::Transaction<'_>,
    player: PlayerId,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&TRADE_GATE_CLASS, &gate_key(player)],
    )
    .await?;
    Ok(())
}
