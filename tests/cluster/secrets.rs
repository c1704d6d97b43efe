//! Nothing secret reaches the logs: a replica logging at `debug` (every
//! crate) serves registrations, logins right and wrong, trades, sockets,
//! logout, admin calls and webhook pushes, and its log is then searched for
//! every password, token and secret it saw.

use std::time::Duration;

use serde_json::json;

use crate::cluster::*;
use crate::helpers::*;

const PASSWORD_SEEN: &str = "hunter2-but-longer-and-secret";
const WRONG_PASSWORD: &str = "not-the-password-at-all-77";
const TOKEN_SECRET: &str = "token-signing-secret-0123456789abcdef";
const WEBHOOK_SECRET: &str = "webhook-shared-secret-0123456789abcdef";
const DATABASE_PASSWORD: &str = "database-password-in-the-url";
const WRONG_ADMIN_TOKEN: &str = "an-admin-token-guess-12345";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_password_token_or_secret_appears_in_a_debug_log() {
    let settings = test_settings().await;
    // Postgres trusts local connections, so the password is carried, not checked.
    let database_url = settings.database.url.expose().replacen(
        "matchday@",
        &format!("matchday:{DATABASE_PASSWORD}@"),
        1,
    );
    assert!(database_url.contains(DATABASE_PASSWORD));
    let cluster = Cluster::start_on(
        1,
        &database_url,
        settings.redis.url.expose(),
        &settings.redis.key_prefix,
        &[
            ("MATCHDAY__TELEMETRY__FILTER", "debug"),
            ("MATCHDAY__AUTH__TOKEN_SECRET", TOKEN_SECRET),
            ("MATCHDAY__FEED__WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    )
    .await;
    let app = cluster.app(0);
    let player = app.create_player(1_000).await;

    let credentials = json!({"username": "secretive", "password": PASSWORD_SEEN});
    let registered: serde_json::Value = app
        .post_json("/api/v1/auth/register", None, &credentials)
        .await
        .json()
        .await
        .expect("register");
    let first_token = registered["token"].as_str().expect("token").to_string();
    let login: serde_json::Value = app
        .post_json("/api/v1/auth/login", None, &credentials)
        .await
        .json()
        .await
        .expect("login");
    let token = login["token"].as_str().expect("token").to_string();
    let wrong = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"username": "secretive", "password": WRONG_PASSWORD}),
        )
        .await;
    assert_eq!(wrong.status().as_u16(), 401);
    // A registration refused for its password carries it too.
    let refused = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"username": "x", "password": WRONG_PASSWORD}),
        )
        .await;
    assert_eq!(refused.status().as_u16(), 422);

    let order = app
        .order(
            &token,
            "secret-order",
            &json!({"player_id": player, "side": "buy", "quantity": 1}),
        )
        .await;
    assert_eq!(order.status().as_u16(), 201);
    let mut ws = app.ws(Some(&token)).await;
    ws.send(json!({"op": "ping"})).await;
    ws.expect("pong", Duration::from_secs(5)).await;
    drop(ws);
    let guess = app
        .get("/api/v1/admin/audit", Some(WRONG_ADMIN_TOKEN))
        .await;
    assert_eq!(guess.status().as_u16(), 401);
    assert_eq!(app.audit().await["ok"], true);
    let hook = app
        .client
        .post(app.url("/api/v1/feed/webhook"))
        .header("Content-Type", "application/json")
        .header("Matchday-Signature", format!("t=1,v1={}", "ab".repeat(32)))
        .body("{}")
        .send()
        .await
        .expect("webhook");
    assert_eq!(hook.status().as_u16(), 401);
    let logout = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&first_token)
        .send()
        .await
        .expect("logout");
    assert_eq!(logout.status().as_u16(), 204);
    assert_eq!(
        app.get("/api/v1/me", Some(&first_token))
            .await
            .status()
            .as_u16(),
        401
    );
    // Let the last lines reach the file.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let log = std::fs::read_to_string(cluster.log_dir().join("replica-0.log")).expect("log");
    // The requests themselves are in it, so it is a log worth searching.
    assert!(
        log.contains("/api/v1/auth/login") && log.contains("/api/v1/orders"),
        "the debug log does not show the requests:\n{log}"
    );
    // The token's signature part is enough to replay it; look for each whole
    // token and its last 20 characters.
    let tail = |t: &str| t[t.len().saturating_sub(20)..].to_string();
    let secrets = [
        ("a password", PASSWORD_SEEN.to_string()),
        ("a wrong password", WRONG_PASSWORD.to_string()),
        ("the token secret", TOKEN_SECRET.to_string()),
        ("the webhook secret", WEBHOOK_SECRET.to_string()),
        ("the database password", DATABASE_PASSWORD.to_string()),
        ("the admin token", ADMIN_TOKEN.to_string()),
        ("a guessed admin token", WRONG_ADMIN_TOKEN.to_string()),
        ("a user token", tail(&token)),
        ("a revoked token", tail(&first_token)),
    ];
    for (what, secret) in secrets {
        let line = log.lines().find(|line| line.contains(&secret));
        assert!(line.is_none(), "{what} is in the log: {line:?}");
    }
}
