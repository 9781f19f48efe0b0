//! Conformance checks for rooms: persisting events with their state, pagination, relations,
//! memberships, aliases, the directory and search.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId, device_id, owned_room_alias_id,
    owned_room_id, room_alias_id, room_id, user_id,
};
use serde_json::json;

use crate::{
    AliasRecord, CurrentState, DataStore, Direction, EventRecord, MembershipChange, PersistEvent,
    PersistedEvent, RelationRecord, StateGroupId, StateSlot, StateSpec, TxnRecord,
};

/// Builds a linear room history through the store, tracking the expected state.
pub(crate) struct RoomBuilder {
    pub store: Arc<dyn DataStore>,
    pub room_id: OwnedRoomId,
    pub head: Option<(OwnedEventId, StateGroupId)>,
    pub expected_state: HashMap<StateSlot, OwnedEventId>,
    name: String,
    counter: usize,
}

pub(crate) fn event_id(name: &str) -> OwnedEventId {
    OwnedEventId::try_from(format!("${name}")).expect("valid event ID")
}

impl RoomBuilder {
    pub async fn new(store: Arc<dyn DataStore>, room: &str) -> Self {
        let room_id = OwnedRoomId::try_from(format!("!{room}:example.org")).expect("valid room ID");
        store.create_room(&room_id, &RoomVersionId::V11, 1).await.unwrap();
        Self {
            store,
            room_id,
            head: None,
            expected_state: HashMap::new(),
            name: room.to_owned(),
            counter: 0,
        }
    }

    pub fn template(
        &mut self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: serde_json::Value,
    ) -> PersistEvent {
        self.counter += 1;
        let name = format!("{}_{}", self.name, self.counter);
        let event_id = event_id(&name);
        let sender: OwnedUserId = ruma::UserId::parse(sender).expect("valid user ID");
        let json = json!({
            "type": kind, "sender": sender, "content": content, "room_id": self.room_id,
            "state_key": state_key, "origin_server_ts": 1000 + self.counter,
        })
        .to_string();
        let state_after_changes = match state_key {
            Some(key) => vec![((kind.to_owned(), key.to_owned()), Some(event_id.clone()))],
            None => Vec::new(),
        };
        let membership_changes = match (kind, state_key) {
            ("m.room.member", Some(key)) => vec![MembershipChange {
                user_id: ruma::UserId::parse(key).expect("valid member"),
                membership: content["membership"].as_str().unwrap_or("join").to_owned(),
                event_id: event_id.clone(),
                displayname: content["displayname"].as_str().map(str::to_owned),
                avatar_url: None,
            }],
            _ => Vec::new(),
        };
        PersistEvent {
            event_id: event_id.clone(),
            room_id: self.room_id.clone(),
            sender,
            event_type: kind.to_owned(),
            state_key: state_key.map(str::to_owned),
            depth: self.counter as i64,
            origin_server_ts: 1000 + self.counter as i64,
            json,
            auth_events: self.head.iter().map(|(id, _)| id.clone()).collect(),
            rejected: false,
            state_before: match &self.head {
                Some((_, group)) => StateSpec::Existing(*group),
                None => StateSpec::New { base: None, changes: Vec::new() },
            },
            state_after_changes,
            new_extremities: vec![event_id],
            current_state: CurrentState::StateAfter,
            membership_changes,
            txn: None,
            relation: None,
            redaction: None,
            redaction_waits_for: None,
            redacted_by: None,
            push_actions: Vec::new(),
            queue_pushes: false,
            federation_destinations: Vec::new(),
            soft_failed: false,
            historical: false,
            new_here: false,
        }
    }

    pub async fn persist(&mut self, event: PersistEvent) -> PersistedEvent {
        let persisted = self.store.persist_event(&event).await.unwrap();
        for (slot, id) in &event.state_after_changes {
            match id {
                Some(id) => self.expected_state.insert(slot.clone(), id.clone()),
                None => self.expected_state.remove(slot),
            };
        }
        self.head = Some((event.event_id.clone(), persisted.state_after));
        persisted
    }

    pub async fn send(
        &mut self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: serde_json::Value,
    ) -> (OwnedEventId, PersistedEvent) {
        let event = self.template(sender, kind, state_key, content);
        let id = event.event_id.clone();
        (id, self.persist(event).await)
    }

