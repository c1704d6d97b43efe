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
//! them (locks, refusals) is in the figures.
//!
//! Time runs `--speed` times faster than the match; the server's lock
//! should be scaled the same way (`scripts/bench`'s `fairness` scenario
//! does). Prints one JSON line: per group the round trips, mean profit per
//! trade in cents and in per cent of the capital it used, each with a 95 %
//! confidence interval.

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
sell them about as long later. Prints the
mean profit per round trip of each group, in cents and per cent of capital,
with 95 % confidence intervals. --label names the server's policy in the output.";

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
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("{flag} needs a value"));
        let float = |v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or(format!("{flag}: not a non-negative number"))
        };
        let whole = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a whole number"))
        };
        match flag.as_str() {
            "--url" => options.url = value()?.trim_end_matches('/').to_string(),
            "--admin-token" => options.admin_token = value()?,
            "--events" => options.events = value()?.into(),
            "--meta" => options.meta = value()?.into(),
            "--speed" => options.speed = float(value()?)?,
            "--minutes" => options.minutes = Some(whole(value()?)? as u32),
            "--lag-min" => options.lag_min = float(value()?)?,
            "--lag-max" => options.lag_max = float(value()?)?,
            "--honest" => options.honest = whole(value()?)? as usize,
            "--courtsiders" => options.courtsiders = whole(value()?)? as usize,
            "--quantity" => options.quantity = whole(value()?)?.max(1) as i64,
            "--seed" => options.seed = whole(value()?)?,
            "--label" => options.label = value()?,
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
#[derive(Debug, Clone, Copy)]
struct RoundTrip {
    /// Capital used: the buy's cost, or the sell's proceeds.
    capital: i64,
    profit: i64,
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

fn summary(trips: &[RoundTrip]) -> Value {
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
    })
}

/// What the simulation counts besides round trips.
#[derive(Default)]
struct Counters {
    /// Opening orders refused (a lock, a policy, a cancellation).
    open_refused: u64,
    /// Closing orders that had to wait and retry.
    close_retries: u64,
    /// Positions never closed (the run ended first).
    unclosed: u64,
    /// Courtsiders' starting shares the server refused to sell them.
    inventory_refused: u64,
    /// Events the admin API did not accept.
    push_failures: u64,
    statuses: HashMap<u16, u64>,
}

struct Market {
    client: reqwest::Client,
    url: String,
    counters: Mutex<Counters>,
}

/// An order's outcome: the fill's total, or the status and retry hint.
enum Placed {
    Filled { total: i64 },
    Refused { retry_after: Option<Duration> },
}

impl Market {
    async fn order(
        &self,
        token: &str,
        key: &str,
        player: i64,
        side: &str,
        quantity: i64,
    ) -> Placed {
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
        if let Ok(mut counters) = self.counters.lock() {
            *counters.statuses.entry(status).or_default() += 1;
        }
        match (status, body["total_cents"].as_i64()) {
            (200 | 201, Some(total)) => Placed::Filled { total },
            _ => Placed::Refused {
                retry_after: body["error"]["retry_after_ms"]
                    .as_u64()
                    .or_else(|| body["retry_after_ms"].as_u64())
                    .map(Duration::from_millis),
            },
        }
    }

