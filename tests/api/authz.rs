//! The authorization matrix: every endpoint and channel × anonymous, a
//! garbage token, a user, another user and the admin. Only the allowed
//! cells succeed; every refused cell changes nothing.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    Anonymous,
    Garbage,
    /// The user who owns the purchase below.
    Owner,
    OtherUser,
    Admin,
}

const CALLERS: [Caller; 5] = [
    Caller::Anonymous,
    Caller::Garbage,
    Caller::Owner,
    Caller::OtherUser,
    Caller::Admin,
];

/// Who an endpoint is for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in user (the admin token is not a user).
    User,
    /// Only the user who owns the resource; another user hears 404.
    Owner,
    Admin,
}

/// The status a caller gets: the allowed cells' own answer, else the
/// refusal API.md names.
fn expected(access: Access, caller: Caller, allowed: u16) -> u16 {
    match (access, caller) {
        (Access::Public, _) => allowed,
        (_, Caller::Anonymous | Caller::Garbage) => 401,
        (Access::User, Caller::Owner | Caller::OtherUser) => allowed,
        (Access::User | Access::Owner, Caller::Admin) => 401,
        (Access::Owner, Caller::Owner) => allowed,
        (Access::Owner, Caller::OtherUser) => 404,
        (Access::Admin, Caller::Owner | Caller::OtherUser) => 403,
        (Access::Admin, Caller::Admin) => allowed,
    }
}

#[derive(Clone)]
struct Endpoint {
    method: Method,
    path: String,
    access: Access,
    /// What an allowed caller gets.
    allowed: u16,
    body: Option<Value>,
    /// Sends an Idempotency-Key (unique per call).
    keyed: bool,
}

fn endpoint(method: Method, path: String, access: Access, allowed: u16) -> Endpoint {
    Endpoint {
        method,
        path,
        access,
        allowed,
        body: None,
        keyed: false,
    }
}

/// An app with a player, a drop (on a second player) and two users,
/// `<prefix>_owner` and `<prefix>_other`.
async fn market(prefix: &str) -> (TestApp, i64, i64, i64, User, User) {
    let app = spawn_app().await;
    let player = app.create_player(1_000).await;
    let dropped = app.create_player(500).await;
    let sale = app.create_drop(dropped, 100, 500, None).await["sale_id"]
        .as_i64()
        .expect("sale_id");
    let owner = app.register(&format!("{prefix}_owner")).await;
    let other = app.register(&format!("{prefix}_other")).await;
    (app, player, dropped, sale, owner, other)
}

