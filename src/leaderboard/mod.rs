//! Leaderboard: every user ranked by net worth (cash, held cash included,
//! plus every holding at the live price), and live portfolio values.
//!
//! Every replica keeps an in-memory copy of every account
//! ([`accounts::Accounts`]): loaded from Postgres at start, kept current by
//! the [`AccountState`]s that writers (orders, drop settlement,
//! registration) hand to the [`AccountSink`] after they commit — applied at
//! once on the writing replica and published on the bus for the others —
//! and reloaded from Postgres every `leaderboard.resync_seconds` and after
//! the bus reconnects. States carry the account's `revision`, so nothing
//! heard late or twice moves an account backwards.
//!
//! Once per `leaderboard.interval_ms` the leader values every account at the
//! hub's live prices (on the blocking pool: tens of milliseconds at 100,000
//! accounts) and writes the scores that changed to a Redis sorted set in
//! pipelined batches (`redis.rs`: two sets per term written in turn, flipped
//! whole, only by the term's holder), then publishes the top 10 with the
//! cycle's `as_of`. Hubs forward it to `leaderboard` sockets when the top 10
//! changed; every replica then caches the cycle's first 1,000 rows, which
//! answer `GET /leaderboard`; `/leaderboard/me` is one script on Redis
//! (`ZRANK`). Every replica also pushes each of its signed-in sockets a
//! `portfolio` message when that user's value changes.
//!
//! Ties: equal net worth ranks the lower user id first.

mod accounts;
mod pg;
mod redis;
mod revalue;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use accounts::{Accounts, PriceTable};
pub use redis::ACCOUNTS_CHANNEL;

use crate::broadcast::messages::LeaderboardMessage;
use crate::broadcast::{Hub, LEADERBOARD_CHANNEL};
use crate::bus::Bus;
use crate::config::{LeaderboardSettings, RedisSettings};
use crate::domain::{Cents, PlayerId, UserId};
use crate::error::Unexpected;
use crate::http::wire::{LeaderboardEntry, PortfolioMessage, PortfolioResponse};
use crate::leader::Leadership;
use crate::ledger::{AccountSink, AccountState, AccountUpdate};
use crate::metrics::Metrics;
use crate::players::Quote;
use crate::trading::{value_portfolio, Holding, Positions};
use redis::{Board, Standing};

/// Account states waiting to be published; past this they are dropped with
/// a warning (the next resync repairs every replica's copy).
const ACCOUNT_QUEUE: usize = 16_384;
/// Account states sent in one publish, at most.
const ACCOUNTS_PER_PUBLISH: usize = 512;
/// How often each replica refreshes its `leaderboard` snapshot from Redis,
/// in case it missed a published top 10.
const SNAPSHOT_REFRESH: Duration = Duration::from_secs(5);
/// How long a registration waits for its new users to be ranked in Redis.
const JOIN_WAIT: Duration = Duration::from_millis(500);
/// How often accounts that missed an update are reloaded from Postgres.
const REPAIR_INTERVAL: Duration = Duration::from_millis(100);
/// Rows in the `leaderboard` channel's messages.
pub const TOP_ON_SOCKETS: usize = 10;
/// Rows each replica keeps of the latest revaluation, so `GET /leaderboard`
/// (at most this many) never waits on Redis.
const CACHED_TOP: usize = 1_000;

/// Why the leaderboard cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum LeaderboardError {
    /// No revaluation has been written yet (just started, or Redis lost it
    /// and the leader is rewriting it), or Redis is unreachable.
    #[error("the leaderboard is not available yet")]
    Unavailable,
    #[error(transparent)]
    Unexpected(#[from] Unexpected),
}

/// The first users of one revaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranking {
    pub as_of: DateTime<Utc>,
    pub entries: Vec<LeaderboardEntry>,
}

/// One user's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub rank: i64,
    pub net_worth: Cents,
    pub total_users: i64,
    pub as_of: DateTime<Utc>,
}

/// The leaderboard service of one replica.
pub struct Leaderboard {
    accounts: Arc<Accounts>,
    board: Board,
    hub: Arc<Hub>,
    pool: Pool,
    metrics: Arc<Metrics>,
    outbox: mpsc::Sender<AccountUpdate>,
    /// The first [`CACHED_TOP`] of the latest revaluation heard of.
    cached: std::sync::RwLock<Option<Cached>>,
    /// How long after it was read the cache answers before a read goes to
    /// Redis instead: a revaluation interval and a second.
    cache_for: Duration,
    /// The `as_of_ms` of the latest revaluation announced on the bus.
    announced: watch::Sender<i64>,
    /// Set when account states may have been missed: reload them all.
    reload_wanted: tokio::sync::Notify,
}

