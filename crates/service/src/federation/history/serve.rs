//! Serving a room's history to other servers: `/event`, `/state`, `/state_ids`,
//! `/event_auth`, `/backfill`, `/get_missing_events` and `/timestamp_to_event`. Rejected events
//! are never served; outliers never stand for history (they have no place in the room's
//! timeline here); soft-failed events are served where the spec says (by ID, and when an event
//! asked about cites them). Each answer is bounded.

use std::{
    collections::{BinaryHeap, HashSet, VecDeque},
    sync::Arc,
};

use rhizome_core::{Error, Result};
use rhizome_storage::Direction;
use ruma::{EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, ServerName};
use serde_json::value::RawValue as RawJsonValue;

use super::access::ServerAccess;
use crate::{Services, rooms::cache::LoadedEvent};

/// The most events one `/backfill` answer holds.
pub const MAX_BACKFILL_EVENTS: usize = 100;
/// The most events one `/get_missing_events` answer holds.
pub const MAX_MISSING_EVENTS: usize = 20;
/// How many events past the limit a walk may look at (invisible or foreign ones are skipped).
const WALK_SLACK: usize = 4;

/// The state before an event and the auth chain of that state.
#[derive(Debug)]
pub struct StateAnswer<T> {
    /// The state before the event.
    pub state: Vec<T>,
    /// The auth chain of that state, the state itself left out.
    pub auth_chain: Vec<T>,
}

impl Services {
    /// `GET /event/{eventId}`: one event, to a server that may see it.
    pub async fn serve_event(
        &self,
        origin: &ServerName,
        event_id: &EventId,
    ) -> Result<Box<RawJsonValue>> {
        let event = self.servable_event(event_id, None).await?;
        let mut access = self.server_access(&event.pdu.room_id, origin).await?;
        if !self.server_may_see(&mut access, &event).await? {
            tracing::debug!("refused an event to a server that may not see it");
            return Err(Error::forbidden("Your server may not see that event"));
        }
        Ok(event.pdu.json().to_owned())
    }

    /// `GET /state_ids/{roomId}?event_id=`: the IDs of the state before a timeline event and
    /// of its auth chain.
    pub async fn serve_state_ids(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<StateAnswer<OwnedEventId>> {
        let event = self.state_request_event(origin, room_id, event_id).await?;
        let state = self.state_map(event.record.state_before).await?;
        let state_ids: Vec<OwnedEventId> = state.values().cloned().collect();
        let in_state: HashSet<&OwnedEventId> = state_ids.iter().collect();
        let mut auth_chain: Vec<OwnedEventId> = self
            .store
            .auth_chain(&state_ids)
            .await?
            .into_iter()
            .filter(|id| !in_state.contains(id))
            .collect();
        auth_chain.sort_unstable();
        Ok(StateAnswer { state: state_ids, auth_chain })
    }

    /// `GET /state/{roomId}?event_id=`: the state before a timeline event and its auth chain,
    /// as PDUs.
    pub async fn serve_state(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<StateAnswer<Box<RawJsonValue>>> {
        let ids = self.serve_state_ids(origin, room_id, event_id).await?;
        Ok(StateAnswer {
            state: self.accepted_json(&ids.state).await?,
            auth_chain: self.accepted_json(&ids.auth_chain).await?,
        })
    }

    /// `GET /event_auth/{roomId}/{eventId}`: the auth chain of an event, itself left out.
    pub async fn serve_event_auth(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let event = self.servable_event(event_id, Some(room_id)).await?;
        let mut access = self.server_access(room_id, origin).await?;
        if !access.joined_now && !self.server_may_see(&mut access, &event).await? {
            tracing::debug!("refused an auth chain to a server that may not see the event");
            return Err(Error::forbidden("Your server may not see that event"));
        }
        let chain: Vec<OwnedEventId> = self
            .store
            .auth_chain(std::slice::from_ref(&event.pdu.event_id))
            .await?
            .into_iter()
            .filter(|id| *id != event.pdu.event_id)
            .collect();
        self.accepted_json(&chain).await
    }

    /// `GET /backfill/{roomId}?v=&limit=`: the events of `v` and those before them, most
    /// recent first, at most `limit` (and [`MAX_BACKFILL_EVENTS`]); events the server may not
    /// see are given redacted.
    pub async fn serve_backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let mut access = self.history_access(room_id, origin).await?;
        let limit = limit.min(MAX_BACKFILL_EVENTS);
        // Most recent first: a heap by depth, fed with each event's predecessors.
        let mut queue: BinaryHeap<(u64, OwnedEventId)> = BinaryHeap::new();
        for event in self.load_events(from).await? {
            queue.push((event.pdu.depth, event.pdu.event_id.clone()));
        }
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut found = Vec::new();
        let mut looked_at = 0;
        while let Some((_, event_id)) = queue.pop() {
            if found.len() >= limit || looked_at >= limit * WALK_SLACK {
                break;
            }
            if !seen.insert(event_id.clone()) {
                continue;
            }
            looked_at += 1;
            let Some(event) = self.history_event(&event_id, room_id).await? else { continue };
            for prev in self.load_events(&event.pdu.prev_events).await? {
                if !seen.contains(&prev.pdu.event_id) {
                    queue.push((prev.pdu.depth, prev.pdu.event_id.clone()));
                }
            }
            found.push(self.event_for_server(&mut access, &event).await?);
        }
        Ok(found)
    }

    /// `POST /get_missing_events/{roomId}`: a breadth-first walk of the predecessors of
    /// `latest`, stopping at `earliest` and below `min_depth`, at most `limit` (and
    /// [`MAX_MISSING_EVENTS`]), oldest first; events the server may not see are redacted.
    pub async fn serve_missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
        min_depth: u64,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let mut access = self.history_access(room_id, origin).await?;
        let limit = limit.min(MAX_MISSING_EVENTS);
        let mut seen: HashSet<OwnedEventId> = earliest.iter().chain(latest).cloned().collect();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for event in self.load_events(latest).await? {
            if event.pdu.room_id == room_id {
                queue.extend(event.pdu.prev_events.iter().cloned());
            }
        }
        let mut found: Vec<Arc<LoadedEvent>> = Vec::new();
        let mut looked_at = 0;
        while let Some(event_id) = queue.pop_front() {
            if found.len() >= limit || looked_at >= limit * WALK_SLACK {
                break;
            }
            if !seen.insert(event_id.clone()) {
                continue;
            }
            looked_at += 1;
            let Some(event) = self.history_event(&event_id, room_id).await? else { continue };
            if event.pdu.depth < min_depth {
                continue;
            }
            queue.extend(event.pdu.prev_events.iter().cloned());
            found.push(event);
        }
        found.sort_by_key(|event| (event.pdu.depth, event.pdu.origin_server_ts));
        let mut answer = Vec::with_capacity(found.len());
        for event in &found {
            answer.push(self.event_for_server(&mut access, event).await?);
        }
        Ok(answer)
    }

