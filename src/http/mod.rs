//! The HTTP surface: routes, the error shape, request checks and wire types.
//!
//! Maps module errors to status codes (only here), and never holds business
//! rules or SQL.

mod assets;
mod error;
mod extract;
mod handlers;
pub mod openapi;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::Service;
use actix_web::http::Method;
use actix_web::{web, App, HttpServer, Resource, Route};
use deadpool_postgres::Pool;
use futures_util::FutureExt;
use tracing::Instrument;

pub use assets::Assets;
pub use error::ApiError;

use crate::auth::AuthService;
use crate::broadcast::ws::SocketLimits;
use crate::broadcast::Hub;
use crate::bus::Bus;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::players::PlayerStore;
use crate::pricing::PricingService;
use crate::trading::TradingService;

/// What every handler can reach.
pub struct AppState {
    pub auth: Arc<AuthService>,
    pub trading: Arc<TradingService>,
    pub players: Arc<dyn PlayerStore>,
    pub ledger: Arc<dyn Ledger>,
    pub bus: Bus,
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    pub pricing: Arc<PricingService>,
    pub hub: Arc<Hub>,
    pub socket_limits: SocketLimits,
    pub max_connections: usize,
    pub leadership: crate::leader::Leadership,
    pub limits: Arc<crate::limits::RateLimits>,
    pub trust_forwarded_for: bool,
    pub sales: Arc<crate::sales::SalesService>,
    pub leaderboard: Arc<crate::leaderboard::Leaderboard>,
    /// The embedded browser app.
    pub assets: Arc<Assets>,
    /// Checks signed feed pushes; None when `feed.webhook_secret` is unset.
    pub webhook: Option<Arc<crate::ingest::webhook::WebhookVerifier>>,
    /// `trading.max_feed_lag_seconds`: the fairness review's default lag.
    pub max_feed_lag_seconds: u64,
}

/// Registers every route of API.md, and the browser app's.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use handlers::*;
    use Method as M;
    cfg.service(resource(
        "/",
        [
            (M::GET, web::to(assets::index)),
            (M::HEAD, web::to(assets::index)),
        ],
    ))
    .service(
        resource(
            "/assets/{version}/{name:.*}",
            [
                (M::GET, web::to(assets::asset)),
                (M::HEAD, web::to(assets::asset)),
            ],
        )
        .wrap(actix_web::middleware::Compress::default()),
    )
    .service(resource("/healthz", [(M::GET, web::to(healthz))]))
    .service(resource("/readyz", [(M::GET, web::to(readyz))]))
    .service(resource("/metrics", [(M::GET, web::to(metrics))]))
    .service(resource("/ws", [(M::GET, web::to(websocket))]))
    .service(
        web::scope("/api/v1")
            .service(resource("/auth/register", [(M::POST, web::to(register))]))
            .service(resource("/auth/login", [(M::POST, web::to(login))]))
            .service(resource("/auth/logout", [(M::POST, web::to(logout))]))
            .service(resource("/me", [(M::GET, web::to(me))]))
            .service(resource("/players", [(M::GET, web::to(list_players))]))
            .service(resource("/players/{id}", [(M::GET, web::to(get_player))]))
            .service(resource(
                "/players/{id}/events",
                [(M::GET, web::to(player_events))],
            ))
            .service(resource("/events", [(M::GET, web::to(recent_events))]))
            // A chart's or sparkline's history is repetitive JSON: gzip
            // shrinks it several times over for phones on a stadium's network.
            .service(
                resource("/players/{id}/history", [(M::GET, web::to(player_history))])
                    .wrap(actix_web::middleware::Compress::default()),
            )
            .service(resource(
                "/orders",
                [
                    (M::POST, web::to(place_order)),
                    (M::GET, web::to(list_orders)),
                ],
            ))
            .service(resource("/orders/{id}", [(M::GET, web::to(get_order))]))
            .service(resource("/portfolio", [(M::GET, web::to(portfolio))]))
            .service(resource("/leaderboard", [(M::GET, web::to(leaderboard))]))
            .service(resource(
                "/leaderboard/me",
                [(M::GET, web::to(leaderboard_me))],
            ))
            .service(resource(
                "/admin/users/bulk",
                [(M::POST, web::to(bulk_users))],
            ))
            .service(resource(
                "/admin/players",
                [(M::POST, web::to(create_player))],
            ))
            .service(resource("/admin/audit", [(M::GET, web::to(audit))]))
            .service(resource(
                "/admin/fairness/suspects",
                [(M::GET, web::to(fairness_suspects))],
            ))
            .service(resource(
                "/admin/feed/events",
                [(M::POST, web::to(push_event))],
            ))
            .service(resource(
                "/feed/webhook",
                [(M::POST, web::to(feed_webhook))],
            ))
            .service(resource("/admin/sales", [(M::POST, web::to(create_sale))]))
            .service(resource(
                "/admin/sales/{id}/audit",
                [(M::GET, web::to(sale_audit))],
            ))
            .service(resource("/sales", [(M::GET, web::to(list_sales))]))
            .service(resource("/sales/{id}", [(M::GET, web::to(get_sale))]))
            .service(resource(
                "/sales/{id}/purchases",
                [
                    (M::POST, web::to(purchase)),
                    (M::GET, web::to(list_purchases)),
                ],
            ))
            .service(resource(
                "/sales/{id}/purchases/{purchase_id}",
                [(M::GET, web::to(get_purchase))],
            ))
            .service(resource(
                "/sales/{id}/waitlist",
                [(M::POST, web::to(join_waitlist))],
            ))
            .service(resource("/openapi.json", [(M::GET, web::to(openapi_json))]))
            .service(resource("/docs", [(M::GET, web::to(api_docs))])),
    )
    .default_service(web::to(assets::fallback));
}

