//! `matchday loadgen leaderboard`: the leaderboard at scale.
//!
//! `--seed` creates `--users` users through the admin bulk API and gives
//! each `--holdings` holdings of the existing players, written straight into
//! Postgres (`--database-url`) as a fixture, like `pgbench -i`: a million
//! orders through the API would take the better part of ten minutes and
//! measure trading, not the leaderboard. The fixture moves cash through the
//! ledger exactly as a fill does (an entry pair per user, `revision` bumped),
//! so the audit stays `ok`. The server learns of it at its next reload: the
//! bench script restarts it. The users' tokens go to `--tokens FILE`.
//!
//! Without `--seed` it measures a running server: first `--quiet-seconds`
//! with no reads (the server's CPU then is ticking, revaluing and the rest
//! of its background work), then `--duration` seconds of reads at `--rate`
//! per second, open loop (each read is sent at its scheduled time; latency
//! counts from then), alternating `GET /leaderboard?limit=100` and
//! `GET /leaderboard/me` for random users from `--tokens`. It reports each
//! kind's latency percentiles, how old `as_of` was when each answer arrived,
//! and the server's own figures for the cycles in the window (from
//! `/metrics`): mean time valuing every account, mean time writing, scores
//! written per cycle.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::drop::{create_users, Api};
use super::http::{client, cpu_seconds, on_own_runtime, timed, Tally};

/// Usage of `matchday loadgen leaderboard`.
pub const HELP: &str = "usage: matchday loadgen leaderboard --seed --database-url URL --tokens FILE
                                    [--url URL] [--admin-token TOKEN]
                                    [--users 100000] [--holdings 10]
       matchday loadgen leaderboard --tokens FILE [--url URL] [--rate 2000]
                                    [--duration 30] [--quiet-seconds 10]
                                    [--connections 64] [--server-pid PID]
                                    [--redis-url redis://HOST:PORT]

--seed: creates the users through the admin API and gives each --holdings
holdings of the existing players straight in Postgres (a fixture, balanced in
the ledger); writes `Bearer <token>` lines to --tokens. Restart the server
afterwards so it loads them.

Otherwise: --quiet-seconds with no reads, then --duration seconds of reads at
--rate per second (half top-100, half /leaderboard/me), and one JSON line with
read latencies, as_of ages, the server's cycle figures from /metrics and its
CPU (with --server-pid), and Redis' CPU (with --redis-url, from INFO cpu).";

/// Parsed options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub url: String,
    pub admin_token: String,
    pub seed: bool,
    pub database_url: Option<String>,
    pub tokens: String,
    pub users: usize,
    pub holdings: usize,
    pub rate: u64,
    pub duration: Duration,
    pub quiet: Duration,
    pub connections: usize,
    pub server_pid: Option<u32>,
    /// `host:port` of the Redis whose CPU to report.
    pub redis: Option<String>,
}

