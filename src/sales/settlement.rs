//! Settlement workers: every replica runs one. Each round CAPTUREs held
//! purchases (its own, or those a stopped worker left between HOLD and
//! CAPTURE), takes tokens from the bucket every replica shares, HOLDs that
//! many reserved purchases, and CAPTUREs them. Every step is one
//! transaction that moves a purchase from one status to the next, so a
//! worker stopped anywhere leaves rows any other worker finishes, once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::pg::{Failure, PgSales};
use super::redis::RedisInventory;
use super::PurchaseNotifier;
use crate::domain::UserId;
use crate::error::Unexpected;
use crate::ledger::{AccountSink, AccountState, AccountUpdate};

/// Whole accounts, as updates.
fn full(states: Vec<AccountState>) -> Vec<AccountUpdate> {
    states.into_iter().map(AccountUpdate::Full).collect()
}

/// How long an idle worker sleeps before looking for work again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// One replica's settlement worker.
pub struct Settler {
    store: Arc<PgSales>,
    inventory: RedisInventory,
    notifier: Arc<dyn PurchaseNotifier>,
    accounts: Arc<dyn AccountSink>,
    batch_max: u64,
}

impl Settler {
    /// A worker claiming at most `batch_max` purchases per step.
    pub fn new(
        store: Arc<PgSales>,
        inventory: RedisInventory,
        notifier: Arc<dyn PurchaseNotifier>,
        accounts: Arc<dyn AccountSink>,
        batch_max: usize,
    ) -> Settler {
        Settler {
            store,
            inventory,
            notifier,
            accounts,
            batch_max: batch_max.max(1) as u64,
        }
    }

    /// Completes held purchases; returns how many.
    async fn capture(&self) -> Result<usize, Unexpected> {
        let captured = self.store.capture_step(self.batch_max as i64).await?;
        if !captured.accounts.is_empty() {
            self.accounts.accounts_changed(full(captured.accounts));
        }
        for (user, purchase) in &captured.completed {
            self.notifier.purchase_changed(*user, purchase).await;
        }
        Ok(captured.completed.len())
    }

    /// Sends a failed purchase's units back to the counter (those the
    /// waitlist did not take) and tells everyone concerned.
    async fn finish_failure(&self, failure: &Failure) {
        let mut deltas: Vec<(UserId, i64)> = vec![(failure.user, -failure.purchase.quantity)];
        deltas.extend(failure.granted.iter().map(|(user, _)| (*user, 1)));
        if let Err(error) = self
            .inventory
            .give_back(
                failure.purchase.sale_id,
                failure.generation,
                &failure.released,
                &deltas,
                None,
            )
            .await
        {
            // Reconciliation finds the counter short and rebuilds it.
            tracing::warn!(%error, sale_id = failure.purchase.sale_id, "returning units to redis failed");
        }
        self.notifier
            .purchase_changed(failure.user, &failure.purchase)
            .await;
        for (user, purchase) in &failure.granted {
            self.notifier.purchase_changed(*user, purchase).await;
        }
    }

    /// One round at `rate_per_sec`; returns how many purchases moved.
    pub async fn round(&self, rate_per_sec: u64) -> Result<usize, Unexpected> {
        let mut moved = self.capture().await?;
        let (tokens, window) = match self
            .inventory
            .settlement_tokens(self.batch_max, rate_per_sec)
            .await
        {
            Ok(granted) => granted,
            // Pacing is not correctness: without Redis, each replica paces
            // itself at a tenth of the rate per round.
            Err(error) => {
                tracing::warn!(%error, "settlement bucket unavailable; pacing locally");
                ((rate_per_sec / 10).clamp(1, self.batch_max), None)
            }
        };
        if tokens == 0 {
            return Ok(moved);
        }
        let mut outcome = self.store.hold_step(tokens as i64).await?;
        if !outcome.accounts.is_empty() {
            self.accounts
                .accounts_changed(full(std::mem::take(&mut outcome.accounts)));
        }
        let claimed = (outcome.held.len() + outcome.failures.len()) as u64;
        if let (Some(window), true) = (window, claimed < tokens) {
            if let Err(error) = self.inventory.refund_tokens(window, tokens - claimed).await {
                tracing::debug!(%error, "returning unused settlement tokens failed");
            }
        }
        for (user, purchase) in &outcome.held {
            self.notifier.purchase_changed(*user, purchase).await;
        }
        for failure in &outcome.failures {
            self.finish_failure(failure).await;
        }
        moved += outcome.failures.len();
        if !outcome.held.is_empty() {
            moved += self.capture().await?;
        }
        Ok(moved)
    }
}

/// Runs the worker until `shutdown` flips.
pub async fn settle_loop(settler: Settler, rate_per_sec: u64, mut shutdown: watch::Receiver<bool>) {
    loop {
        let pause = if rate_per_sec == 0 {
            Duration::from_secs(1)
        } else {
            match settler.round(rate_per_sec).await {
                Ok(0) => IDLE_POLL,
                Ok(_) => Duration::ZERO,
                Err(error) => {
                    tracing::warn!(%error, "settlement round failed");
                    Duration::from_millis(500)
                }
            }
        };
        if pause.is_zero() {
            tokio::task::yield_now().await;
            if *shutdown.borrow() {
                return;
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
