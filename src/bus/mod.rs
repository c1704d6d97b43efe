//! Redis: the fan-out bus between replicas and home of fast shared counters.
//!
//! One command client and one subscriber connection per replica, never one per
//! request or socket. Every key and channel carries `redis.key_prefix`, so
//! several deployments (or test runs) can share one Redis. Redis is never the
//! source of truth: whatever lives here can be rebuilt from Postgres.

use std::time::Duration;

use fred::prelude::*;
use fred::types::Message;
use tokio::sync::broadcast;

use crate::config::RedisSettings;

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
}

/// KEYS: state hash, channel. ARGV: payload, then (field, seq, value)
/// triples. Values are JSON objects carrying `"seq":<n>`.
const PUBLISH_WITH_STATE: &str = r#"
for i = 2, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local current_seq = current and tonumber(string.match(current, '"seq":(%d+)'))
  if not current_seq or current_seq < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
return redis.call('PUBLISH', KEYS[2], ARGV[1])
"#;

/// Pub/sub messages buffered for each in-process listener before it counts
/// as lagging (and has to treat messages as lost). fred preallocates this
/// many slots for each of its event channels on both clients, so it costs
/// memory up front: 65,536 cost ~78 MB of idle RSS; 4,096 cost ~5 MB and
/// still hold seconds of fills and ticks.
pub const PUBSUB_BUFFER: usize = 4_096;
/// How often a failed SUBSCRIBE is retried.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

/// A script's reply as text (strings, bytes and numbers), if it is one.
pub fn reply_text(value: &fred::types::Value) -> Option<String> {
    use fred::types::Value;
    match value {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_string),
        Value::Integer(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// A script's reply as an integer (or text that parses as one).
pub fn reply_integer(value: &fred::types::Value) -> Option<i64> {
    match value {
        fred::types::Value::Integer(i) => Some(*i),
        other => reply_text(other)?.parse().ok(),
    }
}

/// How every connection is built: retry forever, backing off to 2 s
/// between attempts, the first connection included; commands time out
/// after 2 s.
fn builder(settings: &RedisSettings) -> Result<Builder, BusError> {
    let mut config = Config::from_url(settings.url.expose())?;
    // With fred's default (fail fast), a first connection that fails
    // (Redis down, or still loading its data: `LOADING`) ends the
    // client's connection task for good, and every later command times
    // out: a replica started a moment too early never reached Redis.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_connection_config(|connection| {
            connection.connection_timeout = Duration::from_secs(2);
            connection.internal_command_timeout = Duration::from_secs(2);
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = Duration::from_secs(2);
            performance.broadcast_channel_capacity = PUBSUB_BUFFER;
        });
    Ok(builder)
}

/// How long start-up waits for a connection's first success before going
/// on without it (it keeps connecting in the background).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// Starts `client`'s connection task, which retries until it connects and
/// after every loss, and waits a little for it to connect.
async fn start(client: &impl ClientLike, name: &str) {
    // The task runs on its own; its handle is not needed.
    let _task = client.connect();
    let error = match tokio::time::timeout(FIRST_CONNECT_WAIT, client.wait_for_connect()).await {
        Ok(Ok(())) => return,
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!("no connection within {FIRST_CONNECT_WAIT:?}"),
    };
    tracing::warn!(%error, connection = name, "redis is not reachable yet; retrying in the background");
}

/// A replica's connections to Redis.
#[derive(Clone)]
pub struct Bus {
    client: Client,
    subscriber: fred::clients::SubscriberClient,
    prefix: String,
}

impl Bus {
    /// Creates the clients and starts connecting in the background; Redis
    /// being down at start-up is reported by [`Bus::is_ready`], not fatal.
    pub async fn connect(settings: &RedisSettings) -> Result<Bus, BusError> {
        let builder = builder(settings)?;
        let client = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        futures_util::join!(start(&client, "commands"), start(&subscriber, "subscriber"));
        // Resubscribe to every channel after a reconnect.
        let _resubscriber = subscriber.manage_subscriptions();
        Ok(Bus {
            client,
            subscriber,
            prefix: settings.key_prefix.clone(),
        })
    }

