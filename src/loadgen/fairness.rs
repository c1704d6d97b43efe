//! `loadgen fairness`: the courtsider simulation.
//!
//! Replays a real match (the Sportec files in `data/feeds/` by default)
//! against a server whose own feed is off, pushing each event through the
//! admin API `L` match-seconds after it happened (`L` uniform in
//! `--lag-min..--lag-max`, 15–40 by default): that is the feed's lag.
//! Courtsiders see each event when it happens: before a price-raising event
//! they buy, before a price-lowering one they sell shares they hold, and
//! once the event is in (and any lock it set has passed) they close the
//! position. Honest traders open and close random positions at random
//! times, held about as long. Both groups' round trips are priced from the
//! server's own fills, so whatever the server's fairness policy does to
//! them is in the figures:
//!
//! - `lock`: orders refused (`423`) while the player is locked are retried
//!   after `retry_after_ms` (closes) or given up (opens).
//! - `delay`: an order answered `202 pending` is polled
//!   (`GET /api/v1/orders/{id}`) until it is filled or `cancelled`; a
//!   cancelled open is no trip, a cancelled close is placed again.
//! - `void_window`: fills are `provisional`. Before closing, a trader whose
//!   open is provisional reads it again: if it was `voided` the trip counts
//!   with profit 0 (capital: the open's total) and nothing is closed. Selling
//!   shares that are still provisional is refused (`409
//!   holdings_provisional`) and retried after its `retry_after_ms`. Once
//!   every event is in, every round trip that still has a provisional fill
//!   is read again, and a trip whose close (or, after its close, whose open)
//!   was voided is dropped and counted.
//!
//! Honest traders' fill times (from each POST until the order is filled,
//! at once or when a poll saw it filled) are reported as percentiles: the
//! price a policy makes honest traders pay in waiting.
//!
//! Time runs `--speed` times faster than the match; the server's windows
//! (lock, delay, void window) should be scaled the same way
//! (`scripts/bench`'s `fairness` scenario does); the load generator needs
//! to know none of them. Prints one JSON line: per group the round trips,
//! mean profit per trade in cents and in per cent of the capital it used,
//! each with a 95 % confidence interval.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::ingest::{sportec, FeedItem};

pub const HELP: &str = "usage: matchday loadgen fairness [--url URL] [--admin-token TOKEN]
                                 [--events FILE --meta FILE] [--speed X] [--minutes M]
                                 [--lag-min S] [--lag-max S] [--honest N] [--courtsiders N]
                                 [--quantity Q] [--seed N] [--label TEXT]

Replays a match (Sportec XML; default data/feeds/idsse_J03WPY_*.xml) at --speed
times real time (default 10), for its first --minutes match minutes (default
all), against a server whose feed source is `none`. Each event is pushed
through the admin API L match-seconds after it happened (L uniform in
--lag-min..--lag-max, default 15..40). --courtsiders (default 5) trade each
event the moment it happens and close once it is in; --honest (default 20)
buy --quantity (default 10) shares of a random player at random times and
sell them about as long later. Works under every server fairness policy:
pending orders (202, `delay`) are polled until filled or cancelled,
provisional fills (`void_window`) are checked for voids before closing (a
voided open is a round trip with profit 0, not closed), and closes refused
by a lock or by still-provisional shares are retried after retry_after_ms.
Prints the mean profit per round trip of each group, in cents and per cent
of capital, with 95 % confidence intervals, honest traders' fill times
(p50/p90/p99/max ms), and counts of cancelled, voided and refused orders.
--label names the server's policy in the output.";

#[derive(Debug, Clone)]
struct Options {
    url: String,
    admin_token: String,
    events: PathBuf,
    meta: PathBuf,
    speed: f64,
    minutes: Option<u32>,
    lag_min: f64,
    lag_max: f64,
    honest: usize,
    courtsiders: usize,
    quantity: i64,
    seed: u64,
    label: String,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        url: "http://127.0.0.1:8080".into(),
        admin_token: std::env::var("MATCHDAY__ADMIN__TOKEN").unwrap_or_default(),
        events: "data/feeds/idsse_J03WPY_events.xml".into(),
        meta: "data/feeds/idsse_J03WPY_meta.xml".into(),
        speed: 10.0,
        minutes: None,
        lag_min: 15.0,
        lag_max: 40.0,
        honest: 20,
        courtsiders: 5,
        quantity: 10,
        seed: 1,
        label: "unlabelled".into(),
    };
    let mut flags = super::flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        let mut float = |flag: &str| {
            flags
                .parsed::<f64>(flag)
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or(format!("{flag}: not a non-negative number"))
        };
        match flag {
            "--speed" => options.speed = float(flag)?,
            "--lag-min" => options.lag_min = float(flag)?,
            "--lag-max" => options.lag_max = float(flag)?,
            "--url" => options.url = flags.value(flag)?.trim_end_matches('/').to_string(),
            "--admin-token" => options.admin_token = flags.value(flag)?,
            "--events" => options.events = flags.value(flag)?.into(),
            "--meta" => options.meta = flags.value(flag)?.into(),
            "--minutes" => options.minutes = Some(flags.parsed(flag)?),
            "--honest" => options.honest = flags.parsed(flag)?,
            "--courtsiders" => options.courtsiders = flags.parsed(flag)?,
            "--quantity" => options.quantity = flags.parsed::<i64>(flag)?.max(1),
            "--seed" => options.seed = flags.parsed(flag)?,
            "--label" => options.label = flags.value(flag)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.speed <= 0.0 {
        return Err("--speed must be above 0".into());
    }
    if options.lag_max < options.lag_min || options.lag_max <= 0.0 {
        return Err("--lag-max must be above 0 and at least --lag-min".into());
    }
    if options.admin_token.is_empty() {
        return Err("--admin-token (or MATCHDAY__ADMIN__TOKEN) is required".into());
    }
    Ok(options)
}

