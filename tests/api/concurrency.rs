//! Races: many requests at once, then invariants over the result.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_buys_fill_exactly_as_many_as_the_cash_covers() {
    let app = spawn_app().await;
    let price = 1_000;
    let user = app.bulk_users("racer", 1, 10 * price).await.remove(0);
    let player = app.create_player(price).await;
    let body = json!({"player_id": player, "side": "buy", "quantity": 1});
    let responses = join_all((0..50).map(|n| {
        let app = &app;
        let token = user.token.clone();
        let body = body.clone();
        async move {
            let response = app.order(&token, &format!("race-{n}"), &body).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    }))
    .await;
    let fills: Vec<&Value> = responses
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .map(|(_, body)| body)
        .collect();
    let refused = responses
        .iter()
        .filter(|(status, body)| {
            *status == StatusCode::CONFLICT && body["error"]["code"] == "insufficient_funds"
        })
        .count();
    assert_eq!(fills.len(), 10, "{responses:?}");
    assert_eq!(refused, 40, "{responses:?}");
    let spent: i64 = fills
        .iter()
        .map(|f| f["total_cents"].as_i64().unwrap())
        .sum();
    let me = app.me(&user.token).await;
    assert_eq!(me["balance_cents"], 10 * price - spent);
    assert!(me["balance_cents"].as_i64().unwrap() >= 0);
    assert_eq!(
        app.portfolio(&user.token).await["holdings"][0]["quantity"],
        10
    );
    assert_eq!(app.audit().await["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_requests_with_one_key_fill_once() {
    let app = spawn_app().await;
    let user = app.register("doubletap").await;
    let player = app.create_player(1_000).await;
    let body = json!({"player_id": player, "side": "buy", "quantity": 1});
    let responses = join_all((0..20).map(|_| {
        let app = &app;
        let token = user.token.clone();
        let body = body.clone();
        async move {
            let response = app.order(&token, "one-key", &body).await;
            (response.status(), response.text().await.unwrap())
        }
    }))
    .await;
    let completed: Vec<&String> = responses
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .map(|(_, body)| body)
        .collect();
    assert!(!completed.is_empty(), "{responses:?}");
    assert!(
        completed.iter().all(|b| *b == completed[0]),
        "bodies differ: {completed:?}"
    );
    for (status, body) in &responses {
        if *status != StatusCode::CREATED {
            assert_eq!(*status, StatusCode::CONFLICT, "{body}");
            let body: Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["error"]["code"], "request_in_progress");
        }
    }
    let orders: Value = app.orders(&user.token).await;
    assert_eq!(orders.as_array().unwrap().len(), 1);
    assert_eq!(app.me(&user.token).await["balance_cents"], 999_000);
    // After the race, a retry replays the one fill.
    let again = app.order(&user.token, "one-key", &body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(&again.text().await.unwrap(), completed[0]);
}

#[derive(Default, Debug)]
struct Tally {
    cash_delta: i64,
    shares: HashMap<i64, i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_users_racing_random_buys_and_sells_keep_the_books_exact() {
    let app = spawn_app().await;
    let start_cash = 50_000;
    let users = app.bulk_users("swarm", 20, start_cash).await;
    let mut players = Vec::new();
    for price in [700, 1_100, 2_300] {
        players.push(app.create_player(price).await);
    }
    let deadline = Instant::now() + Duration::from_secs(4);
    let tallies = join_all(users.iter().enumerate().map(|(u, user)| {
        let app = &app;
        let players = players.clone();
        async move {
            let mut tally = Tally::default();
            let mut n = 0;
            while Instant::now() < deadline {
                let (player, side, quantity) = {
                    let mut rng = rand::thread_rng();
                    let player = players[rng.gen_range(0..players.len())];
                    let side = if rng.gen_bool(0.55) { "buy" } else { "sell" };
                    (player, side, rng.gen_range(1..=5))
                };
                n += 1;
                let body = json!({"player_id": player, "side": side, "quantity": quantity});
                let response = app.order(&user.token, &format!("u{u}-{n}"), &body).await;
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                match status {
                    StatusCode::CREATED => {
                        let total = body["total_cents"].as_i64().unwrap();
                        let quantity = body["quantity"].as_i64().unwrap();
                        let held = tally.shares.entry(player).or_default();
                        if side == "buy" {
                            tally.cash_delta -= total;
                            *held += quantity;
                        } else {
                            tally.cash_delta += total;
                            *held -= quantity;
                        }
                    }
                    StatusCode::CONFLICT => {
                        let code = body["error"]["code"].as_str().unwrap().to_string();
                        assert!(
                            code == "insufficient_funds" || code == "insufficient_holdings",
                            "{body}"
                        );
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            tally
        }
    }))
    .await;

    assert_eq!(app.audit().await["ok"], true);
    let mut fills = 0;
    for (user, tally) in users.iter().zip(&tallies) {
        // Cash read back through the API equals start − Σ buys + Σ sells.
        let me = app.me(&user.token).await;
        assert_eq!(
            me["balance_cents"],
            start_cash + tally.cash_delta,
            "{tally:?}"
        );
        // And the order history the server kept agrees with what we saw.
        let orders: Value = app
            .get("/api/v1/orders?limit=500", Some(&user.token))
            .await
            .json()
            .await
            .unwrap();
        let orders = orders.as_array().unwrap();
        fills += orders.len();
        let history_delta: i64 = orders
            .iter()
            .map(|o| {
                let total = o["total_cents"].as_i64().unwrap();
                if o["side"] == "buy" {
                    -total
                } else {
                    total
                }
            })
            .sum();
        assert_eq!(history_delta, tally.cash_delta);
        // Holdings = Σ bought − Σ sold, per player.
        let portfolio = app.portfolio(&user.token).await;
        for player in &players {
            let expected = tally.shares.get(player).copied().unwrap_or(0);
            let actual = portfolio["holdings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["player_id"] == *player)
                .map(|h| h["quantity"].as_i64().unwrap())
                .unwrap_or(0);
            assert_eq!(actual, expected, "player {player}");
            assert!(actual >= 0);
        }
    }
    assert!(fills > 100, "the race made only {fills} fills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_users_concurrent_buys_and_sells_of_one_player_never_fail_unexpectedly() {
    // A buy locks cash then the holding; a sell the holding then cash.
    // Without one lock order for both, these deadlock and answer 500.
    let app = spawn_app().await;
    let user = app.register("flipper").await;
    let player = app.create_player(100).await;
    let seed = app
        .order(
            &user.token,
            "seed",
            &json!({"player_id": player, "side": "buy", "quantity": 50}),
        )
        .await;
    assert_eq!(seed.status(), StatusCode::CREATED);
    for round in 0..5 {
        let responses = join_all((0..40).map(|n| {
            let app = &app;
            let token = user.token.clone();
            async move {
                let side = if n % 2 == 0 { "buy" } else { "sell" };
                let body = json!({"player_id": player, "side": side, "quantity": 1 + n % 3});
                let response = app.order(&token, &format!("r{round}-{n}"), &body).await;
                (response.status(), response.text().await.unwrap())
            }
        }))
        .await;
        for (status, body) in &responses {
            assert!(
                *status == StatusCode::CREATED || *status == StatusCode::CONFLICT,
                "{status}: {body}"
            );
        }
    }
    assert_eq!(app.audit().await["ok"], true);
}
