//! The push worker: one process at a time sends the durable push queue, under the `push`
//! lease in the store (renewed every second, lapsing five seconds after its holder stops);
//! every process runs this loop, so when the holder dies another takes the lease and the
//! queue over within seconds. A job is deleted once its requests are done: one that was being
//! sent when its process died is sent again by the next holder.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use rhizome_core::clock::now_millis;

use crate::Services;

/// The lease's name.
const LEASE: &str = "push";
/// How long a lease lasts unless renewed.
const LEASE_MS: i64 = 5_000;
/// How often the lease is renewed and the queue looked at when nothing wakes the worker.
const TICK: Duration = Duration::from_millis(500);
/// Jobs taken from the queue at once.
const BATCH: i64 = 50;

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
        tokio::spawn(async move {
            let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
            loop {
                let Some(strong) = services.upgrade() else { break };
                if strong.push_queue.stopping.load(Ordering::SeqCst) {
                    break;
                }
                strong.push_worker_step(&holder, &in_flight).await;
                let wake = async { strong.push_queue.wake.notified().await };
                let _ = tokio::time::timeout(TICK, wake).await;
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

    /// One look: renew or take the lease, then start sending the queued jobs not already
    /// being sent.
    async fn push_worker_step(
        self: &Arc<Self>,
        holder: &str,
        in_flight: &Arc<Mutex<HashSet<i64>>>,
    ) {
        let now = now_millis();
        match self.store.acquire_job_lease(LEASE, holder, now, now + LEASE_MS).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%error, "could not renew the push worker's lease");
                return;
            }
        }
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
            if self.push_queue.stopping.load(Ordering::SeqCst) || !in_flight.lock().insert(job.id) {
                continue;
            }
            let services = self.clone();
            let in_flight = in_flight.clone();
            deliveries.push(tokio::spawn(async move {
                services.deliver_pushes(&job).await;
                if let Err(error) = services.store.delete_queued_push(job.id).await {
                    tracing::warn!(%error, "could not remove a sent push job");
                }
                in_flight.lock().remove(&job.id);
            }));
        }
    }
}
