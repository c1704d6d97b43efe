//! Makes reservations durable in batches: the first reservation to arrive
//! waits up to `linger` for others (at most `batch_max`), then the whole
//! batch is one Postgres transaction. A few batches run at once, so one slow
//! commit does not stall the rush. Each request waits for its own outcome
//! before its client hears anything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::pg::PgSales;
use super::redis::UPDATES_CHANNEL;
use crate::bus::Bus;
use crate::domain::{Cents, UserId};

/// Batches in flight to Postgres at once.
const CONCURRENT_BATCHES: usize = 4;

/// A reservation Redis granted, on its way to Postgres.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub sale_id: i64,
    pub generation: i64,
    pub user: UserId,
    pub quantity: i64,
    pub amount: Cents,
    pub numbers: Vec<i64>,
    pub key: String,
    pub fingerprint: String,
    /// The inventory's `(generation, seq)` and remaining units right after
    /// this reservation, as the script answered.
    pub version: (i64, i64),
    pub remaining: i64,
}

/// What became of one reservation.
#[derive(Debug)]
pub enum Durable {
    /// Recorded as this purchase.
    Recorded(i64),
    /// The sale's inventory was rebuilt since Redis granted it.
    StaleGeneration,
    /// The key already holds this request's outcome (Redis had forgotten).
    Replay(serde_json::Value),
    /// The key belongs to another request or endpoint.
    KeyReused,
    /// Postgres counts the user at `max_per_user` already.
    LimitExceeded,
    /// Some unit numbers are already sold: `free` lists the others.
    UnitsTaken { free: Vec<i64> },
    /// Postgres could not record it; `kind` says whether the client is
    /// asked to retry (429 or 503) rather than shown a 500.
    Failed { kind: FailureKind, message: String },
}

/// Why a batch could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The pool had no connection to give in time.
    Overloaded,
    /// Postgres could not be reached or went away mid-batch.
    Unavailable,
    Other,
}

impl FailureKind {
    pub fn of(error: &crate::error::Unexpected) -> FailureKind {
        if error.is_overload() {
            FailureKind::Overloaded
        } else if error.is_unavailable() {
            FailureKind::Unavailable
        } else {
            FailureKind::Other
        }
    }
}

impl Durable {
    fn failed(message: &str) -> Durable {
        Durable::Failed {
            kind: FailureKind::Other,
            message: message.to_string(),
        }
    }
}

type Job = (Reservation, oneshot::Sender<Durable>);

/// The handle requests submit through.
pub struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the batching task; `capacity` bounds waiting reservations.
    pub fn start(
        store: Arc<PgSales>,
        bus: Bus,
        batch_max: usize,
        linger: Duration,
        capacity: usize,
    ) -> Batcher {
        let (queue, jobs) = mpsc::channel(capacity);
        tokio::spawn(run(store, bus, jobs, batch_max, linger));
        Batcher { queue }
    }

    /// Queues a reservation and waits until it is durable (or refused).
    pub async fn submit(&self, reservation: Reservation) -> Durable {
        let (reply, outcome) = oneshot::channel();
        if self.queue.send((reservation, reply)).await.is_err() {
            return Durable::failed("the reservation batcher has stopped");
        }
        outcome
            .await
            .unwrap_or_else(|_| Durable::failed("a reservation batch was lost"))
    }
}

/// One bus update per sale for a batch's reservations: who bought, and the
/// newest count among them.
pub fn announcements(batch: &[Reservation]) -> Vec<String> {
    struct Announcement {
        version: (i64, i64),
        remaining: i64,
        buyers: Vec<i64>,
    }
    let mut per_sale: BTreeMap<i64, Announcement> = BTreeMap::new();
    for reservation in batch {
        let entry = per_sale.entry(reservation.sale_id).or_insert(Announcement {
            version: reservation.version,
            remaining: reservation.remaining,
            buyers: Vec::new(),
        });
        if reservation.version > entry.version {
            entry.version = reservation.version;
            entry.remaining = reservation.remaining;
        }
        entry.buyers.push(reservation.user.0);
    }
    per_sale
        .into_iter()
        .map(|(sale_id, a)| {
            serde_json::json!({
                "sale_id": sale_id,
                "gen": a.version.0,
                "seq": a.version.1,
                "remaining": a.remaining,
                "buyers": a.buyers,
            })
            .to_string()
        })
        .collect()
}

