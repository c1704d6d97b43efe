//! `/ws`: one task per socket on the HTTP worker that accepted it, and one
//! flusher per worker for all of that worker's sockets.
//!
//! A socket owns: the last `seq` it sent per subscribed player (conflation
//! is a comparison with the hub's table at each flush, not a queue), a
//! bounded queue of messages that must not be dropped (events, fills), and a
//! token bucket for what the client sends. Every bound is named below or in
//! `[broadcast]` config.
//!
//! Prices are pushed by the worker's flusher, not by the sockets: one timer
//! per worker wakes every `flush_ms`, and for each socket puts a frame into
//! its outbound channel only if that does not block. A busy socket is
//! skipped (it gets the latest state at a later flush); one that stays busy
//! past `stuck_timeout_ms` is closed with 1013. Timers and wake-ups then
//! scale with workers, not with sockets.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason, Message, ProtocolError, Session};
use bytestring::ByteString;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Hub, SOCKET_QUEUE};
use crate::config::BroadcastSettings;
use crate::domain::UserId;

/// Largest client frame; bigger ones close the socket with 1009.
pub const MAX_CLIENT_FRAME_BYTES: usize = 16 * 1024;
/// Channels one socket may hold.
pub const MAX_CHANNELS_PER_SOCKET: usize = 1_000;
/// Server pings this often.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// A socket silent (no frame, no pong) this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// How often a socket task checks whether it was found stuck.
const STUCK_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Per-socket limits, from `[broadcast]`.
#[derive(Debug, Clone)]
pub struct SocketLimits {
    pub flush: Duration,
    pub burst: u32,
    pub messages_per_sec: u32,
    pub stuck_timeout: Duration,
}

impl From<&BroadcastSettings> for SocketLimits {
    fn from(settings: &BroadcastSettings) -> SocketLimits {
        SocketLimits {
            flush: Duration::from_millis(settings.flush_ms),
            burst: settings.client_burst.max(1),
            messages_per_sec: settings.client_messages_per_sec,
            stuck_timeout: Duration::from_millis(settings.stuck_timeout_ms.max(1)),
        }
    }
}

/// A token bucket over client messages (GCRA-equivalent for one socket).
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Full bucket of `burst`, refilled at `per_sec`.
    pub fn new(burst: u32, per_sec: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity: burst as f64,
            per_sec: per_sec as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Deserialize)]
struct ClientOp {
    op: String,
    #[serde(default)]
    channels: Vec<String>,
}

/// A client's text frame, parsed (channel names are checked one by one
/// later, with [`parse_channel`], so valid ones in a request still count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Ping,
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
}

/// Why a client's text frame was not understood: the `error` frame's code
/// and message.
pub type MessageError = (&'static str, &'static str);

/// Parses a client's text frame. Pure, so it is fuzzed on its own
/// (`fuzz/fuzz_targets/ws_message.rs`).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, MessageError> {
    let op: ClientOp = serde_json::from_str(text).map_err(|_| {
        (
            "bad_request",
            "expected {\"op\": \"subscribe\"|\"unsubscribe\"|\"ping\", \"channels\": [...]}",
        )
    })?;
    match op.op.as_str() {
        "ping" => Ok(ClientMessage::Ping),
        "subscribe" => Ok(ClientMessage::Subscribe(op.channels)),
        "unsubscribe" => Ok(ClientMessage::Unsubscribe(op.channels)),
        _ => Err(("bad_request", "unknown op")),
    }
}

/// A channel a client can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    Player(i64),
    Sale(i64),
    Events,
    User,
    Leaderboard,
}

/// The channel `name` denotes, if any.
pub fn parse_channel(name: &str) -> Option<Channel> {
    match name {
        "events" => Some(Channel::Events),
        "user" => Some(Channel::User),
        "leaderboard" => Some(Channel::Leaderboard),
        _ => {
            let id = |prefix: &str| {
                name.strip_prefix(prefix)
                    .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|id| id.parse::<i64>().ok())
                    .filter(|id| *id > 0)
            };
            id("player:")
                .map(Channel::Player)
                .or_else(|| id("sale:").map(Channel::Sale))
        }
    }
}

fn error_message(code: &str, message: &str, channels: Option<&[String]>) -> ByteString {
    let mut value = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(channels) = channels {
        value["channels"] = serde_json::json!(channels);
    }
    ByteString::from(value.to_string())
}

/// What a socket's task and its worker's flusher share (same thread).
struct Shared {
    /// Last `seq` sent per subscribed player.
    sent: RefCell<HashMap<i64, i64>>,
    /// Hub generation at the last flush of this socket.
    generation: Cell<u64>,
    session: Session,
    /// The socket task is sending a reply; the flusher keeps out so a
    /// `prices` frame never overtakes a `subscribed`.
    replying: Cell<bool>,
    /// Since when the flusher has found the outbound channel full.
    blocked_since: Cell<Option<Instant>>,
    stuck: Arc<AtomicBool>,
}