/// A revaluation's first rows, as read from Redis.
struct Cached {
    as_of_ms: i64,
    entries: Arc<Vec<LeaderboardEntry>>,
    /// When it was read (this replica's clock, not the leader's).
    read_at: std::time::Instant,
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

impl Leaderboard {
    /// Loads every account, subscribes to the bus, and starts this replica's
    /// tasks: the bus listener and publisher, the resync and portfolio
    /// loop, and the revaluation (which only works while leading).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        pool: Pool,
        bus: Bus,
        redis: &RedisSettings,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        settings: &LeaderboardSettings,
        leadership: Leadership,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<Leaderboard>, Vec<JoinHandle<()>>), Unexpected> {
        let (outbox, queued) = mpsc::channel(ACCOUNT_QUEUE);
        let writer = Bus::extra_connection(redis)
            .await
            .map_err(Unexpected::from_error)?;
        let leaderboard = Arc::new(Leaderboard {
            accounts: Arc::new(Accounts::default()),
            board: Board::new(bus.clone(), writer),
            hub,
            pool,
            metrics,
            outbox,
            cached: std::sync::RwLock::new(None),
            cache_for: Duration::from_millis(settings.interval_ms.saturating_add(1_000)),
            announced: watch::channel(0).0,
            reload_wanted: tokio::sync::Notify::new(),
        });
        let messages = bus.messages();
        let reconnections = bus.reconnections();
        bus.subscribe_retrying(ACCOUNTS_CHANNEL).await;
        bus.subscribe_retrying(LEADERBOARD_CHANNEL).await;
        leaderboard.reload().await?;
        leaderboard.refresh_snapshot().await;
        let interval = Duration::from_millis(settings.interval_ms.max(10));
        let tasks = vec![
            tokio::spawn(publish(bus.clone(), queued)),
            tokio::spawn(listen(
                leaderboard.clone(),
                bus,
                messages,
                reconnections,
                shutdown.clone(),
            )),
            tokio::spawn(cache_loop(leaderboard.clone(), shutdown.clone())),
            tokio::spawn(replica_loop(
                leaderboard.clone(),
                interval,
                Duration::from_secs(settings.resync_seconds.max(1)),
                shutdown.clone(),
            )),
            tokio::spawn(revalue::run(
                leaderboard.clone(),
                leadership,
                interval,
                settings.write_batch.max(1),
                shutdown,
            )),
        ];
        Ok((leaderboard, tasks))
    }

    /// Every account, from Postgres.
    async fn reload(&self) -> Result<usize, Unexpected> {
        let states = pg::all_accounts(&self.pool).await?;
        // Tens of milliseconds at 100,000 accounts: off the async runtime.
        let accounts = self.accounts.clone();
        let changed = tokio::task::spawn_blocking(move || accounts.reload(states))
            .await
            .map_err(Unexpected::from_error)?;
        self.metrics
            .leaderboard_accounts
            .set(self.accounts.len() as i64);
        Ok(changed)
    }

    /// [`Leaderboard::reload`], logging the outcome.
    async fn reload_logged(&self) {
        match self.reload().await {
            Ok(changed) => tracing::debug!(changed, "accounts reloaded"),
            Err(error) => tracing::warn!(%error, "reloading accounts failed"),
        }
    }

