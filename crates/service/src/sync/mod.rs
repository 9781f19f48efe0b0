//! `/sync` v3: long-polling that wakes as soon as something the user may see changes, with
//! `since` tokens (`s<stream position>_<ephemeral serial>`), filters, `full_state`, lazy-loaded
//! members, limited timelines, invites and leaves, account data, ephemeral events and unread
//! counts. Simplified sliding sync (MSC4186) lives in [`sliding`].

pub mod filter;
pub(crate) mod lazy;
mod rooms;
pub(crate) mod sliding;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use rhizome_core::{Error, Result};
use rhizome_storage::{MembershipRecord, StreamPos};
use ruma::{
    OwnedUserId, UserId,
    api::client::{filter::FilterDefinition, sync::sync_events::v3},
    presence::PresenceState,
};
use serde_json::{Value, json};

use crate::{
    Requester, Services,
    account_data::is_deleted,
    push::{PUSH_RULES_TYPE, rules::push_rules_from},
    rooms::format::raw,
};

/// What a `/sync` request asks for.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    /// The `since` token.
    pub since: Option<String>,
    /// How long to wait for something new.
    pub timeout: Duration,
    /// Send the full state of every room.
    pub full_state: bool,
    /// The filter.
    pub filter: FilterDefinition,
    /// The presence to set.
    pub set_presence: PresenceState,
    /// Send the state at the end of the timeline (`state_after`) instead of before it.
    pub use_state_after: bool,
}

/// A parsed `since` token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncToken {
    /// The stream position.
    pub pos: StreamPos,
    /// The ephemeral serial.
    pub ephemeral: i64,
}

impl SyncToken {
    /// Parses `s<pos>_<serial>`.
    pub fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param("Invalid sync token");
        let rest = token.strip_prefix('s').ok_or_else(invalid)?;
        let (pos, ephemeral) = rest.split_once('_').ok_or_else(invalid)?;
        Ok(Self {
            pos: pos.parse().map_err(|_| invalid())?,
            ephemeral: ephemeral.parse().map_err(|_| invalid())?,
        })
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}", self.pos, self.ephemeral)
    }
}

/// The window one sync covers: changes after `since` up to `upper`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) since: Option<SyncToken>,
    pub(crate) upper: SyncToken,
}

fn response_has_data(response: &v3::Response) -> bool {
    !response.rooms.join.is_empty()
        || !response.rooms.invite.is_empty()
        || !response.rooms.leave.is_empty()
        || !response.rooms.knock.is_empty()
        || !response.presence.events.is_empty()
        || !response.account_data.events.is_empty()
        || !response.to_device.events.is_empty()
        || !response.device_lists.changed.is_empty()
        || !response.device_lists.left.is_empty()
}

impl Services {
    /// Answers a `/sync`, waiting up to the timeout for something new.
    pub async fn sync(
        self: &Arc<Self>,
        requester: &Requester,
        request: SyncRequest,
    ) -> Result<v3::Response> {
        let since = request.since.as_deref().map(SyncToken::parse).transpose()?;
        if let Some(since) = since {
            // A token from another process may be a moment ahead of this one.
            self.catch_up_to(since.pos).await;
        }
        if request.set_presence != PresenceState::Offline {
            self.set_presence(&requester.user_id, request.set_presence.as_str(), None).await?;
        }
        let timeout =
            request.timeout.min(Duration::from_millis(self.config.limits.max_sync_timeout_ms));
        let deadline = Instant::now() + timeout;
        let mut wake = self.notifier.subscribe(&requester.user_id);
        loop {
            wake.borrow_and_update();
            let upper = SyncToken {
                pos: self.store.current_stream_pos(),
                // Another process's serial may be ahead of this one's (never of its clock).
                ephemeral: self.ephemeral_serial().max(since.map_or(0, |since| since.ephemeral)),
            };
            let window = Window { since, upper };
            let mut response = self.sync_once(requester, &request, window).await?;
            let done = since.is_none() || request.full_state || response_has_data(&response);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !done
                && !remaining.is_zero()
                && let Ok(Ok(())) = tokio::time::timeout(remaining, wake.changed()).await
            {
                continue;
            }
            // Something new, or timed out (or the notifier went away) with nothing new.
            if let Some(fields) = &request.filter.event_fields {
                filter::apply_event_fields(&mut response, fields);
            }
            return Ok(response);
        }
    }

    async fn sync_once(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
    ) -> Result<v3::Response> {
        let mut response = v3::Response::new(window.upper.to_string());
        if window.since.is_none() || request.full_state {
            self.lazy_members.forget_device(requester);
        }
        let memberships = self.user_memberships_cached(&requester.user_id).await?;
        self.sync_rooms(requester, request, window, &memberships, &mut response).await?;
        self.sync_account_data(requester, request, window, &mut response).await?;
        self.sync_presence(&requester.user_id, request, window, &memberships, &mut response)
            .await?;
        self.sync_e2ee(
            requester,
            window.since.map(|since| since.pos),
            window.upper.pos,
            &mut response,
        )
        .await?;
        Ok(response)
    }