    pub async fn join(&mut self, user: &str) -> OwnedEventId {
        self.send(user, "m.room.member", Some(user), json!({"membership": "join"})).await.0
    }
}

/// Persisting an event writes the event, its state, the extremities and a new position.
pub async fn events_persist_with_state_extremities_and_positions(store: Arc<dyn DataStore>) {
    let start = store.current_stream_pos();
    let mut room = RoomBuilder::new(store.clone(), "r1").await;
    let (create, first) =
        room.send("@alice:example.org", "m.room.create", Some(""), json!({})).await;
    assert!(first.stream_pos > start);
    assert_eq!(store.current_stream_pos(), first.stream_pos);
    room.join("@alice:example.org").await;
    let (message, persisted) =
        room.send("@alice:example.org", "m.room.message", None, json!({"body": "hello"})).await;
    assert_eq!(
        persisted.state_before, persisted.state_after,
        "a message must not make a state group"
    );
    assert_eq!(store.forward_extremities(&room.room_id).await.unwrap(), vec![message.clone()]);

    let record = store.get_event(&message).await.unwrap().unwrap();
    assert_eq!(record.room_id, room.room_id);
    assert_eq!(record.stream_pos, persisted.stream_pos);
    assert!(record.json.contains("hello"));
    assert_eq!(store.load_state_group(record.state_after).await.unwrap(), room.expected_state);

    let stored_room = store.get_room(&room.room_id).await.unwrap().unwrap();
    assert_eq!(stored_room.room_version, RoomVersionId::V11);
    assert_eq!(stored_room.current_state_group, Some(persisted.state_after));
    let create_record = store.get_event(&create).await.unwrap().unwrap();
    let create_state = store.load_state_group(create_record.state_after).await.unwrap();
    assert_eq!(create_state.len(), 1);
    assert!(store.create_room(&room.room_id, &RoomVersionId::V11, 1).await.is_err());

    let chain = store.auth_chain(std::slice::from_ref(&message)).await.unwrap();
    assert!(chain.contains(&create) && chain.contains(&message));
    let events =
        store.get_events(&[create.clone(), message.clone(), event_id("missing")]).await.unwrap();
    assert_eq!(events.len(), 2);
}

/// State stays exact through long delta chains and snapshots, at every event.
pub async fn state_groups_stay_correct_across_snapshots(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r2").await;
    room.send("@alice:example.org", "m.room.create", Some(""), json!({})).await;
    let mut checkpoints = Vec::new();
    for index in 0..150 {
        let key = format!("@user{}:example.org", index % 40);
        let (id, persisted) = room
            .send(
                "@alice:example.org",
                "m.room.member",
                Some(&key),
                json!({"membership": if index % 3 == 0 { "leave" } else { "join" }}),
            )
            .await;
        if index % 10 == 0 {
            room.send("@alice:example.org", "m.room.message", None, json!({"body": "tick"})).await;
        }
        checkpoints.push((id, persisted.state_after, room.expected_state.clone()));
    }
    // Many groups at once give what each gives alone (chains shared and not, an unknown
    // group left out).
    let groups: Vec<StateGroupId> =
        checkpoints.iter().map(|(_, group, _)| *group).chain([i64::MAX - 1]).collect();
    let together = store.load_state_groups(&groups).await.unwrap();
    assert_eq!(together.len(), checkpoints.len());
    for (event_id, group, expected) in &checkpoints {
        assert_eq!(together.get(group), Some(expected), "state after {event_id}, in a batch");
    }
    for (event_id, group, expected) in checkpoints {
        assert_eq!(
            store.load_state_group(group).await.unwrap(),
            expected,
            "state after {event_id}"
        );
    }
    // A group may also remove a slot.
    let removal = store
        .persist_event(&{
            let mut event =
                room.template("@alice:example.org", "m.room.message", None, json!({"body": "x"}));
            event.state_before = StateSpec::New {
                base: room.head.as_ref().map(|(_, group)| *group),
                changes: vec![(("m.room.member".into(), "@user1:example.org".into()), None)],
            };
            event
        })
        .await
        .unwrap();
    let state = store.load_state_group(removal.state_before).await.unwrap();
    assert!(!state.contains_key(&("m.room.member".to_owned(), "@user1:example.org".to_owned())));
    assert_eq!(state.len(), room.expected_state.len() - 1);
}

