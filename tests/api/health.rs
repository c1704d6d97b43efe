use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn healthz_answers_200() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn readyz_reports_postgres_and_redis_up() {
    let app = spawn_app().await;
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["postgres"], true);
    assert_eq!(body["redis"], true);
}

#[tokio::test]
async fn readyz_answers_503_when_redis_is_unreachable() {
    let mut settings = test_settings().await;
    // Nothing listens on port 1.
    settings.redis.url = matchday::config::Secret::new("redis://127.0.0.1:1");
    let app = spawn_app_with(settings).await;
    let response = app.get("/readyz", None).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["postgres"], true);
    assert_eq!(body["redis"], false);
}

#[tokio::test]
async fn metrics_exposes_request_and_order_counters() {
    let app = spawn_app().await;
    app.get("/healthz", None).await;
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(text.contains("matchday_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/healthz\""), "{text}");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    assert_error(
        app.get("/nope", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let response = app
        .client
        .delete(app.url("/api/v1/players"))
        .send()
        .await
        .unwrap();
    assert_error(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

/// A replica started before Redis (down, or still loading its data)
/// connects once Redis is up, without a restart: its first connection
/// attempt failing does not end its connection task.
#[tokio::test]
async fn a_replica_started_before_redis_connects_when_redis_comes_up() {
    let mut redis = RedisServer::reserved();
    let mut settings = test_settings().await;
    settings.redis.url = matchday::config::Secret::new(redis.url());
    let app = spawn_app_with(settings).await;
    assert_eq!(
        app.get("/readyz", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    redis.start_now().await;
    // Ready, and the leaderboard revalued: the leader's revaluation writes
    // to Redis on a connection of its own, and the board is read from it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    for path in ["/readyz", "/api/v1/leaderboard"] {
        loop {
            let response = app.get(path, None).await;
            if response.status() == StatusCode::OK {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} not answering 200 long after Redis came up: {}",
                response.text().await.unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}