    /// Whether Postgres says this replica's leader session still holds the
    /// leader lock (a half-open connection can leave `is_leader` true).
    async fn holds_lock(&self, leadership: &Leadership) -> bool {
        let Some(fence) = leadership.fence() else {
            return false;
        };
        match pg::holds_leader_lock(&self.pool, fence).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "checking the leader lock failed");
                false
            }
        }
    }

    /// Reloads from Postgres the accounts whose copy missed an update.
    async fn repair(&self) -> Result<usize, Unexpected> {
        let stale = self.accounts.take_stale();
        if stale.is_empty() {
            return Ok(0);
        }
        let states = pg::accounts_of(&self.pool, &stale).await;
        match states {
            Ok(states) => Ok(self.accounts.reload(states)),
            Err(error) => {
                // Tried again at the next repair.
                self.accounts.mark_stale(stale);
                Err(error)
            }
        }
    }

    /// The first `limit` (at most [`CACHED_TOP`]) users of the latest
    /// revaluation: from this replica's copy of its first rows while that is
    /// recent, else read again from Redis.
    pub async fn top(&self, limit: usize) -> Result<Ranking, LeaderboardError> {
        let fresh = {
            let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
            cached
                .as_ref()
                .filter(|c| c.read_at.elapsed() < self.cache_for)
                .map(|c| (c.as_of_ms, c.entries.clone()))
        };
        let (as_of_ms, entries) = match fresh {
            Some(fresh) => fresh,
            None => {
                let cached = self
                    .refresh_cache(0)
                    .await
                    .ok_or(LeaderboardError::Unavailable)?;
                (cached.as_of_ms, cached.entries)
            }
        };
        Ok(Ranking {
            as_of: from_ms(as_of_ms),
            entries: entries
                .iter()
                .take(limit.min(CACHED_TOP))
                .cloned()
                .collect(),
        })
    }

    /// `user`'s place in the latest revaluation.
    pub async fn place(&self, user: UserId) -> Result<Place, LeaderboardError> {
        match self.board.standing(user.0).await {
            Ok(Some(Standing::Ranked {
                as_of_ms,
                rank,
                net_worth,
                total,
            })) => Ok(Place {
                rank,
                net_worth: Cents::new(net_worth),
                total_users: total,
                as_of: from_ms(as_of_ms),
            }),
            Ok(_) => Err(LeaderboardError::Unavailable),
            Err(error) => {
                tracing::warn!(%error, "reading a rank failed");
                Err(LeaderboardError::Unavailable)
            }
        }
    }

    /// Rows for `(user, net worth)` pairs in rank order, with usernames
    /// (from the copy; from Postgres for anyone it has not heard of yet).
    async fn entries(&self, ranked: &[(i64, i64)]) -> Result<Vec<LeaderboardEntry>, Unexpected> {
        let mut names: HashMap<i64, String> = HashMap::with_capacity(ranked.len());
        let mut unknown = Vec::new();
        for &(user, _) in ranked {
            match self.accounts.username(user) {
                Some(name) => {
                    names.insert(user, name.to_string());
                }
                None => unknown.push(user),
            }
        }
        if !unknown.is_empty() {
            names.extend(pg::usernames(&self.pool, &unknown).await?);
        }
        Ok(ranked
            .iter()
            .zip(1..)
            .map(|(&(user, worth), rank)| LeaderboardEntry {
                rank,
                user_id: user,
                username: names.remove(&user).unwrap_or_default(),
                net_worth_cents: worth,
            })
            .collect())
    }

    /// New users, ranked at once at their opening balance (the leader's
    /// next revaluation includes them anyway).
    pub async fn joined(&self, users: &[(UserId, String)], opening: Cents) {
        let states: Vec<AccountUpdate> = users
            .iter()
            .map(|(user, username)| {
                AccountUpdate::Full(AccountState {
                    user_id: user.0,
                    username: username.clone(),
                    revision: 0,
                    cash_cents: opening.get(),
                    held_cents: 0,
                    holdings: Vec::new(),
                })
            })
            .collect();
        self.accounts_changed(states);
        let scores: Vec<(i64, i64)> = users.iter().map(|(u, _)| (u.0, opening.get())).collect();
        // Bounded: with Redis down a registration must not wait out the
        // command timeout for this; the leader's next cycle ranks them.
        match tokio::time::timeout(JOIN_WAIT, self.board.join(&scores)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "ranking new users failed; the next revaluation will")
            }
            Err(_) => tracing::warn!("ranking new users timed out; the next revaluation will"),
        }
    }

    /// Reads the latest revaluation's first rows into the cache unless it
    /// already holds one at least as new as `as_of_ms`; returns what it then
    /// holds.
    async fn refresh_cache(&self, as_of_ms: i64) -> Option<Cached> {
        let held = {
            let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
            cached.as_ref().map(|c| Cached {
                as_of_ms: c.as_of_ms,
                entries: c.entries.clone(),
                read_at: c.read_at,
            })
        };
        let recent = |c: &Cached| c.read_at.elapsed() < self.cache_for;
        if as_of_ms > 0
            && held
                .as_ref()
                .is_some_and(|c| c.as_of_ms >= as_of_ms && recent(c))
        {
            return held;
        }
        let top = match self.board.top(CACHED_TOP).await {
            Ok(Some(top)) => top,
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(%error, "reading the leaderboard failed");
                return None;
            }
        };
        let entries = match self.entries(&top.entries).await {
            Ok(entries) => Arc::new(entries),
            Err(error) => {
                tracing::warn!(%error, "naming the leaderboard failed");
                return None;
            }
        };
        let read_at = std::time::Instant::now();
        let mut cached = self.cached.write().unwrap_or_else(|p| p.into_inner());
        // Newer, or the held one is old (a new leader's clock may be behind
        // the last one's: `as_of` alone cannot order them).
        if cached
            .as_ref()
            .is_none_or(|c| c.as_of_ms < top.as_of_ms || !recent(c))
        {
            *cached = Some(Cached {
                as_of_ms: top.as_of_ms,
                entries: entries.clone(),
                read_at,
            });
        }
        Some(Cached {
            as_of_ms: top.as_of_ms,
            entries,
            read_at,
        })
    }

    /// Refreshes the cache, and the hub's `leaderboard` snapshot from it,
    /// from Redis.
    async fn refresh_snapshot(&self) {
        if let Some(cached) = self.refresh_cache(0).await {
            let entries = cached
                .entries
                .iter()
                .take(TOP_ON_SOCKETS)
                .cloned()
                .collect();
            self.hub
                .leaderboard_changed(&LeaderboardMessage::new(cached.as_of_ms, entries));
        }
    }

    /// Pushes a `portfolio` message to each signed-in socket of this replica
    /// whose user's value changed since it was last sent one.
    fn push_portfolios(&self, sent: &mut HashMap<u64, u64>) {
        let sockets = self.hub.user_sockets();
        if sockets.is_empty() {
            sent.clear();
            return;
        }
        let prices = PriceTable::new(self.hub.prices());
        let as_of = crate::http::wire::timestamp(Utc::now());
        let mut by_user: HashMap<i64, Vec<u64>> = HashMap::new();
        for (user, socket) in &sockets {
            by_user.entry(*user).or_default().push(*socket);
        }
        for (user, ids) in by_user {
            let Some(body) = self.portfolio_of(user, &prices) else {
                continue;
            };
            let Ok(json) = serde_json::to_string(&body) else {
                continue;
            };
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            json.hash(&mut hasher);
            let fingerprint = hasher.finish();
            let pending: Vec<u64> = ids
                .into_iter()
                .filter(|id| sent.get(id) != Some(&fingerprint))
                .collect();
            if pending.is_empty() {
                continue;
            }
            let message = PortfolioMessage {
                message_type: "portfolio",
                as_of: as_of.clone(),
                portfolio: body,
            };
            let Ok(message) = serde_json::to_string(&message) else {
                continue;
            };
            let message = ByteString::from(message);
            for id in pending {
                if self.hub.offer_to_socket(id, &message) {
                    sent.insert(id, fingerprint);
                }
            }
        }
        let open: HashSet<u64> = sockets.iter().map(|(_, id)| *id).collect();
        sent.retain(|id, _| open.contains(id));
    }

    /// `user`'s portfolio from the copy at `prices`, if every holding has one.
    fn portfolio_of(&self, user: i64, prices: &PriceTable) -> Option<PortfolioResponse> {
        let state = self.accounts.state(user)?;
        let mut quotes = Vec::with_capacity(state.holdings.len());
        for holding in &state.holdings {
            quotes.push(Quote {
                player_id: PlayerId(holding.player_id),
                price: Cents::new(prices.get(holding.player_id)?),
                epoch: 0,
                locked_until: None,
            });
        }
        let positions = Positions {
            cash: Cents::new(state.cash_cents),
            held: Cents::new(state.held_cents),
            holdings: state
                .holdings
                .iter()
                .map(|h| Holding {
                    player: PlayerId(h.player_id),
                    quantity: h.quantity,
                    cost: Cents::new(h.cost_cents),
                })
                .collect(),
        };
        value_portfolio(positions, &quotes)
            .ok()
            .map(PortfolioResponse::from)
    }
}