/// A persist that fails (here: a duplicate event ID) leaves no trace.
pub async fn a_failed_persist_changes_nothing(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r3").await;
    room.send("@alice:example.org", "m.room.create", Some(""), json!({})).await;
    let (message, _) =
        room.send("@alice:example.org", "m.room.message", None, json!({"body": "one"})).await;
    let pos = store.current_stream_pos();
    let group_before = store.get_room(&room.room_id).await.unwrap().unwrap().current_state_group;
    let mut duplicate =
        room.template("@alice:example.org", "m.room.name", Some(""), json!({"name": "n"}));
    duplicate.event_id = message.clone();
    duplicate.new_extremities = vec![message.clone(), event_id("other")];
    assert!(store.persist_event(&duplicate).await.is_err());
    assert_eq!(store.current_stream_pos(), pos, "the stream position moved");
    assert_eq!(store.forward_extremities(&room.room_id).await.unwrap(), vec![message.clone()]);
    assert_eq!(
        store.get_room(&room.room_id).await.unwrap().unwrap().current_state_group,
        group_before
    );
    // The store still works afterwards. Positions grow; a failed write's may be skipped (on
    // PostgreSQL it came from a sequence shared by every process).
    let (_, next) =
        room.send("@alice:example.org", "m.room.message", None, json!({"body": "two"})).await;
    assert!(next.stream_pos > pos);
    assert_eq!(store.current_stream_pos(), next.stream_pos);
}

/// Events page back and forth by position, with bounds.
pub async fn timeline_pagination_and_positions(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r4").await;
    let mut other = RoomBuilder::new(store.clone(), "r5").await;
    let (_, create) = room.send("@alice:example.org", "m.room.create", Some(""), json!({})).await;
    let mut positions = Vec::new();
    for index in 0..10 {
        let (_, persisted) =
            room.send("@alice:example.org", "m.room.message", None, json!({"body": index})).await;
        positions.push(persisted.stream_pos);
        other.send("@bob:example.org", "m.room.message", None, json!({"body": index})).await;
    }
    let newest =
        store.room_events(&room.room_id, i64::MAX, None, Direction::Backward, 3).await.unwrap();
    let newest_positions: Vec<i64> = newest.iter().map(|event| event.stream_pos).collect();
    assert_eq!(newest_positions, vec![positions[9], positions[8], positions[7]]);
    let older = store
        .room_events(&room.room_id, positions[7], None, Direction::Backward, 100)
        .await
        .unwrap();
    assert_eq!(older.len(), 8, "seven messages and the create event");
    let forward = store
        .room_events(&room.room_id, positions[2], Some(positions[5]), Direction::Forward, 100)
        .await
        .unwrap();
    let forward_positions: Vec<i64> = forward.iter().map(|event| event.stream_pos).collect();
    assert_eq!(forward_positions, positions[3..=5].to_vec());
    let bounded = store
        .room_events(&room.room_id, positions[9], Some(positions[6]), Direction::Backward, 100)
        .await
        .unwrap();
    assert_eq!(bounded.len(), 2);

    // Several rooms at once: each room's newest events as `room_events` gives them.
    let ids_of = |events: &[EventRecord]| -> Vec<OwnedEventId> {
        events.iter().map(|event| event.event_id.clone()).collect()
    };
    let both = [room.room_id.as_ref(), other.room_id.as_ref()];
    let latest = store.latest_room_event_ids(&both, i64::MAX, None, 3).await.unwrap();
    assert_eq!(latest.get(&room.room_id), Some(&ids_of(&newest)));
    let other_newest =
        store.room_events(&other.room_id, i64::MAX, None, Direction::Backward, 3).await.unwrap();
    assert_eq!(latest.get(&other.room_id), Some(&ids_of(&other_newest)));
    let latest = store.latest_room_event_ids(&both, positions[9], Some(positions[6]), 100).await;
    let latest = latest.unwrap();
    assert_eq!(latest.get(&room.room_id), Some(&ids_of(&bounded)));
    assert_eq!(latest.get(&other.room_id).map(Vec::len), Some(3), "three of the other's");
    let unknown = room_id!("!unknown:example.org");
    let latest = store.latest_room_event_ids(&[unknown], i64::MAX, None, 3).await.unwrap();
    assert!(latest.get(unknown).is_none_or(Vec::is_empty));
    let groups = store.current_state_groups(&[room.room_id.as_ref(), unknown]).await.unwrap();
    let current = store.get_room(&room.room_id).await.unwrap().unwrap().current_state_group;
    assert_eq!(groups.get(&room.room_id).copied(), current);
    assert!(!groups.contains_key(unknown));

    let at = store.last_event_at(&room.room_id, positions[4] + 1).await.unwrap().unwrap();
    assert_eq!(at.stream_pos, positions[4]);
    let latest_of = |types: &'static [&'static str], pos: i64| {
        let store = store.clone();
        let room_id = room.room_id.clone();
        async move { store.last_event_of_types(&room_id, types, pos).await.unwrap() }
    };
    assert_eq!(latest_of(&["m.room.message"], positions[4]).await, Some(positions[4]));
    assert_eq!(latest_of(&["m.room.message"], i64::MAX).await, Some(positions[9]));
    assert_eq!(
        latest_of(&["m.room.create", "m.room.name"], i64::MAX).await,
        Some(create.stream_pos)
    );
    assert_eq!(latest_of(&["m.room.message"], create.stream_pos).await, None);
    assert_eq!(latest_of(&[], i64::MAX).await, None);
    let rooms = store
        .rooms_with_events_between(
            &[room.room_id.clone(), other.room_id.clone()],
            positions[9],
            i64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(rooms, vec![other.room_id.clone()]);
    let by_time =
        store.event_at_timestamp(&room.room_id, 1003, Direction::Forward).await.unwrap().unwrap();
    assert!(by_time.json.contains("1003"));
    let by_time_back =
        store.event_at_timestamp(&room.room_id, 1003, Direction::Backward).await.unwrap().unwrap();
    assert!(by_time_back.json.contains("1003"));
}

