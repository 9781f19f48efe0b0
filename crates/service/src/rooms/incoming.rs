//! Events from other servers, checked in the spec's order before they count: form and size,
//! room version, signatures and content hash, auth against the event's own auth events
//! (missing ones fetched and stored as outliers), the room graph before it (missing
//! predecessors fetched with `get_missing_events`, or the state at the event asked for), auth
//! against the state before it, and a soft-fail check against the current state. What passes
//! is persisted by the same step as local events ([`Services::persist_prepared`]); what fails
//! is stored as rejected and never shown or built upon.

use std::{collections::HashMap, sync::Arc};

use rhizome_core::{Error, Result};
use rhizome_room::{
    Pdu, StateMap, auth,
    received::{self, CheckedPdu, ReceiveError},
};
use rhizome_storage::{OutlierEvent, StateSpec};
use ruma::{
    EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, events::StateEventType,
    signatures::PublicKeyMap,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Services,
    rooms::{
        cache::LoadedEvent,
        send::{Provenance, StateBeforeParts, diff_states},
    },
};

/// How many rounds of fetching missing predecessors one PDU may cause.
const MISSING_EVENTS_DEPTH: usize = 3;

/// What became of a PDU from another server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PduOutcome {
    /// Accepted into the room.
    Accepted,
    /// Accepted into the room graph but not its current state (it broke the auth rules
    /// against the current state); never shown to clients.
    SoftFailed,
    /// Refused by the auth rules; stored as rejected.
    Rejected(String),
    /// Already known.
    AlreadyKnown,
}

/// The error for a PDU that could not even be considered.
fn receive_error(error: ReceiveError) -> Error {
    match error {
        ReceiveError::TooLarge => Error::matrix(
            rhizome_core::error::MatrixErrorKind::TooLarge,
            "The event is larger than 65536 bytes",
        ),
        ReceiveError::UnsupportedRoomVersion(_) => Error::matrix(
            rhizome_core::error::MatrixErrorKind::UnsupportedRoomVersion,
            error.to_string(),
        ),
        ReceiveError::BadSignature(_) => Error::forbidden(error.to_string()),
        ReceiveError::Malformed(_) | ReceiveError::WrongRoom => Error::bad_json(error.to_string()),
    }
}

impl Services {
    /// Handles a PDU another server sent for a room this server is in.
    pub async fn handle_incoming_pdu(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        json: &RawJsonValue,
    ) -> Result<(OwnedEventId, PduOutcome)> {
        let version = self.room_version(room_id).await?;
        if self.store.get_room(room_id).await?.and_then(|room| room.current_state_group).is_none() {
            return Err(Error::not_found("This server is not in that room"));
        }
        let checked =
            received::check_format(json.get(), &version, Some(room_id)).map_err(receive_error)?;
        let event_id = checked.event_id.clone();
        if self.known_in_timeline(&event_id).await? {
            return Ok((event_id, PduOutcome::AlreadyKnown));
        }
        self.check_server_acl(room_id, origin).await?;
        let pdu = self.verify_received(checked, &version).await?;
        self.check_server_acl(room_id, pdu.sender.server_name()).await?;
        let _guard = self.lock_room(room_id).await?;
        let outcome =
            self.process_pdu_locked(origin, room_id, &version, pdu, MISSING_EVENTS_DEPTH).await?;
        Ok((event_id, outcome))
    }

    /// Whether the event is in a room's timeline here (outliers do not count).
    pub(crate) async fn known_in_timeline(&self, event_id: &EventId) -> Result<bool> {
        Ok(self.load_event(event_id).await?.is_some_and(|event| !event.record.outlier))
    }

    /// Verifies a received PDU's signatures (fetching the keys needed) and content hash.
    pub(crate) async fn verify_received(
        &self,
        checked: CheckedPdu,
        version: &RoomVersionId,
    ) -> Result<Pdu> {
        let needed = received::signing_keys_needed(&checked, version).map_err(receive_error)?;
        let at =
            received::enforces_key_validity(version).then(|| received::origin_server_ts(&checked));
        let mut keys = PublicKeyMap::new();
        for (server, key_ids) in needed {
            let found = self.server_verify_keys(&server, &key_ids, at).await?;
            if found.is_empty() {
                return Err(Error::forbidden(format!(
                    "No valid signing key of {server} could be found for the event"
                )));
            }
            keys.insert(server.to_string(), found);
        }
        received::verify(checked, version, &keys).map_err(receive_error)
    }

