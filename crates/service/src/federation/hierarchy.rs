//! Spaces across servers (spec: Server-Server API, "Spaces"): this server's view of a space it
//! is in for another server (`/_matrix/federation/v1/hierarchy/{roomId}`: the space, the
//! children it can describe that the asking server could peek or join, and those it could not),
//! and, for a local user's `/hierarchy`, the rooms this server is not in asked of the servers
//! their `m.space.child` events name, answers cached a short while.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use rhizome_core::{Error, Result};
use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId,
    api::federation::space::get_hierarchy,
    room::{JoinRuleSummary, RoomSummary as WireSummary},
};
use serde_json::{Value, value::RawValue as RawJsonValue};

use super::{
    RequestLimits,
    queries::{HIERARCHY_TTL, fresh},
};
use crate::{
    Services,
    rooms::{
        directory::RoomSummary,
        spaces::{Child, child_from_stripped, sort_children},
    },
};

/// The most requests to other servers one walk of a hierarchy makes.
const MAX_REMOTE_REQUESTS: usize = 16;
/// The most servers asked about one room.
const MAX_SERVERS_PER_ROOM: usize = 3;
/// The most children of one room kept from another server's answer.
const MAX_REMOTE_CHILDREN: usize = 500;
/// The largest answer about a space read from another server.
const MAX_REMOTE_RESPONSE: usize = 4 * 1024 * 1024;
/// How long one question about a space may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(8);

/// What this server answers another about a space.
#[derive(Debug)]
pub struct ServerHierarchy {
    /// The space itself.
    pub room: RoomSummary,
    /// Its `m.space.child` events, stripped, with `origin_server_ts`.
    pub children_state: Vec<Box<RawJsonValue>>,
    /// The children this server can describe and the asking server could peek or join.
    pub children: Vec<RoomSummary>,
    /// The children this server can describe that the asking server could not peek or join.
    pub inaccessible_children: Vec<OwnedRoomId>,
}

/// What one walk of a hierarchy has learnt from other servers.
pub(crate) struct HierarchyWalk {
    suggested_only: bool,
    /// Rooms described as children in another server's answer.
    known: HashMap<OwnedRoomId, RoomSummary>,
    /// Rooms another server said no one here could peek or join.
    inaccessible: HashSet<OwnedRoomId>,
    requests_left: usize,
}

impl HierarchyWalk {
    pub(crate) fn new(suggested_only: bool) -> Self {
        Self {
            suggested_only,
            known: HashMap::new(),
            inaccessible: HashSet::new(),
            requests_left: MAX_REMOTE_REQUESTS,
        }
    }
}

/// This server's summary of another server's room description.
fn summary_from_wire(wire: WireSummary) -> RoomSummary {
    let allowed_room_ids = match &wire.join_rule {
        JoinRuleSummary::Restricted(restricted) | JoinRuleSummary::KnockRestricted(restricted) => {
            restricted.allowed_room_ids.clone()
        }
        _ => Vec::new(),
    };
    RoomSummary {
        room_id: wire.room_id,
        name: wire.name,
        topic: wire.topic,
        canonical_alias: wire.canonical_alias,
        avatar_url: wire.avatar_url.map(|url| url.to_string()),
        joined_members: u64::from(wire.num_joined_members),
        world_readable: wire.world_readable,
        guest_can_join: wire.guest_can_join,
        join_rule: Some(wire.join_rule.as_str().to_owned()),
        allowed_room_ids,
        room_type: wire.room_type.map(|kind| kind.to_string()),
        room_version: wire.room_version.map(|version| version.to_string()),
        encryption: wire.encryption.map(|algorithm| algorithm.to_string()),
    }
}

/// The valid children in another server's `children_state`, in the spec's order.
fn children_from_wire(
    children_state: &[ruma::serde::Raw<ruma::events::space::child::HierarchySpaceChildEvent>],
    suggested_only: bool,
) -> Vec<Child> {
    let mut children: Vec<Child> = children_state
        .iter()
        .take(MAX_REMOTE_CHILDREN)
        .filter_map(|raw| serde_json::from_str::<Value>(raw.json().get()).ok())
        .filter_map(|event| child_from_stripped(&event, suggested_only))
        .collect();
    sort_children(&mut children);
    children
}

/// Whether a room's own rules let anyone find it: world-readable, or open to joins, knocks or
/// members of other rooms.
fn open_to_preview(summary: &RoomSummary) -> bool {
    summary.world_readable
        || matches!(
            summary.join_rule.as_deref(),
            Some("public" | "knock" | "knock_restricted" | "restricted")
        )
}

