//! `/sync` details real clients rely on: full state that leaves the timeline where `since` put
//! it, the shape of joined rooms, and what each room gets when many come in one sync.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

fn joined<'a>(sync: &'a Value, room_id: &str) -> &'a Value {
    &sync["rooms"]["join"][room_id]
}

fn bodies(room: &Value) -> Vec<&str> {
    room["timeline"]["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|event| event["content"]["body"].as_str()).collect())
        .unwrap_or_default()
}

fn types(room: &Value, section: &str) -> Vec<String> {
    room[section]["events"]
        .as_array()
        .map(|events| {
            events.iter().filter_map(|event| event["type"].as_str()).map(str::to_owned).collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn full_state_does_not_reset_the_timeline() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({ "name": "n" })).await;
    alice.send_text(&room_id, "old one").await;
    alice.send_text(&room_id, "old two").await;
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    // Nothing new: the room comes with all its state and an empty timeline.
    let full = alice.sync(&format!("since={since}&full_state=true&timeout=0")).await;
    let room = joined(&full, &room_id);
    assert!(bodies(room).is_empty(), "old events sent again: {room}");
    let state = types(room, "state");
    for kind in ["m.room.create", "m.room.power_levels", "m.room.name", "m.room.member"] {
        assert!(state.iter().any(|have| have == kind), "{kind} missing from {state:?}");
    }

    // Something new: only it is in the timeline, and the state is the state before it.
    alice.send_text(&room_id, "new").await;
    let full = alice.sync(&format!("since={since}&full_state=true&timeout=0")).await;
    let room = joined(&full, &room_id);
    assert_eq!(bodies(room), vec!["new"]);
    assert_eq!(room["timeline"]["limited"], false);
    assert!(types(room, "state").iter().any(|kind| kind == "m.room.create"), "{room}");
}

#[tokio::test]
async fn joined_and_left_rooms_always_carry_every_section() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let left = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    bob.join(&left).await;
    let first = bob.sync("timeout=0").await;
    for key in ["join", "invite", "leave", "knock"] {
        assert!(first["rooms"][key].is_object(), "rooms.{key} missing: {}", first["rooms"]);
    }
    let room = joined(&first, &room_id);
    assert_eq!(room["timeline"]["limited"], false, "{room}");
    for section in ["state", "ephemeral", "account_data"] {
        assert!(room[section]["events"].is_array(), "{section} missing: {room}");
    }

    // Only a typing notice: the room still has every section, all empty but ephemeral.
    let since = first["next_batch"].as_str().unwrap();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/typing/{}", alice.user()),
            json!({ "typing": true, "timeout": 10_000 }),
        )
        .await
        .ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{left}/leave"), json!({})).await.ok();
    let next = bob.sync(&format!("since={since}&timeout=0")).await;
    let room = joined(&next, &room_id);
    assert_eq!(room["timeline"], json!({ "events": [], "limited": false }), "{room}");
    assert_eq!(room["state"], json!({ "events": [] }));
    assert_eq!(room["account_data"], json!({ "events": [] }));
    assert_eq!(types(room, "ephemeral"), vec!["m.typing"]);
    let gone = &next["rooms"]["leave"][&left];
    assert_eq!(gone["timeline"]["limited"], false, "{gone}");
    assert!(gone["state"]["events"].is_array() && gone["account_data"]["events"].is_array());
}

#[tokio::test]
async fn a_timeline_limit_of_zero_gives_state_and_no_events() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({ "name": "before" })).await;
    alice.send_text(&room_id, "hello").await;
    let filter =
        rhizome_testkit::encode(&json!({ "room": { "timeline": { "limit": 0 } } }).to_string());
    let first = alice.sync(&format!("filter={filter}&timeout=0")).await;
    let room = joined(&first, &room_id);
    assert_eq!(room["timeline"]["events"], json!([]), "{room}");
    assert_eq!(room["timeline"]["limited"], true);
    assert!(types(room, "state").iter().any(|kind| kind == "m.room.create"), "{room}");

    // Incrementally: no events, and the state that changed.
    let since = first["next_batch"].as_str().unwrap();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"),
            json!({ "name": "after" }),
        )
        .await
        .ok();
    alice.send_text(&room_id, "again").await;
    let next = alice.sync(&format!("since={since}&filter={filter}&timeout=0")).await;
    let room = joined(&next, &room_id);
    assert_eq!(room["timeline"]["events"], json!([]), "{room}");
    assert_eq!(room["timeline"]["limited"], true);
    let names: Vec<&Value> = room["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.name")
        .collect();
    assert_eq!(names.len(), 1, "{room}");
    assert_eq!(names[0]["content"]["name"], "after");
}

