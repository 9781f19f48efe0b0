//! Several processes serving one homeserver from one database: what each tells the others
//! through the store ([`DataStore::publish_to_processes`], PostgreSQL's `LISTEN/NOTIFY`), and
//! what it does with what they tell it. Wake-ups for waiting syncs (applied once the stream
//! position they follow is readable here), typing and presence (each process keeps the whole
//! picture), rooms' latest activity (sliding sync's order), and caches to drop: memberships
//! and redacted events (announced by the store inside the writing transaction, so they are
//! dropped before the position is readable), access tokens (logouts, deactivations, admin
//! flags), push rules and a user's forgotten rooms; asynchronous uploads that received their
//! content (downloads waiting for them look again); federation traffic queued for servers
//! (their sender, wherever it runs, sends it).
//!
//! Rate-limit buckets stay per process: a client spread over N processes gets up to N times
//! its allowance.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use rhizome_storage::{DataStore, ProcessMessage, StreamPos};
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId};
use serde::{Deserialize, Serialize};

use crate::Services;

/// A message between processes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(crate) enum Message {
    /// Wake these users' syncs once `pos` is readable.
    Wake { pos: StreamPos, users: Vec<OwnedUserId> },
    /// A member starts or stops typing.
    Typing { room_id: OwnedRoomId, user_id: OwnedUserId, typing: bool, timeout_ms: u64 },
    /// A user's presence.
    Presence {
        user_id: OwnedUserId,
        state: String,
        status_msg: Option<String>,
        last_active_ts: i64,
        last_seen_ts: i64,
        serial: i64,
    },
    /// A room's latest event (sliding sync's order).
    Activity { room_id: OwnedRoomId, event_type: String, pos: StreamPos },
    /// Drop cached access tokens (logouts, deactivations, devices deleted, admin flags).
    ForgetTokens,
    /// Drop a user's cached push rules.
    ForgetPushRules { user_id: OwnedUserId },
    /// Drop a user's cached memberships (a room forgotten).
    ForgetUserMemberships { user_id: OwnedUserId },
    /// Drop a cached event.
    ForgetEvent { event_id: OwnedEventId },
    /// An asynchronous upload received its content: waiting downloads look again.
    MediaUploaded,
    /// Durable federation traffic was queued for these servers: a sender of theirs running
    /// here (holding their lease) sends it.
    WakeDestinations { destinations: Vec<OwnedServerName> },
}

/// How many user IDs one wake-up names at most (PostgreSQL's payload limit).
const WAKE_BATCH_BYTES: usize = 7000;

/// How long a wake-up waits for its position to become readable here.
const WAKE_WAIT: Duration = Duration::from_secs(10);

/// How long a request waits for a position another process handed out (in a sync token) to
/// become readable here.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// Sends a message to the other processes (nothing when there are none).
pub(crate) fn publish(store: &dyn DataStore, message: &Message) {
    if !store.shared_by_processes() {
        return;
    }
    match serde_json::to_string(message) {
        Ok(text) => store.publish_to_processes(text),
        Err(error) => tracing::warn!(%error, "could not encode a message to other processes"),
    }
}

/// Tells the other processes to wake these users once `pos` is readable, in batches that fit
/// a message.
pub(crate) fn publish_wake(store: &dyn DataStore, pos: StreamPos, users: &[OwnedUserId]) {
    if !store.shared_by_processes() || users.is_empty() {
        return;
    }
    let mut batch = Vec::new();
    let mut size = 0;
    for user in users {
        if size + user.as_str().len() + 3 > WAKE_BATCH_BYTES {
            publish(store, &Message::Wake { pos, users: std::mem::take(&mut batch) });
            size = 0;
        }
        size += user.as_str().len() + 3;
        batch.push(user.clone());
    }
    publish(store, &Message::Wake { pos, users: batch });
}

/// Tells the other processes that federation traffic was queued for these servers, in
/// batches that fit a message.
pub(crate) fn publish_destinations(store: &dyn DataStore, destinations: &[OwnedServerName]) {
    if !store.shared_by_processes() || destinations.is_empty() {
        return;
    }
    for batch in destinations.chunks(WAKE_BATCH_BYTES / 260) {
        publish(store, &Message::WakeDestinations { destinations: batch.to_vec() });
    }
}

