//! Joining and previewing rooms over HTTP as real clients do it: bodiless joins, the keys a
//! join body carries into the member event, repeated joins, and the member list of a
//! world-readable room seen from outside.

use reqwest::Method;
use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

/// The current member event of `user_id` in the room, from the room's full state.
async fn member_event(api: &Api, room_id: &str, user_id: &str) -> Value {
    let state = api.get(&format!("/_matrix/client/v3/rooms/{room_id}/state")).await.ok();
    state
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.room.member" && event["state_key"] == user_id)
        .cloned()
        .unwrap_or_else(|| panic!("no member event for {user_id}: {state}"))
}

#[tokio::test]
async fn joins_take_an_empty_body_and_keep_the_keys_of_a_given_one() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id =
        alice.create_room(json!({ "preset": "public_chat", "room_alias_name": "lobby" })).await;

    // No body at all, by alias and by ID, on both join endpoints.
    for path in [
        format!("/_matrix/client/v3/join/{}", encode("#lobby:localhost")),
        format!("/_matrix/client/v3/join/{}", encode(&room_id)),
        format!("/_matrix/client/v3/rooms/{}/join", encode(&room_id)),
    ] {
        let joined = bob.raw(Method::POST, &path, None).await.ok();
        assert_eq!(joined["room_id"], room_id.as_str(), "{path}");
    }
    // A body that is not an object is still refused.
    bob.raw(
        Method::POST,
        &format!("/_matrix/client/v3/join/{}", encode(&room_id)),
        Some(b"[1]".to_vec()),
    )
    .await
    .expect_error(400, "M_BAD_JSON");

    // Joining again with the same content sends nothing new.
    let first = member_event(&alice, &room_id, bob.user()).await;
    bob.join(&room_id).await;
    assert_eq!(member_event(&alice, &room_id, bob.user()).await["event_id"], first["event_id"]);

    // The body's keys, the spec's and the client's own, go into the member event; the
    // membership stays the server's.
    let body = json!({
        "reason": "here for lunch",
        "displayname": "Bob in the lobby",
        "org.example.badge": { "colour": "green" },
        "membership": "leave",
    });
    bob.post(&format!("/_matrix/client/v3/join/{}", encode("#lobby:localhost")), body.clone())
        .await
        .ok();
    let joined = member_event(&alice, &room_id, bob.user()).await;
    assert_ne!(joined["event_id"], first["event_id"]);
    let content = &joined["content"];
    assert_eq!(content["membership"], "join");
    assert_eq!(content["reason"], "here for lunch");
    assert_eq!(content["displayname"], "Bob in the lobby");
    assert_eq!(content["org.example.badge"], json!({ "colour": "green" }));
    // The same again changes nothing; the other endpoint takes custom keys too.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", encode(&room_id)), body).await.ok();
    assert_eq!(member_event(&alice, &room_id, bob.user()).await["event_id"], joined["event_id"]);
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/join", encode(&room_id)),
        json!({ "org.example.mood": "hungry" }),
    )
    .await
    .ok();
    let changed = member_event(&alice, &room_id, bob.user()).await;
    assert_eq!(changed["content"]["org.example.mood"], "hungry");
    assert!(changed["content"].get("reason").is_none(), "{changed}");
}

#[tokio::test]
async fn world_readable_rooms_show_their_joined_members_to_non_members() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let open = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "",
            "content": { "history_visibility": "world_readable" },
        }] }))
        .await;
    bob.join(&open).await;
    let members = carol.get(&format!("/_matrix/client/v3/rooms/{open}/joined_members")).await.ok();
    let joined = members["joined"].as_object().unwrap();
    let mut ids: Vec<&str> = joined.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![alice.user(), bob.user()]);
    assert_eq!(joined[alice.user()]["display_name"], "alice");
    // The preview's other half, the room's state, is readable too.
    carol.get(&format!("/_matrix/client/v3/rooms/{open}/state")).await.ok();

    // A room whose history is only for members keeps its member list to them.
    let closed = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&closed).await;
    let path = format!("/_matrix/client/v3/rooms/{closed}/joined_members");
    carol.get(&path).await.expect_error(403, "M_FORBIDDEN");
    bob.post(&format!("/_matrix/client/v3/rooms/{closed}/leave"), json!({})).await.ok();
    bob.get(&path).await.expect_error(403, "M_FORBIDDEN");
    alice.get(&path).await.ok();
    carol
        .get("/_matrix/client/v3/rooms/!nowhere:localhost/joined_members")
        .await
        .expect_error(403, "M_FORBIDDEN");
}
