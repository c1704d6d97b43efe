//! `matchday loadgen`: the project's own load generator. Talks only the
//! public API, like any client, so its figures are end-to-end.
//!
//! `orders`: bulk-creates users, then keeps `concurrency` requests in flight
//! (random buys and sells of 1–3 shares, each with a fresh idempotency key)
//! for `duration` seconds, and reports throughput, latency percentiles and
//! the audit afterwards.
//!
//! `ws`: opens many WebSocket subscribers and measures price fan-out
//! (see [`ws`]). `ws-baseline`: a bare actix-ws broadcast server speaking
//! the same protocol, to compare the real server against (see [`baseline`]).
//!
//! `http`: plain GET load with latency percentiles; `http-baseline`: a bare
//! actix-web server with one trivial route to measure the machine with it
//! (see [`http`]). `drop`: a flash sale driven through the public API, with
//! a correctness check of the outcome (see [`drop`]).

pub mod baseline;
pub mod drop;
pub mod executor;
pub mod fairness;
mod flags;
pub mod http;
pub mod leaderboard;
pub mod ws;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{json, Value};

const HELP: &str = "usage: matchday loadgen orders [--url URL] [--admin-token TOKEN] [--users N]
                               [--players N] [--concurrency N] [--duration SECONDS]
                               [--window SECONDS] [--server-pid PID] [--rate PER_SEC]
       matchday loadgen ws [options]           (see `matchday loadgen ws --help`)
       matchday loadgen ws-baseline [options]  (see `matchday loadgen ws-baseline --help`)
       matchday loadgen http [options]         (see `matchday loadgen http --help`)
       matchday loadgen http-baseline [options] (see `matchday loadgen http-baseline --help`)
       matchday loadgen drop [options]         (see `matchday loadgen drop --help`)
       matchday loadgen executor [options]     (see `matchday loadgen executor --help`)
       matchday loadgen leaderboard [options]  (see `matchday loadgen leaderboard --help`)
       matchday loadgen fairness [options]     (see `matchday loadgen fairness --help`)

orders: creates users and players through the admin API, then places random
orders with N requests in flight and prints orders/s and latency percentiles.
With --rate, open loop instead: orders are due at that steady rate (at most
--concurrency in flight) and each latency counts from when it was due, so a
server falling behind shows in the percentiles (no coordinated omission).
With --window, also one JSON line per window of that many seconds (for soaks),
with the server's RSS when --server-pid is given.

ws: opens N WebSocket subscribers (spread over several URLs and loopback source
addresses) and prints frames/s, tick latency, seq-order violations, error and
close frames, and the servers' RSS per socket.

ws-baseline: a bare actix-ws broadcast server speaking the same /ws protocol,
to compare the real server's fan-out against.

http: GET requests with N in flight for a duration; prints requests/s, latency
percentiles and status counts. http-baseline: a bare actix-web server with one
trivial route (GET /healthz) to measure the machine with the same tool.

drop: runs a flash sale through the public API (users, sale, one purchase per
buyer all at once), then prints requests/s, latency, time to sold out and to
settled, and PASS/FAIL correctness checks; exits non-zero on any FAIL.

leaderboard: seeds users with holdings, or reads the leaderboard at a fixed
rate while prices tick and prints read latencies, as_of ages and the server's
revaluation cycle figures.

fairness: the courtsider simulation: replays a match, pushing each event
15-40 s (scaled) after it happened, while courtsiders trade on it early and
honest traders trade at random; prints each group's mean profit per trade.";

