//! `matchday loadgen ws-baseline`: a bare actix-web + actix-ws broadcast
//! server speaking the `/ws` protocol of docs/API.md, to compare the real
//! server's fan-out against. Deliberately minimal: no auth, no Redis, no
//! database, no per-socket filtering or conflation.
//!
//! A generator moves every player's price once per `tick-ms` (spread evenly
//! over the interval, so tick ages at flush time are uniform); every
//! `flush-ms` the ticks that changed since the last flush (at most one per
//! player) are serialised into ONE `prices` frame whose bytes are shared by
//! every connected socket. Each socket has a small bounded outbound queue;
//! a socket whose queue is full simply misses that frame (the next one
//! carries newer prices), so nothing queues without bound.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::{CloseCode, CloseReason, Message, ProtocolError};
use bytestring::ByteString;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

/// Usage of `matchday loadgen ws-baseline`.
pub const HELP: &str =
    "usage: matchday loadgen ws-baseline [--host 127.0.0.1] [--port 18090] [--players 50]
                                    [--tick-ms 250] [--flush-ms 100] [--workers 0]

A bare actix-ws broadcast server: GET /ws (subscribe -> subscribed, ping -> pong),
every player's price moves every tick-ms, and every flush-ms one shared `prices`
frame goes to every socket. GET /api/v1/players lists the ids. --workers 0 means
actix's default. Runs until SIGINT/SIGTERM.";

/// Frames a socket may have queued before it starts missing broadcasts.
const OUTBOUND_FRAMES: usize = 4;
/// Largest client frame accepted; larger ones are answered with close 1009.
const MAX_CLIENT_FRAME: usize = 16 * 1024;
/// How often the server logs its counters to stderr.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Parsed `loadgen ws-baseline` options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Number of players, ids 1..=players.
    pub players: usize,
    /// Each player's price moves once per this interval.
    pub tick: Duration,
    /// One `prices` frame per this interval.
    pub flush: Duration,
    /// actix workers; 0 keeps actix's default.
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host: "127.0.0.1".into(),
            port: 18090,
            players: 50,
            tick: Duration::from_millis(250),
            flush: Duration::from_millis(100),
            workers: 0,
        }
    }
}

/// Parses the arguments after `loadgen ws-baseline`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut flags = super::flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--host" => options.host = flags.value(flag)?,
            "--port" => options.port = flags.parsed(flag)?,
            "--players" => options.players = flags.parsed::<usize>(flag)?.max(1),
            "--tick-ms" => options.tick = Duration::from_millis(flags.parsed::<u64>(flag)?.max(1)),
            "--flush-ms" => {
                options.flush = Duration::from_millis(flags.parsed::<u64>(flag)?.max(1))
            }
            "--workers" => options.workers = flags.parsed(flag)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// The connected sockets' outbound queues and the broadcast counters.
struct Hub {
    sockets: Mutex<HashMap<u64, mpsc::Sender<ByteString>>>,
    next_id: AtomicU64,
    player_ids: Vec<i64>,
    frames_sent: AtomicU64,
    frames_skipped: AtomicU64,
}

