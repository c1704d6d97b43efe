//! Idempotency keys for endpoints that move money (Stripe's design, the IETF
//! `Idempotency-Key` draft).
//!
//! A key is scoped per user and belongs to one endpoint. Its row is written in
//! the same transaction as the outcome it records, so "executed" and
//! "remembered" cannot disagree. Concurrent requests with one key are told
//! apart by a transaction-scoped advisory lock: whoever holds it is executing;
//! anyone else hears `request_in_progress`. A crash releases the lock with the
//! transaction, so no key is ever stuck "in progress".
//!
//! This module never decides what an outcome means: callers store and replay
//! their own JSON.

pub mod pg;

use std::fmt::Write;

use sha2::{Digest, Sha256};

/// Longest key accepted (API.md).
pub const MAX_KEY_CHARS: usize = 64;

/// A key: 1–64 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks length and alphabet (`!`..=`~`).
    pub fn parse(raw: &str) -> Option<IdempotencyKey> {
        let valid =
            (1..=MAX_KEY_CHARS).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic());
        valid.then(|| IdempotencyKey(raw.to_string()))
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request's identity for "same body?" comparisons: a SHA-256 over the
/// endpoint and the canonical form of the parsed request.
pub fn fingerprint(endpoint: &str, canonical_request: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(endpoint.as_bytes());
    hasher.update([0]);
    hasher.update(canonical_request.as_bytes());
    // One string, not one per byte: this runs on every purchase and order.
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// What a key says about a new request.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Never seen: execute, then [`pg::record`] the outcome in the same
    /// transaction.
    Fresh,
    /// Another request with this key is executing now.
    InProgress,
    /// Seen with this same request: replay the stored outcome.
    Replay(serde_json::Value),
    /// Seen with another body or on another endpoint.
    Reused,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_sixty_four_visible_ascii_characters() {
        assert!(IdempotencyKey::parse("").is_none());
        assert!(IdempotencyKey::parse("a").is_some());
        assert!(IdempotencyKey::parse(&"k".repeat(64)).is_some());
        assert!(IdempotencyKey::parse(&"k".repeat(65)).is_none());
        assert!(IdempotencyKey::parse("has space").is_none());
        assert!(IdempotencyKey::parse("tab\there").is_none());
        assert!(IdempotencyKey::parse("clé").is_none());
        assert!(IdempotencyKey::parse("a-b_c.d:e/f~!").is_some());
    }

    #[test]
    fn fingerprints_differ_by_endpoint_and_body() {
        let a = fingerprint("orders", "{\"q\":1}");
        assert_eq!(a, fingerprint("orders", "{\"q\":1}"));
        assert_ne!(a, fingerprint("orders", "{\"q\":2}"));
        assert_ne!(a, fingerprint("purchases", "{\"q\":1}"));
    }
}
