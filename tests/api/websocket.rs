//! /ws against the real hub, bus and price engine.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn subscribing_answers_at_once_with_a_snapshot_of_each_channel() {
    let app = spawn_app().await;
    let player = app.create_player(1_234).await;
    let mut ws = app.ws(None).await;
    ws.send(json!({"op": "subscribe", "channels": [format!("player:{player}"), "events"]}))
        .await;
    let subscribed = ws.expect("subscribed", SECOND).await;
    assert_eq!(
        subscribed["channels"],
        json!([format!("player:{player}"), "events"])
    );
    let snapshot = &subscribed["snapshot"][0];
    assert_eq!(snapshot["channel"], format!("player:{player}"));
    assert_eq!(snapshot["data"]["player_id"], player);
    assert_eq!(snapshot["data"]["price_cents"], 1_234);
    assert_eq!(snapshot["data"]["epoch"], 0);
    assert!(snapshot["data"]["ts_ms"].as_i64().unwrap() > 0);
    assert_eq!(snapshot["data"]["locked_until"], Value::Null);
}

#[tokio::test]
async fn an_event_arrives_once_with_its_lock_then_the_new_price_as_a_tick() {
    let app = spawn_app().await;
    let player = app.create_player(1_000).await;
    let mut ws = app.ws(None).await;
    ws.send(json!({"op": "subscribe", "channels": ["events", format!("player:{player}")]}))
        .await;
    ws.expect("subscribed", SECOND).await;
    let applied: Value = app
        .push_event("ws-goal", player, "goal")
        .await
        .json()
        .await
        .unwrap();

    let event = ws.expect("event", SECOND).await;
    assert_eq!(event["player_id"], player);
    assert_eq!(event["kind"], "goal");
    assert_eq!(event["epoch"], 1);
    assert_eq!(event["price_cents"], applied["price_cents"]);
    assert_eq!(event["locked_until"], applied["locked_until"]);
    let tick = ws.expect("prices", SECOND).await;
    assert_eq!(tick["ticks"][0]["epoch"], 1);
    assert_eq!(tick["ticks"][0]["price_cents"], applied["price_cents"]);
    // Subscribed to both events and the player, the event came once.
    match ws.read(Duration::from_millis(400)).await {
        WsRead::Json(value) => assert_ne!(value["type"], "event", "event delivered twice"),
        WsRead::Timeout => {}
        closed => panic!("{closed:?}"),
    }
}

#[tokio::test]
async fn many_ticks_within_one_flush_reach_the_socket_as_one_tick_per_player() {
    let mut settings = test_settings().await;
    settings.pricing.tick_ms = 10;
    settings.pricing.tick_volatility_bp = 500;
    settings.broadcast.flush_ms = 400;
    let app = spawn_app_with(settings).await;
    let players = [
        app.create_player(10_000).await,
        app.create_player(20_000).await,
    ];
    let mut ws = app.ws(None).await;
    ws.send(json!({"op": "subscribe", "channels": players.iter().map(|p| format!("player:{p}")).collect::<Vec<_>>()}))
        .await;
    ws.expect("subscribed", SECOND).await;
    let mut last_seq: HashMap<i64, i64> = HashMap::new();
    let mut skipped = 0;
    let started = std::time::Instant::now();
    let mut frames = 0;
    while started.elapsed() < Duration::from_millis(2_000) {
        let frame = ws.expect("prices", SECOND).await;
        frames += 1;
        let ticks = frame["ticks"].as_array().unwrap();
        let mut seen = std::collections::HashSet::new();
        for tick in ticks {
            let id = tick["player_id"].as_i64().unwrap();
            assert!(
                seen.insert(id),
                "two ticks of one player in a frame: {frame}"
            );
            let seq = tick["seq"].as_i64().unwrap();
            if let Some(previous) = last_seq.insert(id, seq) {
                assert!(seq > previous, "seq went backwards: {previous} -> {seq}");
                skipped += (seq - previous - 1) as usize;
            }
        }
    }
    // 2 s at one flush per 400 ms: about 5 frames, though ~200 ticks happened.
    assert!(frames <= 8, "{frames} frames: not conflated");
    assert!(skipped > 50, "only {skipped} ticks conflated away");
}

#[tokio::test]
async fn bad_messages_get_an_error_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let player = app.create_player(500).await;
    let mut ws = app.ws(None).await;
    ws.send_raw(Message::text("not json")).await;
    assert_eq!(ws.expect("error", SECOND).await["code"], "bad_request");
    ws.send(json!({"op": "dance"})).await;
    assert_eq!(ws.expect("error", SECOND).await["code"], "bad_request");
    ws.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(ws.expect("error", SECOND).await["code"], "bad_request");
    ws.send(json!({"op": "subscribe", "channels": ["player:999999", "nonsense", "user", format!("player:{player}")]}))
        .await;
    let subscribed = ws.expect("subscribed", SECOND).await;
    assert_eq!(subscribed["channels"], json!([format!("player:{player}")]));
    let error = ws.expect("error", SECOND).await;
    assert_eq!(error["code"], "invalid_channel");
    assert_eq!(
        error["channels"],
        json!(["player:999999", "nonsense", "user"])
    );
    ws.send(json!({"op": "ping"})).await;
    ws.expect("pong", SECOND).await;
    ws.send(json!({"op": "unsubscribe", "channels": [format!("player:{player}")]}))
        .await;
    assert_eq!(
        ws.expect("unsubscribed", SECOND).await["channels"],
        json!([format!("player:{player}")])
    );
}

