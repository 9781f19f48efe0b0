//! The push worker: one process at a time sends the durable push queue, under the `push`
//! lease in the store (renewed every 1.25 seconds, lapsing five seconds after its holder stops);
//! every process runs this loop, so when the holder dies another takes the lease and the
//! queue over within seconds. A job is deleted once its requests are done: one that was being
//! sent when its process died is sent again by the next holder. On a store no other process
//! shares (SQLite) there is nobody to take over from: the worker holds no lease and looks at the
//! queue when woken (an event queued notifications, a delivery finished), or once a minute,
//! instead of every half second, so an idle server does not touch its database.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use rhizome_core::clock::now_millis;

use crate::Services;

/// The lease's name.
const LEASE: &str = "push";
/// How long a lease lasts unless renewed.
const LEASE_MS: i64 = 5_000;
/// How often the queue is looked at when nothing wakes the worker, on a store other processes
/// share (they queue jobs too).
const TICK: Duration = Duration::from_millis(500);
/// The same on a store only this process writes, where every job queued wakes the worker: a
/// backstop.
const TICK_ALONE: Duration = Duration::from_secs(60);
/// How long a lease renewed is taken as held without writing it again: a renewal is a write,
/// and an idle server should not write to its database twice a second.
const RENEW_AFTER_MS: i64 = LEASE_MS / 4;
/// Jobs taken from the queue at once.
const BATCH: i64 = 50;

/// The jobs being sent here. Held while the queue is read and its jobs marked, and by a
/// delivery while it deletes its job and unmarks it: a read of the queue from before that
/// delete then never meets the job unmarked, so no job is sent twice.
type InFlight = Arc<tokio::sync::Mutex<HashSet<i64>>>;

impl Services {
    /// Starts the worker that sends notifications to push gateways (once; the server calls it
    /// at start-up). Jobs are queued whether or not it runs here.
    pub fn start_push_worker(self: &Arc<Self>) {
        if !self.config.push.enabled || self.push_queue.started.swap(true, Ordering::SeqCst) {
            return;
        }
        // The worker holds the services weakly: it ends when the server goes.
        let services = Arc::downgrade(self);
        // The process ID names the holder for an operator looking at the table.
        let holder = crate::auth::generate_token(&format!("push-{}", std::process::id()));
        *self.push_queue.holder.lock() = Some(holder.clone());
        let shared = self.store.shared_by_processes();
        let tick = if shared { TICK } else { TICK_ALONE };
        tokio::spawn(async move {
            let in_flight: InFlight = Arc::default();
            // When the lease was last taken or renewed (`None`: not held).
            let mut renewed_at = None;
            loop {
                let Some(strong) = services.upgrade() else { break };
                if strong.push_queue.stopping.load(Ordering::SeqCst) {
                    break;
                }
                renewed_at = if shared {
                    strong.push_worker_step(&holder, &in_flight, renewed_at).await
                } else {
                    strong.send_queued_pushes(&in_flight).await;
                    None
                };
                let wake = async { strong.push_queue.wake.notified().await };
                let _ = tokio::time::timeout(tick, wake).await;
            }
        });
    }

    /// Stops the push worker at shutdown, before the database closes: no more jobs are taken
    /// and the deliveries under way finish (within `limit`; those cut off stay queued in the
    /// database and are sent after the next start, or by another process, as the lease is
    /// given up).
    pub async fn stop_push_worker(&self, limit: Duration) {
        self.push_queue.stopping.store(true, Ordering::SeqCst);
        self.push_queue.wake.notify_one();
        let deliveries = std::mem::take(&mut *self.push_queue.deliveries.lock());
        let aborts: Vec<_> = deliveries.iter().map(|task| task.abort_handle()).collect();
        if tokio::time::timeout(limit, futures_util::future::join_all(deliveries)).await.is_err() {
            for abort in &aborts {
                abort.abort();
            }
            tracing::info!("push notifications still being sent stay queued for the next start");
        }
        let holder = self.push_queue.holder.lock().take();
        if let Some(holder) = holder
            && let Err(error) = self.store.release_job_lease(LEASE, &holder).await
        {
            tracing::warn!(%error, "could not give up the push worker's lease");
        }
    }

    /// Wakes this process's push worker (an event here queued notifications).
    pub(crate) fn wake_push_worker(&self) {
        self.push_queue.wake.notify_one();
    }

