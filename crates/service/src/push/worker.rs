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
        tokio::spawn(async move {
            let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
            loop {
                let Some(strong) = services.upgrade() else { break };
                strong.push_worker_step(&holder, &in_flight).await;
                let wake = async { strong.push_queue.wake.notified().await };
                let _ = tokio::time::timeout(TICK, wake).await;
            }
        });
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
        for job in jobs {
            if !in_flight.lock().insert(job.id) {
                continue;
            }
            let services = self.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                services.deliver_pushes(&job).await;
                if let Err(error) = services.store.delete_queued_push(job.id).await {
                    tracing::warn!(%error, "could not remove a sent push job");
                }
                in_flight.lock().remove(&job.id);
            });
        }
    }
}