    /// `GET /timestamp_to_event/{roomId}`: the event closest to `ts` in the direction that
    /// the server may see.
    pub async fn serve_timestamp_to_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        ts: i64,
        direction: Direction,
    ) -> Result<(OwnedEventId, MilliSecondsSinceUnixEpoch)> {
        let mut access = self.history_access(room_id, origin).await?;
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
            if !event.record.soft_failed
                && !event.record.rejected
                && self.server_may_see(&mut access, &event).await?
            {
                return Ok((event.pdu.event_id.clone(), event.pdu.origin_server_ts));
            }
            let event_ts = rhizome_core::clock::millis_from_ts(event.pdu.origin_server_ts);
            ts = match direction {
                Direction::Forward => event_ts + 1,
                Direction::Backward => event_ts - 1,
            };
        }
        Err(Error::not_found("No event found near that time"))
    }

    /// An event that may be served at all: known, not rejected, and (when given) of the room.
    async fn servable_event(
        &self,
        event_id: &EventId,
        room_id: Option<&RoomId>,
    ) -> Result<Arc<LoadedEvent>> {
        self.load_event(event_id)
            .await?
            .filter(|event| !event.record.rejected && !event.pdu.rejected)
            .filter(|event| room_id.is_none_or(|room_id| event.pdu.room_id == room_id))
            .ok_or_else(|| Error::not_found("Event not found"))
    }

    /// The timeline event the state is asked at, once the server's access is checked: a
    /// server in the room now may have the state at any point (it needs it to check the
    /// room's graph, as the state it was given on joining); others only where they may see
    /// the event.
    async fn state_request_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Arc<LoadedEvent>> {
        let event = self.servable_event(event_id, Some(room_id)).await?;
        let mut access = self.server_access(room_id, origin).await?;
        if event.record.outlier {
            // No state is held at an event known outside the timeline.
            return Err(Error::not_found("No state is known at that event"));
        }
        if !access.joined_now && !self.server_may_see(&mut access, &event).await? {
            tracing::debug!("refused the state at an event to a server that may not see it");
            return Err(Error::forbidden("Your server may not see that event"));
        }
        Ok(event)
    }

    /// The server's access for walking the room's history: refused to a server none of whose
    /// users was ever in the room.
    async fn history_access<'a>(
        &self,
        room_id: &RoomId,
        origin: &'a ServerName,
    ) -> Result<ServerAccess<'a>> {
        let access = self.server_access(room_id, origin).await?;
        if !access.may_walk_history() {
            tracing::debug!("refused the history of a room to a server never in it");
            return Err(Error::forbidden("Your server has never been in that room"));
        }
        Ok(access)
    }

    /// A timeline event of the room that may stand in its history: not rejected, not an
    /// outlier.
    async fn history_event(
        &self,
        event_id: &EventId,
        room_id: &RoomId,
    ) -> Result<Option<Arc<LoadedEvent>>> {
        Ok(self.load_event(event_id).await?.filter(|event| {
            event.pdu.room_id == room_id
                && !event.record.outlier
                && !event.record.rejected
                && !event.pdu.rejected
        }))
    }

    /// The JSON of the given events that were not rejected.
    async fn accepted_json(&self, event_ids: &[OwnedEventId]) -> Result<Vec<Box<RawJsonValue>>> {
        Ok(self
            .load_events(event_ids)
            .await?
            .iter()
            .filter(|event| !event.record.rejected && !event.pdu.rejected)
            .map(|event| event.pdu.json().to_owned())
            .collect())
    }
}
