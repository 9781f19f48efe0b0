//! Forgetting a room: its history closes to the user, it leaves every sync section, and
//! coming back opens it again.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

fn in_any_section(sync: &Value, room_id: &str) -> Vec<String> {
    ["join", "invite", "leave", "knock"]
        .iter()
        .filter(|section| !sync["rooms"][**section][room_id].is_null())
        .map(|section| (*section).to_owned())
        .collect()
}

#[tokio::test]
async fn a_forgotten_rooms_history_is_closed_and_it_leaves_sync() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let said = alice.send_text(&room_id, "hello").await;
    let before_leave = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let room = format!("/_matrix/client/v3/rooms/{room_id}");
    alice.post(&format!("{room}/leave"), json!({})).await.ok();

    // Left but not forgotten: the history up to the leave is still hers.
    assert!(
        !alice.get(&format!("{room}/messages?dir=b")).await.ok()["chunk"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    alice.post(&format!("{room}/forget"), json!({})).await.ok();
    bob.send_text(&room_id, "after").await;

    alice.get(&format!("{room}/messages?dir=b")).await.expect_error(403, "M_FORBIDDEN");
    alice.get(&format!("{room}/state")).await.expect_error(403, "M_FORBIDDEN");
    alice.get(&format!("{room}/members")).await.expect_error(403, "M_FORBIDDEN");
    alice.get(&format!("{room}/event/{said}")).await.expect_error(404, "M_NOT_FOUND");
    alice.get(&format!("{room}/context/{said}")).await.expect_error(403, "M_FORBIDDEN");

    // No sync section names it, whether asked for left rooms or not, initial or after.
    let filter = encode(&json!({ "room": { "include_leave": true } }).to_string());
    let initial = alice.sync(&format!("filter={filter}&timeout=0")).await;
    assert!(in_any_section(&initial, &room_id).is_empty(), "{}", initial["rooms"]);
    let since = initial["next_batch"].as_str().unwrap();
    bob.send_text(&room_id, "more").await;
    let next = alice.sync(&format!("since={since}&filter={filter}&timeout=0")).await;
    assert!(in_any_section(&next, &room_id).is_empty(), "{}", next["rooms"]);
    let sliding = alice
        .post(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            json!({ "lists": { "all": { "ranges": [[0, 10]], "timeline_limit": 1 } } }),
        )
        .await
        .ok();
    assert!(sliding["rooms"][&room_id].is_null(), "{sliding}");

    // A sync from before the leave still hears of the leave, once.
    let old = alice.sync(&format!("since={before_leave}&timeout=0")).await;
    assert_eq!(in_any_section(&old, &room_id), vec!["leave"], "{}", old["rooms"]);
}

#[tokio::test]
async fn coming_back_to_a_forgotten_room_opens_its_history_again() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat" })).await;
    let room = format!("/_matrix/client/v3/rooms/{room_id}");
    alice.post(&format!("{room}/invite"), json!({ "user_id": bob.user() })).await.ok();
    bob.join(&room_id).await;
    let before = alice.send_text(&room_id, "before the leave").await;
    bob.post(&format!("{room}/leave"), json!({})).await.ok();
    bob.post(&format!("{room}/forget"), json!({})).await.ok();
    bob.get(&format!("{room}/messages?dir=b")).await.expect_error(403, "M_FORBIDDEN");
    bob.post(&format!("/_matrix/client/v3/join/{room_id}"), json!({}))
        .await
        .expect_error(403, "M_FORBIDDEN");

    alice.post(&format!("{room}/invite"), json!({ "user_id": bob.user() })).await.ok();
    bob.join(&room_id).await;
    let page = bob.get(&format!("{room}/messages?dir=b&limit=100")).await.ok();
    let ids: Vec<&Value> =
        page["chunk"].as_array().unwrap().iter().map(|e| &e["event_id"]).collect();
    assert!(ids.iter().any(|id| **id == before), "{page}");

    // An invite rejected can be forgotten too.
    let other = alice.create_room(json!({ "preset": "private_chat" })).await;
    let other_room = format!("/_matrix/client/v3/rooms/{other}");
    alice.post(&format!("{other_room}/invite"), json!({ "user_id": bob.user() })).await.ok();
    bob.post(&format!("{other_room}/leave"), json!({})).await.ok();
    bob.post(&format!("{other_room}/forget"), json!({})).await.ok();
}
