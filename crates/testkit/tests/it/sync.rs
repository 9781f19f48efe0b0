//! `/sync` over HTTP: long-polling wake-ups, `since` tokens, limited timelines, invites and
//! leaves, full state, lazy-loaded members and filters.

use std::time::{Duration, Instant};

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

fn room<'a>(sync: &'a Value, section: &str, room_id: &str) -> &'a Value {
    &sync["rooms"][section][room_id]
}

/// The events of a section (`state`, `timeline`), empty when the server left it out.
fn events<'a>(room: &'a Value, section: &str) -> Vec<&'a Value> {
    room[section]["events"].as_array().map(|events| events.iter().collect()).unwrap_or_default()
}

#[tokio::test]
async fn a_waiting_sync_wakes_when_a_message_arrives() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    let waiting = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let response = bob.sync(&format!("since={since}&timeout=20000")).await;
            (response, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send_text(&room_id, "wake up").await;
    let (response, waited) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(10), "the sync was not woken ({waited:?})");
    let events =
        room(&response, "join", &room_id)["timeline"]["events"].as_array().unwrap().clone();
    assert!(events.iter().any(|event| event["content"]["body"] == "wake up"));
    // A sync with nothing new times out with the same position.
    let next = response["next_batch"].as_str().unwrap();
    let idle = bob.sync(&format!("since={next}&timeout=200")).await;
    assert!(idle["rooms"]["join"].as_object().is_none_or(|rooms| rooms.is_empty()), "{idle}");
}

#[tokio::test]
async fn limited_timelines_give_a_prev_batch_that_pages_back() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    for index in 0..15 {
        alice.send_text(&room_id, &format!("m{index}")).await;
    }
    let filter = json!({ "room": { "timeline": { "limit": 5 } } }).to_string();
    let response =
        alice.sync(&format!("since={since}&filter={}", rhizome_testkit::encode(&filter))).await;
    let timeline = &room(&response, "join", &room_id)["timeline"];
    assert_eq!(timeline["limited"], true);
    let bodies: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["m10", "m11", "m12", "m13", "m14"]);
    let prev_batch = timeline["prev_batch"].as_str().unwrap();
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=3&from={prev_batch}"
        ))
        .await
        .ok();
    let older: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect();
    assert_eq!(older, vec!["m9", "m8", "m7"]);
}

#[tokio::test]
async fn invites_show_stripped_state_and_leaves_show_up_once() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "name": "secret club", "invite": [bob.user()] })).await;
    let first = bob.sync("timeout=0").await;
    let invite = room(&first, "invite", &room_id);
    let stripped = invite["invite_state"]["events"].as_array().unwrap();
    assert!(
        stripped.iter().any(
            |event| event["type"] == "m.room.name" && event["content"]["name"] == "secret club"
        )
    );
    assert!(
        stripped
            .iter()
            .any(|event| event["type"] == "m.room.member" && event["state_key"] == bob.user())
    );
    bob.join(&room_id).await;
    let since = first["next_batch"].as_str().unwrap();
    let joined = bob.sync(&format!("since={since}&timeout=0")).await;
    let room_state = room(&joined, "join", &room_id);
    // Newly joined: the state before the timeline covers the room (name, create, …).
    let state_types: Vec<&str> =
        events(room_state, "state").iter().filter_map(|event| event["type"].as_str()).collect();
    let timeline_types: Vec<&str> =
        events(room_state, "timeline").iter().filter_map(|event| event["type"].as_str()).collect();
    assert!(state_types.contains(&"m.room.create") || timeline_types.contains(&"m.room.create"));
    let since = joined["next_batch"].as_str().unwrap().to_owned();
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/kick"),
            json!({ "user_id": bob.user(), "reason": "bye" }),
        )
        .await
        .ok();
    let kicked = bob.sync(&format!("since={since}&timeout=5000")).await;
    let left = room(&kicked, "leave", &room_id);
    assert!(!left.is_null(), "no leave section: {kicked}");
    let last = left["timeline"]["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"]["membership"], "leave");
    let next = kicked["next_batch"].as_str().unwrap();
    let quiet = bob.sync(&format!("since={next}&timeout=0")).await;
    assert!(room(&quiet, "leave", &room_id).is_null(), "the leave was sent twice");
    // Bob no longer receives the room's messages.
    alice.send_text(&room_id, "after bob left").await;
    let later = bob.sync(&format!("since={next}&timeout=0")).await;
    assert!(later.to_string().find("after bob left").is_none());
}

#[tokio::test]
async fn lazy_loading_sends_only_the_members_that_speak() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let mut members = Vec::new();
    for index in 0..6 {
        let member = Api::new_user(&server.base_url, &format!("member{index}")).await;
        member.join(&room_id).await;
        members.push(member);
    }
    members[2].send_text(&room_id, "only I speak").await;
    let filter =
        json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true } } })
            .to_string();
    let response = alice.sync(&format!("filter={}", rhizome_testkit::encode(&filter))).await;
    let joined = room(&response, "join", &room_id);
    let member_keys: Vec<&str> = events(joined, "state")
        .into_iter()
        .filter(|event| event["type"] == "m.room.member")
        .filter_map(|event| event["state_key"].as_str())
        .collect();
    assert!(member_keys.contains(&members[2].user()));
    assert!(member_keys.contains(&alice.user()));
    assert_eq!(member_keys.len(), 2, "{member_keys:?}");
    assert_eq!(joined["summary"]["m.joined_member_count"], 7);
    // Without lazy loading, every member comes.
    let full = alice.sync("timeout=0").await;
    let all_members = events(room(&full, "join", &room_id), "state")
        .into_iter()
        .chain(events(room(&full, "join", &room_id), "timeline"))
        .filter(|event| event["type"] == "m.room.member")
        .count();
    assert!(all_members >= 7);
}

