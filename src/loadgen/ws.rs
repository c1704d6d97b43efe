//! `matchday loadgen ws`: WebSocket fan-out load. Opens many client sockets
//! against one or more servers speaking the `/ws` protocol of docs/API.md,
//! subscribes each to a few `player:{id}` channels, and measures what comes
//! back: frames and ticks per second, tick latency (`now − ts_ms`), per-player
//! `seq` order, error and close frames, and optionally the server's RSS per
//! socket.
//!
//! Rates, latency, `seq_skips` and `silent_sockets` cover only the
//! measurement window (after every socket has connected or failed);
//! `seq_backwards`, `errors`, `closes` and `connect_failures` cover the whole
//! run, since any of those is a defect whenever it happens.
//!
//! The binary's `main` runs on actix's current-thread runtime, so this
//! builds its own multi-threaded tokio runtime on a separate thread.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::memory::rss_kib;

/// Usage of `matchday loadgen ws`.
pub const HELP: &str = "usage: matchday loadgen ws [--url ws://127.0.0.1:8080/ws]... [--sockets N]
                           [--players-per-socket K] [--players 1,2,3 | --discover URL]
                           [--duration SECONDS] [--ramp PER_SEC]
                           [--source-addrs 127.0.0.1,127.0.0.2 | --source-ips N]
                           [--server-pid PID]... [--token TOKEN]

Opens N WebSocket connections (spread round-robin over the --url list, each
bound to the next --source-addrs address), subscribes each to K player
channels, then measures frames/s, ticks/s, tick latency (now - ts_ms), seq
order per player, error and close frames for --duration seconds after all
are connected. Player ids come from --players or from GET /api/v1/players on
--discover (default: the first --url as http). --server-pid (repeatable)
reports the servers' VmRSS growth per socket and CPU use. Prints one JSON line.";