impl Hub {
    fn register(&self, outbound: mpsc::Sender<ByteString>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut sockets) = self.sockets.lock() {
            sockets.insert(id, outbound);
        }
        id
    }

    fn unregister(&self, id: u64) {
        if let Ok(mut sockets) = self.sockets.lock() {
            sockets.remove(&id);
        }
    }

    fn connected(&self) -> usize {
        self.sockets.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Offers `frame` to every socket without waiting: a full queue misses
    /// it, a closed one is dropped.
    fn broadcast(&self, frame: &ByteString) {
        let (mut sent, mut skipped) = (0, 0);
        if let Ok(mut sockets) = self.sockets.lock() {
            sockets.retain(|_, outbound| match outbound.try_send(frame.clone()) {
                Ok(()) => {
                    sent += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    skipped += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
        self.frames_sent.fetch_add(sent, Ordering::Relaxed);
        self.frames_skipped.fetch_add(skipped, Ordering::Relaxed);
    }
}

/// One player's current price, as it goes on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct PriceTick {
    /// Player id.
    pub player_id: i64,
    /// Current price.
    pub price_cents: i64,
    /// Match events applied (constant here).
    pub epoch: i64,
    /// Rises by one on every move.
    pub seq: u64,
    /// Unix ms of the move.
    pub ts_ms: i64,
}

/// The price generator's state: every player's latest tick and whether it
/// changed since the last flush.
pub struct Prices {
    ticks: Vec<PriceTick>,
    dirty: Vec<bool>,
    moved: u64,
}

impl Prices {
    /// Players `1..=count`, priced from 10.00 upwards, seq 0.
    pub fn new(count: usize) -> Self {
        Prices {
            ticks: (1..=count as i64)
                .map(|id| PriceTick {
                    player_id: id,
                    price_cents: 1_000 + 10 * id,
                    epoch: 0,
                    seq: 0,
                    ts_ms: 0,
                })
                .collect(),
            dirty: vec![false; count],
            moved: 0,
        }
    }

    /// Moves players round-robin until `due` moves have happened in total
    /// (at most one round at once, so a stalled generator does not burst).
    pub fn advance(&mut self, due: u64, now_ms: i64, rng: &mut impl Rng) {
        let count = self.ticks.len() as u64;
        if due > self.moved + count {
            self.moved = due - count;
        }
        while self.moved < due {
            let index = (self.moved % count) as usize;
            let tick = &mut self.ticks[index];
            tick.price_cents = (tick.price_cents + rng.gen_range(-20..=20)).max(100);
            tick.seq += 1;
            tick.ts_ms = now_ms;
            self.dirty[index] = true;
            self.moved += 1;
        }
    }

    /// The `prices` frame for everything that moved since the last call, or
    /// `None` if nothing did.
    pub fn flush(&mut self) -> Option<ByteString> {
        let ticks: Vec<&PriceTick> = self
            .ticks
            .iter()
            .zip(&self.dirty)
            .filter(|(_, dirty)| **dirty)
            .map(|(tick, _)| tick)
            .collect();
        if ticks.is_empty() {
            return None;
        }
        let frame = json!({"type": "prices", "ticks": ticks}).to_string();
        self.dirty.iter_mut().for_each(|d| *d = false);
        Some(ByteString::from(frame))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Moves prices and broadcasts one frame per flush, forever.
async fn engine(hub: Arc<Hub>, options: Options) {
    let players = options.players as u128;
    let tick_ms = options.tick.as_millis().max(1);
    let step = Duration::from_millis((tick_ms / players).max(1) as u64);
    let mut prices = Prices::new(options.players);
    let mut rng = StdRng::from_entropy();
    let mut generate = tokio::time::interval(step);
    generate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut flush = tokio::time::interval(options.flush);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = tokio::time::interval_at((Instant::now() + REPORT_EVERY).into(), REPORT_EVERY);
    let started = Instant::now();
    let (mut last_sent, mut last_skipped) = (0, 0);
    loop {
        tokio::select! {
            _ = generate.tick() => {
                let due = started.elapsed().as_millis() * players / tick_ms;
                prices.advance(due as u64, now_ms(), &mut rng);
            }
            _ = flush.tick() => {
                if let Some(frame) = prices.flush() {
                    hub.broadcast(&frame);
                }
            }
            _ = report.tick() => {
                let sent = hub.frames_sent.load(Ordering::Relaxed);
                let skipped = hub.frames_skipped.load(Ordering::Relaxed);
                let seconds = REPORT_EVERY.as_secs_f64();
                eprintln!(
                    "ws-baseline: {} sockets, {:.0} frames/s sent, {:.0}/s skipped (queue full)",
                    hub.connected(),
                    (sent - last_sent) as f64 / seconds,
                    (skipped - last_skipped) as f64 / seconds,
                );
                (last_sent, last_skipped) = (sent, skipped);
            }
        }
    }
}

/// A client request; only the fields the baseline looks at.
#[derive(Deserialize)]
struct Request {
    op: String,
    #[serde(default)]
    channels: Vec<String>,
}

/// The reply to one client text frame.
pub fn reply(text: &str) -> String {
    match serde_json::from_str::<Request>(text) {
        Ok(request) => match request.op.as_str() {
            "subscribe" => {
                json!({"type": "subscribed", "channels": request.channels, "snapshot": []})
            }
            "unsubscribe" => json!({"type": "unsubscribed", "channels": request.channels}),
            "ping" => json!({"type": "pong"}),
            other => json!({"type": "error", "code": "unknown_op",
                            "message": format!("unknown op {other:?}")}),
        },
        Err(error) => json!({"type": "error", "code": "bad_request", "message": error.to_string()}),
    }
    .to_string()
}

async fn players(hub: web::Data<Hub>) -> HttpResponse {
    let players: Vec<_> = hub.player_ids.iter().map(|id| json!({"id": id})).collect();
    HttpResponse::Ok().json(players)
}

async fn ws(
    req: HttpRequest,
    body: web::Payload,
    hub: web::Data<Hub>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let (outbound, frames) = mpsc::channel(OUTBOUND_FRAMES);
    let id = hub.register(outbound);
    actix_web::rt::spawn(socket(hub.into_inner(), id, session, stream, frames));
    Ok(response)
}

/// One socket: answers its requests and forwards broadcast frames.
async fn socket(
    hub: Arc<Hub>,
    id: u64,
    mut session: actix_ws::Session,
    stream: actix_ws::MessageStream,
    mut frames: mpsc::Receiver<ByteString>,
) {
    let mut stream = stream.max_frame_size(MAX_CLIENT_FRAME);
    let mut close = None;
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(frame) => if session.text(frame).await.is_err() { break },
                None => break,
            },
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if session.text(reply(&text)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(reason))) => {
                    close = reason;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(ProtocolError::Overflow)) => {
                    close = Some(CloseReason::from(CloseCode::Size));
                    break;
                }
                Some(Err(_)) | None => break,
            },
        }
    }
    hub.unregister(id);
    let _ = session.close(close).await;
}