struct Socket {
    id: u64,
    hub: Arc<Hub>,
    user: Option<UserId>,
    shared: Rc<Shared>,
    events: bool,
    sales: HashSet<i64>,
    leaderboard: bool,
}

impl Socket {
    fn registration_changed(&self) {
        let players: HashSet<i64> = self.shared.sent.borrow().keys().copied().collect();
        self.hub.update_registration(
            self.id,
            super::Wants {
                events: self.events,
                players,
                sales: self.sales.clone(),
                leaderboard: self.leaderboard,
            },
        );
    }

    fn handle_text(&mut self, text: &str) -> Vec<ByteString> {
        match parse_client_message(text) {
            Ok(ClientMessage::Ping) => vec![ByteString::from_static("{\"type\":\"pong\"}")],
            Ok(ClientMessage::Subscribe(channels)) => self.subscribe(&channels),
            Ok(ClientMessage::Unsubscribe(channels)) => self.unsubscribe(&channels),
            Err((code, message)) => vec![error_message(code, message, None)],
        }
    }

    fn subscribe(&mut self, names: &[String]) -> Vec<ByteString> {
        let mut accepted: Vec<&str> = Vec::new();
        let mut snapshot = String::new();
        let mut invalid: Vec<String> = Vec::new();
        let mut over_limit: Vec<String> = Vec::new();
        let mut sent = self.shared.sent.borrow_mut();
        for name in names {
            match parse_channel(name) {
                Some(Channel::Events) => {
                    self.events = true;
                    accepted.push(name);
                }
                Some(Channel::User) if self.user.is_some() => accepted.push(name),
                Some(Channel::Leaderboard) => {
                    self.leaderboard = true;
                    if !snapshot.is_empty() {
                        snapshot.push(',');
                    }
                    snapshot.push_str("{\"channel\":\"leaderboard\",\"data\":");
                    snapshot.push_str(&self.hub.leaderboard_snapshot());
                    snapshot.push('}');
                    accepted.push(name);
                }
                Some(Channel::Sale(id)) => {
                    if !self.sales.contains(&id) && self.sales.len() >= MAX_CHANNELS_PER_SOCKET {
                        over_limit.push(name.clone());
                        continue;
                    }
                    let Some(data) = self.hub.sale_snapshot(id) else {
                        invalid.push(name.clone());
                        continue;
                    };
                    self.sales.insert(id);
                    if !snapshot.is_empty() {
                        snapshot.push(',');
                    }
                    snapshot.push_str("{\"channel\":");
                    snapshot.push_str(&serde_json::to_string(name).unwrap_or_default());
                    snapshot.push_str(",\"data\":");
                    snapshot.push_str(&data);
                    snapshot.push('}');
                    accepted.push(name);
                }
                Some(Channel::Player(id)) => {
                    if !sent.contains_key(&id) && sent.len() >= MAX_CHANNELS_PER_SOCKET {
                        over_limit.push(name.clone());
                        continue;
                    }
                    let Some(slot) = self.hub.slot(id) else {
                        invalid.push(name.clone());
                        continue;
                    };
                    sent.insert(id, slot.seq);
                    if !snapshot.is_empty() {
                        snapshot.push(',');
                    }
                    snapshot.push_str("{\"channel\":");
                    snapshot.push_str(&serde_json::to_string(name).unwrap_or_default());
                    snapshot.push_str(",\"data\":");
                    snapshot.push_str(&slot.snapshot_json);
                    snapshot.push('}');
                    accepted.push(name);
                }
                _ => invalid.push(name.clone()),
            }
        }
        drop(sent);
        self.registration_changed();
        let mut replies = vec![ByteString::from(format!(
            "{{\"type\":\"subscribed\",\"channels\":{},\"snapshot\":[{}]}}",
            serde_json::to_string(&accepted).unwrap_or_else(|_| "[]".into()),
            snapshot
        ))];
        if !invalid.is_empty() {
            replies.push(error_message(
                "invalid_channel",
                "unknown or malformed channel",
                Some(&invalid),
            ));
        }
        if !over_limit.is_empty() {
            replies.push(error_message(
                "too_many_channels",
                "a socket may hold at most 1000 player and 1000 sale channels",
                Some(&over_limit),
            ));
        }
        replies
    }