/// Parses the command line after `leaderboard`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        url: "http://127.0.0.1:8080".into(),
        admin_token: std::env::var("MATCHDAY__ADMIN__TOKEN").unwrap_or_default(),
        seed: false,
        database_url: None,
        tokens: String::new(),
        users: 100_000,
        holdings: 10,
        rate: 2_000,
        duration: Duration::from_secs(30),
        quiet: Duration::from_secs(10),
        connections: 64,
        server_pid: None,
        redis: None,
    };
    let mut flags = super::flags::Flags::new(args);
    while let Some(flag) = flags.next_flag() {
        if flag == "--seed" {
            options.seed = true;
            continue;
        }
        let value = flags.value(flag)?;
        let number = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("{flag}: cannot read {v:?}"))
        };
        match flag {
            "--url" => options.url = value,
            "--admin-token" => options.admin_token = value,
            "--database-url" => options.database_url = Some(value),
            "--tokens" => options.tokens = value,
            "--users" => options.users = number(&value)?.max(1) as usize,
            "--holdings" => options.holdings = number(&value)? as usize,
            "--rate" => options.rate = number(&value)?.max(1),
            "--duration" => options.duration = Duration::from_secs(number(&value)?.max(1)),
            "--quiet-seconds" => options.quiet = Duration::from_secs(number(&value)?),
            "--connections" => options.connections = number(&value)?.max(1) as usize,
            "--redis-url" => {
                let address = value
                    .strip_prefix("redis://")
                    .map(|rest| rest.trim_end_matches('/').to_string())
                    .ok_or("--redis-url: expected redis://host:port")?;
                options.redis = Some(address);
            }
            "--server-pid" => {
                options.server_pid =
                    Some(u32::try_from(number(&value)?).map_err(|_| "--server-pid: not a pid")?)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.tokens.is_empty() {
        return Err("--tokens FILE is required".into());
    }
    if options.seed && options.database_url.is_none() {
        return Err("--seed needs --database-url".into());
    }
    Ok(options)
}

/// Entry point.
pub async fn main(args: &[String]) -> ExitCode {
    let options = match parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("loadgen leaderboard: {error}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let result = if options.seed {
        seed(options).await
    } else {
        on_own_runtime("leaderboard-load".into(), 1, move || measure(options))
            .await
            .map(|report| report.to_string())
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen leaderboard: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The fixture: one transaction giving each user of `prefix` `holdings`
/// distinct players (as many as exist, if fewer), each costing at most
/// 1/(2 × holdings) of their cash, moved through the ledger.
const SEED_SQL: &str = "
WITH p AS (
    SELECT array_agg(id ORDER BY id) AS ids, array_agg(price_cents ORDER BY id) AS prices,
           count(*)::int AS n
      FROM players
), picks AS (
    SELECT u.id AS user_id, u.cash_cents, p.ids[1 + (u.id * 7 + k) % p.n] AS player_id,
           p.prices[1 + (u.id * 7 + k) % p.n] AS price, k
      FROM users u, p, generate_series(0, $2::int - 1) AS k
     WHERE u.username LIKE $1 AND k < p.n
), sized AS (
    SELECT user_id, player_id, price,
           greatest(1, least(1 + (user_id + k) % 20,
                             cash_cents / (2 * $2::bigint) / price)) AS quantity
      FROM picks
), holdings_in AS (
    INSERT INTO holdings (user_id, player_id, quantity, cost_cents)
    SELECT user_id, player_id, quantity, quantity * price FROM sized
    RETURNING user_id, cost_cents
), per_user AS (
    SELECT user_id, sum(cost_cents)::bigint AS cost FROM holdings_in GROUP BY user_id
), paid AS (
    UPDATE users u SET cash_cents = u.cash_cents - per_user.cost, revision = u.revision + 1
      FROM per_user WHERE u.id = per_user.user_id
    RETURNING u.id, per_user.cost
), entries AS (
    INSERT INTO ledger_entries (txn, account, user_id, amount_cents)
    SELECT 'seed:' || paid.id, e.account, CASE WHEN e.account = 'user' THEN paid.id END,
           e.sign * paid.cost
      FROM paid, (VALUES ('user', -1::bigint), ('market', 1::bigint)) AS e(account, sign)
    RETURNING 1
)
SELECT (SELECT count(*) FROM holdings_in), (SELECT count(*) FROM paid)";

async fn seed(options: Options) -> Result<String, String> {
    let api = Api {
        client: client(16)?,
        base: options.url.clone(),
        admin: format!("Bearer {}", options.admin_token),
    };
    let players = api.public_get("/players").await?;
    let player_count = players.as_array().map_or(0, Vec::len);
    if player_count < options.holdings {
        return Err(format!(
            "{player_count} players exist; --holdings {} needs as many",
            options.holdings
        ));
    }
    let run = format!("lb{}", rand::thread_rng().gen_range(0..100_000));
    let started = Instant::now();
    let tokens = create_users(&api, &run, 'u', options.users, 1_000_000).await?;
    let users_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "loadgen leaderboard: {} users created in {users_secs:.1} s",
        tokens.len()
    );
    std::fs::write(&options.tokens, tokens.join("\n") + "\n")
        .map_err(|e| format!("writing {}: {e}", options.tokens))?;

    let database_url = options.database_url.unwrap_or_default();
    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("--database-url: {e}"))?;
    tokio::spawn(connection);
    let started = Instant::now();
    let row = db
        .query_one(
            SEED_SQL,
            &[
                &format!("{run}%"),
                &i32::try_from(options.holdings).unwrap_or(10),
            ],
        )
        .await
        .map_err(|e| format!("seeding holdings: {e}"))?;
    let (holdings, users): (i64, i64) = (row.get(0), row.get(1));
    Ok(json!({
        "seeded_users": tokens.len(),
        "users_with_holdings": users,
        "holdings": holdings,
        "players": player_count,
        "create_users_seconds": users_secs,
        "seed_holdings_seconds": started.elapsed().as_secs_f64(),
    })
    .to_string())
}

/// CPU seconds Redis at `address` has used (user + system, `INFO cpu`).
async fn redis_cpu(address: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.write_all(b"INFO cpu\r\n").await.ok()?;
    // A bulk string: `$<length>\r\n<length bytes>\r\n`.
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let header = reply.iter().position(|b| *b == b'\n');
        let expected = header.and_then(|end| {
            let length: usize = std::str::from_utf8(reply.get(1..end)?)
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(end + 1 + length)
        });
        if expected.is_some_and(|expected| reply.len() >= expected) || reply.len() > 65_536 {
            break;
        }
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..read]);
    }
    redis_cpu_seconds(std::str::from_utf8(&reply).ok()?)
}

