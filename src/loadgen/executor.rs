//! `matchday loadgen executor`: the order executor without HTTP, to tell
//! what the database design does from what the HTTP front end on the same
//! cores does. Users and players come from a running server's admin API (so
//! they are real accounts, with opening ledger entries); the orders then go
//! straight to [`PgOrders`] on connections of this process: batches through
//! `place_batch` (the group-commit transaction, as the server's executors
//! call it) or, with `--one-by-one`, one transaction per order through
//! `place`. An order counts once its call has returned, that is once it is
//! committed. With `--rate`, open loop: orders due at a steady rate go
//! through the server's own group-commit queue ([`Batcher`]) in front of
//! `place_batch`, and each latency counts from when the order was due.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;

use super::{admin_get, bulk_users, create_players};
use crate::config::{DatabaseSettings, Secret};
use crate::domain::{Cents, PlayerId, Quantity, Side, UserId};
use crate::idempotency::{self, IdempotencyKey};
use crate::trading::batch::{BatchLimits, Batcher};
use crate::trading::{
    Fairness, NewOrder, OrderStore, PgOrders, Placed, TradingError, ORDERS_ENDPOINT,
};

/// Usage of `matchday loadgen executor`.
pub const HELP: &str = "usage: matchday loadgen executor --database-url URL [--url URL]
                                 [--admin-token TOKEN] [--users 500] [--players 10]
                                 [--batch 512] [--executors 2] [--one-by-one N]
                                 [--rate PER_SEC] [--duration 10]

Creates users and players through a running server's admin API, then places
the `orders` mix (60 % buys, 1-3 shares, random players) straight through the
order store on connections of its own to --database-url, under the `lock`
policy: --executors tasks, each applying batches of --batch orders of its own
users (as the server's executors do), or with --one-by-one N, N tasks each
placing one order per transaction. Prints orders/s (every one committed
before it counts), per-call latency and the ledger audit.

With --rate, open loop: orders due at that steady rate are queued one by one
with the server's group-commit executors (--executors queues, batches of at
most --batch, no wait: trading.batch_* as shipped), and each order's latency
counts from when it was due, queueing included.";

struct Options {
    url: String,
    admin_token: String,
    database_url: String,
    users: usize,
    players: usize,
    batch: usize,
    executors: usize,
    one_by_one: Option<usize>,
    /// Open loop: orders due per second, through the group-commit queue.
    rate: Option<f64>,
    duration: Duration,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        url: "http://127.0.0.1:8080".into(),
        admin_token: std::env::var("MATCHDAY__ADMIN__TOKEN").unwrap_or_default(),
        database_url: String::new(),
        users: 500,
        players: 10,
        batch: 512,
        executors: 2,
        one_by_one: None,
        rate: None,
        duration: Duration::from_secs(10),
    };
    let mut flags = super::flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--url" => options.url = flags.value(flag)?,
            "--admin-token" => options.admin_token = flags.value(flag)?,
            "--database-url" => options.database_url = flags.value(flag)?,
            "--users" => options.users = flags.parsed::<usize>(flag)?.max(1),
            "--players" => options.players = flags.parsed::<usize>(flag)?.max(1),
            "--batch" => options.batch = flags.parsed::<usize>(flag)?.max(1),
            "--executors" => options.executors = flags.parsed::<usize>(flag)?.max(1),
            "--one-by-one" => options.one_by_one = Some(flags.parsed::<usize>(flag)?.max(1)),
            "--rate" => options.rate = Some(flags.parsed::<usize>(flag)?.max(1) as f64),
            "--duration" => options.duration = flags.seconds(flag)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.database_url.is_empty() {
        return Err("--database-url is required".into());
    }
    Ok(options)
}

