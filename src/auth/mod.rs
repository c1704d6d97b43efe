//! Accounts and authentication: registration, login, logout, bearer tokens,
//! the admin token, and bulk users for load tests.
//!
//! Owns usernames, password hashes and token revocation. Never moves money
//! itself: opening balances are posted through the ledger's functions in the
//! same transaction that creates the user.

mod pg;
pub mod revocations;
pub mod token;

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use rand::Rng;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

pub use pg::PgAccountStore;
pub use revocations::Revocations;
use token::{Claims, TokenSigner};

use crate::bus::Bus;
use crate::config::{AdminSettings, AuthSettings, Secret};
use crate::domain::{Cents, UserId};
use crate::error::Unexpected;

/// Most users one bulk request may create.
pub const MAX_BULK_USERS: i64 = 10_000;
/// Largest opening balance the admin may grant one user (10 billion units).
pub const MAX_OPENING_BALANCE_CENTS: i64 = 1_000_000_000_000;

/// A validated, lower-cased username: 3–32 chars of `[a-z0-9_]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Lower-cases `raw` and checks the alphabet and length.
    pub fn parse(raw: &str) -> Option<Username> {
        let lowered = raw.to_ascii_lowercase();
        let valid_len = (3..=32).contains(&lowered.len());
        let valid_chars = lowered
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        (valid_len && valid_chars).then_some(Username(lowered))
    }

    /// The stored spelling.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password the user chose: 8–128 characters.
pub struct Password(String);

impl Password {
    /// Checks the length in characters (not bytes).
    pub fn parse(raw: &str) -> Option<Password> {
        (8..=128)
            .contains(&raw.chars().count())
            .then(|| Password(raw.to_string()))
    }
}

/// A user as the account store returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: String,
    /// Total cash, including `held`.
    pub balance: Cents,
    pub held: Cents,
}

/// What login needs to know.
pub struct Credentials {
    pub id: UserId,
    pub username: String,
    /// `None` for bulk-created users, who cannot log in.
    pub password_hash: Option<String>,
}

/// Expected failures of this module.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("username is taken")]
    UsernameTaken,
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("missing, invalid, expired or revoked token")]
    Unauthorized,
    #[error("not allowed")]
    Forbidden,
    #[error("user not found")]
    UnknownUser,
    #[error(transparent)]
    Unexpected(#[from] Unexpected),
}

/// Storage port for accounts.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates a user with `opening` cash (posted to the ledger), or
    /// `UsernameTaken`.
    async fn create_user(
        &self,
        username: &Username,
        password_hash: Option<String>,
        opening: Cents,
    ) -> Result<UserId, AuthError>;

    /// Creates all `usernames` with `opening` cash each, or none of them
    /// (`UsernameTaken`) if any name exists.
    async fn create_users(
        &self,
        usernames: &[Username],
        opening: Cents,
    ) -> Result<Vec<(UserId, String)>, AuthError>;

    /// Looks a user up by name for login.
    async fn credentials(&self, username: &Username) -> Result<Option<Credentials>, AuthError>;

    /// The user's current record, if they exist.
    async fn user(&self, id: UserId) -> Result<Option<UserRecord>, AuthError>;

    /// Records a revoked token until it would have expired anyway.
    async fn revoke(&self, claims: &Claims) -> Result<(), AuthError>;

    /// Every revocation that has not expired.
    async fn revoked_tokens(&self) -> Result<Vec<(i64, i64)>, AuthError>;

    /// Deletes revocations of tokens that have expired anyway.
    async fn purge_expired_revocations(&self) -> Result<u64, AuthError>;

    /// The token signing secret shared by all replicas, created on first use.
    async fn shared_token_secret(&self) -> Result<String, AuthError>;
}

/// Who a bearer token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    User(Claims),
    Admin,
}

/// Registration, login and token checks.
pub struct AuthService {
    store: Arc<dyn AccountStore>,
    signer: TokenSigner,
    revocations: Arc<Revocations>,
    admin_token: Option<Secret>,
    token_ttl_seconds: i64,
    starting_balance: Cents,
    hashing: Semaphore,
    /// Verified against when the username is unknown, so a login takes as
    /// long for a missing user as for a wrong password.
    dummy_hash: String,
}

/// Compares the presented token with the configured admin token in time
/// that depends on neither: both are hashed first, so even the length of
/// the configured token does not show in how long a refusal takes.
fn admin_token_matches(configured: &str, presented: &str) -> bool {
    use sha2::{Digest, Sha256};
    let configured = Sha256::digest(configured.as_bytes());
    let presented = Sha256::digest(presented.as_bytes());
    bool::from(configured.as_slice().ct_eq(presented.as_slice()))
}

impl AuthService {
    /// Builds the service; the signing secret is `auth.token_secret` or the
    /// one shared through the store.
    pub async fn new(
        store: Arc<dyn AccountStore>,
        revocations: Arc<Revocations>,
        auth: &AuthSettings,
        admin: &AdminSettings,
        starting_balance: Cents,
    ) -> Result<AuthService, AuthError> {
        let secret = match &auth.token_secret {
            Some(secret) => secret.expose().to_string(),
            None => store.shared_token_secret().await?,
        };
        let dummy_hash = hash_password_blocking("not the password of anyone".to_string())?;
        Ok(AuthService {
            store,
            signer: TokenSigner::new(secret.as_bytes()),
            revocations,
            admin_token: admin.token.clone(),
            token_ttl_seconds: i64::try_from(auth.token_ttl_seconds).unwrap_or(i64::MAX / 2),
            starting_balance,
            hashing: Semaphore::new(auth.max_concurrent_hashes),
            dummy_hash,
        })
    }

