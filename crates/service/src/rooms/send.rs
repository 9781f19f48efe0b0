//! Creating and persisting events: the state before an event (resolved where the room graph
//! has forked), authorisation by the auth rules, the state after it, the new forward
//! extremities and current state, all persisted in one store call; then wake-ups.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use rhizome_core::{Error, Result, clock::now_ts};
use rhizome_room::{EventTemplate, Pdu, StateMap, auth, build_pdu, resolve::resolve};
use rhizome_storage::{
    CurrentState, EventRecord, MembershipChange, PersistEvent, RelationRecord, StateGroupId,
    StateSpec, TxnRecord,
};
use ruma::{
    EventId, OwnedEventId, RoomId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{Services, rooms::cache::LoadedEvent};

/// A new event a local user sends.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The event type.
    pub kind: TimelineEventType,
    /// The content.
    pub content: Box<RawJsonValue>,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// For redactions, the event redacted.
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    /// A state event.
    pub fn state(
        kind: impl Into<String>,
        state_key: impl Into<String>,
        content: serde_json::Value,
    ) -> Self {
        Self {
            kind: TimelineEventType::from(kind.into()),
            content: serde_json::value::to_raw_value(&content)
                .expect("invariant: JSON values serialise"),
            state_key: Some(state_key.into()),
            redacts: None,
        }
    }

    /// A message-like event.
    pub fn message(kind: impl Into<String>, content: serde_json::Value) -> Self {
        Self {
            kind: TimelineEventType::from(kind.into()),
            content: serde_json::value::to_raw_value(&content)
                .expect("invariant: JSON values serialise"),
            state_key: None,
            redacts: None,
        }
    }
}

/// Where an event being persisted comes from.
#[derive(Clone, Debug)]
pub(crate) enum Provenance {
    /// A local user sent it (with the client's transaction): it goes to the room's other
    /// servers.
    Local {
        /// The client transaction.
        txn: Option<TxnRecord>,
    },
    /// Another server sent it; a soft-failed event is kept out of the room's current state.
    Remote {
        /// Whether it failed the auth rules against the current state.
        soft_failed: bool,
    },
    /// History fetched from another server (backfill).
    Historical,
}

/// The largest number of `prev_events` a new event cites.
const MAX_PREV_EVENTS: usize = 20;

/// A local event built and authorised, not yet persisted.
pub(crate) struct PreparedEvent {
    pub(crate) version: RoomVersionId,
    pub(crate) pdu: Pdu,
    pub(crate) state_before: StateBeforeParts,
    pub(crate) prev_events: Vec<OwnedEventId>,
}

/// The state before an event, as a map and as the store should record it.
pub(crate) struct StateBeforeParts {
    pub(crate) map: Arc<StateMap>,
    pub(crate) spec: StateSpec,
}

impl Services {
    /// Creates, authorises and persists an event from a local user after the room's current
    /// forward extremities. With `txn`, a repeated transaction returns the first event.
    pub async fn send_event(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        txn: Option<TxnRecord>,
    ) -> Result<OwnedEventId> {
        self.send_event_after(sender, room_id, event, txn, None).await
    }

    /// Like [`Services::send_event`], after the given `prev_events` instead of the forward
    /// extremities (the room graph then forks; later events merge it by state resolution).
    pub async fn send_event_after(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        txn: Option<TxnRecord>,
        prev_events: Option<Vec<OwnedEventId>>,
    ) -> Result<OwnedEventId> {
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(event.content.get())
            .is_err()
        {
            return Err(Error::bad_json("Event content must be a JSON object"));
        }
        let version = self.room_version(room_id).await?;
        let _guard = self.lock_room(room_id).await?;
        // A repeated transaction gives the first one's event. It is not looked up first (a
        // statement every send would pay): the store refuses a second event of one transaction,
        // and whatever stops the event (that refusal, or a room its sender has left since) the
        // transaction's event is looked up then.
        let first_of = txn.clone();
        match self.send_locked(sender, room_id, version, event, txn, prev_events).await {
            Ok(event_id) => Ok(event_id),
            Err(error) => match first_of {
                Some(txn) => match self.store.event_for_txn(&txn).await? {
                    Some(event_id) => Ok(event_id),
                    None => Err(error),
                },
                None => Err(error),
            },
        }
    }

