//! The browser app as the binary serves it: embedded files, versioned asset
//! paths with long-lived caching, revalidated `index.html`, SPA fallback for
//! browser navigations only.

use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,*/*;q=0.8";

/// A `GET` as a browser navigating sends it.
async fn navigate(app: &TestApp, path: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header(ACCEPT, BROWSER_ACCEPT)
        .send()
        .await
        .unwrap()
}

fn asset_base(html: &str) -> String {
    let start = html.find("/assets/").expect("index names the asset path");
    let end = start + "/assets/".len() + 13;
    html[start..end].to_string()
}

#[tokio::test]
async fn the_root_serves_the_app_with_its_versioned_assets() {
    let app = spawn_app().await;
    let index = app.get("/", None).await;
    assert_eq!(index.status(), StatusCode::OK);
    assert_eq!(index.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(index.headers()[CACHE_CONTROL], "no-cache");
    assert!(index.headers().contains_key("content-security-policy"));
    let etag = index.headers()[ETAG].clone();
    let html = index.text().await.unwrap();
    assert!(!html.contains("{{ASSET_BASE}}"), "placeholder filled in");
    let base = asset_base(&html);
    assert!(html.contains(&format!("{base}app.js")), "{html}");

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("views/board.js", "text/javascript; charset=utf-8"),
        (
            "vendor/lightweight-charts.standalone.production.mjs",
            "text/javascript; charset=utf-8",
        ),
    ] {
        let asset = app.get(&format!("{base}{file}"), None).await;
        assert_eq!(asset.status(), StatusCode::OK, "{file}");
        assert_eq!(asset.headers()[CONTENT_TYPE], content_type, "{file}");
        assert_eq!(
            asset.headers()[CACHE_CONTROL],
            "public, max-age=31536000, immutable",
            "{file}"
        );
        assert_eq!(asset.headers()["x-content-type-options"], "nosniff");
        assert!(!asset.bytes().await.unwrap().is_empty());
    }

    // A revalidation of an unchanged index is a 304, also when a proxy that
    // compresses has weakened the tag, or asks for any version at all.
    let etag = etag.to_str().unwrap().to_string();
    for tag in [etag.clone(), format!("W/{etag}"), "*".to_string()] {
        let revalidated = app
            .client
            .get(app.url("/"))
            .header(IF_NONE_MATCH, &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{tag}");
    }

    // HEAD answers like GET, without the body.
    for path in ["/".to_string(), format!("{base}app.js")] {
        let head = app.client.head(app.url(&path)).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK, "{path}");
        let length: usize = head.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(length > 0, "{path}");
    }
}

#[tokio::test]
async fn an_asset_under_another_version_is_served_but_never_cached_for_long() {
    let app = spawn_app().await;
    let asset = app.get("/assets/000000000000/app.js", None).await;
    assert_eq!(asset.status(), StatusCode::OK);
    assert_eq!(asset.headers()[CACHE_CONTROL], "no-cache");
    let missing = app.get("/assets/000000000000/nope.js", None).await;
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    let index_as_asset = app.get("/assets/000000000000/index.html", None).await;
    assert_eq!(index_as_asset.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn browser_navigations_fall_back_to_the_app_and_everything_else_stays_json() {
    let app = spawn_app().await;
    for path in ["/portfolio", "/players/12", "/drops"] {
        let page = navigate(&app, path).await;
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        assert!(page.text().await.unwrap().contains("<main id=\"main\""));
    }
    // API clients, API paths, files and other methods get the API's 404.
    assert_error(
        app.get("/portfolio", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    for path in ["/api/v1/nope", "/favicon.ico", "/assets/x"] {
        assert_error(
            navigate(&app, path).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let post = app
        .client
        .post(app.url("/portfolio"))
        .header(ACCEPT, BROWSER_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_error(post, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn players_carry_the_days_opening_price() {
    let app = spawn_app().await;
    let id = app.create_player(1000).await;
    assert_eq!(app.player(id).await["open_price_cents"], 1000);
    let applied: Value = app
        .push_event("open-price-goal", id, "goal")
        .await
        .json()
        .await
        .unwrap();
    let moved = applied["price_cents"].as_i64().unwrap();
    assert!(moved > 1000, "{applied}");
    // The price moved; the day's open is still the first price of the day.
    let player = app.player(id).await;
    assert_eq!(player["price_cents"], moved);
    assert_eq!(player["open_price_cents"], 1000);
    let listed = app.players().await;
    assert_eq!(listed, json!([player]));

    // History from before midnight UTC does not count as today's open.
    app.sql(&format!(
        "UPDATE price_history SET ts = ts - interval '2 days' WHERE player_id = {id}"
    ))
    .await;
    assert_eq!(app.player(id).await["open_price_cents"], moved);
}

#[tokio::test]
async fn history_is_gzipped_for_clients_that_accept_it() {
    let app = spawn_app().await;
    let id = app.create_player(1000).await;
    let path = format!("/api/v1/players/{id}/history");
    let gzipped = app
        .client
        .get(app.url(&path))
        .header(reqwest::header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    // Without the header the same route answers plain JSON.
    let plain: Value = app.get(&path, None).await.json().await.unwrap();
    assert_eq!(plain[0]["price_cents"], 1000);
}
