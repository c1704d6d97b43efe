//! Malformed and hostile input: always a 4xx JSON error, never a change.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// Everything a request could have changed.
async fn books(app: &TestApp, token: &str) -> (Value, Value, Value, Value) {
    let orders: Value = app
        .get("/api/v1/orders", Some(token))
        .await
        .json()
        .await
        .unwrap();
    let players: Value = app.players().await;
    (app.audit().await, app.me(token).await, orders, players)
}

async fn raw_post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .header("Idempotency-Key", "hostile")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn malformed_json_returns_400_on_every_body_endpoint() {
    let app = spawn_app().await;
    let user = app.register("victim").await;
    let before = books(&app, &user.token).await;
    for path in [
        "/api/v1/orders",
        "/api/v1/auth/register",
        "/api/v1/auth/login",
    ] {
        for body in ["{", "", "{\"player_id\": 1,}", "nul", "\u{0}"] {
            let response = raw_post(
                &app,
                path,
                Some(&user.token),
                Some("application/json"),
                body.as_bytes().to_vec(),
            )
            .await;
            assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
        }
    }
    for path in ["/api/v1/admin/players", "/api/v1/admin/users/bulk"] {
        let response = raw_post(
            &app,
            path,
            Some(ADMIN_TOKEN),
            Some("application/json"),
            b"[1,".to_vec(),
        )
        .await;
        assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    }
    assert_eq!(books(&app, &user.token).await, before);
}

#[tokio::test]
async fn wrong_types_return_422_and_change_nothing() {
    let app = spawn_app().await;
    let user = app.register("victim2").await;
    let player = app.create_player(1_000).await;
    let before = books(&app, &user.token).await;
    for body in [
        json!(null),
        json!([]),
        json!("buy"),
        json!({"player_id": "1", "side": "buy", "quantity": 1}),
        json!({"player_id": player, "side": 1, "quantity": 1}),
        json!({"player_id": player, "side": "buy", "quantity": true}),
        json!({"player_id": player, "side": "buy", "quantity": 1, "limit_price_cents": "1"}),
        json!({"player_id": player, "side": "buy", "quantity": 9_223_372_036_854_775_807i64}),
        json!({"player_id": player, "side": "buy", "quantity": -9_223_372_036_854_775_807i64}),
        json!({"player_id": 18_446_744_073_709_551_615u64, "side": "buy", "quantity": 1}),
        json!({"player_id": player, "side": "BUY", "quantity": 1}),
    ] {
        let response = app.order(&user.token, "typed", &body).await;
        assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    }
    for body in [
        json!({"username": 5, "password": PASSWORD}),
        json!({"username": "abc"}),
    ] {
        let response = app.post_json("/api/v1/auth/register", None, &body).await;
        assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    }
    assert_eq!(books(&app, &user.token).await, before);
}

#[tokio::test]
async fn a_one_mebibyte_body_returns_413() {
    let app = spawn_app().await;
    let user = app.register("bigbody").await;
    let before = books(&app, &user.token).await;
    let padding = "x".repeat(1024 * 1024);
    let body =
        format!("{{\"player_id\": 1, \"side\": \"buy\", \"quantity\": 1, \"pad\": \"{padding}\"}}");
    for path in ["/api/v1/orders", "/api/v1/auth/register"] {
        let response = raw_post(
            &app,
            path,
            Some(&user.token),
            Some("application/json"),
            body.clone().into_bytes(),
        )
        .await;
        assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    }
    // Also when the length is not declared up front (chunked).
    let stream =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 8 * 1024])));
    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "chunked")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(books(&app, &user.token).await, before);
}

