//! Reading rooms: single events, `/context`, `/messages` (backfilling from other servers at
//! the start of what is held), members and state, and `/timestamp_to_event`, each through the
//! history visibility rules.

use std::{collections::HashSet, sync::Arc};

use rhizome_core::{Error, Result};
use rhizome_storage::{Direction, StateGroupId, StreamPos};
use ruma::{
    EventId, OwnedEventId, OwnedUserId, RoomId,
    api::client::filter::{LazyLoadOptions, RoomEventFilter},
    events::{StateEventType, room::history_visibility::HistoryVisibility},
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Requester, Services,
    rooms::{cache::LoadedEvent, format::Format},
    sync::filter::room_event_passes,
};

/// A page of `/messages`.
#[derive(Debug)]
pub struct MessagesPage {
    /// The events.
    pub chunk: Vec<Box<RawJsonValue>>,
    /// The token the page starts at.
    pub start: String,
    /// The token to continue from, unless the history is exhausted.
    pub end: Option<String>,
    /// Member events of the senders (lazy loading).
    pub state: Vec<Box<RawJsonValue>>,
}

/// The answer to `/context`.
#[derive(Debug)]
pub struct ContextPage {
    /// The event asked for.
    pub event: Box<RawJsonValue>,
    /// Events before it, newest first.
    pub events_before: Vec<Box<RawJsonValue>>,
    /// Events after it, oldest first.
    pub events_after: Vec<Box<RawJsonValue>>,
    /// The state at the last event returned.
    pub state: Vec<Box<RawJsonValue>>,
    /// Token for paginating backwards.
    pub start: String,
    /// Token for paginating forwards.
    pub end: String,
}

/// A token naming the point just after the event at stream position `pos`.
pub fn pagination_token(pos: StreamPos) -> String {
    format!("t{pos}")
}

/// Reads a pagination token: `t<pos>` from `/messages`, or a `/sync` `next_batch`.
pub fn parse_pagination_token(token: &str) -> Result<StreamPos> {
    let digits = token
        .strip_prefix('t')
        .or_else(|| token.strip_prefix('s').map(|rest| rest.split('_').next().unwrap_or_default()))
        .ok_or_else(|| Error::invalid_param("Invalid pagination token"))?;
    digits.parse().map_err(|_| Error::invalid_param("Invalid pagination token"))
}

fn format_for(requester: &Requester) -> Format<'_> {
    Format { viewer: Some(requester), with_room_id: true, bundle_relations: true }
}

