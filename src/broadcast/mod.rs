//! Broadcast: prices, events and users' own fills to WebSocket clients.
//!
//! Every replica runs one [`Hub`]: one Redis subscription (never one per
//! socket), a table of the latest price per player, and the registry of its
//! sockets. Prices are conflated by construction: a socket does not queue
//! ticks, it remembers the last `seq` it sent per player and, every
//! `broadcast.flush_ms`, sends one frame with whatever is newer in the table.
//! Each tick is serialised once per replica and the bytes are shared.
//! Events and a user's own fills are never conflated: they go through a
//! bounded per-socket queue, and a socket whose queue stays full is closed
//! (1013) so it reconnects and takes a fresh snapshot.
//!
//! Never computes prices and never touches Postgres except to resynchronise
//! the price table.

mod frames;
pub mod messages;
pub mod ws;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytestring::ByteString;
use tokio::sync::{mpsc, watch};

use crate::bus::Bus;
use crate::domain::UserId;
use crate::pricing::{AppliedEvent, PriceSink, PriceStore, Tick};
use crate::sales::{Purchase, PurchaseNotifier, SaleStateSink, SaleStatus};
use crate::trading::{FillNotifier, Order};
use messages::BusTick;

/// Bus channel of price ticks (a JSON array per message).
pub const PRICES_CHANNEL: &str = "broadcast:prices";
/// Bus channel of applied events (the `event` wire message itself).
pub const EVENTS_CHANNEL: &str = "broadcast:events";
/// Redis hash of every player's current price (`BusTick` JSON by player
/// id): what a replica's hub resynchronises from.
pub const PRICES_STATE: &str = "broadcast:prices:state";
/// Bus channel of per-user messages: lines of `<user_id>|<wire message>`.
/// (Named apart from the older one-message-per-publish channel, so a replica
/// of the older version in a rolling deploy never misreads a batch.)
pub const USERS_CHANNEL: &str = "broadcast:user-lines";
/// Bus channel of the leaderboard's top 10 (the `leaderboard` wire message).
pub const LEADERBOARD_CHANNEL: &str = "broadcast:leaderboard";
/// Messages a socket may have queued (events, fills, replies) before it
/// counts as stuck.
pub const SOCKET_QUEUE: usize = 256;
/// How often the price table is reloaded from the current state in Redis
/// (or Postgres when Redis has none), repairing anything a lost pub/sub
/// message left stale.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// The latest price of one player, pre-serialised.
#[derive(Clone)]
pub struct Slot {
    pub seq: i64,
    pub price_cents: i64,
    /// `{"player_id",…,"ts_ms"}` as it appears inside a `prices` frame.
    pub tick_json: ByteString,
    /// The `player:{id}` snapshot `data`, with `locked_until`.
    pub snapshot_json: ByteString,
}

/// What the hub knows of one socket, for routing events and fills.
struct Registration {
    user: Option<UserId>,
    events: bool,
    players: HashSet<i64>,
    sales: HashSet<i64>,
    leaderboard: bool,
    queue: mpsc::Sender<ByteString>,
    stuck: Arc<AtomicBool>,
}

/// The latest state of one sale, pre-serialised.
#[derive(Clone)]
pub struct SaleSlot {
    /// `(generation, seq)` of the inventory this state comes from.
    version: (i64, i64),
    remaining: i64,
    status: SaleStatus,
    /// The `sale:{id}` snapshot `data`.
    pub snapshot_json: ByteString,
}

/// The latest top 10, and its `leaderboard` snapshot data.
struct LeaderboardSlot {
    as_of_ms: i64,
    entries: Vec<crate::http::wire::LeaderboardEntry>,
    data: ByteString,
    /// When this replica heard it.
    heard: std::time::Instant,
}

/// A top 10 held this long gives way to any other, whatever their `as_of`:
/// a new leader's clock may be behind the last one's.
const LEADERBOARD_HELD_FOR: Duration = Duration::from_secs(3);

/// Every socket of the replica, and each signed-in user's sockets, so a
/// fill costs a lookup rather than a scan of every socket.
#[derive(Default)]
struct Registry {
    all: HashMap<u64, Registration>,
    by_user: HashMap<i64, Vec<u64>>,
}