impl AccountSink for Leaderboard {
    fn accounts_changed(&self, updates: Vec<AccountUpdate>) {
        for update in &updates {
            if self.outbox.try_send(update.clone()).is_err() {
                tracing::warn!(
                    user_id = update.user_id(),
                    "account queue full; other replicas catch up at the next resync"
                );
            }
        }
        self.accounts.apply(updates);
    }
}

/// Publishes queued account states, many per message.
async fn publish(bus: Bus, mut queued: mpsc::Receiver<AccountUpdate>) {
    let mut batch = Vec::with_capacity(ACCOUNTS_PER_PUBLISH);
    while let Some(first) = queued.recv().await {
        batch.push(first);
        while batch.len() < ACCOUNTS_PER_PUBLISH {
            let Ok(next) = queued.try_recv() else { break };
            batch.push(next);
        }
        match serde_json::to_string(&batch) {
            Ok(payload) => {
                if let Err(error) = bus.publish(ACCOUNTS_CHANNEL, payload).await {
                    tracing::warn!(%error, states = batch.len(), "publishing account states failed");
                }
            }
            Err(error) => tracing::warn!(%error, "encoding account states failed"),
        }
        batch.clear();
    }
}

/// Applies account states other replicas publish; reloads from Postgres
/// whenever some may have been missed.
async fn listen(
    leaderboard: Arc<Leaderboard>,
    bus: Bus,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut reconnections: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let channel = bus.key(ACCOUNTS_CHANNEL);
    let cycles = bus.key(LEADERBOARD_CHANNEL);
    loop {
        let missed = tokio::select! {
            _ = shutdown.changed() => return,
            reconnected = reconnections.recv() => match reconnected {
                Ok(_) | Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
            message = messages.recv() => match message {
                Ok(message) if *message.channel == *channel => {
                    let Some(payload) = message.value.as_str() else { continue };
                    match serde_json::from_str::<Vec<AccountUpdate>>(&payload) {
                        Ok(states) => {
                            leaderboard.accounts.apply(states);
                        }
                        Err(error) => tracing::warn!(%error, "malformed account states"),
                    }
                    false
                }
                Ok(message) if *message.channel == *cycles => {
                    // A revaluation was flipped in: the cache task reads its
                    // first rows (this loop only decodes and applies, so it
                    // keeps up with the bus).
                    let Some(payload) = message.value.as_str() else { continue };
                    if let Ok(top) = serde_json::from_str::<LeaderboardMessage>(&payload) {
                        leaderboard.announced.send_replace(top.as_of_ms);
                    }
                    false
                }
                Ok(_) => false,
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
        };
        if missed {
            tracing::info!("account states may have been missed; reloading from postgres");
            // Coalesced: however often this fires, one reload at a time.
            leaderboard.reload_wanted.notify_one();
        }
    }
}

/// Caches the first rows of each revaluation announced on the bus.
async fn cache_loop(leaderboard: Arc<Leaderboard>, mut shutdown: watch::Receiver<bool>) {
    let mut announced = leaderboard.announced.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = announced.changed() => {
                if changed.is_err() {
                    return;
                }
                let as_of_ms = *announced.borrow_and_update();
                leaderboard.refresh_cache(as_of_ms).await;
            }
        }
    }
}

