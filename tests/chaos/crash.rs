//! Group commit under a crash: orders stream into batches that wait 25 ms
//! to fill, and while batches are in flight the replica is killed (kill -9),
//! then, in a second round, Postgres crashes (immediate shutdown). Every
//! order a client was told is filled must be in the books afterwards, and
//! retrying each order with its key gives the answer it had, or, for orders
//! that were never answered, places it exactly once.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{status_and_body, Cluster};
use crate::helpers::{RedisServer, User};
use crate::postgres::PgServer;

const USERS: usize = 120;
const ORDERS_PER_USER: usize = 4;
const BALANCE: i64 = 100_000;
const PRICE: i64 = 1_000;

#[derive(Clone, Copy, Debug)]
enum Crash {
    Replica,
    Postgres,
}

/// One order as sent, and its first answer (None: the connection failed).
struct Sent {
    user: usize,
    key: String,
    body: Value,
    answer: Option<(u16, Value)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_batch_loses_no_acknowledged_order() {
    let mut postgres = PgServer::start().await;
    let database = format!("crash_{}", uuid::Uuid::new_v4().simple());
    postgres.create_database(&database).await;
    let redis = RedisServer::start().await;
    let mut cluster = Cluster::start_on(
        1,
        &postgres.url(&database),
        &redis.url(),
        "crash:",
        &[
            ("MATCHDAY__TRADING__BATCH_MAX_ORDERS", "256"),
            ("MATCHDAY__TRADING__BATCH_WAIT_MS", "25"),
            ("MATCHDAY__TRADING__BATCH_EXECUTORS", "2"),
            ("MATCHDAY__PRICING__TICK_MS", "60000"),
        ],
    )
    .await;
    let player = cluster.app(0).create_player(PRICE).await;
    let users = cluster.app(0).bulk_users("crash", USERS, BALANCE).await;

    for (round, crash) in [Crash::Replica, Crash::Postgres].into_iter().enumerate() {
        let sent =
            stream_and_crash(&mut cluster, &mut postgres, &users, player, round, crash).await;
        let acknowledged: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.answer.as_ref().is_some_and(|(status, _)| *status == 201))
            .collect();
        let unanswered = sent
            .iter()
            .filter(|s| !matches!(&s.answer, Some((201 | 409, _))))
            .count();
        let mut statuses = std::collections::BTreeMap::<String, usize>::new();
        for order in &sent {
            let status = match &order.answer {
                Some((status, body)) => format!("{status} {}", body["error"]["code"]),
                None => "no answer".to_string(),
            };
            *statuses.entry(status).or_default() += 1;
        }
        eprintln!(
            "crash {crash:?}: {} orders, {} acknowledged, {unanswered} cut off or refused: {statuses:?}",
            sent.len(),
            acknowledged.len()
        );
        // The crash hit while orders were being placed: some were answered
        // before it and some were cut off by it.
        assert!(
            !acknowledged.is_empty(),
            "{crash:?}: nothing acknowledged before the crash"
        );
        assert!(unanswered > 0, "{crash:?}: the crash cut off no order");

        let app = cluster.app(0);
        // Every acknowledged fill is in the books, as it was told.
        for order in &acknowledged {
            let body = &order.answer.as_ref().expect("answered").1;
            let id = body["order_id"].as_i64().expect("order_id");
            let rows = app
                .sql(&format!(
                    "SELECT user_id, total_cents FROM orders WHERE id = {id}"
                ))
                .await;
            assert_eq!(rows.len(), 1, "{crash:?}: acknowledged order {id} is gone");
            assert_eq!(rows[0].get::<_, i64>(0), users[order.user].id);
            assert_eq!(Some(rows[0].get::<_, i64>(1)), body["total_cents"].as_i64());
        }
        // Each order retried with its key: the acknowledged ones replay
        // their answer; the rest now have a final one.
        let finals = futures_util::future::join_all(
            sent.iter()
                .map(|order| retry_until_final(&cluster, &users[order.user], order)),
        )
        .await;
        for (order, (status, body)) in sent.iter().zip(finals) {
            if let Some((201, first)) = &order.answer {
                assert_eq!(status, 201, "{crash:?}: {body}");
                assert_eq!(
                    body["order_id"], first["order_id"],
                    "{crash:?}: replayed another fill"
                );
            }
        }
        // One order row per key that filled, and the books balance.
        let keys = app
            .sql(&format!(
                "SELECT count(*) FROM idempotency_keys
                  WHERE key LIKE 'r{round}-%' AND outcome ? 'fill_of'"
            ))
            .await[0]
            .get::<_, i64>(0);
        let orders = app
            .sql(&format!(
                "SELECT count(*) FROM orders o JOIN users u ON u.id = o.user_id
                  WHERE u.username LIKE 'crash%' AND o.id IN (
                      SELECT (outcome ->> 'fill_of')::bigint FROM idempotency_keys
                       WHERE key LIKE 'r{round}-%' AND outcome ? 'fill_of')"
            ))
            .await[0]
            .get::<_, i64>(0);
        assert!(keys > 0, "{crash:?}: no key stored a fill");
        assert_eq!(
            orders, keys,
            "{crash:?}: fills without an order row, or rows without a key"
        );
        let audit = app.audit().await;
        assert_eq!(audit["ok"], true, "{crash:?}: {audit}");
        for user in &users {
            let cash = app.me(&user.token).await["balance_cents"]
                .as_i64()
                .expect("cash");
            let spent = app
                .sql(&format!(
                    "SELECT coalesce(sum(total_cents), 0)::bigint FROM orders WHERE user_id = {}",
                    user.id
                ))
                .await[0]
                .get::<_, i64>(0);
            assert_eq!(cash, BALANCE - spent, "{crash:?}: user {}", user.id);
        }
    }
}