    async fn sync_account_data(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        response: &mut v3::Response,
    ) -> Result<()> {
        let since = window.since.map(|since| since.pos);
        if filter::filter_blocks_all(&request.filter.account_data)
            && filter::room_filter_blocks_all(&request.filter.room.account_data)
        {
            // The filter shows no account data (nor the default push rules): none is read.
            return Ok(());
        }
        let records = self.store.account_data_since(&requester.user_id, since).await?;
        // A first sync carries the push rules, the defaults when none are stored. The records
        // of a first sync are all the user's account data, so the stored rules (if any) are
        // among them and need no read of their own.
        let stored_push_rules = records
            .iter()
            .find(|record| record.room_id.is_none() && record.data_type == PUSH_RULES_TYPE)
            .map(|record| record.content.clone());
        let mut saw_push_rules = false;
        for record in records.into_iter().filter(|record| record.stream_pos <= window.upper.pos) {
            // Deleted data (MSC3391) goes to those who had it, not to a fresh start.
            if since.is_none() && is_deleted(&record.content) {
                continue;
            }
            let content: Value = serde_json::from_str(&record.content)?;
            let event = serde_json::value::to_raw_value(
                &json!({ "type": record.data_type, "content": content }),
            )?;
            match &record.room_id {
                None => {
                    saw_push_rules |= record.data_type == PUSH_RULES_TYPE;
                    if filter::event_passes(&request.filter.account_data, &record.data_type, None) {
                        response.account_data.events.push(raw(event));
                    }
                }
                Some(room_id) => {
                    if let Some(room) = response.rooms.join.get_mut(room_id) {
                        if filter::room_event_type_passes(
                            &request.filter.room.account_data,
                            &record.data_type,
                        ) {
                            room.account_data.events.push(raw(event));
                        }
                    } else if since.is_some() && self.is_joined(room_id, &requester.user_id).await?
                    {
                        let mut room = v3::JoinedRoom::new();
                        room.account_data.events.push(raw(event));
                        response.rooms.join.insert(room_id.clone(), room);
                    }
                }
            }
        }
        if since.is_none()
            && !saw_push_rules
            && filter::event_passes(&request.filter.account_data, PUSH_RULES_TYPE, None)
        {
            let rules = push_rules_from(&requester.user_id, stored_push_rules.as_deref())?;
            let rules = json!({ "type": PUSH_RULES_TYPE, "content": { "global": rules } });
            response.account_data.events.push(raw(serde_json::value::to_raw_value(&rules)?));
        }
        Ok(())
    }

    async fn sync_presence(
        &self,
        user_id: &UserId,
        request: &SyncRequest,
        window: Window,
        memberships: &[MembershipRecord],
        response: &mut v3::Response,
    ) -> Result<()> {
        if request.filter.presence.types.as_ref().is_some_and(Vec::is_empty) {
            return Ok(());
        }
        // The user's own presence, and that of everyone they share a joined room with: read
        // from the cached member lists in place (a woken sync in a big room is no reason to
        // copy the room's members).
        let mut rooms = Vec::new();
        for room in memberships.iter().filter(|member| member.membership == "join") {
            rooms.push(self.room_memberships_cached(&room.room_id).await?);
        }
        let sharing = std::iter::once(user_id).chain(rooms.iter().flat_map(|members| {
            members
                .iter()
                .filter(|member| member.membership == "join")
                .map(|member| member.user_id.as_ref())
        }));
        let mut entries =
            self.presence_changed_among(sharing, window.since.map(|since| since.ephemeral));
        if window.since.is_some() {
            // Those the user newly shares a room with: their presence, however old.
            let newly_shared = self.newly_shared_users(user_id, response).await?;
            for (user, entry) in self.presence_since(&newly_shared, None) {
                if !entries.iter().any(|(known, _)| *known == user) {
                    entries.push((user, entry));
                }
            }
        }
        let now = rhizome_core::clock::now_millis();
        for (user_id, entry) in entries {
            if entry.serial > window.upper.ephemeral
                || !filter::event_passes(&request.filter.presence, "m.presence", Some(&user_id))
            {
                continue;
            }
            let mut content = json!({
                "presence": entry.state,
                "last_active_ago": (now - entry.last_active_ts).max(0),
                "currently_active": entry.state == "online",
            });
            if let Some(status) = entry.status_msg {
                content["status_msg"] = json!(status);
            }
            let event = json!({ "type": "m.presence", "sender": user_id, "content": content });
            response.presence.events.push(raw(serde_json::value::to_raw_value(&event)?));
        }
        Ok(())
    }
}

impl Services {
    /// The users this sync shows joining a room the user is in, and every member of the rooms
    /// it shows the user joining.
    async fn newly_shared_users(
        &self,
        user_id: &UserId,
        response: &v3::Response,
    ) -> Result<Vec<OwnedUserId>> {
        let mut users: Vec<OwnedUserId> = Vec::new();
        for (room_id, room) in &response.rooms.join {
            let state = match &room.state {
                v3::State::Before(events) | v3::State::After(events) => &events.events,
                _ => continue,
            };
            let timeline = room.timeline.events.iter().map(|event| event.json());
            for event in timeline.chain(state.iter().map(|event| event.json())) {
                let Ok(event) = serde_json::from_str::<Value>(event.get()) else { continue };
                if event["type"] != "m.room.member" || event["content"]["membership"] != "join" {
                    continue;
                }
                let Some(member) = event["state_key"].as_str() else { continue };
                if member == user_id.as_str() {
                    users.extend(self.room_members_cached(room_id, false).await?);
                } else if let Ok(member) = UserId::parse(member) {
                    users.push(member);
                }
            }
        }
        users.sort();
        users.dedup();
        Ok(users)
    }
}

/// Builds the `m.receipt` content for a set of receipts.
pub(crate) fn receipt_content(receipts: &[rhizome_storage::ReceiptRecord]) -> Value {
    let mut content: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>> = BTreeMap::new();
    for receipt in receipts {
        let mut data = json!({ "ts": receipt.ts });
        if let Some(thread) = &receipt.thread_id {
            data["thread_id"] = json!(thread);
        }
        content
            .entry(receipt.event_id.to_string())
            .or_default()
            .entry(receipt.receipt_type.clone())
            .or_default()
            .insert(receipt.user_id.to_string(), data);
    }
    json!(content)
}
