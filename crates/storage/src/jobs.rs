//! Singleton work among processes sharing the database (leases), and the durable queue of
//! notifications for push gateways.

use async_trait::async_trait;
use rhizome_core::Result;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};

/// A queued push job: an event that notified users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedPush {
    /// The queue's ID for it.
    pub id: i64,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event.
    pub event_id: OwnedEventId,
    /// Each notified user and the actions of the rule that matched (JSON).
    pub users: Vec<(OwnedUserId, String)>,
}

/// Leases on singleton jobs and the push queue.
#[async_trait]
pub trait JobStore {
    /// Takes or renews the lease on a job (`push`, `media_cleanup`, …) for `holder` until
    /// `until` (ms since the epoch): true when `holder` holds it now (it was free, lapsed
    /// before `now`, or already its own).
    async fn acquire_job_lease(
        &self,
        job: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool>;

    /// Gives a lease up (if `holder` holds it).
    async fn release_job_lease(&self, job: &str, holder: &str) -> Result<()>;

    /// The oldest queued push jobs.
    async fn queued_pushes(&self, limit: i64) -> Result<Vec<QueuedPush>>;

    /// Removes a push job once it is done.
    async fn delete_queued_push(&self, id: i64) -> Result<()>;
}