/// Sends every user's next orders over about two seconds, crashes
/// `crash` once a tenth have filled, and brings it back; each order's
/// first answer.
async fn stream_and_crash(
    cluster: &mut Cluster,
    postgres: &mut PgServer,
    users: &[User],
    player: i64,
    round: usize,
    crash: Crash,
) -> Vec<Sent> {
    let address = cluster.app(0).url("/api/v1/orders");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let filled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut calls = Vec::new();
    for n in 0..ORDERS_PER_USER {
        for (user, holder) in users.iter().enumerate() {
            let key = format!("r{round}-{user}-{n}");
            let body = json!({"player_id": player, "side": "buy", "quantity": 1 + (n % 2)});
            let (client, address, token) = (client.clone(), address.clone(), holder.token.clone());
            let filled = filled.clone();
            let delay = Duration::from_micros(((n * users.len() + user) * 4_000) as u64);
            calls.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let response = client
                    .post(&address)
                    .bearer_auth(&token)
                    .header("Idempotency-Key", &key)
                    .json(&body)
                    .send()
                    .await;
                let answer = match response {
                    Ok(response) => Some(status_and_body(response).await),
                    Err(_) => None,
                };
                if matches!(answer, Some((201, _))) {
                    filled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Sent {
                    user,
                    key,
                    body,
                    answer,
                }
            }));
        }
    }
    // Once a tenth of the orders have filled (the stream runs about two
    // seconds): batches are committing and more are gathering.
    let started = std::time::Instant::now();
    while filled.load(std::sync::atomic::Ordering::Relaxed) < calls.len() / 10
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match crash {
        Crash::Replica => cluster.kill(0),
        Crash::Postgres => postgres.crash_and_restart(Duration::from_millis(300)).await,
    }
    let mut sent = Vec::new();
    for call in calls {
        sent.push(call.await.expect("order task"));
    }
    if let Crash::Replica = crash {
        cluster.restart(0).await;
    }
    sent
}

/// The order sent again with its key until the answer is final (not a
/// 503 while Postgres recovers, nor 409 `in_progress`, nor a connection
/// the restarted server refused or closed).
async fn retry_until_final(cluster: &Cluster, user: &User, order: &Sent) -> (u16, Value) {
    let address = cluster.app(0).url("/api/v1/orders");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let response = client
            .post(&address)
            .bearer_auth(&user.token)
            .header("Idempotency-Key", &order.key)
            .json(&order.body)
            .send()
            .await;
        if let Ok(response) = response {
            let (status, body) = status_and_body(response).await;
            let retry = status >= 500 || (status == 409 && body["error"]["code"] == "in_progress");
            if !retry {
                return (status, body);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("order {} never got a final answer", order.key);
}