    /// One more command connection, for bulk writes that must not hold up
    /// the replica's other commands (a pipeline is answered in order, so a
    /// short read queued behind a long write waits for all of it).
    pub async fn extra_connection(settings: &RedisSettings) -> Result<Client, BusError> {
        let client = builder(settings)?.build()?;
        start(&client, "extra").await;
        Ok(client)
    }

    /// The full name of a key or channel: the deployment prefix + `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    /// True when Redis answers PING within a second.
    pub async fn is_ready(&self) -> bool {
        let ping = self.client.ping::<String>(None);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }

    /// Publishes `payload` on the prefixed `channel`.
    pub async fn publish(&self, channel: &str, payload: String) -> Result<(), BusError> {
        let _receivers: i64 = self.client.publish(self.key(channel), payload).await?;
        Ok(())
    }

    /// Publishes `payload` on the prefixed `channel` and, in the same atomic
    /// script, records each `(field, seq, value)` in the prefixed hash
    /// `state` unless the hash already holds a value with a higher or equal
    /// `"seq"` for that field (so current state never goes backwards, whatever
    /// order two publishers race in).
    pub async fn publish_with_state(
        &self,
        channel: &str,
        payload: String,
        state: &str,
        entries: Vec<(String, i64, String)>,
    ) -> Result<(), BusError> {
        let mut args: Vec<String> = Vec::with_capacity(1 + entries.len() * 3);
        args.push(payload);
        for (field, seq, value) in entries {
            args.push(field);
            args.push(seq.to_string());
            args.push(value);
        }
        let _: i64 = self
            .client
            .eval(
                PUBLISH_WITH_STATE,
                vec![self.key(state), self.key(channel)],
                args,
            )
            .await?;
        Ok(())
    }

    /// Runs a Lua script by its SHA, loading it first if Redis does not
    /// know it (after a restart or flush). `keys` are full key names (see
    /// [`Bus::key`]).
    pub async fn run_script(
        &self,
        script: &fred::types::scripts::Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<fred::types::Value, BusError> {
        Ok(script.evalsha_with_reload(&self.client, keys, args).await?)
    }

    /// Adds `by` to the integer at `key` (a full name, see [`Bus::key`]).
    pub async fn increment(&self, key: &str, by: i64) -> Result<(), BusError> {
        let _value: i64 = self.client.incr_by(key, by).await?;
        Ok(())
    }

    /// Deletes a key (a full name, see [`Bus::key`]).
    pub async fn delete(&self, key: &str) -> Result<(), BusError> {
        let _deleted: i64 = self.client.del(key).await?;
        Ok(())
    }

    /// Every value of the prefixed hash `state`.
    pub async fn state_values(&self, state: &str) -> Result<Vec<String>, BusError> {
        let values: std::collections::HashMap<String, String> =
            self.client.hgetall(self.key(state)).await?;
        Ok(values.into_values().collect())
    }

    /// Subscribes to the prefixed `channel`; messages for every subscribed
    /// channel arrive on [`Bus::messages`].
    pub async fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        self.subscriber.subscribe(self.key(channel)).await?;
        Ok(())
    }

    /// Subscribes to the prefixed `channel` now, or, if Redis cannot be
    /// reached, keeps retrying in the background until it can (a channel is
    /// resubscribed after reconnects only once a SUBSCRIBE has succeeded).
    pub async fn subscribe_retrying(&self, channel: &'static str) {
        if let Err(error) = self.subscribe(channel).await {
            tracing::warn!(%error, channel, "subscription failed; retrying in the background");
            let bus = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SUBSCRIBE_RETRY).await;
                    if bus.subscribe(channel).await.is_ok() {
                        tracing::info!(channel, "subscribed");
                        return;
                    }
                }
            });
        }
    }

    /// A receiver of pub/sub messages (bounded; a slow reader sees `Lagged`).
    pub fn messages(&self) -> broadcast::Receiver<Message> {
        self.subscriber.message_rx()
    }

    /// A receiver told of every reconnection of the subscriber connection, so
    /// listeners can reload state they may have missed while disconnected.
    pub fn reconnections(&self) -> broadcast::Receiver<fred::types::config::Server> {
        self.subscriber.reconnect_rx()
    }

    /// Closes both connections.
    pub async fn close(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.client.quit().await;
    }
}
