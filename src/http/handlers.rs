//! Request handlers: check the request (see `extract`), call one service,
//! shape the answer (see `wire`). No business rules live here.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use super::error::ApiError;
use super::extract;
use super::wire::*;
use super::AppState;
use crate::auth::{Password, Username, MAX_BULK_USERS, MAX_OPENING_BALANCE_CENTS};
use crate::broadcast::{self, AcceptError};
use crate::domain::{Cents, PlayerId, Quantity, Side, UserId};
use crate::idempotency;
use crate::ingest::EventKind;
use crate::players::{NewPlayer, MAX_PRICE_CENTS, MAX_TEXT_CHARS};
use crate::pricing::{Applied, NewEvent, PricingError, Tick};
use crate::sales;
use crate::trading::{NewOrder, Order, ORDERS_ENDPOINT};

type Reply = Result<HttpResponse, ApiError>;

/// Default and maximum `limit` of `/players/{id}/history`.
const HISTORY_LIMIT: (i64, i64) = (500, 5_000);
/// Default and maximum `limit` of `/events` and `/players/{id}/events`.
const EVENTS_LIMIT: (i64, i64) = (20, 100);
/// Default and maximum `limit` of `/orders`.
const ORDERS_LIMIT: (i64, i64) = (50, 500);
/// Default and maximum `limit` of `/leaderboard`.
const LEADERBOARD_LIMIT: (i64, i64) = (100, 1_000);

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is up", body = HealthResponse),
    ),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthResponse { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Postgres and Redis both answer", body = ReadyResponse),
        (status = 503, description = "Postgres or Redis does not answer", body = ReadyResponse),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (postgres, redis) = tokio::join!(crate::db::is_ready(&state.pool), state.bus.is_ready());
    let status = if postgres && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(ReadyResponse { postgres, redis })
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "documentation",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", body = serde_json::Value),
    ),
)]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(super::openapi::document_json())
}

