//! Prometheus metrics for `/metrics`. One registry per process (tests run
//! several apps in one process, so nothing here is global).

use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::domain::Side;
use crate::trading::{Placed, TradingError};

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    orders: IntCounterVec,
    purchases: IntCounterVec,
    /// WebSocket connections open on this replica.
    pub ws_connections: IntGauge,
    /// 1 while this replica holds leadership (ticker, feed).
    pub leader: IntGauge,
    /// Leaderboard cycle phases: `value` (every account at live prices, CPU
    /// only) and `write` (the changed scores to Redis, and the flip).
    pub leaderboard_seconds: HistogramVec,
    /// Scores written to Redis by this replica's cycles.
    pub leaderboard_written: IntCounter,
    /// Accounts in this replica's snapshot.
    pub leaderboard_accounts: IntGauge,
    /// Orders per group-commit batch.
    pub order_batch_size: prometheus::Histogram,
    /// How long a batch's first order waited to be applied.
    pub order_queue_seconds: prometheus::Histogram,
    /// Group-commit batches that failed and were placed order by order.
    pub order_batches_replayed: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("matchday".into()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )?;
        let http_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP latency by route").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            &["method", "route"],
        )?;
        let orders = IntCounterVec::new(
            Opts::new("orders_total", "Orders by side and outcome"),
            &["side", "outcome"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_seconds.clone()))?;
        registry.register(Box::new(orders.clone()))?;
        let purchases = IntCounterVec::new(
            Opts::new("purchases_total", "Drop purchase requests by outcome"),
            &["outcome"],
        )?;
        registry.register(Box::new(purchases.clone()))?;
        let ws_connections = IntGauge::new("ws_connections", "Open WebSocket connections")?;
        let leader = IntGauge::new("leader", "1 while this replica is the leader")?;
        registry.register(Box::new(ws_connections.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        let leaderboard_seconds = HistogramVec::new(
            HistogramOpts::new(
                "leaderboard_cycle_seconds",
                "Leaderboard revaluation by phase (value: CPU; write: Redis)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["phase"],
        )?;
        let leaderboard_written = IntCounter::new(
            "leaderboard_scores_written_total",
            "Scores written to the leaderboard's sorted sets",
        )?;
        let leaderboard_accounts = IntGauge::new(
            "leaderboard_accounts",
            "Accounts in this replica's in-memory snapshot",
        )?;
        registry.register(Box::new(leaderboard_seconds.clone()))?;
        registry.register(Box::new(leaderboard_written.clone()))?;
        registry.register(Box::new(leaderboard_accounts.clone()))?;
        let order_batch_size = prometheus::Histogram::with_opts(
            HistogramOpts::new("order_batch_size", "Orders per group-commit transaction").buckets(
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
        )?;
        let order_queue_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "order_queue_seconds",
                "Queue wait of each batch's first order before its transaction",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
            ]),
        )?;
        let order_batches_replayed = IntCounter::new(
            "order_batches_replayed_total",
            "Group-commit batches that failed and were placed order by order",
        )?;
        registry.register(Box::new(order_batch_size.clone()))?;
        registry.register(Box::new(order_queue_seconds.clone()))?;
        registry.register(Box::new(order_batches_replayed.clone()))?;
        Ok(Metrics {
            registry,
            http_requests,
            http_seconds,
            orders,
            purchases,
            ws_connections,
            leader,
            leaderboard_seconds,
            leaderboard_written,
            leaderboard_accounts,
            order_batch_size,
            order_queue_seconds,
            order_batches_replayed,
        })
    }

    /// Records one finished HTTP request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, started: Instant) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_seconds
            .with_label_values(&[method, route])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts an order by its outcome.
    /// Counts one purchase request by what became of it.
    pub fn count_purchase(&self, placed: &Result<crate::sales::Placed, crate::sales::SalesError>) {
        use crate::sales::{Placed, PurchaseRejection, SalesError};
        let outcome = match placed {
            Ok(Placed::Reserved(_)) => "reserved",
            Ok(Placed::Replayed(_)) => "replayed",
            Ok(Placed::Rejected(PurchaseRejection::SoldOut)) => "sold_out",
            Ok(Placed::Rejected(PurchaseRejection::NotOpen)) => "not_open",
            Ok(Placed::Rejected(PurchaseRejection::LimitExceeded)) => "limit_exceeded",
            Ok(Placed::Rejected(PurchaseRejection::UnknownSale)) => "not_found",
            Err(SalesError::Overloaded { .. }) => "shed",
            Err(SalesError::InProgress) => "in_progress",
            Err(SalesError::KeyReused) => "key_reused",
            Err(_) => "error",
        };
        self.purchases.with_label_values(&[outcome]).inc();
    }

    pub fn count_order(&self, side: Side, placed: &Result<Placed, TradingError>) {
        let outcome = match placed {
            Ok(Placed { replayed: true, .. }) => "replayed",
            Ok(Placed { outcome: Ok(_), .. }) => "filled",
            Ok(Placed {
                outcome: Err(rejection),
                ..
            }) => rejection.code(),
            Err(TradingError::InProgress) => "in_progress",
            Err(TradingError::KeyReused) => "key_reused",
            Err(TradingError::PlayerLocked { .. }) => "player_locked",
            Err(TradingError::HoldingsProvisional { .. }) => "holdings_provisional",
            Err(TradingError::Unexpected(_)) => "error",
        };
        self.orders
            .with_label_values(&[side.as_str(), outcome])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if encoder
            .encode(&self.registry.gather(), &mut buffer)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
