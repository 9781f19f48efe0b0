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