#[utoipa::path(
    get,
    path = "/api/v1/docs",
    tag = "documentation",
    responses(
        (status = 200, description = "The reference page (Swagger UI, served by this binary)", body = String, content_type = "text/html"),
        (status = 304, description = "Unchanged since the `ETag` named in `If-None-Match`"),
    ),
)]
pub async fn api_docs(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    super::assets::docs_page(&req, &state.assets)
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4"),
    ),
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .ws_connections
        .set(state.hub.connections() as i64);
    state
        .metrics
        .leader
        .set(state.leadership.is_leader() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// The signed-in user, within their rate limit.
fn signed_in(state: &AppState, req: &HttpRequest) -> Result<crate::auth::token::Claims, ApiError> {
    let claims = extract::user(req, &state.auth)?;
    state.limits.check_user(claims.user_id)?;
    Ok(claims)
}

/// A registration or login attempt, within its client IP's rate limit.
fn check_ip_limit(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let ip = if state.trust_forwarded_for {
        req.connection_info().realip_remote_addr().and_then(|addr| {
            addr.parse::<std::net::IpAddr>()
                .ok()
                .or_else(|| addr.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        })
    } else {
        req.peer_addr().map(|addr| addr.ip())
    };
    if let Some(ip) = ip {
        state.limits.check_ip(ip)?;
    }
    Ok(())
}

fn parse_credentials(body: &CredentialsRequest) -> Result<(Username, Password), ApiError> {
    let username = Username::parse(&body.username).ok_or_else(|| {
        ApiError::invalid_input("username must be 3-32 characters of a-z, 0-9 and _")
    })?;
    let password = Password::parse(&body.password)
        .ok_or_else(|| ApiError::invalid_input("password must be 8-128 characters"))?;
    Ok((username, password))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "accounts",
    request_body = CredentialsRequest,
    responses(
        (status = 201, description = "Registered and signed in", body = RegisterResponse),
    ),
)]
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    check_ip_limit(&state, &req)?;
    let body: CredentialsRequest = extract::json(&req, payload).await?;
    let (username, password) = parse_credentials(&body)?;
    let (user_id, token) = state.auth.register(&username, password).await?;
    state
        .leaderboard
        .joined(
            &[(user_id, username.as_str().to_string())],
            state.auth.starting_balance(),
        )
        .await;
    Ok(HttpResponse::Created().json(RegisterResponse {
        user_id: user_id.0,
        username: username.as_str().to_string(),
        token,
        balance_cents: state.auth.starting_balance().get(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "accounts",
    request_body = CredentialsRequest,
    responses(
        (status = 200, description = "Signed in", body = LoginResponse),
    ),
)]
pub async fn login(state: web::Data<AppState>, req: HttpRequest, payload: web::Payload) -> Reply {
    check_ip_limit(&state, &req)?;
    let body: CredentialsRequest = extract::json(&req, payload).await?;
    // A name or password that could never have been registered cannot
    // match: same answer as a wrong password, without revealing which.
    let username = Username::parse(&body.username).ok_or_else(invalid_credentials)?;
    if body.password.chars().count() > 128 {
        return Err(invalid_credentials());
    }
    let (user_id, username, token) = state.auth.login(&username, &body.password).await?;
    Ok(HttpResponse::Ok().json(LoginResponse {
        user_id: user_id.0,
        username,
        token,
    }))
}

fn invalid_credentials() -> ApiError {
    ApiError::from(crate::auth::AuthError::InvalidCredentials)
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "accounts",
    security(("user" = [])),
    responses(
        (status = 204, description = "The token is revoked on every replica"),
    ),
)]
pub async fn logout(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    let claims = signed_in(&state, &req)?;
    state.auth.logout(&claims, &state.bus).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "accounts",
    security(("user" = [])),
    responses(
        (status = 200, description = "The signed-in user", body = MeResponse),
    ),
)]
pub async fn me(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    let claims = signed_in(&state, &req)?;
    let user = state.auth.me(claims.user_id).await?;
    Ok(HttpResponse::Ok().json(MeResponse::from(user)))
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/users/bulk",
    tag = "admin",
    security(("admin" = [])),
    request_body = BulkUsersRequest,
    responses(
        (status = 201, description = "Created, with a token each", body = BulkUsersResponse),
    ),
)]
pub async fn bulk_users(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    extract::admin(&req, &state.auth)?;
    let body: BulkUsersRequest = extract::json(&req, payload).await?;
    if !(1..=MAX_BULK_USERS).contains(&body.count) {
        return Err(ApiError::invalid_input(format!(
            "count must be 1-{MAX_BULK_USERS}"
        )));
    }
    let balance = body
        .balance_cents
        .unwrap_or(state.auth.starting_balance().get());
    if !(0..=MAX_OPENING_BALANCE_CENTS).contains(&balance) {
        return Err(ApiError::invalid_input(format!(
            "balance_cents must be 0-{MAX_OPENING_BALANCE_CENTS}"
        )));
    }
    let usernames = (1..=body.count)
        .map(|n| Username::parse(&format!("{}{n}", body.prefix)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            ApiError::invalid_input(
                "prefix + number must make usernames of 3-32 characters of a-z, 0-9 and _",
            )
        })?;
    let created = state
        .auth
        .bulk_create(&usernames, Cents::new(balance))
        .await?;
    let joined: Vec<(UserId, String)> = created
        .iter()
        .map(|(id, username, _)| (*id, username.clone()))
        .collect();
    state.leaderboard.joined(&joined, Cents::new(balance)).await;
    Ok(HttpResponse::Created().json(BulkUsersResponse {
        users: created
            .into_iter()
            .map(|(id, username, token)| LoginResponse {
                user_id: id.0,
                username,
                token,
            })
            .collect(),
    }))
}