/// A resource answering `routes`' methods; any other method is 405 with an
/// `Allow` header naming them (RFC 9110 §15.5.6).
fn resource<const N: usize>(path: &str, routes: [(Method, Route); N]) -> Resource {
    let allow: String = routes
        .iter()
        .map(|(method, _)| method.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut resource = web::resource(path).default_service(web::to(move || {
        let allow = allow.clone();
        async move { handlers::wrong_method(&allow) }
    }));
    for (method, route) in routes {
        resource = resource.route(route.method(method));
    }
    resource
}

/// Most bytes of header names and values one request may carry (actix's own
/// limit is far higher); nothing this API reads comes near it.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest path and query string.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// 431 or 414 for a request whose headers or URI are past the limits above.
fn oversized(req: &actix_web::dev::ServiceRequest) -> Option<ApiError> {
    use actix_web::http::StatusCode;
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("request headers are limited to {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let uri = req.uri().path().len() + req.uri().query().map_or(0, str::len);
    if uri > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the path and query are limited to {MAX_URI_BYTES} bytes"),
        ));
    }
    None
}

/// Builds the HTTP server on an already-bound listener.
pub fn server(
    state: AppState,
    listener: std::net::TcpListener,
    workers: usize,
    shutdown_timeout_seconds: u64,
) -> std::io::Result<actix_web::dev::Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        let metrics = state.metrics.clone();
        App::new()
            .app_data(state.clone())
            .wrap_fn(move |req, service| {
                let started = Instant::now();
                let method = req.method().clone();
                let span = tracing::info_span!("http", %method, path = %req.path());
                let metrics = metrics.clone();
                service
                    .call(req)
                    .map(move |result| {
                        if let Ok(response) = &result {
                            let route = response
                                .request()
                                .match_pattern()
                                .unwrap_or_else(|| "unmatched".to_string());
                            let status = response.status().as_u16();
                            metrics.observe_request(method.as_str(), &route, status, started);
                            tracing::debug!(status, route, "request done");
                        }
                        result
                    })
                    .instrument(span)
            })
            .wrap_fn(|req, service| {
                let call = match oversized(&req) {
                    None => Ok(service.call(req)),
                    Some(refused) => Err(refused),
                };
                async move {
                    match call {
                        Ok(call) => call.await,
                        Err(refused) => Err(refused.into()),
                    }
                }
            })
            .configure(routes)
    })
    .shutdown_timeout(shutdown_timeout_seconds)
    // The server stops on SIGINT/SIGTERM itself and drains in-flight work.
    .listen(listener)?;
    let server = if workers > 0 {
        server.workers(workers)
    } else {
        server
    };
    Ok(server.run())
}
