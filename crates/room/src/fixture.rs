//! Fixture rooms held in memory: real signed PDUs, authorised and resolved by the same rules a
//! live room uses, with forks made on demand. For tests of room rules and of the layers above.

use std::collections::{HashMap, HashSet};

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedServerName, RoomVersionId,
    UInt, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::value::to_raw_value;

use crate::{
    EventTemplate, Pdu, SigningKey, StateMap, auth, build_pdu, resolve::resolve, versions,
};

/// A room built in memory.
pub struct FixtureRoom {
    /// The room version.
    pub version: RoomVersionId,
    /// The room ID.
    pub room_id: OwnedRoomId,
    /// Every event, accepted or rejected.
    pub events: HashMap<OwnedEventId, Pdu>,
    /// The create event.
    pub create_event_id: OwnedEventId,
    server: OwnedServerName,
    key: SigningKey,
    state_after: HashMap<OwnedEventId, StateMap>,
    clock: u64,
}

impl FixtureRoom {
    /// Creates a public room: the create event, the creator's join, power levels giving the
    /// creator 100 (implicitly since v12) and a public join rule.
    pub fn new(version: RoomVersionId, creator: &UserId) -> Self {
        let key = SigningKey::generate();
        let server = creator.server_name().to_owned();
        let mut content = serde_json::json!({ "room_version": version.as_str() });
        if !versions::rules(&version)
            .is_some_and(|rules| rules.authorization.use_room_create_sender)
        {
            content["creator"] = serde_json::json!(creator);
        }
        let template = EventTemplate {
            room_id: (!versions::room_id_is_create_event_hash(&version)).then(|| {
                OwnedRoomId::try_from(format!("!fixture:{server}"))
                    .expect("invariant: fixture room IDs are valid")
            }),
            sender: creator.to_owned(),
            kind: TimelineEventType::RoomCreate,
            state_key: Some(String::new()),
            content: to_raw_value(&content).expect("invariant: JSON serialises"),
            redacts: None,
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            depth: 1,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::MIN),
        };
        let create = build_pdu(&template, &version, &server, &key).expect("create event builds");
        let mut room = Self {
            room_id: create.room_id.clone(),
            create_event_id: create.event_id.clone(),
            version,
            events: HashMap::new(),
            server,
            key,
            state_after: HashMap::new(),
            clock: 1,
        };
        let mut state = StateMap::new();
        state.insert((StateEventType::RoomCreate, String::new()), create.event_id.clone());
        room.state_after.insert(create.event_id.clone(), state);
        room.events.insert(create.event_id.clone(), create);

