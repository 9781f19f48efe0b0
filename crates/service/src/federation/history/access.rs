//! Who may have a room's history: the room's server ACL first, then the history visibility
//! rules for servers ([`ServerView`], [`rhizome_room::visibility::server_may_see_event`])
//! applied to the state before each event. What a state group says to the server is kept for
//! the length of one request.

use std::{collections::HashMap, sync::Arc};

use rhizome_core::{Error, Result};
use rhizome_room::visibility::ServerView;
use rhizome_storage::StateGroupId;
use ruma::{OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde_json::value::RawValue as RawJsonValue;

use crate::{Services, rooms::cache::LoadedEvent};

/// What one server may have of one room, for the length of a request.
pub(super) struct ServerAccess<'a> {
    /// The requesting server.
    pub(super) origin: &'a ServerName,
    /// The room's version.
    pub(super) version: RoomVersionId,
    /// Whether one of the server's users is joined to the room now.
    pub(super) joined_now: bool,
    /// Whether one of the server's users has any membership in the room (joined, invited,
    /// knocking, left or banned): a server that never had one gets no history at all.
    pub(super) ever_member: bool,
    /// What each state group says to the server.
    at_group: HashMap<StateGroupId, Arc<ServerView>>,
}

impl ServerAccess<'_> {
    /// Whether the server may walk the room's history at all (each event is then judged on
    /// its own): it has or had a user in the room.
    pub(super) fn may_walk_history(&self) -> bool {
        self.joined_now || self.ever_member
    }
}

impl Services {
    /// The access of `origin` to a room this server holds: `M_NOT_FOUND` for a room without
    /// state here, `M_FORBIDDEN` when the room's server ACL denies the server.
    pub(super) async fn server_access<'a>(
        &self,
        room_id: &RoomId,
        origin: &'a ServerName,
    ) -> Result<ServerAccess<'a>> {
        let unknown = || Error::not_found("This server holds no state of that room");
        let version = self.room_version(room_id).await.map_err(|_| unknown())?;
        if self.store.get_room(room_id).await?.and_then(|room| room.current_state_group).is_none() {
            return Err(unknown());
        }
        self.check_server_acl(room_id, origin).await?;
        let members = self.room_memberships_cached(room_id).await?;
        let of_origin = || members.iter().filter(|member| member.user_id.server_name() == origin);
        Ok(ServerAccess {
            origin,
            version,
            joined_now: of_origin().any(|member| member.membership == "join"),
            ever_member: of_origin().next().is_some(),
            at_group: HashMap::new(),
        })
    }

    /// Whether the server may see a timeline event (outliers have no place in the room's
    /// history here: only a server in the room now may have them).
    pub(super) async fn server_may_see(
        &self,
        access: &mut ServerAccess<'_>,
        event: &LoadedEvent,
    ) -> Result<bool> {
        if event.record.outlier {
            return Ok(access.joined_now);
        }
        let group = event.record.state_before;
        let view = match access.at_group.get(&group) {
            Some(view) => view.clone(),
            None => {
                let view = Arc::new(self.server_view_at(group, access.origin).await?);
                access.at_group.insert(group, view.clone());
                view
            }
        };
        Ok(view.allows(&event.pdu, access.origin, access.joined_now))
    }

    /// What the state group says to `server`.
    async fn server_view_at(&self, group: StateGroupId, server: &ServerName) -> Result<ServerView> {
        let state = self.state_map(group).await?;
        let events: HashMap<OwnedEventId, Arc<LoadedEvent>> = self
            .load_events(&ServerView::event_ids(&state, server))
            .await?
            .into_iter()
            .map(|event| (event.pdu.event_id.clone(), event))
            .collect();
        Ok(ServerView::of_state(&state, server, |event_id| {
            events.get(event_id).map(|event| &event.pdu)
        }))
    }

    /// The event as the server may have it: whole when it may see it, redacted otherwise (the
    /// room graph stays whole; the content stays here).
    pub(super) async fn event_for_server(
        &self,
        access: &mut ServerAccess<'_>,
        event: &Arc<LoadedEvent>,
    ) -> Result<Box<RawJsonValue>> {
        if self.server_may_see(access, event).await? {
            return Ok(event.pdu.json().to_owned());
        }
        let redacted = event
            .pdu
            .redacted(&access.version, None)
            .map_err(|error| Error::bug(format!("redaction failed: {error}")))?;
        Ok(redacted.json().to_owned())
    }
}
