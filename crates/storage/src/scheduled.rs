//! Per-user state of newer client features: thread subscriptions (MSC4306) and delayed events
//! (MSC4140).

use async_trait::async_trait;
use rhizome_core::Result;
use ruma::{EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::StreamPos;

/// A user's subscription to a thread, or their unsubscription from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadSubscriptionRecord {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The thread's root event.
    pub thread_root_id: OwnedEventId,
    /// Subscribed (or unsubscribed).
    pub subscribed: bool,
    /// Subscribed automatically, by a client on the user's behalf.
    pub automatic: bool,
    /// The stream position of the last change.
    pub stream_pos: StreamPos,
}

/// An event a client scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayedEventRecord {
    /// Its ID.
    pub delay_id: String,
    /// Who scheduled it.
    pub user_id: OwnedUserId,
    /// The device that scheduled it.
    pub device_id: Option<OwnedDeviceId>,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event type.
    pub event_type: String,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// The content (JSON).
    pub content: String,
    /// The delay, which a restart starts again.
    pub delay_ms: i64,
    /// When it is to be sent (ms since the epoch).
    pub send_ts: i64,
    /// When it was scheduled.
    pub created_ts: i64,
}

/// Thread subscriptions and delayed events.
#[async_trait]
pub trait ScheduledStore {
    /// Subscribes the user to a thread (or changes how), at the next stream position.
    async fn subscribe_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread_root_id: &EventId,
        automatic: bool,
    ) -> Result<StreamPos>;

    /// Unsubscribes the user from a thread, at the next stream position (remembered even when
    /// they were not subscribed).
    async fn unsubscribe_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread_root_id: &EventId,
    ) -> Result<StreamPos>;

    /// The user's subscription to a thread (or unsubscription), if any.
    async fn thread_subscription(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread_root_id: &EventId,
    ) -> Result<Option<ThreadSubscriptionRecord>>;

    /// The user's subscription changes after `since` (all when `None`) up to `until`, the
    /// newest first, at most `limit`.
    async fn thread_subscriptions_between(
        &self,
        user_id: &UserId,
        since: Option<StreamPos>,
        until: StreamPos,
        limit: i64,
    ) -> Result<Vec<ThreadSubscriptionRecord>>;

    /// Stores a delayed event.
    async fn add_delayed_event(&self, event: &DelayedEventRecord) -> Result<()>;

    /// A delayed event.
    async fn delayed_event(&self, delay_id: &str) -> Result<Option<DelayedEventRecord>>;

    /// A user's delayed events, the soonest first.
    async fn delayed_events_of(&self, user_id: &UserId) -> Result<Vec<DelayedEventRecord>>;

    /// Delayed events due at `now`, the soonest first, at most `limit`.
    async fn due_delayed_events(&self, now: i64, limit: i64) -> Result<Vec<DelayedEventRecord>>;

    /// The soonest time a delayed event is due, if any.
    async fn next_delayed_event_ts(&self) -> Result<Option<i64>>;

    /// Moves a delayed event's sending time; `false` if it does not exist.
    async fn reschedule_delayed_event(&self, delay_id: &str, send_ts: i64) -> Result<bool>;

    /// Removes a delayed event (cancelled or sent); `false` if it was gone already. Of two
    /// callers, exactly one gets `true`.
    async fn take_delayed_event(&self, delay_id: &str) -> Result<bool>;

    /// Cancels the delayed state events of users other than `sender` for one piece of a room's
    /// state (which `sender` just changed); returns how many.
    async fn cancel_delayed_state_events(
        &self,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
        sender: &UserId,
    ) -> Result<u64>;
}
