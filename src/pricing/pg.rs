use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use rand::Rng;
use tokio_postgres::Row;

use super::{
    Applied, AppliedEvent, ListedPlayer, NewEvent, PriceStore, PricingError, PricingRules,
    RecordedEvent, Tick, CORRECTION_SUFFIX,
};
use crate::domain::{Cents, PlayerId};
use crate::error::Unexpected;
use crate::ingest::EventKind;
use crate::players::gate;

/// The engine's state in Postgres.
pub struct PgPrices {
    pool: Pool,
    /// `void_window`: events void the provisional fills they precede.
    voiding: bool,
}

impl PgPrices {
    /// A store using `pool`.
    pub fn new(pool: Pool) -> PgPrices {
        PgPrices {
            pool,
            voiding: false,
        }
    }

    /// Applying an event also voids the provisional fills on its player
    /// that it occurred before (`trading.fairness_policy = void_window`;
    /// fills made under another policy are never provisional, so this only
    /// costs a query).
    pub fn voiding(mut self, voiding: bool) -> PgPrices {
        self.voiding = voiding;
        self
    }
}

fn unexpected(error: impl Into<Unexpected>) -> PricingError {
    PricingError::Unexpected(error.into())
}

fn tick(row: &Row) -> Tick {
    Tick {
        player: PlayerId(row.get(0)),
        price: Cents::new(row.get(1)),
        epoch: row.get(2),
        seq: row.get(3),
        at: row.get(4),
        locked_until: row.get(5),
    }
}

/// Moves one player, its gate closed, to `price` as an event: new anchor,
/// epoch and seq + 1, trade lock from now. `clock_timestamp()` is read after
/// the gate closed, so `applied_at` follows every order that was inside.
const APPLY_SQL: &str = "
    WITH now AS (SELECT clock_timestamp() AS t)
    UPDATE players p
       SET price_cents = $2, anchor_cents = $2, epoch = p.epoch + 1, seq = p.seq + 1,
           price_set_at = now.t, locked_until = now.t + make_interval(secs => $3)
      FROM now
     WHERE p.id = $1
    RETURNING p.epoch, p.seq, p.locked_until, p.price_set_at";

#[allow(clippy::too_many_arguments)] // one call site per kind of move; a struct would only rename them
async fn move_locked_player(
    tx: &tokio_postgres::Transaction<'_>,
    event_id: &str,
    player: PlayerId,
    kind: EventKind,
    before: Cents,
    after: Cents,
    lock: Duration,
    correction: bool,
) -> Result<AppliedEvent, tokio_postgres::Error> {
    let row = tx
        .query_one(APPLY_SQL, &[&player.0, &after.get(), &lock.as_secs_f64()])
        .await?;
    let applied_at: DateTime<Utc> = row.get(3);
    let applied = AppliedEvent {
        event_id: event_id.to_string(),
        player,
        kind,
        price: after,
        epoch: row.get(0),
        seq: row.get(1),
        locked_until: row.get(2),
        applied_at,
        correction,
        voided: Vec::new(),
    };
    tx.execute(
        "UPDATE feed_events SET applied_at = $2, price_before = $3, price_after = $4, epoch = $5
          WHERE event_id = $1",
        &[
            &event_id,
            &applied_at,
            &before.get(),
            &after.get(),
            &applied.epoch,
        ],
    )
    .await?;
    tx.execute(
        "INSERT INTO price_history (player_id, ts, price_cents) VALUES ($1, $2, $3)",
        &[&player.0, &applied_at, &after.get()],
    )
    .await?;
    Ok(applied)
}

