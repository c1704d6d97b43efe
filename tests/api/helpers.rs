//! `spawn_app()`: the real application on a free port, against a fresh
//! Postgres database (`test_<uuid>`) and its own Redis key prefix.
//! scripts/test starts the servers and drops leftover test databases.

use std::path::Path;

use matchday::config::{Secret, Settings};
use matchday::startup::Application;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub database_url: String,
    /// None for a server this process did not start (tests/cluster).
    handle: Option<actix_web::dev::ServerHandle>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Sends the stop command at once; the server drains on its own.
        if let Some(handle) = &self.handle {
            drop(handle.stop(false));
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Settings pointing at a brand-new database and Redis prefix.
pub async fn test_settings() -> Settings {
    let admin_url = env_or(
        "MATCHDAY_TEST_PG_ADMIN_URL",
        "postgres://matchday@127.0.0.1:54329/postgres",
    );
    let redis_url = env_or("MATCHDAY_TEST_REDIS_URL", "redis://127.0.0.1:63799");
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test Postgres (run scripts/test)");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base.to_string())
        .expect("admin url has a database");

    let mut settings = Settings::load_from(Path::new("config"), None).expect("default config");
    settings.database.url = Secret::new(format!("{base}/{name}"));
    settings.database.max_connections = 12;
    settings.redis.url = Secret::new(redis_url);
    settings.redis.key_prefix = format!("{name}:");
    settings.server.port = 0;
    settings.server.workers = 2;
    settings.server.shutdown_timeout_seconds = 1;
    settings.admin.token = Some(Secret::new(ADMIN_TOKEN));
    settings.auth.max_concurrent_hashes = 2;
    // Prices stay put unless a test turns ticks or a feed on.
    settings.pricing.tick_ms = 0;
    // The suite's trades fill, and can be sold, at once: the trade lock
    // alone. tests/api/policies.rs runs each fairness policy.
    settings.trading.fairness_policy = matchday::config::FairnessPolicy::Lock;
    settings.feed.source = matchday::config::FeedSource::None;
    // Races fire far more requests per user than a person would; the rate
    // limit tests turn limits on.
    settings.limits.user_per_sec = 0;
    settings.limits.ip_per_sec = 0;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings().await).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        matchday::telemetry::init(&settings.telemetry);
    }
    let database_url = settings.database.url.expose().to_string();
    let app = Application::build(settings).await.expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        database_url,
        handle: Some(handle),
    }
}

/// A client of a server running in another process (a replica started by
/// tests/cluster), with every helper below.
#[allow(dead_code)]
pub fn remote_app(address: String, database_url: String) -> TestApp {
    TestApp {
        address,
        client: reqwest::Client::new(),
        database_url,
        handle: None,
    }
}