#[tokio::test]
async fn only_the_allowed_cells_of_every_endpoint_succeed_and_refusals_change_nothing() {
    let (app, player, dropped, sale, owner, other) = market("matrix").await;
    let purchase: Value = app
        .purchase(&owner.token, sale, "owner-purchase", 1)
        .await
        .json()
        .await
        .expect("purchase");
    let purchase_id = purchase["purchase_id"].as_i64().expect("purchase_id");
    let ordered: Value = app
        .order(
            &owner.token,
            "owner-order",
            &json!({"player_id": player, "side": "buy", "quantity": 1}),
        )
        .await
        .json()
        .await
        .expect("order");
    let order_id = ordered["order_id"].as_i64().expect("order_id");
    // Settled before the books are counted, so only a refusal could move them.
    wait_until_settled(&app, sale, Duration::from_secs(10)).await;

    let event = |n: usize| {
        json!({"event_id": format!("matrix-{n}"), "match_id": "m", "player_id": player,
               "kind": "save", "occurred_at": "2026-11-22T15:04:05.000Z"})
    };
    let mut endpoints = vec![
        endpoint(Method::GET, "/healthz".into(), Access::Public, 200),
        endpoint(Method::GET, "/readyz".into(), Access::Public, 200),
        endpoint(Method::GET, "/api/v1/players".into(), Access::Public, 200),
        endpoint(
            Method::GET,
            format!("/api/v1/players/{player}"),
            Access::Public,
            200,
        ),
        endpoint(
            Method::GET,
            format!("/api/v1/players/{player}/history"),
            Access::Public,
            200,
        ),
        endpoint(
            Method::GET,
            format!("/api/v1/players/{player}/events"),
            Access::Public,
            200,
        ),
        endpoint(Method::GET, "/api/v1/events".into(), Access::Public, 200),
        endpoint(
            Method::GET,
            "/api/v1/leaderboard".into(),
            Access::Public,
            200,
        ),
        endpoint(Method::GET, "/api/v1/sales".into(), Access::Public, 200),
        endpoint(
            Method::GET,
            format!("/api/v1/sales/{sale}"),
            Access::Public,
            200,
        ),
        endpoint(Method::GET, "/api/v1/me".into(), Access::User, 200),
        endpoint(Method::GET, "/api/v1/orders".into(), Access::User, 200),
        endpoint(Method::GET, "/api/v1/portfolio".into(), Access::User, 200),
        endpoint(
            Method::GET,
            "/api/v1/leaderboard/me".into(),
            Access::User,
            200,
        ),
        endpoint(
            Method::GET,
            format!("/api/v1/sales/{sale}/purchases"),
            Access::User,
            200,
        ),
        // Not sold out: the allowed answer is the business rule's 409.
        endpoint(
            Method::POST,
            format!("/api/v1/sales/{sale}/waitlist"),
            Access::User,
            409,
        ),
        endpoint(
            Method::GET,
            format!("/api/v1/orders/{order_id}"),
            Access::Owner,
            200,
        ),
        endpoint(
            Method::GET,
            format!("/api/v1/sales/{sale}/purchases/{purchase_id}"),
            Access::Owner,
            200,
        ),
        endpoint(
            Method::GET,
            "/api/v1/admin/audit".into(),
            Access::Admin,
            200,
        ),
        endpoint(
            Method::GET,
            "/api/v1/admin/fairness/suspects".into(),
            Access::Admin,
            200,
        ),
        endpoint(
            Method::GET,
            format!("/api/v1/admin/sales/{sale}/audit"),
            Access::Admin,
            200,
        ),
    ];
    let posts = [
        (
            "/api/v1/orders".to_string(),
            Access::User,
            201,
            json!({"player_id": player, "side": "buy", "quantity": 1}),
            true,
        ),
        (
            format!("/api/v1/sales/{sale}/purchases"),
            Access::User,
            202,
            json!({"quantity": 1}),
            true,
        ),
        (
            "/api/v1/admin/players".into(),
            Access::Admin,
            201,
            json!({"name": "Matrix", "team": "T", "position": "FW", "price_cents": 900}),
            false,
        ),
        (
            "/api/v1/admin/sales".into(),
            Access::Admin,
            201,
            json!({"player_id": dropped, "name": "Matrix drop", "total_units": 5,
                   "unit_price_cents": 100}),
            false,
        ),
        (
            "/api/v1/admin/users/bulk".into(),
            Access::Admin,
            201,
            json!({"count": 1, "prefix": "matrixbulk"}),
            false,
        ),
    ];
    for (path, access, allowed, body, keyed) in posts {
        endpoints.push(Endpoint {
            method: Method::POST,
            path,
            access,
            allowed,
            body: Some(body),
            keyed,
        });
    }

    let token = |caller: Caller| -> Option<String> {
        match caller {
            Caller::Anonymous => None,
            Caller::Garbage => Some("not-a-token".into()),
            Caller::Owner => Some(owner.token.clone()),
            Caller::OtherUser => Some(other.token.clone()),
            Caller::Admin => Some(ADMIN_TOKEN.into()),
        }
    };
    let call = |endpoint: &Endpoint, caller: Caller, n: usize| {
        let mut request = app
            .client
            .request(endpoint.method.clone(), app.url(&endpoint.path));
        if let Some(token) = token(caller) {
            request = request.bearer_auth(token);
        }
        if endpoint.keyed {
            request = request.header("Idempotency-Key", format!("matrix-{n}"));
        }
        if let Some(body) = &endpoint.body {
            request = request.json(body);
        }
        request.send()
    };

    // Refused cells first, all of them, then the books must be as they were.
    let before = book_totals(&app).await;
    let mut cells = 0;
    for (e, endpoint) in endpoints.iter().enumerate() {
        for caller in CALLERS {
            let want = expected(endpoint.access, caller, endpoint.allowed);
            if want == endpoint.allowed {
                continue;
            }
            let response = call(endpoint, caller, e * 10).await.expect("sent");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(
                status, want,
                "{caller:?} {} {}: {body}",
                endpoint.method, endpoint.path
            );
            assert!(body["error"]["code"].is_string(), "error shape: {body}");
            cells += 1;
        }
    }
    assert_eq!(
        book_totals(&app).await,
        before,
        "a refused request changed the books"
    );
    assert!(cells >= 40, "only {cells} refused cells");

    // Then the allowed cells.
    for (e, endpoint) in endpoints.iter().enumerate() {
        for (c, caller) in CALLERS.into_iter().enumerate() {
            if expected(endpoint.access, caller, endpoint.allowed) != endpoint.allowed {
                continue;
            }
            let mut endpoint_for_caller = endpoint.clone();
            // Each admin create needs its own name.
            if endpoint.path.ends_with("/users/bulk") {
                endpoint_for_caller.body =
                    Some(json!({"count": 1, "prefix": format!("matrixbulk{c}")}));
            }
            let response = call(&endpoint_for_caller, caller, e * 10 + c + 1)
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(
                status, endpoint.allowed,
                "{caller:?} {} {}: {body}",
                endpoint.method, endpoint.path
            );
        }
    }

    // Pushing an event: anyone but the admin is refused and nothing moves.
    let epoch = app.player(player).await["epoch"].clone();
    for (n, caller) in CALLERS.into_iter().enumerate() {
        let mut request = app
            .client
            .post(app.url("/api/v1/admin/feed/events"))
            .json(&event(n));
        if let Some(token) = token(caller) {
            request = request.bearer_auth(token);
        }
        let status = request.send().await.expect("sent").status().as_u16();
        let want = expected(Access::Admin, caller, 202);
        assert_eq!(status, want, "{caller:?} pushing an event");
        if caller != Caller::Admin {
            assert_eq!(
                app.player(player).await["epoch"],
                epoch,
                "{caller:?} moved the epoch"
            );
        }
    }
}

