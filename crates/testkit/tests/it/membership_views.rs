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

#[tokio::test]
async fn events_carry_the_viewers_membership_at_them() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let before = alice.send_text(&room_id, "before").await;
    bob.join(&room_id).await;
    let after = alice.send_text(&room_id, "after").await;

    // In /sync: `leave` until Bob's join (his own join included), `join` from it on.
    let sync = bob.sync("timeout=0").await;
    let events = sync["rooms"]["join"][&room_id]["timeline"]["events"].as_array().unwrap();
    let mut seen_join = false;
    let mut seen = 0;
    for event in events {
        if event["type"] == "m.room.member" && event["state_key"] == bob.user() {
            seen_join = true;
        }
        let expected = if seen_join { "join" } else { "leave" };
        assert_eq!(event["unsigned"]["membership"], expected, "{event}");
        seen += usize::from(event["event_id"] == before || event["event_id"] == after);
    }
    assert_eq!(seen, 2, "{events:?}");

    // Single events and /messages say the same; Alice was joined throughout.
    let path = |event: &str| format!("/_matrix/client/v3/rooms/{room_id}/event/{event}");
    assert_eq!(bob.get(&path(&before)).await.ok()["unsigned"]["membership"], "leave");
    assert_eq!(bob.get(&path(&after)).await.ok()["unsigned"]["membership"], "join");
    assert_eq!(alice.get(&path(&before)).await.ok()["unsigned"]["membership"], "join");
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let page = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b")).await.ok();
    let newest = &page["chunk"][0];
    assert_eq!(newest["state_key"], bob.user(), "{page}");
    assert_eq!(newest["unsigned"]["membership"], "leave");
    assert_eq!(page["chunk"][1]["unsigned"]["membership"], "join");
}
