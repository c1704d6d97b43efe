use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn register_returns_201_with_a_token_and_the_starting_balance() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"username": "Alice_01", "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["username"], "alice_01");
    assert_eq!(body["balance_cents"], 1_000_000);
    let me = app.me(body["token"].as_str().unwrap()).await;
    assert_eq!(
        me,
        json!({"user_id": body["user_id"], "username": "alice_01",
               "balance_cents": 1_000_000, "held_cents": 0})
    );
    // The opening balance is a ledger entry pair, so the books balance.
    assert_eq!(app.audit().await["ok"], true);
}

#[tokio::test]
async fn register_returns_409_when_the_username_is_taken_in_any_case() {
    let app = spawn_app().await;
    app.register("bob").await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"username": "BOB", "password": PASSWORD}),
        )
        .await;
    assert_error(response, StatusCode::CONFLICT, "username_taken").await;
    assert_eq!(app.audit().await["users"], 1);
}

#[tokio::test]
async fn register_returns_422_for_bad_usernames_and_passwords() {
    let app = spawn_app().await;
    for (username, password) in [
        ("ab", PASSWORD),
        ("x".repeat(33).as_str(), PASSWORD),
        ("bad name", PASSWORD),
        ("robert'); drop table users;--", PASSWORD),
        ("fine_name", "short"),
        ("fine_name", &"p".repeat(129)),
    ] {
        let response = app
            .post_json(
                "/api/v1/auth/register",
                None,
                &json!({"username": username, "password": password}),
            )
            .await;
        assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    }
    assert_eq!(app.audit().await["users"], 0);
}

#[tokio::test]
async fn login_returns_a_working_token_for_the_right_password() {
    let app = spawn_app().await;
    let user = app.register("carol").await;
    let response = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"username": "Carol", "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user_id"], user.id);
    assert_eq!(body["username"], "carol");
    assert_eq!(
        app.me(body["token"].as_str().unwrap()).await["user_id"],
        user.id
    );
}

