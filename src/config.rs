//! Typed configuration: `config/default.toml`, then the file named by
//! `MATCHDAY_CONFIG`, then `MATCHDAY__SECTION__KEY` environment variables.
//!
//! Secrets (`admin.token`, `auth.token_secret`, `feed.webhook_secret`,
//! passwords inside URLs) are
//! wrapped in [`Secret`], whose `Debug` never prints the value.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// Every setting Matchday reads, grouped by section as in API.md's table.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    #[serde(default)]
    pub admin: AdminSettings,
    pub auth: AuthSettings,
    pub accounts: AccountSettings,
    pub trading: TradingSettings,
    pub feed: FeedSettings,
    pub pricing: PricingSettings,
    pub broadcast: BroadcastSettings,
    pub sales: SalesSettings,
    pub leaderboard: LeaderboardSettings,
    pub limits: LimitSettings,
    pub telemetry: TelemetrySettings,
}

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
    pub shutdown_timeout_seconds: u64,
}

/// Postgres, the source of truth.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: usize,
}

/// Redis, the fan-out bus and fast counters.
#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub url: Secret,
    pub key_prefix: String,
}

/// The operator's bearer token; `None` disables the admin API.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AdminSettings {
    pub token: Option<Secret>,
}

/// Bearer tokens and password hashing.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub token_secret: Option<Secret>,
    pub token_ttl_seconds: u64,
    pub max_concurrent_hashes: usize,
}

/// New accounts.
#[derive(Debug, Clone, Deserialize)]
pub struct AccountSettings {
    pub starting_balance_cents: i64,
}

/// Longest `trading.max_feed_lag_seconds` (and fairness review lag) accepted.
pub const MAX_FEED_LAG_SECONDS: u64 = 600;

/// Orders and their guarantees.
#[derive(Debug, Clone, Deserialize)]
pub struct TradingSettings {
    pub lock_seconds: u64,
    pub max_feed_lag_seconds: u64,
    pub idempotency_retention_hours: u64,
    /// What stops a trade made with knowledge the feed has not delivered.
    pub fairness_policy: FairnessPolicy,
    /// `delay`: how long every order waits before it fills.
    pub delay_seconds: f64,
    /// Group commit: most orders in one transaction (1: no batching).
    pub batch_max_orders: usize,
    /// Longest the first order of a batch waits for others.
    pub batch_wait_ms: u64,
    /// Batches applied at once.
    pub batch_executors: usize,
}

/// Longest `trading.delay_seconds` accepted.
pub const MAX_DELAY_SECONDS: f64 = 600.0;

/// `trading.fairness_policy`: how orders are protected from the feed's lag
/// (README, "Fairness policies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FairnessPolicy {
    /// Orders fill at once; only the trade lock after an event applies.
    Lock,
    /// Orders wait `delay_seconds`, then fill at the price then, unless an
    /// event on the player occurred during the wait.
    Delay,
    /// Orders fill at once but stay provisional for `max_feed_lag_seconds`;
    /// an event that occurred before a provisional fill voids it.
    VoidWindow,
}

/// Built-in match feed sources.
#[derive(Debug, Clone, Deserialize)]
pub struct FeedSettings {
    pub source: FeedSource,
    pub replay_format: ReplayFormat,
    pub replay_file: String,
    pub replay_lineups: String,
    pub replay_kickoff: chrono::DateTime<chrono::Utc>,
    pub replay_speed: f64,
    pub replay_loop: bool,
    pub starting_price_cents: i64,
    pub simulator_players: usize,
    pub simulator_events_per_minute: u32,
    pub simulator_seed: u64,
    /// Secret for `POST /api/v1/feed/webhook` (HMAC-signed pushes without
    /// the admin token); unset disables the webhook.
    pub webhook_secret: Option<Secret>,
    /// How far a signature's timestamp may be from now, either way.
    pub webhook_tolerance_seconds: u64,
}

/// Where events come from besides the push endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedSource {
    Replay,
    Simulator,
    None,
}