/// Every replica: portfolio pushes every `interval`, a reload from Postgres
/// every `resync`, and the `leaderboard` snapshot refreshed now and then.
async fn replica_loop(
    leaderboard: Arc<Leaderboard>,
    interval: Duration,
    resync: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pushes = tokio::time::interval(interval);
    pushes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reloads = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
    reloads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut repairs = tokio::time::interval(REPAIR_INTERVAL);
    repairs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut refreshes = tokio::time::interval(SNAPSHOT_REFRESH);
    refreshes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                leaderboard.board.close().await;
                return;
            }
            _ = pushes.tick() => {
                // Valuing and encoding every signed-in user: off the runtime.
                let replica = leaderboard.clone();
                let mut taken = std::mem::take(&mut sent);
                sent = tokio::task::spawn_blocking(move || {
                    replica.push_portfolios(&mut taken);
                    taken
                })
                .await
                .unwrap_or_default();
            }
            _ = reloads.tick() => leaderboard.reload_logged().await,
            _ = leaderboard.reload_wanted.notified() => leaderboard.reload_logged().await,
            _ = refreshes.tick() => leaderboard.refresh_snapshot().await,
            _ = repairs.tick() => {
                if let Err(error) = leaderboard.repair().await {
                    tracing::warn!(%error, "reloading stale accounts failed");
                }
            }
        }
    }
}

/// Publishes a top 10 to every replica's hub (this one's at once).
async fn publish_top(leaderboard: &Leaderboard, message: LeaderboardMessage) {
    leaderboard.hub.leaderboard_changed(&message);
    match serde_json::to_string(&message) {
        Ok(json) => {
            if let Err(error) = leaderboard
                .board
                .bus()
                .publish(LEADERBOARD_CHANNEL, json)
                .await
            {
                tracing::warn!(%error, "publishing the top 10 failed");
            }
        }
        Err(error) => tracing::warn!(%error, "encoding the top 10 failed"),
    }
}
