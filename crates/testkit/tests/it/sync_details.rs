//! `/sync` details real clients rely on: full state that leaves the timeline where `since` put
//! it, and the shape of joined rooms.

use rhizome_testkit::{Api, TestServer};
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
    assert_ne!(room["timeline"]["limited"], true);
    assert!(types(room, "state").iter().any(|kind| kind == "m.room.create"), "{room}");
}