struct Options {
    url: String,
    admin_token: String,
    users: usize,
    players: usize,
    concurrency: usize,
    duration: Duration,
    /// Report every window as well as the whole run.
    window: Option<Duration>,
    server_pid: Option<u32>,
    /// Open loop: orders due per second.
    rate: Option<f64>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        url: "http://127.0.0.1:8080".into(),
        admin_token: std::env::var("MATCHDAY__ADMIN__TOKEN").unwrap_or_default(),
        users: 200,
        players: 10,
        concurrency: 32,
        duration: Duration::from_secs(10),
        window: None,
        server_pid: None,
        rate: None,
    };
    let mut flags = flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        match flag {
            "--url" => options.url = flags.value(flag)?,
            "--admin-token" => options.admin_token = flags.value(flag)?,
            "--users" => options.users = flags.parsed::<usize>(flag)?.max(1),
            "--players" => options.players = flags.parsed::<usize>(flag)?.max(1),
            "--concurrency" => options.concurrency = flags.parsed::<usize>(flag)?.max(1),
            "--duration" => options.duration = flags.seconds(flag)?,
            "--window" => options.window = Some(flags.seconds(flag)?.max(Duration::from_secs(1))),
            "--server-pid" => options.server_pid = Some(flags.parsed(flag)?),
            "--rate" => options.rate = Some(flags.parsed::<usize>(flag)?.max(1) as f64),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

/// Entry point for `matchday loadgen …`.
pub async fn main(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("orders") => match parse(&args[1..]) {
            Ok(options) => match orders(options).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("loadgen: {error}");
                    ExitCode::FAILURE
                }
            },
            Err(error) => {
                eprintln!("loadgen: {error}\n\n{HELP}");
                ExitCode::from(2)
            }
        },
        Some("ws") if wants_help(&args[1..]) => {
            println!("{}", ws::HELP);
            ExitCode::SUCCESS
        }
        Some("ws") => ws::main(&args[1..]).await,
        Some("ws-baseline") if wants_help(&args[1..]) => {
            println!("{}", baseline::HELP);
            ExitCode::SUCCESS
        }
        Some("ws-baseline") => baseline::main(&args[1..]).await,
        Some("http") if wants_help(&args[1..]) => {
            println!("{}", http::HELP);
            ExitCode::SUCCESS
        }
        Some("http") => http::main(&args[1..]).await,
        Some("http-baseline") if wants_help(&args[1..]) => {
            println!("{}", http::BASELINE_HELP);
            ExitCode::SUCCESS
        }
        Some("http-baseline") => http::baseline(&args[1..]).await,
        Some("executor") if wants_help(&args[1..]) => {
            println!("{}", executor::HELP);
            ExitCode::SUCCESS
        }
        Some("executor") => executor::main(&args[1..]).await,
        Some("drop") if wants_help(&args[1..]) => {
            println!("{}", drop::HELP);
            ExitCode::SUCCESS
        }
        Some("drop") => drop::main(&args[1..]).await,
        Some("leaderboard") if wants_help(&args[1..]) => {
            println!("{}", leaderboard::HELP);
            ExitCode::SUCCESS
        }
        Some("leaderboard") => leaderboard::main(&args[1..]).await,
        Some("fairness") if wants_help(&args[1..]) => {
            println!("{}", fairness::HELP);
            ExitCode::SUCCESS
        }
        Some("fairness") => fairness::main(&args[1..]).await,
        _ => {
            println!("{HELP}");
            ExitCode::from(2)
        }
    }
}