#[tokio::test]
async fn an_invalid_token_refuses_the_upgrade_with_401() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/ws?token=forged"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn a_users_own_fills_arrive_on_the_user_channel() {
    let app = spawn_app().await;
    let user = app.register("listener").await;
    let other = app.register("stranger").await;
    let player = app.create_player(300).await;
    let mut mine = app.ws(Some(&user.token)).await;
    let mut theirs = app.ws(Some(&other.token)).await;
    mine.send(json!({"op": "ping"})).await;
    mine.expect("pong", SECOND).await;
    theirs.send(json!({"op": "ping"})).await;
    theirs.expect("pong", SECOND).await;
    let response = app
        .order(
            &user.token,
            "ws-order",
            &json!({"player_id": player, "side": "buy", "quantity": 2}),
        )
        .await;
    let order: Value = response.json().await.unwrap();
    let message = mine.expect("order", SECOND).await;
    assert_eq!(message["order_id"], order["order_id"]);
    assert_eq!(message["total_cents"], 600);
    // The stranger hears nothing of it: at most their own (empty)
    // portfolio's live value.
    let until = tokio::time::Instant::now() + Duration::from_millis(1_500);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match theirs.read(left).await {
            WsRead::Timeout => break,
            WsRead::Json(message) if message["type"] == "portfolio" => {
                assert_eq!(message["holdings"], json!([]), "{message}");
                assert_eq!(message["cash_cents"], 1_000_000, "{message}");
            }
            other => panic!("the stranger got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_a_flood_with_1008() {
    let app = spawn_app().await;
    let mut ws = app.ws(None).await;
    ws.send_raw(Message::text("x".repeat(20 * 1024))).await;
    assert!(matches!(ws.read(SECOND).await, WsRead::Closed(Some(1009))));

    let mut ws = app.ws(None).await;
    for _ in 0..200 {
        ws.send_raw(Message::text("{\"op\":\"ping\"}")).await;
    }
    let mut code = None;
    for _ in 0..300 {
        match ws.read(SECOND).await {
            WsRead::Json(_) => continue,
            WsRead::Closed(c) => {
                code = c;
                break;
            }
            WsRead::Timeout => break,
        }
    }
    assert_eq!(code, Some(1008));
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_its_resources_released() {
    let mut settings = test_settings().await;
    settings.pricing.tick_ms = 10;
    settings.pricing.tick_volatility_bp = 1_000;
    settings.broadcast.flush_ms = 10;
    settings.broadcast.stuck_timeout_ms = 300;
    let app = spawn_app_with(settings).await;
    let mut channels = Vec::new();
    for n in 0..150 {
        channels.push(format!("player:{}", app.create_player(100_000 + n).await));
    }
    let mut reader = app.ws(None).await;
    reader
        .send(json!({"op": "subscribe", "channels": channels.clone()}))
        .await;
    reader.expect("subscribed", SECOND).await;
    let mut sleeper = app.ws(None).await;
    sleeper
        .send(json!({"op": "subscribe", "channels": channels}))
        .await;
    assert_eq!(app.metric("matchday_ws_connections").await, 2.0);
    // The sleeper reads nothing while ~1.5 MB/s is sent to it: once the
    // kernel buffers fill, its sends block and it must be closed.
    let mut closed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = reader.read(Duration::from_millis(1)).await;
        if app.metric("matchday_ws_connections").await < 2.0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "a never-reading socket was kept open");
    // The reading client is unaffected and still gets prices.
    reader.expect("prices", SECOND).await;
    // The sleeper, when it finally reads, finds the server's 1013.
    let mut code = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the never-reading socket was not the one closed"
        );
        match sleeper.read(Duration::from_secs(5)).await {
            WsRead::Json(_) => continue,
            WsRead::Closed(c) => {
                code = c;
                break;
            }
            WsRead::Timeout => break,
        }
    }
    assert!(code == Some(1013) || code.is_none(), "{code:?}");
}

#[tokio::test]
async fn a_price_pushed_through_one_replica_reaches_a_socket_on_another() {
    let settings = test_settings().await;
    let a = spawn_app_with(settings.clone()).await;
    let b = spawn_app_with(settings).await;
    let player = a.create_player(1_000).await;
    let mut ws = a.ws(None).await;
    ws.send(json!({"op": "subscribe", "channels": [format!("player:{player}")]}))
        .await;
    ws.expect("subscribed", SECOND).await;
    b.push_event("cross", player, "assist").await;
    let event = ws.expect("event", SECOND).await;
    assert_eq!(event["kind"], "assist");
}

#[tokio::test]
async fn current_prices_live_in_redis_and_never_go_backwards() {
    let settings = test_settings().await;
    let bus = matchday::bus::Bus::connect(&settings.redis).await.unwrap();
    let app = spawn_app_with(settings).await;
    let player = app.create_player(1_000).await;
    app.push_event("state-goal", player, "goal").await;
    let state = bus
        .state_values(matchday::broadcast::PRICES_STATE)
        .await
        .unwrap();
    let mine: Vec<Value> = state
        .iter()
        .map(|v| serde_json::from_str::<Value>(v).unwrap())
        .filter(|v| v["player_id"] == player)
        .collect();
    assert_eq!(mine.len(), 1, "{state:?}");
    assert_eq!(mine[0]["epoch"], 1);

    // A racing publisher with an older seq does not overwrite a newer one.
    let entry = |seq: i64| ("7".to_string(), seq, format!("{{\"seq\":{seq}}}"));
    for seq in [5, 3, 5] {
        bus.publish_with_state("test:channel", "{}".into(), "test:state", vec![entry(seq)])
            .await
            .unwrap();
    }
    assert_eq!(
        bus.state_values("test:state").await.unwrap(),
        ["{\"seq\":5}"]
    );
    bus.publish_with_state("test:channel", "{}".into(), "test:state", vec![entry(6)])
        .await
        .unwrap();
    assert_eq!(
        bus.state_values("test:state").await.unwrap(),
        ["{\"seq\":6}"]
    );
}
