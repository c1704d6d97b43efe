//! The rush-time inventory in Redis: one atomic script per reservation, one
//! per give-back, one to install a rebuilt inventory, and the settlement
//! token bucket shared by every replica.
//!
//! Keys (all under `redis.key_prefix`):
//! - `sale:{id}:meta`, a hash: `gen` (the inventory generation), `total`,
//!   `max` (0 = no per-user limit), `starts_ms`, `seq` (bumped by every
//!   change, so listeners can order what they hear).
//! - `sale:{id}:{gen}:next`: the next never-sold unit number (from 1).
//! - `sale:{id}:{gen}:free`: a list of unit numbers given back.
//! - `sale:{id}:{gen}:users`: a hash of each buyer's live (not failed) units.
//! - `purchase-key:{user}:{key}`: the fingerprint of a purchase reserved
//!   under that idempotency key, for 30 s (Postgres keeps it after that).
//!
//! Remaining units are `LLEN free + total − next + 1`. Give-backs and
//! rebuilds publish an update on [`UPDATES_CHANNEL`] from inside their
//! script; reservations are announced by the replica that made them, a
//! batch at a time. Every update carries the inventory's `(generation,
//! seq)`, so replicas keep only the newest count whatever order they hear
//! updates in.

use std::sync::LazyLock;
use std::time::Duration;

use fred::types::scripts::Script;
use fred::types::Value;

use super::{InventoryState, Reserve, SaleInfo};
use crate::bus::{reply_integer, reply_text, Bus, BusError};
use crate::domain::UserId;

/// Bus channel of inventory updates (JSON, see [`super::book::Update`]).
pub const UPDATES_CHANNEL: &str = "sales:updates";
/// How long Redis remembers a purchase's idempotency key: long enough to
/// cover the reservation's way to Postgres (which remembers it for good),
/// short enough that a key whose replica died on the way is not "in
/// progress" for long. A retry after this goes through Postgres' record.
const KEY_TTL: Duration = Duration::from_secs(30);

/// KEYS: meta, purchase key. ARGV: sale key base (`…sale:{id}:`), user,
/// quantity, fingerprint, now (ms), key TTL (s). Publishes nothing: the
/// replica announces its reservations a batch at a time (see `batcher.rs`).
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local meta = redis.call('HMGET', KEYS[1], 'gen', 'total', 'max', 'starts_ms')
if not meta[1] then return {'missing'} end
local gen = meta[1]
local seen = redis.call('GET', KEYS[2])
if seen then
  if seen == ARGV[4] then return {'duplicate', gen} end
  return {'reused', gen}
end
if tonumber(ARGV[5]) < tonumber(meta[4]) then return {'not_open', gen} end
local base = ARGV[1] .. gen .. ':'
local qty = tonumber(ARGV[3])
local max = tonumber(meta[3])
local mine = tonumber(redis.call('HGET', base .. 'users', ARGV[2]) or '0')
if max > 0 and mine + qty > max then return {'limit', gen} end
local total = tonumber(meta[2])
local next_fresh = tonumber(redis.call('GET', base .. 'next') or '1')
local free = redis.call('LLEN', base .. 'free')
local remaining = free + total - next_fresh + 1
if qty > remaining then
  return {'sold_out', gen, remaining, tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')}
end
local numbers = {}
local from_free = math.min(qty, free)
if from_free > 0 then
  local popped = redis.call('LPOP', base .. 'free', from_free)
  for i = 1, #popped do numbers[#numbers + 1] = tonumber(popped[i]) end
end
local fresh = qty - from_free
for i = 0, fresh - 1 do numbers[#numbers + 1] = next_fresh + i end
if fresh > 0 then redis.call('SET', base .. 'next', next_fresh + fresh) end
redis.call('HINCRBY', base .. 'users', ARGV[2], qty)
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[6])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
remaining = remaining - qty
local reply = {'reserved', gen, remaining, seq}
for i = 1, #numbers do reply[#reply + 1] = numbers[i] end
return reply
"#,
    )
});

