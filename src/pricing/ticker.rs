//! The between-event ticker: on the leader only, every `pricing.tick_ms`,
//! one fenced batch update of every unlocked player, then one publish.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;

use super::{pg, PricingService};
use crate::leader::Leadership;

/// Ticks until `shutdown` flips. Does nothing while this replica follows.
pub async fn run(
    pricing: Arc<PricingService>,
    leadership: Leadership,
    tick_ms: u64,
    history_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    if tick_ms == 0 {
        return;
    }
    let mut rng = StdRng::from_entropy();
    // Charts need a point every `history_ms`, not every tick: at 250 ms and
    // 40 players every tick would be 14 M rows a day.
    let history_every = (history_ms / tick_ms).max(1);
    let mut ticks = 0u64;
    let mut every = tokio::time::interval(Duration::from_millis(tick_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = every.tick() => {}
        }
        let Some(leader) = leadership.connection() else {
            continue;
        };
        ticks += 1;
        let record_history = ticks.is_multiple_of(history_every);
        match pg::tick_all(&leader, pricing.rules(), &mut rng, record_history).await {
            Ok(ticks) if !ticks.is_empty() => pricing.sink().ticks(&ticks).await,
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "tick failed"),
        }
    }
}
