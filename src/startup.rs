//! Wiring: the only place that picks implementations for ports, starts
//! background tasks, and shuts them down.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, AuthService, PgAccountStore, Revocations};
use crate::broadcast::{self, BusPublisher, Hub};
use crate::bus::Bus;
use crate::config::Settings;
use crate::db;
use crate::domain::Cents;
use crate::error::Unexpected;
use crate::http::{self, AppState};
use crate::leader::Leadership;
use crate::leaderboard::Leaderboard;
use crate::ledger::PgLedger;
use crate::metrics::Metrics;
use crate::players::PgPlayers;
use crate::pricing::{self, PgPrices, PriceStore, PricingRules, PricingService};
use crate::sales::{self, PgSales, RedisInventory, SalesService, Settler};
use crate::trading::{Fairness, FairnessPolicy, PgOrders, TradingService};
use crate::{idempotency, ingest};

/// How often expired idempotency keys and revocations are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// How often a replica looks for due delayed orders under `delay`: an
/// order fills at most this long after its delay.
const DELAYED_POLL: Duration = Duration::from_millis(50);

/// A built, bound, not yet running Matchday.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    bus: Bus,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("binding the listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Rules(#[from] pricing::rules::RulesError),
    #[error(transparent)]
    Unexpected(#[from] Unexpected),
}

impl Application {
    /// Connects, migrates, wires every module and binds the listener
    /// (`server.port = 0` picks a free port, as tests do).
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let pool = db::pool(&settings.database)?;
        db::migrate(&pool).await?;
        let bus = Bus::connect(&settings.redis).await?;

        let accounts: Arc<dyn auth::AccountStore> = Arc::new(PgAccountStore::new(pool.clone()));
        let revocations = Arc::new(Revocations::default());
        revocations.reload(accounts.revoked_tokens().await?);
        let auth = Arc::new(
            AuthService::new(
                accounts.clone(),
                revocations.clone(),
                &settings.auth,
                &settings.admin,
                Cents::new(settings.accounts.starting_balance_cents),
            )
            .await?,
        );
        let players = Arc::new(PgPlayers::new(pool.clone()));
        let metrics = Arc::new(Metrics::new()?);