    /// [`Services::send_event_after`] under the room's lock.
    async fn send_locked(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        version: RoomVersionId,
        event: NewEvent,
        txn: Option<TxnRecord>,
        prev_events: Option<Vec<OwnedEventId>>,
    ) -> Result<OwnedEventId> {
        let extremities = self.store.forward_extremities(room_id).await?;
        let mut prev_events = prev_events.unwrap_or_else(|| extremities.clone());
        prev_events.truncate(MAX_PREV_EVENTS);
        let prevs = self.load_events(&prev_events).await?;
        if prevs.len() != prev_events.len() {
            return Err(Error::bug("a previous event is missing"));
        }
        let state_before = self.state_before(room_id, &version, &prevs).await?;
        let depth = prevs.iter().map(|prev| prev.pdu.depth).max().unwrap_or(0) + 1;
        let pdu = self
            .build_and_authorise(
                sender,
                room_id,
                &version,
                &event,
                &prev_events,
                depth,
                &state_before.map,
            )
            .await?;
        self.persist_prepared(
            room_id,
            &version,
            pdu,
            state_before,
            &prev_events,
            extremities,
            Provenance::Local { txn },
        )
        .await
    }

    /// Builds and authorises a local user's event after the room's forward extremities
    /// without persisting it (an invite to another server's user is signed by that server
    /// first). The caller holds no lock; the event is persisted later with
    /// [`Services::persist_prepared`] after the extremities of that moment.
    pub(crate) async fn prepare_local_event(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: &NewEvent,
    ) -> Result<PreparedEvent> {
        let version = self.room_version(room_id).await?;
        let _guard = self.lock_room(room_id).await?;
        let mut prev_events = self.store.forward_extremities(room_id).await?;
        prev_events.truncate(MAX_PREV_EVENTS);
        let prevs = self.load_events(&prev_events).await?;
        if prevs.len() != prev_events.len() {
            return Err(Error::bug("a previous event is missing"));
        }
        let state_before = self.state_before(room_id, &version, &prevs).await?;
        let depth = prevs.iter().map(|prev| prev.pdu.depth).max().unwrap_or(0) + 1;
        let pdu = self
            .build_and_authorise(
                sender,
                room_id,
                &version,
                event,
                &prev_events,
                depth,
                &state_before.map,
            )
            .await?;
        Ok(PreparedEvent { version, pdu, state_before, prev_events })
    }

    /// The state before an event following `prevs`: theirs, resolved when they differ.
    pub(crate) async fn state_before(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        prevs: &[Arc<LoadedEvent>],
    ) -> Result<StateBeforeParts> {
        let mut groups: Vec<StateGroupId> =
            prevs.iter().map(|prev| prev.record.state_after).collect();
        groups.sort_unstable();
        groups.dedup();
        match groups.as_slice() {
            [] => Ok(StateBeforeParts {
                map: Arc::new(StateMap::new()),
                spec: StateSpec::New { base: None, changes: Vec::new() },
            }),
            [group] => Ok(StateBeforeParts {
                map: self.state_map(*group).await?,
                spec: StateSpec::Existing(*group),
            }),
            [base, ..] => {
                let mut maps = Vec::with_capacity(groups.len());
                for group in &groups {
                    maps.push((*self.state_map(*group).await?).clone());
                }
                let resolved = self.resolve_state(room_id, version, &maps).await?;
                let base_map = self.state_map(*base).await?;
                let changes = diff_states(&base_map, &resolved);
                Ok(StateBeforeParts {
                    map: Arc::new(resolved),
                    spec: StateSpec::New { base: Some(*base), changes },
                })
            }
        }
    }

    /// Resolves several states of a room into one (state resolution v2 / v2.1).
    pub async fn resolve_state(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        maps: &[StateMap],
    ) -> Result<StateMap> {
        self.resolve_state_with(room_id, version, maps, None).await
    }