/// One closed position: what it cost to open and what closing brought
/// back, signed so that profit is `back - out` for buys and sells alike.
#[derive(Debug, Clone)]
struct RoundTrip {
    /// Capital used: the buy's cost, or the sell's proceeds.
    capital: i64,
    profit: i64,
    /// The open was voided (`void_window`): profit 0, nothing closed.
    voided: bool,
    /// Fills still provisional when the trip ended, read again once every
    /// event is in.
    recheck: Option<Recheck>,
}

/// A round trip's provisional fills, and whose they are (orders are read
/// by their owner only).
#[derive(Debug, Clone)]
struct Recheck {
    token: String,
    open: Option<i64>,
    close: Option<i64>,
}

impl RoundTrip {
    /// A closed trip; `recheck` only if one of its fills is provisional.
    fn closed(token: &str, open: &Fill, close: &Fill, profit: i64) -> RoundTrip {
        let provisional = |fill: &Fill| fill.order_id.filter(|_| fill.is_provisional());
        let (open_id, close_id) = (provisional(open), provisional(close));
        RoundTrip {
            capital: open.total,
            profit,
            voided: false,
            recheck: (open_id.is_some() || close_id.is_some()).then(|| Recheck {
                token: token.to_string(),
                open: open_id,
                close: close_id,
            }),
        }
    }

    /// An open that was voided: the trade happened and was reversed.
    fn voided(open: &Fill) -> RoundTrip {
        RoundTrip {
            capital: open.total,
            profit: 0,
            voided: true,
            recheck: None,
        }
    }
}

/// Mean and 95 % confidence half-width of `values`.
fn mean_ci(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::INFINITY);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, 1.96 * (variance / n).sqrt())
}

/// The `p`-th percentile (0–100) of ascending `sorted`, by nearest rank.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `{p50, p90, p99, max, count}` of durations in ms (nulls when empty).
fn latency_summary(values: &[f64]) -> Value {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| percentile(&sorted, p).map(|ms| (ms * 10.0).round() / 10.0);
    json!({
        "p50": at(50.0),
        "p90": at(90.0),
        "p99": at(99.0),
        "max": at(100.0),
        "count": sorted.len(),
    })
}

/// Per cent of `values` at most `limit` (null when empty).
fn share_within(values: &[f64], limit: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let within = values.iter().filter(|&&v| v <= limit).count();
    Some((1000.0 * within as f64 / values.len() as f64).round() / 10.0)
}

fn summary(trips: &[RoundTrip], counts: &GroupCounters) -> Value {
    let profits: Vec<f64> = trips.iter().map(|t| t.profit as f64).collect();
    let returns: Vec<f64> = trips
        .iter()
        .filter(|t| t.capital > 0)
        .map(|t| 100.0 * t.profit as f64 / t.capital as f64)
        .collect();
    let (profit, profit_ci) = mean_ci(&profits);
    let (ret, ret_ci) = mean_ci(&returns);
    let round = |x: f64, places: i32| {
        let scale = 10f64.powi(places);
        if x.is_finite() {
            json!((x * scale).round() / scale)
        } else {
            Value::Null
        }
    };
    json!({
        "round_trips": trips.len(),
        "mean_profit_cents": round(profit, 1),
        "ci95_profit_cents": round(profit_ci, 1),
        "mean_return_pct": round(ret, 3),
        "ci95_return_pct": round(ret_ci, 3),
        "total_profit_cents": trips.iter().map(|t| t.profit).sum::<i64>(),
        // Round trips above whose open was voided (profit 0).
        "voided_opens": trips.iter().filter(|t| t.voided).count(),
        "open_refused": counts.open_refused,
        "open_cancelled": counts.open_cancelled,
    })
}

/// Whose order it is, for the per-group counts.
#[derive(Debug, Clone, Copy)]
enum Group {
    Courtsider = 0,
    Honest = 1,
}

