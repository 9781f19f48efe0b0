//! Spaces and room previews: who may preview a room (its members, anyone for world-readable
//! rooms or rooms anyone may join or knock on, members of an allowed room for restricted
//! ones), the space hierarchy walked depth first over `m.space.child` state, and room
//! summaries by ID or alias.
//!
//! Rooms of the hierarchy this server is not in are asked of the servers their
//! `m.space.child` events name ([`federation::hierarchy`](crate::federation::hierarchy)).

use std::{cmp::Ordering, collections::HashSet};

use rhizome_core::{Error, Result, clock::millis_from_ts};
use ruma::{OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, UserId, events::StateEventType};
use serde_json::{Value, json, value::RawValue as RawJsonValue};

use crate::{Services, federation::hierarchy::HierarchyWalk, rooms::directory::RoomSummary};

/// The default and largest number of rooms on one page of the hierarchy.
const DEFAULT_HIERARCHY_LIMIT: u64 = 50;
const MAX_HIERARCHY_LIMIT: u64 = 100;
/// The default and deepest level the hierarchy is walked to.
const MAX_HIERARCHY_DEPTH: u64 = 10;

/// One room of the space hierarchy.
#[derive(Debug)]
pub struct HierarchyRoom {
    /// What the room shows of itself.
    pub summary: RoomSummary,
    /// Its `m.space.child` events (stripped, with `origin_server_ts`), if it is a space.
    pub children_state: Vec<Box<RawJsonValue>>,
}

/// A page of the space hierarchy.
#[derive(Debug)]
pub struct HierarchyPage {
    /// The rooms, depth first.
    pub rooms: Vec<HierarchyRoom>,
    /// The token of the next page.
    pub next_batch: Option<String>,
}

/// What the hierarchy is asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct HierarchyQuery<'a> {
    /// A `next_batch` token of an earlier page.
    pub from: Option<&'a str>,
    /// The most rooms on the page.
    pub limit: Option<u64>,
    /// How deep to walk (0: the root only).
    pub max_depth: Option<u64>,
    /// Whether to follow only children marked `suggested`.
    pub suggested_only: bool,
}

/// A valid `m.space.child` event, with what orders it among its siblings.
pub(crate) struct Child {
    pub(crate) room_id: OwnedRoomId,
    order: Option<String>,
    ts: i64,
    /// The servers it names to reach the child by.
    pub(crate) via: Vec<OwnedServerName>,
    /// The event stripped, with `origin_server_ts`.
    pub(crate) stripped: Box<RawJsonValue>,
}

/// The child an `m.space.child` event (stripped, with `origin_server_ts`) names, if the event
/// is valid (a room ID as state key and a non-empty `via`) and, with `suggested_only`,
/// suggested.
pub(crate) fn child_from_stripped(event: &Value, suggested_only: bool) -> Option<Child> {
    if event.get("type").and_then(Value::as_str) != Some("m.space.child") {
        return None;
    }
    let room_id = event
        .get("state_key")
        .and_then(Value::as_str)
        .and_then(|key| OwnedRoomId::try_from(key).ok())?;
    let content = event.get("content")?;
    let via = content.get("via").and_then(Value::as_array)?;
    if via.is_empty() || !via.iter().all(Value::is_string) {
        return None;
    }
    let suggested = content.get("suggested").and_then(Value::as_bool) == Some(true);
    if suggested_only && !suggested {
        return None;
    }
    let order = content
        .get("order")
        .and_then(Value::as_str)
        .filter(|order| valid_order(order))
        .map(str::to_owned);
    let ts = event.get("origin_server_ts").and_then(Value::as_i64).unwrap_or(0);
    let via = via
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|server| OwnedServerName::try_from(server).ok())
        .collect();
    let stripped = serde_json::value::to_raw_value(event).ok()?;
    Some(Child { room_id, order, ts, via, stripped })
}

/// Children in the spec's order.
pub(crate) fn sort_children(children: &mut [Child]) {
    children.sort_by(child_order);
}

/// The spec's order of children: by `order` (those without one last), then by the time of the
/// `m.space.child` event, then by room ID.
fn child_order(a: &Child, b: &Child) -> Ordering {
    (a.order.is_none(), &a.order, a.ts, &a.room_id).cmp(&(
        b.order.is_none(),
        &b.order,
        b.ts,
        &b.room_id,
    ))
}