/// KEYS: meta, channel, purchase key (or any key when ARGV[4] is '0').
/// ARGV: sale key base, generation the units belong to, sale id, '1' to
/// forget the purchase key, count of (user, delta) pairs, the pairs, then
/// the unit numbers to give back. Does nothing (returns -1) when the
/// inventory has moved to another generation: a rebuild already counted
/// these units from Postgres.
static GIVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
local gen = redis.call('HGET', KEYS[1], 'gen')
if gen ~= ARGV[2] then return -1 end
local base = ARGV[1] .. gen .. ':'
local pairs_end = 5 + 2 * tonumber(ARGV[5])
local buyers = {}
for i = 6, pairs_end, 2 do
  redis.call('HINCRBY', base .. 'users', ARGV[i], ARGV[i + 1])
  if tonumber(ARGV[i + 1]) > 0 then buyers[#buyers + 1] = ARGV[i] end
end
for i = pairs_end + 1, #ARGV do redis.call('RPUSH', base .. 'free', ARGV[i]) end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local next_fresh = tonumber(redis.call('GET', base .. 'next') or '1')
local remaining = redis.call('LLEN', base .. 'free') + total - next_fresh + 1
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('PUBLISH', KEYS[2], '{"sale_id":' .. ARGV[3] .. ',"gen":' .. gen .. ',"seq":' .. seq ..
  ',"remaining":' .. remaining .. ',"buyers":[' .. table.concat(buyers, ',') .. ']}')
return remaining
"#,
    )
});

/// KEYS: meta, channel. ARGV: sale key base, new generation, total, max,
/// starts_ms, sale id, next fresh number, count of free numbers, the free
/// numbers, then (user, units) pairs. Installs only over an older
/// generation (or none), deleting the older generation's keys.
static INSTALL: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local old = redis.call('HGET', KEYS[1], 'gen')
if old and tonumber(old) >= tonumber(ARGV[2]) then return 0 end
if old then
  redis.call('DEL', ARGV[1] .. old .. ':next', ARGV[1] .. old .. ':free', ARGV[1] .. old .. ':users')
end
local base = ARGV[1] .. ARGV[2] .. ':'
redis.call('DEL', base .. 'next', base .. 'free', base .. 'users')
redis.call('SET', base .. 'next', ARGV[7])
local free_end = 8 + tonumber(ARGV[8])
for i = 9, free_end do redis.call('RPUSH', base .. 'free', ARGV[i]) end
for i = free_end + 1, #ARGV, 2 do redis.call('HSET', base .. 'users', ARGV[i], ARGV[i + 1]) end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'gen', ARGV[2], 'total', ARGV[3], 'max', ARGV[4], 'starts_ms', ARGV[5])
local remaining = redis.call('LLEN', base .. 'free') + tonumber(ARGV[3]) - tonumber(ARGV[7]) + 1
redis.call('PUBLISH', KEYS[2], '{"sale_id":' .. ARGV[6] .. ',"gen":' .. ARGV[2] .. ',"seq":' .. seq ..
  ',"remaining":' .. remaining .. ',"reset":true}')
return 1
"#,
    )
});

/// KEYS: meta. Returns {gen, remaining, seq} or nil.
static STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local meta = redis.call('HMGET', KEYS[1], 'gen', 'total', 'seq')
if not meta[1] then return nil end
local base = ARGV[1] .. meta[1] .. ':'
local next_fresh = tonumber(redis.call('GET', base .. 'next') or '1')
local remaining = redis.call('LLEN', base .. 'free') + tonumber(meta[2]) - next_fresh + 1
return {tonumber(meta[1]), remaining, tonumber(meta[3] or '0')}
"#,
    )
});