/// A registered user.
#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub token: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn register(&self, username: &str) -> User {
        let response = self
            .post_json(
                "/api/v1/auth/register",
                None,
                &json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "register {username}"
        );
        let body: Value = response.json().await.expect("json");
        User {
            id: body["user_id"].as_i64().expect("user_id"),
            token: body["token"].as_str().expect("token").to_string(),
        }
    }

    /// Users created in bulk with a chosen balance (no password hashing).
    pub async fn bulk_users(&self, prefix: &str, count: usize, balance_cents: i64) -> Vec<User> {
        let response = self
            .post_json(
                "/api/v1/admin/users/bulk",
                Some(ADMIN_TOKEN),
                &json!({"count": count, "prefix": prefix, "balance_cents": balance_cents}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("json");
        body["users"]
            .as_array()
            .expect("users")
            .iter()
            .map(|u| User {
                id: u["user_id"].as_i64().expect("id"),
                token: u["token"].as_str().expect("token").to_string(),
            })
            .collect()
    }

    pub async fn create_player(&self, price_cents: i64) -> i64 {
        let response = self
            .post_json(
                "/api/v1/admin/players",
                Some(ADMIN_TOKEN),
                &json!({"name": "Test Player", "team": "Test FC", "position": "FW",
                        "price_cents": price_cents}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("json");
        body["id"].as_i64().expect("id")
    }

    pub async fn order(&self, token: &str, key: &str, body: &Value) -> Response {
        self.client
            .post(self.url("/api/v1/orders"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// An order of `user`'s that must fill (201).
    pub async fn trade(&self, user: &User, side: &str, player: i64, quantity: i64, key: &str) {
        let response = self
            .order(
                &user.token,
                key,
                &json!({"player_id": player, "side": side, "quantity": quantity}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{side} {key}");
    }

    pub async fn me(&self, token: &str) -> Value {
        let response = self.get("/api/v1/me", Some(token)).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    pub async fn portfolio(&self, token: &str) -> Value {
        let response = self.get("/api/v1/portfolio", Some(token)).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    /// The user's order history (default limit).
    pub async fn orders(&self, token: &str) -> Value {
        let response = self.get("/api/v1/orders", Some(token)).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    /// Every player.
    pub async fn players(&self) -> Value {
        let response = self.get("/api/v1/players", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    pub async fn audit(&self) -> Value {
        let response = self.get("/api/v1/admin/audit", Some(ADMIN_TOKEN)).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    /// Runs SQL directly, for arranging states the API cannot reach (e.g. a
    /// trade lock before the feed exists) and for checking raw rows.
    pub async fn sql(&self, statement: &str) -> Vec<tokio_postgres::Row> {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client.query(statement, &[]).await.expect("sql")
    }

    /// Runs statements directly as one implicit transaction (a simple
    /// query), returning Postgres' answer, refusals included.
    pub async fn try_sql(&self, statements: &str) -> Result<(), tokio_postgres::Error> {
        let (client, connection) =
            tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client.batch_execute(statements).await
    }
}

/// Asserts the error shape and code, returning the body.
/// Counts and sums of everything a refused request could have changed:
/// users, players, orders, sales, purchases, ledger entries, total cash,
/// total held, total shares, total event epochs and stored idempotency keys.
pub const BOOK_TOTALS_SQL: &str = "SELECT
    (SELECT count(*) FROM users), (SELECT count(*) FROM players),
    (SELECT count(*) FROM orders), (SELECT count(*) FROM sales),
    (SELECT count(*) FROM purchases), (SELECT count(*) FROM ledger_entries),
    (SELECT coalesce(sum(cash_cents), 0)::bigint FROM users),
    (SELECT coalesce(sum(held_cents), 0)::bigint FROM users),
    (SELECT coalesce(sum(quantity), 0)::bigint FROM holdings),
    (SELECT coalesce(sum(epoch), 0)::bigint FROM players),
    (SELECT count(*) FROM idempotency_keys)";

/// [`BOOK_TOTALS_SQL`] on the app's database.
pub async fn book_totals(app: &TestApp) -> Vec<i64> {
    let row = &app.sql(BOOK_TOTALS_SQL).await[0];
    (0..row.len()).map(|i| row.get::<_, i64>(i)).collect()
}

pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    let actual = response.status();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(actual, status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["message"].is_string(), "body: {body}");
    body
}

impl TestApp {
    /// Stops the server and its background tasks (leadership included).
    pub async fn stop(&self) {
        if let Some(handle) = &self.handle {
            handle.stop(true).await;
        }
    }

    /// A gauge or counter value from /metrics (first series of that name).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics", None).await.text().await.unwrap();
        text.lines()
            .find(|line| line.starts_with(name) && !line.starts_with('#'))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    }

    pub async fn push_event(&self, event_id: &str, player: i64, kind: &str) -> Response {
        self.post_json(
            "/api/v1/admin/feed/events",
            Some(ADMIN_TOKEN),
            &json!({"event_id": event_id, "match_id": "m1", "player_id": player, "kind": kind,
                    "occurred_at": "2026-11-22T15:04:05.000Z", "minute": 37}),
        )
        .await
    }

    pub async fn player(&self, id: i64) -> Value {
        self.get(&format!("/api/v1/players/{id}"), None)
            .await
            .json()
            .await
            .unwrap()
    }

    pub async fn ws(&self, token: Option<&str>) -> WsClient {
        let mut url = format!("{}/ws", self.address.replace("http://", "ws://"));
        if let Some(token) = token {
            url.push_str(&format!("?token={token}"));
        }
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        WsClient { stream }
    }
}

/// Panics unless `frame` is a `WsServerMessage` as the OpenAPI document
/// describes it: every frame any API test receives is checked.
pub fn assert_documented_frame(frame: &Value) {
    static VALIDATOR: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| documented_schema("WsServerMessage"));
    let errors: Vec<String> = validator
        .iter_errors(frame)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "frame does not match WsServerMessage: {frame}\n{}",
        errors.join("\n")
    );
}

/// A validator for the component schema `name` of the served OpenAPI
/// document (its references made local to a standalone JSON Schema).
pub fn documented_schema(name: &str) -> jsonschema::Validator {
    let document = matchday::http::openapi::document();
    let schemas = document["components"]["schemas"]
        .to_string()
        .replace("#/components/schemas/", "#/$defs/");
    let defs: Value = serde_json::from_str(&schemas).expect("schemas are JSON");
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        "$ref": format!("#/$defs/{name}"),
    });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the documented schema compiles")
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A test WebSocket client speaking JSON text frames.
pub struct WsClient {
    pub stream: WsStream,
}

/// What a read from the socket produced.
#[derive(Debug)]
pub enum WsRead {
    Json(Value),
    Closed(Option<u16>),
    Timeout,
}

impl WsClient {
    pub async fn send(&mut self, value: Value) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(
                value.to_string(),
            ))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, message: tokio_tungstenite::tungstenite::Message) {
        use futures_util::SinkExt;
        let _ = self.stream.send(message).await;
    }

    /// The next JSON message (pings are skipped) within `timeout`.
    pub async fn read(&mut self, timeout: std::time::Duration) -> WsRead {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match next {
                Err(_) => return WsRead::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return WsRead::Closed(None),
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).expect("server sends JSON");
                    assert_documented_frame(&frame);
                    return WsRead::Json(frame);
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return WsRead::Closed(frame.map(|f| u16::from(f.code)))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Reads until a message of `kind` arrives (others are dropped).
    pub async fn expect(&mut self, kind: &str, timeout: std::time::Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                WsRead::Json(value) if value["type"] == kind => return value,
                WsRead::Json(_) => continue,
                other => panic!("waiting for {kind}: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Drops (flash sales)
// ---------------------------------------------------------------------------

impl TestApp {
    /// `POST /api/v1/admin/sales` with `body`, as the admin.
    pub async fn create_sale(&self, body: &Value) -> Response {
        self.post_json("/api/v1/admin/sales", Some(ADMIN_TOKEN), body)
            .await
    }

    /// An open drop (no `starts_at`) of `total_units` at `unit_price_cents`.
    pub async fn create_drop(
        &self,
        player: i64,
        total_units: i64,
        unit_price_cents: i64,
        max_per_user: Option<i64>,
    ) -> Value {
        let mut body = json!({"player_id": player, "name": "Test Drop",
                              "total_units": total_units, "unit_price_cents": unit_price_cents});
        if let Some(max) = max_per_user {
            body["max_per_user"] = json!(max);
        }
        let response = self.create_sale(&body).await;
        let status = response.status();
        let sale: Value = response.json().await.expect("json");
        assert_eq!(status, StatusCode::CREATED, "create drop: {sale}");
        sale
    }

    /// `POST /api/v1/sales/{sale}/purchases` with an `Idempotency-Key`.
    pub async fn purchase(&self, token: &str, sale: i64, key: &str, quantity: i64) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/sales/{sale}/purchases")))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({"quantity": quantity}))
            .send()
            .await
            .expect("request sent")
    }

    /// `GET /api/v1/sales/{sale}` (public), asserting 200.
    pub async fn sale(&self, sale: i64) -> Value {
        let response = self.get(&format!("/api/v1/sales/{sale}"), None).await;
        assert_eq!(response.status(), StatusCode::OK, "sale {sale}");
        response.json().await.expect("json")
    }

    /// `GET /api/v1/admin/sales/{sale}/audit`, asserting 200.
    pub async fn sale_audit(&self, sale: i64) -> Value {
        let response = self
            .get(
                &format!("/api/v1/admin/sales/{sale}/audit"),
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "audit of sale {sale}");
        response.json().await.expect("json")
    }

    /// The caller's own purchases in `sale`, asserting 200.
    pub async fn purchases(&self, token: &str, sale: i64) -> Vec<Value> {
        let response = self
            .get(&format!("/api/v1/sales/{sale}/purchases"), Some(token))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "purchases of sale {sale}"
        );
        let body: Value = response.json().await.expect("json");
        body.as_array().expect("an array of purchases").clone()
    }

    /// `POST /api/v1/sales/{sale}/waitlist` without a body.
    pub async fn join_waitlist(&self, token: &str, sale: i64) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/sales/{sale}/waitlist")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    /// Polls `/readyz` until it answers 200 (Postgres and Redis both up).
    pub async fn wait_until_ready(&self, deadline: std::time::Duration) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let response = self.client.get(self.url("/readyz")).send().await;
            if matches!(&response, Ok(r) if r.status() == StatusCode::OK) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "/readyz not 200 within {deadline:?}: {response:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Polls the sale audit until no unit is `reserved` or `held` (every
/// purchase is `completed` or `failed`), returning that audit.
pub async fn wait_until_settled(app: &TestApp, sale: i64, deadline: std::time::Duration) -> Value {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let audit = app.sale_audit(sale).await;
        let unsettled = audit["reserved_units"].as_i64().expect("reserved_units")
            + audit["held_units"].as_i64().expect("held_units");
        if unsettled == 0 {
            return audit;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "sale {sale} not settled within {deadline:?}: {audit}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Deletes every Redis key that starts with `prefix` (SCAN MATCH, then DEL),
/// never anything else: other test files share this Redis. Returns how many
/// keys were deleted.
pub async fn delete_redis_keys(redis_url: &str, prefix: &str) -> i64 {
    use fred::prelude::*;
    use futures_util::TryStreamExt;

    let mut pattern = String::new();
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    let config = Config::from_url(redis_url).expect("redis url");
    let client = Builder::from_config(config).build().expect("redis client");
    client.init().await.expect("connect to redis");
    let keys: Vec<fred::types::Key> = client
        .scan_buffered(pattern, Some(1_000), None)
        .try_collect()
        .await
        .expect("scan");
    let mut deleted = 0;
    for chunk in keys.chunks(500) {
        // SCAN only matched the prefix; check again before deleting anyway.
        let chunk: Vec<fred::types::Key> = chunk
            .iter()
            .filter(|k| k.as_bytes().starts_with(prefix.as_bytes()))
            .cloned()
            .collect();
        if chunk.is_empty() {
            continue;
        }
        let removed: i64 = client.del(chunk).await.expect("del");
        deleted += removed;
    }
    let _ = client.quit().await;
    deleted
}

/// A `redis-server` of the test's own on a free port (no persistence), killed
/// when dropped, panics included. `MATCHDAY_TEST_REDIS_SERVER` names the
/// binary (default: `redis-server` on PATH).
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let mut server = RedisServer::reserved();
        server.spawn().await;
        server
    }

    /// A free port with no server on it yet: [`RedisServer::start_now`]
    /// starts one there.
    pub fn reserved() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        RedisServer { port, child: None }
    }

    pub async fn start_now(&mut self) {
        self.spawn().await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server and starts an empty one on the same port.
    pub async fn restart_empty(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // std's kill is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn spawn(&mut self) {
        let binary = env_or("MATCHDAY_TEST_REDIS_SERVER", "redis-server");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut command = std::process::Command::new(&binary);
            // Dies with the test process, even one killed by a timeout.
            // SAFETY: prctl is async-signal-safe and touches only the child.
            unsafe {
                use std::os::unix::process::CommandExt;
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = command
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {binary} (is it on PATH?): {e}"));
            // Up when it answers PING; retried if it exits (port not free yet).
            loop {
                if redis_pings(self.port).await {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server on port {} did not come up", self.port);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server on port {} kept exiting",
                self.port
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn redis_pings(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<bool, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}

/// Runs only the HOLD step of settlement on the app's database, as a worker
/// stopped between HOLD and CAPTURE leaves it.
pub async fn hold_only(database_url: &str, max: usize) -> usize {
    matchday::sales::testing::hold_only(database_url, max).await
}
