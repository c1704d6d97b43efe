//! The leaderboard in Redis: each leader term writes two sorted sets in
//! turn, and a hash says which one readers use.
//!
//! Keys (under `redis.key_prefix`):
//! - `leaderboard:meta`, a hash: `term` (the writing leader's term: a counter
//!   and a random nonce), `terms` (the counter), `set_a` and `set_b` (the
//!   full names of that term's sets), `current` (the full name of the set
//!   readers use), `as_of_ms`, `total`.
//! - `leaderboard:{term}:a`, `leaderboard:{term}:b`: sorted sets of every
//!   user. The member is the user id zero-padded to 19 digits and the score
//!   is the *negated* net worth in cents, so ascending order is the
//!   leaderboard's order and equal net worths fall back to the member, i.e.
//!   the lower user id first. Scores are doubles: exact below 2^53 cents
//!   (about 90 trillion). Each expires [`SET_TTL`] after its last write, so
//!   the sets of ended terms go away by themselves.
//!
//! The leader writes a cycle into its set readers are *not* using with plain
//! pipelined `ZADD`s on a connection of its own (so reads on the shared
//! connection never queue behind them), then one script flips `current` to
//! it with the cycle's `as_of`, if the term is still the leader's: a reader
//! sees one whole cycle, never half of one, and a deposed leader's writes
//! land in sets nobody reads. Scripts name the current set from the hash
//! (keys not declared up front: standalone Redis, not Redis Cluster, as
//! the drops' scripts).

use std::sync::LazyLock;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::KeysInterface;
use fred::types::scripts::Script;
use fred::types::Value;

use crate::bus::{reply_integer, reply_text, Bus, BusError};

/// Bus channel of account states (a JSON array of `AccountState`).
pub const ACCOUNTS_CHANNEL: &str = "leaderboard:accounts";
const META: &str = "leaderboard:meta";
/// A term's set lives this long after its last write.
const SET_TTL: Duration = Duration::from_secs(120);

/// KEYS: meta. ARGV: a random nonce, the sets' name prefix. A new term,
/// unique even across a Redis that lost the counter; returns it.
static NEW_TERM: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local n = redis.call('HINCRBY', KEYS[1], 'terms', 1)
local term = n .. ':' .. ARGV[1]
redis.call('HSET', KEYS[1], 'term', term,
           'set_a', ARGV[2] .. term .. ':a', 'set_b', ARGV[2] .. term .. ':b')
return term
"#,
    )
});

/// KEYS: meta, the set just written. ARGV: term, as_of_ms. -1 when fenced.
static FLIP: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if redis.call('HGET', KEYS[1], 'term') ~= ARGV[1] then return -1 end
local total = redis.call('ZCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'current', KEYS[2], 'as_of_ms', ARGV[2], 'total', total)
return total
"#,
    )
});

/// KEYS: meta. ARGV: count. Nil before the first cycle, else
/// `{as_of_ms, {member, score, …}}`.
static TOP: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local m = redis.call('HMGET', KEYS[1], 'current', 'as_of_ms')
if not m[1] then return false end
return {m[2], redis.call('ZRANGE', m[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')}
"#,
    )
});

/// KEYS: meta. ARGV: member. Nil before the first cycle, `{as_of_ms}` when
/// the user is not ranked yet, else `{as_of_ms, rank (0-based), score,
/// total}`.
static RANK: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local m = redis.call('HMGET', KEYS[1], 'current', 'as_of_ms')
if not m[1] then return false end
local rank = redis.call('ZRANK', m[1], ARGV[1])
if not rank then return {m[2]} end
return {m[2], rank, redis.call('ZSCORE', m[1], ARGV[1]), redis.call('ZCARD', m[1])}
"#,
    )
});