#[tokio::test]
async fn a_body_that_is_not_json_returns_415() {
    let app = spawn_app().await;
    let user = app.register("formpost").await;
    let before = books(&app, &user.token).await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let response = raw_post(
            &app,
            "/api/v1/orders",
            Some(&user.token),
            content_type,
            b"{\"player_id\":1,\"side\":\"buy\",\"quantity\":1}".to_vec(),
        )
        .await;
        assert_error(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
    // A charset parameter is still JSON.
    let player = app.create_player(100).await;
    let response = raw_post(
        &app,
        "/api/v1/orders",
        Some(&user.token),
        Some("application/json; charset=utf-8"),
        format!("{{\"player_id\":{player},\"side\":\"buy\",\"quantity\":1}}").into_bytes(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let _ = before;
}

#[tokio::test]
async fn sql_looking_usernames_are_refused_or_stored_verbatim() {
    let app = spawn_app().await;
    for username in [
        "' OR 1=1 --",
        "admin'--",
        "x; DROP TABLE users",
        "\"; select 1",
    ] {
        let response = app
            .post_json(
                "/api/v1/auth/register",
                None,
                &json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
        let response = app
            .post_json(
                "/api/v1/auth/login",
                None,
                &json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
    // Names and teams are free text: stored verbatim, never interpreted.
    let name = "Robert'); DROP TABLE players;--";
    let response = app
        .post_json(
            "/api/v1/admin/players",
            Some(ADMIN_TOKEN),
            &json!({"name": name, "team": "Bobby Tables FC", "position": "GK", "price_cents": 100}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let players: Value = app.players().await;
    assert_eq!(players[0]["name"], name);
    assert_eq!(app.audit().await["users"], 0);
}

#[tokio::test]
async fn tampered_tokens_are_401_and_change_nothing() {
    let app = spawn_app().await;
    let user = app.register("tamper").await;
    let player = app.create_player(100).await;
    let before = books(&app, &user.token).await;
    let mut forged = Vec::new();
    for i in [0, 10, 20, 40, user.token.len() - 1] {
        let mut bytes = user.token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        forged.push(String::from_utf8(bytes).unwrap());
    }
    forged.push(format!("{}x", user.token));
    forged.push(user.token[..user.token.len() - 4].to_string());
    forged.push("A".repeat(10_000));
    for token in &forged {
        let response = app
            .order(
                token,
                "forged",
                &json!({"player_id": player, "side": "buy", "quantity": 1}),
            )
            .await;
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    assert_eq!(books(&app, &user.token).await, before);
}

#[tokio::test]
async fn a_user_token_on_admin_routes_is_403_and_changes_nothing() {
    let app = spawn_app().await;
    let user = app.register("climber").await;
    let before = books(&app, &user.token).await;
    let response = app
        .post_json(
            "/api/v1/admin/users/bulk",
            Some(&user.token),
            &json!({"count": 5, "prefix": "sock", "balance_cents": 1_000_000_000}),
        )
        .await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(books(&app, &user.token).await, before);
}

#[tokio::test]
async fn oversized_headers_or_uris_are_refused_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let user = app.register("headers").await;
    let player = app.create_player(1_000).await;
    let before = books(&app, &user.token).await;
    let order = json!({"player_id": player, "side": "buy", "quantity": 1});
    // One 100 KiB header (actix alone would take it).
    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "big-header")
        .header("X-Padding", "x".repeat(100 * 1024))
        .json(&order)
        .send()
        .await
        .expect("answered");
    assert_error(
        response,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;
    // Many small headers adding up past 16 KiB.
    let mut request = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "many-headers")
        .json(&order);
    for n in 0..80 {
        request = request.header(format!("x-h{n}"), "v".repeat(250));
    }
    let response = request.send().await.expect("answered");
    assert_error(
        response,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;
    // A 20 KiB query string.
    let long = format!("/api/v1/orders?limit=1&pad={}", "p".repeat(20 * 1024));
    assert_error(
        app.get(&long, Some(&user.token)).await,
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
    )
    .await;
    // Past actix's own header count limit: refused before any handler.
    // actix's parser answers and then drops the connection, so this request
    // gets a client of its own: a pooled client could otherwise reuse the
    // dropped connection for the next request and see it cut.
    let one_shot = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut request = one_shot
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&user.token)
        .header("Idempotency-Key", "header-count")
        .json(&order);
    for n in 0..200 {
        request = request.header(format!("x-c{n}"), "v");
    }
    if let Ok(response) = request.send().await {
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
    assert_eq!(books(&app, &user.token).await, before);
    // And an ordinary order still goes through.
    let response = app.order(&user.token, "after-headers", &order).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}
