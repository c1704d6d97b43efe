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
use futures_util::future::join_all;
use tokio::sync::watch;

use super::accounts::{self, PriceTable};
use super::redis::WriteError;
use super::{publish_top, Leaderboard, TOP_ON_SOCKETS};
use crate::broadcast::messages::LeaderboardMessage;
use crate::http::wire::LeaderboardEntry;
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
    /// The top 10 last published.
    published: Vec<LeaderboardEntry>,
    /// Reused between cycles.
    values: Vec<(i64, i64)>,
}

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
                self.published.clear();
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
        // fred pipelines these on its one connection.
        let results = join_all(
            changed
                .chunks(batch)
                .map(|chunk| board.write(&term, target, chunk)),
        )
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
        if entries != self.published {
            self.published = entries.clone();
            publish_top(leaderboard, LeaderboardMessage::new(as_of_ms, entries)).await;
        }
        Ok(())
    }
}