impl Services {
    /// Starts hearing the other processes (when the store has any).
    pub(crate) fn listen_to_processes(self: &Arc<Self>) {
        if !self.store.shared_by_processes() {
            return;
        }
        let services = Arc::downgrade(self);
        self.store.set_process_handler(Arc::new(move |message| handle(&services, message)));
    }

    /// Applies a message from another process.
    fn apply_process_message(self: &Arc<Self>, message: Message) {
        match message {
            Message::Wake { pos, users } => self.wake_at(pos, users),
            Message::Typing { room_id, user_id, typing, timeout_ms } => {
                self.apply_remote_typing(&room_id, &user_id, typing, timeout_ms);
            }
            Message::Presence {
                user_id,
                state,
                status_msg,
                last_active_ts,
                last_seen_ts,
                serial,
            } => {
                let entry = (state, status_msg, last_active_ts, last_seen_ts, serial);
                self.apply_remote_presence(&user_id, entry);
            }
            Message::Activity { room_id, event_type, pos } => {
                self.record_room_activity(&room_id, &event_type, pos);
            }
            Message::ForgetTokens => self.token_cache.clear(),
            Message::ForgetPushRules { user_id } => {
                self.caches.push_rules.lock().pop(&user_id);
            }
            Message::ForgetUserMemberships { user_id } => self.forget_user_memberships(&user_id),
            Message::ForgetEvent { event_id } => self.forget_event(&event_id),
            Message::MediaUploaded => self.media_uploaded(),
            Message::WakeDestinations { destinations } => {
                self.wake_running_destinations(&destinations);
            }
        }
    }

    /// Wakes local syncs of `users` once `pos` is readable here.
    fn wake_at(self: &Arc<Self>, pos: StreamPos, users: Vec<OwnedUserId>) {
        if self.store.current_stream_pos() >= pos {
            self.notifier.notify_local(users.iter().map(|user| user.as_ref()));
            return;
        }
        let mut readable = self.store.subscribe_stream_pos();
        let services = Arc::downgrade(self);
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(WAKE_WAIT, readable.wait_for(|current| *current >= pos)).await;
            if let Some(services) = services.upgrade() {
                services.notifier.notify_local(users.iter().map(|user| user.as_ref()));
            }
        });
    }

    /// Waits until `pos` (from a token another process may have handed out a moment ago) is
    /// readable here; false when it is not (at once when no other process shares the store,
    /// after [`CATCH_UP_WAIT`] otherwise).
    pub(crate) async fn catch_up_to(&self, pos: StreamPos) -> bool {
        if self.store.current_stream_pos() >= pos {
            return true;
        }
        if !self.store.shared_by_processes() {
            return false;
        }
        let mut readable = self.store.subscribe_stream_pos();
        matches!(
            tokio::time::timeout(CATCH_UP_WAIT, readable.wait_for(|current| *current >= pos)).await,
            Ok(Ok(_))
        )
    }

    /// Everything may have changed: drop every cache and wake every sync.
    fn resync_with_processes(&self) {
        self.forget_cached_tokens();
        self.caches.push_rules.lock().clear();
        self.forget_all_memberships();
        self.forget_all_events();
        self.notifier.notify_everyone();
    }
}

fn handle(services: &Weak<Services>, message: ProcessMessage) {
    let Some(services) = services.upgrade() else { return };
    match message {
        ProcessMessage::Published(text) => match serde_json::from_str::<Message>(&text) {
            Ok(message) => services.apply_process_message(message),
            Err(error) => tracing::debug!(%error, "an unreadable message from another process"),
        },
        ProcessMessage::MembershipsChanged { room_id, users } => {
            services.forget_memberships(&room_id, users.as_deref());
        }
        ProcessMessage::EventRedacted { event_id } => services.forget_event(&event_id),
        ProcessMessage::Resync => services.resync_with_processes(),
    }
}