/// `(type, state_key)` of a section's events, sorted.
fn slots(room: &Value, section: &str) -> Vec<(String, String)> {
    let mut slots: Vec<(String, String)> = room[section]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|event| {
                    let kind = event["type"].as_str().unwrap_or_default().to_owned();
                    (kind, event["state_key"].as_str().unwrap_or_default().to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    slots.sort();
    slots
}

fn slot(kind: &str, key: &str) -> (String, String) {
    (kind.to_owned(), key.to_owned())
}

#[tokio::test]
async fn a_gapped_sync_brings_every_state_change_of_the_gap_and_the_speakers() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let dave = Api::new_user(&server.base_url, "dave").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    // The gap: a new name and topic, Carol joins, Dave comes and goes; then Carol talks.
    let state = format!("/_matrix/client/v3/rooms/{room_id}/state");
    alice.put(&format!("{state}/m.room.name/"), json!({ "name": "renamed" })).await.ok();
    alice.put(&format!("{state}/m.room.topic/"), json!({ "topic": "news" })).await.ok();
    carol.join(&room_id).await;
    dave.join(&room_id).await;
    dave.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    for index in 0..5 {
        carol.send_text(&room_id, &format!("c{index}")).await;
    }
    alice.send_text(&room_id, "last").await;

    let filter = |lazy: bool| {
        let filter = json!({ "room": {
            "timeline": { "limit": 2 }, "state": { "lazy_load_members": lazy },
        } });
        rhizome_testkit::encode(&filter.to_string())
    };
    let gapped = bob.sync(&format!("since={since}&filter={}&timeout=0", filter(false))).await;
    let room = joined(&gapped, &room_id);
    assert_eq!(bodies(room), vec!["c4", "last"]);
    assert_eq!(room["timeline"]["limited"], true);
    assert_eq!(
        slots(room, "state"),
        vec![
            slot("m.room.member", carol.user()),
            slot("m.room.member", dave.user()),
            slot("m.room.name", ""),
            slot("m.room.topic", ""),
        ]
    );

    // Lazily loaded: the non-member changes, and the members of those who speak.
    let lazy = bob.sync(&format!("since={since}&filter={}&timeout=0", filter(true))).await;
    let room = joined(&lazy, &room_id);
    let got = slots(room, "state");
    for wanted in [
        slot("m.room.member", carol.user()),
        slot("m.room.member", alice.user()),
        slot("m.room.name", ""),
        slot("m.room.topic", ""),
    ] {
        assert!(got.contains(&wanted), "{wanted:?} missing from {got:?}");
    }
    assert!(!got.contains(&slot("m.room.member", dave.user())), "{got:?}");

    // A timeline filtered to messages hides state events: they come in the state instead.
    let since = lazy["next_batch"].as_str().unwrap().to_owned();
    alice.put(&format!("{state}/m.room.topic/"), json!({ "topic": "olds" })).await.ok();
    alice.send_text(&room_id, "after the topic").await;
    let messages_only = rhizome_testkit::encode(
        &json!({ "room": { "timeline": { "types": ["m.room.message"] } } }).to_string(),
    );
    let filtered = bob.sync(&format!("since={since}&filter={messages_only}&timeout=0")).await;
    let room = joined(&filtered, &room_id);
    assert_eq!(bodies(room), vec!["after the topic"]);
    let topics: Vec<&Value> = room["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.topic")
        .collect();
    assert_eq!(topics.len(), 1, "{room}");
    assert_eq!(topics[0]["content"]["topic"], "olds");
}

/// The state keys of the member events in a room's state section.
fn members_in_state(room: &Value) -> Vec<String> {
    slots(room, "state")
        .into_iter()
        .filter(|(kind, _)| kind == "m.room.member")
        .map(|(_, key)| key)
        .collect()
}

#[tokio::test]
async fn lazy_loaded_members_are_not_sent_again_unless_asked_for() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let dave = Api::new_user(&server.base_url, "dave").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    carol.join(&room_id).await;
    bob.join(&room_id).await;
    alice.send_text(&room_id, "a1").await;
    alice.send_text(&room_id, "a2").await;
    let filter = |redundant: bool| {
        let filter = json!({ "room": {
            "timeline": { "limit": 2 },
            "state": { "lazy_load_members": true, "include_redundant_members": redundant },
        } });
        rhizome_testkit::encode(&filter.to_string())
    };
    let lazy = filter(false);
    let first = bob.sync(&format!("filter={lazy}&timeout=0")).await;
    let mut expected = vec![alice.user().to_owned(), bob.user().to_owned()];
    expected.sort();
    assert_eq!(members_in_state(joined(&first, &room_id)), expected);

    // Carol speaks: her member event comes, Alice's and Bob's own do not come again.
    let since = first["next_batch"].as_str().unwrap().to_owned();
    carol.send_text(&room_id, "c1").await;
    let next = bob.sync(&format!("since={since}&filter={lazy}&timeout=0")).await;
    assert_eq!(members_in_state(joined(&next, &room_id)), vec![carol.user().to_owned()]);
    // And once the client has it, not again; Alice speaking again brings nothing either.
    let since = next["next_batch"].as_str().unwrap().to_owned();
    carol.send_text(&room_id, "c2").await;
    alice.send_text(&room_id, "a3").await;
    let again = bob.sync(&format!("since={since}&filter={lazy}&timeout=0")).await;
    let room = joined(&again, &room_id);
    assert_eq!(bodies(room), vec!["c2", "a3"]);
    assert!(members_in_state(room).is_empty(), "{room}");
    // Unless the filter asks for redundant members.
    let redundant = bob.sync(&format!("since={since}&filter={}&timeout=0", filter(true))).await;
    let mut expected =
        vec![alice.user().to_owned(), bob.user().to_owned(), carol.user().to_owned()];
    expected.sort();
    assert_eq!(members_in_state(joined(&redundant, &room_id)), expected);

    // A response the client never acknowledged does not count: retrying from the same
    // position brings Dave's member event again.
    let since = again["next_batch"].as_str().unwrap().to_owned();
    dave.join(&room_id).await;
    alice.send_text(&room_id, "filler 1").await;
    alice.send_text(&room_id, "filler 2").await;
    dave.send_text(&room_id, "d1").await;
    for _ in 0..2 {
        let retried = bob.sync(&format!("since={since}&filter={lazy}&timeout=0")).await;
        let room = joined(&retried, &room_id);
        assert!(members_in_state(room).contains(&dave.user().to_owned()), "{room}");
    }
    // An initial sync starts over: everyone who speaks comes again.
    let fresh = bob.sync(&format!("filter={lazy}&timeout=0")).await;
    let members = members_in_state(joined(&fresh, &room_id));
    assert!(
        members.contains(&dave.user().to_owned()) && members.contains(&alice.user().to_owned())
    );
}