impl Services {
    /// One room of a local user's walk of a hierarchy, with its children, if the user may
    /// preview it: from this server's state when it is in the room, else from another server
    /// (a parent's answer, or the room's own asked of `via`), else from what this server still
    /// holds of it.
    pub(crate) async fn hierarchy_room(
        &self,
        walk: &mut HierarchyWalk,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
    ) -> Result<Option<(RoomSummary, Vec<Child>)>> {
        if self.server_in_room(room_id).await? {
            return self.local_hierarchy_room(user_id, room_id, walk.suggested_only).await;
        }
        if walk.inaccessible.contains(room_id) {
            return Ok(None);
        }
        if let Some(known) = walk.known.get(room_id)
            && known.room_type.as_deref() != Some("m.space")
        {
            let known = known.clone();
            let visible = self.may_preview_remote_room(user_id, &known).await?;
            return Ok(visible.then_some((known, Vec::new())));
        }
        if let Some(answer) = self.remote_hierarchy(walk, room_id, via).await {
            for child in &answer.children {
                walk.known.insert(child.room_id.clone(), summary_from_wire(child.clone()));
            }
            walk.inaccessible.extend(answer.inaccessible_children.iter().cloned());
            let summary = summary_from_wire(answer.room.summary.clone());
            if summary.room_id != room_id
                || !self.may_preview_remote_room(user_id, &summary).await?
            {
                return Ok(None);
            }
            let children = children_from_wire(&answer.room.children_state, walk.suggested_only);
            return Ok(Some((summary, children)));
        }
        if self.room_exists(room_id).await? {
            return self.local_hierarchy_room(user_id, room_id, walk.suggested_only).await;
        }
        Ok(None)
    }

    async fn local_hierarchy_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<Option<(RoomSummary, Vec<Child>)>> {
        let summary = self.room_summary(room_id).await?;
        if !self.may_preview_room(Some(user_id), &summary).await? {
            return Ok(None);
        }
        let children = if summary.room_type.as_deref() == Some("m.space") {
            self.space_children(room_id, suggested_only).await?
        } else {
            Vec::new()
        };
        Ok(Some((summary, children)))
    }