fn checked_text(value: &str, field: &str) -> Result<String, ApiError> {
    let trimmed = value.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS || trimmed.chars().any(char::is_control) {
        return Err(ApiError::invalid_input(format!(
            "{field} must be 1-{MAX_TEXT_CHARS} printable characters"
        )));
    }
    Ok(trimmed.to_string())
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/players",
    tag = "admin",
    security(("admin" = [])),
    request_body = NewPlayerRequest,
    responses(
        (status = 201, description = "Listed", body = PlayerResponse),
    ),
)]
pub async fn create_player(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    extract::admin(&req, &state.auth)?;
    let body: NewPlayerRequest = extract::json(&req, payload).await?;
    let new = NewPlayer {
        name: checked_text(&body.name, "name")?,
        team: checked_text(&body.team, "team")?,
        position: checked_text(&body.position, "position")?,
        price: Cents::new(body.price_cents),
    };
    if !(1..=MAX_PRICE_CENTS).contains(&body.price_cents) {
        return Err(ApiError::invalid_input(format!(
            "price_cents must be 1-{MAX_PRICE_CENTS}"
        )));
    }
    let player = state.players.create(new).await?;
    // Every replica's hub learns the new player at once.
    state
        .pricing
        .sink()
        .ticks(&[Tick {
            player: player.id,
            price: player.price,
            epoch: player.epoch,
            seq: 0,
            at: chrono::Utc::now(),
            locked_until: None,
        }])
        .await;
    Ok(HttpResponse::Created().json(PlayerResponse::from(player)))
}

#[utoipa::path(
    get,
    path = "/api/v1/players",
    tag = "players",
    responses(
        (status = 200, description = "Every player at the live price", body = Vec<PlayerResponse>),
    ),
)]
pub async fn list_players(state: web::Data<AppState>) -> Reply {
    let players = state.players.list().await?;
    let body: Vec<PlayerResponse> = players.into_iter().map(PlayerResponse::from).collect();
    Ok(HttpResponse::Ok().json(body))
}

#[utoipa::path(
    get,
    path = "/api/v1/players/{id}",
    tag = "players",
    params(
        ("id" = i64, Path, minimum = 1, description = "Player id"),
    ),
    responses(
        (status = 200, description = "The player", body = PlayerResponse),
    ),
)]
pub async fn get_player(state: web::Data<AppState>, path: web::Path<String>) -> Reply {
    let id = extract::path_id(&path, "player")?;
    let player = state
        .players
        .get(PlayerId(id))
        .await?
        .ok_or_else(|| ApiError::not_found("no such player"))?;
    Ok(HttpResponse::Ok().json(PlayerResponse::from(player)))
}

#[utoipa::path(
    get,
    path = "/api/v1/players/{id}/history",
    tag = "players",
    params(
        ("id" = i64, Path, minimum = 1, description = "Player id"),
        ("limit" = Option<i64>, Query, minimum = 1, description = "Most recent points to return, oldest first: default 500, at most 5000 (larger is capped)"),
    ),
    responses(
        (status = 200, description = "Price points, oldest first", body = Vec<PricePointResponse>),
    ),
)]
pub async fn player_history(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Reply {
    let limit = extract::limit(&req, HISTORY_LIMIT.0, HISTORY_LIMIT.1)?;
    let id = existing_player(&state, &path).await?;
    let points = state.players.history(id, limit).await?;
    let body: Vec<PricePointResponse> = points.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// The player a path names, or 404.
async fn existing_player(state: &AppState, path: &str) -> Result<PlayerId, ApiError> {
    let id = PlayerId(extract::path_id(path, "player")?);
    match state.players.get(id).await? {
        Some(_) => Ok(id),
        None => Err(ApiError::not_found("no such player")),
    }
}

/// Addition: the most recently applied events of all players, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "players",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, description = "Default 20, at most 100 (larger is capped)"),
    ),
    responses(
        (status = 200, description = "Applied events, newest first", body = Vec<RecordedEventResponse>),
    ),
)]
pub async fn recent_events(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    let limit = extract::limit(&req, EVENTS_LIMIT.0, EVENTS_LIMIT.1)?;
    let events = state.pricing.recent_events(None, limit).await?;
    let body: Vec<RecordedEventResponse> = events.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// Addition: one player's most recently applied events, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/players/{id}/events",
    tag = "players",
    params(
        ("id" = i64, Path, minimum = 1, description = "Player id"),
        ("limit" = Option<i64>, Query, minimum = 1, description = "Default 20, at most 100 (larger is capped)"),
    ),
    responses(
        (status = 200, description = "The player's applied events, newest first", body = Vec<RecordedEventResponse>),
    ),
)]
pub async fn player_events(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Reply {
    let limit = extract::limit(&req, EVENTS_LIMIT.0, EVENTS_LIMIT.1)?;
    let id = existing_player(&state, &path).await?;
    let events = state.pricing.recent_events(Some(id), limit).await?;
    let body: Vec<RecordedEventResponse> = events.into_iter().map(Into::into).collect();
    Ok(HttpResponse::Ok().json(body))
}

#[utoipa::path(
    post,
    path = "/api/v1/orders",
    tag = "trading",
    security(("user" = [])),
    params(
        super::openapi::IdempotencyKeyHeader,
    ),
    request_body = OrderRequest,
    responses(
        (status = 201, description = "Filled at the live price (`filled`, or `provisional` under `void_window`). A retry with the same key and body gets the stored answer", body = OrderResponse),
        (status = 202, description = "Accepted as `pending` (the `delay` policy): it fills or is cancelled at `fills_at`; follow it with `GET /api/v1/orders/{id}` or the `user` channel", body = OrderResponse),
    ),
)]
pub async fn place_order(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let claims = signed_in(&state, &req)?;
    let key = extract::idempotency_key(&req)?;
    let body: OrderRequest = extract::json(&req, payload).await?;
    let order = validate_order(claims.user_id, key, &body)?;
    let placed = state.trading.place(&order).await;
    state.metrics.count_order(order.side, &placed);
    let placed = placed?;
    match placed.outcome {
        Ok(order @ Order::Executed(_)) => {
            Ok(HttpResponse::Created().json(OrderResponse::from(order)))
        }
        Ok(order @ Order::Waiting(_)) => {
            Ok(HttpResponse::Accepted().json(OrderResponse::from(order)))
        }
        Err(rejection) => Err(rejection.into()),
    }
}

