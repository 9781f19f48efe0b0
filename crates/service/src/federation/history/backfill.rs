//! Backfill: when a local user pages back past the start of what this server holds of a room
//! (it joined through another server, or a gap was never filled), one round asks a server in
//! the room for the events before the earliest ones held (`/backfill`), checks each like any
//! PDU (form, signatures and content hash, auth against its auth events, the state before it
//! from its predecessors or `/state_ids`, auth against that state) and keeps what passes as
//! history: newest first, each below every earlier stream position, outside `/sync`, the
//! room's extremities and current state untouched.
//!
//! A round is bounded (one per `/messages` call, [`BACKFILL_LIMIT`] events, a few state
//! fetches, [`BACKFILL_TIMEOUT`] for the requests and checks), and remembered per room: where
//! a round found nothing more the room is not asked again from the same point, and a server
//! that failed (garbage, errors, no answer in time) is not asked again for
//! [`BACKFILL_RETRY_AFTER`]. The user gets what is held either way.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rhizome_core::{Error, Result};
use rhizome_room::{Pdu, StateMap, received};
use rhizome_storage::{Direction, OutlierEvent, StateGroupId, StateSpec};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName, UInt,
    api::federation::backfill::get_backfill,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Services,
    federation::client::RequestLimits,
    rooms::{
        cache::LoadedEvent,
        send::{Provenance, StateBeforeParts, diff_states},
    },
};

/// The most events one round asks for.
const BACKFILL_LIMIT: usize = 100;
/// How long the requests and checks of one round may take.
const BACKFILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a room whose last round failed is left alone.
const BACKFILL_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The most servers one round asks.
const BACKFILL_SERVERS: usize = 3;
/// The most `/state_ids` fetches one round makes (for events with a gap before them).
const MAX_STATE_FETCHES: usize = 3;
/// The most `/event_auth` fetches one round makes (for events with unknown auth events).
const MAX_AUTH_FETCHES: usize = 5;
/// How many of the earliest events held are looked at for a gap before them.
const FRONTIER_SCAN: i64 = 20;
/// The most events named as the point to backfill from.
const FRONTIER_SIZE: usize = 5;
/// The largest `/backfill` answer read (100 events of at most 64 KiB, and room to spare).
const MAX_BACKFILL_BYTES: usize = 16 * 1024 * 1024;

/// What this server remembers of backfilling, in memory.
#[derive(Default)]
pub(crate) struct BackfillState {
    /// Per room: where the last round started and what came of it.
    marks: Mutex<HashMap<OwnedRoomId, Mark>>,
    /// One round at a time per room.
    locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    /// Rounds that asked another server.
    rounds: AtomicU64,
}

/// The outcome of the last round of a room.
struct Mark {
    /// The events it backfilled from.
    frontier: Vec<OwnedEventId>,
    /// `None`: nothing more came from there, so it is not asked again; otherwise the round
    /// failed and is not retried before this instant.
    retry_at: Option<Instant>,
}

/// An event checked and ready to be kept as history.
struct Checked {
    pdu: Pdu,
    state_before: Arc<StateMap>,
}

/// What a server answered, checked.
struct Answer {
    /// The events fit to join the room's history, oldest first.
    events: Vec<Checked>,
    /// Events left unjudged for want of their state or auth events (a later round may have
    /// them).
    unjudged: usize,
}

/// What a round of checks may still spend on fetches.
struct Budget {
    state_fetches: usize,
    auth_fetches: usize,
}

impl Services {
    /// Backfills the room once if the start of what this server holds of it has a gap before
    /// it and that point was not already tried. Returns whether history was added. Never
    /// fails: a round that fails is logged and remembered.
    pub async fn backfill_if_needed(&self, room_id: &RoomId) -> bool {
        if self.federation_client().is_err() {
            return false;
        }
        match self.backfill_once(room_id).await {
            Ok(added) => added > 0,
            Err(error) => {
                tracing::debug!(%error, "backfill could not run");
                false
            }
        }
    }

    /// How many backfill rounds asked another server since start-up (for tests and metrics).
    pub fn backfill_rounds(&self) -> u64 {
        self.federation.backfill.rounds.load(Ordering::Relaxed)
    }