#[async_trait]
impl PriceStore for PgPrices {
    #[tracing::instrument(skip_all, fields(event_id = %event.event_id))]
    async fn apply_event(
        &self,
        event: &NewEvent,
        rules: &PricingRules,
        lock: Duration,
    ) -> Result<Applied, PricingError> {
        let mut client = self.pool.get().await.map_err(unexpected)?;
        let tx = client.transaction().await.map_err(unexpected)?;
        // Closing the gate waits for every order inside it; orders arriving
        // now queue behind this event.
        gate::close_trade_gate(&tx, event.player)
            .await
            .map_err(unexpected)?;
        let Some(row) = tx
            .query_opt(
                "SELECT price_cents FROM players WHERE id = $1 FOR NO KEY UPDATE",
                &[&event.player.0],
            )
            .await
            .map_err(unexpected)?
        else {
            return Err(PricingError::UnknownPlayer);
        };
        let before = Cents::new(row.get(0));
        if let Some(fence) = event.fence {
            let holds: bool = tx
                .query_one(&crate::leader::fence_sql(), &[&fence.leader_pid])
                .await
                .map_err(unexpected)?
                .get(0);
            if !holds {
                return Err(PricingError::NotLeader);
            }
        }
        // The primary key is the dedupe: a second replica inserting the same
        // id waits for the first to commit, then inserts nothing.
        let inserted = tx
            .execute(
                "INSERT INTO feed_events (event_id, match_id, player_id, kind, occurred_at, minute)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
                &[
                    &event.event_id,
                    &event.match_id,
                    &event.player.0,
                    &event.kind.as_str(),
                    &event.occurred_at,
                    &event.minute,
                ],
            )
            .await
            .map_err(unexpected)?;
        if inserted == 0 {
            return Ok(Applied::Duplicate);
        }
        let after = rules.after_event(before, event.kind);
        let mut applied = move_locked_player(
            &tx,
            &event.event_id,
            event.player,
            event.kind,
            before,
            after,
            lock,
            false,
        )
        .await
        .map_err(unexpected)?;
        if self.voiding {
            let reason = format!(
                "voided: {} (event {}) occurred at {}, before this fill; the feed delivered it at {}",
                event.kind.as_str(),
                event.event_id,
                event.occurred_at.to_rfc3339(),
                applied.applied_at.to_rfc3339()
            );
            applied.voided =
                crate::trading::void_ahead(&tx, event.player, event.occurred_at, &reason)
                    .await
                    .map_err(PricingError::Unexpected)?;
        }
        tx.commit().await.map_err(unexpected)?;
        Ok(Applied::Applied(applied))
    }

    #[tracing::instrument(skip_all, fields(prefix = %event_id_prefix))]
    async fn revert(
        &self,
        event_id_prefix: &str,
        rules: &PricingRules,
        lock: Duration,
    ) -> Result<Vec<AppliedEvent>, Unexpected> {
        let pattern = format!(
            "{}%",
            event_id_prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let originals = tx
            .query(
                "SELECT event_id, player_id, kind, price_before, price_after FROM feed_events
                  WHERE event_id LIKE $1 AND applied_at IS NOT NULL AND reverted_by IS NULL
                    AND event_id NOT LIKE '%:deleted'
                  ORDER BY player_id, event_id FOR UPDATE",
                &[&pattern],
            )
            .await?;
        let mut corrections = Vec::new();
        for original in originals {
            let original_id: String = original.get(0);
            let player = PlayerId(original.get(1));
            let Some(kind) = EventKind::parse(original.get(2)) else {
                continue;
            };
            gate::close_trade_gate(&tx, player).await?;
            let before: i64 = tx
                .query_one(
                    "SELECT price_cents FROM players WHERE id = $1 FOR NO KEY UPDATE",
                    &[&player.0],
                )
                .await?
                .get(0);
            let correction_id = format!("{original_id}{CORRECTION_SUFFIX}");
            let inserted = tx
                .execute(
                    "INSERT INTO feed_events (event_id, match_id, player_id, kind, occurred_at, minute)
                     SELECT $2, match_id, player_id, kind, clock_timestamp(), minute
                       FROM feed_events WHERE event_id = $1
                     ON CONFLICT (event_id) DO NOTHING",
                    &[&original_id, &correction_id],
                )
                .await?;
            if inserted == 0 {
                continue;
            }
            let before = Cents::new(before);
            let after = rules.after_correction(
                before,
                Cents::new(original.get::<_, Option<i64>>(3).unwrap_or(1)),
                Cents::new(original.get::<_, Option<i64>>(4).unwrap_or(1)),
            );
            let applied =
                move_locked_player(&tx, &correction_id, player, kind, before, after, lock, true)
                    .await?;
            tx.execute(
                "UPDATE feed_events SET reverted_by = $2 WHERE event_id = $1",
                &[&original_id, &correction_id],
            )
            .await?;
            corrections.push(applied);
        }
        tx.commit().await?;
        Ok(corrections)
    }

    async fn ensure_players(
        &self,
        players: &[ListedPlayer],
        price: Cents,
    ) -> Result<HashMap<String, PlayerId>, Unexpected> {
        let refs: Vec<&str> = players.iter().map(|p| p.external_ref.as_str()).collect();
        let names: Vec<&str> = players.iter().map(|p| p.name.as_str()).collect();
        let teams: Vec<&str> = players.iter().map(|p| p.team.as_str()).collect();
        let positions: Vec<&str> = players.iter().map(|p| p.position.as_str()).collect();
        let client = self.pool.get().await?;
        client
            .execute(
                "WITH created AS (
                     INSERT INTO players (external_ref, name, team, position, price_cents, anchor_cents)
                     SELECT r, n, t, p, $5, $5
                       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS v(r, n, t, p)
                     ON CONFLICT (external_ref) DO NOTHING
                     RETURNING id, price_cents
                 )
                 INSERT INTO price_history (player_id, ts, price_cents)
                 SELECT id, now(), price_cents FROM created",
                &[&refs, &names, &teams, &positions, &price.get()],
            )
            .await?;
        let rows = client
            .query(
                "SELECT external_ref, id FROM players WHERE external_ref = ANY($1)",
                &[&refs],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, String>(0), PlayerId(row.get(1))))
            .collect())
    }

    async fn purge_history(&self, retention_hours: i64) -> Result<u64, Unexpected> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "DELETE FROM price_history
                  WHERE ts < now() - make_interval(hours => $1::int)",
                &[&(retention_hours.clamp(1, i32::MAX as i64) as i32)],
            )
            .await?)
    }

    async fn recent_events(
        &self,
        player: Option<PlayerId>,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, Unexpected> {
        let client = self.pool.get().await?;
        // Two statements rather than `player_id = $1 OR $1 IS NULL`, so each
        // uses its own index.
        const COLUMNS: &str = "e.event_id, e.match_id, e.player_id, e.kind, e.minute,
            e.occurred_at, e.applied_at, e.price_before, e.price_after, e.epoch,
            e.reverted_by IS NOT NULL,
            EXISTS (SELECT 1 FROM feed_events o WHERE o.reverted_by = e.event_id)";
        let rows = match player {
            Some(player) => {
                client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM feed_events e
                              WHERE e.player_id = $1 AND e.applied_at IS NOT NULL
                              ORDER BY e.applied_at DESC LIMIT $2"
                        ),
                        &[&player.0, &limit],
                    )
                    .await?
            }
            None => {
                client
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM feed_events e WHERE e.applied_at IS NOT NULL
                              ORDER BY e.applied_at DESC LIMIT $1"
                        ),
                        &[&limit],
                    )
                    .await?
            }
        };
        Ok(rows
            .iter()
            .map(|row| RecordedEvent {
                event_id: row.get(0),
                match_id: row.get(1),
                player: PlayerId(row.get(2)),
                kind: row.get(3),
                minute: row.get(4),
                occurred_at: row.get(5),
                applied_at: row.get(6),
                price_before: Cents::new(row.get::<_, Option<i64>>(7).unwrap_or_default()),
                price_after: Cents::new(row.get::<_, Option<i64>>(8).unwrap_or_default()),
                epoch: row.get::<_, Option<i64>>(9).unwrap_or_default(),
                reverted: row.get(10),
                correction: row.get(11),
            })
            .collect())
    }

    async fn current(&self) -> Result<Vec<Tick>, Unexpected> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, price_cents, epoch, seq, price_set_at, locked_until FROM players",
                &[],
            )
            .await?;
        Ok(rows.iter().map(tick).collect())
    }
}