/// KEYS: the window's counter. ARGV: wanted, rate per second. A fixed
/// one-second window shared by every replica: grants what is left of
/// `rate` in this window, up to `wanted`.
static TOKENS: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local wanted = tonumber(ARGV[1])
local used = redis.call('INCRBY', KEYS[1], wanted)
if used == wanted then redis.call('PEXPIRE', KEYS[1], 2000) end
local before = used - wanted
return math.max(0, math.min(wanted, tonumber(ARGV[2]) - before))
"#,
    )
});

/// The inventory of every sale in Redis.
#[derive(Clone)]
pub struct RedisInventory {
    bus: Bus,
}

fn malformed(what: &str) -> BusError {
    BusError::Redis(fred::error::Error::new(
        fred::error::ErrorKind::Parse,
        format!("unexpected reply from the {what} script"),
    ))
}

impl RedisInventory {
    /// An inventory on `bus`.
    pub fn new(bus: Bus) -> RedisInventory {
        RedisInventory { bus }
    }

    fn base(&self, sale: i64) -> String {
        self.bus.key(&format!("sale:{sale}:"))
    }

    fn meta(&self, sale: i64) -> String {
        self.bus.key(&format!("sale:{sale}:meta"))
    }

    fn purchase_key(&self, user: UserId, key: &str) -> String {
        self.bus.key(&format!("purchase-key:{}:{key}", user.0))
    }