/// A POST to an admin endpoint that must succeed; its JSON answer.
pub(crate) async fn admin_post(
    client: &reqwest::Client,
    url: &str,
    admin: &str,
    body: &Value,
    what: &str,
) -> Result<Value, String> {
    client
        .post(url)
        .header("authorization", admin)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .error_for_status()
        .map_err(|e| format!("{what}: {e}"))?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// A GET of an admin endpoint; its JSON answer.
pub(crate) async fn admin_get(
    client: &reqwest::Client,
    url: &str,
    admin: &str,
) -> Result<Value, String> {
    client
        .get(url)
        .header("authorization", admin)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// `count` users with a large balance through `/admin/users/bulk`; their
/// tokens.
/// Creates `count` players priced 10.00, 11.00, …; their ids.
pub(crate) async fn create_players(
    client: &reqwest::Client,
    url: &str,
    admin: &str,
    count: usize,
) -> Result<Vec<i64>, String> {
    let mut players = Vec::new();
    for n in 0..count {
        let created = admin_post(
            client,
            url,
            admin,
            &json!({"name": format!("Load Player {n}"), "team": "Load FC",
                    "position": "MF", "price_cents": 1_000 + 100 * n as i64}),
            "creating players (is --admin-token right?)",
        )
        .await?;
        players.push(created["id"].as_i64().ok_or("player without id")?);
    }
    Ok(players)
}

pub(crate) async fn bulk_users(
    client: &reqwest::Client,
    url: &str,
    admin: &str,
    count: usize,
    prefix: &str,
) -> Result<Vec<String>, String> {
    let created = admin_post(
        client,
        url,
        admin,
        &json!({"count": count, "prefix": prefix, "balance_cents": 100_000_000}),
        "creating users",
    )
    .await?;
    let tokens: Vec<String> = created["users"]
        .as_array()
        .ok_or("no users")?
        .iter()
        .filter_map(|u| u["token"].as_str().map(String::from))
        .collect();
    if tokens.len() < count {
        return Err("fewer users than asked for".into());
    }
    Ok(tokens)
}

fn wants_help(args: &[String]) -> bool {
    args.iter()
        .any(|a| matches!(a.as_str(), "--help" | "-h" | "help"))
}

struct Worker {
    latencies: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
}

/// What every worker adds to while a `--window` runs; the reporter takes it
/// at the end of each window.
type Window = Arc<std::sync::Mutex<Worker>>;

fn new_worker() -> Worker {
    Worker {
        latencies: Histogram::new(3).unwrap_or_else(|_| unreachable!()),
        statuses: BTreeMap::new(),
    }
}

/// Resident memory of `pid` in MiB, from /proc.
fn rss_mib(pid: u32) -> Option<f64> {
    crate::memory::rss_kib(&[pid]).map(|kib| (kib as f64 / 1024.0 * 10.0).round() / 10.0)
}

/// Prints one line per window: requests, latency percentiles, statuses and
/// the server's RSS, until `deadline`.
async fn report_windows(window: Window, every: Duration, deadline: Instant, pid: Option<u32>) {
    let started = Instant::now();
    let mut last = started;
    while last < deadline {
        // The last window ends with the run, so it may be shorter.
        let end = (last + every).min(deadline);
        tokio::time::sleep_until(end.into()).await;
        let taken = match window.lock() {
            Ok(mut open) => std::mem::replace(&mut *open, new_worker()),
            Err(_) => return,
        };
        let seconds = end.duration_since(last).as_secs_f64().max(0.001);
        last = end;
        let total: u64 = taken.statuses.values().sum();
        println!(
            "{}",
            json!({
                "scenario": "orders-window",
                "at_s": end.duration_since(started).as_secs(),
                "seconds": (seconds * 10.0).round() / 10.0,
                "requests": total,
                "requests_per_sec": (total as f64 / seconds).round(),
                "p50_ms": taken.latencies.value_at_quantile(0.50) as f64 / 1000.0,
                "p99_ms": taken.latencies.value_at_quantile(0.99) as f64 / 1000.0,
                "max_ms": taken.latencies.max() as f64 / 1000.0,
                "statuses": taken.statuses,
                "server_rss_mib": pid.and_then(rss_mib),
            })
        );
    }
}

/// Where and as whom orders are placed.
#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    url: String,
    tokens: Arc<Vec<String>>,
    players: Arc<Vec<i64>>,
}

impl Target {
    /// Places the `n`th order of `worker` (a random player, side and
    /// quantity): its status (0: no answer).
    async fn place(&self, worker: usize, n: u64) -> u16 {
        let (token, player, side, quantity) = {
            let mut rng = rand::thread_rng();
            let token = &self.tokens[(worker + n as usize * 7919) % self.tokens.len()];
            let player = self.players[rng.gen_range(0..self.players.len())];
            let side = if rng.gen_bool(0.6) { "buy" } else { "sell" };
            (token.clone(), player, side, rng.gen_range(1..=3))
        };
        let response = self
            .client
            .post(&self.url)
            .header("authorization", token)
            .header("idempotency-key", format!("lg-{worker}-{n}"))
            .json(&json!({"player_id": player, "side": side, "quantity": quantity}))
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
            Err(_) => 0,
        }
    }
}

fn tally(stats: &mut Worker, window: &Option<Window>, status: u16, micros: u64) {
    let _ = stats.latencies.record(micros.max(1));
    *stats.statuses.entry(status).or_default() += 1;
    if let Some(Ok(mut open)) = window.as_ref().map(|w| w.lock()) {
        let _ = open.latencies.record(micros.max(1));
        *open.statuses.entry(status).or_default() += 1;
    }
}

type Tallies = (Histogram<u64>, BTreeMap<u16, u64>);

/// `concurrency` workers, each sending its next order when the last is
/// answered, until `deadline`.
async fn closed_loop(
    target: &Target,
    concurrency: usize,
    deadline: Instant,
    window: &Option<Window>,
) -> Result<Tallies, String> {
    let mut handles = Vec::new();
    for worker in 0..concurrency {
        let target = target.clone();
        let window = window.clone();
        handles.push(tokio::spawn(async move {
            let mut stats = new_worker();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                let status = target.place(worker, n).await;
                tally(
                    &mut stats,
                    &window,
                    status,
                    sent.elapsed().as_micros() as u64,
                );
            }
            stats
        }));
    }
    let mut latencies = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut statuses = BTreeMap::<u16, u64>::new();
    for handle in handles {
        let stats = handle.await.map_err(|e| e.to_string())?;
        latencies.add(&stats.latencies).map_err(|e| e.to_string())?;
        for (status, count) in stats.statuses {
            *statuses.entry(status).or_default() += count;
        }
    }
    Ok((latencies, statuses))
}

