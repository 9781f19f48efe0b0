//! Authorisation of events by the spec's auth rules, through ruma's state-res crate.

use ruma::{
    EventId, OwnedEventId, RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    state_res,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{Pdu, StateMap, versions};

/// Why an event was not authorised.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The room version is unknown to Rhizome.
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(RoomVersionId),
    /// The auth rules refused the event.
    #[error("{0}")]
    Refused(String),
}

/// The state slots an event of this shape must cite as `auth_events`.
pub fn auth_types_for_event(
    room_version: &RoomVersionId,
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawJsonValue,
) -> Result<Vec<(StateEventType, String)>, AuthError> {
    let rules = versions::rules(room_version)
        .ok_or_else(|| AuthError::UnsupportedRoomVersion(room_version.clone()))?;
    state_res::auth_types_for_event(kind, sender, state_key, content, &rules.authorization)
        .map_err(AuthError::Refused)
}

/// Picks the `auth_events` of a new event from the state before it.
pub fn select_auth_events(
    room_version: &RoomVersionId,
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawJsonValue,
    state: &StateMap,
) -> Result<Vec<OwnedEventId>, AuthError> {
    let mut auth_events: Vec<OwnedEventId> =
        auth_types_for_event(room_version, kind, sender, state_key, content)?
            .iter()
            .filter_map(|slot| state.get(slot).cloned())
            .collect();
    auth_events.sort();
    auth_events.dedup();
    Ok(auth_events)
}

/// Checks an event against the auth rules: first against its own `auth_events` (fetched with
/// `fetch_event`), then against the state before it (`fetch_state`).
pub fn check_event(
    room_version: &RoomVersionId,
    event: &Pdu,
    fetch_event: impl Fn(&EventId) -> Option<Pdu>,
    fetch_state: impl Fn(&StateEventType, &str) -> Option<Pdu>,
) -> Result<(), AuthError> {
    let rules = versions::rules(room_version)
        .ok_or_else(|| AuthError::UnsupportedRoomVersion(room_version.clone()))?;
    state_res::check_state_independent_auth_rules(&rules.authorization, event, &fetch_event)
        .map_err(AuthError::Refused)?;
    state_res::check_state_dependent_auth_rules(&rules.authorization, event, fetch_state)
        .map_err(AuthError::Refused)
}