/// `used_cpu_sys + used_cpu_user` from an `INFO cpu` reply.
fn redis_cpu_seconds(info: &str) -> Option<f64> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_sys:")? + field("used_cpu_user:")?)
}

/// `name{labels}` values from a Prometheus text page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The server's cycle counters at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct Cycles {
    value_sum: f64,
    value_count: f64,
    write_sum: f64,
    write_count: f64,
    written: f64,
    accounts: f64,
}

async fn cycles(client: &reqwest::Client, base: &str) -> Result<Cycles, String> {
    let page = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| format!("/metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("/metrics: {e}"))?;
    let get = |series: &str| metric(&page, series).unwrap_or(0.0);
    Ok(Cycles {
        value_sum: get("matchday_leaderboard_cycle_seconds_sum{phase=\"value\"}"),
        value_count: get("matchday_leaderboard_cycle_seconds_count{phase=\"value\"}"),
        write_sum: get("matchday_leaderboard_cycle_seconds_sum{phase=\"write\"}"),
        write_count: get("matchday_leaderboard_cycle_seconds_count{phase=\"write\"}"),
        written: get("matchday_leaderboard_scores_written_total"),
        accounts: get("matchday_leaderboard_accounts"),
    })
}

/// Per-cycle means between two readings.
fn cycle_report(before: Cycles, after: Cycles) -> Value {
    let cycles = (after.value_count - before.value_count).max(0.0);
    let written_cycles = (after.write_count - before.write_count).max(0.0);
    let per = |sum: f64, count: f64| {
        if count > 0.0 {
            Some(sum / count * 1_000.0)
        } else {
            None
        }
    };
    json!({
        "cycles": cycles,
        "accounts": after.accounts,
        "value_ms_mean": per(after.value_sum - before.value_sum, cycles),
        "write_ms_mean": per(after.write_sum - before.write_sum, written_cycles),
        "scores_written_per_cycle": if written_cycles > 0.0 {
            Some((after.written - before.written) / written_cycles)
        } else {
            None
        },
    })
}

fn summary(tally: &Tally) -> Value {
    json!({
        "requests": tally.requests(),
        "p50_ms": tally.ms_at(0.50),
        "p90_ms": tally.ms_at(0.90),
        "p99_ms": tally.ms_at(0.99),
        "max_ms": tally.max_ms(),
        "statuses": tally.statuses,
    })
}

/// How old the answer's `as_of` was when it arrived, in ms.
fn as_of_age_ms(body: &[u8]) -> Option<i64> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let as_of = chrono::DateTime::parse_from_rfc3339(value["as_of"].as_str()?).ok()?;
    Some(chrono::Utc::now().timestamp_millis() - as_of.timestamp_millis())
}