    fn unsubscribe(&mut self, names: &[String]) -> Vec<ByteString> {
        let mut removed: Vec<&str> = Vec::new();
        for name in names {
            match parse_channel(name) {
                Some(Channel::Events) if self.events => {
                    self.events = false;
                    removed.push(name);
                }
                Some(Channel::Player(id))
                    if self.shared.sent.borrow_mut().remove(&id).is_some() =>
                {
                    removed.push(name)
                }
                Some(Channel::Sale(id)) if self.sales.remove(&id) => removed.push(name),
                Some(Channel::Leaderboard) if self.leaderboard => {
                    self.leaderboard = false;
                    removed.push(name);
                }
                _ => {}
            }
        }
        self.registration_changed();
        vec![ByteString::from(format!(
            "{{\"type\":\"unsubscribed\",\"channels\":{}}}",
            serde_json::to_string(&removed).unwrap_or_else(|_| "[]".into())
        ))]
    }
}

/// The `prices` frame of everything newer than what `shared` was sent, if
/// any; `sent` is updated only by [`commit`] once the frame is accepted.
fn pending_frame(
    hub: &Hub,
    shared: &Shared,
    generation: u64,
) -> Option<(String, HashMap<i64, i64>)> {
    if generation == shared.generation.get() || shared.sent.borrow().is_empty() {
        return None;
    }
    let mut next = shared.sent.borrow().clone();
    let mut frame = String::from("{\"type\":\"prices\",\"ticks\":[");
    if hub.newer_ticks(&mut next, &mut frame) == 0 {
        shared.generation.set(generation);
        return None;
    }
    frame.push_str("]}");
    Some((frame, next))
}

/// The sockets of one worker thread and its flush loop.
struct Flusher {
    sockets: Vec<Weak<Shared>>,
    running: bool,
}

thread_local! {
    static FLUSHER: RefCell<Flusher> = const {
        RefCell::new(Flusher { sockets: Vec::new(), running: false })
    };
}

/// Adds a socket to this worker's flusher, starting its loop if needed.
fn join_flusher(shared: &Rc<Shared>, hub: &Arc<Hub>, limits: &SocketLimits) {
    let start = FLUSHER.with(|flusher| {
        let mut flusher = flusher.borrow_mut();
        flusher.sockets.push(Rc::downgrade(shared));
        !std::mem::replace(&mut flusher.running, true)
    });
    if start {
        actix_web::rt::spawn(flush_loop(hub.clone(), limits.clone()));
    }
}

/// Every `flush`, offers each socket of this worker its newer prices without
/// ever waiting on one; ends when the worker has no sockets left.
async fn flush_loop(hub: Arc<Hub>, limits: SocketLimits) {
    let mut every = tokio::time::interval(limits.flush);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let sockets: Vec<Rc<Shared>> = FLUSHER.with(|flusher| {
            let mut flusher = flusher.borrow_mut();
            flusher.sockets.retain(|socket| socket.strong_count() > 0);
            if flusher.sockets.is_empty() {
                flusher.running = false;
            }
            flusher.sockets.iter().filter_map(Weak::upgrade).collect()
        });
        if sockets.is_empty() {
            return;
        }
        let generation = hub.generation();
        let now = Instant::now();
        for shared in sockets {
            if shared.replying.get() || shared.stuck.load(Ordering::Acquire) {
                continue;
            }
            let Some((frame, next)) = pending_frame(&hub, &shared, generation) else {
                continue;
            };
            let mut session = shared.session.clone();
            // Outside tokio's cooperative budget: one flush offers thousands
            // of frames, and a spent budget would make every channel look
            // full (a send is Pending once the task has used its budget).
            match tokio::task::unconstrained(session.text(frame)).now_or_never() {
                Some(Ok(())) => {
                    *shared.sent.borrow_mut() = next;
                    shared.generation.set(generation);
                    shared.blocked_since.set(None);
                }
                // Closed: the socket task is finishing anyway.
                Some(Err(_)) => {}
                // Full: skip it now; it gets the latest state later, unless
                // it stays full too long.
                None => {
                    let since = shared.blocked_since.get().unwrap_or(now);
                    shared.blocked_since.set(Some(since));
                    if now.duration_since(since) >= limits.stuck_timeout {
                        shared.stuck.store(true, Ordering::Release);
                    }
                }
            }
        }
    }
}

/// Sends within the stuck timeout; `false` means the socket is stuck or gone.
async fn send(session: &mut Session, message: ByteString, limits: &SocketLimits) -> bool {
    matches!(
        tokio::time::timeout(limits.stuck_timeout, session.text(message)).await,
        Ok(Ok(()))
    )
}

