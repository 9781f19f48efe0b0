//! Ephemeral data held in memory: typing notifications (with timeouts) and presence, on their
//! own serial counter; plus read receipts and markers, which are stored. With other processes
//! on the same database, each keeps the whole picture: every change is sent to the others
//! ([`crate::processes`]), and the serial is a clock (never behind the wall clock in
//! milliseconds, nor behind a serial heard from another process), so a client whose syncs move
//! between processes keeps seeing changes after its token.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rhizome_core::{Error, Result, clock::now_millis};
use ruma::{EventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{Requester, Services};

/// Typing users of one room.
#[derive(Default)]
struct RoomTyping {
    serial: i64,
    users: HashMap<OwnedUserId, Instant>,
}

/// A user's presence.
#[derive(Clone, Debug)]
pub struct PresenceEntry {
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    /// The status message.
    pub status_msg: Option<String>,
    /// When the user was last active (ms since the epoch).
    pub last_active_ts: i64,
    /// The serial of the last change.
    pub serial: i64,
    /// When the user last synced or set their presence (ms since the epoch).
    last_seen_ts: i64,
    /// When this entry was last sent to the other processes (ms since the epoch).
    shared_ts: i64,
    /// Whether a watcher in this process turns the user offline when they go silent.
    watched: bool,
}

/// How often a user's unchanged presence is sent to the other processes again (their
/// watchers turn users offline who were not seen for [`PRESENCE_TIMEOUT`]).
const PRESENCE_SHARE_INTERVAL_MS: i64 = 30_000;

/// Presence as another process sends it: state, status message, last active, last seen,
/// and that process's serial.
pub(crate) type RemotePresence = (String, Option<String>, i64, i64, i64);

/// How long a user stays online or unavailable after their last sync or presence update: a
/// client that stops syncing (closed, crashed, offline) turns offline after this.
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Typing and presence, on one serial counter that starts at the wall clock so it keeps
/// growing across restarts.
pub(crate) struct Ephemeral {
    serial: AtomicI64,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    presence: Mutex<HashMap<OwnedUserId, PresenceEntry>>,
}

/// The longest typing timeout honoured.
const MAX_TYPING_TIMEOUT: Duration = Duration::from_secs(120);

impl Ephemeral {
    pub(crate) fn new() -> Self {
        Self {
            serial: AtomicI64::new(now_millis()),
            typing: Mutex::default(),
            presence: Mutex::default(),
        }
    }

    fn next_serial(&self) -> i64 {
        self.next_serial_after(0)
    }

    /// The next serial: after the last, the wall clock and `heard`.
    fn next_serial_after(&self, heard: i64) -> i64 {
        let floor = now_millis().max(heard);
        let previous = self
            .serial
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some((last + 1).max(floor)))
            .unwrap_or_else(|last| last);
        (previous + 1).max(floor)
    }
}

impl Services {
    /// The current ephemeral serial (part of sync tokens).
    pub fn ephemeral_serial(&self) -> i64 {
        self.ephemeral.serial.load(Ordering::SeqCst)
    }

    /// Starts or stops typing in a room.
    pub async fn set_typing(
        self: &Arc<Self>,
        requester: &Requester,
        room_id: &RoomId,
        typing: bool,
        timeout: Duration,
    ) -> Result<()> {
        if !self.is_joined(room_id, &requester.user_id).await? {
            return Err(Error::forbidden("You are not in this room"));
        }
        let timeout = timeout.min(MAX_TYPING_TIMEOUT);
        self.apply_typing(room_id, &requester.user_id, typing, timeout).await?;
        // The room's other servers hear of it (ephemeral: lost if they are unreachable).
        let servers = self.room_servers(room_id).await?;
        if !servers.is_empty() {
            let content = serde_json::json!({
                "room_id": room_id, "user_id": requester.user_id, "typing": typing,
            });
            self.queue_ephemeral_edu(&servers, "m.typing", &content);
        }
        Ok(())
    }

