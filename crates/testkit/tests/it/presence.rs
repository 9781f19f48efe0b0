//! Presence in `/sync`: the user's own, and that of the people they share a room with, from
//! the moment they share it.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

fn presence_of<'a>(sync: &'a Value, user: &str) -> Option<&'a Value> {
    sync["presence"]["events"].as_array()?.iter().find(|event| event["sender"] == user)
}

#[tokio::test]
async fn a_user_sees_their_own_presence_even_alone() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let status = format!("/_matrix/client/v3/presence/{}/status", alice.user());
    alice.put(&status, json!({ "presence": "unavailable", "status_msg": "away" })).await.ok();
    let first = alice.sync("timeout=0&set_presence=offline").await;
    let own = presence_of(&first, alice.user()).unwrap_or_else(|| panic!("no presence: {first}"));
    assert_eq!(own["content"]["presence"], "unavailable");
    assert_eq!(own["content"]["status_msg"], "away");

    // A change comes incrementally too.
    let since = first["next_batch"].as_str().unwrap();
    alice.put(&status, json!({ "presence": "online" })).await.ok();
    let next = alice.sync(&format!("since={since}&timeout=0&set_presence=offline")).await;
    let own = presence_of(&next, alice.user()).unwrap_or_else(|| panic!("no presence: {next}"));
    assert_eq!(own["content"]["presence"], "online");
}

#[tokio::test]
async fn members_presence_comes_with_a_newly_shared_room() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let status = |user: &Api| format!("/_matrix/client/v3/presence/{}/status", user.user());
    alice.put(&status(&alice), json!({ "presence": "online", "status_msg": "here" })).await.ok();
    carol.put(&status(&carol), json!({ "presence": "unavailable" })).await.ok();
    let since =
        bob.sync("timeout=0&set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    assert!(presence_of(&bob.sync("timeout=0").await, alice.user()).is_none());

    // Bob joins: Alice's presence (set long before) comes with the room.
    bob.join(&room_id).await;
    let next = bob.sync(&format!("since={since}&timeout=0&set_presence=offline")).await;
    let seen = presence_of(&next, alice.user()).unwrap_or_else(|| panic!("no presence: {next}"));
    assert_eq!(seen["content"]["presence"], "online");
    assert_eq!(seen["content"]["status_msg"], "here");
    assert!(presence_of(&next, carol.user()).is_none(), "{next}");

    // Carol joins later: her presence comes with her join.
    let since = next["next_batch"].as_str().unwrap();
    carol.join(&room_id).await;
    let next = bob.sync(&format!("since={since}&timeout=0&set_presence=offline")).await;
    let seen = presence_of(&next, carol.user()).unwrap_or_else(|| panic!("no presence: {next}"));
    assert_eq!(seen["content"]["presence"], "unavailable");
}
