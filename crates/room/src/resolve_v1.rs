//! State resolution for room version 1 (the original algorithm, known to reset rooms, kept for
//! the rooms that still use it): power levels, then join rules, then memberships are resolved
//! by replaying the conflicting events in order under the auth rules; other conflicts take the
//! deepest event that the resolved state allows.

use std::collections::{HashMap, HashSet};

use ruma::{EventId, OwnedEventId, RoomVersionId, events::StateEventType};
use sha1::{Digest, Sha1};

use crate::{Pdu, StateMap, auth, resolve::ResolveError};

type Slot = (StateEventType, String);

/// Resolves several states of a room version 1 room into one.
pub fn resolve_v1(
    room_version: &RoomVersionId,
    state_maps: &[StateMap],
    fetch_event: impl Fn(&EventId) -> Option<Pdu>,
) -> Result<StateMap, ResolveError> {
    // Unconflicted state first; conflicts gathered per slot.
    let mut resolved = StateMap::new();
    let mut conflicted: HashMap<Slot, Vec<OwnedEventId>> = HashMap::new();
    let slots: HashSet<&Slot> = state_maps.iter().flat_map(|map| map.keys()).collect();
    for slot in slots {
        let mut ids: Vec<OwnedEventId> =
            state_maps.iter().filter_map(|map| map.get(slot).cloned()).collect();
        ids.sort();
        ids.dedup();
        // A slot only some states fill is not a conflict: only different events are.
        match ids.as_slice() {
            [only] => {
                resolved.insert(slot.clone(), only.clone());
            }
            _ => {
                conflicted.insert(slot.clone(), ids);
            }
        }
    }
    let load = |ids: &[OwnedEventId]| -> Result<Vec<Pdu>, ResolveError> {
        ids.iter()
            .map(|id| {
                fetch_event(id).ok_or_else(|| ResolveError::Failed(format!("missing event {id}")))
            })
            .collect()
    };
    let allowed = |event: &Pdu, state: &StateMap| {
        auth::check_event(room_version, event, &fetch_event, |kind, key| {
            state.get(&(kind.clone(), key.to_owned())).and_then(|id| fetch_event(id))
        })
        .is_ok()
    };
    let mut slots: Vec<&Slot> = conflicted.keys().collect();
    slots.sort();
    // Power levels, then join rules, then memberships: replayed in (depth, sha1) order while
    // each is allowed by the state so far.
    for kind in [StateEventType::RoomPowerLevels, StateEventType::RoomJoinRules] {
        for slot in slots.iter().filter(|slot| slot.0 == kind) {
            let events = load(&conflicted[*slot])?;
            if let Some(winner) = replay_auth_events(events, &resolved, &allowed) {
                resolved.insert((*slot).clone(), winner);
            }
        }
    }
    for slot in slots.iter().filter(|slot| slot.0 == StateEventType::RoomMember) {
        let events = load(&conflicted[*slot])?;
        if let Some(winner) = replay_auth_events(events, &resolved, &allowed) {
            resolved.insert((*slot).clone(), winner);
        }
    }
    // Everything else: the deepest (then lowest sha1) event allowed by the resolved state.
    let others: Vec<&&Slot> = slots
        .iter()
        .filter(|slot| {
            !matches!(
                slot.0,
                StateEventType::RoomPowerLevels
                    | StateEventType::RoomJoinRules
                    | StateEventType::RoomMember
            )
        })
        .collect();
    for slot in others {
        let mut events = load(&conflicted[*slot])?;
        events.sort_by_key(|event| std::cmp::Reverse(order(event)));
        let winner = events
            .iter()
            .find(|event| allowed(event, &resolved))
            .or_else(|| events.last())
            .map(|event| event.event_id.clone());
        if let Some(winner) = winner {
            resolved.insert((*slot).clone(), winner);
        }
    }
    Ok(resolved)
}

/// The order of conflicting events: ascending depth, then descending sha1 of the event ID.
fn order(event: &Pdu) -> (u64, std::cmp::Reverse<[u8; 20]>) {
    let digest: [u8; 20] = Sha1::digest(event.event_id.as_bytes()).into();
    (event.depth, std::cmp::Reverse(digest))
}

/// Applies conflicting auth events in order, each while the state so far allows it; the last
/// one applied wins.
fn replay_auth_events(
    mut events: Vec<Pdu>,
    resolved: &StateMap,
    allowed: &impl Fn(&Pdu, &StateMap) -> bool,
) -> Option<OwnedEventId> {
    events.sort_by_key(order);
    let mut state = resolved.clone();
    let first = events.first()?;
    let mut winner = first.event_id.clone();
    for event in events.iter().skip(1) {
        let Some(slot) = event.state_slot() else { continue };
        state.insert(slot.clone(), winner.clone());
        if !allowed(event, &state) {
            break;
        }
        winner = event.event_id.clone();
        state.insert(slot, winner.clone());
    }
    Some(winner)
}