#[tokio::test]
async fn channels_public_to_all_the_user_channel_only_to_its_own_user() {
    let (app, player, _, sale, owner, other) = market("chan").await;
    let public = [
        format!("player:{player}"),
        format!("sale:{sale}"),
        "leaderboard".to_string(),
        "events".to_string(),
    ];

    // Anonymous: every public channel; `user` (and any spelling of another
    // user's channel) is refused.
    let mut anonymous = app.ws(None).await;
    anonymous
        .send(json!({"op": "subscribe", "channels": public}))
        .await;
    let subscribed = anonymous.expect("subscribed", Duration::from_secs(5)).await;
    assert_eq!(subscribed["channels"].as_array().map(Vec::len), Some(4));
    for channel in ["user", &format!("user:{}", owner.id)] {
        anonymous
            .send(json!({"op": "subscribe", "channels": [channel]}))
            .await;
        let refused = anonymous.expect("error", Duration::from_secs(5)).await;
        assert_eq!(refused["code"], "invalid_channel", "{channel}: {refused}");
    }

    // The admin token and a garbage token are not users: the upgrade is refused.
    for token in [ADMIN_TOKEN, "not-a-token"] {
        let url = format!(
            "{}/ws?token={token}",
            app.address.replace("http://", "ws://")
        );
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401, "token {token}")
            }
            other => panic!(
                "token {token}: upgrade not refused: {:?}",
                other.map(|_| ())
            ),
        }
    }

    // A fill reaches its own user's socket and nobody else's.
    let mut owner_ws = app.ws(Some(&owner.token)).await;
    let mut other_ws = app.ws(Some(&other.token)).await;
    for ws in [&mut owner_ws, &mut other_ws] {
        ws.send(json!({"op": "ping"})).await;
        ws.expect("pong", Duration::from_secs(5)).await;
    }
    let response = app
        .order(
            &owner.token,
            "chan-order",
            &json!({"player_id": player, "side": "buy", "quantity": 2}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 201);
    let fill = owner_ws.expect("order", Duration::from_secs(5)).await;
    assert_eq!(fill["quantity"], 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        match other_ws.read(deadline - tokio::time::Instant::now()).await {
            WsRead::Json(frame) => assert!(
                frame["type"] != "order" && frame["type"] != "purchase",
                "another user's socket got {frame}"
            ),
            WsRead::Timeout => break,
            WsRead::Closed(code) => panic!("closed {code:?}"),
        }
    }
}
