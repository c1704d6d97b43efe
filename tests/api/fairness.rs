//! The fairness review: fills that land just ahead of the events that
//! favour them put an account on it; honest fills do not.

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn review(app: &TestApp, query: &str) -> Value {
    let response = app
        .get(
            &format!("/api/v1/admin/fairness/suspects{query}"),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

#[tokio::test]
async fn fills_just_ahead_of_the_events_that_favour_them_put_an_account_on_review() {
    let app = spawn_app().await;
    let courtsider = app.register("courtsider").await;
    let honest = app.register("honest").await;
    let (a, b, c) = (
        app.create_player(1_000).await,
        app.create_player(1_000).await,
        app.create_player(1_000).await,
    );
    // Long before anything happens: both hold some of each.
    for (n, player) in [a, b, c].into_iter().enumerate() {
        app.trade(&honest, "buy", player, 1, &format!("h{n}")).await;
    }
    app.trade(&courtsider, "buy", c, 2, "c0").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // At the ground: goals for A and B, a red card for C. The courtsider
    // buys A and B and sells C before the feed delivers any of it.
    let occurred = Utc::now() - chrono::Duration::milliseconds(500);
    app.trade(&courtsider, "buy", a, 2, "c1").await;
    app.trade(&courtsider, "buy", b, 2, "c2").await;
    app.trade(&courtsider, "sell", c, 2, "c3").await;
    for (player, kind) in [(a, "goal"), (b, "goal"), (c, "red_card")] {
        let response = app
            .post_json(
                "/api/v1/admin/feed/events",
                Some(ADMIN_TOKEN),
                &json!({"event_id": format!("ev-{player}"), "match_id": "m1", "player_id": player,
                        "kind": kind, "minute": 12,
                        "occurred_at": occurred.to_rfc3339_opts(SecondsFormat::Millis, true)}),
            )
            .await;
        assert!(response.status().is_success(), "{}", response.status());
    }

    // A lag of 1 s: fills from 1.5 s before the courtsider's first.
    let found = review(&app, "?lag_seconds=1&min_fills=1").await;
    assert_eq!(found["lag_seconds"], 1);
    assert_eq!(found["fills"], 7, "{found}");
    assert_eq!(found["ahead"], 3, "{found}");
    let suspects = found["suspects"].as_array().expect("suspects");
    assert_eq!(suspects.len(), 1, "the honest account is listed: {found}");
    let suspect = &suspects[0];
    assert_eq!(suspect["username"], "courtsider");
    assert_eq!(suspect["fills"], 4);
    assert_eq!(suspect["ahead"], 3);
    assert!(suspect["score"].as_f64().expect("score") > 1.0, "{suspect}");
    let evidence = suspect["evidence"].as_array().expect("evidence");
    let mut seen: Vec<(i64, &str, &str)> = evidence
        .iter()
        .map(|e| {
            assert!(e["gain_cents"].as_i64().expect("gain") > 0, "{e}");
            (
                e["player_id"].as_i64().expect("player"),
                e["side"].as_str().expect("side"),
                e["kind"].as_str().expect("kind"),
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![
        (a, "buy", "goal"),
        (b, "buy", "goal"),
        (c, "sell", "red_card"),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    let edge: i64 = evidence
        .iter()
        .filter_map(|e| e["gain_cents"].as_i64())
        .sum();
    assert_eq!(suspect["edge_cents"], edge);

    // With a wide lag the honest fills count too, and so weigh less.
    let wide = review(&app, "?lag_seconds=600&min_fills=1").await;
    assert_eq!(wide["ahead"], 5, "{wide}");
    // Too few fills to judge: nobody is listed.
    let strict = review(&app, "?lag_seconds=1&min_fills=5").await;
    assert_eq!(strict["suspects"], json!([]));
    assert_eq!(strict["ahead"], 3);
}

#[tokio::test]
async fn the_review_refuses_bad_parameters_and_answers_an_empty_market() {
    let app = spawn_app().await;
    let empty = review(&app, "").await;
    assert_eq!(empty["fills"], 0);
    assert_eq!(empty["base_rate"], 0.0);
    assert_eq!(empty["lag_seconds"], 40);
    assert_eq!(empty["suspects"], json!([]));
    for (query, status) in [
        ("?lag_seconds=-1", StatusCode::UNPROCESSABLE_ENTITY),
        ("?lag_seconds=x", StatusCode::BAD_REQUEST),
        ("?min_fills=0", StatusCode::UNPROCESSABLE_ENTITY),
        ("?limit=0", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let response = app
            .get(
                &format!("/api/v1/admin/fairness/suspects{query}"),
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(response.status(), status, "{query}");
    }
}