fn unread(room: &Value) -> (u64, u64) {
    let counts = &room["unread_notifications"];
    (counts["notification_count"].as_u64().unwrap(), counts["highlight_count"].as_u64().unwrap())
}

fn receipt_readers(room: &Value) -> Vec<String> {
    let Some(events) = room["ephemeral"]["events"].as_array() else { return Vec::new() };
    let mut readers: Vec<String> = events
        .iter()
        .filter(|event| event["type"] == "m.receipt")
        .filter_map(|event| event["content"].as_object())
        .flat_map(|content| content.values())
        .filter_map(|by_type| by_type["m.read"].as_object())
        .flat_map(|by_user| by_user.keys().cloned())
        .collect();
    readers.sort();
    readers
}

/// Receipts, unread counts and bundled relations are fetched for all the rooms of a sync at
/// once: each room still gets its own, in a first sync and in an incremental one.
#[tokio::test]
async fn one_sync_over_many_rooms_gives_each_room_its_own_receipts_counts_and_relations() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
        bob.join(&room_id).await;
        rooms.push(room_id);
    }
    let (busy, edited, quiet) = (&rooms[0], &rooms[1], &rooms[2]);
    // Two unread messages in `busy`, and Alice's receipt there; one edited message in `edited`.
    alice.send_text(busy, "one").await;
    let two = alice.send_text(busy, "two").await;
    alice
        .post(&format!("/_matrix/client/v3/rooms/{busy}/receipt/m.read/{two}"), json!({}))
        .await
        .ok();
    let root = alice.send_text(edited, "agenda?").await;
    let edit = json!({
        "msgtype": "m.text", "body": "* agenda for Friday?",
        "m.new_content": { "msgtype": "m.text", "body": "agenda for Friday?" },
        "m.relates_to": { "rel_type": "m.replace", "event_id": root },
    });
    alice
        .put(&format!("/_matrix/client/v3/rooms/{edited}/send/m.room.message/e1"), edit)
        .await
        .ok();

    let first = bob.sync("timeout=0").await;
    assert_eq!(unread(joined(&first, busy)), (2, 0));
    // Edits do not notify (`.m.rule.suppress_edits`).
    assert_eq!(unread(joined(&first, edited)), (1, 0));
    assert_eq!(unread(joined(&first, quiet)), (0, 0));
    assert_eq!(receipt_readers(joined(&first, busy)), vec![alice.user().to_owned()]);
    assert!(receipt_readers(joined(&first, edited)).is_empty());
    assert!(receipt_readers(joined(&first, quiet)).is_empty());
    let timeline = joined(&first, edited)["timeline"]["events"].as_array().unwrap();
    let bundled: Vec<&str> = timeline
        .iter()
        .filter(|event| event["unsigned"]["m.relations"]["m.replace"].is_object())
        .filter_map(|event| event["event_id"].as_str())
        .collect();
    assert_eq!(bundled, vec![root.as_str()]);
    for room_id in [busy, quiet] {
        let events = joined(&first, room_id)["timeline"]["events"].as_array().unwrap();
        assert!(events.iter().all(|event| event["unsigned"]["m.relations"].is_null()));
    }

    // Bob reads `edited`, a message arrives in `quiet`: only the rooms that changed come, each
    // with its own counts and receipts.
    let since = first["next_batch"].as_str().unwrap();
    bob.post(&format!("/_matrix/client/v3/rooms/{edited}/receipt/m.read/{root}"), json!({}))
        .await
        .ok();
    alice.send_text(edited, "after").await;
    alice.send_text(quiet, "hello").await;
    alice.send_text(quiet, "again").await;
    let next = bob.sync(&format!("since={since}&timeout=0")).await;
    assert!(next["rooms"]["join"][busy.as_str()].is_null(), "{next}");
    assert_eq!(unread(joined(&next, edited)), (1, 0));
    assert_eq!(receipt_readers(joined(&next, edited)), vec![bob.user().to_owned()]);
    assert_eq!(unread(joined(&next, quiet)), (2, 0));
    assert!(receipt_readers(joined(&next, quiet)).is_empty());
}