/// A replica's fan-out state.
pub struct Hub {
    latest: RwLock<HashMap<i64, Slot>>,
    /// Bumped on every change of `latest`; sockets skip a flush when it has
    /// not moved.
    generation: AtomicU64,
    sockets: Mutex<Registry>,
    next_socket: AtomicU64,
    connections: AtomicUsize,
    /// The most sockets open at once since freed memory was last given
    /// back to the kernel ([`start_memory_releaser`]).
    peak_since_release: AtomicUsize,
    sales: Mutex<HashMap<i64, SaleSlot>>,
    /// Sales changed since the last sale flush: conflated, like prices.
    dirty_sales: Mutex<HashSet<i64>>,
    /// The latest top 10 heard of: `(as_of_ms, entries, snapshot data)`.
    leaderboard: Mutex<Option<LeaderboardSlot>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub {
            latest: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            sockets: Mutex::new(Registry::default()),
            next_socket: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            peak_since_release: AtomicUsize::new(0),
            sales: Mutex::new(HashMap::new()),
            dirty_sales: Mutex::new(HashSet::new()),
            leaderboard: Mutex::new(None),
        }
    }

    /// Takes newer ticks into the table (older or equal `seq` is ignored, so
    /// nothing ever goes backwards whatever order messages arrive in).
    pub fn merge(&self, ticks: impl IntoIterator<Item = BusTick>) {
        let mut changed = false;
        {
            let mut latest = self.latest.write().unwrap_or_else(|p| p.into_inner());
            for tick in ticks {
                let newer = latest
                    .get(&tick.player_id)
                    .is_none_or(|slot| slot.seq < tick.seq);
                if newer {
                    latest.insert(tick.player_id, tick.slot());
                    changed = true;
                }
            }
        }
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// The current generation of the price table.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The slot of one player.
    pub fn slot(&self, player: i64) -> Option<Slot> {
        let latest = self.latest.read().unwrap_or_else(|p| p.into_inner());
        latest.get(&player).cloned()
    }

    /// Every player's latest price: `(player id, price in cents)`.
    pub fn prices(&self) -> Vec<(i64, i64)> {
        let latest = self.latest.read().unwrap_or_else(|p| p.into_inner());
        latest
            .iter()
            .map(|(player, slot)| (*player, slot.price_cents))
            .collect()
    }

    /// Appends to `frame` every tick newer than `sent` among `players`,
    /// recording what was sent. Returns how many ticks were added.
    pub fn newer_ticks(&self, sent: &mut HashMap<i64, i64>, frame: &mut String) -> usize {
        let latest = self.latest.read().unwrap_or_else(|p| p.into_inner());
        let mut added = 0;
        for (player, last_seq) in sent.iter_mut() {
            if let Some(slot) = latest.get(player) {
                if slot.seq > *last_seq {
                    if added > 0 {
                        frame.push(',');
                    }
                    frame.push_str(&slot.tick_json);
                    *last_seq = slot.seq;
                    added += 1;
                }
            }
        }
        added
    }

    /// Sockets connected to this replica.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Reserves a connection slot, or `None` past `max`.
    fn admit(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let before = self.connections.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.peak_since_release
            .fetch_max(before + 1, Ordering::AcqRel);
        Some(ConnectionSlot { hub: self.clone() })
    }

    fn register(
        &self,
        user: Option<UserId>,
        queue: mpsc::Sender<ByteString>,
        stuck: Arc<AtomicBool>,
    ) -> u64 {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(user) = user {
            sockets.by_user.entry(user.0).or_default().push(id);
        }
        sockets.all.insert(
            id,
            Registration {
                user,
                events: false,
                players: HashSet::new(),
                sales: HashSet::new(),
                leaderboard: false,
                queue,
                stuck,
            },
        );
        id
    }

    fn update_registration(&self, id: u64, wants: Wants) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(registration) = sockets.all.get_mut(&id) {
            registration.events = wants.events;
            registration.players = wants.players;
            registration.sales = wants.sales;
            registration.leaderboard = wants.leaderboard;
        }
    }

    /// The `leaderboard` snapshot data: the latest top 10 heard of.
    pub fn leaderboard_snapshot(&self) -> ByteString {
        let leaderboard = self.leaderboard.lock().unwrap_or_else(|p| p.into_inner());
        leaderboard.as_ref().map_or_else(
            || ByteString::from_static(messages::EMPTY_LEADERBOARD),
            |slot| slot.data.clone(),
        )
    }

    /// Takes a top-10 message newer than the one held (the leader sends one
    /// every revaluation) and, if its entries differ, sends it to the
    /// sockets subscribed to `leaderboard`; an older one changes nothing.
    pub fn leaderboard_changed(&self, message: &messages::LeaderboardMessage) {
        {
            let mut held = self.leaderboard.lock().unwrap_or_else(|p| p.into_inner());
            if held.as_ref().is_some_and(|slot| {
                slot.as_of_ms >= message.as_of_ms && slot.heard.elapsed() < LEADERBOARD_HELD_FOR
            }) {
                return;
            }
            let same = held
                .as_ref()
                .is_some_and(|slot| slot.entries == message.entries);
            *held = Some(LeaderboardSlot {
                as_of_ms: message.as_of_ms,
                entries: message.entries.clone(),
                data: ByteString::from(message.data()),
                heard: std::time::Instant::now(),
            });
            if same {
                return;
            }
        }
        let Ok(json) = serde_json::to_string(message) else {
            return;
        };
        self.route(&ByteString::from(json), |r| r.leaderboard);
    }

    /// `(user id, socket id)` of every signed-in socket on this replica.
    pub fn user_sockets(&self) -> Vec<(i64, u64)> {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        sockets
            .by_user
            .iter()
            .flat_map(|(user, ids)| ids.iter().map(move |id| (*user, *id)))
            .collect()
    }

    /// Offers `message` to one socket, unless its queue is full: for state
    /// the next message supersedes, so a slow socket is not closed over it.
    /// Returns whether it was queued.
    pub fn offer_to_socket(&self, id: u64, message: &ByteString) -> bool {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        sockets
            .all
            .get(&id)
            .is_some_and(|r| r.queue.try_send(message.clone()).is_ok())
    }

    /// The `sale:{id}` snapshot data, if the sale exists.
    pub fn sale_snapshot(&self, sale_id: i64) -> Option<ByteString> {
        let sales = self.sales.lock().unwrap_or_else(|p| p.into_inner());
        sales.get(&sale_id).map(|slot| slot.snapshot_json.clone())
    }

    /// Sends each sale changed since the last call, once, in its latest
    /// state, to the sockets subscribed to it.
    pub fn flush_sales(&self) {
        let dirty: Vec<i64> = {
            let mut dirty = self.dirty_sales.lock().unwrap_or_else(|p| p.into_inner());
            dirty.drain().collect()
        };
        for sale_id in dirty {
            let Some(slot) = ({
                let sales = self.sales.lock().unwrap_or_else(|p| p.into_inner());
                sales.get(&sale_id).cloned()
            }) else {
                continue;
            };
            let message = ByteString::from(messages::sale_message(
                sale_id,
                slot.remaining,
                slot.status.as_str(),
            ));
            self.route(&message, |r| r.sales.contains(&sale_id));
        }
    }

    fn unregister(&self, id: u64) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(registration) = sockets.all.remove(&id) else {
            return;
        };
        if let Some(user) = registration.user {
            if let Some(ids) = sockets.by_user.get_mut(&user.0) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    sockets.by_user.remove(&user.0);
                }
            }
        }
    }

    /// Queues `message` for every socket `wants`; a socket whose queue is
    /// full is marked stuck and will be closed with 1013.
    fn route(&self, message: &ByteString, wants: impl Fn(&Registration) -> bool) {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        for registration in sockets.all.values() {
            if wants(registration) && registration.queue.try_send(message.clone()).is_err() {
                registration.stuck.store(true, Ordering::Release);
            }
        }
    }

    /// Marks every socket that could have wanted a lost event or fill as
    /// stuck, so it is closed (1013) and reconnects to a fresh snapshot.
    pub fn lost_messages(&self) {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        for registration in sockets.all.values() {
            if registration.events
                || registration.leaderboard
                || !registration.players.is_empty()
                || !registration.sales.is_empty()
                || registration.user.is_some()
            {
                registration.stuck.store(true, Ordering::Release);
            }
        }
    }

    /// Handles one message from the bus.
    pub fn on_bus_message(&self, channel: &str, payload: &str) {
        match channel {
            PRICES_CHANNEL => match serde_json::from_str::<Vec<BusTick>>(payload) {
                Ok(ticks) => self.merge(ticks),
                Err(error) => tracing::warn!(%error, "malformed prices message"),
            },
            EVENTS_CHANNEL => match serde_json::from_str::<messages::EventMessage>(payload) {
                Ok(event) => {
                    self.merge([event.tick()]);
                    let player = event.player_id;
                    let bytes = ByteString::from(payload.to_string());
                    self.route(&bytes, |r| r.events || r.players.contains(&player));
                }
                Err(error) => tracing::warn!(%error, "malformed event message"),
            },
            LEADERBOARD_CHANNEL => {
                match serde_json::from_str::<messages::LeaderboardMessage>(payload) {
                    Ok(message) => self.leaderboard_changed(&message),
                    Err(error) => tracing::warn!(%error, "malformed leaderboard message"),
                }
            }
            USERS_CHANNEL => {
                let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
                // One line per message (JSON never contains a raw newline).
                for line in payload.split('\n') {
                    let Some((user, message)) = line.split_once('|') else {
                        continue;
                    };
                    let Ok(user) = user.parse::<i64>() else {
                        continue;
                    };
                    let Some(ids) = sockets.by_user.get(&user) else {
                        continue;
                    };
                    let bytes = ByteString::from(message.to_string());
                    for id in ids {
                        if let Some(registration) = sockets.all.get(id) {
                            if registration.queue.try_send(bytes.clone()).is_err() {
                                registration.stuck.store(true, Ordering::Release);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

impl SaleStateSink for Hub {
    fn sale_state(&self, sale_id: i64, version: (i64, i64), remaining: i64, status: SaleStatus) {
        let mut sales = self.sales.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = sales.get(&sale_id) {
            let same = slot.remaining == remaining && slot.status == status;
            if version < slot.version || same {
                return;
            }
        }
        sales.insert(
            sale_id,
            SaleSlot {
                version,
                remaining,
                status,
                snapshot_json: ByteString::from(messages::sale_data(
                    sale_id,
                    remaining,
                    status.as_str(),
                )),
            },
        );
        drop(sales);
        let mut dirty = self.dirty_sales.lock().unwrap_or_else(|p| p.into_inner());
        dirty.insert(sale_id);
    }
}

/// Every `flush`, sends changed sales to their subscribers.
pub fn start_sale_flusher(
    hub: Arc<Hub>,
    flush: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(flush.max(Duration::from_millis(1)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => hub.flush_sales(),
            }
        }
    })
}

/// How often the memory releaser looks at the socket count.
const RELEASE_CHECK: Duration = Duration::from_secs(1);
/// Sockets that must have closed since the last release before another is
/// worth walking the allocator's arenas for: at least this many, and at
/// least a quarter of the most that were open.
pub const RELEASE_AFTER_CLOSED: usize = 100;

/// Whether the fall from `peak` sockets to `open` is worth a release.
fn worth_releasing(peak: usize, open: usize) -> bool {
    let closed = peak.saturating_sub(open);
    closed >= RELEASE_AFTER_CLOSED && closed.saturating_mul(4) >= peak
}

/// Once many sockets have closed, gives what they freed back to the kernel
/// ([`crate::memory::release_free_memory`]), so a replica shrinks after a
/// crowd leaves rather than keeping its peak. A steady crowd, however busy,
/// never triggers it.
pub fn start_memory_releaser(
    hub: Arc<Hub>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RELEASE_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {
                    let open = hub.connections();
                    let peak = hub.peak_since_release.load(Ordering::Acquire);
                    if worth_releasing(peak, open) {
                        hub.peak_since_release.store(open, Ordering::Release);
                        release_memory(peak, open).await;
                    }
                }
            }
        }
    })
}

async fn release_memory(peak: usize, open: usize) {
    let pid = [std::process::id()];
    let before = crate::memory::rss_kib(&pid);
    let started = std::time::Instant::now();
    let released = tokio::task::spawn_blocking(crate::memory::release_free_memory)
        .await
        .unwrap_or(false);
    tracing::info!(
        peak,
        open,
        released,
        rss_kib_before = before,
        rss_kib_after = crate::memory::rss_kib(&pid),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "sockets closed; freed memory given back to the kernel"
    );
}

/// A held connection slot; released on drop.
struct ConnectionSlot {
    hub: Arc<Hub>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.hub.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a WebSocket could not be accepted.
#[derive(Debug)]
pub enum AcceptError {
    /// This replica holds `broadcast.max_connections` sockets already.
    Full,
    /// The request is not a valid WebSocket upgrade.
    NotWebSocket,
}

/// Upgrades `req` and runs the socket on the current worker.
pub fn accept(
    hub: &Arc<Hub>,
    req: &actix_web::HttpRequest,
    body: actix_web::web::Payload,
    user: Option<UserId>,
    limits: ws::SocketLimits,
    max_connections: usize,
) -> Result<actix_web::HttpResponse, AcceptError> {
    use actix_web::FromRequest;
    use futures_util::FutureExt;

    let slot = hub.admit(max_connections).ok_or(AcceptError::Full)?;
    // actix-ws only sees the bytes after the frame guard has measured them.
    let payload: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>,
            >,
        >,
    > = Box::pin(frames::Guarded::new(
        body.into_inner(),
        ws::MAX_CLIENT_FRAME_BYTES,
    ));
    let mut guarded = actix_web::dev::Payload::Stream { payload };
    let body = actix_web::web::Payload::from_request(req, &mut guarded)
        .now_or_never()
        .and_then(Result::ok)
        .ok_or(AcceptError::NotWebSocket)?;
    let (response, session, stream) =
        actix_ws::handle(req, body).map_err(|_| AcceptError::NotWebSocket)?;
    let hub = hub.clone();
    actix_web::rt::spawn(async move {
        ws::run(hub, session, stream, user, limits).await;
        drop(slot);
    });
    Ok(response)
}

/// Every bus channel the hub listens to.
const HUB_CHANNELS: [&str; 4] = [
    PRICES_CHANNEL,
    EVENTS_CHANNEL,
    USERS_CHANNEL,
    LEADERBOARD_CHANNEL,
];

/// What one socket is subscribed to, for routing.
#[derive(Debug, Default)]
pub(crate) struct Wants {
    pub events: bool,
    pub players: HashSet<i64>,
    pub sales: HashSet<i64>,
    pub leaderboard: bool,
}

/// Subscribes the hub to the bus, then feeds it from the bus and from
/// Postgres until `shutdown` flips. Returns once subscribed, so a replica
/// that answers requests already hears every replica's prices.
pub async fn start_hub(
    hub: Arc<Hub>,
    bus: Bus,
    prices: Arc<dyn PriceStore>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let messages = bus.messages();
    for channel in HUB_CHANNELS {
        bus.subscribe_retrying(channel).await;
    }
    tokio::spawn(feed_hub(hub, bus, prices, messages, shutdown))
}

async fn feed_hub(
    hub: Arc<Hub>,
    bus: Bus,
    prices: Arc<dyn PriceStore>,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut shutdown: watch::Receiver<bool>,
) {
    let names: HashMap<String, &'static str> =
        HUB_CHANNELS.into_iter().map(|c| (bus.key(c), c)).collect();
    let mut every = tokio::time::interval(RESYNC_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => resync(&hub, &bus, prices.as_ref()).await,
            message = messages.recv() => match message {
                Ok(message) => {
                    if let Some(channel) = names.get(&*message.channel) {
                        if let Some(payload) = message.value.as_str() {
                            hub.on_bus_message(channel, &payload);
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    // Events or fills may be among the lost: every socket
                    // that could have wanted one reconnects for a fresh
                    // snapshot rather than silently missing it.
                    tracing::warn!(missed, "hub lagged behind the bus; closing affected sockets");
                    hub.lost_messages();
                    resync(&hub, &bus, prices.as_ref()).await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Reloads the table from Redis' current state and from Postgres, the
/// truth: a publish that failed leaves Redis stale, a flush leaves it empty.
/// Merging ignores anything not newer, so the two cannot fight.
async fn resync(hub: &Hub, bus: &Bus, prices: &dyn PriceStore) {
    match bus.state_values(PRICES_STATE).await {
        Ok(values) => hub.merge(
            values
                .iter()
                .filter_map(|value| serde_json::from_str::<BusTick>(value).ok()),
        ),
        Err(error) => tracing::warn!(%error, "reading current prices from redis failed"),
    }
    match prices.current().await {
        Ok(ticks) => hub.merge(ticks.iter().map(BusTick::from)),
        Err(error) => tracing::warn!(%error, "price resync failed"),
    }
}

/// User messages (fills, purchases) waiting to be published; past this they
/// are dropped with a warning rather than slowing orders down.
pub const USER_MESSAGE_QUEUE: usize = 4_096;
/// User messages sent in one publish, at most.
pub const USER_MESSAGES_PER_PUBLISH: usize = 512;

/// Publishes prices, events and fills on the bus for every replica's hub.
pub struct BusPublisher {
    bus: Bus,
    /// This replica's hub, updated at once too, so the publishing replica's
    /// own sockets never wait for the round trip through Redis.
    hub: Arc<Hub>,
    /// Fills go out in order through one task, so an order's response never
    /// waits for Redis (nor stalls when Redis is down).
    user_messages: mpsc::Sender<String>,
}

impl BusPublisher {
    /// A publisher on `bus`; its user-message task ends when the publisher
    /// is dropped.
    pub fn new(bus: Bus, hub: Arc<Hub>) -> BusPublisher {
        let (user_messages, mut queued) = mpsc::channel::<String>(USER_MESSAGE_QUEUE);
        let publisher_bus = bus.clone();
        tokio::spawn(async move {
            // Whatever queued up while the last publish was on its way goes
            // out as one message, a line per user message, so a burst of
            // fills or purchases costs a few publishes rather than one each.
            while let Some(first) = queued.recv().await {
                let mut payload = first;
                let mut lines = 1;
                while lines < USER_MESSAGES_PER_PUBLISH {
                    let Ok(next) = queued.try_recv() else { break };
                    payload.push('\n');
                    payload.push_str(&next);
                    lines += 1;
                }
                if let Err(error) = publisher_bus.publish(USERS_CHANNEL, payload).await {
                    tracing::warn!(%error, lines, "user messages could not be published");
                }
            }
        });
        BusPublisher {
            bus,
            hub,
            user_messages,
        }
    }
}

fn state_entry(tick: &BusTick) -> Option<(String, i64, String)> {
    let value = serde_json::to_string(tick).ok()?;
    Some((tick.player_id.to_string(), tick.seq, value))
}

impl BusPublisher {
    /// Publishes on `channel` and records `ticks` as current state, in one
    /// script.
    async fn publish_prices(&self, channel: &str, payload: String, ticks: &[BusTick]) {
        let entries = ticks.iter().filter_map(state_entry).collect();
        if let Err(error) = self
            .bus
            .publish_with_state(channel, payload, PRICES_STATE, entries)
            .await
        {
            tracing::warn!(%error, channel, "publish failed; hubs will resync");
        }
    }
}

#[async_trait]
impl PriceSink for BusPublisher {
    async fn ticks(&self, ticks: &[Tick]) {
        let bus_ticks: Vec<BusTick> = ticks.iter().map(BusTick::from).collect();
        let Ok(payload) = serde_json::to_string(&bus_ticks) else {
            return;
        };
        // This replica's sockets first (they must not wait on Redis, or on
        // its timeout when it is down); other replicas hear it through Redis.
        self.hub.merge(bus_ticks.iter().cloned());
        self.publish_prices(PRICES_CHANNEL, payload, &bus_ticks)
            .await;
    }

    async fn event(&self, event: &AppliedEvent) {
        let message = messages::EventMessage::from(event);
        let Ok(payload) = serde_json::to_string(&message) else {
            return;
        };
        self.publish_prices(EVENTS_CHANNEL, payload, &[message.tick()])
            .await;
    }
}

impl BusPublisher {
    /// Queues a message for `user`'s sockets on every replica; when the
    /// queue is full the message is dropped with a warning rather than
    /// slowing the caller down.
    fn push_to_user(&self, user: UserId, message: impl serde::Serialize, what: &str) {
        let Ok(message) = serde_json::to_string(&message) else {
            return;
        };
        if self
            .user_messages
            .try_send(format!("{}|{}", user.0, message))
            .is_err()
        {
            tracing::warn!(
                user_id = user.0,
                what,
                "user message queue full; not pushed to sockets"
            );
        }
    }
}

#[async_trait]
impl FillNotifier for BusPublisher {
    async fn order_changed(&self, user: UserId, order: &Order) {
        self.push_to_user(user, messages::OrderMessage::from(order), "order");
    }
}

#[async_trait]
impl PurchaseNotifier for BusPublisher {
    async fn purchase_changed(&self, user: UserId, purchase: &Purchase) {
        self.push_to_user(user, messages::PurchaseMessage::from(purchase), "purchase");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_released_once_a_quarter_of_the_peak_and_a_hundred_sockets_have_closed() {
        assert!(worth_releasing(800, 1));
        assert!(worth_releasing(400, 300));
        assert!(!worth_releasing(401, 302), "99 closed");
        assert!(!worth_releasing(50_000, 37_501), "under a quarter");
        assert!(worth_releasing(50_000, 37_500));
        assert!(!worth_releasing(0, 0));
        assert!(!worth_releasing(10, 20), "more open than the peak");
    }

    #[test]
    fn the_hub_remembers_the_most_sockets_open_since_the_last_release() {
        let hub = Arc::new(Hub::new());
        let slots: Vec<_> = (0..150).filter_map(|_| hub.admit(1_000)).collect();
        assert_eq!(slots.len(), 150);
        assert_eq!(hub.admit(150).map(|_| ()), None, "past max_connections");
        drop(slots);
        assert_eq!(hub.connections(), 0);
        let peak = hub.peak_since_release.load(Ordering::Acquire);
        assert_eq!(peak, 150, "a refused socket does not count");
        assert!(worth_releasing(peak, hub.connections()));
    }

    fn tick(player: i64, seq: i64, price: i64) -> BusTick {
        BusTick {
            player_id: player,
            price_cents: price,
            epoch: 0,
            seq,
            ts_ms: 1_000 + seq,
            locked_until_ms: None,
        }
    }

    #[test]
    fn the_table_never_goes_backwards() {
        let hub = Hub::new();
        hub.merge([tick(1, 5, 500)]);
        let generation = hub.generation();
        hub.merge([tick(1, 4, 400), tick(1, 5, 999)]);
        assert_eq!(hub.generation(), generation, "stale ticks change nothing");
        assert_eq!(hub.slot(1).map(|s| s.seq), Some(5));
        hub.merge([tick(1, 6, 600)]);
        assert!(hub.generation() > generation);
    }

    #[test]
    fn many_ticks_between_flushes_conflate_into_the_latest_per_player() {
        let hub = Hub::new();
        let mut sent = HashMap::from([(1, 0), (2, 0), (3, 0)]);
        for seq in 1..=50 {
            hub.merge([tick(1, seq, 100 + seq), tick(2, seq, 200 + seq)]);
        }
        let mut frame = String::new();
        assert_eq!(hub.newer_ticks(&mut sent, &mut frame), 2);
        assert!(frame.contains("\"price_cents\":150"), "{frame}");
        assert!(frame.contains("\"price_cents\":250"), "{frame}");
        assert!(!frame.contains("\"price_cents\":149"), "{frame}");
        // Nothing new: the next flush sends nothing.
        let mut again = String::new();
        assert_eq!(hub.newer_ticks(&mut sent, &mut again), 0);
    }

    #[test]
    fn losing_bus_messages_closes_the_sockets_that_could_have_wanted_them() {
        let hub = Hub::new();
        let mut flags = Vec::new();
        for (events, players) in [(true, vec![]), (false, vec![3]), (false, vec![])] {
            let (queue, _receiver) = mpsc::channel(2);
            let stuck = Arc::new(AtomicBool::new(false));
            let id = hub.register(None, queue, stuck.clone());
            hub.update_registration(
                id,
                Wants {
                    events,
                    players: players.into_iter().collect(),
                    ..Wants::default()
                },
            );
            flags.push(stuck);
        }
        hub.lost_messages();
        let stuck: Vec<bool> = flags.iter().map(|f| f.load(Ordering::Acquire)).collect();
        assert_eq!(stuck, [true, true, false]);
    }

    #[test]
    fn a_fill_reaches_only_its_users_sockets_and_leaves_no_trace_after_they_close() {
        let hub = Hub::new();
        let mut receivers = Vec::new();
        let mut ids = Vec::new();
        for user in [Some(UserId(7)), Some(UserId(7)), Some(UserId(8)), None] {
            let (queue, receiver) = mpsc::channel(4);
            ids.push(hub.register(user, queue, Arc::new(AtomicBool::new(false))));
            receivers.push(receiver);
        }
        hub.on_bus_message(USERS_CHANNEL, "7|{\"type\":\"order\"}");
        let got: Vec<bool> = receivers.iter_mut().map(|r| r.try_recv().is_ok()).collect();
        assert_eq!(got, [true, true, false, false]);
        // Several messages in one publish, a line each.
        hub.on_bus_message(
            USERS_CHANNEL,
            "8|{\"n\":1}\nnot a line\n7|{\"n\":2}\n8|{\"n\":3}",
        );
        let got: Vec<usize> = receivers
            .iter_mut()
            .map(|r| std::iter::from_fn(|| r.try_recv().ok()).count())
            .collect();
        assert_eq!(got, [1, 1, 2, 0]);
        for id in ids {
            hub.unregister(id);
        }
        let sockets = hub.sockets.lock().unwrap();
        assert!(sockets.all.is_empty() && sockets.by_user.is_empty());
    }

    #[test]
    fn only_a_newer_top_10_replaces_the_snapshot_and_reaches_subscribers() {
        let hub = Hub::new();
        let mut receivers = Vec::new();
        for leaderboard in [true, false] {
            let (queue, receiver) = mpsc::channel(4);
            let id = hub.register(None, queue, Arc::new(AtomicBool::new(false)));
            hub.update_registration(
                id,
                Wants {
                    leaderboard,
                    ..Wants::default()
                },
            );
            receivers.push(receiver);
        }
        assert_eq!(&*hub.leaderboard_snapshot(), messages::EMPTY_LEADERBOARD);
        let entry = |user: i64| crate::http::wire::LeaderboardEntry {
            rank: 1,
            user_id: user,
            username: format!("u{user}"),
            net_worth_cents: 5,
        };
        let newer = messages::LeaderboardMessage::new(2_000, vec![entry(1)]);
        let older = messages::LeaderboardMessage::new(1_000, vec![entry(2)]);
        hub.on_bus_message(LEADERBOARD_CHANNEL, &serde_json::to_string(&newer).unwrap());
        hub.leaderboard_changed(&older);
        let snapshot: serde_json::Value =
            serde_json::from_str(&hub.leaderboard_snapshot()).unwrap();
        assert_eq!(snapshot["entries"][0]["user_id"], 1);
        assert!(snapshot.get("type").is_none(), "{snapshot}");
        let got: Vec<usize> = receivers
            .iter_mut()
            .map(|r| std::iter::from_fn(|| r.try_recv().ok()).count())
            .collect();
        assert_eq!(got, [1, 0]);
        // A later revaluation with the same entries refreshes the snapshot's
        // as_of but sends nothing.
        let same = messages::LeaderboardMessage::new(3_000, vec![entry(1)]);
        hub.leaderboard_changed(&same);
        assert!(receivers[0].try_recv().is_err());
        assert!(hub.leaderboard_snapshot().contains(&same.as_of));
    }

    #[test]
    fn a_full_queue_marks_the_socket_stuck_instead_of_growing() {
        let hub = Hub::new();
        let (queue, _receiver) = mpsc::channel(2);
        let stuck = Arc::new(AtomicBool::new(false));
        let id = hub.register(None, queue, stuck.clone());
        hub.update_registration(
            id,
            Wants {
                events: true,
                ..Wants::default()
            },
        );
        let event = serde_json::to_string(&messages::EventMessage {
            message_type: "event".into(),
            player_id: 1,
            event_kind: "goal".into(),
            price_cents: 10,
            epoch: 1,
            seq: 1,
            locked_until: None,
            ts_ms: 1,
            event_id: "e".into(),
            correction: false,
        })
        .unwrap();
        for _ in 0..2 {
            hub.on_bus_message(EVENTS_CHANNEL, &event);
        }
        assert!(!stuck.load(Ordering::Acquire));
        hub.on_bus_message(EVENTS_CHANNEL, &event);
        assert!(stuck.load(Ordering::Acquire));
    }
}
