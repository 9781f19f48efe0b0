//! `/messages` as clients page with it: without `from` (from the newest backwards, from the
//! oldest forwards), and forwards up to the newest event and on when newer events arrive.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

fn bodies(page: &Value) -> Vec<&str> {
    page["chunk"]
        .as_array()
        .unwrap_or_else(|| panic!("no chunk: {page}"))
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect()
}

#[tokio::test]
async fn messages_without_from_and_forwards_past_the_newest_event() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    for index in 0..3 {
        alice.send_text(&room_id, &format!("m{index}")).await;
    }
    let path = format!("/_matrix/client/v3/rooms/{room_id}/messages");

    // Without `from`: backwards from the newest event, forwards from the room's creation.
    let newest = alice.get(&format!("{path}?dir=b&limit=2")).await.ok();
    assert_eq!(bodies(&newest), vec!["m2", "m1"]);
    assert!(newest["start"].is_string() && newest["end"].is_string(), "{newest}");
    let oldest = alice.get(&format!("{path}?dir=f&limit=2")).await.ok();
    let types: Vec<&str> =
        oldest["chunk"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["m.room.create", "m.room.member"], "{oldest}");

    // Forwards to the newest event: `end` is still given, and continues once more arrives.
    let end = oldest["end"].as_str().unwrap();
    let rest = alice.get(&format!("{path}?dir=f&limit=50&from={end}")).await.ok();
    assert_eq!(bodies(&rest), vec!["m0", "m1", "m2"]);
    let end = rest["end"].as_str().unwrap_or_else(|| panic!("no end at the newest: {rest}"));
    let empty = alice.get(&format!("{path}?dir=f&limit=50&from={end}")).await.ok();
    assert!(bodies(&empty).is_empty(), "{empty}");
    alice.send_text(&room_id, "later").await;
    let later = alice.get(&format!("{path}?dir=f&limit=50&from={end}")).await.ok();
    assert_eq!(bodies(&later), vec!["later"]);
    assert!(later["end"].is_string(), "{later}");

    // Backwards to the room's creation: no `end`, nothing older to ask for.
    let all = alice.get(&format!("{path}?dir=b&limit=50")).await.ok();
    assert!(all.get("end").is_none(), "{all}");
    // An empty `from` (or the old `END`) is no token: the newest events again.
    for from in ["", "END"] {
        let page = alice.get(&format!("{path}?dir=b&limit=1&from={from}&to=")).await.ok();
        assert_eq!(bodies(&page), vec!["later"], "from={from}");
    }
    alice.get(&format!("{path}?dir=b&from=nonsense")).await.expect_error(400, "M_INVALID_PARAM");
}

/// A transaction sent again answers the first one's event and sends nothing more, also
/// once its sender has left the room (when a new event would be refused), and in another
/// room; a new transaction ID sends anew.
#[tokio::test]
async fn a_repeated_transaction_answers_its_first_event() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let other_room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let send = |room: &str, txn: &str, body: &str| {
        (
            format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            json!({ "msgtype": "m.text", "body": body }),
        )
    };
    let (path, body) = send(&room_id, "t1", "once");
    let first = bob.put(&path, body.clone()).await.ok()["event_id"].clone();
    assert!(first.is_string(), "{first}");
    assert_eq!(bob.put(&path, body).await.ok()["event_id"], first);
    let (path, body) = send(&room_id, "t1", "changed body, same transaction");
    assert_eq!(bob.put(&path, body).await.ok()["event_id"], first);
    let (path, body) = send(&room_id, "t2", "twice");
    let second = bob.put(&path, body).await.ok()["event_id"].clone();
    assert_ne!(second, first);

    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let (path, body) = send(&room_id, "t2", "twice");
    assert_eq!(bob.put(&path, body).await.ok()["event_id"], second, "after leaving");
    let (path, body) = send(&room_id, "t3", "refused");
    bob.put(&path, body).await.expect_error(403, "M_FORBIDDEN");
    let (path, body) = send(&other_room, "t1", "elsewhere");
    assert_eq!(bob.put(&path, body).await.ok()["event_id"], first, "in another room");

    let page = alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=20"))
        .await
        .ok();
    let mut sent = bodies(&page);
    sent.retain(|body| {
        ["once", "twice", "changed body, same transaction", "refused"].contains(body)
    });
    assert_eq!(sent, ["twice", "once"]);
}