/// Entry point for `matchday loadgen executor`.
pub async fn main(args: &[String]) -> ExitCode {
    let options = match parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("loadgen executor: {error}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen executor: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What the calls of one task came to.
struct Tally {
    calls: Histogram<u64>,
    outcomes: BTreeMap<&'static str, u64>,
}

fn outcome(answer: &Result<Placed, TradingError>) -> &'static str {
    match answer {
        Ok(placed) if placed.outcome.is_ok() => "filled",
        Ok(_) => "rejected",
        Err(TradingError::Unexpected(_)) => "error",
        Err(_) => "refused",
    }
}

async fn run(options: Options) -> Result<(), String> {
    let client = reqwest::Client::new();
    let admin = format!("Bearer {}", options.admin_token);
    let api = |path: &str| format!("{}/api/v1{}", options.url, path);
    let players = create_players(&client, &api("/admin/players"), &admin, options.players).await?;
    let prefix = format!("ex{}_", rand::thread_rng().gen_range(0..1_000_000));
    bulk_users(
        &client,
        &api("/admin/users/bulk"),
        &admin,
        options.users,
        &prefix,
    )
    .await?;

    let tasks = options.one_by_one.unwrap_or(options.executors);
    let pool = crate::db::pool(&DatabaseSettings {
        url: Secret::new(options.database_url.clone()),
        max_connections: tasks + 1,
    })
    .map_err(|e| e.to_string())?;
    let users: Vec<i64> = {
        let connection = pool.get().await.map_err(|e| e.to_string())?;
        connection
            .query(
                "SELECT id FROM users WHERE username LIKE $1 || '%' ORDER BY id",
                &[&prefix],
            )
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    if users.len() < options.users {
        return Err(format!(
            "found {} of the {} users",
            users.len(),
            options.users
        ));
    }
    let store = Arc::new(PgOrders::new(pool, Fairness::LOCK));
    if let Some(rate) = options.rate {
        return open_loop(&options, store, &users, &players, rate).await;
    }
    eprintln!(
        "loadgen executor: {} users, {} players, {}",
        users.len(),
        players.len(),
        match options.one_by_one {
            Some(n) => format!("{n} tasks placing one order per transaction"),
            None => format!("{tasks} executors applying batches of {}", options.batch),
        }
    );

    let started = Instant::now();
    let deadline = started + options.duration;
    let mut handles = Vec::new();
    for task in 0..tasks {
        // As the server shards: each task has its own users.
        let own: Vec<i64> = users
            .iter()
            .copied()
            .filter(|user| user.unsigned_abs() % tasks as u64 == task as u64)
            .collect();
        let (store, players) = (store.clone(), players.clone());
        let (batch, one_by_one) = (options.batch, options.one_by_one.is_some());
        handles.push(tokio::spawn(async move {
            let mut tally = Tally {
                calls: Histogram::new(3).unwrap_or_else(|_| unreachable!()),
                outcomes: BTreeMap::new(),
            };
            let mut n = 0u64;
            while Instant::now() < deadline && !own.is_empty() {
                let size = if one_by_one { 1 } else { batch };
                let orders: Vec<NewOrder> = (0..size)
                    .map(|_| {
                        n += 1;
                        random_order(task, n, &own, &players)
                    })
                    .collect();
                let sent = Instant::now();
                let answers = if one_by_one {
                    match orders.first() {
                        Some(order) => vec![store.place(order).await],
                        None => Vec::new(),
                    }
                } else {
                    store.place_batch(orders).await
                };
                let _ = tally.calls.record(sent.elapsed().as_micros().max(1) as u64);
                for answer in &answers {
                    *tally.outcomes.entry(outcome(answer)).or_default() += 1;
                }
            }
            tally
        }));
    }
    let mut calls = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut outcomes = BTreeMap::<&'static str, u64>::new();
    for handle in handles {
        let tally = handle.await.map_err(|e| e.to_string())?;
        calls.add(&tally.calls).map_err(|e| e.to_string())?;
        for (name, count) in tally.outcomes {
            *outcomes.entry(name).or_default() += count;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = |name: &str| outcomes.get(name).copied().unwrap_or(0);
    // Fills and business refusals both committed (the refusal under its key).
    let completed = count("filled") + count("rejected");
    let audit = admin_get(&client, &api("/admin/audit"), &admin).await?;
    let report = json!({
        "scenario": "executor",
        "mode": if options.one_by_one.is_some() { "one_by_one" } else { "batches" },
        "tasks": tasks,
        "batch": options.one_by_one.map_or(options.batch, |_| 1),
        "seconds": (elapsed * 10.0).round() / 10.0,
        "orders_completed_per_sec": (completed as f64 / elapsed).round(),
        "fills_per_sec": (count("filled") as f64 / elapsed).round(),
        "call_p50_ms": calls.value_at_quantile(0.50) as f64 / 1000.0,
        "call_p99_ms": calls.value_at_quantile(0.99) as f64 / 1000.0,
        "calls": calls.len(),
        "outcomes": outcomes,
        "audit_ok": audit["ok"],
    });
    println!("{report}");
    verdict(&audit, count("error"))
}

/// Orders due at `rate` per second, each queued with the group-commit
/// executors as the server queues it; latency from when it was due.
async fn open_loop(
    options: &Options,
    store: Arc<PgOrders>,
    users: &[i64],
    players: &[i64],
    rate: f64,
) -> Result<(), String> {
    let limits = BatchLimits {
        max: options.batch,
        wait: Duration::ZERO,
        executors: options.executors,
    };
    eprintln!(
        "loadgen executor: open loop, {rate} orders/s due, {} executors, batches of at most {}",
        limits.executors, limits.max
    );
    let sizes = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let seen = sizes.clone();
    let batcher = Arc::new(Batcher::spawn(
        limits,
        move |orders| {
            let store = store.clone();
            async move { store.place_batch(orders).await }
        },
        move |shape| {
            if let Ok(mut sizes) = seen.lock() {
                sizes.push(shape.size);
            }
        },
    ));
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut n = 0u64;
    loop {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        n += 1;
        let order = random_order(0, n, users, players);
        let (batcher, answers) = (batcher.clone(), answers.clone());
        tokio::spawn(async move {
            let answer = batcher.submit(order.user.0.unsigned_abs(), order).await;
            let _ = answers.send((due - started, due.elapsed(), answer));
        });
    }
    drop(answers);
    let mut latencies = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut outcomes = BTreeMap::<&'static str, u64>::new();
    // Per second of the run (by when orders were due): the worst latency,
    // so that a stall shows when it happened.
    let mut worst = vec![Duration::ZERO; options.duration.as_secs() as usize + 1];
    while let Some((offset, latency, answer)) = answered.recv().await {
        let _ = latencies.record(latency.as_micros().max(1) as u64);
        if let Some(slot) = worst.get_mut(offset.as_secs() as usize) {
            *slot = (*slot).max(latency);
        }
        let name = answer.as_ref().map_or("error", outcome);
        *outcomes.entry(name).or_default() += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = |name: &str| outcomes.get(name).copied().unwrap_or(0);
    let completed = count("filled") + count("rejected");
    let batches = sizes.lock().map(|sizes| sizes.clone()).unwrap_or_default();
    let client = reqwest::Client::new();
    let audit = admin_get(
        &client,
        &format!("{}/api/v1/admin/audit", options.url),
        &format!("Bearer {}", options.admin_token),
    )
    .await?;
    let report = json!({
        "scenario": "executor",
        "mode": "open_loop",
        "rate": rate,
        "executors": options.executors,
        "batch": options.batch,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "orders_completed_per_sec": (completed as f64 / elapsed).round(),
        "fills_per_sec": (count("filled") as f64 / elapsed).round(),
        "p50_ms": latencies.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_ms": latencies.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": latencies.max() as f64 / 1000.0,
        "batches": batches.len(),
        "mean_batch": if batches.is_empty() { 0.0 } else {
            (batches.iter().sum::<usize>() as f64 / batches.len() as f64 * 10.0).round() / 10.0
        },
        "worst_ms_per_second": worst.iter().map(|w| w.as_millis() as u64).collect::<Vec<_>>(),
        "outcomes": outcomes,
        "audit_ok": audit["ok"],
    });
    println!("{report}");
    verdict(&audit, count("error"))
}

/// A run fails if the books do not balance after it or any order failed
/// unexpectedly.
fn verdict(audit: &serde_json::Value, errors: u64) -> Result<(), String> {
    if audit["ok"] != json!(true) {
        return Err(format!("audit failed after the run: {audit}"));
    }
    if errors > 0 {
        return Err(format!("{errors} orders failed unexpectedly"));
    }
    Ok(())
}

/// The `orders` mix: a random user of `users`, player, side and 1-3 shares,
/// under a key of its own.
fn random_order(task: usize, n: u64, users: &[i64], players: &[i64]) -> NewOrder {
    let mut rng = rand::thread_rng();
    let user = users[rng.gen_range(0..users.len())];
    let player = players[rng.gen_range(0..players.len())];
    let side = if rng.gen_bool(0.6) {
        Side::Buy
    } else {
        Side::Sell
    };
    let quantity = rng.gen_range(1..=3);
    let key = format!("ex-{task}-{n}");
    NewOrder {
        user: UserId(user),
        player: PlayerId(player),
        side,
        quantity: Quantity::new(quantity).unwrap_or_else(|| unreachable!()),
        limit: None::<Cents>,
        fingerprint: idempotency::fingerprint(
            ORDERS_ENDPOINT,
            &format!("{player}:{}:{quantity}", side.as_str()),
        ),
        key: IdempotencyKey::parse(&key).unwrap_or_else(|| unreachable!()),
    }
}