/// KEYS: meta. ARGV: TTL (ms), then score/member pairs, added to both of
/// the term's sets where absent only (in chunks: `unpack` has a limit).
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local sets = redis.call('HMGET', KEYS[1], 'set_a', 'set_b')
local added = 0
for _, set in ipairs(sets) do
  if set then
    for i = 2, #ARGV, 1000 do
      added = added + redis.call('ZADD', set, 'NX', unpack(ARGV, i, math.min(i + 999, #ARGV)))
    end
    if redis.call('PTTL', set) < 0 then redis.call('PEXPIRE', set, ARGV[1]) end
  end
end
return added
"#,
    )
});

/// A write refused because another term holds the leaderboard.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the leaderboard is written under another term")]
    Fenced,
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

/// The sorted-set member of `user`.
pub fn member(user: i64) -> String {
    format!("{user:019}")
}

fn user_of(member: &str) -> Option<i64> {
    member.parse().ok()
}

/// The score of `net_worth` (see the module comment).
pub fn score(net_worth: i64) -> f64 {
    -(net_worth as f64)
}

fn worth_of(score: &str) -> Option<i64> {
    let value: f64 = score.parse().ok()?;
    Some(-value as i64)
}

/// One cycle's first `n` users: `(user id, net worth)` in rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Top {
    pub as_of_ms: i64,
    pub entries: Vec<(i64, i64)>,
}

/// One user's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Ranked {
        as_of_ms: i64,
        /// From 1.
        rank: i64,
        net_worth: i64,
        total: i64,
    },
    /// A cycle exists but this user is not in it yet.
    Unranked,
}

/// The leaderboard's keys and scripts.
#[derive(Clone)]
pub struct Board {
    bus: Bus,
    /// The leader's bulk writes, apart from everything else.
    writer: Client,
}

impl Board {
    /// The board on `bus`, writing through `writer`.
    pub fn new(bus: Bus, writer: Client) -> Board {
        Board { bus, writer }
    }

    /// The bus, for publishing.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Closes the writer's connection.
    pub async fn close(&self) {
        let _ = fred::interfaces::ClientLike::quit(&self.writer).await;
    }

    fn meta(&self) -> String {
        self.bus.key(META)
    }

    /// The full name of `term`'s set `which` (0 or 1).
    fn set(&self, term: &str, which: usize) -> String {
        let name = if which.is_multiple_of(2) { "a" } else { "b" };
        format!("{}{term}:{name}", self.bus.key("leaderboard:"))
    }

    /// Starts a new term; from now on only its sets can become current.
    pub async fn new_term(&self) -> Result<String, WriteError> {
        let nonce: u64 = rand::random();
        let reply = self
            .bus
            .run_script(
                &NEW_TERM,
                vec![self.meta()],
                vec![nonce.to_string(), self.bus.key("leaderboard:")],
            )
            .await?;
        reply_text(&reply).ok_or_else(|| WriteError::Reply(format!("{reply:?}")))
    }

