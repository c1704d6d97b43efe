//! The signed feed webhook: a provider pushes events with an HMAC of the
//! body instead of the admin token.

use hmac::{Hmac, Mac};
use matchday::config::Secret;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::*;

const SECRET: &str = "feed-provider-shared-secret-0123456789";

/// Computed here, not with the server's own signer, so a mistake in one is
/// not repeated in the other.
fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={hex}")
}

async fn send(app: &TestApp, body: &[u8], header: Option<String>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/api/v1/feed/webhook"))
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(header) = header {
        request = request.header("Matchday-Signature", header);
    }
    request.send().await.expect("sent")
}

async fn webhook_app() -> TestApp {
    let mut settings = test_settings().await;
    settings.feed.webhook_secret = Some(Secret::new(SECRET));
    spawn_app_with(settings).await
}

#[tokio::test]
async fn a_signed_event_is_applied_once_and_a_replay_is_a_duplicate() {
    let app = webhook_app().await;
    let player = app.create_player(1_000).await;
    let body = json!({"event_id": "hook-1", "match_id": "m", "player_id": player,
                      "kind": "goal", "occurred_at": "2026-11-22T15:04:05.000Z"})
    .to_string();
    let now = chrono::Utc::now().timestamp();
    let header = signature(SECRET, now, body.as_bytes());

    let response = send(&app, body.as_bytes(), Some(header.clone())).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let applied: Value = response.json().await.expect("json");
    assert_eq!(applied["applied"], true);
    assert_eq!(app.player(player).await["epoch"], 1);

    // The very same request again (a replay within the window): nothing new.
    let response = send(&app, body.as_bytes(), Some(header)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let replayed: Value = response.json().await.expect("json");
    assert_eq!(replayed["duplicate"], true);
    assert_eq!(app.player(player).await["epoch"], 1);
}

#[tokio::test]
async fn unsigned_tampered_stale_or_wrongly_keyed_pushes_are_401_and_change_nothing() {
    let app = webhook_app().await;
    let player = app.create_player(1_000).await;
    let event = |id: &str| {
        json!({"event_id": id, "match_id": "m", "player_id": player,
               "kind": "goal", "occurred_at": "2026-11-22T15:04:05.000Z"})
        .to_string()
    };
    let now = chrono::Utc::now().timestamp();
    let body = event("bad-1");
    let tampered = event("bad-2");
    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        ("no signature", body.clone().into_bytes(), None),
        (
            "garbage header",
            body.clone().into_bytes(),
            Some("sig".into()),
        ),
        (
            "another body's signature",
            tampered.into_bytes(),
            Some(signature(SECRET, now, body.as_bytes())),
        ),
        (
            "ten minutes old",
            body.clone().into_bytes(),
            Some(signature(SECRET, now - 600, body.as_bytes())),
        ),
        (
            "another secret",
            body.clone().into_bytes(),
            Some(signature(
                "not-the-secret-not-the-secret-0000",
                now,
                body.as_bytes(),
            )),
        ),
        (
            "the admin token as the signature",
            body.clone().into_bytes(),
            Some(format!("t={now},v1={ADMIN_TOKEN}")),
        ),
    ];
    for (case, body, header) in cases {
        let response = send(&app, &body, header).await;
        let error = assert_error(response, StatusCode::UNAUTHORIZED, "invalid_signature").await;
        assert!(error["error"]["message"].is_string(), "{case}");
    }
    // A signed body that is not an event is still validated like a push.
    let junk = b"{\"event_id\": 5}".to_vec();
    let response = send(&app, &junk, Some(signature(SECRET, now, &junk))).await;
    assert_error(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input").await;
    let junk = b"not json".to_vec();
    let response = send(&app, &junk, Some(signature(SECRET, now, &junk))).await;
    assert_error(response, StatusCode::BAD_REQUEST, "bad_request").await;
    assert_eq!(app.player(player).await["epoch"], 0);
}

#[tokio::test]
async fn without_a_configured_secret_the_webhook_is_403() {
    let app = spawn_app().await;
    let player = app.create_player(1_000).await;
    let body = json!({"event_id": "off-1", "match_id": "m", "player_id": player,
                      "kind": "goal", "occurred_at": "2026-11-22T15:04:05.000Z"})
    .to_string();
    let header = signature(SECRET, chrono::Utc::now().timestamp(), body.as_bytes());
    let response = send(&app, body.as_bytes(), Some(header)).await;
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(app.player(player).await["epoch"], 0);
}
