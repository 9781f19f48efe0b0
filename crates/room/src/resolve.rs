//! State resolution (v2, and v2.1 for room version 12) where the room graph's branches merge,
//! through ruma's state-res crate.

use std::collections::{HashMap, HashSet};

use ruma::{EventId, OwnedEventId, RoomVersionId, state_res};

use crate::{Pdu, StateMap, versions};

/// State resolution failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The room version is unknown to Rhizome.
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(RoomVersionId),
    /// The algorithm failed (typically an event it needed was missing).
    #[error("state resolution failed: {0}")]
    Failed(String),
}

/// Resolves the states at several branches of a room into one.
///
/// `auth_chains` holds, for each state map, the full auth chain of the events in it;
/// `fetch_event` must know every event in those chains.
pub fn resolve(
    room_version: &RoomVersionId,
    state_maps: &[StateMap],
    auth_chains: Vec<HashSet<OwnedEventId>>,
    fetch_event: impl Fn(&EventId) -> Option<Pdu>,
) -> Result<StateMap, ResolveError> {
    let rules = versions::rules(room_version)
        .ok_or_else(|| ResolveError::UnsupportedRoomVersion(room_version.clone()))?;
    let Some(state_res_rules) = rules.state_res.v2_rules() else {
        return crate::resolve_v1::resolve_v1(room_version, state_maps, fetch_event);
    };
    let auth_chains = auth_chains.into_iter().map(|chain| chain.into_iter().collect()).collect();
    let fetch_auth_events =
        |event_id: &EventId| fetch_event(event_id).map(|event| event.auth_events.clone());
    state_res::resolve(
        &rules.authorization,
        state_res_rules,
        state_maps.iter(),
        auth_chains,
        &fetch_event,
        |conflicted| {
            let conflicted_ids: HashSet<OwnedEventId> =
                conflicted.values().flatten().cloned().collect();
            Some(conflicted_subgraph(&conflicted_ids, fetch_auth_events).into_iter().collect())
        },
    )
    .map_err(|error| ResolveError::Failed(error.to_string()))
}

/// The conflicted state subgraph (room version 12): every event that lies on an `auth_events`
/// path from one conflicted state event to another, the conflicted events included.
pub fn conflicted_subgraph(
    conflicted: &HashSet<OwnedEventId>,
    fetch_auth_events: impl Fn(&EventId) -> Option<Vec<OwnedEventId>>,
) -> HashSet<OwnedEventId> {
    // Collect every auth ancestor of the conflicted events, with its auth edges.
    let mut edges: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
    let mut stack: Vec<OwnedEventId> = conflicted.iter().cloned().collect();
    while let Some(event_id) = stack.pop() {
        if edges.contains_key(&event_id) {
            continue;
        }
        let auth_events = fetch_auth_events(&event_id).unwrap_or_default();
        stack.extend(auth_events.iter().filter(|id| !edges.contains_key(*id)).cloned());
        edges.insert(event_id, auth_events);
    }
    // An ancestor is in the subgraph when a conflicted event is among its own ancestors
    // (itself included). Memoised depth-first search, iterative to bound the stack.
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), false)];
        while let Some((event_id, children_done)) = stack.pop() {
            if reaches.contains_key(&event_id) {
                continue;
            }
            let parents = edges.get(&event_id).map(Vec::as_slice).unwrap_or_default();
            if children_done {
                let value = conflicted.contains(&event_id)
                    || parents.iter().any(|parent| reaches.get(parent).copied().unwrap_or(false));
                reaches.insert(event_id, value);
            } else {
                stack.push((event_id.clone(), true));
                for parent in parents {
                    if !reaches.contains_key(parent) {
                        stack.push((parent.clone(), false));
                    }
                }
            }
        }
    }
    reaches.into_iter().filter_map(|(event_id, reaches)| reaches.then_some(event_id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> OwnedEventId {
        OwnedEventId::try_from(format!("${name}")).unwrap()
    }

    #[test]
    fn subgraph_holds_paths_between_conflicted_events() {
        // create <- pl1 <- member <- pl2 ; pl2 and pl1 are conflicted.
        let graph: HashMap<OwnedEventId, Vec<OwnedEventId>> = [
            (id("create"), vec![]),
            (id("pl1"), vec![id("create")]),
            (id("member"), vec![id("pl1"), id("create")]),
            (id("pl2"), vec![id("member"), id("create")]),
            (id("other"), vec![id("create")]),
        ]
        .into_iter()
        .collect();
        let conflicted: HashSet<_> = [id("pl1"), id("pl2")].into_iter().collect();
        let subgraph = conflicted_subgraph(&conflicted, |event_id| graph.get(event_id).cloned());
        let expected: HashSet<_> = [id("pl1"), id("member"), id("pl2")].into_iter().collect();
        assert_eq!(subgraph, expected);
    }
}
