//! The push endpoint, event effects, dedupe and the fairness race.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_goal_raises_the_price_bumps_the_epoch_and_locks_trading() {
    let app = spawn_app().await;
    let user = app.register("courtside").await;
    let player = app.create_player(1_000).await;
    let response = app.push_event("e1", player, "goal").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let applied: Value = response.json().await.unwrap();
    assert_eq!(applied["applied"], true);
    assert_eq!(applied["player_id"], player);
    assert!(applied["price_cents"].as_i64().unwrap() > 1_000);
    assert_eq!(applied["epoch"], 1);
    let applied_at: DateTime<Utc> = applied["applied_at"].as_str().unwrap().parse().unwrap();
    let locked_until: DateTime<Utc> = applied["locked_until"].as_str().unwrap().parse().unwrap();
    assert_eq!((locked_until - applied_at).num_seconds(), 60);

    let fetched = app.player(player).await;
    assert_eq!(fetched["epoch"], 1);
    assert_eq!(fetched["price_cents"], applied["price_cents"]);
    assert_eq!(fetched["locked_until"], applied["locked_until"]);

    let order = json!({"player_id": player, "side": "buy", "quantity": 1});
    let body = assert_error(
        app.order(&user.token, "k", &order).await,
        StatusCode::LOCKED,
        "player_locked",
    )
    .await;
    assert!(body["error"]["retry_after_ms"].as_i64().unwrap() > 55_000);

    let history: Value = app
        .get(&format!("/api/v1/players/{player}/history"), None)
        .await
        .json()
        .await
        .unwrap();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["price_cents"], applied["price_cents"]);
}

#[tokio::test]
async fn red_cards_and_own_goals_lower_the_price() {
    let app = spawn_app().await;
    for (n, kind) in ["red_card", "own_goal"].iter().enumerate() {
        let player = app.create_player(1_000).await;
        let applied: Value = app
            .push_event(&format!("d{n}"), player, kind)
            .await
            .json()
            .await
            .unwrap();
        assert!(
            applied["price_cents"].as_i64().unwrap() < 1_000,
            "{kind}: {applied}"
        );
    }
}

#[tokio::test]
async fn the_same_event_pushed_fifty_times_at_once_applies_once() {
    let settings = test_settings().await;
    // Two replicas sharing one database receive the pushes.
    let first = spawn_app_with(settings.clone()).await;
    let second = spawn_app_with(settings).await;
    let player = first.create_player(1_000).await;
    let results = join_all((0..50).map(|n| {
        let app = if n % 2 == 0 { &first } else { &second };
        async move { app.push_event("dup-1", player, "goal").await.status() }
    }))
    .await;
    let applied = results
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    let duplicates = results.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!((applied, duplicates), (1, 49), "{results:?}");
    assert_eq!(first.player(player).await["epoch"], 1);
    let again: Value = second
        .push_event("dup-1", player, "goal")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, json!({"applied": false, "duplicate": true}));
}