async fn run(options: Options) -> std::io::Result<()> {
    let hub = Arc::new(Hub {
        sockets: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        player_ids: (1..=options.players as i64).collect(),
        frames_sent: AtomicU64::new(0),
        frames_skipped: AtomicU64::new(0),
    });
    let engine = actix_web::rt::spawn(engine(hub.clone(), options.clone()));
    let data = web::Data::from(hub);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/ws", web::get().to(ws))
            .route("/api/v1/players", web::get().to(players))
    })
    .backlog(4096)
    .max_connections(200_000)
    .shutdown_timeout(1);
    if options.workers > 0 {
        server = server.workers(options.workers);
    }
    let server = server.bind((options.host.as_str(), options.port))?;
    eprintln!(
        "ws-baseline: listening on ws://{}:{}/ws, {} players, tick {:?}, flush {:?}",
        options.host, options.port, options.players, options.tick, options.flush
    );
    let result = server.run().await;
    engine.abort();
    result
}

/// Entry point for `matchday loadgen ws-baseline …`.
pub async fn main(args: &[String]) -> ExitCode {
    match parse(args) {
        Ok(options) => match run(options).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ws-baseline: {error}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("ws-baseline: {error}\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse() {
        assert_eq!(parse(&[]).unwrap(), Options::default());
        let options = parse(&args(&[
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--players",
            "10",
            "--tick-ms",
            "50",
            "--flush-ms",
            "20",
            "--workers",
            "2",
        ]))
        .unwrap();
        assert_eq!(options.host, "0.0.0.0");
        assert_eq!(options.port, 9000);
        assert_eq!(options.players, 10);
        assert_eq!(options.tick, Duration::from_millis(50));
        assert_eq!(options.flush, Duration::from_millis(20));
        assert_eq!(options.workers, 2);
        assert!(parse(&args(&["--port", "70000"])).is_err());
        assert!(parse(&args(&["--players"])).is_err());
        assert!(parse(&args(&["--nope"])).is_err());
    }

    #[test]
    fn prices_move_round_robin_and_flush_once_per_player() {
        let mut prices = Prices::new(3);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(prices.flush().is_none(), "nothing moved yet");
        prices.advance(2, 1_000, &mut rng);
        let frame: Value = serde_json::from_str(&prices.flush().unwrap()).unwrap();
        assert_eq!(frame["type"], "prices");
        let ticks = frame["ticks"].as_array().unwrap();
        assert_eq!(ticks.len(), 2);
        assert_eq!(ticks[0]["player_id"], 1);
        assert_eq!(ticks[0]["seq"], 1);
        assert_eq!(ticks[0]["ts_ms"], 1_000);
        assert!(prices.flush().is_none(), "flushed ticks are not sent twice");
        // Three more moves: players 3, 1, 2; one tick each, latest seq.
        prices.advance(5, 2_000, &mut rng);
        let frame: Value = serde_json::from_str(&prices.flush().unwrap()).unwrap();
        let seqs: Vec<_> = frame["ticks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, vec![2, 2, 1]);
    }

    #[test]
    fn a_stalled_generator_moves_each_player_at_most_once() {
        let mut prices = Prices::new(4);
        let mut rng = StdRng::seed_from_u64(2);
        prices.advance(1_000, 5, &mut rng);
        assert!(prices.ticks.iter().all(|t| t.seq == 1));
        assert!(prices.ticks.iter().all(|t| t.price_cents >= 100));
    }

    #[test]
    fn replies_follow_the_protocol() {
        let parse = |s: String| serde_json::from_str::<Value>(&s).unwrap();
        let subscribed = parse(reply(
            r#"{"op":"subscribe","channels":["player:1","events"]}"#,
        ));
        assert_eq!(subscribed["type"], "subscribed");
        assert_eq!(subscribed["channels"], json!(["player:1", "events"]));
        assert_eq!(subscribed["snapshot"], json!([]));
        assert_eq!(parse(reply(r#"{"op":"ping"}"#))["type"], "pong");
        assert_eq!(
            parse(reply(r#"{"op":"unsubscribe","channels":["events"]}"#))["type"],
            "unsubscribed"
        );
        assert_eq!(parse(reply(r#"{"op":"dance"}"#))["code"], "unknown_op");
        assert_eq!(parse(reply("nope"))["code"], "bad_request");
    }

    #[test]
    fn broadcast_skips_full_queues_and_drops_closed_ones() {
        let hub = Hub {
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            player_ids: vec![],
            frames_sent: AtomicU64::new(0),
            frames_skipped: AtomicU64::new(0),
        };
        let (fast, mut fast_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let (slow, _slow_rx) = mpsc::channel(1);
        let (gone, gone_rx) = mpsc::channel(1);
        drop(gone_rx);
        hub.register(fast);
        hub.register(slow);
        hub.register(gone);
        let frame = ByteString::from_static("{}");
        hub.broadcast(&frame);
        hub.broadcast(&frame);
        assert_eq!(hub.connected(), 2, "the closed queue is dropped");
        assert_eq!(hub.frames_sent.load(Ordering::Relaxed), 3);
        assert_eq!(hub.frames_skipped.load(Ordering::Relaxed), 1);
        assert_eq!(fast_rx.try_recv().unwrap(), frame);
    }
}
