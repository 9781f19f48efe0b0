//! Part 2 between two Rhizome servers: joining a room on the other server, chatting both ways,
//! typing across servers, invites of the other server's users (accepted and rejected).

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::json;

use super::{has_message, wait_for_sync};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_joins_a_room_on_another_server_and_both_sides_chat() {
    let a = TestServer::start_federating("127.0.0.31").await;
    let b = TestServer::start_federating("127.0.0.32").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let room = alice
        .create_room(
            json!({ "preset": "public_chat", "name": "assembly", "room_alias_name": "assembly" }),
        )
        .await;
    // Bob joins by alias on the other server.
    let alias = format!("#assembly:{}", a.config.server_name);
    let joined = bob.join(&alias).await;
    assert_eq!(joined["room_id"], room.as_str());
    // Bob's server now has the room with its state.
    let name = bob
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", encode(&room)))
        .await
        .ok();
    assert_eq!(name["name"], "assembly");
    // Alice sees Bob join, and hears from him; he hears from her.
    wait_for_sync(&alice, "bob's join", |sync| {
        sync["rooms"]["join"][&room]["timeline"]["events"].as_array().is_some_and(|events| {
            events
                .iter()
                .any(|event| event["type"] == "m.room.member" && event["state_key"] == bob.user())
        })
    })
    .await;
    alice.send_text(&room, "hello from A").await;
    wait_for_sync(&bob, "alice's message", |sync| has_message(sync, &room, "hello from A")).await;
    bob.send_text(&room, "hello from B").await;
    wait_for_sync(&alice, "bob's message", |sync| has_message(sync, &room, "hello from B")).await;
    // Typing crosses too.
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", encode(&room), encode(bob.user())),
        json!({ "typing": true, "timeout": 10000 }),
    )
    .await
    .ok();
    wait_for_sync(&alice, "bob typing", |sync| {
        sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["type"] == "m.typing"
                    && event["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|users| users.iter().any(|user| user == bob.user()))
            })
        })
    })
    .await;
    // Both servers agree on the members.
    for user in [&alice, &bob] {
        let members = user
            .get(&format!("/_matrix/client/v3/rooms/{}/joined_members", encode(&room)))
            .await
            .ok();
        let joined = members["joined"].as_object().unwrap();
        assert!(joined.contains_key(alice.user()) && joined.contains_key(bob.user()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_of_another_servers_users_are_accepted_and_rejected() {
    let a = TestServer::start_federating("127.0.0.33").await;
    let b = TestServer::start_federating("127.0.0.34").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let carol = Api::new_user(&b.base_url, "carol").await;
    let room = alice.create_room(json!({ "preset": "private_chat", "name": "council" })).await;
    for user in [&bob, &carol] {
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{}/invite", encode(&room)),
                json!({ "user_id": user.user() }),
            )
            .await
            .ok();
    }
    // Bob sees the invite, with its inviter, and accepts.
    let sync =
        wait_for_sync(&bob, "the invite", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    let invite_state =
        sync["rooms"]["invite"][&room]["invite_state"]["events"].as_array().unwrap().clone();
    assert!(
        invite_state
            .iter()
            .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "council")
    );
    assert!(
        invite_state
            .iter()
            .any(|event| event["type"] == "m.room.member" && event["state_key"] == alice.user())
    );
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", encode(&room)), json!({})).await.ok();
    alice.send_text(&room, "welcome").await;
    wait_for_sync(&bob, "the welcome", |sync| has_message(sync, &room, "welcome")).await;
    // Carol rejects; Alice's server hears of it.
    wait_for_sync(&carol, "the invite", |sync| sync["rooms"]["invite"][&room].is_object()).await;
    carol.post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&room)), json!({})).await.ok();
    wait_for_sync(&alice, "carol's rejection", |sync| {
        sync["rooms"]["join"][&room]["timeline"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["state_key"] == carol.user() && event["content"]["membership"] == "leave"
            })
        })
    })
    .await;
    let carol_sync = carol.sync("timeout=0").await;
    assert!(carol_sync["rooms"]["invite"][&room].is_null(), "the invite is gone");
}
