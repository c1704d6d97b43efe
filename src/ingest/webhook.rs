//! The signed feed webhook: a feed provider pushes events without the admin
//! token, signing each body with a secret shared out of band (Stripe's
//! scheme). The header is
//!
//! ```text
//! Matchday-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
//! ```
//!
//! `v1` may appear more than once (while a provider rotates secrets); one
//! match is enough. A timestamp further than the tolerance from now, either
//! way, is refused, so a captured request cannot be replayed later; within
//! the window a replay is the same event again, which the feed's `event_id`
//! deduplication answers with `duplicate`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Matchday-Signature";

/// Why a webhook request is refused (all are 401s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Matchday-Signature header is missing")]
    Missing,
    #[error("the Matchday-Signature header is not t=<unix seconds>,v1=<hex>")]
    Malformed,
    #[error("the signature's timestamp is outside the accepted window")]
    Expired,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks signatures with one shared secret.
pub struct WebhookVerifier {
    secret: Secret,
    tolerance_seconds: i64,
}

impl WebhookVerifier {
    pub fn new(secret: Secret, tolerance_seconds: u64) -> WebhookVerifier {
        WebhookVerifier {
            secret,
            tolerance_seconds: i64::try_from(tolerance_seconds).unwrap_or(i64::MAX),
        }
    }

    /// Accepts `body` if `header` carries a fresh signature of it.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => {
                    let parsed = value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?;
                    if timestamp.replace(parsed).is_some() {
                        return Err(SignatureError::Malformed);
                    }
                }
                Some(("v1", value)) => {
                    signatures.push(decode_hex(value).ok_or(SignatureError::Malformed)?)
                }
                // Unknown schemes are skipped, as Stripe's clients do.
                Some(_) => {}
                None => return Err(SignatureError::Malformed),
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if now_unix.abs_diff(timestamp) > self.tolerance_seconds.unsigned_abs() {
            return Err(SignatureError::Expired);
        }
        // verify_slice compares in constant time.
        let matches = signatures
            .iter()
            .any(|signature| self.mac(timestamp, body).verify_slice(signature).is_ok());
        if matches {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }

    fn mac(&self, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The header value a provider sends with `body` at `timestamp`.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let digest = self.mac(timestamp, body).finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("t={timestamp},v1={hex}")
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn verifier() -> WebhookVerifier {
        WebhookVerifier::new(Secret::new("a-shared-secret-of-some-length!!"), 300)
    }

    #[test]
    fn a_fresh_signature_of_the_exact_body_is_accepted() {
        let body = br#"{"event_id":"e1"}"#;
        let header = verifier().sign(NOW - 10, body);
        assert_eq!(verifier().verify(Some(&header), body, NOW), Ok(()));
        // Clock skew the other way is tolerated too.
        let header = verifier().sign(NOW + 200, body);
        assert_eq!(verifier().verify(Some(&header), body, NOW), Ok(()));
    }

    #[test]
    fn a_changed_body_or_another_secret_is_a_mismatch() {
        let header = verifier().sign(NOW, b"{\"player_id\":1}");
        assert_eq!(
            verifier().verify(Some(&header), b"{\"player_id\":2}", NOW),
            Err(SignatureError::Mismatch)
        );
        let other = WebhookVerifier::new(Secret::new("another-secret-entirely-0123456789"), 300);
        let header = other.sign(NOW, b"{}");
        assert_eq!(
            verifier().verify(Some(&header), b"{}", NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_timestamp_outside_the_window_is_expired_even_when_signed_right() {
        let header = verifier().sign(NOW - 301, b"{}");
        assert_eq!(
            verifier().verify(Some(&header), b"{}", NOW),
            Err(SignatureError::Expired)
        );
        let header = verifier().sign(NOW + 301, b"{}");
        assert_eq!(
            verifier().verify(Some(&header), b"{}", NOW),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn a_changed_timestamp_breaks_the_signature() {
        let header = verifier().sign(NOW - 100, b"{}");
        let moved = header.replace(&format!("t={}", NOW - 100), &format!("t={NOW}"));
        assert_eq!(
            verifier().verify(Some(&moved), b"{}", NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let good = verifier().sign(NOW, b"{}");
        let hex = good.split("v1=").nth(1).unwrap();
        let header = format!("t={NOW},v1={},v1={hex},v0=zz", "00".repeat(32));
        assert_eq!(verifier().verify(Some(&header), b"{}", NOW), Ok(()));
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        let v = verifier();
        assert_eq!(v.verify(None, b"{}", NOW), Err(SignatureError::Missing));
        for header in [
            "",
            "garbage",
            "t=abc,v1=00",
            "t=1",
            "v1=00",
            "t=1,t=2,v1=00",
            "t=1,v1=zz",
            "t=1,v1=0",
        ] {
            assert_eq!(
                v.verify(Some(header), b"{}", NOW),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }
}
