//! What clients learn of membership at a point of history: `/members?at=` and each event's
//! `unsigned.membership` (MSC4115).

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

fn member_keys(chunk: &Value) -> Vec<String> {
    let mut keys: Vec<String> = chunk["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["state_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn members_at_a_sync_token_are_those_of_that_point() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.send_text(&room_id, "hello").await;
    let sync = alice.sync("timeout=0").await;
    let complete = sync["rooms"]["join"][&room_id]["timeline"]["prev_batch"].as_str().unwrap();
    let complete = complete.to_owned();
    bob.join(&room_id).await;
    bob.send_text(&room_id, "hello back").await;
    let members = format!("/_matrix/client/v3/rooms/{room_id}/members");

    // The token of a complete timeline: the members as that sync left them.
    let at = alice.get(&format!("{members}?at={complete}")).await.ok();
    assert_eq!(member_keys(&at), vec![alice.user().to_owned()], "{at}");
    assert!(at["chunk"].as_array().unwrap().iter().all(|event| event["room_id"] == room_id));

    // The token of a limited timeline: the members before its first event.
    carol.join(&room_id).await;
    let filter =
        rhizome_testkit::encode(&json!({ "room": { "timeline": { "limit": 1 } } }).to_string());
    let sync = alice.sync(&format!("filter={filter}&timeout=0")).await;
    let timeline = &sync["rooms"]["join"][&room_id]["timeline"];
    assert_eq!(timeline["limited"], true);
    assert_eq!(timeline["events"][0]["state_key"], carol.user());
    let limited = timeline["prev_batch"].as_str().unwrap();
    let at = alice.get(&format!("{members}?at={limited}")).await.ok();
    let mut expected = vec![alice.user().to_owned(), bob.user().to_owned()];
    expected.sort();
    assert_eq!(member_keys(&at), expected, "{at}");

    // And now, everyone.
    let now = alice.get(&members).await.ok();
    assert_eq!(now["chunk"].as_array().unwrap().len(), 3, "{now}");
}