/// The provider format of a replayed match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayFormat {
    Sportec,
    Statsbomb,
}

/// The price engine.
#[derive(Debug, Clone, Deserialize)]
pub struct PricingSettings {
    /// Between-event tick period; 0 disables ticks.
    pub tick_ms: u64,
    /// Ticks go into the price history at most this often (events always).
    pub history_ms: u64,
    /// Price history older than this is deleted.
    pub history_retention_hours: u64,
    /// No price goes below this.
    pub floor_cents: i64,
    /// Uniform noise of a tick, ± basis points of the price.
    pub tick_volatility_bp: i64,
    /// Share of the distance back to the post-event price a tick closes.
    pub tick_reversion_pct: i64,
    /// Jump per event kind in basis points of the current price.
    pub jumps_bp: std::collections::HashMap<String, i64>,
}

/// WebSocket fan-out.
#[derive(Debug, Clone, Deserialize)]
pub struct BroadcastSettings {
    /// Conflation interval: at most one price per player per socket per this.
    pub flush_ms: u64,
    pub max_connections: usize,
    pub client_burst: u32,
    pub client_messages_per_sec: u32,
    pub stuck_timeout_ms: u64,
}

/// Drops (flash sales).
#[derive(Debug, Clone, Deserialize)]
pub struct SalesSettings {
    /// Purchases settled per second across all replicas (a token bucket
    /// shared through Redis); 0 pauses settlement.
    pub settlement_rate_per_sec: u64,
    /// Purchase requests one replica works on at once; past it, 429.
    pub max_in_flight: usize,
    /// Reservations made durable in one Postgres transaction, at most.
    pub reservation_batch_max: usize,
    /// How long the first reservation of a batch waits for others.
    pub reservation_linger_ms: u64,
    /// Purchases one settlement step claims at most.
    pub settlement_batch_max: usize,
    /// How often each sale's Redis inventory is checked against Postgres.
    pub reconcile_interval_ms: u64,
}

/// The leaderboard and live portfolio values.
#[derive(Debug, Clone, Deserialize)]
pub struct LeaderboardSettings {
    /// How often the leader revalues every account (and every replica pushes
    /// changed portfolio values to its signed-in sockets).
    pub interval_ms: u64,
    /// Users written to Redis per script call.
    pub write_batch: usize,
    /// How often each replica reloads every account from Postgres, repairing
    /// whatever a lost bus message left stale.
    pub resync_seconds: u64,
}