/// One group's opening orders that did not make a position.
#[derive(Default, Debug, Clone, Copy)]
struct GroupCounters {
    /// Refused at once (a lock, funds, holdings, a price move) or left
    /// pending past the poll's deadline.
    open_refused: u64,
    /// Pending, then cancelled (`delay`: an event on the player during the
    /// wait, or refused at fill time).
    open_cancelled: u64,
}

/// What the simulation counts besides round trips.
#[derive(Default)]
struct Counters {
    groups: [GroupCounters; 2],
    /// Closing orders that had to wait and retry.
    close_retries: u64,
    /// Closing orders that were pending, then cancelled (placed again).
    close_cancelled: u64,
    /// Sells refused because the shares were still provisional (`409
    /// holdings_provisional`), each retried after its `retry_after_ms`.
    provisional_waits: u64,
    /// Round trips dropped because their close was voided after it filled
    /// (the position was open again), found when re-read at the end.
    voided_closes: u64,
    /// Round trips dropped because their open was voided after the close
    /// had filled.
    opens_voided_after_close: u64,
    /// Pending orders still pending at their poll's deadline.
    pending_timeouts: u64,
    /// Order reads (`GET /api/v1/orders/{id}`) that failed or were not 200.
    poll_failures: u64,
    /// Positions never closed (the run ended first).
    unclosed: u64,
    /// Courtsiders' starting shares the server refused to sell them.
    inventory_refused: u64,
    /// Events the admin API did not accept.
    push_failures: u64,
    /// Statuses of `POST /api/v1/orders`.
    statuses: HashMap<u16, u64>,
    /// Honest traders' orders, opens and closes: ms from the POST that
    /// filled until it was filled.
    honest_fill_ms: Vec<f64>,
    /// Honest traders' closes: ms from the first attempt until filled,
    /// retries (locks, provisional shares, cancellations) included.
    honest_close_ms: Vec<f64>,
}

struct Market {
    client: reqwest::Client,
    url: String,
    counters: Mutex<Counters>,
}

/// A filled order.
#[derive(Debug, Clone)]
struct Fill {
    total: i64,
    order_id: Option<i64>,
    /// `filled` or `provisional`.
    status: String,
    /// When a provisional fill becomes final.
    final_at: Option<chrono::DateTime<Utc>>,
    /// From the POST until it was seen filled.
    waited: Duration,
}

impl Fill {
    fn is_provisional(&self) -> bool {
        self.status == "provisional"
    }

    fn from_body(body: &Value, waited: Duration) -> Option<Fill> {
        let total = body["total_cents"].as_i64()?;
        Some(Fill {
            total,
            order_id: body["order_id"].as_i64(),
            status: body["status"].as_str().unwrap_or("filled").to_string(),
            final_at: rfc3339(&body["final_at"]),
            waited,
        })
    }
}

fn rfc3339(value: &Value) -> Option<chrono::DateTime<Utc>> {
    value
        .as_str()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
}