    /// Resolves several states, one of which may hold `unstored`, an event being persisted
    /// right now (its auth chain is its auth events' and itself).
    pub(crate) async fn resolve_state_with(
        &self,
        _room_id: &RoomId,
        version: &RoomVersionId,
        maps: &[StateMap],
        unstored: Option<&Pdu>,
    ) -> Result<StateMap> {
        let mut auth_chains = Vec::with_capacity(maps.len());
        let mut all_ids: HashSet<OwnedEventId> = HashSet::new();
        for map in maps {
            let mut ids: Vec<OwnedEventId> = map.values().cloned().collect();
            let mut holds_unstored = false;
            if let Some(pdu) = unstored
                && ids.contains(&pdu.event_id)
            {
                holds_unstored = true;
                ids.retain(|id| *id != pdu.event_id);
                ids.extend(pdu.auth_events.iter().cloned());
            }
            let mut chain = self.store.auth_chain(&ids).await?;
            if holds_unstored && let Some(pdu) = unstored {
                chain.insert(pdu.event_id.clone());
            }
            all_ids.extend(chain.iter().cloned());
            auth_chains.push(chain);
        }
        let all_ids: Vec<OwnedEventId> = all_ids.into_iter().collect();
        let mut events: HashMap<OwnedEventId, Pdu> = self
            .load_events(&all_ids)
            .await?
            .into_iter()
            .map(|event| (event.pdu.event_id.clone(), event.pdu.clone()))
            .collect();
        if let Some(pdu) = unstored {
            events.insert(pdu.event_id.clone(), pdu.clone());
        }
        let version = version.clone();
        let maps = maps.to_vec();
        tokio::task::spawn_blocking(move || {
            resolve(&version, &maps, auth_chains, |event_id| events.get(event_id).cloned())
                .map_err(|error| Error::bug(format!("state resolution failed: {error}")))
        })
        .await
        .map_err(Error::internal)?
    }

    #[allow(clippy::too_many_arguments)] // The parts of a new event, each distinct.
    async fn build_and_authorise(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        version: &RoomVersionId,
        event: &NewEvent,
        prev_events: &[OwnedEventId],
        depth: u64,
        state_before: &StateMap,
    ) -> Result<Pdu> {
        let auth_events = auth::select_auth_events(
            version,
            &event.kind,
            sender,
            event.state_key.as_deref(),
            &event.content,
            state_before,
        )
        .map_err(|error| Error::forbidden(error.to_string()))?;
        let template = EventTemplate {
            room_id: Some(room_id.to_owned()),
            sender: sender.to_owned(),
            kind: event.kind.clone(),
            state_key: event.state_key.clone(),
            content: event.content.clone(),
            redacts: event.redacts.clone(),
            prev_events: prev_events.to_vec(),
            auth_events: auth_events.clone(),
            depth,
            origin_server_ts: now_ts(),
        };
        let pdu = build_pdu(&template, version, self.server_name(), &self.signing_key)
            .map_err(pdu_error)?;
        // The auth rules read the auth events, the create event and the state they name.
        let mut needed: Vec<OwnedEventId> = auth_events;
        needed.extend(state_before.get(&(StateEventType::RoomCreate, String::new())).cloned());
        let events: HashMap<OwnedEventId, Pdu> = self
            .load_events(&needed)
            .await?
            .into_iter()
            .map(|event| (event.pdu.event_id.clone(), event.pdu.clone()))
            .collect();
        let state_events: HashMap<(StateEventType, String), Pdu> = state_before
            .iter()
            .filter_map(|(slot, id)| events.get(id).map(|event| (slot.clone(), event.clone())))
            .collect();
        auth::check_event(
            version,
            &pdu,
            |event_id: &EventId| events.get(event_id).cloned(),
            |kind: &StateEventType, key: &str| {
                state_events.get(&(kind.clone(), key.to_owned())).cloned()
            },
        )
        .map_err(|error| Error::forbidden(format!("Not allowed: {error}")))?;
        Ok(pdu)
    }

