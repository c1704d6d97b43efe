//! The OpenAPI document: served as generated, covering every route and
//! only routes, with its reference page and WebSocket schemas.
//! (`scripts/schemathesis` holds the live server to it, request by request.)

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_documented_frame, documented_schema, spawn_app, TestApp};

/// Routes that serve the browser app, not the API: left out on purpose.
const NOT_API: [&str; 2] = ["/", "/assets/{version}/{name:.*}"];

/// `(METHOD, path)` of every operation in the served document.
fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

/// `(METHOD, path)` of every route `http::routes` registers, read from its
/// source: each `resource("…", [(M::<METHOD>, …), …])`,
/// under `/api/v1` once the scope opens.
fn registered() -> BTreeSet<(String, String)> {
    let source = include_str!("../../src/http/mod.rs");
    let body = source
        .split("pub fn routes(")
        .nth(1)
        .and_then(|rest| rest.split("\n}\n").next())
        .expect("routes() in src/http/mod.rs");
    let scope_at = body
        .find("web::scope(\"/api/v1\")")
        .expect("the /api/v1 scope");
    let mut routes = BTreeSet::new();
    // Each `resource(` whose first argument is a string literal, however
    // rustfmt wrapped it.
    let mut starts: Vec<usize> = body
        .match_indices("resource(")
        .map(|(at, _)| at)
        .filter(|at| body[at + "resource(".len()..].trim_start().starts_with('"'))
        .collect();
    starts.push(body.len());
    for pair in starts.windows(2) {
        let chunk = &body[pair[0]..pair[1]];
        let path = chunk["resource(".len()..]
            .trim_start()
            .trim_start_matches('"')
            .split('"')
            .next()
            .unwrap_or_default();
        if NOT_API.contains(&path) {
            continue;
        }
        let full = if pair[0] > scope_at {
            format!("/api/v1{path}")
        } else {
            path.to_string()
        };
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if chunk.contains(&format!("(M::{method},")) {
                routes.insert((method.to_string(), full.clone()));
            }
        }
    }
    routes
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1").replace("{purchase_id}", "1")
}

#[tokio::test]
async fn the_served_document_is_the_generated_one_and_names_exactly_the_routes() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let served: Value = response.json().await.expect("json");
    assert_eq!(&served, matchday::http::openapi::document());
    assert_eq!(served["openapi"], "3.1.0");

    let routes = registered();
    assert!(routes.len() >= 35, "parsed only {routes:?}");
    let documented = documented(&served);
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the document: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

#[tokio::test]
async fn every_documented_operation_answers_and_other_methods_are_405_with_allow() {
    let app = spawn_app().await;
    let document = matchday::http::openapi::document();
    let operations = documented(document);
    let paths: BTreeSet<&String> = operations.iter().map(|(_, path)| path).collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let response = app
                .client
                .request(method.clone(), app.url(&concrete(path)))
                .send()
                .await
                .expect("sent");
            let status = response.status();
            let allow = response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.text().await.unwrap_or_default();
            if operations.contains(&(method.to_string(), path.clone())) {
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}: {body}"
                );
                assert!(
                    !body.contains("no such route"),
                    "{method} {path} fell through to the fallback: {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}: {body}"
                );
                assert!(body.contains("method_not_allowed"), "{body}");
                let allowed: BTreeSet<String> = operations
                    .iter()
                    .filter(|(_, documented)| documented == path)
                    .map(|(method, _)| method.clone())
                    .collect();
                let named: BTreeSet<String> = allow
                    .unwrap_or_default()
                    .split(", ")
                    .map(str::to_string)
                    .collect();
                assert_eq!(named, allowed, "Allow of {method} {path}");
            }
        }
    }
}

async fn asset(app: &TestApp, path: &str) -> (StatusCode, String, usize) {
    let response = app.get(path, None).await;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = response.bytes().await.map(|b| b.len()).unwrap_or(0);
    (status, content_type, bytes)
}

#[tokio::test]
async fn the_reference_page_is_served_with_its_vendored_assets_and_no_cdn() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/docs", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let policy = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let html = response.text().await.expect("html");
    assert!(!html.contains("{{ASSET_BASE}}"));
    assert!(
        !html.contains("https://"),
        "the page loads nothing from elsewhere: {html}"
    );
    let scripts: Vec<&str> = html
        .split("src=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(scripts.len(), 2, "{html}");
    for script in &scripts {
        assert!(script.starts_with("/assets/"), "{script}");
        let (status, content_type, bytes) = asset(&app, script).await;
        assert_eq!(status, StatusCode::OK, "{script}");
        assert!(
            content_type.starts_with("text/javascript"),
            "{script}: {content_type}"
        );
        assert!(bytes > 100, "{script}");
    }
    assert!(scripts[0].ends_with("vendor/swagger-ui/swagger-ui-bundle.js"));
    let stylesheet = html
        .split("href=\"")
        .filter_map(|rest| rest.split('"').next())
        .find(|href| href.ends_with("swagger-ui.css"))
        .expect("the stylesheet");
    assert_eq!(asset(&app, stylesheet).await.0, StatusCode::OK);
    // The page's template is not an asset of its own.
    let base = scripts[0].split("vendor/").next().expect("base");
    let (status, _, _) = asset(&app, &format!("{base}api-docs.html")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[test]
fn the_websocket_schemas_accept_real_frames_and_reject_wrong_ones() {
    // Frames as the server writes them (each API test that reads a socket
    // checks the real ones too, in `WsClient::read`).
    for frame in [
        json!({"type": "prices", "ticks": [{"player_id": 1, "price_cents": 101, "epoch": 0, "seq": 5, "ts_ms": 1}]}),
        json!({"type": "subscribed", "channels": ["player:1", "leaderboard"], "snapshot": [
            {"channel": "player:1", "data": {"player_id": 1, "price_cents": 101, "epoch": 0, "seq": 5, "ts_ms": 1, "locked_until": null}},
            {"channel": "leaderboard", "data": {"as_of": null, "entries": []}}]}),
        json!({"type": "error", "code": "invalid_channel", "message": "no", "channels": ["x"]}),
        json!({"type": "pong"}),
    ] {
        assert_documented_frame(&frame);
    }
    let validator = documented_schema("WsServerMessage");
    for wrong in [
        json!({"type": "prices", "ticks": [{"player_id": 1, "price_cents": 101}]}),
        json!({"type": "tick"}),
        json!({"type": "sale", "sale_id": 1, "remaining_units": 3, "status": "closed"}),
        json!({"type": "event", "player_id": 1}),
        json!({"type": "subscribed", "channels": ["player:0"], "snapshot": []}),
    ] {
        assert!(!validator.is_valid(&wrong), "accepted {wrong}");
    }
    let client = documented_schema("WsClientMessage");
    assert!(
        client.is_valid(&json!({"op": "subscribe", "channels": ["player:12", "sale:3", "events"]}))
    );
    assert!(client.is_valid(&json!({"op": "ping"})));
    assert!(
        client.is_valid(&json!({"op": "subscribe"})),
        "channels default to []"
    );
    assert!(!client.is_valid(&json!({"op": "subscribe", "channels": ["player:x"]})));
    assert!(!client.is_valid(&json!({"op": "dance"})));
}