/// How long from now until `at` (zero if it has passed).
fn until(at: chrono::DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

/// An order's outcome.
enum Placed {
    Filled(Fill),
    /// Pending, then cancelled (or voided before it could be used).
    Cancelled,
    /// Refused at once: the error code and retry hint.
    Refused {
        code: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Still pending at the poll's deadline.
    Unresolved,
}

/// A close's outcome.
enum Closed {
    /// Filled; `took` runs from the first attempt.
    Filled { fill: Fill, took: Duration },
    /// The position's open turned out voided: nothing to close.
    OpenVoided,
    /// Not filled by the deadline.
    Unclosed,
}

/// How often a pending order is read.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long after its `fills_at` a pending order may stay pending.
const POLL_GRACE: Duration = Duration::from_secs(30);

impl Market {
    fn count(&self, update: impl FnOnce(&mut Counters)) {
        if let Ok(mut counters) = self.counters.lock() {
            update(&mut counters);
        }
    }

    async fn order(
        &self,
        token: &str,
        key: &str,
        player: i64,
        side: &str,
        quantity: i64,
    ) -> Placed {
        let posted = Instant::now();
        let response = self
            .client
            .post(format!("{}/api/v1/orders", self.url))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&json!({"player_id": player, "side": side, "quantity": quantity}))
            .send()
            .await;
        let (status, body) = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
            Err(_) => (0, Value::Null),
        };
        self.count(|c| *c.statuses.entry(status).or_default() += 1);
        let pending = status == 202 || body["status"].as_str() == Some("pending");
        if (200..300).contains(&status) && pending {
            return match body["order_id"].as_i64() {
                Some(id) => {
                    self.await_fill(token, id, rfc3339(&body["fills_at"]), posted)
                        .await
                }
                None => Placed::Refused {
                    code: Some("pending_without_order_id".into()),
                    retry_after: None,
                },
            };
        }
        match (status, Fill::from_body(&body, posted.elapsed())) {
            (200 | 201, Some(fill)) => Placed::Filled(fill),
            _ => Placed::Refused {
                code: body["error"]["code"].as_str().map(str::to_string),
                retry_after: body["error"]["retry_after_ms"]
                    .as_u64()
                    .or_else(|| body["retry_after_ms"].as_u64())
                    .map(Duration::from_millis),
            },
        }
    }

    /// Reads a pending order (from its `fills_at` on, every 50 ms) until it
    /// is no longer pending, or until 30 s after `fills_at`.
    async fn await_fill(
        &self,
        token: &str,
        order_id: i64,
        fills_at: Option<chrono::DateTime<Utc>>,
        posted: Instant,
    ) -> Placed {
        let wait = fills_at.map(until).unwrap_or(Duration::ZERO);
        let deadline = Instant::now() + wait + POLL_GRACE;
        tokio::time::sleep(wait).await;
        loop {
            if let Some(body) = self.read_order(token, order_id).await {
                match body["status"].as_str() {
                    Some("pending") => {}
                    Some("filled" | "provisional") => {
                        if let Some(fill) = Fill::from_body(&body, posted.elapsed()) {
                            return Placed::Filled(fill);
                        }
                    }
                    // `voided` cannot follow `pending` under one policy; if
                    // it does, the order is as good as cancelled.
                    Some("cancelled" | "voided") => return Placed::Cancelled,
                    _ => self.count(|c| c.poll_failures += 1),
                }
            }
            if Instant::now() >= deadline {
                self.count(|c| c.pending_timeouts += 1);
                return Placed::Unresolved;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// An open that made no position, counted for its group.
    fn count_open_failure(&self, group: Group, outcome: &Placed) {
        self.count(|c| {
            let counts = &mut c.groups[group as usize];
            match outcome {
                Placed::Cancelled => counts.open_cancelled += 1,
                _ => counts.open_refused += 1,
            }
        });
    }

    /// `GET /api/v1/orders/{id}`: the order, or `None` if it could not be read.
    async fn read_order(&self, token: &str, order_id: i64) -> Option<Value> {
        let response = self
            .client
            .get(format!("{}/api/v1/orders/{order_id}", self.url))
            .bearer_auth(token)
            .send()
            .await;
        let body = match response {
            Ok(response) if response.status().as_u16() == 200 => {
                response.json::<Value>().await.ok()
            }
            _ => None,
        };
        if body.is_none() {
            self.count(|c| c.poll_failures += 1);
        }
        body
    }

    /// An order's status, read up to three times if the read fails.
    async fn order_status(&self, token: &str, order_id: i64) -> Option<String> {
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Some(body) = self.read_order(token, order_id).await {
                if let Some(status) = body["status"].as_str() {
                    return Some(status.to_string());
                }
            }
        }
        None
    }

    /// Whether a provisional open has been voided since (`false` for a
    /// fill that was never provisional).
    async fn open_voided(&self, token: &str, open: &Fill) -> bool {
        match open.order_id.filter(|_| open.is_provisional()) {
            Some(id) => self.order_status(token, id).await.as_deref() == Some("voided"),
            None => false,
        }
    }

    /// Closes the position `open` opened, retrying while refused (a lock,
    /// provisional shares, a cancellation) until `deadline`.
    #[allow(clippy::too_many_arguments)]
    async fn close(
        &self,
        token: &str,
        key: &str,
        player: i64,
        side: &str,
        quantity: i64,
        open: &Fill,
        deadline: Instant,
    ) -> Closed {
        let first = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let retry_after = match self
                .order(token, &format!("{key}-{attempt}"), player, side, quantity)
                .await
            {
                Placed::Filled(fill) => {
                    return Closed::Filled {
                        fill,
                        took: first.elapsed(),
                    }
                }
                Placed::Unresolved => {
                    // Placing it again could close twice: give up on it.
                    self.count(|c| c.unclosed += 1);
                    return Closed::Unclosed;
                }
                Placed::Cancelled => {
                    self.count(|c| c.close_cancelled += 1);
                    None
                }
                Placed::Refused { code, retry_after } => {
                    match code.as_deref() {
                        Some("holdings_provisional") => self.count(|c| c.provisional_waits += 1),
                        // The shares may be gone because the open was voided.
                        Some("insufficient_holdings") if self.open_voided(token, open).await => {
                            return Closed::OpenVoided
                        }
                        _ => {}
                    }
                    retry_after
                }
            };
            if Instant::now() >= deadline {
                self.count(|c| c.unclosed += 1);
                return Closed::Unclosed;
            }
            self.count(|c| c.close_retries += 1);
            let wait = retry_after
                .unwrap_or(Duration::from_millis(200))
                .clamp(Duration::from_millis(50), Duration::from_secs(60))
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(50));
            tokio::time::sleep(wait).await;
        }
    }

    /// Reads again every trip's provisional fills once every event is in;
    /// keeps the trips none of whose fills was voided.
    async fn recheck(&self, trips: Vec<RoundTrip>) -> Vec<RoundTrip> {
        use futures_util::StreamExt;
        let checked: Vec<Option<RoundTrip>> = futures_util::stream::iter(trips)
            .map(|trip| async move {
                let Some(recheck) = &trip.recheck else {
                    return Some(trip);
                };
                if let Some(close) = recheck.close {
                    if self.order_status(&recheck.token, close).await.as_deref() == Some("voided") {
                        self.count(|c| c.voided_closes += 1);
                        return None;
                    }
                }
                if let Some(open) = recheck.open {
                    if self.order_status(&recheck.token, open).await.as_deref() == Some("voided") {
                        self.count(|c| c.opens_voided_after_close += 1);
                        return None;
                    }
                }
                Some(trip)
            })
            .buffered(16)
            .collect()
            .await;
        checked.into_iter().flatten().collect()
    }
}

