//! The chaos test (Jepsen-style): three replicas of the real binary on a
//! Postgres and a Redis of the test's own, random concurrent registrations,
//! buys, sells, pushed events and drop purchases through every replica,
//! while a nemesis restarts Redis, flushes it, crashes Postgres, kills
//! replicas (the settlement leader among them, mid-drop) and pauses one.
//! Every operation is retried with its idempotency key until it has a final
//! answer; afterwards the checker holds the books to those answers.
//!
//! `MATCHDAY_CHAOS_SECONDS` (default 40) is how long faults are injected;
//! `scripts/chaos` runs it for 10 minutes. `MATCHDAY_CHAOS_SEED` fixes the
//! fault schedule and the traders' choices (timing still varies).

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

#[path = "../cluster/cluster.rs"]
#[allow(dead_code)]
mod cluster;

mod checker;
mod client;
mod crash;
mod faults;
mod postgres;
mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Kind, Shared};
use cluster::Cluster;
use faults::{Fault, Targets};
use helpers::RedisServer;
use postgres::PgServer;

pub const STARTING_BALANCE_CENTS: i64 = 1_000_000;
const TRADERS: usize = 8;
const TRADING_PLAYERS: usize = 6;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_books_survive_every_fault() {
    let run_for = Duration::from_secs(env_u64("MATCHDAY_CHAOS_SECONDS").unwrap_or(40));
    let seed = env_u64("MATCHDAY_CHAOS_SEED").unwrap_or_else(rand::random);
    eprintln!("chaos: {run_for:?} of faults, MATCHDAY_CHAOS_SEED={seed}");

    let mut postgres = PgServer::start().await;
    // Named per run, so each run's replica logs get a directory of their own.
    let database = format!("chaos_{}", uuid::Uuid::new_v4().simple());
    postgres.create_database(&database).await;
    let mut redis = RedisServer::start().await;
    let starting = STARTING_BALANCE_CENTS.to_string();
    let mut cluster = Cluster::start_on(
        3,
        &postgres.url(&database),
        &redis.url(),
        "chaos:",
        &[
            ("MATCHDAY__TRADING__LOCK_SECONDS", "1"),
            // Slow enough that a drop's purchases wait to settle, so the
            // leader is killed with settlement under way.
            ("MATCHDAY__SALES__SETTLEMENT_RATE_PER_SEC", "5"),
            ("MATCHDAY__ACCOUNTS__STARTING_BALANCE_CENTS", &starting),
        ],
    )
    .await;

    let app = cluster.app(0);
    let mut players = Vec::new();
    for n in 0..TRADING_PLAYERS {
        players.push(app.create_player(1_000 + 500 * n as i64).await);
    }
    let drop_count = run_for.as_secs() as usize / 4 + 2;
    let mut drop_players = Vec::new();
    for _ in 0..drop_count {
        drop_players.push(app.create_player(700).await);
    }

    let shared = Arc::new(Shared::new(
        cluster
            .replicas
            .iter()
            .map(|r| r.app.address.clone())
            .collect(),
    ));
    let mut tasks = Vec::new();
    for worker in 0..TRADERS {
        tasks.push(tokio::spawn(workload::trader(
            shared.clone(),
            worker,
            players.clone(),
            seed.wrapping_add(worker as u64),
        )));
    }
    tasks.push(tokio::spawn(workload::feed(
        shared.clone(),
        players.clone(),
        seed ^ 0xfeed,
    )));
    tasks.push(tokio::spawn(workload::drops(shared.clone(), drop_players)));

    let started = Instant::now();
    let mut violations = Vec::new();
    let injected = faults::nemesis(
        Targets {
            cluster: &mut cluster,
            postgres: &mut postgres,
            redis: &mut redis,
        },
        &shared,
        run_for,
        seed,
        &mut violations,
    )
    .await;
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("workload task");
    }
    let ran = started.elapsed();
    let verdict = checker::check(&shared, cluster.app(0)).await;
    violations.extend(verdict.violations);
    // A fault is a 503 (retry), never a 500: 500 means a bug.
    let internal: u64 = shared
        .statuses
        .lock()
        .expect("statuses")
        .iter()
        .filter(|((_, status), _)| *status == 500)
        .map(|(_, count)| count)
        .sum();
    if internal > 0 {
        violations.push(format!(
            "{internal} answers were 500 internal (see the replica logs under {})",
            cluster.log_dir().display()
        ));
    }
    for (n, status) in cluster.exited() {
        violations.push(format!("replica {n} exited on its own ({status})"));
    }

    eprintln!(
        "{}",
        summary(&shared, &injected, ran, verdict.checks, &violations)
    );
    assert!(
        violations.is_empty(),
        "{} violations (MATCHDAY_CHAOS_SEED={seed}):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

/// The table printed at the end of every run.
fn summary(
    shared: &Shared,
    injected: &[faults::Injected],
    ran: Duration,
    checks: u64,
    violations: &[String],
) -> String {
    let mut out = format!("\n== chaos run: {:.0} s ==\n", ran.as_secs_f64());
    out += "fault                           injected  slowest recovery\n";
    for fault in Fault::ALL {
        let of_kind: Vec<&faults::Injected> =
            injected.iter().filter(|i| i.fault == fault).collect();
        let slowest = of_kind
            .iter()
            .map(|i| i.recovered_in)
            .max()
            .unwrap_or_default();
        out += &format!(
            "{:<32}{:>8}  {:>14.2} s\n",
            fault.name(),
            of_kind.len(),
            slowest.as_secs_f64()
        );
    }
    out += &format!("{:<32}{:>8}\n\n", "total", injected.len());

    let records = shared.records.lock().expect("records");
    let statuses = shared.statuses.lock().expect("statuses");
    out += "operation        sent  acknowledged  refused  unanswered attempts  try-again answers\n";
    for kind in Kind::ALL {
        let of_kind: Vec<&client::Record> = records.iter().filter(|r| r.kind == kind).collect();
        let acknowledged = of_kind
            .iter()
            .filter(|r| {
                r.answer
                    .as_ref()
                    .is_some_and(|(s, _)| (200..300).contains(s))
            })
            .count();
        let refused = of_kind
            .iter()
            .filter(|r| r.answer.as_ref().is_some_and(|(s, _)| *s >= 400))
            .count();
        out += &format!(
            "{:<14}{:>7}{:>14}{:>9}{:>20}{:>19}\n",
            kind.name(),
            of_kind.len(),
            acknowledged,
            refused,
            of_kind.iter().map(|r| r.unanswered).sum::<u32>(),
            of_kind.iter().map(|r| r.try_again).sum::<u32>(),
        );
    }
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for ((_, status), count) in statuses.iter() {
        *by_status.entry(*status).or_default() += count;
    }
    out += &format!(
        "\nHTTP attempts {}; answers by status {by_status:?}\n",
        shared.attempts.load(Ordering::Relaxed)
    );
    out += &format!(
        "users {}; checks made {checks}; violations {}\n",
        shared.users.lock().expect("users").len(),
        violations.len()
    );
    out
}