    /// Writes `(net worth, member)` pairs (see [`member`]) into `term`'s set
    /// `which`. The score goes out as the integer `−net worth` (Redis reads
    /// it as a double, exactly below 2^53): no float formatting or
    /// allocation per score, which is most of a cycle's client-side cost.
    pub async fn write(
        &self,
        term: &str,
        which: usize,
        batch: &[(i64, fred::bytes::Bytes)],
    ) -> Result<(), WriteError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut args: Vec<Value> = Vec::with_capacity(1 + batch.len() * 2);
        args.push(Value::from(self.set(term, which)));
        for (worth, member) in batch {
            args.push(Value::Integer(worth.saturating_neg()));
            args.push(Value::Bytes(member.clone()));
        }
        let _added: i64 = fred::interfaces::ClientLike::custom(
            &self.writer,
            fred::types::CustomCommand::new_static(
                "ZADD",
                fred::types::ClusterHash::FirstKey,
                false,
            ),
            args,
        )
        .await
        .map_err(BusError::from)?;
        Ok(())
    }

    /// Keeps `term`'s set `which` alive for another [`SET_TTL`]; false when
    /// the set does not exist (never written, expired, evicted or flushed).
    pub async fn keep(&self, term: &str, which: usize) -> Result<bool, WriteError> {
        let exists: bool = self
            .writer
            .pexpire(self.set(term, which), SET_TTL.as_millis() as i64, None)
            .await
            .map_err(BusError::from)?;
        Ok(exists)
    }

    /// Makes `term`'s set `which` the one readers use, as of `as_of_ms`, if
    /// `term` is still the current term; returns how many users it ranks.
    pub async fn flip(&self, term: &str, which: usize, as_of_ms: i64) -> Result<i64, WriteError> {
        let reply = self
            .bus
            .run_script(
                &FLIP,
                vec![self.meta(), self.set(term, which)],
                vec![term.to_string(), as_of_ms.to_string()],
            )
            .await?;
        match reply_integer(&reply) {
            Some(-1) => Err(WriteError::Fenced),
            Some(total) => Ok(total),
            None => Err(WriteError::Reply(format!("{reply:?}"))),
        }
    }

    /// Ranks new users at `net_worth` in both sets where they are absent, so
    /// they are ranked before the leader's next cycle (never overwriting a
    /// score the leader wrote).
    pub async fn join(&self, users: &[(i64, i64)]) -> Result<(), BusError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut args = Vec::with_capacity(1 + users.len() * 2);
        args.push(SET_TTL.as_millis().to_string());
        for &(user, worth) in users {
            args.push(score(worth).to_string());
            args.push(member(user));
        }
        self.bus.run_script(&JOIN, vec![self.meta()], args).await?;
        Ok(())
    }

    /// The first `n` users of the current cycle, or `None` before the first.
    pub async fn top(&self, n: usize) -> Result<Option<Top>, WriteError> {
        let reply = self
            .bus
            .run_script(&TOP, vec![self.meta()], vec![n.max(1).to_string()])
            .await?;
        let Value::Array(parts) = reply else {
            return Ok(None);
        };
        let bad = || WriteError::Reply("malformed top".into());
        let as_of_ms = parts.first().and_then(reply_integer).ok_or_else(bad)?;
        let Some(Value::Array(pairs)) = parts.get(1) else {
            return Err(bad());
        };
        let mut entries = Vec::with_capacity(pairs.len() / 2);
        for pair in pairs.chunks(2) {
            let [member, score] = pair else {
                return Err(bad());
            };
            let user = reply_text(member)
                .as_deref()
                .and_then(user_of)
                .ok_or_else(bad)?;
            let worth = reply_text(score)
                .as_deref()
                .and_then(worth_of)
                .ok_or_else(bad)?;
            entries.push((user, worth));
        }
        Ok(Some(Top { as_of_ms, entries }))
    }

    /// `user`'s standing in the current cycle, or `None` before the first.
    pub async fn standing(&self, user: i64) -> Result<Option<Standing>, WriteError> {
        let reply = self
            .bus
            .run_script(&RANK, vec![self.meta()], vec![member(user)])
            .await?;
        let Value::Array(parts) = reply else {
            return Ok(None);
        };
        let bad = || WriteError::Reply("malformed rank".into());
        if parts.len() < 4 {
            return Ok(Some(Standing::Unranked));
        }
        Ok(Some(Standing::Ranked {
            as_of_ms: reply_integer(&parts[0]).ok_or_else(bad)?,
            rank: reply_integer(&parts[1]).ok_or_else(bad)? + 1,
            net_worth: reply_text(&parts[2])
                .as_deref()
                .and_then(worth_of)
                .ok_or_else(bad)?,
            total: reply_integer(&parts[3]).ok_or_else(bad)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_sort_like_user_ids_and_scores_round_trip_exactly() {
        let mut members = [member(10), member(9), member(100), member(1)];
        members.sort();
        let users: Vec<i64> = members.iter().filter_map(|m| user_of(m)).collect();
        assert_eq!(users, [1, 9, 10, 100]);
        assert_eq!(member(i64::MAX).len(), 19);
        for worth in [0, 1, 1_000_000, 123_456_789_012, (1 << 53) - 1] {
            assert_eq!(worth_of(&score(worth).to_string()), Some(worth));
        }
        // Higher net worth, lower (more negative) score: first ascending.
        assert!(score(200) < score(100));
    }
}