    /// Whether a local user may preview a room this server is not in, as another server
    /// described it: by its own rules, by an invitation or knock here, or (restricted rooms)
    /// by membership of an allowed room.
    pub async fn may_preview_remote_room(
        &self,
        user_id: &UserId,
        summary: &RoomSummary,
    ) -> Result<bool> {
        if let Some(member) = self.store.get_membership(&summary.room_id, user_id).await? {
            match member.membership.as_str() {
                "ban" => return Ok(false),
                "join" | "invite" | "knock" => return Ok(true),
                _ => {}
            }
        }
        if summary.world_readable
            || matches!(summary.join_rule.as_deref(), Some("public" | "knock" | "knock_restricted"))
        {
            return Ok(true);
        }
        if summary.join_rule.as_deref() == Some("restricted") {
            for allowed in &summary.allowed_room_ids {
                if self.is_joined(allowed, user_id).await? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Another server's answer about a room of a space, from the cache or asked of up to
    /// three of `via` in turn; `None` when none answered (remembered as well).
    async fn remote_hierarchy(
        &self,
        walk: &mut HierarchyWalk,
        room_id: &RoomId,
        via: &[OwnedServerName],
    ) -> Option<Arc<get_hierarchy::v1::Response>> {
        let key = (room_id.to_owned(), walk.suggested_only);
        let cache = &self.federation.queries.hierarchies;
        if let Some(cached) = fresh(cache, &key, HIERARCHY_TTL) {
            return cached;
        }
        let client = self.federation_client().ok()?;
        let servers: Vec<&OwnedServerName> = via
            .iter()
            .filter(|server| server.as_str() != self.server_name().as_str())
            .take(MAX_SERVERS_PER_ROOM)
            .collect();
        if servers.is_empty() || walk.requests_left == 0 {
            return None;
        }
        let limits = RequestLimits::small()
            .with_max_body_bytes(MAX_REMOTE_RESPONSE)
            .with_timeout(REMOTE_TIMEOUT);
        let mut answer = None;
        for server in servers {
            if walk.requests_left == 0 {
                break;
            }
            walk.requests_left -= 1;
            let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
            request.suggested_only = walk.suggested_only;
            match client.send_with_limits(server, request, limits).await {
                Ok(response) => {
                    answer = Some(Arc::new(response));
                    break;
                }
                Err(error) => tracing::debug!(%error, "a server could not describe a space"),
            }
        }
        cache.lock().put(key, (Instant::now(), answer.clone()));
        answer
    }

    /// What this server tells `origin` about a space it is in. `M_NOT_FOUND` when this server
    /// is not in the room or `origin` could neither peek nor join it.
    pub async fn hierarchy_for_server(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<ServerHierarchy> {
        let not_found = || Error::not_found("Room not found or not accessible");
        if !self.room_exists(room_id).await? || !self.server_in_room(room_id).await? {
            return Err(not_found());
        }
        let room = self.room_summary(room_id).await?;
        if !self.may_server_preview(origin, &room).await? {
            tracing::debug!(%origin, "refused a space's hierarchy to another server");
            return Err(not_found());
        }
        let child_events = if room.room_type.as_deref() == Some("m.space") {
            self.space_children(room_id, suggested_only).await?
        } else {
            Vec::new()
        };
        let mut children = Vec::new();
        let mut inaccessible_children = Vec::new();
        for child in &child_events {
            if !self.server_in_room(&child.room_id).await? {
                continue;
            }
            let summary = self.room_summary(&child.room_id).await?;
            if self.may_server_preview(origin, &summary).await? {
                children.push(summary);
            } else {
                inaccessible_children.push(child.room_id.clone());
            }
        }
        let children_state = child_events.into_iter().map(|child| child.stripped).collect();
        Ok(ServerHierarchy { room, children_state, children, inaccessible_children })
    }

    /// Whether another server could peek into or join a room: its own rules allow it, or one
    /// of its users is in it; never for rooms shut down or closed to it by the server ACL.
    async fn may_server_preview(&self, origin: &ServerName, summary: &RoomSummary) -> Result<bool> {
        let room_id = &summary.room_id;
        if self.store.get_room(room_id).await?.is_none_or(|room| room.shut_down_ts.is_some()) {
            return Ok(false);
        }
        if self.check_server_acl(room_id, origin).await.is_err() {
            return Ok(false);
        }
        if open_to_preview(summary) {
            return Ok(true);
        }
        Ok(self.room_servers(room_id).await?.iter().any(|server| server == origin))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{UInt, room::RestrictedSummary};
    use serde_json::json;

    use super::*;

    #[test]
    fn wire_summaries_keep_their_join_rules() {
        let allowed = OwnedRoomId::try_from("!allowed:x").unwrap();
        let mut wire = WireSummary::new(
            OwnedRoomId::try_from("!room:x").unwrap(),
            JoinRuleSummary::Restricted(RestrictedSummary::new(vec![allowed.clone()])),
            false,
            UInt::from(4u32),
            false,
        );
        wire.room_type = Some(ruma::room::RoomType::Space);
        let summary = summary_from_wire(wire);
        assert_eq!(summary.join_rule.as_deref(), Some("restricted"));
        assert_eq!(summary.allowed_room_ids, vec![allowed]);
        assert_eq!(summary.room_type.as_deref(), Some("m.space"));
        assert_eq!(summary.joined_members, 4);
        assert!(open_to_preview(&summary));
        let invite_only = RoomSummary { join_rule: Some("invite".to_owned()), ..summary };
        assert!(!open_to_preview(&invite_only));
    }

    #[test]
    fn wire_children_are_checked_and_ordered() {
        let raw = |value: Value| {
            ruma::serde::Raw::from_json(serde_json::value::to_raw_value(&value).unwrap())
        };
        let state = vec![
            raw(json!({ "type": "m.space.child", "state_key": "!b:x", "content": { "via": ["x"] },
                        "sender": "@a:x", "origin_server_ts": 2 })),
            raw(json!({ "type": "m.space.child", "state_key": "!a:x",
                        "content": { "via": ["x"], "suggested": true },
                        "sender": "@a:x", "origin_server_ts": 3 })),
            raw(json!({ "type": "m.space.child", "state_key": "!gone:x", "content": {},
                        "sender": "@a:x", "origin_server_ts": 1 })),
            raw(json!({ "type": "m.space.child", "state_key": "not a room",
                        "content": { "via": ["x"] }, "sender": "@a:x", "origin_server_ts": 1 })),
        ];
        let ids = |children: Vec<Child>| {
            children.into_iter().map(|child| child.room_id.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(ids(children_from_wire(&state, false)), ["!b:x", "!a:x"]);
        assert_eq!(ids(children_from_wire(&state, true)), ["!a:x"]);
    }
}
