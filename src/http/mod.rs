//! The HTTP surface: routes, the error shape, request checks and wire types.
//!
//! Maps module errors to status codes (only here), and never holds business
//! rules or SQL.

mod assets;
mod error;
mod extract;
mod handlers;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::Service;
use actix_web::{web, App, HttpServer};
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
    let resource = |path: &str| web::resource(path).default_service(web::to(wrong_method));
    cfg.service(
        resource("/")
            .route(web::get().to(assets::index))
            .route(web::head().to(assets::index)),
    )
    .service(
        resource("/assets/{version}/{name:.*}")
            .wrap(actix_web::middleware::Compress::default())
            .route(web::get().to(assets::asset))
            .route(web::head().to(assets::asset)),
    )
    .service(resource("/healthz").route(web::get().to(healthz)))
    .service(resource("/readyz").route(web::get().to(readyz)))
    .service(resource("/metrics").route(web::get().to(metrics)))
    .service(resource("/ws").route(web::get().to(websocket)))
    .service(
        web::scope("/api/v1")
            .service(resource("/auth/register").route(web::post().to(register)))
            .service(resource("/auth/login").route(web::post().to(login)))
            .service(resource("/auth/logout").route(web::post().to(logout)))
            .service(resource("/me").route(web::get().to(me)))
            .service(resource("/players").route(web::get().to(list_players)))
            .service(resource("/players/{id}").route(web::get().to(get_player)))
            .service(resource("/players/{id}/events").route(web::get().to(player_events)))
            .service(resource("/events").route(web::get().to(recent_events)))
            // A chart's or sparkline's history is repetitive JSON: gzip
            // shrinks it several times over for phones on a stadium's network.
            .service(
                resource("/players/{id}/history")
                    .wrap(actix_web::middleware::Compress::default())
                    .route(web::get().to(player_history)),
            )
            .service(
                resource("/orders")
                    .route(web::post().to(place_order))
                    .route(web::get().to(list_orders)),
            )
            .service(resource("/orders/{id}").route(web::get().to(get_order)))
            .service(resource("/portfolio").route(web::get().to(portfolio)))
            .service(resource("/leaderboard").route(web::get().to(leaderboard)))
            .service(resource("/leaderboard/me").route(web::get().to(leaderboard_me)))
            .service(resource("/admin/users/bulk").route(web::post().to(bulk_users)))
            .service(resource("/admin/players").route(web::post().to(create_player)))
            .service(resource("/admin/audit").route(web::get().to(audit)))
            .service(resource("/admin/fairness/suspects").route(web::get().to(fairness_suspects)))
            .service(resource("/admin/feed/events").route(web::post().to(push_event)))
            .service(resource("/feed/webhook").route(web::post().to(feed_webhook)))
            .service(resource("/admin/sales").route(web::post().to(create_sale)))
            .service(resource("/admin/sales/{id}/audit").route(web::get().to(sale_audit)))
            .service(resource("/sales").route(web::get().to(list_sales)))
            .service(resource("/sales/{id}").route(web::get().to(get_sale)))
            .service(
                resource("/sales/{id}/purchases")
                    .route(web::post().to(purchase))
                    .route(web::get().to(list_purchases)),
            )
            .service(
                resource("/sales/{id}/purchases/{purchase_id}").route(web::get().to(get_purchase)),
            )
            .service(resource("/sales/{id}/waitlist").route(web::post().to(join_waitlist))),
    )
    .default_service(web::to(assets::fallback));
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
