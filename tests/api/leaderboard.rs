//! The leaderboard: every user ranked by net worth at live prices, served
//! by any replica, revalued by one leader.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// `GET /api/v1/leaderboard?limit=…`, or `None` while it answers 503.
async fn leaderboard(app: &TestApp, limit: usize) -> Option<Value> {
    let response = app
        .get(&format!("/api/v1/leaderboard?limit={limit}"), None)
        .await;
    match response.status() {
        StatusCode::OK => Some(response.json().await.expect("json")),
        StatusCode::SERVICE_UNAVAILABLE => {
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"]["code"], "leaderboard_unavailable", "{body}");
            None
        }
        other => panic!("leaderboard answered {other}"),
    }
}

fn as_of_ms(board: &Value) -> i64 {
    let as_of = board["as_of"].as_str().expect("as_of");
    chrono::DateTime::parse_from_rfc3339(as_of)
        .expect("as_of is RFC 3339")
        .timestamp_millis()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Polls the leaderboard until `done` holds for it, within `deadline`.
async fn leaderboard_until(
    app: &TestApp,
    deadline: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < deadline {
        if let Some(board) = leaderboard(app, 1_000).await {
            if done(&board) {
                return board;
            }
            last = Some(board);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {deadline:?}; last: {last:?}");
}

async fn buy(app: &TestApp, user: &User, player: i64, quantity: i64, key: &str) {
    app.trade(user, "buy", player, quantity, key).await;
}

/// The ranking every user's `/portfolio` implies: net worth descending,
/// then user id ascending.
async fn expected_ranking(app: &TestApp, users: &[User]) -> Vec<(i64, i64)> {
    let mut expected = Vec::new();
    for user in users {
        let portfolio = app.portfolio(&user.token).await;
        expected.push((user.id, portfolio["net_worth_cents"].as_i64().unwrap()));
    }
    expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    expected
}

fn ranking_of(board: &Value) -> Vec<(i64, i64)> {
    board["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["user_id"].as_i64().unwrap(),
                e["net_worth_cents"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn place(app: &TestApp, user: &User) -> Value {
    let response = app.get("/api/v1/leaderboard/me", Some(&user.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

/// A client on the test's Redis, and the full name of the leaderboard's
/// meta hash, for tests that play the part of another leader or of Redis.
async fn leaderboard_redis(
    settings: &matchday::config::Settings,
) -> (fred::clients::Client, String) {
    use fred::prelude::*;
    let config = Config::from_url(settings.redis.url.expose()).expect("redis url");
    let redis = Builder::from_config(config).build().expect("redis client");
    redis.init().await.expect("connect to redis");
    (
        redis,
        format!("{}leaderboard:meta", settings.redis.key_prefix),
    )
}

async fn fast_settings() -> matchday::config::Settings {
    let mut settings = test_settings().await;
    settings.leaderboard.interval_ms = 200;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rankings_match_every_users_portfolio_after_prices_move() {
    let app = spawn_app_with(fast_settings().await).await;
    let players = [
        app.create_player(10_000).await,
        app.create_player(2_500).await,
        app.create_player(40_000).await,
    ];
    let mut users = app.bulk_users("rank", 9, 1_000_000).await;
    users.push(app.register("late_joiner").await);
    // Varied positions: buys, a partial sell, one user who does nothing.
    for (n, user) in users.iter().enumerate().skip(1) {
        let n = n as i64;
        buy(&app, user, players[0], n, &format!("a{n}")).await;
        buy(
            &app,
            user,
            players[(n % 3) as usize],
            2 * n,
            &format!("b{n}"),
        )
        .await;
        if n % 2 == 0 {
            app.trade(user, "sell", players[0], n / 2, &format!("c{n}"))
                .await;
        }
    }
    // And a completed drop purchase.
    let sale = app.create_drop(players[1], 10, 2_000, None).await;
    let sale = sale["sale_id"].as_i64().unwrap();
    let response = app.purchase(&users[0].token, sale, "drop", 4).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    wait_until_settled(&app, sale, Duration::from_secs(10)).await;

    // Prices move both ways.
    let moved_at = now_ms();
    for (n, (player, kind)) in [
        (players[0], "goal"),
        (players[1], "red_card"),
        (players[2], "assist"),
    ]
    .into_iter()
    .enumerate()
    {
        let response = app.push_event(&format!("move-{n}"), player, kind).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let expected = expected_ranking(&app, &users).await;
    let distinct: std::collections::HashSet<i64> = expected.iter().map(|e| e.1).collect();
    assert!(distinct.len() > 5, "a scenario worth ranking: {expected:?}");

    let board = leaderboard_until(&app, Duration::from_secs(5), "ranking", |board| {
        as_of_ms(board) >= moved_at && ranking_of(board) == expected
    })
    .await;
    let ranks: Vec<i64> = board["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rank"].as_i64().unwrap())
        .collect();
    assert_eq!(ranks, (1..=users.len() as i64).collect::<Vec<_>>());
    let names: HashMap<i64, String> = board["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user_id"].as_i64().unwrap(),
                e["username"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (n, user) in users.iter().take(9).enumerate() {
        assert_eq!(names[&user.id], format!("rank{}", n + 1));
    }
    assert_eq!(names[&users[9].id], "late_joiner");

    // Each user's own place agrees (prices are still, so every cycle
    // writes the same scores).
    for (rank, (user_id, worth)) in expected.iter().enumerate() {
        let user = users.iter().find(|u| u.id == *user_id).unwrap();
        let me = place(&app, user).await;
        assert_eq!(me["rank"], rank as i64 + 1, "{me}");
        assert_eq!(me["net_worth_cents"], *worth, "{me}");
        assert_eq!(me["total_users"], users.len() as i64, "{me}");
        assert!(me["as_of"].is_string());
    }
    // A smaller page is the same ranking's head.
    let top3 = leaderboard(&app, 3).await.unwrap();
    assert_eq!(ranking_of(&top3), expected[..3]);
    assert_eq!(app.audit().await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_price_event_reorders_the_leaderboard_within_two_seconds() {
    // The default revaluation interval: this is the claim API.md makes.
    let app = spawn_app().await;
    let player = app.create_player(10_000).await;
    let first = app.register("first_in").await;
    let investor = app.register("investor").await;
    buy(&app, &investor, player, 50, "all-in").await;

    // Equal net worth: the lower user id ranks first.
    let bought_at = now_ms();
    let board = leaderboard_until(&app, Duration::from_secs(5), "tie", |board| {
        as_of_ms(board) >= bought_at
    })
    .await;
    assert_eq!(
        ranking_of(&board),
        [(first.id, 1_000_000), (investor.id, 1_000_000)]
    );
    let mut watcher = app.ws(None).await;
    watcher
        .send(json!({"op": "subscribe", "channels": ["leaderboard"]}))
        .await;
    let subscribed = watcher.expect("subscribed", Duration::from_secs(2)).await;
    assert_eq!(subscribed["snapshot"][0]["channel"], "leaderboard");
    assert_eq!(
        subscribed["snapshot"][0]["data"]["entries"][0]["user_id"],
        first.id
    );
    let mut own = app.ws(Some(&investor.token)).await;

    let before = as_of_ms(&board);
    let pushed = Instant::now();
    let response = app.push_event("goal-1", player, "goal").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let price = app.player(player).await["price_cents"].as_i64().unwrap();
    assert!(price > 10_000);
    let worth = 500_000 + 50 * price;
    let board = leaderboard_until(&app, Duration::from_secs(2), "reordered", |board| {
        ranking_of(board) == [(investor.id, worth), (first.id, 1_000_000)]
    })
    .await;
    assert!(as_of_ms(&board) > before, "as_of advanced");
    let reordered_in = pushed.elapsed();

    // Sockets hear it too: the new top on `leaderboard`, the live value
    // and profit on the investor's `user` channel.
    let message = loop {
        let message = watcher.expect("leaderboard", Duration::from_secs(3)).await;
        if message["entries"][0]["user_id"] == investor.id {
            break message;
        }
    };
    assert_eq!(message["entries"][0]["net_worth_cents"], worth);
    assert_eq!(message["entries"][0]["username"], "investor");
    assert_eq!(message["entries"][1]["rank"], 2);
    let portfolio = loop {
        let message = own.expect("portfolio", Duration::from_secs(3)).await;
        if message["net_worth_cents"] == worth {
            break message;
        }
    };
    assert_eq!(portfolio["holdings"][0]["quantity"], 50);
    assert_eq!(portfolio["holdings"][0]["cost_cents"], 500_000);
    assert_eq!(portfolio["holdings"][0]["value_cents"], 50 * price);
    assert_eq!(
        portfolio["holdings"][0]["profit_cents"],
        50 * (price - 10_000)
    );
    assert_eq!(portfolio["profit_cents"], 50 * (price - 10_000));
    // The REST portfolio says the same.
    let rest = app.portfolio(&investor.token).await;
    assert_eq!(rest["holdings"][0]["profit_cents"], 50 * (price - 10_000));
    assert_eq!(rest["net_worth_cents"], worth);
    println!("reordered {reordered_in:?} after the event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_replica_revalues_within_seconds_when_the_leader_stops() {
    let settings = fast_settings().await;
    let a = spawn_app_with(settings.clone()).await;
    let b = spawn_app_with(settings).await;
    let player = a.create_player(10_000).await;
    let leading = loop {
        let (la, lb) = (
            a.metric("matchday_leader").await,
            b.metric("matchday_leader").await,
        );
        if la == 1.0 || lb == 1.0 {
            break if la == 1.0 { 0 } else { 1 };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (leader, follower) = if leading == 0 { (&a, &b) } else { (&b, &a) };
    // Trades on the leader: the follower hears of them over the bus only.
    let holder = leader.register("holder").await;
    let saver = leader.register("saver").await;
    buy(leader, &holder, player, 10, "h1").await;
    leaderboard_until(follower, Duration::from_secs(5), "both ranked", |board| {
        ranking_of(board).len() == 2
    })
    .await;

    leader.stop().await;
    let stopped = Instant::now();
    let stopped_ms = now_ms();
    let response = follower.push_event("after-stop", player, "goal").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let price = follower.player(player).await["price_cents"]
        .as_i64()
        .unwrap();
    let worth = 1_000_000 - 100_000 + 10 * price;
    let board = leaderboard_until(follower, Duration::from_secs(8), "taken over", |board| {
        as_of_ms(board) > stopped_ms
            && ranking_of(board) == [(holder.id, worth), (saver.id, 1_000_000)]
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(6),
        "revalued {:?} after the leader stopped",
        stopped.elapsed()
    );
    let me = place(follower, &holder).await;
    assert_eq!(me["rank"], 1);
    assert_eq!(me["net_worth_cents"], worth);
    assert_eq!(board["entries"][0]["username"], "holder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_users_are_ranked_at_once_and_a_redis_flush_is_repaired() {
    let settings = fast_settings().await;
    let redis_url = settings.redis.url.expose().to_string();
    let prefix = settings.redis.key_prefix.clone();
    let app = spawn_app_with(settings).await;
    let early = app.register("early_bird").await;
    leaderboard_until(&app, Duration::from_secs(5), "first cycle", |board| {
        ranking_of(board).len() == 1
    })
    .await;

    // Ranked before the leader's next cycle could have run.
    let newcomers = app.bulk_users("newcomer", 3, 2_000_000).await;
    let me = place(&app, &newcomers[0]).await;
    assert_eq!(me["rank"], 1, "{me}");
    assert_eq!(me["net_worth_cents"], 2_000_000);
    assert_eq!(me["total_users"], 4);
    assert_eq!(place(&app, &early).await["rank"], 4);

    // Redis loses everything: the leader rewrites it all within seconds.
    assert!(delete_redis_keys(&redis_url, &prefix).await > 0);
    let board = leaderboard_until(&app, Duration::from_secs(5), "rebuilt", |board| {
        ranking_of(board).len() == 4
    })
    .await;
    assert_eq!(board["entries"][3]["user_id"], early.id);
    assert_eq!(place(&app, &early).await["total_users"], 4);
}

#[tokio::test]
async fn leaderboard_requests_are_checked() {
    let app = spawn_app_with(fast_settings().await).await;
    let user = app.register("checker").await;
    for (query, status, code) in [
        (
            "?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "?limit=-3",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        ("?limit=ten", StatusCode::BAD_REQUEST, "bad_request"),
    ] {
        let response = app.get(&format!("/api/v1/leaderboard{query}"), None).await;
        assert_error(response, status, code).await;
    }
    let response = app.get("/api/v1/leaderboard/me", None).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = app.get("/api/v1/leaderboard/me", Some("nonsense")).await;
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Above the maximum is clamped, not refused.
    leaderboard_until(&app, Duration::from_secs(5), "ranked", |board| {
        ranking_of(board).len() == 1
    })
    .await;
    let response = app.get("/api/v1/leaderboard?limit=5000", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .client
        .post(app.url("/api/v1/leaderboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(place(&app, &user).await["rank"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_term_was_taken_cannot_flip_and_a_stale_write_is_never_read() {
    use fred::prelude::*;

    let settings = fast_settings().await;
    let (redis, meta) = leaderboard_redis(&settings).await;
    let app = spawn_app_with(settings).await;
    let user = app.register("honest").await;
    leaderboard_until(&app, Duration::from_secs(5), "first cycle", |board| {
        ranking_of(board).len() == 1
    })
    .await;
    let old_term: String = redis.hget(&meta, "term").await.unwrap();
    let old_set: String = redis.hget(&meta, "current").await.unwrap();

    // Someone else takes the term. The leader's next flip is refused; it
    // takes a new term and carries on.
    let _: () = redis.hset(&meta, ("term", "usurper")).await.unwrap();
    let taken = now_ms();
    leaderboard_until(&app, Duration::from_secs(5), "new term", |board| {
        as_of_ms(board) > taken + 300
    })
    .await;
    let new_term: String = redis.hget(&meta, "term").await.unwrap();
    assert!(new_term != old_term && new_term != "usurper", "{new_term}");

    // A deposed leader's late write lands in its own term's set, which
    // nobody reads any more.
    let member = format!("{:019}", user.id);
    let _: i64 = redis
        .zadd(&old_set, None, None, false, false, (-9e15, member))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let board = leaderboard(&app, 10).await.unwrap();
    assert_eq!(ranking_of(&board), [(user.id, 1_000_000)]);
    assert_eq!(place(&app, &user).await["net_worth_cents"], 1_000_000);
    let _ = redis.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sets_that_redis_lost_under_the_same_term_are_written_whole_again() {
    use fred::prelude::*;

    let settings = fast_settings().await;
    let (redis, meta) = leaderboard_redis(&settings).await;
    let app = spawn_app_with(settings).await;
    app.bulk_users("quiet", 3, 1_000_000).await;
    leaderboard_until(&app, Duration::from_secs(5), "ranked", |board| {
        ranking_of(board).len() == 3
    })
    .await;
    let term: String = redis.hget(&meta, "term").await.unwrap();
    // Evicted (or expired) sets, the term untouched: prices are still, so
    // no score changes, and only a full write brings the users back.
    let sets: Vec<String> = redis.hmget(&meta, vec!["set_a", "set_b"]).await.unwrap();
    // Both written once (the second a cycle after the first).
    for _ in 0..50 {
        let existing: i64 = redis.exists(sets.clone()).await.unwrap();
        if existing == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deleted: i64 = redis.del(sets).await.unwrap();
    assert_eq!(deleted, 2);
    let gone = now_ms();
    leaderboard_until(&app, Duration::from_secs(5), "rewritten", |board| {
        as_of_ms(board) > gone && ranking_of(board).len() == 3
    })
    .await;
    let same: String = redis.hget(&meta, "term").await.unwrap();
    assert_eq!(same, term, "repaired within the term");
    let _ = redis.quit().await;
}