    /// The store, for the background tasks that keep revocations fresh.
    pub fn store(&self) -> &Arc<dyn AccountStore> {
        &self.store
    }

    /// The opening balance of a new user.
    pub fn starting_balance(&self) -> Cents {
        self.starting_balance
    }

    /// Identifies the bearer of `token`: the admin (constant-time match of
    /// the configured token) or a user with a valid, unrevoked token.
    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(admin) = &self.admin_token {
            if admin_token_matches(admin.expose(), token) {
                return Ok(Principal::Admin);
            }
        }
        let claims = self
            .signer
            .verify(token, unix_now())
            .map_err(|_| AuthError::Unauthorized)?;
        if self.revocations.contains(claims.token_id) {
            return Err(AuthError::Unauthorized);
        }
        Ok(Principal::User(claims))
    }

    /// True when an admin token is configured at all.
    pub fn admin_enabled(&self) -> bool {
        self.admin_token.is_some()
    }

    fn issue(&self, user_id: UserId) -> String {
        let claims = Claims {
            user_id,
            token_id: rand::thread_rng().gen_range(1..i64::MAX),
            expires_at: unix_now().saturating_add(self.token_ttl_seconds),
        };
        self.signer.sign(claims)
    }

    /// Creates an account with the starting balance and signs the user in.
    #[tracing::instrument(skip_all, fields(username = %username.as_str()))]
    pub async fn register(
        &self,
        username: &Username,
        password: Password,
    ) -> Result<(UserId, String), AuthError> {
        let hash = self.hash(password).await?;
        let id = self
            .store
            .create_user(username, Some(hash), self.starting_balance)
            .await?;
        Ok((id, self.issue(id)))
    }

    /// Checks a password and issues a token.
    #[tracing::instrument(skip_all, fields(username = %username.as_str()))]
    pub async fn login(
        &self,
        username: &Username,
        password: &str,
    ) -> Result<(UserId, String, String), AuthError> {
        let credentials = self.store.credentials(username).await?;
        let (hash, known) = match credentials.as_ref().and_then(|c| c.password_hash.clone()) {
            Some(hash) => (hash, true),
            None => (self.dummy_hash.clone(), false),
        };
        let matches = self.verify(password.to_string(), hash).await?;
        match credentials {
            Some(user) if known && matches => {
                let token = self.issue(user.id);
                Ok((user.id, user.username, token))
            }
            _ => Err(AuthError::InvalidCredentials),
        }
    }

    /// Revokes the token on this replica at once and on every other replica
    /// through the bus.
    pub async fn logout(&self, claims: &Claims, bus: &Bus) -> Result<(), AuthError> {
        self.store.revoke(claims).await?;
        self.revocations.insert(claims.token_id, claims.expires_at);
        if let Err(error) = bus
            .publish(revocations::CHANNEL, revocations::encode(claims))
            .await
        {
            // Other replicas also reload revocations from Postgres whenever
            // their subscription reconnects, and every few seconds.
            tracing::warn!(%error, "could not broadcast a revocation");
        }
        Ok(())
    }

    /// The current record of a signed-in user.
    pub async fn me(&self, id: UserId) -> Result<UserRecord, AuthError> {
        self.store.user(id).await?.ok_or(AuthError::UnknownUser)
    }

    /// Creates `prefix`1…`prefix`count without passwords, each with a token.
    pub async fn bulk_create(
        &self,
        usernames: &[Username],
        opening: Cents,
    ) -> Result<Vec<(UserId, String, String)>, AuthError> {
        let created = self.store.create_users(usernames, opening).await?;
        Ok(created
            .into_iter()
            .map(|(id, name)| (id, name, self.issue(id)))
            .collect())
    }

    async fn hash(&self, password: Password) -> Result<String, AuthError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(Unexpected::from_error)?;
        tokio::task::spawn_blocking(move || hash_password_blocking(password.0))
            .await
            .map_err(Unexpected::from_error)?
    }

    async fn verify(&self, password: String, hash: String) -> Result<bool, AuthError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(Unexpected::from_error)?;
        tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&hash).map_err(|e| Unexpected::msg(e.to_string()))?;
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
        .map_err(Unexpected::from_error)?
    }
}

/// argon2id with the crate's defaults (19 MiB, 2 passes), on the calling
/// thread: call it from the blocking pool.
fn hash_password_blocking(password: String) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Unexpected(Unexpected::msg(e.to_string())))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_matches_only_itself_whatever_the_length() {
        assert!(admin_token_matches("admin-token-1", "admin-token-1"));
        for presented in [
            "",
            "admin-token-",
            "admin-token-2",
            "admin-token-11",
            "ADMIN-TOKEN-1",
        ] {
            assert!(
                !admin_token_matches("admin-token-1", presented),
                "{presented}"
            );
        }
    }

    #[test]
    fn usernames_are_lower_cased_and_checked() {
        assert_eq!(Username::parse("Alice_1").unwrap().as_str(), "alice_1");
        assert!(Username::parse("ab").is_none());
        assert!(Username::parse(&"a".repeat(33)).is_none());
        assert!(Username::parse("robert'); DROP TABLE users;--").is_none());
        assert!(Username::parse("émile").is_none());
        assert!(Username::parse("with space").is_none());
    }

    #[test]
    fn passwords_are_counted_in_characters() {
        assert!(Password::parse("1234567").is_none());
        assert!(Password::parse("12345678").is_some());
        assert!(Password::parse(&"é".repeat(128)).is_some());
        assert!(Password::parse(&"x".repeat(129)).is_none());
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password_blocking("correct horse".into()).unwrap();
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
    }
}