/// One tick of every unlocked player, on the leader's own connection: if the
/// connection (and with it the leadership lock) is gone, nothing is written.
/// A player whose epoch changed since it was read (an event landed) is
/// skipped, so a tick never overwrites an event's price.
///
/// The batch goes into the price history only when `record_history` (the
/// ticker records every few ticks; events always record).
pub async fn tick_all(
    leader: &tokio_postgres::Client,
    rules: &PricingRules,
    rng: &mut (impl Rng + Send),
    record_history: bool,
) -> Result<Vec<Tick>, tokio_postgres::Error> {
    let rows = leader
        .query(
            "SELECT id, price_cents, anchor_cents, epoch FROM players
              WHERE locked_until IS NULL OR locked_until <= clock_timestamp()",
            &[],
        )
        .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut prices = Vec::with_capacity(rows.len());
    let mut epochs = Vec::with_capacity(rows.len());
    for row in &rows {
        let price = Cents::new(row.get(1));
        let next = rules.tick(price, Cents::new(row.get(2)), rng);
        if next != price {
            ids.push(row.get::<_, i64>(0));
            prices.push(next.get());
            epochs.push(row.get::<_, i64>(3));
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = leader
        .query(
            "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(id, price, epoch)),
                  now AS (SELECT clock_timestamp() AS t),
                  up AS (
                      UPDATE players p SET price_cents = v.price, seq = p.seq + 1, price_set_at = now.t
                        FROM v, now
                       WHERE p.id = v.id AND p.epoch = v.epoch
                         AND (p.locked_until IS NULL OR p.locked_until <= now.t)
                      RETURNING p.id, p.price_cents, p.epoch, p.seq, p.price_set_at, p.locked_until
                  ),
                  history AS (
                      INSERT INTO price_history (player_id, ts, price_cents)
                      SELECT id, price_set_at, price_cents FROM up WHERE $4
                  )
             SELECT * FROM up ORDER BY id",
            &[&ids, &prices, &epochs, &record_history],
        )
        .await?;
    Ok(rows.iter().map(tick).collect())
}