    /// Closes a position, retrying while refused (a lock) until `deadline`.
    async fn close(
        &self,
        token: &str,
        key: &str,
        player: i64,
        side: &str,
        quantity: i64,
        deadline: Instant,
    ) -> Option<i64> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .order(token, &format!("{key}-{attempt}"), player, side, quantity)
                .await
            {
                Placed::Filled { total } => return Some(total),
                Placed::Refused { retry_after, .. } => {
                    if Instant::now() >= deadline {
                        if let Ok(mut counters) = self.counters.lock() {
                            counters.unclosed += 1;
                        }
                        return None;
                    }
                    if let Ok(mut counters) = self.counters.lock() {
                        counters.close_retries += 1;
                    }
                    let wait = retry_after
                        .unwrap_or(Duration::from_millis(200))
                        .clamp(Duration::from_millis(50), Duration::from_secs(5));
                    tokio::time::sleep(wait).await;
                }
            }
        }
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
    // can sell ahead of a fall; that inventory is not part of any trip.
    for (n, token) in courtsider_tokens.iter().enumerate() {
        for &player in player_ids.iter() {
            let bought = market
                .order(token, &format!("inv-{n}-{player}"), player, "buy", quantity)
                .await;
            if let (Placed::Refused { .. }, Ok(mut counters)) = (bought, market.counters.lock()) {
                counters.inventory_refused += 1;
            }
        }
    }

    let started = Instant::now();
    // Event times are anchored to the start, not to when a push goes out.
    let started_utc = Utc::now();
    // Positions still open at the end are abandoned this long after it.
    let close_deadline = started + match_length + Duration::from_secs(120);
    let courtsider_trips: Arc<Mutex<Vec<RoundTrip>>> = Arc::default();
    let honest_trips: Arc<Mutex<Vec<RoundTrip>>> = Arc::default();
    let mut tasks = Vec::new();

    // The feed: each event pushed once its lag has passed; `pushed_tx`
    // counts the events done, in delivery order.
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
                    if let Ok(mut counters) = market.counters.lock() {
                        counters.push_failures += 1;
                    }
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
                let Placed::Filled { total: opened } = market
                    .order(&token, &format!("{key}-open"), event.player, open, quantity)
                    .await
                else {
                    if let Ok(mut counters) = market.counters.lock() {
                        counters.open_refused += 1;
                    }
                    return;
                };
                // Close once the feed has it (a lock, if any, is retried out).
                let _ = pushed.wait_for(|done| *done > position).await;
                if let Some(closed) = market
                    .close(
                        &token,
                        &format!("{key}-close"),
                        event.player,
                        close,
                        quantity,
                        close_deadline,
                    )
                    .await
                {
                    let profit = if open == "buy" {
                        closed - opened
                    } else {
                        opened - closed
                    };
                    if let Ok(mut trips) = trips.lock() {
                        trips.push(RoundTrip {
                            capital: opened,
                            profit,
                        });
                    }
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
                let Placed::Filled { total: opened } = market
                    .order(&token, &format!("{key}-open"), player, "buy", quantity)
                    .await
                else {
                    if let Ok(mut counters) = market.counters.lock() {
                        counters.open_refused += 1;
                    }
                    continue;
                };
                tokio::time::sleep(hold).await;
                if let Some(closed) = market
                    .close(
                        &token,
                        &format!("{key}-close"),
                        player,
                        "sell",
                        quantity,
                        close_deadline,
                    )
                    .await
                {
                    if let Ok(mut trips) = trips.lock() {
                        trips.push(RoundTrip {
                            capital: opened,
                            profit: closed - opened,
                        });
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())?;
    }

    let audit = super::admin_get(&client, &api("/admin/audit"), &admin).await?;
    let courtsiders = courtsider_trips
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    let honest = honest_trips.lock().map(|t| t.clone()).unwrap_or_default();
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
    Ok(json!({
        "scenario": "fairness",
        "policy": options.label,
        "speed": options.speed,
        "lag_seconds": [options.lag_min, options.lag_max],
        "events": schedule.len(),
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "courtsider": summary(&courtsiders),
        "honest": summary(&honest),
        // The courtsider's edge over an honest trader per round trip, and
        // whether their 95 % intervals overlap (no edge shown).
        "edge_cents": ((c_mean - h_mean) * 10.0).round() / 10.0,
        "intervals_overlap": c_mean - c_ci <= h_mean + h_ci && h_mean - h_ci <= c_mean + c_ci,
        "open_refused": counters.open_refused,
        "close_retries": counters.close_retries,
        "unclosed": counters.unclosed,
        "inventory_refused": counters.inventory_refused,
        "push_failures": counters.push_failures,
        "statuses": counters.statuses,
        "audit_ok": audit["ok"],
    }))
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