    /// Persists an authorised event in one store call: the event, its state, the new forward
    /// extremities and current state, memberships, relations, redaction, notifications and,
    /// for local events, the other servers to send it to; then wakes whoever it concerns.
    /// Local events and those of other servers take this same step.
    #[allow(clippy::too_many_arguments)] // The parts of one persistence step, each distinct.
    pub(crate) async fn persist_prepared(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdu: Pdu,
        state_before: StateBeforeParts,
        prev_events: &[OwnedEventId],
        extremities: Vec<OwnedEventId>,
        provenance: Provenance,
    ) -> Result<OwnedEventId> {
        let event_id = pdu.event_id.clone();
        // Another server's event may come after a redaction of it (history fetched later, an
        // event still on its way): it is stored redacted, if that redaction may apply to it.
        // (An event built here is new: nothing can name it yet.)
        let (pdu, redacted_by) = match provenance {
            Provenance::Local { .. } => (pdu, None),
            _ => self.apply_waiting_redaction(room_id, version, pdu).await?,
        };
        let slot = pdu.state_slot();
        // A big room's state is thousands of entries: copied only when this event changes it.
        let state_after: Arc<StateMap> = match &slot {
            Some(slot) => {
                let mut state_after = (*state_before.map).clone();
                state_after.insert(slot.clone(), event_id.clone());
                Arc::new(state_after)
            }
            None => state_before.map.clone(),
        };
        let (txn, soft_failed, historical, local) = match provenance {
            Provenance::Local { txn } => (txn, false, false, true),
            Provenance::Remote { soft_failed } => (None, soft_failed, false, false),
            Provenance::Historical => (None, false, true, false),
        };
        // A soft-failed or historical event joins the graph without moving the room on.
        let moves_room = !soft_failed && !historical;
        let mut new_extremities: Vec<OwnedEventId> = if moves_room {
            extremities.into_iter().filter(|extremity| !prev_events.contains(extremity)).collect()
        } else {
            extremities
        };
        if moves_room {
            new_extremities.push(event_id.clone());
        }
        let old_current_group =
            self.store.get_room(room_id).await?.and_then(|room| room.current_state_group);
        let old_current = match old_current_group {
            Some(group) => self.state_map(group).await?,
            None => Arc::new(StateMap::new()),
        };
        // An event that follows the room's current state alone and sets no state of its
        // own (a message) leaves the current state as it was.
        let keeps_current = slot.is_none()
            && new_extremities.len() == 1
            && matches!(state_before.spec, StateSpec::Existing(group) if Some(group) == old_current_group);
        let (current_state, new_current) = if !moves_room || keeps_current {
            (CurrentState::Unchanged, old_current.clone())
        } else if new_extremities.len() == 1 {
            (CurrentState::StateAfter, state_after.clone())
        } else {
            let mut maps = vec![(*state_after).clone()];
            let others: Vec<OwnedEventId> =
                new_extremities.iter().filter(|id| **id != event_id).cloned().collect();
            for other in self.load_events(&others).await? {
                maps.push((*self.state_map(other.record.state_after).await?).clone());
            }
            let resolved = self.resolve_state_with(room_id, version, &maps, Some(&pdu)).await?;
            let changes = diff_states(&old_current, &resolved);
            (
                CurrentState::New(StateSpec::New { base: old_current_group, changes }),
                Arc::new(resolved),
            )
        };
        let membership_changes = if Arc::ptr_eq(&old_current, &new_current) {
            Vec::new()
        } else {
            self.membership_changes(&old_current, &new_current, &pdu).await?
        };
        let (redaction, redaction_waits_for) = if moves_room || historical {
            self.prepare_redaction(version, &pdu, &state_before.map).await?
        } else {
            (None, None)
        };
        let push_actions =
            if moves_room { self.push_actions_for(&pdu, &new_current).await? } else { Vec::new() };
        let relation = if soft_failed { None } else { relation_of(&pdu) };
        let federation_destinations = if local {
            self.federation_destinations_for(room_id, &pdu, &membership_changes).await?
        } else {
            Vec::new()
        };
        let persist = PersistEvent {
            event_id: event_id.clone(),
            room_id: room_id.to_owned(),
            sender: pdu.sender.clone(),
            event_type: pdu.kind.to_string(),
            state_key: pdu.state_key.clone(),
            depth: i64::try_from(pdu.depth).unwrap_or(i64::MAX),
            origin_server_ts: rhizome_core::clock::millis_from_ts(pdu.origin_server_ts),
            json: pdu.json().get().to_owned(),
            auth_events: pdu.auth_events.clone(),
            rejected: false,
            state_before: state_before.spec,
            state_after_changes: slot
                .map(|slot| ((slot.0.to_string(), slot.1), Some(event_id.clone())))
                .into_iter()
                .collect(),
            new_extremities,
            current_state,
            membership_changes: membership_changes.clone(),
            txn,
            relation,
            redaction: redaction.clone(),
            redaction_waits_for,
            redacted_by: redacted_by.clone(),
            push_actions,
            queue_pushes: self.config.push.enabled,
            federation_destinations,
            soft_failed,
            historical,
            new_here: local,
        };
        let membership_write = (!membership_changes.is_empty()).then(|| {
            let users = membership_changes.iter().map(|change| change.user_id.clone()).collect();
            self.begin_membership_write(room_id, users)
        });
        // Read before the event is stored: a redaction of it, from this process or announced
        // by another, keeps it out of the event cache below.
        let dropped = self.events_dropped();
        let persisted = match self.take_store_room_lock(room_id) {
            Some(lock) => self.store.persist_event_locked(&persist, lock).await,
            None => self.store.persist_event(&persist).await,
        };
        if let Some(write) = membership_write {
            self.end_membership_write(write);
        }
        let persisted = persisted?;
        self.relock_room_in_store(room_id).await?;
        self.wake_destinations(&persist.federation_destinations);
        if let Some((target, _)) = &redaction {
            self.forget_event(target);
        }
        if !moves_room {
            return Ok(event_id);
        }
        // The room's next event reads it (its prev event) and so do the syncs it wakes: it is
        // cached as the store would read it back, unless cached events were dropped since it
        // was stored (a redaction, here or in another process).
        let record = EventRecord {
            event_id: event_id.clone(),
            room_id: room_id.to_owned(),
            stream_pos: persisted.stream_pos,
            json: String::new(),
            rejected: false,
            state_before: persisted.state_before,
            state_after: persisted.state_after,
            txn: persist.txn.clone(),
            redacted_by,
            soft_failed: false,
            outlier: false,
        };
        self.cache_persisted(dropped, pdu, record);
        self.record_room_activity(room_id, &persist.event_type, persisted.stream_pos);
        let activity = crate::processes::Message::Activity {
            room_id: room_id.to_owned(),
            event_type: persist.event_type.clone(),
            pos: persisted.stream_pos,
        };
        crate::processes::publish(self.store.as_ref(), &activity);
        if persisted.pushes_queued {
            self.wake_push_worker();
        }
        if let Some(state_key) = &persist.state_key {
            self.cancel_others_delayed_state(
                room_id,
                &persist.event_type,
                state_key,
                &persist.sender,
            )
            .await;
        }
        // The joined and invited members, and whoever the event changed (waking one twice is
        // harmless: no set of a big room's members is built per event).
        let members = self.room_memberships_cached(room_id).await?;
        let woken = members
            .iter()
            .filter(|member| member.membership == "join" || member.membership == "invite")
            .map(|member| member.user_id.as_ref())
            .chain(membership_changes.iter().map(|change| change.user_id.as_ref()));
        tracing::debug!(stream_pos = persisted.stream_pos, "persisted an event");
        self.notifier.notify(woken);
        Ok(event_id)
    }