#[tokio::test]
async fn login_returns_401_for_a_wrong_password_an_unknown_user_or_a_bulk_user() {
    let app = spawn_app().await;
    app.register("dave").await;
    app.bulk_users("bulk", 1, 100).await;
    for (username, password) in [
        ("dave", "wrong password"),
        ("nobody_here", PASSWORD),
        ("bulk1", PASSWORD),
        ("x", PASSWORD),
    ] {
        let response = app
            .post_json(
                "/api/v1/auth/login",
                None,
                &json!({"username": username, "password": password}),
            )
            .await;
        assert_error(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
}

#[tokio::test]
async fn logout_revokes_the_token_at_once_but_not_other_tokens() {
    let app = spawn_app().await;
    let user = app.register("erin").await;
    let second: Value = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"username": "erin", "password": PASSWORD}),
        )
        .await
        .json()
        .await
        .unwrap();
    let second = second["token"].as_str().unwrap().to_string();
    let response = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_error(
        app.get("/api/v1/me", Some(&user.token)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_eq!(app.me(&second).await["username"], "erin");
}

#[tokio::test]
async fn logout_reaches_another_replica_sharing_the_database() {
    // Two app instances on one database and Redis prefix behave as replicas.
    let settings = test_settings().await;
    let first = spawn_app_with(settings.clone()).await;
    let second = spawn_app_with(settings).await;
    let user = first.register("frank").await;
    assert_eq!(second.me(&user.token).await["user_id"], user.id);
    let response = first
        .client
        .post(first.url("/api/v1/auth/logout"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // Pub/sub delivery takes a moment; within a second it must be refused.
    let mut refused = false;
    for _ in 0..50 {
        if second.get("/api/v1/me", Some(&user.token)).await.status() == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "the other replica still accepts a revoked token");
}

#[tokio::test]
async fn me_returns_401_without_a_valid_user_token() {
    let app = spawn_app().await;
    let user = app.register("gina").await;
    let mut tampered = user.token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for token in [
        None,
        Some("garbage"),
        Some(tampered.as_str()),
        Some(ADMIN_TOKEN),
    ] {
        assert_error(
            app.get("/api/v1/me", token).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let response = app
        .client
        .get(app.url("/api/v1/me"))
        .header("Authorization", format!("Basic {}", user.token))
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn bulk_users_creates_lower_cased_users_with_the_given_balance() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/api/v1/admin/users/bulk",
            Some(ADMIN_TOKEN),
            &json!({"count": 3, "prefix": "Load_", "balance_cents": 5_000}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    let users = body["users"].as_array().unwrap();
    let names: Vec<&str> = users
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["load_1", "load_2", "load_3"]);
    for user in users {
        let me = app.me(user["token"].as_str().unwrap()).await;
        assert_eq!(me["balance_cents"], 5_000);
        assert_eq!(me["user_id"], user["user_id"]);
    }
    let audit = app.audit().await;
    assert_eq!(audit["cash_cents_total"], 15_000);
    assert_eq!(audit["ok"], true);
}

#[tokio::test]
async fn bulk_users_creates_nothing_when_any_name_collides() {
    let app = spawn_app().await;
    app.register("team7").await;
    let response = app
        .post_json(
            "/api/v1/admin/users/bulk",
            Some(ADMIN_TOKEN),
            &json!({"count": 10, "prefix": "team"}),
        )
        .await;
    assert_error(response, StatusCode::CONFLICT, "username_taken").await;
    assert_eq!(app.audit().await["users"], 1);
}

#[tokio::test]
async fn bulk_users_returns_422_for_counts_balances_and_prefixes_out_of_range() {
    let app = spawn_app().await;
    for body in [
        json!({"count": 0, "prefix": "ok_"}),
        json!({"count": 10_001, "prefix": "ok_"}),
        json!({"count": 1, "prefix": "ok_", "balance_cents": -1}),
        json!({"count": 1, "prefix": "no spaces"}),
        json!({"count": 1, "prefix": "x".repeat(40)}),
        json!({"count": "1", "prefix": "ok_"}),
    ] {
        let response = app
            .post_json("/api/v1/admin/users/bulk", Some(ADMIN_TOKEN), &body)
            .await;
        assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    }
    assert_eq!(app.audit().await["users"], 0);
}

#[tokio::test]
async fn admin_routes_answer_401_without_a_token_and_403_to_users() {
    let app = spawn_app().await;
    let user = app.register("mallory").await;
    let routes: [(&str, Value); 2] = [
        (
            "/api/v1/admin/users/bulk",
            json!({"count": 1, "prefix": "evil"}),
        ),
        (
            "/api/v1/admin/players",
            json!({"name": "X", "team": "Y", "position": "Z", "price_cents": 100}),
        ),
    ];
    for (path, body) in &routes {
        assert_error(
            app.post_json(path, None, body).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        assert_error(
            app.post_json(path, Some("not-a-token"), body).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        assert_error(
            app.post_json(path, Some(&user.token), body).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
    }
    assert_error(
        app.get("/api/v1/admin/audit", Some(&user.token)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(app.audit().await["users"], 1);
    let players: Value = app.players().await;
    assert_eq!(players, json!([]));
}

#[tokio::test]
async fn the_admin_api_is_disabled_without_a_configured_token() {
    let mut settings = test_settings().await;
    settings.admin.token = None;
    let app = spawn_app_with(settings).await;
    let user = app.register("nadia").await;
    // The old admin token is now just an invalid token.
    assert_error(
        app.get("/api/v1/admin/audit", Some(ADMIN_TOKEN)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert_error(
        app.get("/api/v1/admin/audit", Some(&user.token)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_user_past_their_rate_limit_gets_429_with_retry_after_and_others_do_not() {
    let mut settings = test_settings().await;
    settings.limits.user_per_sec = 2;
    settings.limits.user_burst = 5;
    let app = spawn_app_with(settings).await;
    let users = app.bulk_users("limited", 2, 1_000).await;
    for _ in 0..5 {
        assert_eq!(
            app.get("/api/v1/me", Some(&users[0].token)).await.status(),
            StatusCode::OK
        );
    }
    let response = app.get("/api/v1/me", Some(&users[0].token)).await;
    assert!(response.headers().contains_key("retry-after"));
    let body = assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let wait = body["error"]["retry_after_ms"].as_i64().unwrap();
    assert!((1..=500).contains(&wait), "{wait}");
    assert_eq!(
        app.get("/api/v1/me", Some(&users[1].token)).await.status(),
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(wait as u64 + 20)).await;
    assert_eq!(
        app.get("/api/v1/me", Some(&users[0].token)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn registrations_and_logins_are_limited_per_client_ip() {
    let mut settings = test_settings().await;
    settings.limits.ip_per_sec = 1;
    settings.limits.ip_burst = 3;
    let app = spawn_app_with(settings).await;
    for n in 0..3 {
        app.register(&format!("ipuser{n}")).await;
    }
    // Registrations hash passwords, so on a busy machine they can take long
    // enough to earn a token back; several logins at once cannot all fit.
    let body = json!({"username": "ipuser0", "password": PASSWORD});
    let logins = (0..6).map(|_| app.post_json("/api/v1/auth/login", None, &body));
    let mut limited = None;
    for response in futures_util::future::join_all(logins).await {
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
        }
    }
    let response = limited.expect("at least one login past the burst is limited");
    assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(app.audit().await["users"], 3);
}

#[tokio::test]
async fn an_expired_token_is_401_even_though_its_signature_is_good() {
    let mut settings = test_settings().await;
    settings.auth.token_ttl_seconds = 1;
    let app = spawn_app_with(settings).await;
    let user = app.register("fleeting").await;
    assert_eq!(app.me(&user.token).await["username"], "fleeting");
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    for path in ["/api/v1/me", "/api/v1/portfolio", "/api/v1/orders"] {
        assert_error(
            app.get(path, Some(&user.token)).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    // A socket upgrade with it is refused too.
    let url = format!(
        "{}/ws?token={}",
        app.address.replace("http://", "ws://"),
        user.token
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}