/// Orders due at `rate` per second from `started` until `deadline`, at most
/// `concurrency` in flight; each latency counts from when the order was
/// due, so time spent waiting for a free slot counts too.
async fn open_loop(
    target: &Target,
    rate: f64,
    concurrency: usize,
    started: Instant,
    deadline: Instant,
    window: &Option<Window>,
) -> Result<Tallies, String> {
    let stats = Arc::new(std::sync::Mutex::new(new_worker()));
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut n = 0u64;
    loop {
        let due = started + Duration::from_secs_f64(n as f64 / rate);
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (target, stats, window) = (target.clone(), stats.clone(), window.clone());
        n += 1;
        tokio::spawn(async move {
            let status = target.place(0, n).await;
            let micros = due.elapsed().as_micros() as u64;
            if let Ok(mut stats) = stats.lock() {
                tally(&mut stats, &window, status, micros);
            }
            drop(slot);
        });
    }
    // Every order answered: all the slots free again.
    let all = u32::try_from(concurrency).map_err(|e| e.to_string())?;
    let _ = slots.acquire_many(all).await.map_err(|e| e.to_string())?;
    let mut stats = stats.lock().map_err(|e| e.to_string())?;
    let taken = std::mem::replace(&mut *stats, new_worker());
    Ok((taken.latencies, taken.statuses))
}

async fn orders(options: Options) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let admin = format!("Bearer {}", options.admin_token);
    let api = |path: &str| format!("{}/api/v1{}", options.url, path);

    let players = create_players(&client, &api("/admin/players"), &admin, options.players).await?;
    let prefix = format!("lg{}_", rand::thread_rng().gen_range(0..1_000_000));
    let tokens: Vec<String> = bulk_users(
        &client,
        &api("/admin/users/bulk"),
        &admin,
        options.users,
        &prefix,
    )
    .await?
    .into_iter()
    .map(|token| format!("Bearer {token}"))
    .collect();
    let tokens = Arc::new(tokens);
    let players = Arc::new(players);

    eprintln!(
        "loadgen: {} users, {} players, {} in flight for {:?}",
        tokens.len(),
        players.len(),
        options.concurrency,
        options.duration
    );
    let started = Instant::now();
    let deadline = started + options.duration;
    let window: Option<Window> = options
        .window
        .map(|_| Arc::new(std::sync::Mutex::new(new_worker())));
    let reporter = window.clone().zip(options.window).map(|(open, every)| {
        tokio::spawn(report_windows(open, every, deadline, options.server_pid))
    });
    let target = Target {
        client: client.clone(),
        url: api("/orders"),
        tokens,
        players,
    };
    let (latencies, statuses) = match options.rate {
        None => closed_loop(&target, options.concurrency, deadline, &window).await?,
        Some(rate) => {
            open_loop(
                &target,
                rate,
                options.concurrency,
                started,
                deadline,
                &window,
            )
            .await?
        }
    };
    if let Some(reporter) = reporter {
        let _ = reporter.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = statuses.values().sum();
    // A completed order is a fill (201) or a business rejection (409, e.g.
    // selling shares the user does not hold): both committed a transaction.
    let filled = statuses.get(&201).copied().unwrap_or(0);
    let completed = filled + statuses.get(&409).copied().unwrap_or(0);
    let audit = admin_get(&client, &api("/admin/audit"), &admin).await?;
    let report = json!({
        "scenario": "orders",
        "concurrency": options.concurrency,
        "rate": options.rate,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "requests": total,
        "requests_per_sec": (total as f64 / elapsed).round(),
        "orders_completed_per_sec": (completed as f64 / elapsed).round(),
        "fills_per_sec": (filled as f64 / elapsed).round(),
        "p50_ms": latencies.value_at_quantile(0.50) as f64 / 1000.0,
        "p90_ms": latencies.value_at_quantile(0.90) as f64 / 1000.0,
        "p99_ms": latencies.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": latencies.max() as f64 / 1000.0,
        "statuses": statuses,
        "audit_ok": audit["ok"],
        "server_rss_mib": options.server_pid.and_then(rss_mib),
    });
    println!("{report}");
    if audit["ok"] != json!(true) {
        return Err(format!("audit failed after the run: {audit}"));
    }
    Ok(())
}