/// Latency histograms are sharded so sockets on different threads rarely
/// contend; a socket locks its shard once per frame.
const HISTOGRAM_SHARDS: usize = 32;
/// Longest a single connect + handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parsed `loadgen ws` options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// WebSocket URLs (`ws://host:port/path`); sockets go round-robin.
    pub urls: Vec<String>,
    /// Number of sockets to open.
    pub sockets: usize,
    /// Player channels each socket subscribes to.
    pub players_per_socket: usize,
    /// Explicit player ids (otherwise discovered).
    pub players: Option<Vec<i64>>,
    /// Base HTTP URL to discover players from (`GET /api/v1/players`).
    pub discover: Option<String>,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Connections opened per second.
    pub ramp: usize,
    /// Local addresses client sockets bind to, round-robin (empty: any).
    pub source_addrs: Vec<IpAddr>,
    /// Server processes whose VmRSS is reported.
    pub server_pids: Vec<u32>,
    /// Optional `?token=` for the upgrade.
    pub token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            urls: vec!["ws://127.0.0.1:8080/ws".into()],
            sockets: 1000,
            players_per_socket: 5,
            players: None,
            discover: None,
            duration: Duration::from_secs(20),
            ramp: 2000,
            source_addrs: Vec::new(),
            server_pids: Vec::new(),
            token: None,
        }
    }
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Parses the arguments after `loadgen ws`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut urls_given = false;
    let mut flags = super::flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--url" => {
                if !urls_given {
                    options.urls.clear();
                    urls_given = true;
                }
                let value = flags.value(flag)?;
                for url in split_list(&value) {
                    parse_ws_url(url)?;
                    options.urls.push(url.to_string());
                }
            }
            "--sockets" => options.sockets = flags.parsed::<usize>(flag)?,
            "--players-per-socket" => {
                options.players_per_socket = flags.parsed::<usize>(flag)?.max(1)
            }
            "--players" => {
                let value = flags.value(flag)?;
                let ids = split_list(&value)
                    .map(|id| {
                        id.parse::<i64>()
                            .map_err(|_| format!("--players: bad id {id}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if ids.is_empty() {
                    return Err("--players: empty list".into());
                }
                options.players = Some(ids);
            }
            "--discover" => {
                options.discover = Some(flags.value(flag)?.trim_end_matches('/').to_string())
            }
            "--duration" => options.duration = flags.seconds(flag)?,
            "--ramp" => options.ramp = flags.parsed::<usize>(flag)?.max(1),
            "--source-addrs" => {
                let value = flags.value(flag)?;
                options.source_addrs = split_list(&value)
                    .map(|a| {
                        a.parse::<IpAddr>()
                            .map_err(|_| format!("--source-addrs: bad {a}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--source-ips" => {
                let count = flags.parsed::<usize>(flag)?;
                if !(1..=254).contains(&count) {
                    return Err("--source-ips: 1 to 254".into());
                }
                options.source_addrs = (1..=count as u8)
                    .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
                    .collect();
            }
            "--server-pid" => {
                let value = flags.value(flag)?;
                for pid in split_list(&value) {
                    let pid = pid
                        .parse::<u32>()
                        .map_err(|_| format!("--server-pid: bad pid {pid}"))?;
                    options.server_pids.push(pid);
                }
            }
            "--token" => options.token = Some(flags.value(flag)?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.urls.is_empty() {
        return Err("--url: empty list".into());
    }
    if options.players.is_some() && options.discover.is_some() {
        return Err("give either --players or --discover, not both".into());
    }
    Ok(options)
}

/// A `ws://` URL split into what the client needs.
#[derive(Debug, Clone, PartialEq)]
pub struct WsUrl {
    /// `host:port` to resolve and connect to.
    pub authority: String,
    /// The `http://host:port` equivalent, for discovery.
    pub http_base: String,
}

/// Splits `ws://host[:port]/path?query`; `wss://` is refused (no TLS here).
pub fn parse_ws_url(url: &str) -> Result<WsUrl, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    if host_port.is_empty() {
        return Err(format!("{url}: no host"));
    }
    // A port is present unless the last ':' belongs to an IPv6 literal.
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    let authority = if has_port {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    Ok(WsUrl {
        authority,
        http_base: format!("http://{host_port}"),
    })
}

/// Appends `token=…` to a URL's query.
fn with_token(url: &str, token: Option<&str>) -> String {
    match token {
        None => url.to_string(),
        Some(token) if url.contains('?') => format!("{url}&token={token}"),
        Some(token) => format!("{url}?token={token}"),
    }
}

/// The players socket `socket` subscribes to: `K` consecutive ids starting at
/// `socket mod P`, wrapping, never the same id twice.
pub fn players_for(socket: usize, per_socket: usize, players: &[i64]) -> Vec<i64> {
    if players.is_empty() {
        return Vec::new();
    }
    (0..per_socket.min(players.len()))
        .map(|j| players[(socket + j) % players.len()])
        .collect()
}

/// How one tick's `seq` relates to the last one seen for its player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// First tick seen for this player on this socket.
    First,
    /// Exactly the previous seq + 1.
    Next,
    /// A jump forward by more than one: `n` seqs were conflated away. Expected.
    Skip(u64),
    /// Equal to or lower than one already seen: a protocol violation.
    Backwards,
}

/// Per-socket record of the highest `seq` seen per player. A handful of
/// players per socket, so a small vector beats a map.
#[derive(Debug, Default)]
pub struct SeqChecker {
    last: Vec<(i64, u64)>,
}

impl SeqChecker {
    /// Classifies `seq` for `player` and remembers it if it is newer.
    pub fn observe(&mut self, player: i64, seq: u64) -> SeqVerdict {
        match self.last.iter_mut().find(|(p, _)| *p == player) {
            None => {
                self.last.push((player, seq));
                SeqVerdict::First
            }
            Some((_, last)) if seq <= *last => SeqVerdict::Backwards,
            Some((_, last)) => {
                let gap = seq - *last;
                *last = seq;
                if gap == 1 {
                    SeqVerdict::Next
                } else {
                    SeqVerdict::Skip(gap - 1)
                }
            }
        }
    }
}

/// The fields of a server frame the checker needs; everything else is skipped
/// by serde without being stored.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    ticks: Vec<Tick>,
    #[serde(default)]
    snapshot: Vec<SnapshotEntry>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Tick {
    player_id: i64,
    seq: u64,
    ts_ms: i64,
}

#[derive(Deserialize)]
struct SnapshotEntry {
    #[serde(default)]
    data: Option<SnapshotData>,
}

#[derive(Deserialize)]
struct SnapshotData {
    #[serde(default)]
    player_id: Option<i64>,
    #[serde(default)]
    seq: Option<u64>,
}

const PHASE_RAMP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_DONE: u8 = 2;

/// Counters shared by every socket task.
struct Shared {
    phase: AtomicU8,
    attempted: AtomicU64,
    connected: AtomicU64,
    open: AtomicU64,
    connect_failures: AtomicU64,
    frames: AtomicU64,
    ticks: AtomicU64,
    seq_backwards: AtomicU64,
    seq_skips: AtomicU64,
    heard_in_window: AtomicU64,
    errors: AtomicU64,
    unparsable: AtomicU64,
    close_1008: AtomicU64,
    close_1009: AtomicU64,
    close_1013: AtomicU64,
    close_other: AtomicU64,
    close_abnormal: AtomicU64,
    error_codes: Mutex<BTreeMap<String, u64>>,
    connect_errors: Mutex<BTreeMap<String, u64>>,
    latency_us: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn new() -> Result<Self, String> {
        let latency_us = (0..HISTOGRAM_SHARDS)
            .map(|_| {
                Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .map(Mutex::new)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(Shared {
            phase: AtomicU8::new(PHASE_RAMP),
            attempted: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            open: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            seq_backwards: AtomicU64::new(0),
            seq_skips: AtomicU64::new(0),
            heard_in_window: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unparsable: AtomicU64::new(0),
            close_1008: AtomicU64::new(0),
            close_1009: AtomicU64::new(0),
            close_1013: AtomicU64::new(0),
            close_other: AtomicU64::new(0),
            close_abnormal: AtomicU64::new(0),
            error_codes: Mutex::new(BTreeMap::new()),
            connect_errors: Mutex::new(BTreeMap::new()),
            latency_us,
        })
    }

    fn measuring(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == PHASE_MEASURE
    }

    fn count(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
        if let Ok(mut map) = map.lock() {
            *map.entry(key.to_string()).or_default() += 1;
        }
    }

    fn count_close(&self, code: u16) {
        let counter = match code {
            1008 => &self.close_1008,
            1009 => &self.close_1009,
            1013 => &self.close_1013,
            _ => &self.close_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Per-socket state while reading.
struct SocketState {
    seq: SeqChecker,
    heard: bool,
    shard: usize,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Accounts for one text frame.
fn on_text(text: &str, state: &mut SocketState, shared: &Shared) {
    let frame: Frame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(_) => {
            shared.unparsable.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let measuring = shared.measuring();
    if measuring {
        shared.frames.fetch_add(1, Ordering::Relaxed);
        if !state.heard {
            state.heard = true;
            shared.heard_in_window.fetch_add(1, Ordering::Relaxed);
        }
    }
    match frame.kind.as_ref() {
        "prices" => {
            let now = now_micros();
            let mut skips = 0;
            let mut backwards = 0;
            for tick in &frame.ticks {
                match state.seq.observe(tick.player_id, tick.seq) {
                    SeqVerdict::Backwards => backwards += 1,
                    SeqVerdict::Skip(_) => skips += 1,
                    SeqVerdict::First | SeqVerdict::Next => {}
                }
            }
            if backwards > 0 {
                shared.seq_backwards.fetch_add(backwards, Ordering::Relaxed);
            }
            if measuring {
                shared
                    .ticks
                    .fetch_add(frame.ticks.len() as u64, Ordering::Relaxed);
                shared.seq_skips.fetch_add(skips, Ordering::Relaxed);
                if let Ok(mut histogram) = shared.latency_us[state.shard].lock() {
                    for tick in &frame.ticks {
                        let micros = (now - tick.ts_ms.saturating_mul(1000)).max(0) as u64;
                        histogram.saturating_record(micros);
                    }
                }
            }
        }
        "subscribed" => {
            // The snapshot is a baseline: a later tick at or below it is stale.
            for data in frame.snapshot.iter().filter_map(|e| e.data.as_ref()) {
                if let (Some(player), Some(seq)) = (data.player_id, data.seq) {
                    if state.seq.observe(player, seq) == SeqVerdict::Backwards {
                        shared.seq_backwards.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        "error" => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            Shared::count(&shared.error_codes, frame.code.as_deref().unwrap_or("none"));
        }
        _ => {}
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    url: &str,
) -> Result<Ws, (&'static str, String)> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| ("socket", e.to_string()))?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| ("bind", e.to_string()))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| ("connect", e.to_string()))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| ("handshake", e.to_string()))?;
    Ok(ws)
}

/// Everything one socket task needs, shared by all of them.
struct Plan {
    targets: Vec<(String, SocketAddr)>,
    sources: Vec<IpAddr>,
    players: Vec<i64>,
    per_socket: usize,
}

async fn run_socket(
    index: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let (url, addr) = &plan.targets[index % plan.targets.len()];
    let source = (!plan.sources.is_empty()).then(|| plan.sources[index % plan.sources.len()]);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(*addr, source, url)).await;
    shared.attempted.fetch_add(1, Ordering::Relaxed);
    let mut ws = match connected {
        Ok(Ok(ws)) => ws,
        Ok(Err((stage, error))) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            // Keep the reason short and free of per-socket details.
            let reason = error.split(" (").next().unwrap_or_default();
            Shared::count(&shared.connect_errors, &format!("{stage}: {reason}"));
            return;
        }
        Err(_) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            Shared::count(&shared.connect_errors, "timeout");
            return;
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    shared.open.fetch_add(1, Ordering::Relaxed);

    let channels: Vec<String> = players_for(index, plan.per_socket, &plan.players)
        .into_iter()
        .map(|p| format!("player:{p}"))
        .collect();
    let subscribe = json!({"op": "subscribe", "channels": channels}).to_string();
    let mut state = SocketState {
        seq: SeqChecker::default(),
        heard: false,
        shard: index % HISTOGRAM_SHARDS,
    };
    if ws.send(Message::text(subscribe)).await.is_err() {
        shared.close_abnormal.fetch_add(1, Ordering::Relaxed);
        shared.open.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                break;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => on_text(text.as_str(), &mut state, &shared),
                Some(Ok(Message::Close(frame))) => {
                    if shared.phase.load(Ordering::Relaxed) != PHASE_DONE {
                        shared.count_close(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    // Let tungstenite send the close reply, then drop.
                    let drain = async { while ws.next().await.is_some() {} };
                    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    if shared.phase.load(Ordering::Relaxed) != PHASE_DONE {
                        shared.close_abnormal.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
    }
    shared.open.fetch_sub(1, Ordering::Relaxed);
}

/// CPU seconds (user + system) used so far by `pid`, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_seconds(&stat)
}

/// utime + stime of a /proc stat line, in seconds (the kernel reports
/// them in USER_HZ, 100 per second on Linux).
pub fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: skip past it.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Summed CPU seconds of `pids`; `None` if any is unreadable.
fn cpu_seconds_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// The soft "Max open files" limit from a /proc limits file.
pub fn open_files_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

fn warn_if_few_files(sockets: usize) {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| open_files_limit(&limits));
    if let Some(limit) = limit {
        if limit < sockets as u64 + 64 {
            eprintln!(
                "loadgen ws: warning: RLIMIT_NOFILE is {limit}, too low for {sockets} sockets; \
                 run `ulimit -n {}` first (the server needs as many)",
                (sockets + 1024).next_power_of_two()
            );
        }
    }
}

async fn discover(base: &str) -> Result<Vec<i64>, String> {
    let url = format!("{base}/api/v1/players");
    let players: Value = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .error_for_status()
        .map_err(|e| format!("GET {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let ids: Vec<i64> = players
        .as_array()
        .ok_or(format!("GET {url}: not a JSON array"))?
        .iter()
        .filter_map(|p| p["id"].as_i64())
        .collect();
    if ids.is_empty() {
        return Err(format!("GET {url}: no players"));
    }
    Ok(ids)
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

async fn run(options: Options) -> Result<Value, String> {
    warn_if_few_files(options.sockets);
    let mut targets = Vec::new();
    for url in &options.urls {
        let parsed = parse_ws_url(url)?;
        let addr = tokio::net::lookup_host(&parsed.authority)
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .next()
            .ok_or(format!("{url}: no address"))?;
        targets.push((with_token(url, options.token.as_deref()), addr));
    }
    let players = match (&options.players, &options.discover) {
        (Some(players), _) => players.clone(),
        (None, Some(base)) => discover(base).await?,
        (None, None) => discover(&parse_ws_url(&options.urls[0])?.http_base).await?,
    };
    eprintln!(
        "loadgen ws: {} sockets over {} url(s) from {} source address(es), {} of {} players each, \
         ramp {}/s, then {:?}",
        options.sockets,
        targets.len(),
        options.source_addrs.len().max(1),
        options.players_per_socket.min(players.len()),
        players.len(),
        options.ramp,
        options.duration
    );
    let plan = Arc::new(Plan {
        targets,
        sources: options.source_addrs.clone(),
        players: players.clone(),
        per_socket: options.players_per_socket,
    });
    let shared = Arc::new(Shared::new()?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let rss_before = rss_kib(&options.server_pids);

    let progress = {
        let shared = shared.clone();
        let target = options.sockets;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            let mut last_frames = 0;
            loop {
                every.tick().await;
                let frames = load(&shared.frames);
                eprintln!(
                    "loadgen ws: connected {}/{target} (open {}, failed {}), frames/s {}",
                    load(&shared.connected),
                    load(&shared.open),
                    load(&shared.connect_failures),
                    frames - last_frames
                );
                last_frames = frames;
            }
        })
    };

    let ramp_started = Instant::now();
    let mut handles = Vec::with_capacity(options.sockets);
    for index in 0..options.sockets {
        let due = ramp_started + Duration::from_secs_f64(index as f64 / options.ramp as f64);
        tokio::time::sleep_until(due.into()).await;
        handles.push(tokio::spawn(run_socket(
            index,
            plan.clone(),
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    while load(&shared.attempted) < options.sockets as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_seconds = ramp_started.elapsed().as_secs_f64();
    let rss_after = rss_kib(&options.server_pids);
    let connected = load(&shared.connected);
    eprintln!(
        "loadgen ws: {connected} connected, {} failed in {connect_seconds:.1}s; measuring",
        load(&shared.connect_failures)
    );

    let server_cpu_before = cpu_seconds_of(&options.server_pids);
    let client_cpu_before = cpu_seconds(std::process::id());
    let window_started = Instant::now();
    shared.phase.store(PHASE_MEASURE, Ordering::Relaxed);
    tokio::time::sleep(options.duration).await;
    shared.phase.store(PHASE_DONE, Ordering::Relaxed);
    let seconds = window_started.elapsed().as_secs_f64();
    // Percent of one core over the window (200 = two cores busy).
    let cpu_percent = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(before), Some(after)) => Some(((after - before) / seconds * 100.0).round()),
        _ => None,
    };
    let server_cpu = cpu_percent(server_cpu_before, cpu_seconds_of(&options.server_pids));
    let client_cpu = cpu_percent(client_cpu_before, cpu_seconds(std::process::id()));
    let rss_end = rss_kib(&options.server_pids);
    let open_at_end = load(&shared.open);
    progress.abort();

    let _ = stop_tx.send(true);
    for handle in handles {
        let _ = handle.await;
    }

    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
    for shard in &shared.latency_us {
        let shard = shard.lock().map_err(|e| e.to_string())?;
        latency.add(&*shard).map_err(|e| e.to_string())?;
    }
    let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
    let latency_ms = if latency.is_empty() {
        json!({"p50": null, "p99": null, "p999": null, "max": null})
    } else {
        json!({
            "p50": ms(latency.value_at_quantile(0.50)),
            "p99": ms(latency.value_at_quantile(0.99)),
            "p999": ms(latency.value_at_quantile(0.999)),
            "max": ms(latency.max()),
        })
    };
    let frames = load(&shared.frames);
    let ticks = load(&shared.ticks);
    let rss_per_socket = match (rss_before, rss_after) {
        (Some(before), Some(after)) if connected > 0 => {
            Some(((after as f64 - before as f64) / connected as f64 * 100.0).round() / 100.0)
        }
        _ => None,
    };
    let lock_map = |map: &Mutex<BTreeMap<String, u64>>| map.lock().map(|m| m.clone()).ok();
    Ok(json!({
        "scenario": "ws",
        "urls": options.urls,
        "players": players.len(),
        "players_per_socket": options.players_per_socket.min(players.len()),
        "sockets_target": options.sockets,
        "sockets_connected": connected,
        "sockets_open_at_end": open_at_end,
        "connect_failures": load(&shared.connect_failures),
        "connect_errors": lock_map(&shared.connect_errors),
        "connect_seconds": (connect_seconds * 10.0).round() / 10.0,
        "seconds": (seconds * 10.0).round() / 10.0,
        "frames": frames,
        "frames_per_sec": (frames as f64 / seconds).round(),
        "ticks": ticks,
        "ticks_per_sec": (ticks as f64 / seconds).round(),
        "latency_ms": latency_ms,
        "seq_backwards": load(&shared.seq_backwards),
        "seq_skips": load(&shared.seq_skips),
        "silent_sockets": connected.saturating_sub(load(&shared.heard_in_window)),
        "errors": load(&shared.errors),
        "error_codes": lock_map(&shared.error_codes),
        "unparsable_frames": load(&shared.unparsable),
        "closes": {
            "1008": load(&shared.close_1008),
            "1009": load(&shared.close_1009),
            "1013": load(&shared.close_1013),
            "other": load(&shared.close_other),
            "abnormal": load(&shared.close_abnormal),
        },
        "server_rss_kib_before": rss_before,
        "server_rss_kib_after": rss_after,
        "server_rss_kib_end": rss_end,
        "rss_per_socket_kib": rss_per_socket,
        "server_cpu_percent": server_cpu,
        "client_rss_kib": rss_kib(&[std::process::id()]),
        "client_cpu_percent": client_cpu,
    }))
}

/// Entry point for `matchday loadgen ws …`. Runs the load on its own
/// multi-threaded runtime in a separate thread, so it works from actix's
/// current-thread runtime, and awaits the result without blocking it.
pub async fn main(args: &[String]) -> ExitCode {
    let options = match parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("loadgen ws: {error}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("loadgen-ws".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("loadgen-ws-worker")
                .build()
                .map_err(|e| format!("runtime: {e}"))
                .and_then(|runtime| runtime.block_on(run(options)));
            let _ = done_tx.send(result);
        });
    if let Err(error) = spawned {
        eprintln!("loadgen ws: cannot start thread: {error}");
        return ExitCode::FAILURE;
    }
    match done_rx.await {
        Ok(Ok(report)) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("loadgen ws: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("loadgen ws: the load thread died");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn seq_checker_tells_skips_from_backwards() {
        let mut checker = SeqChecker::default();
        assert_eq!(checker.observe(7, 10), SeqVerdict::First);
        assert_eq!(checker.observe(7, 11), SeqVerdict::Next);
        assert_eq!(checker.observe(7, 15), SeqVerdict::Skip(3));
        assert_eq!(checker.observe(7, 15), SeqVerdict::Backwards, "a repeat");
        assert_eq!(checker.observe(7, 12), SeqVerdict::Backwards);
        // A stale tick does not lower the mark: the next one is judged against 15.
        assert_eq!(checker.observe(7, 16), SeqVerdict::Next);
        // Players are independent.
        assert_eq!(checker.observe(8, 1), SeqVerdict::First);
        assert_eq!(checker.observe(8, 2), SeqVerdict::Next);
        assert_eq!(checker.observe(7, 17), SeqVerdict::Next);
    }

    #[test]
    fn frames_are_counted_and_checked() {
        let shared = Shared::new().unwrap();
        let mut state = SocketState {
            seq: SeqChecker::default(),
            heard: false,
            shard: 0,
        };
        let snapshot = r#"{"type":"subscribed","channels":["player:1"],
            "snapshot":[{"channel":"player:1","data":{"player_id":1,"price_cents":100,
            "epoch":0,"seq":5,"ts_ms":1,"locked_until":null}},
            {"channel":"leaderboard","data":{"as_of":"x","entries":[]}}]}"#;
        on_text(snapshot, &mut state, &shared);
        shared.phase.store(PHASE_MEASURE, Ordering::Relaxed);
        let now = now_micros() / 1000;
        let prices = format!(
            r#"{{"type":"prices","ticks":[{{"player_id":1,"price_cents":101,"epoch":0,"seq":5,"ts_ms":{now}}},
            {{"player_id":2,"price_cents":50,"epoch":0,"seq":1,"ts_ms":{now}}}]}}"#
        );
        on_text(&prices, &mut state, &shared);
        let later = format!(
            r#"{{"type":"prices","ticks":[{{"player_id":1,"price_cents":102,"epoch":0,"seq":9,"ts_ms":{now}}}]}}"#
        );
        on_text(&later, &mut state, &shared);
        on_text(
            r#"{"type":"error","code":"invalid_channel","message":"no"}"#,
            &mut state,
            &shared,
        );
        on_text("not json", &mut state, &shared);
        assert_eq!(load(&shared.frames), 3);
        assert_eq!(load(&shared.ticks), 3);
        assert_eq!(load(&shared.seq_backwards), 1, "seq 5 repeats the snapshot");
        assert_eq!(load(&shared.seq_skips), 1);
        assert_eq!(load(&shared.errors), 1);
        assert_eq!(load(&shared.unparsable), 1);
        assert_eq!(load(&shared.heard_in_window), 1);
        assert_eq!(shared.latency_us[0].lock().unwrap().len(), 3);
    }

    #[test]
    fn players_are_assigned_deterministically() {
        let players = [10, 20, 30, 40];
        assert_eq!(players_for(0, 2, &players), vec![10, 20]);
        assert_eq!(players_for(3, 2, &players), vec![40, 10]);
        assert_eq!(players_for(5, 3, &players), vec![20, 30, 40]);
        assert_eq!(
            players_for(1, 9, &players),
            vec![20, 30, 40, 10],
            "capped, no repeats"
        );
        assert_eq!(players_for(6, 2, &players), players_for(6, 2, &players));
        assert!(players_for(0, 3, &[]).is_empty());
        // Every player is covered evenly when sockets are a multiple of P.
        let mut counts = [0; 4];
        for socket in 0..8 {
            for p in players_for(socket, 2, &players) {
                counts[players.iter().position(|&x| x == p).unwrap()] += 1;
            }
        }
        assert_eq!(counts, [4, 4, 4, 4]);
    }

    #[test]
    fn defaults() {
        let options = parse(&[]).unwrap();
        assert_eq!(options, Options::default());
        assert_eq!(options.urls, vec!["ws://127.0.0.1:8080/ws"]);
        assert_eq!(options.sockets, 1000);
        assert_eq!(options.players_per_socket, 5);
        assert_eq!(options.duration, Duration::from_secs(20));
        assert_eq!(options.ramp, 2000);
    }

    #[test]
    fn options_parse() {
        let options = parse(&args(&[
            "--url",
            "ws://127.0.0.1:18090/ws,ws://127.0.0.1:18091/ws",
            "--url",
            "ws://localhost/ws?x=1",
            "--sockets",
            "5000",
            "--players-per-socket",
            "3",
            "--players",
            "1, 2,3",
            "--duration",
            "7",
            "--ramp",
            "500",
            "--source-ips",
            "3",
            "--server-pid",
            "11",
            "--server-pid",
            "12,13",
            "--token",
            "abc",
        ]))
        .unwrap();
        assert_eq!(
            options.urls,
            vec![
                "ws://127.0.0.1:18090/ws",
                "ws://127.0.0.1:18091/ws",
                "ws://localhost/ws?x=1"
            ]
        );
        assert_eq!(options.sockets, 5000);
        assert_eq!(options.players_per_socket, 3);
        assert_eq!(options.players, Some(vec![1, 2, 3]));
        assert_eq!(options.duration, Duration::from_secs(7));
        assert_eq!(options.ramp, 500);
        assert_eq!(
            options.source_addrs,
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "127.0.0.2".parse().unwrap(),
                "127.0.0.3".parse().unwrap()
            ]
        );
        assert_eq!(options.server_pids, vec![11, 12, 13]);
        assert_eq!(options.token.as_deref(), Some("abc"));

        let options = parse(&args(&["--source-addrs", "127.0.0.5,::1"])).unwrap();
        assert_eq!(options.source_addrs.len(), 2);
        let options = parse(&args(&["--discover", "http://h:1/"])).unwrap();
        assert_eq!(options.discover.as_deref(), Some("http://h:1"));
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            &["--sockets"][..],
            &["--sockets", "many"],
            &["--url", "wss://h/ws"],
            &["--url", "http://h/ws"],
            &["--players", "1,x"],
            &["--players", ","],
            &["--source-ips", "0"],
            &["--source-ips", "300"],
            &["--source-addrs", "localhost"],
            &["--server-pid", "-1"],
            &["--players", "1", "--discover", "http://h"],
            &["--bogus"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ws_urls_split() {
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:18090/ws").unwrap(),
            WsUrl {
                authority: "127.0.0.1:18090".into(),
                http_base: "http://127.0.0.1:18090".into()
            }
        );
        assert_eq!(parse_ws_url("ws://h/ws").unwrap().authority, "h:80");
        assert_eq!(parse_ws_url("ws://h?token=x").unwrap().authority, "h:80");
        assert_eq!(
            parse_ws_url("ws://[::1]:9/ws").unwrap().authority,
            "[::1]:9"
        );
        assert_eq!(parse_ws_url("ws://[::1]/ws").unwrap().authority, "[::1]:80");
        assert!(parse_ws_url("ws:///ws").is_err());
        assert_eq!(with_token("ws://h/ws", Some("t")), "ws://h/ws?token=t");
        assert_eq!(
            with_token("ws://h/ws?a=1", Some("t")),
            "ws://h/ws?a=1&token=t"
        );
        assert_eq!(with_token("ws://h/ws", None), "ws://h/ws");
    }

    #[test]
    fn proc_files_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 20000                files     \n";
        assert_eq!(open_files_limit(limits), Some(1024));
        let stat = "42 (match day) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(stat_cpu_seconds(stat), Some(3.0));
        assert_eq!(stat_cpu_seconds("42 (x) S 1"), None);
    }
}
