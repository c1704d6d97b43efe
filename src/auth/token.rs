//! Signed bearer tokens: checking one is a MAC and a hash-set lookup, with no
//! database round trip.
//!
//! Layout: base64url( user_id ‖ token_id ‖ expires_at ‖ HMAC-SHA256 ), the
//! three integers big-endian `i64`, the MAC over those 24 bytes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::UserId;

type HmacSha256 = Hmac<Sha256>;

const PAYLOAD_BYTES: usize = 24;
const MAC_BYTES: usize = 32;
/// Longest string that can be a token; longer input is rejected unread.
const MAX_TOKEN_CHARS: usize = 128;

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub user_id: UserId,
    /// Unique per issued token; revocation is by this id.
    pub token_id: i64,
    /// Unix seconds after which the token is no longer accepted.
    pub expires_at: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("expired token")]
    Expired,
}

/// Signs and verifies tokens with one secret key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
}

impl TokenSigner {
    /// A signer for `secret` (at least 32 bytes of entropy expected).
    pub fn new(secret: &[u8]) -> TokenSigner {
        TokenSigner {
            key: secret.to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    /// Encodes and signs `claims`.
    pub fn sign(&self, claims: Claims) -> String {
        let mut bytes = Vec::with_capacity(PAYLOAD_BYTES + MAC_BYTES);
        bytes.extend_from_slice(&claims.user_id.0.to_be_bytes());
        bytes.extend_from_slice(&claims.token_id.to_be_bytes());
        bytes.extend_from_slice(&claims.expires_at.to_be_bytes());
        let mut mac = self.mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks the signature and expiry of `token` at unix time `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() != PAYLOAD_BYTES + MAC_BYTES {
            return Err(TokenError::Malformed);
        }
        let (payload, signature) = bytes.split_at(PAYLOAD_BYTES);
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_slice(signature)
            .map_err(|_| TokenError::BadSignature)?;
        let field = |i: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&payload[i * 8..(i + 1) * 8]);
            i64::from_be_bytes(raw)
        };
        let claims = Claims {
            user_id: UserId(field(0)),
            token_id: field(1),
            expires_at: field(2),
        };
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            user_id: UserId(42),
            token_id: 7,
            expires_at: 2_000,
        }
    }

    #[test]
    fn a_signed_token_verifies_to_the_same_claims() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let token = signer.sign(claims());
        assert_eq!(signer.verify(&token, 1_000), Ok(claims()));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let token = TokenSigner::new(b"one key one key one key one key!").sign(claims());
        let other = TokenSigner::new(b"another key, another key, yes!!!");
        assert_eq!(other.verify(&token, 1_000), Err(TokenError::BadSignature));
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let raw = URL_SAFE_NO_PAD.decode(signer.sign(claims())).unwrap();
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut tampered = raw.clone();
                tampered[byte] ^= 1 << bit;
                let token = URL_SAFE_NO_PAD.encode(&tampered);
                assert!(
                    signer.verify(&token, 1_000).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn expired_and_garbage_tokens_are_refused() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let token = signer.sign(claims());
        assert_eq!(signer.verify(&token, 2_000), Err(TokenError::Expired));
        assert_eq!(signer.verify("", 0), Err(TokenError::Malformed));
        assert_eq!(signer.verify("not base64 !", 0), Err(TokenError::Malformed));
        assert_eq!(
            signer.verify(&"A".repeat(500), 0),
            Err(TokenError::Malformed)
        );
    }
}
