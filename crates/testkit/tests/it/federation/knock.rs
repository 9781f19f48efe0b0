//! Knocking across two Rhizome servers: a user knocks on a room of the other server (through
//! `make_knock`/`send_knock`), sees it in `/sync`'s knock section with the room's stripped
//! state, is let in by an invite from the room's moderator, and joins; a knock withdrawn; a
//! room that takes no knocks refuses one.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

use super::{has_message, wait_for_sync};

/// Whether a sync's timeline of `room` shows `user`'s membership becoming `membership`.
fn membership_in(sync: &Value, room: &str, user: &str, membership: &str) -> bool {
    sync["rooms"]["join"][room]["timeline"]["events"].as_array().is_some_and(|events| {
        events.iter().any(|event| {
            event["type"] == "m.room.member"
                && event["state_key"] == user
                && event["content"]["membership"] == membership
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knock_on_a_room_of_another_server_is_let_in() {
    let a = TestServer::start_federating("127.0.0.48").await;
    let b = TestServer::start_federating("127.0.0.49").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let a_name = a.config.server_name.as_str();
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "name": "clubhouse",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }))
        .await;

    // Bob knocks through Alice's server.
    let knocked = bob
        .post(
            &format!("/_matrix/client/v3/knock/{}?via={}", encode(&room), encode(a_name)),
            json!({ "reason": "let me in" }),
        )
        .await
        .ok();
    assert_eq!(knocked["room_id"], room.as_str());
    let sync =
        wait_for_sync(&bob, "the knock", |sync| sync["rooms"]["knock"][&room].is_object()).await;
    let state = sync["rooms"]["knock"][&room]["knock_state"]["events"].as_array().unwrap().clone();
    assert!(
        state
            .iter()
            .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "clubhouse")
    );
    assert!(state.iter().any(|event| {
        event["type"] == "m.room.member"
            && event["state_key"] == bob.user()
            && event["content"]["membership"] == "knock"
    }));
    assert!(sync["rooms"]["join"][&room].is_null());
    let knock = wait_for_sync(&alice, "bob's knock", |sync| {
        membership_in(sync, &room, bob.user(), "knock")
    })
    .await;
    let events = knock["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().clone();
    assert!(events.iter().any(|event| event["content"]["reason"] == "let me in"));

    // Alice lets him in with an invite; he joins, and they talk.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room)),
            json!({ "user_id": bob.user() }),
        )
        .await
        .ok();
    let sync =
        wait_for_sync(&bob, "the invite", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    assert!(sync["rooms"]["knock"][&room].is_null(), "the knock is answered");
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", encode(&room)), json!({})).await.ok();
    wait_for_sync(&alice, "bob's join", |sync| membership_in(sync, &room, bob.user(), "join"))
        .await;
    bob.send_text(&room, "thanks").await;
    wait_for_sync(&alice, "bob's thanks", |sync| has_message(sync, &room, "thanks")).await;

    // A knock withdrawn: Bob leaves a room he knocked on (whose ID names no server), through
    // the server that took the knock.
    let other = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
        }))
        .await;
    bob.post(
        &format!("/_matrix/client/v3/knock/{}?via={}", encode(&other), encode(a_name)),
        json!({}),
    )
    .await
    .ok();
    wait_for_sync(&alice, "bob's second knock", |sync| {
        membership_in(sync, &other, bob.user(), "knock")
    })
    .await;
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&other)), json!({})).await.ok();
    wait_for_sync(&alice, "the knock withdrawn", |sync| {
        membership_in(sync, &other, bob.user(), "leave")
    })
    .await;
    let sync = bob.sync("timeout=0").await;
    assert!(sync["rooms"]["knock"][&other].is_null(), "the knock is gone");

    // A room that takes no knocks refuses one.
    let public = alice.create_room(json!({ "preset": "public_chat" })).await;
    let refused = bob
        .post(
            &format!("/_matrix/client/v3/knock/{}?via={}", encode(&public), encode(a_name)),
            json!({}),
        )
        .await;
    refused.expect_error(403, "M_FORBIDDEN");
}
