use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn an_admin_creates_a_player_anyone_can_read() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/api/v1/admin/players",
            Some(ADMIN_TOKEN),
            &json!({"name": "Kai Havertz", "team": "Arsenal", "position": "FW", "price_cents": 1250}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["name"], "Kai Havertz");
    assert_eq!(created["price_cents"], 1250);
    assert_eq!(created["epoch"], 0);
    assert_eq!(created["locked_until"], Value::Null);
    let id = created["id"].as_i64().unwrap();

    let fetched: Value = app
        .get(&format!("/api/v1/players/{id}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created);
    let listed: Value = app.players().await;
    assert_eq!(listed, json!([created]));
}

#[tokio::test]
async fn get_player_returns_404_for_unknown_and_malformed_ids() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/players/999",
        "/api/v1/players/abc",
        "/api/v1/players/-1",
    ] {
        assert_error(
            app.get(path, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    assert_error(
        app.get("/api/v1/players/999/history", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn create_player_returns_422_for_invalid_fields() {
    let app = spawn_app().await;
    for body in [
        json!({"name": "", "team": "T", "position": "FW", "price_cents": 100}),
        json!({"name": "N", "team": "T", "position": "FW", "price_cents": 0}),
        json!({"name": "N", "team": "T", "position": "FW", "price_cents": -5}),
        json!({"name": "N", "team": "T", "position": "FW", "price_cents": 100_000_000_001i64}),
        json!({"name": "N".repeat(101), "team": "T", "position": "FW", "price_cents": 100}),
        json!({"name": "N", "team": "T", "position": "FW"}),
        json!({"name": "N", "team": "T", "position": "FW", "price_cents": 1.5}),
    ] {
        let response = app
            .post_json("/api/v1/admin/players", Some(ADMIN_TOKEN), &body)
            .await;
        assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    }
    let listed: Value = app.players().await;
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn history_starts_with_the_creation_price_and_checks_its_limit() {
    let app = spawn_app().await;
    let id = app.create_player(777).await;
    let path = format!("/api/v1/players/{id}/history");
    let points: Value = app.get(&path, None).await.json().await.unwrap();
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(points[0]["price_cents"], 777);
    assert!(points[0]["ts"].as_str().unwrap().ends_with('Z'));

    let clamped = app.get(&format!("{path}?limit=999999"), None).await;
    assert_eq!(clamped.status(), StatusCode::OK);
    assert_error(
        app.get(&format!("{path}?limit=abc"), None).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_error(
        app.get(&format!("{path}?limit=0"), None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    )
    .await;
}
