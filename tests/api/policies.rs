//! The fairness policies (`trading.fairness_policy`): a courtsider's trade
//! made before the feed delivers the event it knew of is blocked (`lock`:
//! the flip after it), cancelled (`delay`) or voided (`void_window`), and
//! the books stay balanced; a void restores cash and shares exactly, once,
//! and provisional shares and proceeds cannot be used meanwhile.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use matchday::config::{FairnessPolicy, Settings};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn app_with(policy: FairnessPolicy, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings().await;
    settings.trading.fairness_policy = policy;
    settings.trading.lock_seconds = 0;
    configure(&mut settings);
    spawn_app_with(settings).await
}

/// Pushes an event that happened at `occurred_at`.
async fn event_at(app: &TestApp, event_id: &str, player: i64, kind: &str, at: DateTime<Utc>) {
    let response = app
        .post_json(
            "/api/v1/admin/feed/events",
            Some(ADMIN_TOKEN),
            &json!({"event_id": event_id, "match_id": "m1", "player_id": player, "kind": kind,
                    "occurred_at": at.to_rfc3339_opts(SecondsFormat::Millis, true),
                    "minute": 12}),
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
}

async fn place(
    app: &TestApp,
    user: &User,
    key: &str,
    side: &str,
    player: i64,
    qty: i64,
) -> (StatusCode, Value) {
    let response = app
        .order(
            &user.token,
            key,
            &json!({"player_id": player, "side": side, "quantity": qty}),
        )
        .await;
    let status = response.status();
    (status, response.json().await.expect("json"))
}

async fn order(app: &TestApp, user: &User, id: i64) -> Value {
    let response = app
        .get(&format!("/api/v1/orders/{id}"), Some(&user.token))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

/// Cash, and (quantity, cost) of one holding, straight from the books.
async fn position(app: &TestApp, user: &User, player: i64) -> (i64, i64, i64) {
    let rows = app
        .sql(&format!(
            "SELECT u.cash_cents, coalesce(h.quantity, 0), coalesce(h.cost_cents, 0)
               FROM users u LEFT JOIN holdings h ON h.user_id = u.id AND h.player_id = {player}
              WHERE u.id = {}",
            user.id
        ))
        .await;
    (rows[0].get(0), rows[0].get(1), rows[0].get(2))
}

async fn assert_books_balance(app: &TestApp) {
    let audit = app.audit().await;
    assert_eq!(audit["ok"], true, "{audit}");
    assert_eq!(audit["ledger_sum_cents"], 0, "{audit}");
}

#[tokio::test]
async fn lock_lets_the_early_buy_fill_and_blocks_the_flip_after_the_event() {
    let app = app_with(FairnessPolicy::Lock, |s| s.trading.lock_seconds = 60).await;
    let courtsider = app.register("courtsider").await;
    let player = app.create_player(1_000).await;
    let happened = Utc::now();
    let (status, bought) = place(&app, &courtsider, "open", "buy", player, 5).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(bought["status"], "filled");
    event_at(&app, "goal-1", player, "goal", happened).await;
    let (status, refused) = place(&app, &courtsider, "close", "sell", player, 5).await;
    assert_eq!(status, StatusCode::LOCKED, "{refused}");
    assert_eq!(refused["error"]["code"], "player_locked");
    assert!(refused["error"]["retry_after_ms"].as_i64().expect("retry") > 50_000);
    // The early buy stands: the lock stops the flip, not the head start.
    assert_eq!(
        order(&app, &courtsider, bought["order_id"].as_i64().unwrap()).await["status"],
        "filled"
    );
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn delay_cancels_an_order_whose_player_had_an_event_while_it_waited() {
    let app = app_with(FairnessPolicy::Delay, |s| s.trading.delay_seconds = 1.5).await;
    let courtsider = app.register("courtsider").await;
    let honest = app.register("honest").await;
    let (player, other) = (
        app.create_player(1_000).await,
        app.create_player(2_000).await,
    );
    let mut socket = app.ws(Some(&courtsider.token)).await;
    let before = position(&app, &courtsider, player).await;

    // At the ground a goal goes in; the courtsider buys at once. The feed
    // delivers the goal half a second later, while the order waits.
    let happened = Utc::now();
    let (status, pending) = place(&app, &courtsider, "open", "buy", player, 5).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert_eq!(pending["status"], "pending");
    assert!(
        pending["price_cents"].is_null() && pending["executed_at"].is_null(),
        "{pending}"
    );
    let id = pending["order_id"].as_i64().expect("order_id");
    let (status, honest_pending) = place(&app, &honest, "h1", "buy", other, 2).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    event_at(&app, "goal-1", player, "goal", happened).await;

    // Cancelled once due; the honest order on a quiet player fills at the
    // price then.
    let cancelled = socket.expect("order", Duration::from_secs(5)).await;
    let cancelled = if cancelled["status"] == "pending" {
        socket.expect("order", Duration::from_secs(5)).await
    } else {
        cancelled
    };
    assert_eq!(cancelled["order_id"], id);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(cancelled["reason"]
        .as_str()
        .expect("reason")
        .starts_with("event_during_delay"));
    assert_eq!(order(&app, &courtsider, id).await["status"], "cancelled");
    assert_eq!(
        position(&app, &courtsider, player).await,
        before,
        "a cancelled order moved money"
    );

    let honest_id = honest_pending["order_id"].as_i64().unwrap();
    let filled = loop {
        let found = order(&app, &honest, honest_id).await;
        if found["status"] != "pending" {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(filled["status"], "filled", "{filled}");
    assert_eq!(filled["price_cents"], 2_000);
    let waited = DateTime::parse_from_rfc3339(filled["executed_at"].as_str().unwrap()).unwrap()
        - DateTime::parse_from_rfc3339(honest_pending["requested_at"].as_str().unwrap()).unwrap();
    assert!(
        waited >= chrono::Duration::milliseconds(1_500),
        "filled after {waited}"
    );
    // The listing shows both, the retry replays the original 202.
    let listed = app.orders(&courtsider.token).await;
    assert_eq!(listed[0]["status"], "cancelled");
    let (status, replay) = place(&app, &courtsider, "open", "buy", player, 5).await;
    assert_eq!(
        (status, &replay["status"]),
        (StatusCode::ACCEPTED, &json!("pending"))
    );
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn void_window_voids_fills_made_before_the_event_and_restores_them_exactly() {
    let app = app_with(FairnessPolicy::VoidWindow, |s| {
        s.trading.max_feed_lag_seconds = 2
    })
    .await;
    let courtsider = app.register("courtsider").await;
    let honest = app.register("honest").await;
    let (up, down) = (
        app.create_player(1_000).await,
        app.create_player(1_000).await,
    );
    // Inventory to sell ahead of a fall, final before anything happens.
    app.trade(&courtsider, "buy", down, 10, "inventory").await;
    app.trade(&honest, "buy", up, 3, "honest-early").await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let mut socket = app.ws(Some(&courtsider.token)).await;
    let (up_before, down_before) = (
        position(&app, &courtsider, up).await,
        position(&app, &courtsider, down).await,
    );
    let honest_before = position(&app, &honest, up).await;

    // A goal for one, a red card for the other, seen at the ground.
    let happened = Utc::now();
    let (status, buy) = place(&app, &courtsider, "buy", "buy", up, 4).await;
    assert_eq!(status, StatusCode::CREATED, "{buy}");
    assert_eq!(buy["status"], "provisional");
    assert!(buy["final_at"].is_string(), "{buy}");
    let (status, sell) = place(&app, &courtsider, "sell", "sell", down, 6).await;
    assert_eq!(status, StatusCode::CREATED, "{sell}");
    assert_eq!(sell["status"], "provisional");
    event_at(&app, "goal-1", up, "goal", happened).await;
    event_at(&app, "red-1", down, "red_card", happened).await;

    for id in [&buy["order_id"], &sell["order_id"]] {
        let voided = order(&app, &courtsider, id.as_i64().unwrap()).await;
        assert_eq!(voided["status"], "voided", "{voided}");
        assert!(voided["reason"]
            .as_str()
            .expect("reason")
            .contains("before this fill"));
    }
    // A retry with the key still gets the answer first given (a fill is
    // stored by its order, whose row now says voided).
    let (status, replayed) = place(&app, &courtsider, "buy", "buy", up, 4).await;
    assert_eq!(status, StatusCode::CREATED, "{replayed}");
    assert_eq!(replayed, buy);
    // Exactly as before: cash, shares and cost basis.
    assert_eq!(position(&app, &courtsider, up).await, up_before);
    assert_eq!(position(&app, &courtsider, down).await, down_before);
    // The honest buy long before the goal stands.
    assert_eq!(position(&app, &honest, up).await, honest_before);
    // Each reversal is two entries under void:{id}.
    for id in [&buy["order_id"], &sell["order_id"]] {
        let rows = app
            .sql(&format!(
                "SELECT count(*), sum(amount_cents)::bigint FROM ledger_entries WHERE txn = 'void:{id}'"
            ))
            .await;
        assert_eq!((rows[0].get::<_, i64>(0), rows[0].get::<_, i64>(1)), (2, 0));
    }
    // The owner is told, on the user channel, why.
    let mut told = Vec::new();
    while told.len() < 2 {
        let message = socket.expect("order", Duration::from_secs(5)).await;
        if message["status"] == "voided" {
            told.push(message["order_id"].clone());
        }
    }
    told.sort_by_key(|id| id.as_i64());
    assert_eq!(
        told,
        vec![buy["order_id"].clone(), sell["order_id"].clone()]
    );

    // Idempotent: the same event again, and a second event that also
    // occurred before the fills, void nothing more.
    let totals = book_totals(&app).await;
    event_at(&app, "goal-1", up, "goal", happened).await;
    event_at(
        &app,
        "assist-1",
        up,
        "assist",
        happened - chrono::Duration::seconds(1),
    )
    .await;
    let after = book_totals(&app).await;
    assert_eq!(after[..9], totals[..9], "a second void changed the books");
    assert_eq!(position(&app, &courtsider, up).await, up_before);
    // A buy after the goal arrived is at the new price.
    let (status, late) = place(&app, &courtsider, "late", "buy", up, 1).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(late["price_cents"].as_i64().unwrap() > 1_000, "{late}");
    // Until another event that occurred before it arrives.
    event_at(&app, "assist-2", up, "assist", happened).await;
    assert_eq!(
        order(&app, &courtsider, late["order_id"].as_i64().unwrap()).await["status"],
        "voided"
    );
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn provisional_shares_and_proceeds_cannot_be_used_until_final() {
    let app = app_with(FairnessPolicy::VoidWindow, |s| {
        s.trading.max_feed_lag_seconds = 3
    })
    .await;
    let user = app.register("trader").await;
    let player = app.create_player(100).await;
    let other = app.create_player(100).await;
    // 10 final shares at 100, then the price doubles and 10 provisional
    // shares are bought at 200.
    app.trade(&user, "buy", player, 10, "final").await;
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    app.sql(&format!(
        "UPDATE players SET price_cents = 200 WHERE id = {player}"
    ))
    .await;
    let (status, provisional) = place(&app, &user, "provisional", "buy", player, 10).await;
    assert_eq!(
        (status, &provisional["status"]),
        (StatusCode::CREATED, &json!("provisional"))
    );

    // Selling more than the final shares is refused until they are final.
    let (status, refused) = place(&app, &user, "sell-11", "sell", player, 11).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "holdings_provisional");
    let wait = refused["error"]["retry_after_ms"]
        .as_i64()
        .expect("retry_after_ms");
    assert!((1..=3_000).contains(&wait), "{refused}");
    // The final ones sell, at the average cost of the final shares only.
    let (status, sold) = place(&app, &user, "sell-5", "sell", player, 5).await;
    assert_eq!(status, StatusCode::CREATED, "{sold}");
    // Basis: 3,000 − 5/10 of the final shares' 1,000.
    let (_, quantity, cost) = position(&app, &user, player).await;
    assert_eq!((quantity, cost), (15, 2_500));

    // The sale's proceeds (1,000) are provisional too: with the rest of
    // the cash spent, they cannot buy anything.
    let cash = position(&app, &user, player).await.0;
    let spendable = cash - 1_000;
    app.sql(&format!(
        "UPDATE players SET price_cents = {spendable} WHERE id = {other}"
    ))
    .await;
    let (status, spent) = place(&app, &user, "spend", "buy", other, 1).await;
    assert_eq!(status, StatusCode::CREATED, "{spent}");
    let (status, refused) = place(&app, &user, "spend-proceeds", "buy", other, 1).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "insufficient_funds");

    // An event that occurred before both voids them: the provisional buy
    // takes exactly its 10 shares and 2,000 of basis away, the sale is
    // paid back from the unspendable proceeds. Nothing goes negative.
    let happened = DateTime::parse_from_rfc3339(provisional["executed_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
        - chrono::Duration::milliseconds(10);
    event_at(&app, "goal-1", player, "goal", happened).await;
    assert_eq!(
        order(&app, &user, provisional["order_id"].as_i64().unwrap()).await["status"],
        "voided"
    );
    assert_eq!(
        order(&app, &user, sold["order_id"].as_i64().unwrap()).await["status"],
        "voided"
    );
    let (cash_after, quantity, cost) = position(&app, &user, player).await;
    assert_eq!(
        (quantity, cost),
        (10, 1_000),
        "the final shares, at their own cost"
    );
    // 1,000 left after the spend, + 2,000 back for the buy, − 1,000 for the sale.
    assert_eq!(cash_after, 2_000);
    assert_books_balance(&app).await;

    // Once final, shares sell as usual.
    app.trade(&user, "buy", player, 1, "after").await;
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let (status, body) = place(&app, &user, "sell-all", "sell", player, 11).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        order(&app, &user, body["order_id"].as_i64().unwrap()).await["status"],
        "provisional"
    );
    assert_books_balance(&app).await;
}

#[tokio::test]
async fn an_order_is_visible_to_its_owner_only() {
    let app = app_with(FairnessPolicy::Lock, |_| {}).await;
    let (owner, other) = (app.register("owner").await, app.register("other").await);
    let player = app.create_player(1_000).await;
    let (status, placed) = place(&app, &owner, "k", "buy", player, 1).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = placed["order_id"].as_i64().unwrap();
    assert_eq!(order(&app, &owner, id).await["price_cents"], 1_000);
    for (token, path) in [
        (Some(other.token.as_str()), format!("/api/v1/orders/{id}")),
        (Some(owner.token.as_str()), "/api/v1/orders/0".to_string()),
        (
            Some(owner.token.as_str()),
            "/api/v1/orders/nope".to_string(),
        ),
    ] {
        assert_error(
            app.get(&path, token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let response = app.get(&format!("/api/v1/orders/{id}"), None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_orders_and_voiding_events_keep_every_account_exact() {
    use futures_util::future::join_all;
    use rand::{Rng, SeedableRng};

    let app = app_with(FairnessPolicy::VoidWindow, |s| {
        s.trading.max_feed_lag_seconds = 30
    })
    .await;
    let start = 100_000;
    let users = app.bulk_users("racer", 16, start).await;
    let mut players = Vec::new();
    for _ in 0..3 {
        players.push(app.create_player(1_000).await);
    }
    // Final shares to sell from the start (no money moves: shares only).
    let inventory = 20;
    for user in &users {
        for player in &players {
            app.sql(&format!(
                "INSERT INTO holdings (user_id, player_id, quantity, cost_cents)
                 VALUES ({}, {player}, {inventory}, {})",
                user.id,
                inventory * 1_000
            ))
            .await;
        }
    }
    let racing = async {
        join_all(users.iter().enumerate().map(|(n, user)| {
            let (app, players) = (&app, &players);
            async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
                let mut statuses = Vec::new();
                for k in 0..25 {
                    let side = if rng.gen_bool(0.5) { "buy" } else { "sell" };
                    let player = players[rng.gen_range(0..players.len())];
                    let quantity = rng.gen_range(1..=8);
                    let (status, body) =
                        place(app, user, &format!("r{n}-{k}"), side, player, quantity).await;
                    assert!(
                        status == StatusCode::CREATED
                            || (status == StatusCode::CONFLICT
                                && [
                                    "insufficient_funds",
                                    "insufficient_holdings",
                                    "holdings_provisional"
                                ]
                                .contains(&body["error"]["code"].as_str().unwrap_or(""))),
                        "{status} {body}"
                    );
                    statuses.push(status);
                }
                statuses
            }
        }))
        .await
    };
    // Events meanwhile, each having occurred a little before it arrives.
    let events = async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        for n in 0..12 {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(20..120))).await;
            let player = players[rng.gen_range(0..players.len())];
            let kind = ["goal", "red_card", "save", "yellow_card"][n % 4];
            let at = Utc::now() - chrono::Duration::milliseconds(rng.gen_range(50..1_500));
            event_at(&app, &format!("race-{n}"), player, kind, at).await;
        }
    };
    let (statuses, ()) = tokio::join!(racing, events);
    let fills = statuses
        .iter()
        .flatten()
        .filter(|s| **s == StatusCode::CREATED)
        .count();

    // Each account is exactly its start plus the fills that stand.
    let mut voided = 0;
    for user in &users {
        let orders = app.get("/api/v1/orders?limit=500", Some(&user.token)).await;
        let orders: Value = orders.json().await.expect("json");
        let (mut cash, mut shares) = (start, std::collections::HashMap::new());
        for order in orders.as_array().expect("orders") {
            let status = order["status"].as_str().expect("status");
            assert!(
                ["provisional", "filled", "voided"].contains(&status),
                "{order}"
            );
            if status == "voided" {
                voided += 1;
                continue;
            }
            let (total, quantity) = (
                order["total_cents"].as_i64().unwrap(),
                order["quantity"].as_i64().unwrap(),
            );
            let held = shares
                .entry(order["player_id"].as_i64().unwrap())
                .or_insert(inventory);
            if order["side"] == "buy" {
                cash -= total;
                *held += quantity;
            } else {
                cash += total;
                *held -= quantity;
            }
        }
        let rows = app
            .sql(&format!(
                "SELECT cash_cents, (SELECT json_object_agg(player_id, quantity)::text FROM holdings
                                      WHERE user_id = {0}) FROM users WHERE id = {0}",
                user.id
            ))
            .await;
        assert_eq!(rows[0].get::<_, i64>(0), cash, "user {}", user.id);
        let held: Value = serde_json::from_str(&rows[0].get::<_, String>(1)).unwrap();
        for player in &players {
            let expected = shares.get(player).copied().unwrap_or(inventory);
            assert_eq!(
                held[player.to_string()],
                expected,
                "user {} player {player}",
                user.id
            );
            assert!(expected >= 0);
        }
    }
    assert!(fills > 100, "only {fills} fills");
    assert!(voided > 0, "no fill was voided: the race proved nothing");
    eprintln!("{fills} fills, {voided} voided");
    assert_books_balance(&app).await;
}