/// One scheduled event: when it happens and when the feed delivers it,
/// as offsets from the start, and which way it moves the price.
#[derive(Debug, Clone)]
struct Scheduled {
    happens: Duration,
    delivered: Duration,
    player: i64,
    kind: &'static str,
    event_id: String,
    minute: Option<i32>,
    jump_bp: i64,
}

/// Entry point for `matchday loadgen fairness`.
pub async fn main(args: &[String]) -> std::process::ExitCode {
    let options = match parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("loadgen fairness: {error}\n\n{HELP}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen fairness: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<Value, String> {
    let events = std::fs::read_to_string(&options.events)
        .map_err(|e| format!("{}: {e}", options.events.display()))?;
    let meta = std::fs::read_to_string(&options.meta)
        .map_err(|e| format!("{}: {e}", options.meta.display()))?;
    let feed = sportec::parse(&events, &meta).map_err(|e| e.to_string())?;
    let jumps = crate::config::Settings::load()
        .map_err(|e| e.to_string())?
        .pricing
        .jumps_bp;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let admin = format!("Bearer {}", options.admin_token);
    let api = |path: &str| format!("{}/api/v1{path}", options.url);

    // The players, then the users.
    let mut players: HashMap<String, i64> = HashMap::new();
    for person in &feed.players {
        let created = super::admin_post(
            &client,
            &api("/admin/players"),
            &admin,
            &json!({"name": person.name, "team": person.team,
                    "position": "MF", "price_cents": 1_000}),
            "creating players (is --admin-token right?)",
        )
        .await?;
        let id = created["id"].as_i64().ok_or("player without id")?;
        players.insert(person.provider_id.clone(), id);
    }
    let tokens = super::bulk_users(
        &client,
        &api("/admin/users/bulk"),
        &admin,
        options.honest + options.courtsiders,
        &format!("fair{}_", options.seed),
    )
    .await?;
    let (courtsider_tokens, honest_tokens) = tokens.split_at(options.courtsiders);

    // The match, scaled, with each event's lag drawn.
    let mut rng = StdRng::seed_from_u64(options.seed);
    let last_second = options.minutes.map(|m| i64::from(m) * 60);
    let mut schedule: Vec<Scheduled> = Vec::new();
    for item in &feed.items {
        let FeedItem::Event(event) = item else {
            continue;
        };
        let since = (event.occurred_at - feed.kickoff).num_milliseconds().max(0);
        if last_second.is_some_and(|last| since / 1000 >= last) {
            continue;
        }
        let Some(&player) = players.get(&event.provider_player_id) else {
            continue;
        };
        let lag = rng.gen_range(options.lag_min..=options.lag_max);
        let happens = Duration::from_secs_f64(since as f64 / 1000.0 / options.speed);
        schedule.push(Scheduled {
            happens,
            delivered: happens + Duration::from_secs_f64(lag / options.speed),
            player,
            kind: event.kind.as_str(),
            event_id: format!("fair{}-{}", options.seed, event.event_id),
            minute: event.minute,
            jump_bp: jumps.get(event.kind.as_str()).copied().unwrap_or(0),
        });
    }
    schedule.sort_by_key(|s| s.happens);
    let match_length = schedule
        .iter()
        .map(|s| s.delivered)
        .max()
        .unwrap_or(Duration::ZERO);
    // Where each event stands in delivery order: a courtsider closes only
    // once the feed task has pushed its event (and everything before it).
    let mut by_delivery: Vec<usize> = (0..schedule.len()).collect();
    by_delivery.sort_by_key(|&i| schedule[i].delivered);
    let mut rank = vec![0; schedule.len()];
    for (position, &index) in by_delivery.iter().enumerate() {
        rank[index] = position;
    }
    let (pushed_tx, pushed_rx) = tokio::sync::watch::channel(0usize);
    let mean_hold = (options.lag_min + options.lag_max) / 2.0 / options.speed;
    eprintln!(
        "loadgen fairness [{}]: {} events on {} players over {:.0} s, {} courtsiders, {} honest",
        options.label,
        schedule.len(),
        players.len(),
        match_length.as_secs_f64(),
        options.courtsiders,
        options.honest
    );

    let market = Arc::new(Market {
        client: client.clone(),
        url: options.url.clone(),
        counters: Mutex::new(Counters::default()),
    });
    let player_ids: Arc<Vec<i64>> = Arc::new(players.values().copied().collect());
    let quantity = options.quantity;
    // Courtsiders hold `quantity` of every player from the start, so they
    // can sell ahead of a fall; that inventory is not part of any trip. It
    // is bought before the match starts, many at once (under `delay` each
    // order waits), and the match starts once it is final (under
    // `void_window`, provisional shares cannot be sold).
    let inventory: Vec<Option<chrono::DateTime<Utc>>> = {
        use futures_util::StreamExt;
        let orders: Vec<(usize, &String, i64)> = courtsider_tokens
            .iter()
            .enumerate()
            .flat_map(|(n, token)| player_ids.iter().map(move |&player| (n, token, player)))
            .collect();
        let market = &market;
        futures_util::stream::iter(orders)
            .map(|(n, token, player)| async move {
                match market
                    .order(token, &format!("inv-{n}-{player}"), player, "buy", quantity)
                    .await
                {
                    Placed::Filled(fill) => fill.final_at,
                    _ => {
                        market.count(|c| c.inventory_refused += 1);
                        None
                    }
                }
            })
            .buffer_unordered(64)
            .collect()
            .await
    };
    if let Some(final_at) = inventory.into_iter().flatten().max() {
        let wait = until(final_at) + Duration::from_millis(200);
        eprintln!(
            "loadgen fairness [{}]: waiting {:.1} s for the courtsiders' shares to be final",
            options.label,
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait.min(Duration::from_secs(900))).await;
    }

    // Event times are anchored to the start, not to when a push goes out;
    // the wall clock is read first, so that an event's `occurred_at` is
    // never after a courtsider's order placed "when it happens".
    let started_utc = Utc::now();
    let started = Instant::now();
    // Positions still open at the end are abandoned this long after it.
    let close_deadline = started + match_length + Duration::from_secs(120);
    let courtsider_trips: Arc<Mutex<Vec<RoundTrip>>> = Arc::default();
    let honest_trips: Arc<Mutex<Vec<RoundTrip>>> = Arc::default();
    let mut tasks = Vec::new();

    // The feed: each event pushed once its lag has passed; `pushed_tx`
    // counts the events done, in delivery order. Under `void_window` the
    // fills an event voids are voided by the time its push is answered.
    {
        let client = client.clone();
        let admin = admin.clone();
        let url = api("/admin/feed/events");
        let in_order: Vec<Scheduled> = by_delivery.iter().map(|&i| schedule[i].clone()).collect();
        let market = market.clone();
        tasks.push(tokio::spawn(async move {
            for (done, event) in in_order.into_iter().enumerate() {
                tokio::time::sleep_until((started + event.delivered).into()).await;
                let occurred_at =
                    started_utc + chrono::Duration::from_std(event.happens).unwrap_or_default();
                let pushed = client
                    .post(&url)
                    .header("authorization", &admin)
                    .json(&json!({"event_id": event.event_id, "match_id": "fairness",
                                  "player_id": event.player, "kind": event.kind,
                                  "occurred_at": occurred_at.to_rfc3339(), "minute": event.minute}))
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                if !pushed {
                    market.count(|c| c.push_failures += 1);
                }
                let _ = pushed_tx.send(done + 1);
            }
        }));
    }

    // Courtsiders: one task per event they trade on.
    for (index, event) in schedule.iter().enumerate() {
        if event.jump_bp == 0 {
            continue;
        }
        for (n, token) in courtsider_tokens.iter().enumerate() {
            let (market, token, event, trips) = (
                market.clone(),
                token.clone(),
                event.clone(),
                courtsider_trips.clone(),
            );
            let (mut pushed, position) = (pushed_rx.clone(), rank[index]);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until((started + event.happens).into()).await;
                let (open, close) = if event.jump_bp > 0 {
                    ("buy", "sell")
                } else {
                    ("sell", "buy")
                };
                let key = format!("c{n}-e{index}");
                let opened = match market
                    .order(&token, &format!("{key}-open"), event.player, open, quantity)
                    .await
                {
                    Placed::Filled(fill) => fill,
                    outcome => {
                        market.count_open_failure(Group::Courtsider, &outcome);
                        return;
                    }
                };
                // Close once the feed has it (a lock, if any, is retried
                // out), unless the event voided the open.
                let _ = pushed.wait_for(|done| *done > position).await;
                if market.open_voided(&token, &opened).await {
                    if let Ok(mut trips) = trips.lock() {
                        trips.push(RoundTrip::voided(&opened));
                    }
                    return;
                }
                let closed = market
                    .close(
                        &token,
                        &format!("{key}-close"),
                        event.player,
                        close,
                        quantity,
                        &opened,
                        close_deadline,
                    )
                    .await;
                let trip = match closed {
                    Closed::Filled { fill, .. } => {
                        let profit = if open == "buy" {
                            fill.total - opened.total
                        } else {
                            opened.total - fill.total
                        };
                        RoundTrip::closed(&token, &opened, &fill, profit)
                    }
                    Closed::OpenVoided => RoundTrip::voided(&opened),
                    Closed::Unclosed => return,
                };
                if let Ok(mut trips) = trips.lock() {
                    trips.push(trip);
                }
            }));
        }
    }

    // Honest traders: random positions, held about as long as a
    // courtsider's, until the match is over.
    let end = started + match_length;
    for (n, token) in honest_tokens.iter().enumerate() {
        let (market, token, players, trips) = (
            market.clone(),
            token.clone(),
            player_ids.clone(),
            honest_trips.clone(),
        );
        let mut rng =
            StdRng::seed_from_u64(options.seed.wrapping_mul(1_000).wrapping_add(n as u64));
        tasks.push(tokio::spawn(async move {
            let mut trip = 0;
            loop {
                let pause = Duration::from_secs_f64(rng.gen_range(0.0..2.0 * mean_hold));
                tokio::time::sleep(pause).await;
                if Instant::now() >= end {
                    return;
                }
                trip += 1;
                let player = players[rng.gen_range(0..players.len())];
                let hold = Duration::from_secs_f64(rng.gen_range(0.5 * mean_hold..1.5 * mean_hold));
                let key = format!("h{n}-t{trip}");
                let opened = match market
                    .order(&token, &format!("{key}-open"), player, "buy", quantity)
                    .await
                {
                    Placed::Filled(fill) => fill,
                    outcome => {
                        market.count_open_failure(Group::Honest, &outcome);
                        continue;
                    }
                };
                market.count(|c| c.honest_fill_ms.push(millis(opened.waited)));
                tokio::time::sleep(hold).await;
                let trip = if market.open_voided(&token, &opened).await {
                    RoundTrip::voided(&opened)
                } else {
                    match market
                        .close(
                            &token,
                            &format!("{key}-close"),
                            player,
                            "sell",
                            quantity,
                            &opened,
                            close_deadline,
                        )
                        .await
                    {
                        Closed::Filled { fill, took } => {
                            market.count(|c| {
                                c.honest_fill_ms.push(millis(fill.waited));
                                c.honest_close_ms.push(millis(took));
                            });
                            RoundTrip::closed(&token, &opened, &fill, fill.total - opened.total)
                        }
                        Closed::OpenVoided => RoundTrip::voided(&opened),
                        Closed::Unclosed => continue,
                    }
                };
                if let Ok(mut trips) = trips.lock() {
                    trips.push(trip);
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())?;
    }

    // Every event is in, so every void has happened: the trips that still
    // had provisional fills are read again.
    let take = |trips: &Arc<Mutex<Vec<RoundTrip>>>| {
        trips
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    };
    let courtsiders = market.recheck(take(&courtsider_trips)).await;
    let honest = market.recheck(take(&honest_trips)).await;
    let audit = super::admin_get(&client, &api("/admin/audit"), &admin).await?;
    let counters = market
        .counters
        .lock()
        .map_err(|_| "counters poisoned".to_string())?;
    let (c_mean, c_ci) = mean_ci(
        &courtsiders
            .iter()
            .map(|t| t.profit as f64)
            .collect::<Vec<_>>(),
    );
    let (h_mean, h_ci) = mean_ci(&honest.iter().map(|t| t.profit as f64).collect::<Vec<_>>());
    let [c_counts, h_counts] = counters.groups;
    Ok(json!({
        "scenario": "fairness",
        "policy": options.label,
        "speed": options.speed,
        "lag_seconds": [options.lag_min, options.lag_max],
        "events": schedule.len(),
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "courtsider": summary(&courtsiders, &c_counts),
        "honest": summary(&honest, &h_counts),
        // The courtsider's edge over an honest trader per round trip, and
        // whether their 95 % intervals overlap (no edge shown).
        "edge_cents": ((c_mean - h_mean) * 10.0).round() / 10.0,
        "intervals_overlap": c_mean - c_ci <= h_mean + h_ci && h_mean - h_ci <= c_mean + c_ci,
        // Both groups together.
        "open_refused": c_counts.open_refused + h_counts.open_refused,
        "open_cancelled": c_counts.open_cancelled + h_counts.open_cancelled,
        "voided_opens": courtsiders.iter().chain(&honest).filter(|t| t.voided).count(),
        "voided_closes": counters.voided_closes,
        "opens_voided_after_close": counters.opens_voided_after_close,
        "close_cancelled": counters.close_cancelled,
        "provisional_waits": counters.provisional_waits,
        "pending_timeouts": counters.pending_timeouts,
        "poll_failures": counters.poll_failures,
        "close_retries": counters.close_retries,
        "unclosed": counters.unclosed,
        "inventory_refused": counters.inventory_refused,
        "push_failures": counters.push_failures,
        // Honest traders' waits, in real (not match) time.
        "honest_fill_ms": latency_summary(&counters.honest_fill_ms),
        "honest_filled_within_1s_pct": share_within(&counters.honest_fill_ms, 1000.0),
        "honest_close_ms": latency_summary(&counters.honest_close_ms),
        "statuses": counters.statuses,
        "audit_ok": audit["ok"],
    }))
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_narrows_with_more_trips() {
        let few: Vec<f64> = (0..10).map(|n| f64::from(n % 3)).collect();
        let many: Vec<f64> = (0..1_000).map(|n| f64::from(n % 3)).collect();
        let (mean_few, ci_few) = mean_ci(&few);
        let (mean_many, ci_many) = mean_ci(&many);
        assert!((mean_few - 0.9).abs() < 1e-9);
        assert!((mean_many - 1.0).abs() < 0.01);
        assert!(ci_many < ci_few / 5.0);
        assert_eq!(mean_ci(&[]), (0.0, 0.0));
        assert!(mean_ci(&[3.0]).1.is_infinite());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 90.0), Some(90.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Unsorted input is sorted by the summary.
        let summary = latency_summary(&[30.0, 10.0, 20.0, 5000.0]);
        assert_eq!(summary["p50"], json!(20.0));
        assert_eq!(summary["p99"], json!(5000.0));
        assert_eq!(summary["max"], json!(5000.0));
        assert_eq!(summary["count"], json!(4));
        assert!(latency_summary(&[])["p50"].is_null());
    }

    #[test]
    fn the_share_within_a_limit_counts_the_limit_in() {
        assert_eq!(
            share_within(&[10.0, 1000.0, 1000.1, 4000.0], 1000.0),
            Some(50.0)
        );
        assert_eq!(share_within(&[1.0, 2.0, 3.0], 1000.0), Some(100.0));
        assert_eq!(share_within(&[], 1000.0), None);
    }

    #[test]
    fn a_voided_open_is_a_trip_with_no_profit() {
        let fill = |status: &str, id: i64, total: i64| Fill {
            total,
            order_id: Some(id),
            status: status.into(),
            final_at: None,
            waited: Duration::ZERO,
        };
        let voided = RoundTrip::voided(&fill("provisional", 1, 10_000));
        assert_eq!(
            (voided.capital, voided.profit, voided.voided),
            (10_000, 0, true)
        );
        let trips = [
            voided,
            RoundTrip::closed(
                "t",
                &fill("filled", 2, 10_000),
                &fill("filled", 3, 11_000),
                1_000,
            ),
        ];
        let summary = summary(&trips, &GroupCounters::default());
        assert_eq!(summary["round_trips"], json!(2));
        assert_eq!(summary["voided_opens"], json!(1));
        assert_eq!(summary["mean_profit_cents"], json!(500.0));
        assert_eq!(summary["mean_return_pct"], json!(5.0));
        // Only provisional fills are read again at the end.
        assert!(trips[1].recheck.is_none());
        let mixed = RoundTrip::closed(
            "t",
            &fill("filled", 4, 10_000),
            &fill("provisional", 5, 9_000),
            -1_000,
        );
        let recheck = mixed.recheck.expect("a provisional close is read again");
        assert_eq!((recheck.open, recheck.close), (None, Some(5)));
    }

    #[test]
    fn fills_are_read_from_the_order_body() {
        let body = json!({"order_id": 9, "status": "provisional", "total_cents": 1234,
                          "final_at": "2030-01-01T00:00:05Z"});
        let fill = Fill::from_body(&body, Duration::from_millis(3)).expect("a fill");
        assert_eq!((fill.total, fill.order_id), (1234, Some(9)));
        assert!(fill.is_provisional());
        assert_eq!(
            fill.final_at.map(|at| at.to_rfc3339()),
            Some("2030-01-01T00:00:05+00:00".into())
        );
        // A pending order has no total yet.
        let pending = json!({"order_id": 9, "status": "pending", "total_cents": null});
        assert!(Fill::from_body(&pending, Duration::ZERO).is_none());
        // An older server's fill has no status: it is filled.
        let old = json!({"order_id": 1, "total_cents": 5});
        assert_eq!(
            Fill::from_body(&old, Duration::ZERO).map(|f| f.status),
            Some("filled".into())
        );
    }

    #[test]
    fn options_are_checked() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(parse(&args(&["--admin-token", "t", "--speed", "0"])).is_err());
        assert!(parse(&args(&[
            "--admin-token",
            "t",
            "--lag-min",
            "5",
            "--lag-max",
            "1"
        ]))
        .is_err());
        let options = parse(&args(&[
            "--admin-token",
            "t",
            "--minutes",
            "20",
            "--label",
            "lock",
        ]))
        .expect("valid");
        assert_eq!(
            (options.minutes, options.label.as_str()),
            (Some(20), "lock")
        );
    }
}