impl Services {
    /// The event, if it exists in the room and the requester may see it; `M_NOT_FOUND` otherwise.
    pub async fn visible_event(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Arc<LoadedEvent>> {
        let event = self
            .load_event(event_id)
            .await?
            .filter(|event| event.pdu.room_id == room_id)
            .ok_or_else(|| Error::not_found("Event not found"))?;
        if self.can_see_event(&requester.user_id, &event).await? {
            Ok(event)
        } else {
            Err(Error::not_found("Event not found"))
        }
    }

    /// `M_FORBIDDEN` unless the requester is or was in the room (and has not forgotten it), or
    /// it is world-readable.
    pub async fn ensure_can_read_room(
        &self,
        requester: &Requester,
        room_id: &RoomId,
    ) -> Result<()> {
        let user_id = &requester.user_id;
        let member = self.store.get_membership(room_id, user_id).await?.is_some()
            && !self.store.is_room_forgotten(user_id, room_id).await?;
        if member || self.is_world_readable(room_id).await? {
            return Ok(());
        }
        Err(Error::forbidden("You are not in this room"))
    }

    /// Whether a known room's history is world-readable now (anyone may preview it).
    async fn is_world_readable(&self, room_id: &RoomId) -> Result<bool> {
        if !self.room_exists(room_id).await? {
            return Ok(false);
        }
        let visibility = self
            .current_state_event(room_id, &StateEventType::RoomHistoryVisibility, "")
            .await?
            .and_then(|event| event.pdu.content_str("history_visibility"));
        Ok(visibility.as_deref() == Some(HistoryVisibility::WorldReadable.as_str()))
    }

    /// The state group a user may read the room's state at: the current one if joined (or the
    /// room is world-readable), the one at their leave otherwise.
    pub async fn readable_state_group(
        &self,
        requester: &Requester,
        room_id: &RoomId,
    ) -> Result<StateGroupId> {
        Ok(self.readable_state(requester, room_id).await?.0)
    }

    /// The state group a user may read the room's state at, and the last stream position they
    /// may read state at: their leave (or ban) if they left, the room's present otherwise.
    async fn readable_state(
        &self,
        requester: &Requester,
        room_id: &RoomId,
    ) -> Result<(StateGroupId, StreamPos)> {
        let membership = match self.store.get_membership(room_id, &requester.user_id).await? {
            // A forgotten room reads as one never joined.
            Some(_) if self.store.is_room_forgotten(&requester.user_id, room_id).await? => None,
            membership => membership,
        };
        match membership {
            Some(member) if member.membership == "join" => {
                Ok((self.current_state_group(room_id).await?, StreamPos::MAX))
            }
            Some(member) if member.membership == "leave" || member.membership == "ban" => {
                let event = self
                    .load_event(&member.event_id)
                    .await?
                    .ok_or_else(|| Error::bug("membership event missing"))?;
                Ok((event.record.state_after, member.stream_pos))
            }
            _ => {
                self.ensure_can_read_room(requester, room_id).await?;
                let visibility = self
                    .current_state_event(room_id, &StateEventType::RoomHistoryVisibility, "")
                    .await?
                    .and_then(|event| event.pdu.content_str("history_visibility"));
                if visibility.as_deref() == Some("world_readable") {
                    Ok((self.current_state_group(room_id).await?, StreamPos::MAX))
                } else {
                    Err(Error::forbidden("You are not in this room"))
                }
            }
        }
    }

    /// One event, formatted, if visible.
    pub async fn event_for_client(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Box<RawJsonValue>> {
        let event = self.visible_event(requester, room_id, event_id).await?;
        self.format_event(&event, format_for(requester)).await
    }

    /// Events of the room in one direction from `from` (exclusive), passing the filter and the
    /// visibility rules, at most `limit`; also whether history may continue.
    #[allow(clippy::too_many_arguments)] // One pagination query, each part distinct.
    async fn page_events(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        mut from: StreamPos,
        to: Option<StreamPos>,
        direction: Direction,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<(Vec<Arc<LoadedEvent>>, bool, StreamPos)> {
        let mut found = Vec::new();
        let ignored = self.ignored_users(&requester.user_id).await?;
        let batch = i64::try_from(limit.max(1) * 2).unwrap_or(200);
        for _ in 0..8 {
            let dropped = self.events_dropped();
            let records = self.store.room_events(room_id, from, to, direction, batch).await?;
            let exhausted = records.len() < usize::try_from(batch).unwrap_or(usize::MAX);
            let Some(last) = records.last() else { return Ok((found, false, from)) };
            let last_pos = last.stream_pos;
            let events = self.loaded_from_records(dropped, records).await?;
            let events: Vec<_> = events
                .into_iter()
                .filter(|event| room_event_passes(filter, &event.pdu))
                .filter(|event| event.pdu.is_state() || !ignored.contains(&event.pdu.sender))
                .collect();
            for event in self.filter_visible(&requester.user_id, events).await? {
                if found.len() == limit {
                    let pos = found
                        .last()
                        .map(|event: &Arc<LoadedEvent>| event.record.stream_pos)
                        .unwrap_or(from);
                    return Ok((found, true, pos));
                }
                found.push(event);
            }
            from = last_pos;
            if exhausted {
                return Ok((found, false, from));
            }
        }
        let pos = found.last().map(|event| event.record.stream_pos).unwrap_or(from);
        Ok((found, true, pos))
    }

    /// Member events of the senders of `events`, at each event (for lazy loading).
    pub(crate) async fn lazy_members(
        &self,
        events: &[Arc<LoadedEvent>],
        also: Option<&ruma::UserId>,
    ) -> Result<Vec<Arc<LoadedEvent>>> {
        let mut seen: HashSet<OwnedUserId> = HashSet::new();
        let mut members = Vec::new();
        for event in events {
            if seen.insert(event.pdu.sender.clone())
                && let Some(member) = self
                    .state_event_in(
                        event.record.state_before,
                        &StateEventType::RoomMember,
                        event.pdu.sender.as_str(),
                    )
                    .await?
            {
                members.push(member);
            }
        }
        if let (Some(user), Some(last)) = (also, events.last())
            && seen.insert(user.to_owned())
            && let Some(member) = self
                .state_event_in(last.record.state_after, &StateEventType::RoomMember, user.as_str())
                .await?
        {
            members.push(member);
        }
        Ok(members)
    }

    /// `/messages`.
    #[allow(clippy::too_many_arguments)] // Mirrors the endpoint's parameters.
    pub async fn messages(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        from: Option<&str>,
        to: Option<&str>,
        direction: Direction,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<MessagesPage> {
        self.ensure_can_read_room(requester, room_id).await?;
        // An empty token (and the old `END`) is no token, as clients long sent them.
        let from = from.filter(|token| !token.is_empty() && *token != "END");
        let to = to.filter(|token| !token.is_empty());
        let from_pos = match from {
            Some(token) => parse_pagination_token(token)?,
            None => match direction {
                Direction::Backward => self.store.current_stream_pos(),
                Direction::Forward => 0,
            },
        };
        let to_pos = to.map(parse_pagination_token).transpose()?;
        let limit = limit.clamp(1, 1000);
        // Token t<P> sits after event P: backwards takes events <= P, forwards events > P.
        let (query_from, query_to) = match direction {
            Direction::Backward => (from_pos.saturating_add(1), to_pos),
            Direction::Forward => (from_pos, to_pos),
        };
        let (mut events, mut more, mut last_pos) = self
            .page_events(requester, room_id, query_from, query_to, direction, limit, filter)
            .await?;
        // Back at the start of what this server holds (even with a full page: without `end`
        // the client would stop there): one round of history from the room's other servers,
        // if there is more to have, then the page again.
        if direction == Direction::Backward
            && !more
            && query_to.is_none()
            && self.backfill_if_needed(room_id).await
        {
            (events, more, last_pos) = self
                .page_events(requester, room_id, query_from, query_to, direction, limit, filter)
                .await?;
        }
        // Backwards, no `end` means the start of the room. Forwards there is no end to the
        // room: a page that moved on gives its `end`, to continue from when newer events come.
        let end = match direction {
            Direction::Backward => more.then(|| pagination_token(last_pos - 1)),
            Direction::Forward => {
                (more || last_pos > query_from).then(|| pagination_token(last_pos))
            }
        };
        let state = if filter.lazy_load_options.is_disabled() {
            Vec::new()
        } else {
            let members = self.lazy_members(&events, None).await?;
            self.format_events(&members, format_for(requester)).await?
        };
        Ok(MessagesPage {
            chunk: self.format_events(&events, format_for(requester)).await?,
            start: from.map(str::to_owned).unwrap_or_else(|| pagination_token(from_pos)),
            end,
            state,
        })
    }

    /// `/context/{eventId}`.
    pub async fn context(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<ContextPage> {
        // Outside the room: forbidden; in it, an event they may not see: not found.
        self.ensure_can_read_room(requester, room_id).await?;
        let event = self.visible_event(requester, room_id, event_id).await?;
        let limit = limit.min(100);
        let before_count = limit / 2;
        let after_count = limit - before_count;
        let pos = event.record.stream_pos;
        let (before, _, before_pos) = self
            .page_events(requester, room_id, pos, None, Direction::Backward, before_count, filter)
            .await?;
        let (after, _, after_pos) = self
            .page_events(requester, room_id, pos, None, Direction::Forward, after_count, filter)
            .await?;
        let last = after.last().cloned().unwrap_or_else(|| event.clone());
        let state_map = self.state_map(last.record.state_after).await?;
        let state_events = match &filter.lazy_load_options {
            LazyLoadOptions::Disabled => self.state_events(&state_map).await?,
            LazyLoadOptions::Enabled { .. } => {
                let mut involved: Vec<Arc<LoadedEvent>> = before.clone();
                involved.push(event.clone());
                involved.extend(after.iter().cloned());
                let senders: HashSet<String> =
                    involved.iter().map(|event| event.pdu.sender.to_string()).collect();
                let ids: Vec<OwnedEventId> = state_map
                    .iter()
                    .filter(|((kind, key), _)| {
                        *kind != StateEventType::RoomMember || senders.contains(key)
                    })
                    .map(|(_, id)| id.clone())
                    .collect();
                self.load_events(&ids).await?
            }
        };
        let format = format_for(requester);
        Ok(ContextPage {
            event: self.format_event(&event, format).await?,
            events_before: self.format_events(&before, format).await?,
            events_after: self.format_events(&after, format).await?,
            state: self.format_events(&state_events, format).await?,
            start: pagination_token(
                before.last().map_or(pos, |event| event.record.stream_pos).min(before_pos) - 1,
            ),
            end: pagination_token(
                after.last().map_or(pos, |event| event.record.stream_pos).max(after_pos.min(pos)),
            ),
        })
    }

    /// `/members`: member events at the current state (or at `at`), filtered by membership.
    pub async fn members(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        at: Option<&str>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let (readable, readable_until) = self.readable_state(requester, room_id).await?;
        let group = match at {
            // The state at `at`, but never later than the requester may read: someone who left
            // sees the members as they were when they left, whatever token they pass.
            Some(token) => {
                let pos = parse_pagination_token(token)?.min(readable_until);
                match self.store.last_event_at(room_id, pos).await? {
                    Some(event) => event.state_after,
                    None => readable,
                }
            }
            None => readable,
        };
        let state = self.state_map(group).await?;
        let ids: Vec<OwnedEventId> = state
            .iter()
            .filter(|((kind, _), _)| *kind == StateEventType::RoomMember)
            .map(|(_, id)| id.clone())
            .collect();
        let events = self.load_events(&ids).await?;
        let events: Vec<Arc<LoadedEvent>> = events
            .into_iter()
            .filter(|event| {
                let value = event.pdu.content_str("membership").unwrap_or_default();
                membership.is_none_or(|wanted| wanted == value)
                    && not_membership.is_none_or(|unwanted| unwanted != value)
            })
            .collect();
        self.format_events(&events, format_for(requester)).await
    }

    /// `/joined_members`: user ID, display name and avatar of each joined member.
    pub async fn joined_members(
        &self,
        requester: &Requester,
        room_id: &RoomId,
    ) -> Result<Vec<(OwnedUserId, Option<String>, Option<String>)>> {
        // Members, and anyone previewing a world-readable room (whose member list `/state`
        // shows them anyway), as clients' room previews ask.
        if !self.is_joined(room_id, &requester.user_id).await?
            && !self.is_world_readable(room_id).await?
        {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        Ok(self
            .room_memberships_cached(room_id)
            .await?
            .iter()
            .filter(|member| member.membership == "join")
            .map(|member| {
                (member.user_id.clone(), member.displayname.clone(), member.avatar_url.clone())
            })
            .collect())
    }

    /// `/state`: the whole state the requester may read.
    pub async fn room_state_for_client(
        &self,
        requester: &Requester,
        room_id: &RoomId,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let group = self.readable_state_group(requester, room_id).await?;
        let state = self.state_map(group).await?;
        let events = self.state_events(&state).await?;
        self.format_events(&events, format_for(requester)).await
    }

    /// `/state/{type}/{key}`: one state event the requester may read.
    pub async fn room_state_event_for_client(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Arc<LoadedEvent>> {
        let group = self.readable_state_group(requester, room_id).await?;
        self.state_event_in(group, kind, state_key)
            .await?
            .ok_or_else(|| Error::not_found("No such state"))
    }

    /// `/timestamp_to_event`: the visible event closest to `ts` in the direction.
    pub async fn timestamp_to_event(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        ts: i64,
        direction: Direction,
    ) -> Result<Arc<LoadedEvent>> {
        self.ensure_can_read_room(requester, room_id).await?;
        let mut ts = ts;
        for _ in 0..50 {
            let dropped = self.events_dropped();
            let Some(record) = self.store.event_at_timestamp(room_id, ts, direction).await? else {
                break;
            };
            let Some(event) =
                self.loaded_from_records(dropped, vec![record]).await?.into_iter().next()
            else {
                break;
            };
            if self.can_see_event(&requester.user_id, &event).await? {
                return Ok(event);
            }
            let event_ts = rhizome_core::clock::millis_from_ts(event.pdu.origin_server_ts);
            ts = match direction {
                Direction::Forward => event_ts + 1,
                Direction::Backward => event_ts - 1,
            };
        }
        Err(Error::not_found("No event found near that time"))
    }
}