/// An `order` is at most 50 printable ASCII characters.
fn valid_order(order: &str) -> bool {
    order.len() <= 50 && order.bytes().all(|byte| (0x20..=0x7e).contains(&byte))
}

/// The `from` token of the hierarchy: how many rooms to skip, and the walk's parameters
/// (which may not change between pages).
fn hierarchy_token(skip: usize, max_depth: u64, suggested_only: bool) -> String {
    format!("h{skip}_{max_depth}_{}", u8::from(suggested_only))
}

fn parse_hierarchy_token(token: &str, max_depth: u64, suggested_only: bool) -> Result<usize> {
    let invalid = || Error::invalid_param("Unknown pagination token");
    let mut parts = token.strip_prefix('h').ok_or_else(invalid)?.split('_');
    let skip = parts.next().and_then(|part| part.parse().ok()).ok_or_else(invalid)?;
    let depth: u64 = parts.next().and_then(|part| part.parse().ok()).ok_or_else(invalid)?;
    let suggested = parts.next().ok_or_else(invalid)?;
    if parts.next().is_some() {
        return Err(invalid());
    }
    if depth != max_depth || suggested != if suggested_only { "1" } else { "0" } {
        return Err(Error::invalid_param(
            "suggested_only and max_depth cannot change on paginated requests",
        ));
    }
    Ok(skip)
}

