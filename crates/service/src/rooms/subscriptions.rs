//! Thread subscriptions (MSC4306): a user follows a thread by hand, or a client does it for
//! them (automatically, naming the event that led to it); an unsubscription wins over
//! automatic subscriptions caused by events from before it. Changes are listed by stream
//! position, for sliding sync's extension (MSC4308) and its companion endpoint.

use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_storage::{StreamPos, ThreadSubscriptionRecord};
use ruma::{EventId, RoomId, UserId};
use serde_json::Value;

use crate::{Requester, Services};

impl Services {
    /// Subscribes the requester to a thread; `automatic` names the event of the thread that
    /// made their client do it.
    pub async fn subscribe_thread(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        thread_root: &EventId,
        automatic: Option<&EventId>,
    ) -> Result<()> {
        let user_id = &requester.user_id;
        self.visible_event(requester, room_id, thread_root).await?;
        let existing = self.store.thread_subscription(user_id, room_id, thread_root).await?;
        if let Some(cause) = automatic {
            let cause =
                self.visible_event(requester, room_id, cause).await.map_err(|_| not_in_thread())?;
            let content: Value = serde_json::from_str(cause.pdu.content.get())?;
            let relation = &content["m.relates_to"];
            if relation["rel_type"] != "m.thread" || relation["event_id"] != thread_root.as_str() {
                return Err(not_in_thread());
            }
            match existing {
                // A subscription by hand stays one.
                Some(ThreadSubscriptionRecord { subscribed: true, automatic: false, .. }) => {
                    return Ok(());
                }
                Some(ThreadSubscriptionRecord { subscribed: false, stream_pos, .. })
                    if cause.record.stream_pos <= stream_pos =>
                {
                    return Err(Error::conflict(
                        MatrixErrorKind::ConflictingUnsubscription,
                        "The user unsubscribed from this thread after that event",
                    ));
                }
                _ => {}
            }
        }
        self.store.subscribe_thread(user_id, room_id, thread_root, automatic.is_some()).await?;
        self.notifier.notify([user_id.as_ref()]);
        Ok(())
    }

    /// Unsubscribes the requester from a thread (remembered even if they were not subscribed).
    pub async fn unsubscribe_thread(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        thread_root: &EventId,
    ) -> Result<()> {
        self.visible_event(requester, room_id, thread_root).await?;
        self.store.unsubscribe_thread(&requester.user_id, room_id, thread_root).await?;
        self.notifier.notify([requester.user_id.as_ref()]);
        Ok(())
    }

    /// Whether the requester's subscription to a thread is automatic; `M_NOT_FOUND` when they
    /// are not subscribed.
    pub async fn thread_subscription(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        thread_root: &EventId,
    ) -> Result<bool> {
        self.visible_event(requester, room_id, thread_root).await?;
        self.store
            .thread_subscription(&requester.user_id, room_id, thread_root)
            .await?
            .filter(|record| record.subscribed)
            .map(|record| record.automatic)
            .ok_or_else(|| Error::not_found("Not subscribed to that thread"))
    }
}

fn not_in_thread() -> Error {
    Error::matrix(MatrixErrorKind::NotInThread, "That event is not in the thread")
}

/// A page of subscription changes, the newest first.
#[derive(Debug)]
pub struct SubscriptionChanges {
    /// The changes.
    pub changes: Vec<ThreadSubscriptionRecord>,
    /// Where older changes continue (a stream position, inclusive), if there are more.
    pub more_from: Option<StreamPos>,
}

impl Services {
    /// The user's subscription changes at or before `from` (now when `None`) and after `to`,
    /// the newest first, at most `limit` (1 to 100).
    pub async fn thread_subscription_changes(
        &self,
        user_id: &UserId,
        from: Option<StreamPos>,
        to: Option<StreamPos>,
        limit: usize,
    ) -> Result<SubscriptionChanges> {
        let limit = limit.clamp(1, 100);
        let upper = from.unwrap_or_else(|| self.store.current_stream_pos());
        let fetch = i64::try_from(limit + 1).unwrap_or(101);
        let mut changes =
            self.store.thread_subscriptions_between(user_id, to, upper, fetch).await?;
        let more = changes.len() > limit;
        changes.truncate(limit);
        let more_from = more.then(|| changes.last().map(|oldest| oldest.stream_pos - 1)).flatten();
        Ok(SubscriptionChanges { changes, more_from })
    }
}