    /// One look: renew or take the lease (unless renewed less than [`RENEW_AFTER_MS`] ago,
    /// by the clock, so a process that stood still for longer asks again), then start sending
    /// the queued jobs not already being sent. Returns when the lease was last renewed, if
    /// held.
    async fn push_worker_step(
        self: &Arc<Self>,
        holder: &str,
        in_flight: &InFlight,
        renewed_at: Option<i64>,
    ) -> Option<i64> {
        let now = now_millis();
        let renewed_at = match renewed_at {
            Some(at) if (at..at + RENEW_AFTER_MS).contains(&now) => at,
            _ => match self.store.acquire_job_lease(LEASE, holder, now, now + LEASE_MS).await {
                Ok(true) => now,
                Ok(false) => return None,
                Err(error) => {
                    tracing::warn!(%error, "could not renew the push worker's lease");
                    return None;
                }
            },
        };
        self.send_queued_pushes(in_flight).await;
        Some(renewed_at)
    }

    /// Starts sending the queued jobs not already being sent (up to [`BATCH`] of them); each
    /// delivery wakes the worker when it is done, to look at the queue again.
    async fn send_queued_pushes(self: &Arc<Self>, in_flight: &InFlight) {
        let mut marked = in_flight.lock().await;
        let jobs = match self.store.queued_pushes(BATCH).await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "could not read the push queue");
                return;
            }
        };
        let mut deliveries = self.push_queue.deliveries.lock();
        deliveries.retain(|task| !task.is_finished());
        for job in jobs {
            if self.push_queue.stopping.load(Ordering::SeqCst) || !marked.insert(job.id) {
                continue;
            }
            let services = self.clone();
            let in_flight = in_flight.clone();
            deliveries.push(tokio::spawn(async move {
                services.deliver_pushes(&job).await;
                let mut marked = in_flight.lock().await;
                if let Err(error) = services.store.delete_queued_push(job.id).await {
                    tracing::warn!(%error, "could not remove a sent push job");
                }
                marked.remove(&job.id);
                drop(marked);
                // Jobs beyond the batch, or queued meanwhile, are looked at now.
                services.wake_push_worker();
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rhizome_core::clock::now_millis;
    use rhizome_storage::JobStore;

    use super::{LEASE, LEASE_MS, RENEW_AFTER_MS};
    use crate::test_support;

    /// The worker renews its lease only when the last renewal is older than
    /// `RENEW_AFTER_MS` (an idle server writes less), takes it again after standing still, and
    /// gives up a lease another process took meanwhile.
    #[tokio::test]
    async fn the_lease_is_renewed_only_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_support::sqlite_store(dir.path()).await;
        let services = test_support::services(store.clone());
        let in_flight: super::InFlight = Arc::default();
        let other_takes = |now: i64| {
            let store = store.clone();
            async move { store.acquire_job_lease(LEASE, "other", now, now + LEASE_MS).await.unwrap() }
        };

        // Taken: nobody else gets it.
        let before = now_millis();
        let taken = services.push_worker_step("me", &in_flight, None).await.unwrap();
        assert!(taken >= before);
        assert!(!other_takes(now_millis()).await);

        // Renewed a moment ago: not written again. Were it written, it would run until
        // `LEASE_MS` after now; it still lapses `LEASE_MS` after it was taken.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let kept = services.push_worker_step("me", &in_flight, Some(taken)).await;
        assert_eq!(kept, Some(taken));
        assert!(other_takes(taken + LEASE_MS + 1).await);
        store.release_job_lease(LEASE, "other").await.unwrap();

        // Renewed long ago (or the process stood still): asked for again.
        let stale = now_millis() - RENEW_AFTER_MS - 1;
        let renewed = services.push_worker_step("me", &in_flight, Some(stale)).await.unwrap();
        assert!(renewed > stale + RENEW_AFTER_MS);
        assert!(!other_takes(now_millis()).await);

        // Another process took the lapsed lease: this one stops sending.
        assert!(other_takes(now_millis() + LEASE_MS + 1).await);
        let stale = now_millis() - RENEW_AFTER_MS - 1;
        assert_eq!(services.push_worker_step("me", &in_flight, Some(stale)).await, None);
    }
}