async fn measure(options: Options) -> Result<Value, String> {
    let tokens: Vec<String> = std::fs::read_to_string(&options.tokens)
        .map_err(|e| format!("reading {}: {e}", options.tokens))?
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        return Err(format!("{} holds no tokens", options.tokens));
    }
    let http = client(options.connections)?;
    let base = options.url.clone();

    // Quiet: the server's own background work, no reads.
    let redis_cpu_at = |redis: Option<String>| async move {
        match redis {
            Some(address) => redis_cpu(&address).await,
            None => None,
        }
    };
    let quiet_cycles = cycles(&http, &base).await?;
    let quiet_cpu = options.server_pid.and_then(cpu_seconds);
    let quiet_redis = redis_cpu_at(options.redis.clone()).await;
    tokio::time::sleep(options.quiet).await;
    let loud_cycles = cycles(&http, &base).await?;
    let loud_cpu = options.server_pid.and_then(cpu_seconds);
    let loud_redis = redis_cpu_at(options.redis.clone()).await;
    let quiet_secs = options.quiet.as_secs_f64().max(f64::EPSILON);
    let quiet_cpu_ms_per_s = match (quiet_cpu, loud_cpu) {
        (Some(a), Some(b)) if options.quiet > Duration::ZERO => Some((b - a) / quiet_secs * 1e3),
        _ => None,
    };

    // Reads, open loop.
    let top = Arc::new(std::sync::Mutex::new(Tally::default()));
    let me = Arc::new(std::sync::Mutex::new(Tally::default()));
    let ages = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).map_err(|e| e.to_string())?,
    ));
    let negative_ages = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(options.connections * 4));
    let mut skipped = 0u64;
    let tokens = Arc::new(tokens);
    let total = (options.rate as f64 * options.duration.as_secs_f64()) as u64;
    let gap = Duration::from_secs_f64(1.0 / options.rate as f64);
    let cpu_before = options.server_pid.and_then(cpu_seconds);
    let started = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = started + gap * n as u32;
        tokio::time::sleep_until(due).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (http, base, tokens) = (http.clone(), base.clone(), tokens.clone());
        let (top, me, ages, negative_ages) =
            (top.clone(), me.clone(), ages.clone(), negative_ages.clone());
        let scheduled = Instant::now();
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            let (shot, tally) = if n % 2 == 0 {
                let request = http.get(format!("{base}/api/v1/leaderboard?limit=100"));
                (timed(request.send(), true).await, top)
            } else {
                let token = &tokens[rand::thread_rng().gen_range(0..tokens.len())];
                let request = http
                    .get(format!("{base}/api/v1/leaderboard/me"))
                    .header(reqwest::header::AUTHORIZATION, token);
                (timed(request.send(), true).await, me)
            };
            // From the scheduled send, so a slow server cannot hide its
            // queue by slowing the sender (coordinated omission).
            let micros = shot.finished.duration_since(scheduled).as_micros() as u64;
            if let Ok(mut tally) = tally.lock() {
                tally.record(shot.status, micros);
            }
            if shot.status == 200 {
                match as_of_age_ms(&shot.body) {
                    Some(age) if age >= 0 => {
                        if let Ok(mut ages) = ages.lock() {
                            let _ = ages.record(age.max(1) as u64);
                        }
                    }
                    _ => {
                        negative_ages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for handle in handles {
        let _ = handle.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = options.server_pid.and_then(cpu_seconds);
    let end_redis = redis_cpu_at(options.redis.clone()).await;
    let end_cycles = cycles(&http, &base).await?;
    let top = top.lock().map_err(|_| "poisoned")?.clone();
    let me = me.lock().map_err(|_| "poisoned")?.clone();
    let ages = ages.lock().map_err(|_| "poisoned")?.clone();
    let age = |q: f64| (!ages.is_empty()).then(|| ages.value_at_quantile(q));
    let statuses: BTreeMap<u16, u64> = top.statuses.iter().chain(me.statuses.iter()).fold(
        BTreeMap::new(),
        |mut all, (status, n)| {
            *all.entry(*status).or_default() += n;
            all
        },
    );
    Ok(json!({
        "quiet": {
            "seconds": options.quiet.as_secs(),
            "server_cpu_ms_per_s": quiet_cpu_ms_per_s,
            "redis_cpu_ms_per_s": match (quiet_redis, loud_redis) {
                (Some(a), Some(b)) => Some((b - a) / quiet_secs * 1e3),
                _ => None,
            },
            "cycles": cycle_report(quiet_cycles, loud_cycles),
        },
        "reads": {
            "rate_per_s": options.rate,
            "achieved_per_s": (top.requests() + me.requests()) as f64 / elapsed,
            "skipped_over_in_flight_bound": skipped,
            "statuses": statuses,
            "top100": summary(&top),
            "me": summary(&me),
            "as_of_age_ms": {
                "p50": age(0.5), "p99": age(0.99), "max": age(1.0),
                "unreadable_or_future": negative_ages.load(std::sync::atomic::Ordering::Relaxed),
            },
            "server_cpu_ms_per_s": match (cpu_before, cpu_after) {
                (Some(a), Some(b)) => Some((b - a) / elapsed * 1e3),
                _ => None,
            },
            "redis_cpu_ms_per_s": match (loud_redis, end_redis) {
                (Some(a), Some(b)) => Some((b - a) / elapsed * 1e3),
                _ => None,
            },
            "cycles": cycle_report(loud_cycles, end_cycles),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn seeding_needs_a_database_and_every_run_needs_a_token_file() {
        assert!(parse(&args("--seed --tokens t")).is_err());
        assert!(parse(&args("--rate 10")).is_err());
        let options = parse(&args(
            "--seed --tokens t --database-url postgres://x --users 5 --holdings 3",
        ))
        .unwrap();
        assert!(options.seed);
        assert_eq!((options.users, options.holdings), (5, 3));
        let options = parse(&args("--tokens t --rate 500 --server-pid 42")).unwrap();
        assert_eq!((options.rate, options.server_pid), (500, Some(42)));
    }

    #[test]
    fn ages_come_from_as_of_and_metrics_from_their_series() {
        let now = chrono::Utc::now() - chrono::Duration::milliseconds(1_500);
        let body = json!({"as_of": now.to_rfc3339()}).to_string();
        let age = as_of_age_ms(body.as_bytes()).unwrap();
        assert!((1_500..2_500).contains(&age), "{age}");
        assert_eq!(as_of_age_ms(b"{}"), None);
        let page = "# HELP x\nmatchday_leaderboard_cycle_seconds_sum{phase=\"value\"} 0.25\n\
                    matchday_leaderboard_cycle_seconds_sum{phase=\"write\"} 2\n";
        assert_eq!(
            metric(
                page,
                "matchday_leaderboard_cycle_seconds_sum{phase=\"write\"}"
            ),
            Some(2.0)
        );
        assert_eq!(metric(page, "missing"), None);
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(redis_cpu_seconds(info), Some(3.75));
    }
}
