//! The notification pruner: once an hour one process (under the `push_prune` lease) deletes the
//! push actions no longer needed, by age ([`retention`]), so that a busy room's notifications do
//! not fill a small server's disk: a message to a room of 1,000 members is 1,000 of them.

use std::{sync::Arc, time::Duration};

use parking_lot::Mutex;
use rhizome_core::{Result, clock::now_millis, config::PushConfig};
use rhizome_storage::PushActionRetention;
use tokio::{sync::Notify, task::JoinHandle};

use crate::Services;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// How long notifications are kept (`push.keep_*_days`; by default read ones a day, read
/// mentions 30 days, unread ones 90 days).
pub fn retention(config: &PushConfig) -> PushActionRetention {
    let days = |days: u32| i64::from(days).saturating_mul(DAY_MS);
    PushActionRetention {
        read_ms: days(config.keep_read_days),
        read_highlight_ms: days(config.keep_read_mentions_days),
        unread_ms: days(config.keep_unread_days),
    }
}

/// The lease's name, and how long one run may hold it.
const LEASE: &str = "push_prune";
const LEASE_MS: i64 = 10 * 60 * 1000;
/// How often it runs.
const EVERY: Duration = Duration::from_secs(60 * 60);

/// The pruner's lifecycle.
#[derive(Default)]
pub(crate) struct PruneRuntime {
    stopped: Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Services {
    /// Starts the pruner (once; the server calls it at start-up): a run now, then every hour.
    pub fn start_push_action_pruner(self: &Arc<Self>) {
        let mut task = self.push_prune.task.lock();
        if task.is_some() {
            return;
        }
        let services = Arc::downgrade(self);
        let stopped = self.push_prune.stopped.clone();
        *task = Some(tokio::spawn(async move {
            loop {
                let Some(strong) = services.upgrade() else { break };
                match strong.prune_push_actions_once().await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::debug!(pruned, "pruned old notifications"),
                    Err(error) => tracing::warn!(%error, "could not prune old notifications"),
                }
                drop(strong);
                tokio::select! {
                    () = tokio::time::sleep(EVERY) => {}
                    () = stopped.notified() => break,
                }
            }
        }));
    }

    /// Stops the pruner at shutdown, before the database closes (a run under way is given two
    /// seconds, then cut between two statements: each batch is a write of its own).
    pub async fn stop_push_action_pruner(&self) {
        self.push_prune.stopped.notify_one();
        let task = self.push_prune.task.lock().take();
        if let Some(mut task) = task
            && tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err()
        {
            task.abort();
        }
    }

    /// One run, if this process takes the lease: how many notifications it deleted.
    pub async fn prune_push_actions_once(&self) -> Result<u64> {
        let holder = crate::auth::generate_token(&format!("prune-{}", std::process::id()));
        let now = now_millis();
        if !self.store.acquire_job_lease(LEASE, &holder, now, now + LEASE_MS).await? {
            return Ok(0);
        }
        let pruned = self.store.prune_push_actions(now, &retention(&self.config.push)).await;
        if let Err(error) = self.store.release_job_lease(LEASE, &holder).await {
            tracing::warn!(%error, "could not give up the notification pruner's lease");
        }
        pruned
    }
}
