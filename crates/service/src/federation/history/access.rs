//! Who may have a room's history: the room's server ACL first, then the history visibility
//! rules for servers ([`server_may_see_event`]) applied to the state at each event. Decisions
//! on the state at an event are kept per state group for the length of one request.

use std::{collections::HashMap, sync::Arc};

use rhizome_core::{Error, Result};
use rhizome_room::visibility::{ServerVisibilityInput, server_may_see_event};
use rhizome_storage::StateGroupId;
use ruma::{
    OwnedEventId, RoomId, RoomVersionId, ServerName, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::{history_visibility::HistoryVisibility, member::MembershipState},
    },
};
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
    /// History visibility and the server's memberships, per state group.
    at_group: HashMap<StateGroupId, (HistoryVisibility, Vec<MembershipState>)>,
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
        let own_member_event = event.pdu.kind == TimelineEventType::RoomMember
            && event
                .pdu
                .state_key
                .as_deref()
                .and_then(|key| UserId::parse(key).ok())
                .is_some_and(|user| user.server_name() == access.origin);
        let history_visibility_after = (event.pdu.kind == TimelineEventType::RoomHistoryVisibility
            && event.pdu.state_key.as_deref() == Some(""))
        .then(|| event.pdu.content_str("history_visibility"))
        .flatten()
        .map(|value| HistoryVisibility::from(value.as_str()));
        let group = event.record.state_before;
        let (history_visibility, memberships) = match access.at_group.get(&group) {
            Some(known) => known.clone(),
            None => {
                let found = self.visibility_at_group(group, access.origin).await?;
                access.at_group.insert(group, found.clone());
                found
            }
        };
        Ok(server_may_see_event(&ServerVisibilityInput {
            history_visibility: &history_visibility,
            history_visibility_after: history_visibility_after.as_ref(),
            memberships_at_event: &memberships,
            joined_now: access.joined_now,
            own_member_event,
        }))
    }

    /// The history visibility of a state group and the memberships of `server`'s users in it.
    async fn visibility_at_group(
        &self,
        group: StateGroupId,
        server: &ServerName,
    ) -> Result<(HistoryVisibility, Vec<MembershipState>)> {
        let state = self.state_map(group).await?;
        let history_visibility = match state
            .get(&(StateEventType::RoomHistoryVisibility, String::new()))
        {
            Some(event_id) => self
                .load_event(event_id)
                .await?
                .and_then(|event| event.pdu.content_str("history_visibility"))
                .map_or(HistoryVisibility::Shared, |value| HistoryVisibility::from(value.as_str())),
            None => HistoryVisibility::Shared,
        };
        let member_ids: Vec<OwnedEventId> = state
            .iter()
            .filter(|((kind, key), _)| {
                *kind == StateEventType::RoomMember
                    && UserId::parse(key.as_str()).is_ok_and(|user| user.server_name() == server)
            })
            .map(|(_, event_id)| event_id.clone())
            .collect();
        let memberships = self
            .load_events(&member_ids)
            .await?
            .iter()
            .filter_map(|event| event.pdu.content_str("membership"))
            .map(|membership| MembershipState::from(membership.as_str()))
            .collect();
        Ok((history_visibility, memberships))
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
