//! Sliding sync and a room's latest activity: reactions do not move `bump_stamp`, and a short
//! timeline still brings the room's latest message when reactions to it came with it.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

const SLIDING: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One sliding sync request of the connection `room-list` from `pos`.
async fn sliding(api: &Api, pos: Option<&str>, body: &Value) -> Value {
    let query = pos.map_or_else(|| "?timeout=0".to_owned(), |pos| format!("?pos={pos}&timeout=0"));
    api.post(&format!("{SLIDING}{query}"), body.clone()).await.ok()
}

fn types(room: &Value) -> Vec<&str> {
    room["timeline"]
        .as_array()
        .map(|events| events.iter().filter_map(|event| event["type"].as_str()).collect())
        .unwrap_or_default()
}

async fn react(api: &Api, room_id: &str, event_id: &str, key: &str) -> String {
    let txn: String = key.chars().map(|c| format!("{:x}", u32::from(c))).collect();
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.reaction/r{txn}");
    let content =
        json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": event_id, "key": key } });
    api.put(&path, content).await.ok()["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn reactions_do_not_bump_and_the_message_stays_the_latest() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let body = json!({ "conn_id": "room-list", "lists": { "all": {
        "ranges": [[0, 9]], "timeline_limit": 1, "required_state": [],
    } } });
    let first = sliding(&alice, None, &body).await;
    let before = first["rooms"][&room_id]["bump_stamp"].as_u64().unwrap();

    // A message and two reactions to it in one response: the message comes too, and the
    // bump stamp is the message's.
    let message = bob.send_text(&room_id, "lunch?").await;
    react(&bob, &room_id, &message, "👍").await;
    react(&bob, &room_id, &message, "🍕").await;
    let next = sliding(&alice, first["pos"].as_str(), &body).await;
    let room = &next["rooms"][&room_id];
    assert_eq!(types(room), vec!["m.room.message", "m.reaction", "m.reaction"], "{room}");
    assert_eq!(room["timeline"][0]["event_id"], message.as_str());
    assert_ne!(room["limited"], true, "nothing was left out: {room}");
    assert_eq!(room["num_live"], 3);
    let bumped = room["bump_stamp"].as_u64().unwrap();
    assert!(bumped > before);

    // A reaction alone: the timeline holds just it, and the bump stamp stays the message's.
    react(&bob, &room_id, &message, "🎉").await;
    let later = sliding(&alice, next["pos"].as_str(), &body).await;
    let room = &later["rooms"][&room_id];
    assert_eq!(types(room), vec!["m.reaction"], "{room}");
    assert!(room["bump_stamp"].is_null() || room["bump_stamp"] == bumped, "{room}");

    // Too many reactions after the message: the timeline stays within its reach.
    let message = bob.send_text(&room_id, "dinner?").await;
    for index in 0..15 {
        let key = "x".repeat(index + 10);
        react(&bob, &room_id, &message, &key).await;
    }
    let flood = sliding(&alice, later["pos"].as_str(), &body).await;
    let room = &flood["rooms"][&room_id];
    assert_eq!(types(room), vec!["m.reaction"], "{room}");
    assert_eq!(room["limited"], true);
    assert!(room["bump_stamp"].as_u64().unwrap() > bumped);
}