/// Rate limits; 0 switches one off.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// Requests per second per signed-in user, and the burst above it.
    pub user_per_sec: u32,
    pub user_burst: u32,
    /// Registrations and logins per second per client IP, and the burst.
    pub ip_per_sec: u32,
    pub ip_burst: u32,
    /// Take the client IP from `X-Forwarded-For`/`Forwarded` (only behind a
    /// proxy that sets them); otherwise the connection's peer address.
    pub trust_forwarded_for: bool,
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    pub filter: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// A string that must not appear in logs: `Debug` prints `[redacted]`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the layered configuration from the working directory's `config/`.
    pub fn load() -> Result<Settings, ConfigError> {
        let overlay = std::env::var("MATCHDAY_CONFIG").ok();
        Settings::load_from(Path::new("config"), overlay.as_deref())
    }

    /// Loads `dir/default.toml`, then `overlay` if given, then the environment.
    pub fn load_from(dir: &Path, overlay: Option<&str>) -> Result<Settings, ConfigError> {
        let defaults = dir.join("default.toml");
        let mut builder = config::Config::builder()
            // The defaults are compiled in too, so the binary runs from any
            // directory; a `config/default.toml` on disk wins over them.
            .add_source(config::File::from_str(
                include_str!("../config/default.toml"),
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from(defaults).required(false));
        if let Some(path) = overlay {
            builder = builder.add_source(config::File::with_name(path).required(true));
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("MATCHDAY")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.accounts.starting_balance_cents < 0 {
            return Err(ConfigError::Invalid(
                "accounts.starting_balance_cents must be >= 0".into(),
            ));
        }
        if let Some(token) = &self.admin.token {
            if token.expose().len() < 8 {
                return Err(ConfigError::Invalid(
                    "admin.token must be at least 8 characters".into(),
                ));
            }
        }
        if self.trading.max_feed_lag_seconds > MAX_FEED_LAG_SECONDS {
            return Err(ConfigError::Invalid(format!(
                "trading.max_feed_lag_seconds must be at most {MAX_FEED_LAG_SECONDS}"
            )));
        }
        let delay = self.trading.delay_seconds;
        if !(delay.is_finite() && (0.0..=MAX_DELAY_SECONDS).contains(&delay)) {
            return Err(ConfigError::Invalid(format!(
                "trading.delay_seconds must be 0-{MAX_DELAY_SECONDS}"
            )));
        }
        let trading = &self.trading;
        if !(1..=10_000).contains(&trading.batch_max_orders)
            || !(1..=64).contains(&trading.batch_executors)
            || trading.batch_wait_ms > 1_000
        {
            return Err(ConfigError::Invalid(
                "trading.batch_max_orders must be 1-10000, batch_executors 1-64, batch_wait_ms 0-1000"
                    .into(),
            ));
        }
        if let Some(secret) = &self.feed.webhook_secret {
            if secret.expose().len() < 32 {
                return Err(ConfigError::Invalid(
                    "feed.webhook_secret must be at least 32 characters".into(),
                ));
            }
        }
        if let Some(secret) = &self.auth.token_secret {
            if secret.expose().len() < 32 {
                return Err(ConfigError::Invalid(
                    "auth.token_secret must be at least 32 characters".into(),
                ));
            }
        }
        if self.auth.max_concurrent_hashes == 0 || self.database.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "auth.max_concurrent_hashes and database.max_connections must be >= 1".into(),
            ));
        }
        let speed_ok = self.feed.replay_speed.is_finite() && self.feed.replay_speed > 0.0;
        if !speed_ok || self.feed.starting_price_cents < 1 {
            return Err(ConfigError::Invalid(
                "feed.replay_speed must be > 0 and feed.starting_price_cents >= 1".into(),
            ));
        }
        if self.broadcast.flush_ms == 0 || self.broadcast.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "broadcast.flush_ms and broadcast.max_connections must be >= 1".into(),
            ));
        }
        if self.trading.idempotency_retention_hours < 24 {
            return Err(ConfigError::Invalid(
                "trading.idempotency_retention_hours must be >= 24".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let settings = Settings::load_from(Path::new("config"), None).expect("defaults load");
        let mut settings = settings;
        settings.admin.token = Some(Secret::new("super-secret-admin"));
        let printed = format!("{settings:?}");
        assert!(!printed.contains("super-secret-admin"));
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn defaults_match_the_api_contract() {
        let settings = Settings::load_from(Path::new("config"), None).expect("defaults load");
        assert_eq!(settings.server.port, 8080);
        assert_eq!(settings.trading.lock_seconds, 60);
        assert_eq!(settings.accounts.starting_balance_cents, 1_000_000);
        assert_eq!(settings.broadcast.flush_ms, 100);
        assert_eq!(settings.pricing.tick_ms, 250);
        assert!(settings.admin.token.is_none());
    }

    #[test]
    fn the_shipped_fairness_policy_keeps_the_api_contract_and_delays_are_checked() {
        let mut settings = Settings::load_from(Path::new("config"), None).expect("defaults load");
        // API.md: every 201 is "filled" and bought shares sell at once. The
        // recommended void_window is one line away (README).
        assert_eq!(settings.trading.fairness_policy, FairnessPolicy::Lock);
        assert_eq!(settings.trading.max_feed_lag_seconds, 40);
        assert!(settings.validate().is_ok());
        for bad in [-1.0, f64::NAN, f64::INFINITY, MAX_DELAY_SECONDS + 1.0] {
            settings.trading.delay_seconds = bad;
            assert!(settings.validate().is_err(), "delay {bad} accepted");
        }
    }
}
