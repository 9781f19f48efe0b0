//! The user directory: whom a search finds as rooms open and close, never by the server's
//! name.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

async fn finds(searcher: &Api, term: &str, wanted: &str) -> bool {
    let body = searcher
        .post("/_matrix/client/v3/user_directory/search", json!({ "search_term": term }))
        .await
        .ok();
    body["results"].as_array().unwrap().iter().any(|user: &Value| user["user_id"] == wanted)
}

#[tokio::test]
async fn users_come_and_go_with_their_rooms_join_rules_and_history_visibility() {
    let server = TestServer::start().await;
    let creator = Api::new_user(&server.base_url, "creator").await;
    let user = Api::new_user(&server.base_url, "member").await;
    let stranger = Api::new_user(&server.base_url, "stranger").await;
    user.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", user.user()),
        json!({ "displayname": "Zebediah" }),
    )
    .await
    .ok();
    for (kind, open, closed) in [
        ("m.room.join_rules", json!({ "join_rule": "public" }), json!({ "join_rule": "invite" })),
        (
            "m.room.history_visibility",
            json!({ "history_visibility": "world_readable" }),
            json!({ "history_visibility": "shared" }),
        ),
    ] {
        let room_id =
            creator.create_room(json!({ "preset": "private_chat", "invite": [user.user()] })).await;
        user.join(&room_id).await;
        assert!(!finds(&stranger, "zebediah", user.user()).await, "{kind}: found at first");
        assert!(finds(&creator, "zebediah", user.user()).await, "a roommate finds them");
        let path = format!("/_matrix/client/v3/rooms/{room_id}/state/{kind}/");
        creator.put(&path, open).await.ok();
        assert!(finds(&stranger, "zebediah", user.user()).await, "{kind}: not found when open");
        creator.put(&path, closed).await.ok();
        assert!(!finds(&stranger, "zebediah", user.user()).await, "{kind}: found when closed");
        user.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    }
}

#[tokio::test]
async fn the_servers_name_is_no_search_term() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    assert!(finds(&alice, "bob", bob.user()).await);
    assert!(finds(&alice, "BO", bob.user()).await);
    assert!(!finds(&alice, "localhost", bob.user()).await);
    assert!(!finds(&alice, ":localhost", bob.user()).await);
}
