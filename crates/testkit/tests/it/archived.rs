//! Left rooms in `/sync` (the archive): only what the user could see until they left, the
//! state as it was then; and incremental syncs that say no more than what changed.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["content"]["body"].as_str().or(event["content"]["my_key"].as_str()))
        .map(|text| text.unwrap_or_default().to_owned())
        .collect()
}

async fn set_madeup(api: &Api, room_id: &str, value: &str) {
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/a.madeup.test.state/");
    api.put(&path, json!({ "my_key": value })).await.ok();
}

#[tokio::test]
async fn an_archived_room_holds_only_history_from_before_the_leave() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let filter = encode(
        &json!({ "room": {
            "timeline": { "types": ["m.room.message", "a.madeup.test.state"] },
            "state": { "types": ["a.madeup.test.state"] },
            "include_leave": true,
        } })
        .to_string(),
    );
    let since = bob.sync(&format!("filter={filter}&timeout=0")).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.send_text(&room_id, "before").await;
    set_madeup(&alice, &room_id, "before").await;
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    alice.send_text(&room_id, "after").await;
    set_madeup(&alice, &room_id, "after").await;

    for query in [format!("filter={filter}"), format!("filter={filter}&since={since}")] {
        let sync = bob.sync(&format!("{query}&timeout=0")).await;
        let room = &sync["rooms"]["leave"][&room_id];
        assert_eq!(bodies(room), vec!["before", "before"], "{query}: {room}");
        assert_eq!(room["state"]["events"], json!([]), "{query}: {room}");
    }

    // No timeline at all: the state as it was at the leave, the leave included.
    let empty = encode(
        &json!({ "room": { "timeline": { "limit": 0 }, "include_leave": true } }).to_string(),
    );
    let sync = bob.sync(&format!("filter={empty}&timeout=0")).await;
    let room = &sync["rooms"]["leave"][&room_id];
    assert_eq!(room["timeline"]["events"], json!([]), "{room}");
    let state = room["state"]["events"].as_array().unwrap();
    let madeup = state.iter().find(|event| event["type"] == "a.madeup.test.state").unwrap();
    assert_eq!(madeup["content"]["my_key"], "before");
    let own = state
        .iter()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == bob.user())
        .unwrap();
    assert_eq!(own["content"]["membership"], "leave");
}

#[tokio::test]
async fn joining_and_leaving_between_two_syncs_brings_the_rooms_state() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({})).await;
    set_madeup(&alice, &room_id, "1").await;
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({ "user_id": bob.user() }),
        )
        .await
        .ok();
    let filter = encode(
        &json!({ "room": {
            "timeline": { "types": [] },
            "state": { "types": ["a.madeup.test.state"] },
            "ephemeral": { "types": [] },
            "include_leave": true,
        }, "presence": { "types": [] } })
        .to_string(),
    );
    let since = bob.sync(&format!("filter={filter}&timeout=0")).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.join(&room_id).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let sync = bob.sync(&format!("filter={filter}&since={since}&timeout=0")).await;
    let state = &sync["rooms"]["leave"][&room_id]["state"]["events"];
    assert_eq!(state.as_array().map(Vec::len), Some(1), "{sync}");
    assert_eq!(state[0]["type"], "a.madeup.test.state");
    assert_eq!(state[0]["content"]["my_key"], "1");
}

#[tokio::test]
async fn a_join_made_while_the_user_was_away_shows_in_the_timeline_on_return() {
    let server = TestServer::start().await;
    let creator = Api::new_user(&server.base_url, "creator").await;
    let syncer = Api::new_user(&server.base_url, "syncer").await;
    let invitee = Api::new_user(&server.base_url, "invitee").await;
    let room_id = creator.create_room(json!({ "preset": "public_chat" })).await;
    syncer.join(&room_id).await;
    let room = format!("/_matrix/client/v3/rooms/{room_id}");
    creator
        .put(
            &format!("{room}/state/m.room.history_visibility/"),
            json!({ "history_visibility": "joined" }),
        )
        .await
        .ok();
    creator.post(&format!("{room}/invite"), json!({ "user_id": invitee.user() })).await.ok();
    let since = syncer.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    syncer.post(&format!("{room}/leave"), json!({})).await.ok();
    invitee.join(&room_id).await;
    syncer.join(&room_id).await;

    let sync = syncer.sync(&format!("since={since}&timeout=0")).await;
    let events = sync["rooms"]["join"][&room_id]["timeline"]["events"].as_array().unwrap();
    assert!(
        events.iter().any(|event| event["type"] == "m.room.member"
            && event["state_key"] == invitee.user()
            && event["content"]["membership"] == "join"),
        "no join of the invitee: {events:?}"
    );
}

#[tokio::test]
async fn a_displayname_change_is_not_a_full_state_sync() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    set_madeup(&alice, &room_id, "1").await;
    let filter = encode(
        &json!({ "room": {
            "timeline": { "types": [] },
            "state": { "types": ["a.madeup.test.state"] },
            "ephemeral": { "types": [] },
        }, "presence": { "types": [] } })
        .to_string(),
    );
    let first = alice.sync(&format!("filter={filter}&timeout=0")).await;
    let state = &first["rooms"]["join"][&room_id]["state"]["events"];
    assert_eq!(state.as_array().map(Vec::len), Some(1), "{first}");
    let since = first["next_batch"].as_str().unwrap();

    let member = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", alice.user());
    alice.put(&member, json!({ "membership": "join", "displayname": "boris" })).await.ok();
    alice.send_text(&room_id, "to wait on").await;
    let next = alice.sync(&format!("filter={filter}&since={since}&timeout=0")).await;
    assert_eq!(next["rooms"]["join"], json!({}), "{next}");
}
