//! The double-entry ledger: every movement of cash is a set of entries that
//! sums to zero, and users' cash balances change only together with them.
//!
//! Accounts: one `user` account per user (its balance is the user's
//! `cash_cents`), the `market` that trades are made against, and the `mint`
//! that opening balances come from. Entries are insert-only; the market's and
//! the mint's balances are sums, never a row every trade would update (a
//! global hot row would serialise all trading).
//!
//! Other modules move cash only through the posting functions in [`posting`],
//! inside their own transaction, so a balance change and its entries commit
//! together or not at all.

mod pg;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use pg::PgLedger;

use crate::error::Unexpected;

/// Posting functions for other modules' `pg.rs` files: each is one guarded
/// SQL statement run on the caller's transaction.
pub mod posting {
    pub use super::pg::{
        account_states, balances, capture_holds, credit_from_market, debit_to_market, hold_cash,
        lock_users, lock_users_prepared, open_accounts, Posted, LOCK_USERS,
    };
}

/// Everything a user owns, as of one `revision` (bumped by every change of
/// their cash, held cash or holdings: see `migrations/0004_leaderboard.sql`).
/// Read inside the transaction that made the change, so it is exactly the
/// state that commit left; consumers keep the highest revision they hear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub user_id: i64,
    pub username: String,
    pub revision: i64,
    /// Total cash, including `held_cents`.
    pub cash_cents: i64,
    pub held_cents: i64,
    /// Non-empty holdings, by player id.
    pub holdings: Vec<Position>,
}

/// One holding inside an [`AccountState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub player_id: i64,
    pub quantity: i64,
    /// Cost basis of the shares held.
    pub cost_cents: i64,
}

/// One holding changed together with the cash, as of `revision`: all an
/// order changes, known from what its statements return, so an order pays
/// no extra query for it. Applies only on top of the state at
/// `revision − 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldingChange {
    pub user_id: i64,
    pub revision: i64,
    pub cash_cents: i64,
    pub held_cents: i64,
    /// The holding after the change (quantity 0: none left).
    pub position: Position,
}

/// How a transaction tells what it did to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountUpdate {
    /// The whole account.
    Full(AccountState),
    /// One holding and the cash.
    Holding(HoldingChange),
}

impl AccountUpdate {
    /// The account's user.
    pub fn user_id(&self) -> i64 {
        match self {
            AccountUpdate::Full(state) => state.user_id,
            AccountUpdate::Holding(change) => change.user_id,
        }
    }
}

/// Told, after commit, of every account a transaction changed (the
/// leaderboard's snapshots on every replica are kept current this way).
/// Must not block: implementations queue.
pub trait AccountSink: Send + Sync {
    fn accounts_changed(&self, updates: Vec<AccountUpdate>);
}

/// The books at one instant, as `/api/v1/admin/audit` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub users: i64,
    pub cash_cents_total: i64,
    pub held_cents_total: i64,
    /// Σ of every ledger entry, market and mint included: must be 0.
    pub ledger_sum_cents: i64,
    pub negative_cash: i64,
    pub negative_holdings: i64,
    /// Users whose `cash_cents` differs from the sum of their ledger entries.
    pub cash_mismatches: i64,
    /// Ledger transactions whose entries do not sum to zero.
    pub unbalanced_transactions: i64,
}

impl AuditReport {
    /// The books balance and nothing is negative.
    pub fn ok(&self) -> bool {
        self.ledger_sum_cents == 0
            && self.negative_cash == 0
            && self.negative_holdings == 0
            && self.cash_mismatches == 0
            && self.unbalanced_transactions == 0
    }
}

/// Read side of the ledger.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Checks the whole book in one consistent snapshot.
    async fn audit(&self) -> Result<AuditReport, Unexpected>;
}