#[tokio::test]
async fn full_state_and_filters_by_id() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({ "name": "n" })).await;
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let full = alice.sync(&format!("since={since}&full_state=true&timeout=0")).await;
    let state = events(room(&full, "join", &room_id), "state").len()
        + events(room(&full, "join", &room_id), "timeline").len();
    assert!(state >= 6, "full_state gave {state} events");
    let created = alice
        .post(
            &format!("/_matrix/client/v3/user/{}/filter", alice.user()),
            json!({ "room": { "timeline": { "types": ["m.room.name"] } } }),
        )
        .await
        .ok();
    let filter_id = created["filter_id"].as_str().unwrap();
    let filtered = alice.sync(&format!("filter={filter_id}&timeout=0")).await;
    let types: Vec<&str> = room(&filtered, "join", &room_id)["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["type"].as_str())
        .collect();
    assert_eq!(types, vec!["m.room.name"]);
    alice.get("/_matrix/client/v3/sync?since=garbage").await.expect_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn presence_is_shared_with_room_members_and_times_out() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let stranger = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    let status = format!("/_matrix/client/v3/presence/{}/status", alice.user());
    alice.put(&status, json!({ "presence": "online", "status_msg": "at the meeting" })).await.ok();
    let seen = bob.get(&status).await.ok();
    assert_eq!(seen["presence"], "online");
    assert_eq!(seen["status_msg"], "at the meeting");
    assert_eq!(seen["currently_active"], true);
    stranger.get(&status).await.expect_error(403, "M_FORBIDDEN");
    let sync = bob.sync(&format!("since={since}&timeout=0")).await;
    let presence = sync["presence"]["events"].as_array().unwrap();
    let alice_presence = presence.iter().find(|event| event["sender"] == alice.user()).unwrap();
    assert_eq!(alice_presence["content"]["presence"], "online");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Alice goes quiet: she turns offline and Bob's waiting sync hears of it.
    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move { bob.sync(&format!("since={since}&timeout=10000")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alice_id = ruma::UserId::parse(alice.user()).unwrap();
    server.services().watch_presence(&alice_id, Duration::from_millis(50)).await;
    let sync = waiting.await.unwrap();
    let presence = sync["presence"]["events"].as_array().unwrap();
    let alice_presence = presence.iter().find(|event| event["sender"] == alice.user()).unwrap();
    assert_eq!(alice_presence["content"]["presence"], "offline");
    assert_eq!(bob.get(&status).await.ok()["presence"], "offline");
}

#[tokio::test]
async fn messages_apply_filters_in_both_directions_and_sync_keeps_only_the_fields_asked_for() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;
    alice.send_text(&room_id, "one").await;
    bob.send_text(&room_id, "two").await;
    alice.send_text(&room_id, "three").await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/org.example.poll/p1");
    alice.put(&path, json!({ "question": "when?" })).await.ok();

    let messages = |query: String| {
        let alice = alice.clone();
        let path = format!("/_matrix/client/v3/rooms/{room_id}/messages?{query}");
        async move { alice.get(&path).await.ok() }
    };
    let bodies = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
            .collect()
    };
    let only = |filter: Value| rhizome_testkit::encode(&filter.to_string());

    // Backwards, messages only, not Bob's: newest first.
    let filter = only(json!({ "types": ["m.room.message"], "not_senders": [bob.user()] }));
    let page = messages(format!("dir=b&filter={filter}")).await;
    assert_eq!(bodies(&page), ["three", "one"]);
    assert!(
        page["chunk"].as_array().unwrap().iter().all(|event| event["type"] == "m.room.message")
    );
    // Forwards from the start, with a wildcard type: oldest first.
    let filter = only(json!({ "types": ["org.example.*"] }));
    let page = messages(format!("dir=f&filter={filter}")).await;
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{page}");
    assert_eq!(chunk[0]["content"]["question"], "when?");
    // Lazy-loaded members: the senders of the page only, not Carol who said nothing.
    let filter = only(json!({ "types": ["m.room.message"], "lazy_load_members": true }));
    let page = messages(format!("dir=b&limit=2&filter={filter}")).await;
    assert_eq!(bodies(&page), ["three", "two"]);
    let mut members: Vec<&str> = page["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["state_key"].as_str().unwrap())
        .collect();
    members.sort();
    assert_eq!(members, [alice.user(), bob.user()]);

    // `event_fields` keeps the named paths only.
    let filter = only(json!({
        "event_fields": ["type", "content.body"],
        "room": { "timeline": { "types": ["m.room.message"] } },
    }));
    let sync = bob.sync(&format!("filter={filter}&timeout=0")).await;
    let timeline = sync["rooms"]["join"][&room_id]["timeline"]["events"].as_array().unwrap();
    assert!(!timeline.is_empty());
    for event in timeline {
        let mut keys: Vec<&str> = event.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["content", "type"], "{event}");
        assert_eq!(event["content"].as_object().unwrap().len(), 1, "{event}");
    }
}