    /// Tries to reserve `quantity` units for `user`.
    pub async fn reserve(
        &self,
        sale: &SaleInfo,
        user: UserId,
        quantity: i64,
        key: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Reserve, BusError> {
        let reply = self
            .bus
            .run_script(
                &RESERVE,
                vec![self.meta(sale.id), self.purchase_key(user, key)],
                vec![
                    self.base(sale.id),
                    user.0.to_string(),
                    quantity.to_string(),
                    fingerprint.to_string(),
                    now_ms.to_string(),
                    KEY_TTL.as_secs().to_string(),
                ],
            )
            .await?;
        let Value::Array(items) = reply else {
            return Err(malformed("reserve"));
        };
        let word = items
            .first()
            .and_then(reply_text)
            .ok_or_else(|| malformed("reserve"))?;
        let generation = items.get(1).and_then(reply_integer);
        let generation = || generation.ok_or_else(|| malformed("reserve"));
        let field = |i: usize| {
            items
                .get(i)
                .and_then(reply_integer)
                .ok_or_else(|| malformed("reserve"))
        };
        Ok(match word.as_str() {
            "missing" => Reserve::Missing,
            "duplicate" => Reserve::Duplicate,
            "reused" => Reserve::KeyReused,
            "not_open" => Reserve::NotOpen,
            "limit" => Reserve::LimitExceeded,
            "sold_out" => Reserve::SoldOut {
                version: (generation()?, field(3)?),
                remaining: field(2)?,
            },
            "reserved" => Reserve::Reserved {
                version: (generation()?, field(3)?),
                remaining: field(2)?,
                numbers: items[4..]
                    .iter()
                    .map(reply_integer)
                    .collect::<Option<Vec<i64>>>()
                    .ok_or_else(|| malformed("reserve"))?,
            },
            _ => return Err(malformed("reserve")),
        })
    }

    /// Gives `numbers` back to generation `generation` of the sale's
    /// inventory and adjusts buyers' unit counts by `deltas`; optionally
    /// forgets a purchase key (a reservation that was refused). Returns the
    /// remaining units, or `None` when the inventory has been rebuilt since
    /// (which already counted these units).
    pub async fn give_back(
        &self,
        sale: i64,
        generation: i64,
        numbers: &[i64],
        deltas: &[(UserId, i64)],
        forget_key: Option<(UserId, &str)>,
    ) -> Result<Option<i64>, BusError> {
        let mut args = vec![
            self.base(sale),
            generation.to_string(),
            sale.to_string(),
            if forget_key.is_some() { "1" } else { "0" }.to_string(),
            deltas.len().to_string(),
        ];
        for (user, delta) in deltas {
            args.push(user.0.to_string());
            args.push(delta.to_string());
        }
        args.extend(numbers.iter().map(i64::to_string));
        let key = match forget_key {
            Some((user, key)) => self.purchase_key(user, key),
            None => self.meta(sale),
        };
        let reply = self
            .bus
            .run_script(
                &GIVE_BACK,
                vec![self.meta(sale), self.bus.key(UPDATES_CHANNEL), key],
                args,
            )
            .await?;
        let remaining = reply_integer(&reply).ok_or_else(|| malformed("give-back"))?;
        Ok((remaining >= 0).then_some(remaining))
    }

    /// Forgets a purchase key (a reservation refused after its inventory
    /// generation was rebuilt away).
    pub async fn forget_key(&self, user: UserId, key: &str) -> Result<(), BusError> {
        self.bus.delete(&self.purchase_key(user, key)).await
    }

    /// Installs a rebuilt inventory as generation `generation`, unless Redis
    /// already holds that generation or a newer one. Returns whether it was
    /// installed.
    pub async fn install(
        &self,
        sale: &SaleInfo,
        generation: i64,
        next_fresh: i64,
        free: &[i64],
        buyers: &[(i64, i64)],
    ) -> Result<bool, BusError> {
        let mut args = vec![
            self.base(sale.id),
            generation.to_string(),
            sale.total_units.to_string(),
            sale.max_per_user.unwrap_or(0).to_string(),
            sale.starts_at.timestamp_millis().to_string(),
            sale.id.to_string(),
            next_fresh.to_string(),
            free.len().to_string(),
        ];
        args.extend(free.iter().map(i64::to_string));
        for (user, units) in buyers {
            args.push(user.to_string());
            args.push(units.to_string());
        }
        let reply = self
            .bus
            .run_script(
                &INSTALL,
                vec![self.meta(sale.id), self.bus.key(UPDATES_CHANNEL)],
                args,
            )
            .await?;
        Ok(reply_integer(&reply) == Some(1))
    }

    /// The sale's inventory as Redis holds it, or `None` when it holds none.
    pub async fn state(&self, sale: i64) -> Result<Option<InventoryState>, BusError> {
        let reply = self
            .bus
            .run_script(&STATE, vec![self.meta(sale)], vec![self.base(sale)])
            .await?;
        let Value::Array(items) = reply else {
            return Ok(None);
        };
        let field = |i: usize| {
            items
                .get(i)
                .and_then(reply_integer)
                .ok_or_else(|| malformed("state"))
        };
        Ok(Some(InventoryState {
            generation: field(0)?,
            remaining: field(1)?,
            seq: field(2)?,
        }))
    }

    fn window_key(&self, second: i64) -> String {
        self.bus.key(&format!("settle:window:{second}"))
    }

    /// Takes up to `wanted` settlement tokens from this second's shared
    /// window of `rate_per_sec`: how many, and the window they came from.
    pub async fn settlement_tokens(
        &self,
        wanted: u64,
        rate_per_sec: u64,
    ) -> Result<(u64, Option<i64>), BusError> {
        let second = chrono::Utc::now().timestamp();
        let reply = self
            .bus
            .run_script(
                &TOKENS,
                vec![self.window_key(second)],
                vec![wanted.to_string(), rate_per_sec.to_string()],
            )
            .await?;
        let granted = reply_integer(&reply)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        Ok((granted, Some(second)))
    }

    /// Returns tokens taken from `window` but not used.
    pub async fn refund_tokens(&self, window: i64, unused: u64) -> Result<(), BusError> {
        // A window that has passed (and may have expired) is left alone.
        if chrono::Utc::now().timestamp() != window {
            return Ok(());
        }
        self.bus
            .increment(&self.window_key(window), -(unused as i64))
            .await
    }
}