        let join = room.member(creator, creator, "join");
        let mut users = serde_json::Map::new();
        if !versions::rules(&room.version)
            .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators)
        {
            users.insert(creator.to_string(), serde_json::json!(100));
        }
        let power_levels = room
            .send_state(
                &[join],
                creator,
                "m.room.power_levels",
                "",
                serde_json::json!({ "users": users }),
            )
            .expect("power levels are allowed");
        room.send_state(
            &[power_levels],
            creator,
            "m.room.join_rules",
            "",
            serde_json::json!({ "join_rule": "public" }),
        )
        .expect("join rules are allowed");
        room
    }

    /// The key the fixture's server signs with.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The single latest event when the room has not forked.
    pub fn head(&self) -> OwnedEventId {
        let referenced: HashSet<&OwnedEventId> =
            self.events.values().flat_map(|event| event.prev_events.iter()).collect();
        let mut heads: Vec<&Pdu> =
            self.events.values().filter(|event| !referenced.contains(&event.event_id)).collect();
        heads.sort_by_key(|event| (event.depth, event.origin_server_ts));
        heads
            .last()
            .map(|event| event.event_id.clone())
            .unwrap_or_else(|| self.create_event_id.clone())
    }

    /// Sends a membership event after the current head, returning its ID (panics if refused).
    pub fn member(&mut self, sender: &UserId, target: &UserId, membership: &str) -> OwnedEventId {
        let head = self.head();
        self.send_state(
            &[head],
            sender,
            "m.room.member",
            target.as_str(),
            serde_json::json!({ "membership": membership }),
        )
        .expect("membership is allowed")
    }

    /// Sends a state event after the given events.
    pub fn send_state(
        &mut self,
        prev_events: &[OwnedEventId],
        sender: &UserId,
        kind: &str,
        state_key: &str,
        content: serde_json::Value,
    ) -> Result<OwnedEventId, auth::AuthError> {
        self.send(prev_events, sender, kind, Some(state_key), content)
    }

    /// Sends an event after the given events: the state before it is resolved from theirs, its
    /// auth events are picked from that state, and the auth rules are applied.
    pub fn send(
        &mut self,
        prev_events: &[OwnedEventId],
        sender: &UserId,
        kind: &str,
        state_key: Option<&str>,
        content: serde_json::Value,
    ) -> Result<OwnedEventId, auth::AuthError> {
        let state_before = self.state_before(prev_events);
        let kind = TimelineEventType::from(kind);
        let content = to_raw_value(&content).expect("invariant: JSON serialises");
        let auth_events = auth::select_auth_events(
            &self.version,
            &kind,
            sender,
            state_key,
            &content,
            &state_before,
        )?;
        self.clock += 1;
        let depth = prev_events
            .iter()
            .filter_map(|id| self.events.get(id))
            .map(|event| event.depth)
            .max()
            .unwrap_or(0)
            + 1;
        let template = EventTemplate {
            room_id: Some(self.room_id.clone()),
            sender: sender.to_owned(),
            kind,
            state_key: state_key.map(str::to_owned),
            content,
            redacts: None,
            prev_events: prev_events.to_vec(),
            auth_events,
            depth,
            origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new_saturating(self.clock)),
        };
        let pdu = build_pdu(&template, &self.version, &self.server, &self.key)
            .map_err(|error| auth::AuthError::Refused(error.to_string()))?;
        auth::check_event(
            &self.version,
            &pdu,
            |id| self.events.get(id).cloned(),
            |kind, key| {
                state_before
                    .get(&(kind.clone(), key.to_owned()))
                    .and_then(|id| self.events.get(id))
                    .cloned()
            },
        )?;
        let mut state_after = state_before;
        if let Some(slot) = pdu.state_slot() {
            state_after.insert(slot, pdu.event_id.clone());
        }
        let event_id = pdu.event_id.clone();
        self.state_after.insert(event_id.clone(), state_after);
        self.events.insert(event_id.clone(), pdu);
        Ok(event_id)
    }

    /// The state after an event.
    pub fn state_after(&self, event_id: &EventId) -> Option<&StateMap> {
        self.state_after.get(event_id)
    }

    /// The state before an event with these `prev_events`: theirs, resolved when they differ.
    pub fn state_before(&self, prev_events: &[OwnedEventId]) -> StateMap {
        let maps: Vec<StateMap> =
            prev_events.iter().filter_map(|id| self.state_after.get(id).cloned()).collect();
        match maps.len() {
            0 => StateMap::new(),
            1 => maps.into_iter().next().unwrap_or_default(),
            _ => {
                let auth_chains = maps.iter().map(|map| self.auth_chain(map.values())).collect();
                resolve(&self.version, &maps, auth_chains, |id| self.events.get(id).cloned())
                    .expect("fixture state resolves")
            }
        }
    }

    /// Every auth ancestor of the given events (the events themselves included).
    pub fn auth_chain<'a>(
        &self,
        start: impl Iterator<Item = &'a OwnedEventId>,
    ) -> HashSet<OwnedEventId> {
        let mut seen = HashSet::new();
        let mut stack: Vec<OwnedEventId> = start.cloned().collect();
        while let Some(id) = stack.pop() {
            if seen.insert(id.clone())
                && let Some(event) = self.events.get(&id)
            {
                stack.extend(event.auth_events.iter().cloned());
            }
        }
        seen
    }

    /// The event filling a state slot in a state map.
    pub fn state_event<'a>(&'a self, state: &StateMap, kind: &str, key: &str) -> Option<&'a Pdu> {
        state.get(&(StateEventType::from(kind), key.to_owned())).and_then(|id| self.events.get(id))
    }
}
