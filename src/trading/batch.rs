//! Group commit: orders arriving together are gathered for at most `wait`
//! (or until `max` are waiting) and handed to one call of the executor,
//! which applies them in one transaction; each caller is answered with its
//! own result only when that call returns, that is after the commit.
//!
//! Pure queueing, no SQL: the executor is a closure, so the gathering rules
//! are tested on their own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How batches are gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most jobs in one batch.
    pub max: usize,
    /// Longest a job waits for others once it is first in line. Zero:
    /// only what is already queued joins it.
    pub wait: Duration,
    /// Batches applied at once (one connection each).
    pub executors: usize,
}

/// What one gathered batch looked like, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchShape {
    pub size: usize,
    /// How long its first job waited in the queue.
    pub oldest_wait: Duration,
}

struct Job<J, R> {
    job: J,
    queued: Instant,
    reply: oneshot::Sender<R>,
}

/// The queues in front of the executors: one each, so that jobs with one
/// key (orders of one user) always meet the same executor, in the order
/// they were submitted, and two executors never contend for them.
pub struct Batcher<J, R> {
    senders: Vec<mpsc::Sender<Job<J, R>>>,
}

impl<J: Send + 'static, R: Send + 'static> Batcher<J, R> {
    /// Starts `limits.executors` tasks that apply batches with `run`, which
    /// must return one result per job, in order. `observe` sees each batch
    /// before it runs.
    pub fn spawn<F, Fut>(
        limits: BatchLimits,
        run: F,
        observe: impl Fn(BatchShape) + Send + Sync + 'static,
    ) -> Batcher<J, R>
    where
        F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let max = limits.max.max(1);
        let run = Arc::new(run);
        let observe = Arc::new(observe);
        let senders = (0..limits.executors.max(1))
            .map(|_| {
                let (sender, mut receiver) = mpsc::channel::<Job<J, R>>(max * 4);
                let run = run.clone();
                let observe = observe.clone();
                tokio::spawn(async move {
                    while let Some(batch) = gather(&mut receiver, max, limits.wait).await {
                        observe(BatchShape {
                            size: batch.len(),
                            oldest_wait: batch[0].queued.elapsed(),
                        });
                        let (jobs, replies): (Vec<J>, Vec<oneshot::Sender<R>>) =
                            batch.into_iter().map(|job| (job.job, job.reply)).unzip();
                        // In a task of its own: a panic fails this batch's
                        // callers (their replies are dropped: `submit` says
                        // None), not the executor.
                        let Ok(results) = tokio::spawn(run(jobs)).await else {
                            continue;
                        };
                        debug_assert_eq!(results.len(), replies.len());
                        for (reply, result) in replies.into_iter().zip(results) {
                            // A caller that gave up does not hold up the rest.
                            let _ = reply.send(result);
                        }
                    }
                });
                sender
            })
            .collect();
        Batcher { senders }
    }

    /// Queues `job` with the executor of `key` and waits for its result;
    /// None if the executors are gone (shutting down) or dropped it.
    pub async fn submit(&self, key: u64, job: J) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            job,
            queued: Instant::now(),
            reply,
        };
        let shard = usize::try_from(key % self.senders.len() as u64).unwrap_or(0);
        self.senders[shard].send(job).await.ok()?;
        answer.await.ok()
    }
}

/// The next batch: the first job to arrive, everything already queued
/// behind it, then whatever arrives until `wait` after the first was
/// queued, up to `max`. None when every sender is gone.
async fn gather<J, R>(
    receiver: &mut mpsc::Receiver<Job<J, R>>,
    max: usize,
    wait: Duration,
) -> Option<Vec<Job<J, R>>> {
    let first = receiver.recv().await?;
    let deadline = first.queued + wait;
    let mut batch = vec![first];
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    while batch.len() < max && !wait.is_zero() {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(job)) => batch.push(job),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn limits(max: usize, wait_ms: u64, executors: usize) -> BatchLimits {
        BatchLimits {
            max,
            wait: Duration::from_millis(wait_ms),
            executors,
        }
    }

    #[tokio::test]
    async fn every_caller_gets_its_own_result_and_no_batch_is_over_the_limit() {
        let sizes = Arc::new(StdMutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Arc::new(Batcher::spawn(
            limits(8, 2, 2),
            |jobs: Vec<u64>| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                jobs.into_iter().map(|job| job * 10).collect::<Vec<_>>()
            },
            move |shape| seen.lock().unwrap().push(shape.size),
        ));
        let calls: Vec<_> = (0..500u64)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (n, batcher.submit(n, n).await) })
            })
            .collect();
        for call in calls {
            let (n, result) = call.await.unwrap();
            assert_eq!(result, Some(n * 10));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 500);
        assert!(sizes.iter().all(|size| (1..=8).contains(size)), "{sizes:?}");
        assert!(
            sizes.iter().any(|size| *size > 1),
            "concurrent jobs were batched: {sizes:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_job_waits_at_most_the_configured_wait() {
        let batcher = Batcher::spawn(
            limits(100, 5, 1),
            |jobs: Vec<u8>| async move { jobs },
            |_| {},
        );
        let started = Instant::now();
        assert_eq!(batcher.submit(0, 7).await, Some(7));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(5), "{waited:?}");
        assert!(waited < Duration::from_millis(6), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_wait_a_lone_job_runs_at_once() {
        let batcher = Batcher::spawn(
            limits(100, 0, 1),
            |jobs: Vec<u8>| async move { jobs },
            |_| {},
        );
        let started = Instant::now();
        assert_eq!(batcher.submit(0, 1).await, Some(1));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_panicking_batch_fails_its_callers_and_the_executor_goes_on() {
        let batcher = Batcher::spawn(
            limits(8, 0, 1),
            |jobs: Vec<u8>| async move {
                assert!(!jobs.contains(&13), "unlucky batch");
                jobs
            },
            |_| {},
        );
        assert_eq!(batcher.submit(0, 13).await, None);
        assert_eq!(batcher.submit(0, 1).await, Some(1));
    }

    #[tokio::test]
    async fn a_full_batch_does_not_wait() {
        let batcher = Arc::new(Batcher::spawn(
            limits(4, 60_000, 1),
            |jobs: Vec<u8>| async move { jobs },
            |_| {},
        ));
        let started = std::time::Instant::now();
        let calls: Vec<_> = (0..4u8)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(0, n).await })
            })
            .collect();
        for call in calls {
            assert!(call.await.unwrap().is_some());
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
