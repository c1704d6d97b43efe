use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_repeat_with_the_same_key_and_body_replays_without_executing() {
    let app = spawn_app().await;
    let user = app.register("replayer").await;
    let player = app.create_player(1_000).await;
    let body = json!({"player_id": player, "side": "buy", "quantity": 2});
    let first = app.order(&user.token, "same-key", &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = first.text().await.unwrap();
    // Same JSON with other formatting and key order is the same request.
    let reordered = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "same-key")
        .header("content-type", "application/json")
        .body(format!(
            "{{ \"quantity\": 2, \"side\": \"buy\", \"player_id\": {player} }}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(reordered.status(), StatusCode::CREATED);
    assert_eq!(reordered.text().await.unwrap(), first);
    assert_eq!(app.me(&user.token).await["balance_cents"], 998_000);
    let orders: Value = app.orders(&user.token).await;
    assert_eq!(orders.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_returns_422() {
    let app = spawn_app().await;
    let user = app.register("reuser").await;
    let player = app.create_player(1_000).await;
    app.order(
        &user.token,
        "k",
        &json!({"player_id": player, "side": "buy", "quantity": 1}),
    )
    .await;
    let response = app
        .order(
            &user.token,
            "k",
            &json!({"player_id": player, "side": "buy", "quantity": 2}),
        )
        .await;
    assert_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.me(&user.token).await["balance_cents"], 999_000);
}

#[tokio::test]
async fn keys_are_scoped_per_user() {
    let app = spawn_app().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let player = app.create_player(1_000).await;
    let body = json!({"player_id": player, "side": "buy", "quantity": 1});
    assert_eq!(
        app.order(&alice.token, "shared", &body).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.order(&bob.token, "shared", &body).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.me(&bob.token).await["balance_cents"], 999_000);
}

#[tokio::test]
async fn a_business_rejection_is_replayed_even_after_the_cause_is_gone() {
    let app = spawn_app().await;
    let user = app.register("stubborn").await;
    let player = app.create_player(1_000).await;
    let sell = json!({"player_id": player, "side": "sell", "quantity": 1});
    assert_error(
        app.order(&user.token, "sell-1", &sell).await,
        StatusCode::CONFLICT,
        "insufficient_holdings",
    )
    .await;
    app.order(
        &user.token,
        "buy-1",
        &json!({"player_id": player, "side": "buy", "quantity": 1}),
    )
    .await;
    // The user now holds a share, but this key's answer is final.
    assert_error(
        app.order(&user.token, "sell-1", &sell).await,
        StatusCode::CONFLICT,
        "insufficient_holdings",
    )
    .await;
    assert_eq!(
        app.portfolio(&user.token).await["holdings"][0]["quantity"],
        1
    );
    // A genuinely new attempt needs a new key.
    assert_eq!(
        app.order(&user.token, "sell-2", &sell).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_validation_failure_is_not_remembered() {
    let app = spawn_app().await;
    let user = app.register("fixer").await;
    let player = app.create_player(1_000).await;
    let bad = json!({"player_id": player, "side": "buy", "quantity": 0});
    assert_error(
        app.order(&user.token, "k", &bad).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_input",
    )
    .await;
    let good = json!({"player_id": player, "side": "buy", "quantity": 1});
    assert_eq!(
        app.order(&user.token, "k", &good).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn missing_and_malformed_keys_return_400() {
    let app = spawn_app().await;
    let user = app.register("keyless").await;
    let player = app.create_player(1_000).await;
    let body = json!({"player_id": player, "side": "buy", "quantity": 1});
    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&user.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "idempotency_key_required",
    )
    .await;
    for key in ["", "has space", &"k".repeat(65)] {
        let response = app.order(&user.token, key, &body).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_idempotency_key").await;
    }
    assert_eq!(app.me(&user.token).await["balance_cents"], 1_000_000);
}

#[tokio::test]
async fn a_key_is_remembered_in_postgres_with_its_outcome() {
    let app = spawn_app().await;
    let user = app.register("durable").await;
    let player = app.create_player(1_000).await;
    app.order(
        &user.token,
        "kept",
        &json!({"player_id": player, "side": "buy", "quantity": 1}),
    )
    .await;
    let rows = app
        .sql(
            "SELECT k.key, k.endpoint, (k.outcome ->> 'fill_of')::bigint = o.id
               FROM idempotency_keys k, orders o",
        )
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, &str>(0), "kept");
    assert_eq!(rows[0].get::<_, &str>(1), "POST /api/v1/orders");
    assert!(
        rows[0].get::<_, bool>(2),
        "the fill is stored by its order id"
    );
}