impl Services {
    /// Whether a user (or, with `None`, anyone) may preview a room: see its summary and find it
    /// in a space hierarchy. Rooms shut down by the administrator are never previewed.
    pub async fn may_preview_room(
        &self,
        user_id: Option<&UserId>,
        summary: &RoomSummary,
    ) -> Result<bool> {
        let room_id = &summary.room_id;
        if self.store.get_room(room_id).await?.is_none_or(|room| room.shut_down_ts.is_some()) {
            return Ok(false);
        }
        let membership = match user_id {
            Some(user_id) => self.store.get_membership(room_id, user_id).await?,
            None => None,
        };
        match membership.as_ref().map(|member| member.membership.as_str()) {
            Some("ban") => return Ok(false),
            Some("join" | "invite" | "knock") => return Ok(true),
            _ => {}
        }
        if summary.world_readable {
            return Ok(true);
        }
        match summary.join_rule.as_deref() {
            Some("public" | "knock" | "knock_restricted") => Ok(true),
            Some("restricted") => {
                let Some(user_id) = user_id else { return Ok(false) };
                for allowed in &summary.allowed_room_ids {
                    if self.is_joined(allowed, user_id).await? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// The summary of a room by ID or local alias, with the user's membership, if the user (or
    /// anyone, unauthenticated) may preview it; `M_NOT_FOUND` otherwise, as for unknown rooms.
    pub async fn room_summary_for(
        &self,
        user_id: Option<&UserId>,
        room: &RoomOrAliasId,
    ) -> Result<(RoomSummary, Option<String>)> {
        let not_found = || Error::not_found("Room not found or not accessible");
        let room_id = match self.resolve_room(room).await {
            Ok(room_id) => room_id,
            Err(error) if error.matrix_kind().is_some() => return Err(not_found()),
            Err(error) => return Err(error),
        };
        let summary = self.room_summary(&room_id).await?;
        if !self.may_preview_room(user_id, &summary).await? {
            return Err(not_found());
        }
        let membership = match user_id {
            Some(user_id) => {
                self.store.get_membership(&room_id, user_id).await?.map(|member| member.membership)
            }
            None => None,
        };
        Ok((summary, membership))
    }

    /// A page of the space hierarchy under `root`, depth first, of the rooms the user may
    /// preview. `M_FORBIDDEN` if the user may not preview the root itself.
    pub async fn space_hierarchy(
        &self,
        user_id: &UserId,
        root: &RoomId,
        query: HierarchyQuery<'_>,
    ) -> Result<HierarchyPage> {
        let limit = match query.limit {
            Some(0) => return Err(Error::invalid_param("limit must be greater than zero")),
            Some(limit) => limit.min(MAX_HIERARCHY_LIMIT),
            None => DEFAULT_HIERARCHY_LIMIT,
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let max_depth = query.max_depth.unwrap_or(MAX_HIERARCHY_DEPTH).min(MAX_HIERARCHY_DEPTH);
        let skip = match query.from {
            Some(token) => parse_hierarchy_token(token, max_depth, query.suggested_only)?,
            None => 0,
        };
        let forbidden = || Error::forbidden("You are not allowed to view this room");
        let mut walk = HierarchyWalk::new(query.suggested_only);
        // The root's own server, when its ID names one, is where to ask for a root this server
        // is not in.
        let root_via: Vec<OwnedServerName> =
            root.server_name().map(ToOwned::to_owned).into_iter().collect();

        let mut rooms = Vec::new();
        let mut next_batch = None;
        let mut index = 0usize;
        let mut seen = HashSet::new();
        let mut stack = vec![(root.to_owned(), 0u64, root_via)];
        while let Some((room_id, depth, via)) = stack.pop() {
            if !seen.insert(room_id.clone()) {
                continue;
            }
            let Some((summary, children)) =
                self.hierarchy_room(&mut walk, user_id, &room_id, &via).await?
            else {
                if room_id == root {
                    return Err(forbidden());
                }
                continue;
            };
            if index >= skip {
                if rooms.len() == limit {
                    next_batch = Some(hierarchy_token(index, max_depth, query.suggested_only));
                    break;
                }
                let children_state = children.iter().map(|child| child.stripped.clone()).collect();
                rooms.push(HierarchyRoom { summary, children_state });
            }
            index += 1;
            if depth < max_depth {
                // Pushed in reverse, so the first child is walked next.
                stack.extend(
                    children.into_iter().rev().map(|child| (child.room_id, depth + 1, child.via)),
                );
            }
        }
        Ok(HierarchyPage { rooms, next_batch })
    }

    /// The valid `m.space.child` events of a space (a room ID as state key and a non-empty
    /// `via`), optionally only the suggested ones, in the spec's order.
    pub(crate) async fn space_children(
        &self,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<Vec<Child>> {
        let state = self.current_state(room_id).await?;
        let ids: Vec<_> = state
            .iter()
            .filter(|((kind, _), _)| *kind == StateEventType::SpaceChild)
            .map(|(_, event_id)| event_id.clone())
            .collect();
        let mut children = Vec::new();
        for event in self.load_events(&ids).await? {
            let pdu = &event.pdu;
            let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
            let stripped = json!({
                "type": pdu.kind.to_string(),
                "state_key": pdu.state_key,
                "content": content,
                "sender": pdu.sender,
                "origin_server_ts": millis_from_ts(pdu.origin_server_ts),
            });
            children.extend(child_from_stripped(&stripped, suggested_only));
        }
        sort_children(&mut children);
        Ok(children)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(room: &str, order: Option<&str>, ts: i64) -> Child {
        Child {
            room_id: OwnedRoomId::try_from(room).unwrap(),
            order: order.map(str::to_owned),
            ts,
            via: Vec::new(),
            stripped: serde_json::value::to_raw_value(&json!({})).unwrap(),
        }
    }

    #[test]
    fn children_order_by_order_then_time_then_id() {
        let mut children = [
            child("!d:x", None, 1),
            child("!c:x", None, 1),
            child("!b:x", Some("b"), 9),
            child("!a:x", Some("a"), 9),
            child("!e:x", None, 0),
        ];
        children.sort_by(child_order);
        let ids: Vec<&str> = children.iter().map(|child| child.room_id.as_str()).collect();
        assert_eq!(ids, ["!a:x", "!b:x", "!e:x", "!c:x", "!d:x"]);
        assert!(valid_order("~ a") && !valid_order("\u{e9}") && !valid_order(&"a".repeat(51)));
    }

    #[test]
    fn hierarchy_tokens_keep_their_parameters() {
        let token = hierarchy_token(7, 3, true);
        assert_eq!(parse_hierarchy_token(&token, 3, true).unwrap(), 7);
        assert!(parse_hierarchy_token(&token, 4, true).is_err());
        assert!(parse_hierarchy_token(&token, 3, false).is_err());
        assert!(parse_hierarchy_token("nonsense", 3, true).is_err());
        assert!(parse_hierarchy_token("h1_3_1_9", 3, true).is_err());
    }
}
