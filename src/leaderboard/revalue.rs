//! The leader's revaluation: every `leaderboard.interval_ms`, every account
//! at the hub's live prices, the scores that changed written into the set
//! readers are not using, then that set flipped in whole (see `redis.rs`).
//!
//! The leader remembers what it wrote into each set under its term, so a
//! cycle writes only the scores that differ from that set's (prices of
//! players nobody holds, or of a quiet player, change nobody's score). A
//! failed write ends the term, and a new term starts with no memory: its
//! first cycles write every score again. So does a set found missing, and
//! every 30th cycle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fred::bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tokio::sync::watch;

use super::accounts::{self, IdMap, PriceTable};
use super::redis::{self, WriteError};
use super::{publish_top, Leaderboard, TOP_ON_SOCKETS};
use crate::broadcast::messages::LeaderboardMessage;
use crate::leader::Leadership;

/// What the leader knows between cycles.
#[derive(Default)]
struct Revaluer {
    /// The term this replica writes under, once it has one.
    term: Option<String>,
    /// The set readers use.
    current: usize,
    valuer: Valuer,
    /// Cycles written under this term.
    cycles: u64,
}

/// Every this many cycles a set is written in full rather than only where
/// its scores differ, in case Redis lost or rolled back what the leader
/// remembers writing (a restore from an older snapshot keeps the key). While
/// prices tick nearly every score changes each cycle anyway, so this costs
/// little.
const FULL_WRITE_EVERY: u64 = 30;

/// The CPU side of a cycle, run off the async runtime (it takes tens of
/// milliseconds at 100,000 accounts, which would stall every other task on
/// the thread, Redis replies included).
#[derive(Default)]
struct Valuer {
    /// Per set: the score of each user as this term last wrote it there.
    written: [IdMap<i64>; 2],
    /// Reused between cycles.
    values: Vec<(i64, i64)>,
    /// Each user's sorted-set member, encoded once.
    members: IdMap<Bytes>,
}

/// One cycle's valuation, ready to write.
struct Valued {
    batches: Vec<Vec<(i64, Bytes)>>,
    changed: usize,
    top: Vec<(i64, i64)>,
    unpriced: usize,
}

impl Valuer {
    /// Values every account at `prices`, and batches the scores that differ
    /// from what set `target` holds, counting them as written there (the
    /// caller ends the term if writing fails).
    fn value(
        &mut self,
        accounts: &super::Accounts,
        prices: &PriceTable,
        target: usize,
        batch: usize,
    ) -> Valued {
        self.values.clear();
        let valuation = accounts.net_worths(prices, &mut self.values);
        let written = &mut self.written[target];
        let members = &mut self.members;
        let mut changed = 0;
        let mut batches: Vec<Vec<(i64, Bytes)>> = Vec::new();
        for &(user, worth) in &self.values {
            if written.insert(user, worth) == Some(worth) {
                continue;
            }
            changed += 1;
            if batches.last().is_none_or(|b| b.len() >= batch) {
                batches.push(Vec::with_capacity(batch));
            }
            let member = members
                .entry(user)
                .or_insert_with(|| Bytes::from(redis::member(user)));
            if let Some(last) = batches.last_mut() {
                last.push((worth, member.clone()));
            }
        }
        Valued {
            batches,
            changed,
            top: accounts::top(&mut self.values, TOP_ON_SOCKETS),
            unpriced: valuation.unpriced,
        }
    }
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
        match revaluer.cycle(&leaderboard, &leadership, batch).await {
            Ok(()) => {}
            Err(WriteError::Fenced) => {
                tracing::warn!(
                    "leaderboard write fenced: another term holds it; taking a new term"
                );
                revaluer.term = None;
            }
            Err(error) => {
                // What Redis holds is unknown (a flip may even have run and
                // only its reply been lost): start over under a new term.
                tracing::warn!(%error, "leaderboard revaluation failed; taking a new term");
                revaluer.term = None;
            }
        }
    }
}

impl Revaluer {
    async fn cycle(
        &mut self,
        leaderboard: &Leaderboard,
        leadership: &Leadership,
        batch: usize,
    ) -> Result<(), WriteError> {
        let board = &leaderboard.board;
        let term = match &self.term {
            Some(term) => term.clone(),
            None => {
                // A deposed leader that has not noticed yet (its lock's
                // connection half-open) must not take the term back.
                if !leaderboard.holds_lock(leadership).await {
                    return Err(WriteError::Reply(
                        "not the leader by pg_locks; no new term".into(),
                    ));
                }
                let term = board.new_term().await?;
                tracing::info!(%term, "writing the leaderboard under a new term");
                self.term = Some(term.clone());
                self.valuer.written = Default::default();
                self.cycles = 0;
                term
            }
        };

        let started = Instant::now();
        let as_of_ms = Utc::now().timestamp_millis();
        let prices = PriceTable::new(leaderboard.hub.prices());
        let target = 1 - self.current;
        // A set that is gone (expired, evicted, flushed), or due for a full
        // write: everything is written into it again.
        self.cycles += 1;
        if !board.keep(&term, target).await? || self.cycles.is_multiple_of(FULL_WRITE_EVERY) {
            self.valuer.written[target].clear();
        }
        let mut valuer = std::mem::take(&mut self.valuer);
        let accounts = leaderboard.accounts.clone();
        let (valuer, valued) = tokio::task::spawn_blocking(move || {
            let valued = valuer.value(&accounts, &prices, target, batch);
            (valuer, valued)
        })
        .await
        .map_err(|error| WriteError::Reply(format!("valuation task: {error}")))?;
        self.valuer = valuer;
        let metrics = &leaderboard.metrics;
        metrics
            .leaderboard_seconds
            .with_label_values(&["value"])
            .observe(started.elapsed().as_secs_f64());
        metrics
            .leaderboard_accounts
            .set(leaderboard.accounts.len() as i64);
        if valued.unpriced > 0 {
            tracing::debug!(
                unpriced = valued.unpriced,
                "accounts holding a player without a price kept their last score"
            );
        }

        let writing = Instant::now();
        // Pipelined on the leader's own connection, a few at a time.
        let results: Vec<Result<(), WriteError>> = stream::iter(valued.batches)
            .map(|values| {
                let term = &term;
                async move { board.write(term, target, &values).await }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        // Any failure ends the term (see `run`), and with it what this
        // replica remembers writing.
        if let Some(error) = results.into_iter().find_map(Result::err) {
            return Err(error);
        }
        board.keep(&term, target).await?;
        board.flip(&term, target, as_of_ms).await?;
        self.current = target;
        metrics
            .leaderboard_seconds
            .with_label_values(&["write"])
            .observe(writing.elapsed().as_secs_f64());
        metrics.leaderboard_written.inc_by(valued.changed as u64);

        // Every cycle: replicas refresh their cached top from it, and hubs
        // send sockets only a top 10 that changed. (Naming it can fail only
        // in Postgres; the cycle itself is written, so the term goes on.)
        match leaderboard.entries(&valued.top).await {
            Ok(entries) => {
                publish_top(leaderboard, LeaderboardMessage::new(as_of_ms, entries)).await
            }
            Err(error) => tracing::warn!(%error, "naming the top {TOP_ON_SOCKETS} failed"),
        }
        Ok(())
    }
}