    /// The other servers a locally sent event goes to: those of the room's joined members
    /// (after the event), and the server of a member event's target (an invite, a kick or a
    /// ban reaches the server of the user concerned).
    pub(crate) async fn federation_destinations_for(
        &self,
        room_id: &RoomId,
        pdu: &Pdu,
        membership_changes: &[MembershipChange],
    ) -> Result<Vec<ruma::OwnedServerName>> {
        if !self.config.federation.enabled {
            return Ok(Vec::new());
        }
        let mut servers: std::collections::BTreeSet<ruma::OwnedServerName> =
            std::collections::BTreeSet::new();
        let members = self.room_memberships_cached(room_id).await?;
        for member in members.iter() {
            let changed = membership_changes.iter().find(|change| change.user_id == member.user_id);
            let membership = changed.map_or(member.membership.as_str(), |c| c.membership.as_str());
            if membership == "join" {
                servers.insert(member.user_id.server_name().to_owned());
            }
        }
        for change in membership_changes {
            if change.membership == "join" {
                servers.insert(change.user_id.server_name().to_owned());
            }
        }
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(target) = pdu.state_key.as_deref()
            && let Ok(target) = UserId::parse(target)
        {
            servers.insert(target.server_name().to_owned());
        }
        servers.remove(self.server_name());
        Ok(servers
            .into_iter()
            .filter(|server| self.config.federation.server_allowed(server.as_str()))
            .collect())
    }

