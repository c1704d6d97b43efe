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
    // A player created on another replica reaches this one over the bus a
    // moment later: until then the channel is refused as unknown.
    let mut first = None;
    for _ in 0..40 {
        ws.send(json!({"op": "subscribe", "channels": [format!("player:{player}")]}))
            .await;
        let subscribed = ws.expect("subscribed", Duration::from_secs(1)).await;
        first = subscribed["snapshot"][0]["data"]["seq"].as_i64();
        if first.is_some() {
            break;
        }
        ws.expect("error", Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first.expect("the player reached this replica");
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

#[tokio::test]
async fn a_feed_event_fenced_by_a_leadership_that_is_gone_is_refused() {
    use matchday::domain::PlayerId;
    use matchday::ingest::EventKind;
    use matchday::leader::{fence_sql, Fence};
    use matchday::pricing::{Applied, NewEvent, PgPrices, PriceStore, PricingError, PricingRules};

    let settings = test_settings().await;
    let app = spawn_app_with(settings.clone()).await;
    let player = app.create_player(1_000).await;
    wait_for_leader(&[&app]).await;
    // The app's leader session, as pg_locks shows it in this database.
    let leader_pid: i32 = app
        .sql(&format!(
            "SELECT pid FROM ({}) fence, pg_locks l
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              LIMIT 1",
            fence_sql().replace("$1", "0")
        ))
        .await[0]
        .get(0);
    let store = PgPrices::new(matchday::db::pool(&settings.database).unwrap());
    let rules = PricingRules::from_settings(&settings.pricing).unwrap();
    let event = |id: &str, pid: i32| NewEvent {
        event_id: id.into(),
        match_id: "m".into(),
        player: PlayerId(player),
        kind: EventKind::Goal,
        occurred_at: chrono::Utc::now(),
        minute: None,
        fence: Some(Fence { leader_pid: pid }),
    };
    let lock = Duration::from_secs(0);
    let stale = store
        .apply_event(&event("fenced-1", leader_pid + 100_000), &rules, lock)
        .await;
    assert!(matches!(stale, Err(PricingError::NotLeader)), "{stale:?}");
    assert_eq!(app.player(player).await["epoch"], 0);
    let current = store
        .apply_event(&event("fenced-2", leader_pid), &rules, lock)
        .await;
    assert!(matches!(current, Ok(Applied::Applied(_))), "{current:?}");
}