#[tokio::test]
async fn rejected_events_are_4xx_and_not_remembered() {
    let app = spawn_app().await;
    let user = app.register("pusher").await;
    let player = app.create_player(1_000).await;
    assert_error(
        app.push_event("r1", 987_654, "goal").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.push_event("r1", player, "bicycle_kick").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    )
    .await;
    for body in [
        json!({"event_id": "r1", "match_id": "m", "player_id": player, "kind": "goal", "occurred_at": "yesterday"}),
        json!({"event_id": "", "match_id": "m", "player_id": player, "kind": "goal", "occurred_at": "2026-11-22T15:04:05Z"}),
        json!({"event_id": "r1", "match_id": "m", "player_id": player, "kind": "goal"}),
        json!({"event_id": "r1", "match_id": "m", "player_id": player, "kind": "goal", "occurred_at": "2026-11-22T15:04:05Z", "minute": -1}),
    ] {
        let response = app
            .post_json("/api/v1/admin/feed/events", Some(ADMIN_TOKEN), &body)
            .await;
        assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    }
    let body = json!({"event_id": "r2", "match_id": "m", "player_id": player, "kind": "goal", "occurred_at": "2026-11-22T15:04:05Z"});
    assert_error(
        app.post_json("/api/v1/admin/feed/events", None, &body)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_error(
        app.post_json("/api/v1/admin/feed/events", Some(&user.token), &body)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(app.player(player).await["epoch"], 0);
    // The rejected id was not remembered: it applies now.
    assert_eq!(
        app.push_event("r1", player, "goal").await.status(),
        StatusCode::ACCEPTED
    );
}

/// Fires `count` buys of one share on `player`, each after a random delay
/// within `spread`, and returns every 201 body.
async fn staggered_buys(
    app: &TestApp,
    users: &[User],
    player: i64,
    count: usize,
    spread: Duration,
) -> Vec<Value> {
    let bodies = join_all((0..count).map(|n| {
        let token = users[n % users.len()].token.clone();
        let delay = rand::thread_rng().gen_range(0..spread.as_millis() as u64);
        async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let response = app
                .order(
                    &token,
                    &format!("race-{n}"),
                    &json!({"player_id": player, "side": "buy", "quantity": 1}),
                )
                .await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    }))
    .await;
    let mut fills = Vec::new();
    for (status, body) in bodies {
        match status {
            StatusCode::CREATED => fills.push(body),
            StatusCode::LOCKED => assert_eq!(body["error"]["code"], "player_locked"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    fills
}

/// 300 buys spread over 900 ms on a fresh player, with a goal pushed after
/// the first third (late enough under load for orders on both sides of it).
/// Returns the player, the fills and the event's `applied_at`.
async fn race_orders_against_a_goal(app: &TestApp) -> (i64, Vec<Value>, Value) {
    let users = app.bulk_users("race", 30, 10_000_000).await;
    let player = app.create_player(1_000).await;
    let orders = staggered_buys(app, &users, player, 300, Duration::from_millis(900));
    let event = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let applied: Value = app
            .push_event("race-goal", player, "goal")
            .await
            .json()
            .await
            .unwrap();
        applied
    };
    let (fills, applied) = tokio::join!(orders, event);
    (player, fills, applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_order_fills_at_the_old_epoch_after_the_event_is_applied() {
    let mut settings = test_settings().await;
    // No trade lock, so orders keep filling after the event and the epoch
    // check itself is what is tested.
    settings.trading.lock_seconds = 0;
    settings.database.max_connections = 40;
    let app = spawn_app_with(settings).await;
    let (player, fills, applied) = race_orders_against_a_goal(&app).await;
    let applied_at: DateTime<Utc> = applied["applied_at"].as_str().unwrap().parse().unwrap();
    let new_price = applied["price_cents"].as_i64().unwrap();

    assert_eq!(fills.len(), 300, "no order may be lost");
    let (mut before, mut after) = (0, 0);
    for fill in &fills {
        let executed_at: DateTime<Utc> = fill["executed_at"].as_str().unwrap().parse().unwrap();
        if executed_at > applied_at {
            after += 1;
            assert_eq!(
                fill["epoch"], 1,
                "a fill after the event at the old epoch: {fill}"
            );
            assert_eq!(fill["price_cents"], new_price, "{fill}");
        } else {
            before += 1;
            assert_eq!(fill["epoch"], 0, "{fill}");
            assert_eq!(fill["price_cents"], 1_000, "{fill}");
        }
    }
    assert!(
        before > 20 && after > 20,
        "the race missed: {before} before, {after} after"
    );
    let rows = app
        .sql(&format!(
            "SELECT count(*) FROM orders WHERE player_id = {player}"
        ))
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 300);
    assert_eq!(app.audit().await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_trade_lock_orders_after_the_event_are_refused_and_none_is_lost() {
    let mut settings = test_settings().await;
    settings.database.max_connections = 40;
    let app = spawn_app_with(settings).await;
    let (player, fills, applied) = race_orders_against_a_goal(&app).await;
    let applied_at: DateTime<Utc> = applied["applied_at"].as_str().unwrap().parse().unwrap();
    for fill in &fills {
        let executed_at: DateTime<Utc> = fill["executed_at"].as_str().unwrap().parse().unwrap();
        assert!(executed_at < applied_at, "filled during the lock: {fill}");
        assert_eq!(fill["epoch"], 0);
    }
    assert!(
        fills.len() > 20 && fills.len() < 300,
        "{} fills",
        fills.len()
    );
    let rows = app
        .sql(&format!(
            "SELECT count(*) FROM orders WHERE player_id = {player}"
        ))
        .await;
    assert_eq!(rows[0].get::<_, i64>(0) as usize, fills.len());
}

#[tokio::test]
async fn ticks_reach_the_price_history_once_per_history_interval_not_every_tick() {
    let mut settings = test_settings().await;
    settings.pricing.tick_ms = 20;
    settings.pricing.tick_volatility_bp = 1_000;
    settings.pricing.history_ms = 500;
    let app = spawn_app_with(settings).await;
    let player = app.create_player(100_000).await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let seq = app
        .sql(&format!("SELECT seq FROM players WHERE id = {player}"))
        .await[0]
        .get::<_, i64>(0);
    let points: Value = app
        .get(
            &format!("/api/v1/players/{player}/history?limit=5000"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let points = points.as_array().unwrap().len() as i64;
    // ~100 ticks moved the price; ~4 of them (plus the creation) were kept.
    assert!(seq > 40, "only {seq} ticks");
    assert!(
        (3..=7).contains(&points),
        "{points} history points for {seq} ticks"
    );
}

#[tokio::test]
async fn recent_events_list_applied_events_newest_first_for_all_or_one_player() {
    let app = spawn_app().await;
    let striker = app.create_player(1000).await;
    let keeper = app.create_player(1000).await;
    for (id, player, kind) in [
        ("recent-1", striker, "goal"),
        ("recent-2", keeper, "save"),
        ("recent-3", striker, "yellow_card"),
    ] {
        assert_eq!(
            app.push_event(id, player, kind).await.status(),
            StatusCode::ACCEPTED
        );
    }
    // A duplicate is not a new event.
    assert_eq!(
        app.push_event("recent-1", striker, "goal").await.status(),
        StatusCode::OK
    );

    let all: Value = app.get("/api/v1/events", None).await.json().await.unwrap();
    let kinds: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["yellow_card", "save", "goal"]);
    let newest = &all[0];
    assert_eq!(newest["event_id"], "recent-3");
    assert_eq!(newest["player_id"], striker);
    assert_eq!(newest["epoch"], 2);
    assert_eq!(newest["correction"], false);
    assert_eq!(newest["reverted"], false);
    assert_eq!(
        newest["price_cents"],
        app.player(striker).await["price_cents"]
    );
    assert!(newest["price_cents"].as_i64() < newest["price_before_cents"].as_i64());

    let two: Value = app
        .get("/api/v1/events?limit=2", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(two.as_array().unwrap().len(), 2);
    let mine: Value = app
        .get(&format!("/api/v1/players/{striker}/events"), None)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["recent-3", "recent-1"]);

    assert_error(
        app.get("/api/v1/events?limit=0", None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    )
    .await;
    assert_error(
        app.get("/api/v1/events?limit=many", None).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_error(
        app.get("/api/v1/players/999999/events", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}