    /// Records that a member (local or remote) starts or stops typing, for `timeout`.
    pub(crate) async fn apply_typing(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        typing: bool,
        timeout: Duration,
    ) -> Result<()> {
        let timeout = timeout.min(MAX_TYPING_TIMEOUT);
        let message = crate::processes::Message::Typing {
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
            typing,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        crate::processes::publish(self.store.as_ref(), &message);
        if self.update_typing(room_id, user_id, typing, timeout) {
            self.notify_room(room_id).await?;
        }
        self.expire_typing_later(room_id, typing, timeout);
        Ok(())
    }

    /// Another process heard that a member starts or stops typing: the same, without telling
    /// the others.
    pub(crate) fn apply_remote_typing(
        self: &Arc<Self>,
        room_id: &RoomId,
        user_id: &UserId,
        typing: bool,
        timeout_ms: u64,
    ) {
        let timeout = Duration::from_millis(timeout_ms).min(MAX_TYPING_TIMEOUT);
        if self.update_typing(room_id, user_id, typing, timeout) {
            let services = self.clone();
            let room_id = room_id.to_owned();
            tokio::spawn(async move {
                if let Ok(members) = services.room_members_cached(&room_id, false).await {
                    services.notifier.notify_local(members.iter().map(|user| user.as_ref()));
                }
            });
        }
        self.expire_typing_later(room_id, typing, timeout);
    }

    /// Records typing; whether anything changed.
    fn update_typing(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        typing: bool,
        timeout: Duration,
    ) -> bool {
        {
            let mut rooms = self.ephemeral.typing.lock();
            let room = rooms.entry(room_id.to_owned()).or_default();
            let changed = if typing {
                room.users.insert(user_id.to_owned(), Instant::now() + timeout).is_none()
            } else {
                room.users.remove(user_id).is_some()
            };
            if changed {
                room.serial = self.ephemeral.next_serial();
            }
            changed
        }
    }

    /// Ends typing that was not renewed once `timeout` has passed.
    fn expire_typing_later(&self, room_id: &RoomId, typing: bool, timeout: Duration) {
        if typing && let Some(services) = self.arc() {
            let room_id = room_id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(timeout + Duration::from_millis(50)).await;
                services.expire_typing(&room_id).await;
            });
        }
    }

    async fn expire_typing(&self, room_id: &RoomId) {
        let now = Instant::now();
        let expired = {
            let mut rooms = self.ephemeral.typing.lock();
            let Some(room) = rooms.get_mut(room_id) else { return };
            let before = room.users.len();
            room.users.retain(|_, expiry| *expiry > now);
            let expired = room.users.len() != before;
            if expired {
                room.serial = self.ephemeral.next_serial();
            }
            expired
        };
        if expired && let Err(error) = self.notify_room(room_id).await {
            tracing::warn!(%error, "could not announce the end of typing");
        }
    }

    /// The users typing in a room, if that changed after `since` (always when `since` is `None`).
    pub fn typing_since(&self, room_id: &RoomId, since: Option<i64>) -> Option<Vec<OwnedUserId>> {
        let now = Instant::now();
        let rooms = self.ephemeral.typing.lock();
        let room = rooms.get(room_id)?;
        if since.is_some_and(|since| room.serial <= since) {
            return None;
        }
        let mut users: Vec<OwnedUserId> = room
            .users
            .iter()
            .filter(|(_, expiry)| **expiry > now)
            .map(|(user, _)| user.clone())
            .collect();
        users.sort();
        if since.is_none() && users.is_empty() {
            return None;
        }
        Some(users)
    }

    /// Wakes the syncs of the room's members.
    pub(crate) async fn notify_room(&self, room_id: &RoomId) -> Result<()> {
        let members = self.room_members_cached(room_id, false).await?;
        self.notifier.notify(members.iter().map(|user| user.as_ref()));
        Ok(())
    }

    /// Sets a receipt or private receipt on an event the user can see.
    pub async fn set_receipt(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread_id: Option<&str>,
    ) -> Result<()> {
        if !matches!(receipt_type, "m.read" | "m.read.private" | "m.fully_read") {
            return Err(Error::invalid_param("Unknown receipt type"));
        }
        let event = self.visible_event(requester, room_id, event_id).await?;
        if receipt_type == "m.fully_read" {
            let content = serde_json::json!({ "event_id": event.pdu.event_id }).to_string();
            self.store
                .set_account_data(&requester.user_id, Some(room_id), "m.fully_read", &content)
                .await?;
            self.notifier.notify([requester.user_id.as_ref()]);
            return Ok(());
        }
        if let Some(thread) = thread_id
            && thread != "main"
            && ruma::EventId::parse(thread).is_err()
        {
            return Err(Error::invalid_param("thread_id must be `main` or an event ID"));
        }
        self.store
            .set_receipt(
                room_id,
                receipt_type,
                &requester.user_id,
                thread_id,
                event_id,
                now_millis(),
            )
            .await?;
        if receipt_type == "m.read.private" {
            self.notifier.notify([requester.user_id.as_ref()]);
        } else {
            self.notify_room(room_id).await?;
            // Public receipts reach the room's other servers; private ones never leave.
            let servers = self.room_servers(room_id).await?;
            if !servers.is_empty() {
                let mut data = serde_json::json!({ "ts": now_millis() });
                if let Some(thread) = thread_id {
                    data["thread_id"] = serde_json::json!(thread);
                }
                let content = serde_json::json!({
                    room_id.as_str(): { "m.read": { requester.user_id.as_str(): {
                        "event_ids": [event_id], "data": data,
                    } } }
                });
                self.queue_ephemeral_edu(&servers, "m.receipt", &content);
            }
        }
        Ok(())
    }

    /// Sets the user's presence; wakes those who share a room with them if it changed. A user
    /// who is not offline turns offline [`PRESENCE_TIMEOUT`] after their last update.
    pub async fn set_presence(
        self: &Arc<Self>,
        user_id: &UserId,
        state: &str,
        status_msg: Option<Option<String>>,
    ) -> Result<()> {
        if !matches!(state, "online" | "unavailable" | "offline") {
            return Err(Error::invalid_param("Presence must be online, unavailable or offline"));
        }
        let (changed, watch) = {
            let mut presence = self.ephemeral.presence.lock();
            let now = now_millis();
            let entry = presence.entry(user_id.to_owned()).or_insert_with(|| PresenceEntry {
                state: "offline".into(),
                status_msg: None,
                last_active_ts: now,
                serial: 0,
                last_seen_ts: now,
                shared_ts: 0,
                watched: false,
            });
            let new_status = status_msg.unwrap_or_else(|| entry.status_msg.clone());
            let changed = entry.state != state || entry.status_msg != new_status;
            entry.state = state.to_owned();
            entry.status_msg = new_status;
            entry.last_seen_ts = now;
            if state == "online" {
                entry.last_active_ts = now;
            }
            if changed {
                entry.serial = self.ephemeral.next_serial();
            }
            if changed || now - entry.shared_ts >= PRESENCE_SHARE_INTERVAL_MS {
                entry.shared_ts = now;
                self.share_presence(user_id, entry);
            }
            let watch = state != "offline" && !entry.watched;
            entry.watched |= watch;
            (changed, watch)
        };
        if changed {
            self.announce_presence(user_id).await?;
        }
        if watch {
            // One watcher per user who is not offline; it ends when they are, or when the
            // server goes (it holds the services weakly).
            let services = Arc::downgrade(self);
            let user_id = user_id.to_owned();
            tokio::spawn(async move {
                loop {
                    let Some(step) = services.upgrade() else { return };
                    match step.presence_step(&user_id, PRESENCE_TIMEOUT).await {
                        Some(wait) => {
                            drop(step);
                            tokio::time::sleep(wait).await;
                        }
                        None => return,
                    }
                }
            });
        }
        Ok(())
    }

    /// Turns the user offline once nothing was heard of them for `timeout` (the server uses
    /// [`PRESENCE_TIMEOUT`]; tests may call it with less).
    pub async fn watch_presence(&self, user_id: &UserId, timeout: Duration) {
        while let Some(wait) = self.presence_step(user_id, timeout).await {
            tokio::time::sleep(wait).await;
        }
    }

    /// One look at a user's presence: turns them offline (and says so) if nothing was heard
    /// of them for `timeout`; otherwise how long until it is worth looking again. `None` once
    /// they are offline.
    async fn presence_step(&self, user_id: &UserId, timeout: Duration) -> Option<Duration> {
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        {
            let mut presence = self.ephemeral.presence.lock();
            let entry = presence.get_mut(user_id)?;
            if entry.state == "offline" {
                entry.watched = false;
                return None;
            }
            let silent = now_millis() - entry.last_seen_ts;
            if silent < timeout_ms {
                let wait = u64::try_from(timeout_ms - silent).unwrap_or(0) + 10;
                return Some(Duration::from_millis(wait));
            }
            entry.state = "offline".into();
            entry.serial = self.ephemeral.next_serial();
            entry.watched = false;
            self.share_presence(user_id, entry);
        }
        if let Err(error) = self.announce_presence(user_id).await {
            tracing::warn!(%error, "could not announce a presence timeout");
        }
        None
    }

    /// Sends a user's presence to the other processes.
    fn share_presence(&self, user_id: &UserId, entry: &PresenceEntry) {
        let message = crate::processes::Message::Presence {
            user_id: user_id.to_owned(),
            state: entry.state.clone(),
            status_msg: entry.status_msg.clone(),
            last_active_ts: entry.last_active_ts,
            last_seen_ts: entry.last_seen_ts,
            serial: entry.serial,
        };
        crate::processes::publish(self.store.as_ref(), &message);
    }

    /// Another process sent a user's presence: kept here (with a serial of this process's
    /// clock) and those who see it woken.
    pub(crate) fn apply_remote_presence(
        self: &Arc<Self>,
        user_id: &UserId,
        (state, status_msg, last_active_ts, last_seen_ts, serial): RemotePresence,
    ) {
        let changed = {
            let mut presence = self.ephemeral.presence.lock();
            let entry = presence.entry(user_id.to_owned()).or_insert_with(|| PresenceEntry {
                state: "offline".into(),
                status_msg: None,
                last_active_ts,
                serial: 0,
                last_seen_ts,
                shared_ts: 0,
                watched: false,
            });
            let changed = entry.state != state || entry.status_msg != status_msg;
            entry.last_seen_ts = entry.last_seen_ts.max(last_seen_ts);
            entry.last_active_ts = entry.last_active_ts.max(last_active_ts);
            if changed {
                entry.state = state;
                entry.status_msg = status_msg;
                entry.serial = self.ephemeral.next_serial_after(serial);
            }
            changed
        };
        if changed {
            let services = self.clone();
            let user_id = user_id.to_owned();
            tokio::spawn(async move {
                if let Err(error) = services.announce_presence_locally(&user_id).await {
                    tracing::debug!(%error, "could not announce presence from another process");
                }
            });
        }
    }

    /// Wakes the user and everyone who shares a room with them.
    async fn announce_presence(&self, user_id: &UserId) -> Result<()> {
        let mut woken = vec![user_id.to_owned()];
        for room in self.user_memberships_cached(user_id).await?.iter() {
            if room.membership == "join" {
                woken.extend(self.room_members_cached(&room.room_id, false).await?);
            }
        }
        woken.sort();
        woken.dedup();
        self.notifier.notify(woken.iter().map(|user| user.as_ref()));
        // Other servers hear of it only when the organiser shares presence.
        if self.config.federation.send_presence && user_id.server_name() == self.server_name() {
            self.send_presence_edu(user_id).await?;
        }
        Ok(())
    }

    /// Sends a local user's presence to the servers sharing a room with them.
    async fn send_presence_edu(&self, user_id: &UserId) -> Result<()> {
        let Some(entry) = self.presence(user_id) else { return Ok(()) };
        let mut servers: Vec<ruma::OwnedServerName> = Vec::new();
        for room in self.user_memberships_cached(user_id).await?.iter() {
            if room.membership == "join" {
                servers.extend(self.room_servers(&room.room_id).await?);
            }
        }
        servers.sort();
        servers.dedup();
        if servers.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        let content = serde_json::json!({ "push": [{
            "user_id": user_id,
            "presence": entry.state,
            "status_msg": entry.status_msg,
            "last_active_ago": (now - entry.last_active_ts).max(0),
            "currently_active": entry.state == "online",
        }] });
        self.queue_ephemeral_edu(&servers, "m.presence", &content);
        Ok(())
    }

    /// Presence of a user of another server, as their server reports it (and shared with the
    /// other processes).
    pub(crate) async fn apply_federated_presence(
        &self,
        user_id: &UserId,
        state: &str,
        status_msg: Option<String>,
        last_active_ago: i64,
    ) -> Result<()> {
        if !matches!(state, "online" | "unavailable" | "offline") {
            return Err(Error::invalid_param("Presence must be online, unavailable or offline"));
        }
        let changed = {
            let mut presence = self.ephemeral.presence.lock();
            let now = now_millis();
            let entry = presence.entry(user_id.to_owned()).or_insert_with(|| PresenceEntry {
                state: "offline".into(),
                status_msg: None,
                last_active_ts: now,
                serial: 0,
                last_seen_ts: now,
                shared_ts: 0,
                watched: false,
            });
            let changed = entry.state != state || entry.status_msg != status_msg;
            entry.state = state.to_owned();
            entry.status_msg = status_msg;
            entry.last_seen_ts = now;
            entry.last_active_ts = now - last_active_ago.clamp(0, now);
            if changed {
                entry.serial = self.ephemeral.next_serial();
                entry.shared_ts = now;
                self.share_presence(user_id, entry);
            }
            changed
        };
        if changed {
            self.announce_presence(user_id).await?;
        }
        Ok(())
    }

    /// Wakes, in this process, the user and everyone who shares a room with them.
    async fn announce_presence_locally(&self, user_id: &UserId) -> Result<()> {
        let mut woken = vec![user_id.to_owned()];
        for room in self.user_memberships_cached(user_id).await?.iter() {
            if room.membership == "join" {
                woken.extend(self.room_members_cached(&room.room_id, false).await?);
            }
        }
        self.notifier.notify_local(woken.iter().map(|user| user.as_ref()));
        Ok(())
    }

    /// Whether `viewer` may see `user_id`'s presence: their own, or someone they share a
    /// joined room with.
    pub async fn may_see_presence(&self, viewer: &UserId, user_id: &UserId) -> Result<bool> {
        if viewer == user_id {
            return Ok(true);
        }
        for room in self.user_memberships_cached(viewer).await?.iter() {
            if room.membership == "join" && self.is_joined(&room.room_id, user_id).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A user's presence.
    pub fn presence(&self, user_id: &UserId) -> Option<PresenceEntry> {
        self.ephemeral.presence.lock().get(user_id).cloned()
    }

    /// Presence of these users (who may come more than once) changed after `since`, by user
    /// ID; only the entries that changed are copied.
    pub(crate) fn presence_changed_among<'a>(
        &self,
        user_ids: impl IntoIterator<Item = &'a UserId>,
        since: Option<i64>,
    ) -> Vec<(OwnedUserId, PresenceEntry)> {
        let mut found: Vec<(OwnedUserId, PresenceEntry)> = {
            let presence = self.ephemeral.presence.lock();
            user_ids
                .into_iter()
                .filter_map(|user| {
                    let entry = presence.get(user)?;
                    since
                        .is_none_or(|since| entry.serial > since)
                        .then(|| (user.to_owned(), entry.clone()))
                })
                .collect()
        };
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.dedup_by(|a, b| a.0 == b.0);
        found
    }

    /// Presence of these users changed after `since`.
    pub fn presence_since(
        &self,
        user_ids: &[OwnedUserId],
        since: Option<i64>,
    ) -> Vec<(OwnedUserId, PresenceEntry)> {
        let presence = self.ephemeral.presence.lock();
        user_ids
            .iter()
            .filter_map(|user| presence.get(user).map(|entry| (user.clone(), entry.clone())))
            .filter(|(_, entry)| since.is_none_or(|since| entry.serial > since))
            .collect()
    }
}
