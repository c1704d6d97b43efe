//! The leader's revaluation: every `leaderboard.interval_ms`, every account
//! at the hub's live prices, the scores that changed written into the set
//! readers are not using, then that set flipped in whole (see `redis.rs`).
//!
//! The leader remembers what it wrote into each set under its term, so a
//! cycle writes only the scores that differ from that set's (prices of
//! players nobody holds, or of a quiet player, change nobody's score). A
//! new term, or any failed write, forgets that memory: the next cycle
//! writes every score again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fred::bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tokio::sync::watch;

use super::accounts::{self, PriceTable};
use super::redis::{self, WriteError};
use super::{publish_top, Leaderboard, TOP_ON_SOCKETS};
use crate::broadcast::messages::LeaderboardMessage;
use crate::leader::Leadership;

/// What the leader knows between cycles.
#[derive(Default)]
struct Revaluer {
    /// The term this replica writes under, once it has one.
    term: Option<String>,
    /// Per set: the score of each user as this term last wrote it there.
    written: [HashMap<i64, i64>; 2],
    /// The set readers use.
    current: usize,
    /// Reused between cycles.
    values: Vec<(i64, i64)>,
    /// Each user's sorted-set member, encoded once.
    members: HashMap<i64, Bytes>,
}

/// Write commands in flight at once: enough to keep Redis busy, few enough
/// that other clients' commands interleave with them (each holds Redis
/// about a millisecond).
const WRITES_IN_FLIGHT: usize = 2;

/// Revalues while this replica leads, until `shutdown` flips.
pub(super) async fn run(
    leaderboard: Arc<Leaderboard>,
    leadership: Leadership,
    interval: Duration,
    batch: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut revaluer = Revaluer::default();
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => {}
        }
        if !leadership.is_leader() {
            if revaluer.term.is_some() {
                tracing::info!("no longer leading; leaderboard revaluation stops here");
                revaluer = Revaluer::default();
            }
            continue;
        }
        match revaluer.cycle(&leaderboard, batch).await {
            Ok(()) => {}
            Err(WriteError::Fenced) => {
                tracing::warn!(
                    "leaderboard write fenced: another term holds it; taking a new term"
                );
                revaluer.term = None;
            }
            Err(error) => tracing::warn!(%error, "leaderboard revaluation failed"),
        }
    }
}

impl Revaluer {
    async fn cycle(&mut self, leaderboard: &Leaderboard, batch: usize) -> Result<(), WriteError> {
        let board = &leaderboard.board;
        let term = match &self.term {
            Some(term) => term.clone(),
            None => {
                let term = board.new_term().await?;
                tracing::info!(%term, "writing the leaderboard under a new term");
                self.term = Some(term.clone());
                self.written = Default::default();
                term
            }
        };

        let started = Instant::now();
        let as_of_ms = Utc::now().timestamp_millis();
        let prices = PriceTable::new(leaderboard.hub.prices());
        self.values.clear();
        let valuation = leaderboard.accounts.net_worths(&prices, &mut self.values);
        let target = 1 - self.current;
        let written = &self.written[target];
        let changed: Vec<(i64, i64)> = self
            .values
            .iter()
            .filter(|(user, worth)| written.get(user) != Some(worth))
            .copied()
            .collect();
        let top = accounts::top(&mut self.values, TOP_ON_SOCKETS);
        let metrics = &leaderboard.metrics;
        metrics
            .leaderboard_seconds
            .with_label_values(&["value"])
            .observe(started.elapsed().as_secs_f64());
        metrics
            .leaderboard_accounts
            .set(leaderboard.accounts.len() as i64);
        if valuation.unpriced > 0 {
            tracing::debug!(
                unpriced = valuation.unpriced,
                "accounts holding a player without a price kept their last score"
            );
        }

        let writing = Instant::now();
        let members = &mut self.members;
        let batches: Vec<Vec<(f64, Bytes)>> = changed
            .chunks(batch)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|&(user, worth)| {
                        let member = members
                            .entry(user)
                            .or_insert_with(|| Bytes::from(redis::member(user)));
                        (redis::score(worth), member.clone())
                    })
                    .collect()
            })
            .collect();
        // Pipelined on the leader's own connection, a few at a time.
        let results: Vec<Result<(), WriteError>> = stream::iter(batches)
            .map(|values| board.write(&term, target, values))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            // Some batches may have landed: what the set holds is unknown.
            self.written[target].clear();
            return Err(error);
        }
        self.written[target].extend(changed.iter().copied());
        if let Err(error) = board.keep(&term, target).await {
            self.written[target].clear();
            return Err(error);
        }
        board.flip(&term, target, as_of_ms).await?;
        self.current = target;
        metrics
            .leaderboard_seconds
            .with_label_values(&["write"])
            .observe(writing.elapsed().as_secs_f64());
        metrics.leaderboard_written.inc_by(changed.len() as u64);

        let entries = leaderboard.entries(&top).await.map_err(|error| {
            WriteError::Reply(format!("naming the top {TOP_ON_SOCKETS}: {error}"))
        })?;
        // Every cycle: replicas refresh their cached top from it, and hubs
        // send sockets only a top 10 that changed.
        publish_top(leaderboard, LeaderboardMessage::new(as_of_ms, entries)).await;
        Ok(())
    }
}