/// Runs one socket until it closes.
pub(super) async fn run(
    hub: Arc<Hub>,
    mut session: Session,
    stream: actix_ws::MessageStream,
    user: Option<UserId>,
    limits: SocketLimits,
) {
    let mut stream = stream.max_frame_size(MAX_CLIENT_FRAME_BYTES);
    let (queue, mut queued) = mpsc::channel::<ByteString>(SOCKET_QUEUE);
    let stuck = Arc::new(AtomicBool::new(false));
    let id = hub.register(user, queue, stuck.clone());
    let shared = Rc::new(Shared {
        sent: RefCell::new(HashMap::new()),
        generation: Cell::new(0),
        session: session.clone(),
        replying: Cell::new(false),
        blocked_since: Cell::new(None),
        stuck: stuck.clone(),
    });
    join_flusher(&shared, &hub, &limits);
    let mut socket = Socket {
        id,
        hub: hub.clone(),
        user,
        shared: shared.clone(),
        events: false,
        sales: HashSet::new(),
        leaderboard: false,
    };
    let mut bucket = TokenBucket::new(limits.burst, limits.messages_per_sec, Instant::now());
    let mut stuck_check = tokio::time::interval(STUCK_CHECK_INTERVAL);
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut last_seen = Instant::now();

    let close: Option<(CloseCode, &'static str)> = loop {
        tokio::select! {
            biased;
            message = queued.recv() => {
                let Some(message) = message else { break None };
                shared.replying.set(true);
                let delivered = send(&mut session, message, &limits).await;
                shared.replying.set(false);
                if !delivered {
                    break Some((CloseCode::Again, "too slow"));
                }
            }
            incoming = stream.next() => {
                let reply = match incoming {
                    None => break None,
                    Some(Ok(Message::Text(text))) => {
                        last_seen = Instant::now();
                        if !bucket.take(last_seen) {
                            break Some((CloseCode::Policy, "too many messages"));
                        }
                        socket.handle_text(&text)
                    }
                    Some(Ok(Message::Binary(_))) => {
                        last_seen = Instant::now();
                        if !bucket.take(last_seen) {
                            break Some((CloseCode::Policy, "too many messages"));
                        }
                        vec![error_message("bad_request", "send text frames of JSON", None)]
                    }
                    Some(Ok(Message::Ping(bytes))) => {
                        last_seen = Instant::now();
                        if !bucket.take(last_seen) {
                            break Some((CloseCode::Policy, "too many messages"));
                        }
                        match tokio::time::timeout(limits.stuck_timeout, session.pong(&bytes)).await {
                            Ok(Ok(())) => continue,
                            Ok(Err(_)) => break None,
                            Err(_) => break Some((CloseCode::Again, "too slow")),
                        }
                    }
                    Some(Ok(Message::Pong(_))) => {
                        last_seen = Instant::now();
                        if !bucket.take(last_seen) {
                            break Some((CloseCode::Policy, "too many messages"));
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Continuation(_))) => {
                        last_seen = Instant::now();
                        if !bucket.take(last_seen) {
                            break Some((CloseCode::Policy, "too many messages"));
                        }
                        vec![error_message("bad_request", "fragmented messages are not supported", None)]
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(ProtocolError::Overflow)) => break Some((CloseCode::Size, "frame too large")),
                    Some(Err(ProtocolError::Io(error))) if super::frames::is_overflow(&error) => {
                        break Some((CloseCode::Size, "frame too large"))
                    }
                    Some(Err(_)) => break Some((CloseCode::Protocol, "protocol error")),
                };
                let mut delivered = true;
                shared.replying.set(true);
                for message in reply {
                    delivered = delivered && send(&mut session, message, &limits).await;
                }
                shared.replying.set(false);
                if !delivered {
                    break Some((CloseCode::Again, "too slow"));
                }
            }
            _ = stuck_check.tick() => {
                if stuck.load(Ordering::Acquire) {
                    break Some((CloseCode::Again, "too slow"));
                }
            }
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > IDLE_LIMIT {
                    break Some((CloseCode::Away, "idle"));
                }
                match tokio::time::timeout(limits.stuck_timeout, session.ping(b"")).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => break Some((CloseCode::Again, "too slow")),
                }
            }
        }
    };
    hub.unregister(id);
    let reason = close.map(|(code, why)| CloseReason {
        code,
        description: Some(why.to_string()),
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), session.close(reason)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_strictly() {
        assert_eq!(parse_channel("player:12"), Some(Channel::Player(12)));
        assert_eq!(parse_channel("events"), Some(Channel::Events));
        assert_eq!(parse_channel("player:0"), None);
        assert_eq!(parse_channel("player:-1"), None);
        assert_eq!(parse_channel("player:12x"), None);
        assert_eq!(parse_channel("player:"), None);
        assert_eq!(parse_channel("player:+1"), None);
        assert_eq!(parse_channel("sale:3"), Some(Channel::Sale(3)));
        assert_eq!(parse_channel("sale:0"), None);
        assert_eq!(parse_channel("sale:x"), None);
        assert_eq!(parse_channel("Player:1"), None);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, 2, start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(500)));
        assert!(!bucket.take(start + Duration::from_millis(600)));
    }
}
