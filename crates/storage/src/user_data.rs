//! Per-user data: account data, filters, receipts, pushers and notification counts.

use async_trait::async_trait;
use rhizome_core::Result;
use std::collections::HashMap;

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};

use crate::{
    AccountDataRecord, NotificationRecord, PushActionRetention, PusherRecord, ReceiptRecord,
    StreamPos, UnreadCounts,
};

/// Per-user data: account data, filters, receipts, pushers and notification counts.
#[async_trait]
pub trait UserDataStore {
    /// Sets account data (global when `room_id` is `None`) at the next stream position.
    async fn set_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &str,
    ) -> Result<StreamPos>;

    /// Reads one piece of account data.
    async fn get_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
    ) -> Result<Option<AccountDataRecord>>;

    /// Account data changed after `since` (all of it when `since` is `None`).
    async fn account_data_since(
        &self,
        user_id: &UserId,
        since: Option<StreamPos>,
    ) -> Result<Vec<AccountDataRecord>>;

    /// Stores a filter and returns its ID.
    async fn create_filter(&self, user_id: &UserId, json: &str) -> Result<String>;

    /// Reads a filter.
    async fn get_filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<String>>;

    /// Sets a receipt (replacing the user's previous one of that type and thread) at the next
    /// stream position.
    async fn set_receipt(
        &self,
        room_id: &RoomId,
        receipt_type: &str,
        user_id: &UserId,
        thread_id: Option<&str>,
        event_id: &EventId,
        ts: i64,
    ) -> Result<StreamPos>;

    /// Receipts in the given rooms changed after `since` (all when `None`).
    async fn receipts_since(
        &self,
        room_ids: &[&RoomId],
        since: Option<StreamPos>,
    ) -> Result<Vec<ReceiptRecord>>;

    /// Notification counts of the user in the room since their latest read receipt.
    async fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts>;

    /// The same counts for many rooms at once (what one sync needs), in one query rather than
    /// one per room. Rooms without unread notifications are left out.
    async fn unread_counts_in_rooms(
        &self,
        user_id: &UserId,
        room_ids: &[&RoomId],
    ) -> Result<HashMap<OwnedRoomId, UnreadCounts>>;

    /// The same counts split by thread: `None` for the main timeline, the thread root's ID for
    /// each thread with unread notifications. Threads and timeline with none are left out.
    async fn unread_counts_by_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Vec<(Option<OwnedEventId>, UnreadCounts)>>;

    /// The user's notifications (those that notify, or only those that highlight), newest
    /// first, before stream position `before` (exclusive), each with whether a read receipt
    /// covers it.
    async fn notifications(
        &self,
        user_id: &UserId,
        before: Option<StreamPos>,
        highlights_only: bool,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>>;

    /// Adds or replaces a pusher. Unless `append`, other users' pushers with the same app ID
    /// and pushkey are removed (a pushkey names one app on one device).
    async fn set_pusher(&self, pusher: &PusherRecord, append: bool) -> Result<()>;

    /// How many of the rooms the user is joined to or invited to have notifications the user
    /// has not read (the badge on their phone); rooms left do not count.
    async fn rooms_with_unread_notifications(&self, user_id: &UserId) -> Result<u64>;

    /// Removes a pusher.
    async fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<()>;

    /// The user's pushers.
    async fn list_pushers(&self, user_id: &UserId) -> Result<Vec<PusherRecord>>;

    /// Deletes the notifications (push actions) older than `keep` says, as of `now_ms`;
    /// returns how many. Each call first notes the current stream position with the time, so
    /// an age maps to the position noted that long ago (nothing is older than the first note).
    async fn prune_push_actions(&self, now_ms: i64, keep: &PushActionRetention) -> Result<u64>;
}