    /// Refuses a server the room's server ACL denies.
    pub(crate) async fn check_server_acl(
        &self,
        room_id: &RoomId,
        server: &ServerName,
    ) -> Result<()> {
        let Ok(Some(acl)) =
            self.current_state_event(room_id, &StateEventType::RoomServerAcl, "").await
        else {
            return Ok(());
        };
        let Ok(content) =
            acl.pdu.content_as::<ruma::events::room::server_acl::RoomServerAclEventContent>()
        else {
            return Ok(());
        };
        if content.is_allowed(server) {
            Ok(())
        } else {
            Err(Error::forbidden("The room's server ACL denies this server"))
        }
    }

    /// Processes a verified PDU with the room's lock held.
    pub(crate) fn process_pdu_locked<'a>(
        &'a self,
        origin: &'a ServerName,
        room_id: &'a RoomId,
        version: &'a RoomVersionId,
        pdu: Pdu,
        fetch_depth: usize,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<PduOutcome>> + Send + 'a>> {
        Box::pin(async move {
            if self.known_in_timeline(&pdu.event_id).await? {
                return Ok(PduOutcome::AlreadyKnown);
            }
            // 1. The auth events, fetched if missing, must authorise the event.
            self.fetch_missing_auth_events(origin, room_id, version, &pdu).await?;
            if let Err(reason) = self.check_against_auth_events(version, &pdu).await? {
                tracing::debug!(%reason, "an event is not authorised by its auth events");
                self.store_rejected(&pdu).await?;
                return Ok(PduOutcome::Rejected(reason));
            }
            // 2. The predecessors: fetch what is missing, within bounds.
            let mut prevs = self.timeline_prevs(&pdu).await?;
            if prevs.len() != pdu.prev_events.len() && fetch_depth > 0 {
                self.fetch_missing_prevs(origin, room_id, version, &pdu, fetch_depth).await?;
                prevs = self.timeline_prevs(&pdu).await?;
            }
            // 3. The state before it: from the graph, or asked for when the graph has gaps.
            let state_before = if prevs.len() == pdu.prev_events.len() {
                self.state_before(room_id, version, &prevs).await?
            } else {
                let state = self.fetch_state_at(origin, room_id, version, &pdu.event_id).await?;
                StateBeforeParts {
                    spec: StateSpec::New {
                        base: None,
                        changes: diff_states(&StateMap::new(), &state),
                    },
                    map: Arc::new(state),
                }
            };
            if let Err(reason) = self.check_against_state(version, &pdu, &state_before.map).await? {
                self.store_rejected(&pdu).await?;
                return Ok(PduOutcome::Rejected(reason));
            }
            // 4. Soft fail: it must also pass against the room's current state.
            let current = self.current_state(room_id).await?;
            let soft_failed = self.check_against_state(version, &pdu, &current).await?.is_err();
            let extremities = self.store.forward_extremities(room_id).await?;
            let prev_events = pdu.prev_events.clone();
            self.persist_prepared(
                room_id,
                version,
                pdu,
                state_before,
                &prev_events,
                extremities,
                Provenance::Remote { soft_failed },
            )
            .await?;
            Ok(if soft_failed { PduOutcome::SoftFailed } else { PduOutcome::Accepted })
        })
    }

    /// The event's `prev_events` that are in the timeline here (not outliers, not rejected).
    async fn timeline_prevs(&self, pdu: &Pdu) -> Result<Vec<Arc<LoadedEvent>>> {
        Ok(self
            .load_events(&pdu.prev_events)
            .await?
            .into_iter()
            .filter(|event| !event.record.outlier && !event.record.rejected)
            .collect())
    }

    /// Stores a rejected event, so it is known and never used.
    async fn store_rejected(&self, pdu: &Pdu) -> Result<()> {
        tracing::debug!(event_id = %pdu.event_id, "rejected an event from another server");
        self.store
            .store_outliers(&[OutlierEvent {
                event_id: pdu.event_id.clone(),
                room_id: pdu.room_id.clone(),
                json: pdu.json().get().to_owned(),
                rejected: true,
                auth_events: Vec::new(),
            }])
            .await?;
        self.forget_event(&pdu.event_id);
        Ok(())
    }

    /// Checks an event against its own auth events: `Ok(Err(reason))` when they do not
    /// authorise it (or are missing, or were rejected).
    pub(crate) async fn check_against_auth_events(
        &self,
        version: &RoomVersionId,
        pdu: &Pdu,
    ) -> Result<std::result::Result<(), String>> {
        let loaded = self.load_events(&pdu.auth_events).await?;
        if loaded.len() != pdu.auth_events.len() {
            return Ok(Err("some of its auth events are unknown".to_owned()));
        }
        let mut state = StateMap::new();
        for event in &loaded {
            if event.pdu.room_id != pdu.room_id {
                return Ok(Err("an auth event belongs to another room".to_owned()));
            }
            if let Some(slot) = event.pdu.state_slot() {
                if state.insert(slot, event.pdu.event_id.clone()).is_some() {
                    return Ok(Err("two auth events fill the same state".to_owned()));
                }
            } else {
                return Ok(Err("an auth event is not a state event".to_owned()));
            }
        }
        // From room version 12 the create event is named by the room ID, not cited.
        if let Some(create_id) = create_event_of(version, pdu) {
            state.entry((StateEventType::RoomCreate, String::new())).or_insert(create_id);
        }
        self.check_against_state(version, pdu, &state).await
    }

    /// Checks an event against the auth rules in the given state: `Ok(Err(reason))` when the
    /// rules refuse it.
    pub(crate) async fn check_against_state(
        &self,
        version: &RoomVersionId,
        pdu: &Pdu,
        state: &StateMap,
    ) -> Result<std::result::Result<(), String>> {
        let slots = match auth::auth_types_for_event(
            version,
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
        ) {
            Ok(slots) => slots,
            Err(error) => return Ok(Err(error.to_string())),
        };
        let mut needed: Vec<OwnedEventId> = pdu.auth_events.clone();
        needed.extend(create_event_of(version, pdu));
        let mut state_ids: HashMap<(StateEventType, String), OwnedEventId> = HashMap::new();
        for slot in slots.iter().chain([&(StateEventType::RoomCreate, String::new())]) {
            if let Some(id) = state.get(slot) {
                needed.push(id.clone());
                state_ids.insert(slot.clone(), id.clone());
            }
        }
        let events: HashMap<OwnedEventId, Pdu> = self
            .load_events(&needed)
            .await?
            .into_iter()
            .map(|event| (event.pdu.event_id.clone(), event.pdu.clone()))
            .collect();
        let state_events: HashMap<(StateEventType, String), Pdu> = state_ids
            .into_iter()
            .filter_map(|(slot, id)| events.get(&id).map(|event| (slot, event.clone())))
            .collect();
        Ok(auth::check_event(
            version,
            pdu,
            |event_id: &EventId| events.get(event_id).cloned(),
            |kind: &StateEventType, key: &str| {
                state_events.get(&(kind.clone(), key.to_owned())).cloned()
            },
        )
        .map_err(|error| error.to_string()))
    }

    /// Checks events fetched from another server (auth chains, state) and stores them as
    /// outliers, oldest first: each must be signed and authorised by its own auth events
    /// (which must be among those known or given); those that are not are stored as rejected.
    /// Returns the IDs of the accepted ones.
    pub(crate) async fn store_fetched_events(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        events: Vec<Box<RawJsonValue>>,
    ) -> Result<Vec<OwnedEventId>> {
        let mut verified = Vec::with_capacity(events.len());
        for json in events {
            let checked = match received::check_format(json.get(), version, Some(room_id)) {
                Ok(checked) => checked,
                Err(error) => {
                    tracing::debug!(%error, "ignored a malformed event from another server");
                    continue;
                }
            };
            if self.load_event(&checked.event_id).await?.is_some() {
                verified.push(None);
                continue;
            }
            match self.verify_received(checked, version).await {
                Ok(pdu) => verified.push(Some(pdu)),
                Err(error) => {
                    tracing::debug!(%error, "ignored an event with bad signatures");
                }
            }
        }
        let mut pdus: Vec<Pdu> = verified.into_iter().flatten().collect();
        pdus.sort_by_key(|pdu| (pdu.depth, pdu.origin_server_ts));
        let mut accepted = Vec::with_capacity(pdus.len());
        for pdu in pdus {
            let result = self.check_against_auth_events(version, &pdu).await?;
            let rejected = result.is_err();
            self.store
                .store_outliers(&[OutlierEvent {
                    event_id: pdu.event_id.clone(),
                    room_id: pdu.room_id.clone(),
                    json: pdu.json().get().to_owned(),
                    rejected,
                    auth_events: pdu.auth_events.clone(),
                }])
                .await?;
            self.forget_event(&pdu.event_id);
            if !rejected {
                accepted.push(pdu.event_id);
            }
        }
        Ok(accepted)
    }
}

/// From room version 12 on, the create event a room's events hang from is named by the room
/// ID rather than cited in `auth_events`.
fn create_event_of(version: &RoomVersionId, pdu: &Pdu) -> Option<OwnedEventId> {
    if !rhizome_room::versions::room_id_is_create_event_hash(version) {
        return None;
    }
    OwnedEventId::try_from(format!("${}", pdu.room_id.as_str().trim_start_matches('!'))).ok()
}