async fn run(
    store: Arc<PgSales>,
    bus: Bus,
    mut jobs: mpsc::Receiver<Job>,
    batch_max: usize,
    linger: Duration,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < batch_max {
            match tokio::time::timeout_at(deadline, jobs.recv()).await {
                Ok(Some(job)) => batch.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let store = store.clone();
        let bus = bus.clone();
        tokio::spawn(async move {
            let (reservations, replies): (Vec<Reservation>, Vec<oneshot::Sender<Durable>>) =
                batch.into_iter().unzip();
            // Announced before Postgres: other replicas must know these
            // buyers before any of them hears its 202 (a buyer's retry on
            // another replica must not be told `sold_out` from memory). A
            // reservation that is then refused only sends its buyer on to
            // Redis next time, which is harmless.
            for update in announcements(&reservations) {
                if let Err(error) = bus.publish(UPDATES_CHANNEL, update).await {
                    // Replicas also reload buyers every few intervals.
                    tracing::warn!(%error, "announcing reservations failed");
                }
            }
            let started = std::time::Instant::now();
            let recorded = store.record_reservations(&reservations).await;
            tracing::debug!(
                size = reservations.len(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "reservation batch"
            );
            let outcomes = match recorded {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    tracing::warn!(%error, size = reservations.len(), "a reservation batch failed");
                    let kind = FailureKind::of(&error);
                    let message = error.to_string();
                    reservations
                        .iter()
                        .map(|_| Durable::Failed {
                            kind,
                            message: message.clone(),
                        })
                        .collect()
                }
            };
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Unexpected;

    #[test]
    fn a_lost_database_is_unavailable_an_exhausted_pool_overloaded() {
        let closed = Unexpected::from_error(deadpool_postgres::PoolError::Closed);
        assert_eq!(FailureKind::of(&closed), FailureKind::Unavailable);
        let timeout = Unexpected::from_error(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        ));
        assert_eq!(FailureKind::of(&timeout), FailureKind::Overloaded);
        assert_eq!(
            FailureKind::of(&Unexpected::msg("constraint violated")),
            FailureKind::Other
        );
    }

    fn reservation(sale_id: i64, user: i64, seq: i64, remaining: i64) -> Reservation {
        Reservation {
            sale_id,
            generation: 1,
            user: UserId(user),
            quantity: 1,
            amount: Cents::new(100),
            numbers: vec![seq],
            key: format!("k{user}"),
            fingerprint: "f".into(),
            version: (1, seq),
            remaining,
        }
    }

    #[test]
    fn a_batch_announces_each_sale_once_with_its_buyers_and_newest_count() {
        let batch = [
            reservation(1, 10, 5, 7),
            reservation(1, 11, 9, 3),
            reservation(2, 12, 2, 40),
            reservation(1, 13, 7, 5),
        ];
        // The last one is not part of the batch announced.
        let updates: Vec<serde_json::Value> = announcements(&batch[..3])
            .iter()
            .map(|u| serde_json::from_str(u).unwrap())
            .collect();
        assert_eq!(updates.len(), 2);
        assert_eq!(updates[0]["sale_id"], 1);
        assert_eq!(updates[0]["seq"], 9);
        assert_eq!(updates[0]["remaining"], 3);
        assert_eq!(updates[0]["buyers"], serde_json::json!([10, 11]));
        assert_eq!(updates[1]["buyers"], serde_json::json!([12]));
    }
}