fn validate_order(
    user: UserId,
    key: idempotency::IdempotencyKey,
    body: &OrderRequest,
) -> Result<NewOrder, ApiError> {
    let side = Side::parse(&body.side)
        .ok_or_else(|| ApiError::invalid_input("side must be buy or sell"))?;
    let quantity = Quantity::new(body.quantity)
        .ok_or_else(|| ApiError::invalid_input(format!("quantity must be 1-{}", Quantity::MAX)))?;
    if body.limit_price_cents.is_some_and(|limit| limit < 1) {
        return Err(ApiError::invalid_input(
            "limit_price_cents must be at least 1",
        ));
    }
    let canonical = serde_json::to_string(body).map_err(|e| ApiError::internal(&e))?;
    Ok(NewOrder {
        user,
        player: PlayerId(body.player_id),
        side,
        quantity,
        limit: body.limit_price_cents.map(Cents::new),
        fingerprint: idempotency::fingerprint(ORDERS_ENDPOINT, &canonical),
        key,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/orders",
    tag = "trading",
    security(("user" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, description = "Default 50, at most 500 (larger is capped)"),
    ),
    responses(
        (status = 200, description = "The caller's orders, newest first", body = Vec<OrderResponse>),
    ),
)]
pub async fn list_orders(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    let claims = signed_in(&state, &req)?;
    let limit = extract::limit(&req, ORDERS_LIMIT.0, ORDERS_LIMIT.1)?;
    let orders = state.trading.orders(claims.user_id, limit).await?;
    let body: Vec<OrderResponse> = orders.into_iter().map(OrderResponse::from).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /api/v1/orders/{id}`: one of the caller's orders; 404 for anyone
/// else's, as for an unknown id.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{id}",
    tag = "trading",
    security(("user" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Order id"),
    ),
    responses(
        (status = 200, description = "One of the caller's orders", body = OrderResponse),
    ),
)]
pub async fn get_order(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Reply {
    let claims = signed_in(&state, &req)?;
    let order_id = extract::path_id(&path, "order")?;
    match state.trading.order(claims.user_id, order_id).await? {
        Some(order) => Ok(HttpResponse::Ok().json(OrderResponse::from(order))),
        None => Err(ApiError::not_found("no such order")),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/portfolio",
    tag = "trading",
    security(("user" = [])),
    responses(
        (status = 200, description = "Cash and holdings at live prices", body = PortfolioResponse),
    ),
)]
pub async fn portfolio(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    let claims = signed_in(&state, &req)?;
    let portfolio = state.trading.portfolio(claims.user_id).await?;
    Ok(HttpResponse::Ok().json(PortfolioResponse::from(portfolio)))
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/audit",
    tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "The books' invariants", body = AuditResponse),
    ),
)]
pub async fn audit(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    extract::admin(&req, &state.auth)?;
    let report = state.ledger.audit().await?;
    Ok(HttpResponse::Ok().json(AuditResponse::from(report)))
}

/// Default and maximum `limit` of the fairness review's accounts.
const SUSPECTS_LIMIT: (i64, i64) = (50, 500);
/// Fills of evidence shown per account.
const SUSPECT_EVIDENCE: usize = 20;

/// `GET /api/v1/admin/fairness/suspects`: accounts whose fills land ahead
/// of the events that favour them more often than chance (see
/// `fairness`). `lag_seconds` (default `trading.max_feed_lag_seconds`),
/// `min_fills` (default 5) and `limit` narrow it.
#[utoipa::path(
    get,
    path = "/api/v1/admin/fairness/suspects",
    tag = "admin",
    security(("admin" = [])),
    params(
        ("lag_seconds" = Option<i64>, Query, minimum = 0, description = "How far before an event a fill counts as ahead of it; default `trading.max_feed_lag_seconds`, capped at 600"),
        ("min_fills" = Option<i64>, Query, minimum = 1, description = "Accounts with fewer fills are not scored; default 5"),
        ("limit" = Option<i64>, Query, minimum = 1, description = "Accounts to list: default 50, at most 500"),
    ),
    responses(
        (status = 200, description = "Accounts ranked by how far their fills ahead of events exceed chance", body = crate::fairness::Review),
    ),
)]
pub async fn fairness_suspects(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    extract::admin(&req, &state.auth)?;
    let max_lag = crate::config::MAX_FEED_LAG_SECONDS as i64;
    let query = crate::fairness::ReviewQuery {
        lag_seconds: extract::query_int(
            &req,
            "lag_seconds",
            state.max_feed_lag_seconds as i64,
            0,
            max_lag,
        )?,
        min_fills: extract::query_int(&req, "min_fills", 5, 1, i64::MAX)?,
        limit: extract::limit(&req, SUSPECTS_LIMIT.0, SUSPECTS_LIMIT.1)?,
        evidence: SUSPECT_EVIDENCE,
    };
    let review = crate::fairness::pg::review(&state.pool, query).await?;
    Ok(HttpResponse::Ok().json(review))
}

/// Longest `event_id` accepted.
const MAX_EVENT_ID_CHARS: usize = 200;

#[utoipa::path(
    post,
    path = "/api/v1/admin/feed/events",
    tag = "feed",
    security(("admin" = [])),
    request_body = EventRequest,
    responses(
        (status = 202, description = "Applied: the price moved and trading on the player is locked", body = EventAppliedResponse),
        (status = 200, description = "Already applied (same `event_id`): nothing changed", body = EventDuplicateResponse),
    ),
)]
pub async fn push_event(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    extract::admin(&req, &state.auth)?;
    let body: EventRequest = extract::json(&req, payload).await?;
    apply_event(&state, body).await
}

/// `POST /api/v1/feed/webhook`: the same event as the admin push, signed
/// with `feed.webhook_secret` instead of carrying the admin token (see
/// `ingest::webhook`). 403 when no secret is configured; 401 for a missing,
/// malformed, stale or wrong signature, checked before anything else of the
/// body.
#[utoipa::path(
    post,
    path = "/api/v1/feed/webhook",
    tag = "feed",
    security(("webhook" = [])),
    request_body = EventRequest,
    responses(
        (status = 202, description = "Applied", body = EventAppliedResponse),
        (status = 200, description = "Already applied (same `event_id`): nothing changed", body = EventDuplicateResponse),
    ),
)]
pub async fn feed_webhook(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    let verifier = state
        .webhook
        .as_ref()
        .ok_or_else(|| ApiError::forbidden("the signed feed webhook is not configured"))?;
    let body = extract::body(&req, payload).await?;
    let signature = req
        .headers()
        .get(crate::ingest::webhook::SIGNATURE_HEADER)
        .map(|value| value.to_str().unwrap_or(""));
    verifier
        .verify(signature, &body, chrono::Utc::now().timestamp())
        .map_err(|error| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                error.to_string(),
            )
        })?;
    extract::require_json(&req)?;
    let event: EventRequest = extract::parse_json(&body)?;
    apply_event(&state, event).await
}

/// Validates and applies one pushed event (admin push and webhook alike).
async fn apply_event(state: &AppState, body: EventRequest) -> Reply {
    let visible = |text: &str, max: usize| {
        !text.is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control)
    };
    if !visible(&body.event_id, MAX_EVENT_ID_CHARS) || !visible(&body.match_id, MAX_TEXT_CHARS) {
        return Err(ApiError::invalid_input(
            "event_id and match_id must be non-empty printable text",
        ));
    }
    let kind = EventKind::parse(&body.kind)
        .ok_or_else(|| ApiError::invalid_input(format!("unknown kind {:?}", body.kind)))?;
    let occurred_at = chrono::DateTime::parse_from_rfc3339(&body.occurred_at)
        .map_err(|_| ApiError::invalid_input("occurred_at must be an RFC 3339 time"))?
        .with_timezone(&chrono::Utc);
    if body.minute.is_some_and(|m| !(0..=200).contains(&m)) {
        return Err(ApiError::invalid_input("minute must be 0-200"));
    }
    let event = NewEvent {
        event_id: body.event_id,
        match_id: body.match_id,
        player: PlayerId(body.player_id),
        kind,
        occurred_at,
        minute: body.minute,
        fence: None,
    };
    match state.pricing.apply(&event).await {
        Ok(Applied::Applied(applied)) => Ok(HttpResponse::Accepted().json(EventAppliedResponse {
            applied: true,
            player_id: applied.player.0,
            price_cents: applied.price.get(),
            epoch: applied.epoch,
            locked_until: timestamp(applied.locked_until),
            applied_at: timestamp(applied.applied_at),
        })),
        Ok(Applied::Duplicate) => Ok(HttpResponse::Ok().json(EventDuplicateResponse {
            applied: false,
            duplicate: true,
        })),
        Err(PricingError::UnknownPlayer) => Err(ApiError::not_found("no such player")),
        // Pushes carry no fence, so this cannot happen; still no panic.
        Err(PricingError::NotLeader) => Err(ApiError::internal(&"an unfenced push was fenced")),
        Err(PricingError::Unexpected(cause)) => Err(ApiError::from(cause)),
    }
}

#[utoipa::path(
    get,
    path = "/ws",
    tag = "websocket",
    params(
        ("token" = Option<String>, Query, description = "A user token: subscribes the socket to its `user` channel"),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol: see the `WebSocket` tag for its messages (`WsClientMessage`, `WsServerMessage`)"),
    ),
)]
pub async fn websocket(state: web::Data<AppState>, req: HttpRequest, body: web::Payload) -> Reply {
    let query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .map_err(|_| ApiError::bad_request("malformed query string"))?;
    let user = match query.get("token") {
        None => None,
        Some(token) => match state.auth.authenticate(token)? {
            crate::auth::Principal::User(claims) => Some(claims.user_id),
            crate::auth::Principal::Admin => return Err(ApiError::unauthorized()),
        },
    };
    broadcast::accept(
        &state.hub,
        &req,
        body,
        user,
        state.socket_limits.clone(),
        state.max_connections,
    )
    .map_err(|error| match error {
        AcceptError::Full => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "this replica holds its maximum of WebSocket connections; try another",
        )
        .retry_after(1_000),
        AcceptError::NotWebSocket => ApiError::bad_request("expected a WebSocket upgrade"),
    })
}

/// 405 for a method the route does not take, naming the ones it does.
pub fn wrong_method(allow: &str) -> HttpResponse {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
    .error_response();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(allow) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    response
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/sales",
    tag = "drops",
    security(("admin" = [])),
    request_body = NewSaleRequest,
    responses(
        (status = 201, description = "Created", body = SaleResponse),
    ),
)]
pub async fn create_sale(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Reply {
    extract::admin(&req, &state.auth)?;
    let body: NewSaleRequest = extract::json(&req, payload).await?;
    let name = checked_text(&body.name, "name")?;
    if name.chars().count() > sales::MAX_NAME_CHARS {
        return Err(ApiError::invalid_input(format!(
            "name must be at most {} characters",
            sales::MAX_NAME_CHARS
        )));
    }
    if !(1..=sales::MAX_TOTAL_UNITS).contains(&body.total_units) {
        return Err(ApiError::invalid_input(format!(
            "total_units must be 1-{}",
            sales::MAX_TOTAL_UNITS
        )));
    }
    if !(1..=MAX_PRICE_CENTS).contains(&body.unit_price_cents) {
        return Err(ApiError::invalid_input(format!(
            "unit_price_cents must be 1-{MAX_PRICE_CENTS}"
        )));
    }
    if body
        .max_per_user
        .is_some_and(|max| !(1..=sales::MAX_TOTAL_UNITS).contains(&max))
    {
        return Err(ApiError::invalid_input(format!(
            "max_per_user must be 1-{}",
            sales::MAX_TOTAL_UNITS
        )));
    }
    let starts_at = body
        .starts_at
        .as_deref()
        .map(|raw| {
            chrono::DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| ApiError::invalid_input("starts_at must be an RFC 3339 time"))
        })
        .transpose()?;
    let sale = state
        .sales
        .create(sales::NewSale {
            player: PlayerId(body.player_id),
            name,
            total_units: body.total_units,
            unit_price: Cents::new(body.unit_price_cents),
            max_per_user: body.max_per_user,
            starts_at,
        })
        .await?;
    Ok(HttpResponse::Created().json(SaleResponse::from(sale)))
}

#[utoipa::path(
    get,
    path = "/api/v1/sales",
    tag = "drops",
    responses(
        (status = 200, description = "Every sale with its live inventory", body = Vec<SaleResponse>),
    ),
)]
pub async fn list_sales(state: web::Data<AppState>) -> Reply {
    let sales = state.sales.list().await?;
    let body: Vec<SaleResponse> = sales.into_iter().map(SaleResponse::from).collect();
    Ok(HttpResponse::Ok().json(body))
}

#[utoipa::path(
    get,
    path = "/api/v1/sales/{id}",
    tag = "drops",
    params(
        ("id" = i64, Path, minimum = 1, description = "Sale id"),
    ),
    responses(
        (status = 200, description = "The sale", body = SaleResponse),
    ),
)]
pub async fn get_sale(state: web::Data<AppState>, path: web::Path<String>) -> Reply {
    let id = extract::path_id(&path, "sale")?;
    let sale = state.sales.get(id).await?;
    Ok(HttpResponse::Ok().json(SaleResponse::from(sale)))
}

#[utoipa::path(
    post,
    path = "/api/v1/sales/{id}/purchases",
    tag = "drops",
    security(("user" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Sale id"),
        super::openapi::IdempotencyKeyHeader,
    ),
    request_body = PurchaseRequestBody,
    responses(
        (status = 202, description = "Units reserved; the charge settles shortly (`reserved` → `completed` or `failed`; nobody is charged for nothing). A retry with the same key and body gets the stored answer", body = PurchaseResponse),
    ),
)]
pub async fn purchase(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Reply {
    let claims = signed_in(&state, &req)?;
    let key = extract::idempotency_key(&req)?;
    let body: PurchaseRequestBody = extract::json(&req, payload).await?;
    let quantity = Quantity::new(body.quantity)
        .ok_or_else(|| ApiError::invalid_input(format!("quantity must be 1-{}", Quantity::MAX)))?;
    // A bad id in the path names no sale: 404, after the checks above.
    let sale_id = extract::path_id(&path, "sale")?;
    let request = sales::PurchaseRequest {
        user: claims.user_id,
        sale_id,
        quantity,
        fingerprint: idempotency::fingerprint(
            sales::PURCHASES_ENDPOINT,
            &format!("{sale_id}:{}", quantity.get()),
        ),
        key,
    };
    let placed = state.sales.purchase(&request).await;
    state.metrics.count_purchase(&placed);
    match placed? {
        sales::Placed::Reserved(purchase) => {
            Ok(HttpResponse::Accepted().json(PurchaseResponse::from(purchase)))
        }
        sales::Placed::Replayed(stored) => Ok(HttpResponse::Accepted().json(stored)),
        sales::Placed::Rejected(rejection) => Err(rejection.into()),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/sales/{id}/purchases/{purchase_id}",
    tag = "drops",
    security(("user" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Sale id"),
        ("purchase_id" = i64, Path, minimum = 1, description = "Purchase id"),
    ),
    responses(
        (status = 200, description = "One of the caller's purchases", body = PurchaseResponse),
    ),
)]
pub async fn get_purchase(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Reply {
    let claims = signed_in(&state, &req)?;
    let (sale, purchase) = path.into_inner();
    let sale_id = extract::path_id(&sale, "sale")?;
    let purchase_id = extract::path_id(&purchase, "purchase")?;
    let found = state
        .sales
        .purchase_of(claims.user_id, sale_id, purchase_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such purchase"))?;
    Ok(HttpResponse::Ok().json(PurchaseResponse::from(found)))
}

#[utoipa::path(
    get,
    path = "/api/v1/sales/{id}/purchases",
    tag = "drops",
    security(("user" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Sale id"),
    ),
    responses(
        (status = 200, description = "The caller's purchases in this sale", body = Vec<PurchaseResponse>),
    ),
)]
pub async fn list_purchases(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Reply {
    let claims = signed_in(&state, &req)?;
    let sale_id = extract::path_id(&path, "sale")?;
    let purchases = state.sales.purchases_of(claims.user_id, sale_id).await?;
    let body: Vec<PurchaseResponse> = purchases.into_iter().map(PurchaseResponse::from).collect();
    Ok(HttpResponse::Ok().json(body))
}

#[utoipa::path(
    post,
    path = "/api/v1/sales/{id}/waitlist",
    tag = "drops",
    security(("user" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Sale id"),
    ),
    responses(
        (status = 201, description = "Joined; units released later go to the waitlist in order", body = WaitlistResponse),
        (status = 200, description = "Already on it", body = WaitlistResponse),
    ),
)]
pub async fn join_waitlist(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Reply {
    let claims = signed_in(&state, &req)?;
    let sale_id = extract::path_id(&path, "sale")?;
    let (position, joined) = state.sales.join_waitlist(claims.user_id, sale_id).await?;
    let status = if joined {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(WaitlistResponse { position }))
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/sales/{id}/audit",
    tag = "admin",
    security(("admin" = [])),
    params(
        ("id" = i64, Path, minimum = 1, description = "Sale id"),
    ),
    responses(
        (status = 200, description = "Units and charges reconciled", body = SaleAuditResponse),
    ),
)]
pub async fn sale_audit(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Reply {
    extract::admin(&req, &state.auth)?;
    let sale_id = extract::path_id(&path, "sale")?;
    let audit = state.sales.audit(sale_id).await?;
    Ok(HttpResponse::Ok().json(SaleAuditResponse::from(audit)))
}

#[utoipa::path(
    get,
    path = "/api/v1/leaderboard",
    tag = "leaderboard",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, description = "Default 100, at most 1000 (larger is capped)"),
    ),
    responses(
        (status = 200, description = "Ranked by net worth at live prices", body = LeaderboardResponse),
    ),
)]
pub async fn leaderboard(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    let limit = extract::limit(&req, LEADERBOARD_LIMIT.0, LEADERBOARD_LIMIT.1)?;
    let ranking = state
        .leaderboard
        .top(usize::try_from(limit).unwrap_or(1))
        .await?;
    Ok(HttpResponse::Ok().json(LeaderboardResponse {
        as_of: timestamp(ranking.as_of),
        entries: ranking.entries,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/leaderboard/me",
    tag = "leaderboard",
    security(("user" = [])),
    responses(
        (status = 200, description = "The caller's rank", body = StandingResponse),
    ),
)]
pub async fn leaderboard_me(state: web::Data<AppState>, req: HttpRequest) -> Reply {
    let claims = signed_in(&state, &req)?;
    let place = state.leaderboard.place(claims.user_id).await?;
    Ok(HttpResponse::Ok().json(StandingResponse {
        rank: place.rank,
        net_worth_cents: place.net_worth.get(),
        total_users: place.total_users,
        as_of: timestamp(place.as_of),
    }))
}