/// A client transaction maps to the event it made.
pub async fn transactions_are_found_again(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r6").await;
    let txn = TxnRecord {
        user_id: user_id!("@alice:example.org").to_owned(),
        device_id: device_id!("D").to_owned(),
        txn_id: "t1".into(),
    };
    assert_eq!(store.event_for_txn(&txn).await.unwrap(), None);
    let mut event =
        room.template("@alice:example.org", "m.room.message", None, json!({"body": "x"}));
    event.txn = Some(txn.clone());
    let id = event.event_id.clone();
    room.persist(event).await;
    assert_eq!(store.event_for_txn(&txn).await.unwrap(), Some(id.clone()));
    assert_eq!(store.get_event(&id).await.unwrap().unwrap().txn, Some(txn.clone()));
    let other_device = TxnRecord { device_id: device_id!("E").to_owned(), ..txn.clone() };
    assert_eq!(store.event_for_txn(&other_device).await.unwrap(), None);
    let mut again =
        room.template("@alice:example.org", "m.room.message", None, json!({"body": "y"}));
    again.txn = Some(txn);
    assert!(store.persist_event(&again).await.is_err(), "a transaction ID was used twice");
}

/// A redaction replaces the stored JSON of its target and drops it from search.
pub async fn redaction_replaces_the_stored_event(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r7").await;
    let (target, _) = room
        .send("@alice:example.org", "m.room.message", None, json!({"body": "secret words"}))
        .await;
    assert_eq!(
        store.search_messages(&[room.room_id.clone()], "secret", None, 10).await.unwrap().len(),
        1
    );
    let mut redaction =
        room.template("@alice:example.org", "m.room.redaction", None, json!({"redacts": target}));
    redaction.redaction = Some((target.clone(), "{\"content\":{}}".into()));
    let redaction_id = redaction.event_id.clone();
    room.persist(redaction).await;
    let stored = store.get_event(&target).await.unwrap().unwrap();
    assert!(!stored.json.contains("secret"));
    assert_eq!(stored.redacted_by, Some(redaction_id));
    assert!(
        store
            .search_messages(&[room.room_id.clone()], "secret", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A redaction stored before its target waits for it; the target is stored redacted by it
/// and waits no more. A redaction kept with history changes a target already held.
pub async fn redactions_wait_for_their_target(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r7w").await;
    room.join("@alice:example.org").await;
    let late = event_id("r7w_late");
    let mut redaction =
        room.template("@alice:example.org", "m.room.redaction", None, json!({"redacts": late}));
    redaction.redaction_waits_for = Some(late.clone());
    let redaction_id = redaction.event_id.clone();
    room.persist(redaction).await;
    assert_eq!(store.waiting_redactions(&late).await.unwrap(), vec![redaction_id.clone()]);

    let mut target =
        room.template("@alice:example.org", "m.room.message", None, json!({"body": "late"}));
    target.event_id = late.clone();
    target.new_extremities = vec![late.clone()];
    target.json = "{\"content\":{}}".into();
    target.redacted_by = Some(redaction_id.clone());
    room.persist(target).await;
    let stored = store.get_event(&late).await.unwrap().unwrap();
    assert_eq!(stored.redacted_by, Some(redaction_id));
    assert_eq!(stored.json, "{\"content\":{}}");
    assert!(store.waiting_redactions(&late).await.unwrap().is_empty());

    // History: a redaction fetched from another server, of an event held already.
    let (held, _) =
        room.send("@alice:example.org", "m.room.message", None, json!({"body": "old words"})).await;
    let mut old = room.template("@alice:example.org", "m.room.redaction", None, json!({}));
    old.historical = true;
    old.new_extremities = Vec::new();
    old.current_state = CurrentState::Unchanged;
    old.redaction = Some((held.clone(), "{\"content\":{}}".into()));
    let old_id = old.event_id.clone();
    store.persist_event(&old).await.unwrap();
    let stored = store.get_event(&held).await.unwrap().unwrap();
    assert!(!stored.json.contains("old words"), "{}", stored.json);
    assert_eq!(stored.redacted_by, Some(old_id));
}

/// Relations are queryable; the latest edit and thread summaries are found.
pub async fn relations_edits_and_threads(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r8").await;
    let (root, _) =
        room.send("@alice:example.org", "m.room.message", None, json!({"body": "root"})).await;
    let mut related = Vec::new();
    for (index, (sender, rel_type)) in [
        ("@bob:example.org", "m.thread"),
        ("@alice:example.org", "m.replace"),
        ("@bob:example.org", "m.thread"),
        ("@alice:example.org", "m.replace"),
        ("@bob:example.org", "m.replace"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut event = room.template(sender, "m.room.message", None, json!({"body": index}));
        event.relation =
            Some(RelationRecord { relates_to: root.clone(), rel_type: rel_type.into(), key: None });
        let id = event.event_id.clone();
        room.persist(event).await;
        related.push(id);
    }
    let all =
        store.relations(&root, None, None, i64::MAX, None, Direction::Backward, 10).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].event_id, related[4]);
    let threads = store
        .relations(&root, Some("m.thread"), None, 0, None, Direction::Forward, 10)
        .await
        .unwrap();
    let thread_ids: Vec<_> = threads.iter().map(|event| event.event_id.clone()).collect();
    assert_eq!(thread_ids, vec![related[0].clone(), related[2].clone()]);
    let limited = store
        .relations(&root, None, Some("m.room.message"), i64::MAX, None, Direction::Backward, 2)
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);

    let edit = store.latest_edit(&root, user_id!("@alice:example.org")).await.unwrap().unwrap();
    assert_eq!(edit.event_id, related[3], "an edit by another sender must not count");
    let (count, latest, participated) =
        store.thread_summary(&root, user_id!("@carol:example.org")).await.unwrap().unwrap();
    assert_eq!((count, latest.event_id, participated), (2, related[2].clone(), false));
    let (_, _, bob_participated) =
        store.thread_summary(&root, user_id!("@bob:example.org")).await.unwrap().unwrap();
    assert!(bob_participated);
    let (_, _, root_sender) =
        store.thread_summary(&root, user_id!("@alice:example.org")).await.unwrap().unwrap();
    assert!(root_sender, "the root's sender takes part in the thread");
    assert!(
        store.thread_summary(&related[0], user_id!("@bob:example.org")).await.unwrap().is_none()
    );

    let with_relations =
        store.events_with_relations(&[root.clone(), related[0].clone()]).await.unwrap();
    assert_eq!(with_relations, std::collections::HashSet::from([root.clone()]));
    let roots = store.thread_roots(&room.room_id, None, None, 10).await.unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].0.event_id, root);
    assert!(
        store
            .thread_roots(&room.room_id, None, Some(user_id!("@carol:example.org")), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .thread_roots(&room.room_id, None, Some(user_id!("@bob:example.org")), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store.thread_roots(&room.room_id, Some(roots[0].1), None, 10).await.unwrap().is_empty()
    );
}

/// Memberships follow the current state and feed room and member lists.
pub async fn memberships_track_current_state(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r9").await;
    room.join("@alice:example.org").await;
    let since = store.current_stream_pos();
    room.join("@bob:example.org").await;
    room.send(
        "@alice:example.org",
        "m.room.member",
        Some("@carol:example.org"),
        json!({"membership": "invite"}),
    )
    .await;
    let joined = store.members_of_room(&room.room_id, &["join"]).await.unwrap();
    assert_eq!(joined.len(), 2);
    let everyone = store.members_of_room(&room.room_id, &[]).await.unwrap();
    assert_eq!(everyone.len(), 3);
    let carol = user_id!("@carol:example.org");
    assert_eq!(
        store.get_membership(&room.room_id, carol).await.unwrap().unwrap().membership,
        "invite"
    );
    assert_eq!(store.rooms_of_user(carol, &["invite"]).await.unwrap().len(), 1);
    assert!(store.rooms_of_user(carol, &["join"]).await.unwrap().is_empty());
    let changes =
        store.membership_changes_since(user_id!("@bob:example.org"), since).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert!(
        store
            .membership_changes_since(user_id!("@alice:example.org"), since)
            .await
            .unwrap()
            .is_empty()
    );

    room.send(
        "@bob:example.org",
        "m.room.member",
        Some("@bob:example.org"),
        json!({"membership": "leave"}),
    )
    .await;
    let bob = user_id!("@bob:example.org");
    assert_eq!(store.rooms_of_user(bob, &["leave"]).await.unwrap().len(), 1);
    assert!(!store.is_room_forgotten(bob, &room.room_id).await.unwrap());
    store.forget_room(bob, &room.room_id).await.unwrap();
    assert!(
        store.rooms_of_user(bob, &[]).await.unwrap().is_empty(),
        "a forgotten room is still listed"
    );
    assert!(store.is_room_forgotten(bob, &room.room_id).await.unwrap());
    room.join("@bob:example.org").await;
    assert_eq!(store.rooms_of_user(bob, &["join"]).await.unwrap().len(), 1, "rejoining un-forgets");
    assert!(!store.is_room_forgotten(bob, &room.room_id).await.unwrap());
}

/// Aliases are unique; published rooms and the user directory list what they should;
/// message search finds words.
pub async fn aliases_directory_and_search(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "r10").await;
    room.join("@alice:example.org").await;
    room.send(
        "@alice:example.org",
        "m.room.message",
        None,
        json!({"body": "Meeting at NOON, 100% sure"}),
    )
    .await;
    let alias = AliasRecord {
        alias: owned_room_alias_id!("#town:example.org"),
        room_id: room.room_id.clone(),
        creator: user_id!("@alice:example.org").to_owned(),
    };
    assert!(store.create_alias(&alias).await.unwrap());
    assert!(!store.create_alias(&alias).await.unwrap());
    assert_eq!(
        store.get_alias(room_alias_id!("#town:example.org")).await.unwrap(),
        Some(alias.clone())
    );
    assert_eq!(store.aliases_of_room(&room.room_id).await.unwrap(), vec![alias]);
    assert!(store.delete_alias(room_alias_id!("#town:example.org")).await.unwrap());
    assert!(!store.delete_alias(room_alias_id!("#town:example.org")).await.unwrap());

    assert!(store.published_rooms().await.unwrap().is_empty());
    store.set_room_published(&room.room_id, true).await.unwrap();
    let published = store.published_rooms().await.unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].joined_members, 1);
    assert!(store.get_room(&room.room_id).await.unwrap().unwrap().published);

    let found = store.search_messages(&[room.room_id.clone()], "noon", None, 10).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        store.search_messages(&[room.room_id.clone()], "100%", None, 10).await.unwrap().len(),
        1
    );
    assert!(
        store.search_messages(&[room.room_id.clone()], "_", None, 10).await.unwrap().is_empty()
    );
    assert!(
        store
            .search_messages(&[owned_room_id!("!other:example.org")], "noon", None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    for name in ["alice", "bob", "carol"] {
        let record = crate::UserRecord {
            user_id: ruma::UserId::parse(format!("@{name}:example.org")).unwrap(),
            password_hash: None,
            displayname: Some(format!("{name} the tester")),
            avatar_url: None,
            is_admin: false,
            deactivated: false,
            created_ts: 1,
        };
        store.create_user(&record).await.unwrap();
    }
    // By display name or localpart, whatever the case; never by the server's name.
    let server = ruma::server_name!("example.org");
    let testers = store.user_directory_candidates(server, "tester", 10).await.unwrap();
    let names: Vec<_> = testers.iter().map(|user| user.user_id.to_string()).collect();
    assert_eq!(names, vec!["@alice:example.org", "@bob:example.org", "@carol:example.org"]);
    let by_name = store.user_directory_candidates(server, "ALICE", 10).await.unwrap();
    assert_eq!(by_name.len(), 1);
    assert!(store.user_directory_candidates(server, "example", 10).await.unwrap().is_empty());
    assert_eq!(store.user_directory_candidates(server, "tester", 2).await.unwrap().len(), 2);
}

/// A room's record and forward extremities read the same from `store` (which may remember
/// them) as from a store opened afresh on the database (`fresh`), after each write that
/// changes them: events that move the room on with and without a new current state, a fork
/// of two extremities, a soft-failed event, and the directory and shut-down flags.
pub async fn room_heads_read_the_same_after<F, Fut>(store: Arc<dyn DataStore>, fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn DataStore>>,
{
    async fn check<F, Fut>(store: &Arc<dyn DataStore>, fresh: &F, room: &RoomBuilder, step: &str)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Arc<dyn DataStore>>,
    {
        let reader = fresh().await;
        assert_eq!(
            store.get_room(&room.room_id).await.unwrap(),
            reader.get_room(&room.room_id).await.unwrap(),
            "room record after {step}"
        );
        assert_eq!(
            store.forward_extremities(&room.room_id).await.unwrap(),
            reader.forward_extremities(&room.room_id).await.unwrap(),
            "forward extremities after {step}"
        );
    }
    let mut room = RoomBuilder::new(store.clone(), "heads").await;
    // Read before anything is there, so that a remembered answer has to change.
    check(&store, &fresh, &room, "creating the room").await;
    room.send("@alice:example.org", "m.room.create", Some(""), json!({})).await;
    check(&store, &fresh, &room, "the create event").await;
    room.join("@alice:example.org").await;
    check(&store, &fresh, &room, "a join").await;
    let group = room.head.as_ref().map(|(_, group)| *group);
    let mut message = room.template("@alice:example.org", "m.room.message", None, json!({}));
    message.current_state = CurrentState::Unchanged;
    room.persist(message).await;
    check(&store, &fresh, &room, "a message that keeps the current state").await;
    assert_eq!(
        store.get_room(&room.room_id).await.unwrap().unwrap().current_state_group,
        group,
        "a message keeps the current state group"
    );
    // Two events after the same one: the room forks, its extremities both (sorted).
    let (_, base) = room.head.clone().unwrap();
    let mut first = room.template("@alice:example.org", "m.room.message", None, json!({}));
    first.current_state = CurrentState::Unchanged;
    let first_id = first.event_id.clone();
    room.persist(first).await;
    let mut second = room.template("@alice:example.org", "m.room.topic", Some(""), json!({}));
    second.state_before = StateSpec::Existing(base);
    second.new_extremities = vec![second.event_id.clone(), first_id];
    second.current_state = CurrentState::New(StateSpec::New {
        base: Some(base),
        changes: vec![(("m.room.topic".into(), String::new()), Some(second.event_id.clone()))],
    });
    room.persist(second).await;
    check(&store, &fresh, &room, "a fork").await;
    assert_eq!(store.forward_extremities(&room.room_id).await.unwrap().len(), 2);
    let mut soft_failed = room.template("@mallory:example.org", "m.room.message", None, json!({}));
    soft_failed.soft_failed = true;
    soft_failed.current_state = CurrentState::Unchanged;
    soft_failed.new_extremities = store.forward_extremities(&room.room_id).await.unwrap();
    store.persist_event(&soft_failed).await.unwrap();
    check(&store, &fresh, &room, "a soft-failed event").await;
    store.set_room_published(&room.room_id, true).await.unwrap();
    check(&store, &fresh, &room, "publishing").await;
    assert!(store.set_room_shut_down(&room.room_id, 77).await.unwrap());
    check(&store, &fresh, &room, "shutting down").await;
    assert_eq!(store.get_room(&room.room_id).await.unwrap().unwrap().shut_down_ts, Some(77));
    room.send("@alice:example.org", "m.room.name", Some(""), json!({"name": "n"})).await;
    check(&store, &fresh, &room, "a state event after the fork").await;
}