    async fn backfill_once(&self, room_id: &RoomId) -> Result<usize> {
        let lock = {
            let mut locks = self.federation.backfill.locks.lock();
            locks.entry(room_id.to_owned()).or_default().clone()
        };
        let _round = lock.lock().await;
        let frontier = self.backfill_frontier(room_id).await?;
        if frontier.is_empty() {
            return Ok(0);
        }
        let frontier_ids: Vec<OwnedEventId> =
            frontier.iter().map(|event| event.pdu.event_id.clone()).collect();
        if let Some(mark) = self.federation.backfill.marks.lock().get(room_id)
            && mark.frontier == frontier_ids
            && mark.retry_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(0);
        }
        self.federation.backfill.rounds.fetch_add(1, Ordering::Relaxed);
        let version = self.room_version(room_id).await?;
        let started = Instant::now();
        let fetched = tokio::time::timeout(
            BACKFILL_TIMEOUT,
            self.fetch_history(room_id, &version, &frontier),
        )
        .await
        .unwrap_or_else(|_| Err(Error::from(crate::federation::FederationError::Timeout)));
        let mut unjudged = 0;
        let outcome = match fetched {
            Ok(answer) => {
                unjudged = answer.unjudged;
                self.keep_history(room_id, &version, &frontier, answer).await
            }
            Err(error) => Err(error),
        };
        let retry_at = match &outcome {
            // Nothing more came from there: not asked again (unless some of it could not be
            // judged yet).
            Ok(0) => (unjudged > 0).then(|| Instant::now() + BACKFILL_RETRY_AFTER),
            Ok(_) => {
                // The frontier moved: nothing to remember.
                self.federation.backfill.marks.lock().remove(room_id);
                tracing::debug!(elapsed = ?started.elapsed(), "backfilled history");
                return outcome;
            }
            Err(_) => Some(Instant::now() + BACKFILL_RETRY_AFTER),
        };
        self.federation
            .backfill
            .marks
            .lock()
            .insert(room_id.to_owned(), Mark { frontier: frontier_ids, retry_at });
        outcome
    }

    /// The earliest events held of the room that have predecessors not held: where history
    /// continues elsewhere.
    async fn backfill_frontier(&self, room_id: &RoomId) -> Result<Vec<Arc<LoadedEvent>>> {
        let dropped = self.events_dropped();
        let records = self
            .store
            .room_events(room_id, i64::MIN, None, Direction::Forward, FRONTIER_SCAN)
            .await?;
        let mut frontier = Vec::new();
        for event in self.loaded_from_records(dropped, records).await? {
            let prevs = self.load_events(&event.pdu.prev_events).await?;
            let held = prevs.iter().filter(|prev| !prev.record.outlier && !prev.record.rejected);
            if held.count() < event.pdu.prev_events.len() {
                frontier.push(event);
                if frontier.len() == FRONTIER_SIZE {
                    break;
                }
            }
        }
        Ok(frontier)
    }

    /// The servers to ask: those of the senders of the frontier, the room's own (before room
    /// version 12), then the others in the room; never one the room's ACL denies.
    async fn backfill_servers(
        &self,
        room_id: &RoomId,
        frontier: &[Arc<LoadedEvent>],
    ) -> Result<Vec<OwnedServerName>> {
        let mut candidates: Vec<OwnedServerName> =
            frontier.iter().map(|event| event.pdu.sender.server_name().to_owned()).collect();
        candidates.extend(room_id.server_name().map(ToOwned::to_owned));
        candidates.extend(self.room_servers(room_id).await?);
        let mut servers = Vec::new();
        for server in candidates {
            if server == self.server_name()
                || servers.contains(&server)
                || !self.config.federation.server_allowed(server.as_str())
                || self.check_server_acl(room_id, &server).await.is_err()
            {
                continue;
            }
            servers.push(server);
            if servers.len() == BACKFILL_SERVERS {
                break;
            }
        }
        Ok(servers)
    }

    /// Asks the room's servers in turn for the history before `frontier` and checks what
    /// comes back; the first server whose answer holds usable history wins.
    async fn fetch_history(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        frontier: &[Arc<LoadedEvent>],
    ) -> Result<Answer> {
        let client = self.federation_client()?;
        let from: Vec<OwnedEventId> =
            frontier.iter().map(|event| event.pdu.event_id.clone()).collect();
        let limits = RequestLimits::large().with_max_body_bytes(MAX_BACKFILL_BYTES);
        let mut last_error = Error::not_found("No server to ask for the room's history");
        let mut answered_nothing: Option<Answer> = None;
        for server in self.backfill_servers(room_id, frontier).await? {
            let request = get_backfill::v1::Request::new(
                room_id.to_owned(),
                from.clone(),
                UInt::try_from(BACKFILL_LIMIT).unwrap_or_default(),
            );
            match client.send_with_limits(&server, request, limits).await {
                Ok(response) => {
                    let answer =
                        self.check_history(&server, room_id, version, response.pdus).await?;
                    if !answer.events.is_empty() {
                        return Ok(answer);
                    }
                    answered_nothing = Some(answer);
                }
                Err(error) => {
                    tracing::debug!(%error, "a server failed to answer /backfill");
                    last_error = error.into();
                }
            }
        }
        answered_nothing.ok_or(last_error)
    }

    /// Checks a `/backfill` answer, oldest first, storing each event as an outlier (rejected
    /// or not) so later ones can cite it; returns those fit to join the room's history.
    async fn check_history(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdus: Vec<Box<RawJsonValue>>,
    ) -> Result<Answer> {
        let mut pdus = self.verify_history(room_id, version, pdus).await?;
        pdus.sort_by_key(|pdu| (pdu.depth, pdu.origin_server_ts));
        let mut budget =
            Budget { state_fetches: MAX_STATE_FETCHES, auth_fetches: MAX_AUTH_FETCHES };
        // The state after each event of the answer (a rejected one changes nothing).
        let mut states_after: HashMap<OwnedEventId, Arc<StateMap>> = HashMap::new();
        let mut accepted = Vec::new();
        let mut unjudged = 0;
        for pdu in pdus {
            let Some(state_before) = self
                .history_state_before(origin, room_id, version, &pdu, &states_after, &mut budget)
                .await?
            else {
                unjudged += 1;
                continue;
            };
            let Some(verdict) = self
                .judge_history(origin, room_id, version, &pdu, &state_before, &mut budget)
                .await?
            else {
                unjudged += 1;
                continue;
            };
            let stored = self.load_event(&pdu.event_id).await?.is_some();
            if !stored {
                self.store
                    .store_outliers(&[OutlierEvent {
                        event_id: pdu.event_id.clone(),
                        room_id: pdu.room_id.clone(),
                        json: pdu.json().get().to_owned(),
                        rejected: verdict.is_err(),
                        auth_events: pdu.auth_events.clone(),
                    }])
                    .await?;
                self.forget_event(&pdu.event_id);
            }
            match verdict {
                Ok(()) => {
                    let mut state_after = (*state_before).clone();
                    if let Some(slot) = pdu.state_slot() {
                        state_after.insert(slot, pdu.event_id.clone());
                    }
                    states_after.insert(pdu.event_id.clone(), Arc::new(state_after));
                    accepted.push(Checked { pdu, state_before });
                }
                Err(reason) => {
                    tracing::debug!(%reason, "rejected an event of the room's history");
                    states_after.insert(pdu.event_id.clone(), state_before);
                }
            }
        }
        Ok(Answer { events: accepted, unjudged })
    }

    /// The events of an answer that are well formed, of the room, not yet in its timeline,
    /// and signed (redacted where the content hash does not match); each once, at most
    /// [`BACKFILL_LIMIT`].
    async fn verify_history(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdus: Vec<Box<RawJsonValue>>,
    ) -> Result<Vec<Pdu>> {
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut verified = Vec::new();
        for json in pdus.into_iter().take(BACKFILL_LIMIT) {
            let checked = match received::check_format(json.get(), version, Some(room_id)) {
                Ok(checked) => checked,
                Err(error) => {
                    tracing::debug!(%error, "ignored a malformed event of a /backfill answer");
                    continue;
                }
            };
            if !seen.insert(checked.event_id.clone()) {
                continue;
            }
            if let Some(known) = self.load_event(&checked.event_id).await? {
                // Known outside the timeline (the state given at a join): it may join the
                // history now. In the timeline already, or rejected: nothing to do.
                if known.record.outlier && !known.record.rejected {
                    verified.push(known.pdu.clone());
                }
                continue;
            }
            match self.verify_received(checked, version).await {
                Ok(pdu) => verified.push(pdu),
                Err(error) => tracing::debug!(%error, "ignored a /backfill event: bad signature"),
            }
        }
        Ok(verified)
    }

    /// The state before a backfilled event: from its predecessors (held, or earlier in the
    /// answer), resolved where they differ; asked of `origin` when a predecessor is missing
    /// (`None` once the budget is spent or the answer is unusable).
    async fn history_state_before(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdu: &Pdu,
        states_after: &HashMap<OwnedEventId, Arc<StateMap>>,
        budget: &mut Budget,
    ) -> Result<Option<Arc<StateMap>>> {
        let mut maps: Vec<Arc<StateMap>> = Vec::new();
        let mut gap = false;
        for prev in &pdu.prev_events {
            if let Some(state) = states_after.get(prev) {
                maps.push(state.clone());
                continue;
            }
            match self.load_event(prev).await? {
                Some(event) if !event.record.outlier && !event.record.rejected => {
                    maps.push(self.state_map(event.record.state_after).await?);
                }
                _ => {
                    gap = true;
                    break;
                }
            }
        }
        if gap {
            if budget.state_fetches == 0 {
                return Ok(None);
            }
            budget.state_fetches -= 1;
            return match self.fetch_state_at(origin, room_id, version, &pdu.event_id).await {
                Ok(state) => Ok(Some(Arc::new(state))),
                Err(error) => {
                    tracing::debug!(%error, "no state for a backfilled event");
                    Ok(None)
                }
            };
        }
        let mut distinct: Vec<Arc<StateMap>> = Vec::new();
        for map in maps {
            if !distinct.iter().any(|known| **known == *map) {
                distinct.push(map);
            }
        }
        match distinct.as_slice() {
            [] => Ok(Some(Arc::new(StateMap::new()))),
            [one] => Ok(Some(one.clone())),
            _ => {
                let maps: Vec<StateMap> = distinct.iter().map(|map| (**map).clone()).collect();
                Ok(Some(Arc::new(self.resolve_state(room_id, version, &maps).await?)))
            }
        }
    }

    /// The auth rules' verdict on a backfilled event: against its own auth events (fetched
    /// from `origin` when unknown, within the budget) and against the state before it.
    /// `None` when its auth events could not be had.
    async fn judge_history(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdu: &Pdu,
        state_before: &StateMap,
        budget: &mut Budget,
    ) -> Result<Option<std::result::Result<(), String>>> {
        let known = self.load_events(&pdu.auth_events).await?.len();
        if known < pdu.auth_events.len() {
            if budget.auth_fetches == 0 {
                return Ok(None);
            }
            budget.auth_fetches -= 1;
            if let Err(error) = self.fetch_missing_auth_events(origin, room_id, version, pdu).await
            {
                tracing::debug!(%error, "no auth events for a backfilled event");
                return Ok(None);
            }
        }
        if let Err(reason) = self.check_against_auth_events(version, pdu).await? {
            return Ok(Some(Err(reason)));
        }
        Ok(Some(self.check_against_state(version, pdu, state_before).await?))
    }

    /// Keeps checked history, newest first so each event takes a stream position below the
    /// ones after it; the state before each is recorded on the groups of the events after it
    /// where it can be. Returns how many events joined the timeline.
    async fn keep_history(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        frontier: &[Arc<LoadedEvent>],
        answer: Answer,
    ) -> Result<usize> {
        let Answer { events: checked, .. } = answer;
        // The state groups before each event held or kept, and who follows whom.
        let mut groups_before: HashMap<OwnedEventId, (StateGroupId, Arc<StateMap>)> =
            HashMap::new();
        let mut followers: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
        for event in frontier {
            let state = self.state_map(event.record.state_before).await?;
            groups_before.insert(event.pdu.event_id.clone(), (event.record.state_before, state));
        }
        for pdu in frontier.iter().map(|event| &event.pdu).chain(checked.iter().map(|c| &c.pdu)) {
            for prev in &pdu.prev_events {
                followers.entry(prev.clone()).or_default().push(pdu.event_id.clone());
            }
        }
        let _guard = self.lock_room(room_id).await?;
        let extremities = self.store.forward_extremities(room_id).await?;
        let mut kept = 0;
        for Checked { pdu, state_before } in checked.into_iter().rev() {
            if self.known_in_timeline(&pdu.event_id).await? {
                continue;
            }
            let bases = followers
                .get(&pdu.event_id)
                .into_iter()
                .flatten()
                .filter_map(|follower| groups_before.get(follower));
            let spec = state_spec_on(bases, &state_before);
            let event_id = pdu.event_id.clone();
            let prev_events = pdu.prev_events.clone();
            self.persist_prepared(
                room_id,
                version,
                pdu,
                StateBeforeParts { map: state_before.clone(), spec },
                &prev_events,
                extremities.clone(),
                Provenance::Historical,
            )
            .await?;
            self.forget_event(&event_id);
            if let Some(event) = self.load_event(&event_id).await? {
                groups_before.insert(event_id, (event.record.state_before, state_before));
            }
            kept += 1;
        }
        tracing::debug!(kept, "kept backfilled history");
        Ok(kept)
    }
}

/// How to record `state`: an existing group holding exactly it, else a delta on the closest
/// of `bases`, else a full snapshot.
fn state_spec_on<'a>(
    bases: impl Iterator<Item = &'a (StateGroupId, Arc<StateMap>)>,
    state: &StateMap,
) -> StateSpec {
    let mut best: Option<(StateGroupId, Vec<_>)> = None;
    for (group, map) in bases {
        if **map == *state {
            return StateSpec::Existing(*group);
        }
        let changes = diff_states(map, state);
        if best.as_ref().is_none_or(|(_, known)| changes.len() < known.len()) {
            best = Some((*group, changes));
        }
    }
    match best {
        Some((group, changes)) => StateSpec::New { base: Some(group), changes },
        None => StateSpec::New { base: None, changes: diff_states(&StateMap::new(), state) },
    }
}