    /// Membership rows that change between two current states.
    async fn membership_changes(
        &self,
        old: &StateMap,
        new: &StateMap,
        pdu: &Pdu,
    ) -> Result<Vec<MembershipChange>> {
        let mut changed: Vec<OwnedEventId> = Vec::new();
        for ((kind, key), event_id) in new {
            if *kind == StateEventType::RoomMember
                && old.get(&(kind.clone(), key.clone())) != Some(event_id)
            {
                changed.push(event_id.clone());
            }
        }
        let mut changes = Vec::with_capacity(changed.len());
        for event_id in changed {
            let member_pdu = if event_id == pdu.event_id {
                pdu.clone()
            } else {
                match self.load_event(&event_id).await? {
                    Some(event) => event.pdu.clone(),
                    None => continue,
                }
            };
            let Some(state_key) = &member_pdu.state_key else { continue };
            let Ok(user_id) = ruma::UserId::parse(state_key.as_str()) else { continue };
            let content: serde_json::Value =
                serde_json::from_str(member_pdu.content.get()).unwrap_or_default();
            changes.push(MembershipChange {
                user_id,
                membership: content
                    .get("membership")
                    .and_then(|m| m.as_str())
                    .unwrap_or("leave")
                    .to_owned(),
                event_id: member_pdu.event_id.clone(),
                displayname: content.get("displayname").and_then(|m| m.as_str()).map(str::to_owned),
                avatar_url: content.get("avatar_url").and_then(|m| m.as_str()).map(str::to_owned),
            });
        }
        Ok(changes)
    }

    /// For a redaction: the target and its redacted JSON, when the target is stored and the
    /// redaction may apply to it; or the target alone, when it is not stored yet (it is
    /// redacted when it comes, see [`Self::apply_waiting_redaction`]).
    async fn prepare_redaction(
        &self,
        version: &RoomVersionId,
        pdu: &Pdu,
        state_before: &StateMap,
    ) -> Result<(Option<(OwnedEventId, String)>, Option<OwnedEventId>)> {
        if pdu.kind != TimelineEventType::RoomRedaction {
            return Ok((None, None));
        }
        let Some(target_id) = &pdu.redacts else { return Ok((None, None)) };
        let waits = Ok((None, Some(target_id.clone())));
        // An event held outside the timeline (an auth event, a piece of state) is redacted
        // when it joins the timeline, if ever.
        let Some(target) = self.load_event(target_id).await?.filter(|t| !t.record.outlier) else {
            return waits;
        };
        if target.pdu.room_id != pdu.room_id
            || !self.redaction_may_apply(version, pdu, state_before, &target.pdu).await?
        {
            return Ok((None, None));
        }
        let redacted = redact_by(version, &target.pdu, pdu)?;
        Ok((Some((target_id.clone(), redacted.json().get().to_owned())), None))
    }

    /// Whether a redaction may change its target: the spec leaves redactions out of the auth
    /// rules (since room version 3) and asks servers to apply one only when its sender's
    /// server sent the target, or its sender has the power to redact others' events (in the
    /// state before the redaction). Anyone else's redaction stays in the room, harmless.
    async fn redaction_may_apply(
        &self,
        version: &RoomVersionId,
        redaction: &Pdu,
        state_before: &StateMap,
        target: &Pdu,
    ) -> Result<bool> {
        if redaction.sender.server_name() == target.sender.server_name() {
            return Ok(true);
        }
        let levels = self.power_levels_in(version, state_before).await?;
        Ok(levels.user_can_redact_event_of_other(&redaction.sender))
    }

