//! `kill -9`: of the leader (its work moves to another replica within 5 s)
//! and of a replica in the middle of taking orders and drop purchases
//! (nothing it acknowledged is lost, nothing is done twice on retry).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::cluster::*;
use crate::helpers::*;

const TAKEOVER_WITHIN: Duration = Duration::from_secs(5);
/// Redis remembers a purchase's key for 30 s (`sales/redis.rs`), and
/// Postgres for good; in between, a retry hears `request_in_progress`.
const IN_PROGRESS_AT_MOST: Duration = Duration::from_secs(40);

async fn leaderboard_as_of(app: &TestApp) -> Option<DateTime<Utc>> {
    let response = app.get("/api/v1/leaderboard", None).await;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    body["as_of"].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_hands_ticking_and_revaluation_to_another_replica_within_5_s() {
    let mut cluster = Cluster::start(3, &[]).await;
    let player = cluster.app(0).create_player(10_000).await;
    let users = cluster.app(0).bulk_users("holder", 3, 1_000_000).await;
    for (n, user) in users.iter().enumerate() {
        let body = json!({"player_id": player, "side": "buy", "quantity": 10 + n});
        let response = cluster.app(n).order(&user.token, "hold", &body).await;
        assert_eq!(response.status(), 201);
    }
    let leader = cluster.one_leader(Duration::from_secs(10)).await;
    let watcher = (leader + 1) % 3;
    let mut ws = subscribed(cluster.app(watcher), &[format!("player:{player}")]).await;
    // The socket is read the whole time, on its own task, so every frame
    // is stamped when it arrives: 1 s before the kill, 5 s after.
    let reader = tokio::spawn(async move { frames_for(&mut ws, Duration::from_secs(6)).await });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let killed_at = Instant::now();
    let killed_wall = Utc::now();
    cluster.kill(leader);
    let successor = cluster.one_leader(TAKEOVER_WITHIN).await;
    let takeover = killed_at.elapsed();
    assert_ne!(successor, leader);

    // The revaluation resumes: a leaderboard computed after the kill.
    loop {
        if leaderboard_as_of(cluster.app(watcher))
            .await
            .is_some_and(|as_of| as_of > killed_wall)
        {
            break;
        }
        assert!(
            killed_at.elapsed() < TAKEOVER_WITHIN,
            "no leaderboard revaluation within {TAKEOVER_WITHIN:?} of the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revalued = killed_at.elapsed();

    // Ticks: seq keeps rising through the takeover (checked by ticks_of),
    // and the socket's longest silence is short.
    let frames = reader.await.expect("socket reader");
    let ticks = ticks_of(player, &frames);
    assert!(
        ticks.iter().filter(|tick| tick.2 < killed_at).count() >= 5,
        "no ticks before the kill"
    );
    let longest_gap = ticks
        .windows(2)
        .map(|pair| pair[1].2 - pair[0].2)
        .max()
        .expect("ticks");
    let first_after = ticks
        .iter()
        .find(|tick| tick.2 > killed_at)
        .map(|tick| tick.2 - killed_at)
        .expect("a tick after the kill");
    eprintln!(
        "leader {leader} killed: replica {successor} led after {takeover:?}, ticked after \
         {first_after:?}, revalued after {revalued:?}; longest gap between ticks {longest_gap:?}"
    );
    assert!(
        first_after < TAKEOVER_WITHIN,
        "first tick {first_after:?} after the kill"
    );
    assert!(
        longest_gap < TAKEOVER_WITHIN,
        "clients saw no tick for {longest_gap:?}"
    );
    // One ticker afterwards, not two: at 100 ms, ~10 seq a second over the
    // last 2 s the socket was read.
    let window_start = killed_at + Duration::from_secs(3);
    let recent: Vec<_> = ticks.iter().filter(|tick| tick.2 > window_start).collect();
    let advance = recent.last().map_or(0, |t| t.0) - recent.first().map_or(0, |t| t.0);
    assert!(
        (8..=30).contains(&advance),
        "seq advanced {advance} in the socket's last ~2 s"
    );

    // The killed replica comes back as a follower, and its sockets tick.
    cluster.restart(leader).await;
    let mut ws = subscribed(cluster.app(leader), &[format!("player:{player}")]).await;
    let frames = frames_for(&mut ws, Duration::from_secs(1)).await;
    assert!(
        ticks_of(player, &frames).len() >= 5,
        "the restarted replica's socket is quiet"
    );
    assert_eq!(cluster.one_leader(Duration::ZERO).await, successor);
}

/// One request a client made, and what became of it.
#[derive(Debug, Clone)]
struct Attempt {
    user: usize,
    key: String,
    path: String,
    body: Value,
    /// Status and body, or `None` when the connection died without one.
    answer: Option<(u16, Value)>,
    /// Sent (or being answered) when the replica died, not refused at once.
    cut_short: bool,
}

impl Attempt {
    fn is_order(&self) -> bool {
        self.path == "/api/v1/orders"
    }

    fn id(answer: &(u16, Value)) -> Option<i64> {
        answer.1["order_id"]
            .as_i64()
            .or_else(|| answer.1["purchase_id"].as_i64())
    }
}

/// What became of one send.
enum Sent {
    Answered(u16, Value),
    /// The connection was refused: the replica was already gone.
    Refused,
    /// The request was on its way or being executed when the replica died.
    CutShort,
}

async fn send_once(app: &TestApp, token: &str, attempt: &Attempt) -> Sent {
    let sent = app
        .client
        .post(app.url(&attempt.path))
        .bearer_auth(token)
        .header("Idempotency-Key", &attempt.key)
        .json(&attempt.body)
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.json().await {
                Ok(body) => Sent::Answered(status, body),
                Err(_) => Sent::CutShort,
            }
        }
        Err(error) if error.is_connect() => Sent::Refused,
        Err(_) => Sent::CutShort,
    }
}

async fn send(app: &TestApp, token: &str, attempt: &Attempt) -> Option<(u16, Value)> {
    match send_once(app, token, attempt).await {
        Sent::Answered(status, body) => Some((status, body)),
        Sent::Refused | Sent::CutShort => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_acknowledged_order_or_purchase() {
    let mut cluster =
        Cluster::start(3, &[("MATCHDAY__SALES__SETTLEMENT_RATE_PER_SEC", "5000")]).await;
    let (victim, survivor) = (0, 1);
    let app = cluster.app(survivor);
    let players = [
        app.create_player(1_000).await,
        app.create_player(2_500).await,
    ];
    let dropped = app.create_player(500).await;
    let sale = app.create_drop(dropped, 100_000, 300, None).await["sale_id"]
        .as_i64()
        .expect("sale_id");
    let users = app.bulk_users("crowd", 24, 10_000_000).await;

    // Each client sends orders and purchases to the victim, one at a time,
    // until its connection dies.
    let victim_app = remote_app(cluster.app(victim).address.clone(), String::new());
    let victim_app = &victim_app;
    let stop_by = Instant::now() + Duration::from_secs(15);
    let clients = join_all(users.iter().enumerate().map(|(u, user)| async move {
        let mut attempts = Vec::new();
        for n in 0.. {
            let (path, body) = match n % 3 {
                0 => (
                    format!("/api/v1/sales/{sale}/purchases"),
                    json!({"quantity": 1 + n % 2}),
                ),
                1 => (
                    "/api/v1/orders".to_string(),
                    json!({"player_id": players[n % 2], "side": "buy", "quantity": 1 + n % 4}),
                ),
                _ => (
                    "/api/v1/orders".to_string(),
                    json!({"player_id": players[n % 2], "side": "sell", "quantity": 1}),
                ),
            };
            let mut attempt = Attempt {
                user: u,
                key: format!("u{u}-{n}"),
                path,
                body,
                answer: None,
                cut_short: false,
            };
            match send_once(victim_app, &user.token, &attempt).await {
                Sent::Answered(status, body) => attempt.answer = Some((status, body)),
                Sent::Refused => {}
                Sent::CutShort => attempt.cut_short = true,
            }
            let lost = attempt.answer.is_none();
            attempts.push(attempt);
            if lost || Instant::now() > stop_by {
                break;
            }
        }
        attempts
    }));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.kill(victim);
    };
    let (attempts, ()) = tokio::join!(clients, kill);
    let attempts: Vec<Attempt> = attempts.into_iter().flatten().collect();
    let acknowledged = attempts
        .iter()
        .filter(|a| {
            a.answer
                .as_ref()
                .is_some_and(|(s, _)| *s == 201 || *s == 202)
        })
        .count();
    let lost: Vec<&Attempt> = attempts.iter().filter(|a| a.answer.is_none()).collect();
    for attempt in &attempts {
        if let Some((status, body)) = &attempt.answer {
            let refused = *status == 409
                && ["insufficient_funds", "insufficient_holdings"]
                    .contains(&body["error"]["code"].as_str().unwrap_or(""));
            assert!(
                *status == 201 || *status == 202 || refused,
                "{attempt:?} answered {status}: {body}"
            );
        }
    }
    assert!(
        acknowledged >= 50,
        "only {acknowledged} acknowledged before the kill"
    );
    // Most clients find the replica gone on their next request; some must
    // have had one in flight when it died, or this test proves little.
    let cut_short = attempts.iter().filter(|a| a.cut_short).count();
    assert!(cut_short >= 1, "no request was in flight at the kill");

    cluster.restart(victim).await;
    let (victim_app, survivor_app) = (cluster.app(victim), cluster.app(survivor));
    let users = &users;
    let resolved = join_all(attempts.iter().map(|attempt| async move {
        let token = &users[attempt.user].token;
        let answer = match &attempt.answer {
            // An acknowledged request replays, through another replica, with
            // the very answer it got: it was durable before it was sent.
            Some(answer) => {
                let replay = send(survivor_app, token, attempt).await;
                assert_eq!(replay.as_ref(), Some(answer), "replay of {attempt:?}");
                answer.clone()
            }
            // A request cut short is retried with its key on the restarted
            // replica: it is done now, or it had been done, never twice. A
            // purchase whose reservation was in Redis but not yet in Postgres
            // is "in progress" until its Redis key expires (30 s).
            None => {
                let started = Instant::now();
                let answer = loop {
                    let answer = send(victim_app, token, attempt).await.expect("restarted");
                    if answer.1["error"]["code"] != "request_in_progress" {
                        break answer;
                    }
                    assert!(started.elapsed() < IN_PROGRESS_AT_MOST, "{attempt:?} stuck");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                assert!(
                    [201, 202, 409].contains(&answer.0),
                    "retry of {attempt:?}: {answer:?}"
                );
                answer
            }
        };
        (attempt.user, attempt.is_order(), Attempt::id(&answer))
    }))
    .await;
    let mut outcomes: Vec<Vec<(bool, i64)>> = vec![Vec::new(); users.len()];
    for (user, is_order, id) in resolved {
        if let Some(id) = id {
            outcomes[user].push((is_order, id));
        }
    }

    // The server's records hold exactly the fills and purchases clients were
    // told of: none lost, none extra.
    for (u, user) in users.iter().enumerate() {
        let told = |orders: bool| -> BTreeSet<i64> {
            outcomes[u]
                .iter()
                .filter(|(is_order, _)| *is_order == orders)
                .map(|(_, id)| *id)
                .collect()
        };
        let orders: Value = survivor_app
            .get("/api/v1/orders?limit=500", Some(&user.token))
            .await
            .json()
            .await
            .expect("orders");
        let kept: BTreeSet<i64> = orders
            .as_array()
            .expect("orders")
            .iter()
            .filter_map(|o| o["order_id"].as_i64())
            .collect();
        assert_eq!(kept, told(true), "orders of user {u}");
        let kept: BTreeSet<i64> = survivor_app
            .purchases(&user.token, sale)
            .await
            .iter()
            .filter_map(|p| p["purchase_id"].as_i64())
            .collect();
        assert_eq!(kept, told(false), "purchases of user {u}");
    }

    // Every purchase settles; the drop and the ledger balance.
    let audit = wait_until_settled(survivor_app, sale, Duration::from_secs(30)).await;
    assert_eq!(audit["consistent"], true, "{audit}");
    let bought: i64 = attempts.iter().filter(|a| !a.is_order()).count() as i64;
    assert!(audit["completed_units"].as_i64().unwrap_or(0) > 0 && bought > 0);
    assert_eq!(survivor_app.audit().await["ok"], true);
    eprintln!(
        "{} requests, {acknowledged} acknowledged, {cut_short} cut short by the kill, {} \
         unanswered in all",
        attempts.len(),
        lost.len()
    );
}