#[tokio::test]
async fn filters_that_exclude_receipts_and_account_data_get_none_and_the_rest_as_before() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let last = alice.send_text(&room_id, "read me").await;
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{}", encode(&last)),
            json!({}),
        )
        .await
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/org.example.setting", alice.user()),
            json!({ "on": true }),
        )
        .await
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{room_id}/account_data/m.tag", alice.user()),
            json!({ "tags": { "u.work": {} } }),
        )
        .await
        .ok();
    let sync_with = |filter: serde_json::Value| {
        let alice = &alice;
        async move {
            let filter = encode(&filter.to_string());
            alice.sync(&format!("filter={filter}&timeout=0")).await
        }
    };
    // Unfiltered, each is there.
    let all = sync_with(json!({})).await;
    let room = joined(&all, &room_id);
    assert!(types(room, "ephemeral").iter().any(|kind| kind == "m.receipt"), "{room}");
    assert!(types(room, "account_data").iter().any(|kind| kind == "m.tag"), "{room}");
    let global = all["account_data"]["events"].as_array().unwrap();
    assert!(global.iter().any(|event| event["type"] == "org.example.setting"), "{all}");
    assert!(global.iter().any(|event| event["type"] == "m.push_rules"), "{all}");

    // Excluded by an empty list, or by `*`: none of them; the timeline as before.
    for blocked in [json!({ "types": [] }), json!({ "not_types": ["*"] })] {
        let filtered = sync_with(json!({
            "room": { "ephemeral": blocked, "account_data": blocked },
            "account_data": blocked,
        }))
        .await;
        let room = joined(&filtered, &room_id);
        assert_eq!(room["ephemeral"]["events"], json!([]), "{room}");
        assert_eq!(room["account_data"]["events"], json!([]), "{room}");
        let global = filtered["account_data"]["events"].as_array();
        assert!(global.is_none_or(Vec::is_empty), "{filtered}");
        assert_eq!(bodies(room), vec!["read me"]);
    }
    // Excluding only room account data still gives the global kind, and receipts.
    let partly = sync_with(json!({ "room": { "account_data": { "types": [] } } })).await;
    let room = joined(&partly, &room_id);
    assert!(types(room, "ephemeral").iter().any(|kind| kind == "m.receipt"), "{room}");
    assert_eq!(room["account_data"]["events"], json!([]), "{room}");
    let global = partly["account_data"]["events"].as_array().unwrap();
    assert!(global.iter().any(|event| event["type"] == "org.example.setting"), "{partly}");
}