    /// Another server's event, redacted by the first redaction stored before it came that may
    /// apply to it (and that redaction), or as it is.
    async fn apply_waiting_redaction(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdu: Pdu,
    ) -> Result<(Pdu, Option<OwnedEventId>)> {
        for redaction_id in self.store.waiting_redactions(&pdu.event_id).await? {
            let Some(redaction) = self.load_event(&redaction_id).await? else { continue };
            if redaction.pdu.room_id != room_id
                || redaction.record.rejected
                || redaction.record.soft_failed
            {
                continue;
            }
            let state = self.state_map(redaction.record.state_before).await?;
            if self.redaction_may_apply(version, &redaction.pdu, &state, &pdu).await? {
                let redacted = redact_by(version, &pdu, &redaction.pdu)?;
                return Ok((redacted, Some(redaction_id)));
            }
        }
        Ok((pdu, None))
    }
}

/// `target` redacted by `redaction` (named in its `unsigned.redacted_because`).
fn redact_by(version: &RoomVersionId, target: &Pdu, redaction: &Pdu) -> Result<Pdu> {
    let because: ruma::CanonicalJsonObject =
        serde_json::from_str(redaction.client_event(true, None).get()).map_err(Error::internal)?;
    target
        .redacted(version, Some(because))
        .map_err(|error| Error::bug(format!("redaction failed: {error}")))
}

/// The slots that differ from `base` in `new` (set, or removed).
pub(crate) fn diff_states(
    base: &StateMap,
    new: &StateMap,
) -> Vec<((String, String), Option<OwnedEventId>)> {
    let mut changes: Vec<((String, String), Option<OwnedEventId>)> = new
        .iter()
        .filter(|(slot, id)| base.get(*slot) != Some(*id))
        .map(|((kind, key), id)| ((kind.to_string(), key.clone()), Some(id.clone())))
        .collect();
    changes.extend(
        base.keys()
            .filter(|slot| !new.contains_key(*slot))
            .map(|(kind, key)| ((kind.to_string(), key.clone()), None)),
    );
    changes
}

/// The relation an event declares in `m.relates_to`, if any.
fn relation_of(pdu: &Pdu) -> Option<RelationRecord> {
    let content: serde_json::Value = serde_json::from_str(pdu.content.get()).ok()?;
    let relates_to = content.get("m.relates_to")?;
    let rel_type = relates_to.get("rel_type")?.as_str()?.to_owned();
    let target = OwnedEventId::try_from(relates_to.get("event_id")?.as_str()?).ok()?;
    let key = relates_to.get("key").and_then(|key| key.as_str()).map(str::to_owned);
    Some(RelationRecord { relates_to: target, rel_type, key })
}

/// The client-facing error for a PDU that cannot be built.
pub(crate) fn pdu_error(error: rhizome_room::PduError) -> Error {
    match error {
        rhizome_room::PduError::TooLarge => Error::matrix(
            rhizome_core::error::MatrixErrorKind::TooLarge,
            "The event is larger than 65535 bytes",
        ),
        other => Error::bad_json(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use crate::{rooms::NewEvent, test_support};

    /// On SQLite an event's own statements write the stream counter (its commit does not):
    /// the positions events took are still taken after the database is opened again.
    #[tokio::test]
    async fn stream_positions_survive_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let alice = ruma::owned_user_id!("@alice:example.org");
        let message =
            |body: &str| NewEvent::message("m.room.message", serde_json::json!({ "body": body }));
        let store = test_support::sqlite_store(dir.path()).await;
        let services = test_support::services(store.clone());
        let room = services.create_room(&alice, Default::default()).await.unwrap();
        let mut last = None;
        for body in ["one", "two", "three"] {
            last = Some(services.send_event(&alice, &room, message(body), None).await.unwrap());
        }
        let last = services.load_event(&last.unwrap()).await.unwrap().unwrap();
        let pos = last.record.stream_pos;
        assert_eq!(services.store.current_stream_pos(), pos);
        store.close().await;
        drop(services);

        let store = test_support::sqlite_store(dir.path()).await;
        assert_eq!(rhizome_storage::DataStore::current_stream_pos(store.as_ref()), pos);
        let services = test_support::services(store);
        let next = services.send_event(&alice, &room, message("four"), None).await.unwrap();
        let next = services.load_event(&next).await.unwrap().unwrap();
        assert_eq!(next.record.stream_pos, pos + 1);
    }
}