        let hub = Arc::new(Hub::new());
        let publisher = Arc::new(BusPublisher::new(bus.clone(), hub.clone()));
        let fairness = Fairness::from_settings(&settings.trading);
        let prices = Arc::new(
            PgPrices::new(pool.clone()).voiding(fairness.policy == FairnessPolicy::VoidWindow),
        );
        // The hub starts with every player's price, before the first socket.
        hub.merge(
            prices
                .current()
                .await
                .map_err(|e| StartupError::Io(std::io::Error::other(e.to_string())))?
                .iter()
                .map(broadcast::messages::BusTick::from),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let leadership = Leadership::start(
            settings.database.url.expose().to_string(),
            shutdown_rx.clone(),
        );
        let (leaderboard, leaderboard_tasks) = Leaderboard::start(
            pool.clone(),
            bus.clone(),
            &settings.redis,
            hub.clone(),
            metrics.clone(),
            &settings.leaderboard,
            leadership.clone(),
            shutdown_rx.clone(),
        )
        .await?;
        let batch_metrics = metrics.clone();
        let trading = Arc::new(
            TradingService::new(
                Arc::new(
                    PgOrders::new(pool.clone(), fairness)
                        .counting_replays(metrics.order_batches_replayed.clone()),
                ),
                players.clone(),
                publisher.clone(),
                leaderboard.clone(),
            )
            .with_batches(
                crate::trading::batch::BatchLimits {
                    max: settings.trading.batch_max_orders,
                    wait: std::time::Duration::from_millis(settings.trading.batch_wait_ms),
                    executors: settings.trading.batch_executors,
                },
                move |shape| {
                    batch_metrics.order_batch_size.observe(shape.size as f64);
                    batch_metrics
                        .order_queue_seconds
                        .observe(shape.oldest_wait.as_secs_f64());
                },
            ),
        );
        let pricing = Arc::new(
            PricingService::new(
                prices.clone(),
                publisher.clone(),
                PricingRules::from_settings(&settings.pricing)?,
                Duration::from_secs(settings.trading.lock_seconds),
            )
            .with_void_sink(trading.clone()),
        );
        let sales_store = Arc::new(PgSales::new(pool.clone()));
        let sales = SalesService::start(
            sales_store.clone(),
            bus.clone(),
            hub.clone(),
            &settings.sales,
        )
        .await?;
        let settler = Settler::new(
            sales_store,
            RedisInventory::new(bus.clone()),
            publisher,
            leaderboard.clone(),
            settings.sales.settlement_batch_max,
        );

        let limits = Arc::new(crate::limits::RateLimits::new(&settings.limits));
        let mut tasks = vec![
            auth::revocations::start(
                revocations,
                accounts.clone(),
                bus.clone(),
                shutdown_rx.clone(),
            )
            .await,
            tokio::spawn(purge_expired(
                pool.clone(),
                accounts,
                limits.clone(),
                prices.clone(),
                settings.clone(),
                shutdown_rx.clone(),
            )),
            broadcast::start_hub(hub.clone(), bus.clone(), prices, shutdown_rx.clone()).await,
            tokio::spawn(pricing::ticker::run(
                pricing.clone(),
                leadership.clone(),
                settings.pricing.tick_ms,
                settings.pricing.history_ms,
                shutdown_rx.clone(),
            )),
            tokio::spawn(ingest::driver::run(
                pricing.clone(),
                leadership.clone(),
                settings.feed.clone(),
                shutdown_rx.clone(),
            )),
            sales::start_listener(sales.clone(), bus.clone(), shutdown_rx.clone()).await,
            tokio::spawn(sales::reconcile_loop(
                sales.clone(),
                leadership.clone(),
                Duration::from_millis(settings.sales.reconcile_interval_ms),
                shutdown_rx.clone(),
            )),
            tokio::spawn(sales::settle_loop(
                settler,
                settings.sales.settlement_rate_per_sec,
                shutdown_rx.clone(),
            )),
            // Delayed orders are settled by every replica (each once); under
            // another policy only leftovers from an earlier `delay` remain.
            tokio::spawn(trading.clone().run_delayed(
                if fairness.policy == FairnessPolicy::Delay {
                    DELAYED_POLL
                } else {
                    Duration::from_secs(1)
                },
                shutdown_rx.clone(),
            )),
            broadcast::start_sale_flusher(
                hub.clone(),
                Duration::from_millis(settings.broadcast.flush_ms),
                shutdown_rx.clone(),
            ),
            broadcast::start_memory_releaser(hub.clone(), shutdown_rx.clone()),
        ];
        tasks.extend(leaderboard_tasks);

        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))?;
        let port = listener.local_addr()?.port();
        let state = AppState {
            max_feed_lag_seconds: settings.trading.max_feed_lag_seconds,
            auth,
            trading,
            players,
            ledger: Arc::new(PgLedger::new(pool.clone())),
            bus: bus.clone(),
            pool,
            metrics,
            pricing,
            hub,
            socket_limits: (&settings.broadcast).into(),
            max_connections: settings.broadcast.max_connections,
            leadership,
            limits: limits.clone(),
            trust_forwarded_for: settings.limits.trust_forwarded_for,
            sales,
            leaderboard,
            assets: Arc::new(http::Assets::load()),
            webhook: settings.feed.webhook_secret.clone().map(|secret| {
                Arc::new(crate::ingest::webhook::WebhookVerifier::new(
                    secret,
                    settings.feed.webhook_tolerance_seconds,
                ))
            }),
        };
        let server = http::server(
            state,
            listener,
            settings.server.workers,
            settings.server.shutdown_timeout_seconds,
        )?;
        tracing::info!(host = %settings.server.host, port, "matchday listening");
        Ok(Application {
            port,
            server,
            bus,
            shutdown,
            tasks,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the HTTP server (and with it the application).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM, drains requests, then stops background
    /// tasks and closes connections.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        tracing::info!("http server stopped; stopping background tasks");
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.bus.close().await;
        tracing::info!("shutdown complete");
        result
    }
}

async fn purge_expired(
    pool: deadpool_postgres::Pool,
    accounts: Arc<dyn auth::AccountStore>,
    limits: Arc<crate::limits::RateLimits>,
    prices: Arc<PgPrices>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let hours = |h: u64| i64::try_from(h).unwrap_or(i64::MAX);
    let mut every = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => {
                limits.prune();
                let keys = idempotency::pg::purge(&pool, hours(settings.trading.idempotency_retention_hours)).await;
                let revoked = accounts.purge_expired_revocations().await.map_err(|e| Unexpected::msg(e.to_string()));
                let history = prices.purge_history(hours(settings.pricing.history_retention_hours)).await;
                match (keys, revoked, history) {
                    (Ok(keys), Ok(revoked), Ok(history)) => {
                        tracing::debug!(keys, revoked, history, "purged expired keys, revocations and history")
                    }
                    (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
                        tracing::warn!(%error, "purge failed")
                    }
                }
            }
        }
    }
}
