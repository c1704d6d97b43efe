//! Exactly one replica ticks; when it stops, another takes over.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

async fn wait_for_leader(apps: &[&TestApp]) -> usize {
    for _ in 0..50 {
        let mut leaders = Vec::new();
        for (n, app) in apps.iter().enumerate() {
            if app.metric("matchday_leader").await == 1.0 {
                leaders.push(n);
            }
        }
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if let [leader] = leaders[..] {
            return leader;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader emerged");
}

/// How far a player's seq moves in `window`, seen from a socket on `app`.
async fn seq_advance(app: &TestApp, player: i64, window: Duration) -> i64 {
    let mut ws = app.ws(None).await;
    ws.send(json!({"op": "subscribe", "channels": [format!("player:{player}")]}))
        .await;
    let subscribed = ws.expect("subscribed", Duration::from_secs(1)).await;
    let first = subscribed["snapshot"][0]["data"]["seq"].as_i64().unwrap();
    let mut last = first;
    let started = std::time::Instant::now();
    while started.elapsed() < window {
        if let WsRead::Json(frame) = ws.read(Duration::from_millis(200)).await {
            if frame["type"] == "prices" {
                last = frame["ticks"][0]["seq"].as_i64().unwrap();
            }
        }
    }
    last - first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_replica_ticks_and_another_takes_over_when_it_stops() {
    let mut settings = test_settings().await;
    settings.pricing.tick_ms = 100;
    settings.pricing.tick_volatility_bp = 2_000;
    settings.broadcast.flush_ms = 50;
    let a = spawn_app_with(settings.clone()).await;
    let b = spawn_app_with(settings).await;
    let player = a.create_player(100_000).await;
    let leader = wait_for_leader(&[&a, &b]).await;
    let (leading, following) = if leader == 0 { (&a, &b) } else { (&b, &a) };

    // One ticker: ~10 price changes a second, not ~20.
    let advance = seq_advance(following, player, Duration::from_secs(2)).await;
    assert!((8..=26).contains(&advance), "seq advanced {advance} in 2 s");

    leading.stop().await;
    let started = std::time::Instant::now();
    assert_eq!(wait_for_leader(&[following]).await, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "takeover took {:?}",
        started.elapsed()
    );
    let advance = seq_advance(following, player, Duration::from_secs(1)).await;
    assert!(advance >= 4, "the new leader does not tick: {advance}");
}
