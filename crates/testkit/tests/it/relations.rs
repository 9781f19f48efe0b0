//! Relations over HTTP: `/relations` in its three forms, bundled aggregations (edits, threads,
//! references), the threads list, `/context` around an event, and history visibility for each.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

async fn send(api: &Api, room_id: &str, content: Value) -> String {
    let txn = format!("rel{}", rand_txn());
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
    api.put(&path, content).await.ok()["event_id"].as_str().unwrap().to_owned()
}

fn rand_txn() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn thread_reply(root: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": { "rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                          "m.in_reply_to": { "event_id": root } },
    })
}

fn event_ids(events: &Value) -> Vec<&str> {
    events.as_array().unwrap().iter().map(|event| event["event_id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn relations_threads_and_bundled_aggregations() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;

    let root = send(&alice, &room_id, json!({ "msgtype": "m.text", "body": "agenda?" })).await;
    let edit = send(
        &alice,
        &room_id,
        json!({
            "msgtype": "m.text", "body": "* agenda for Friday?",
            "m.new_content": { "msgtype": "m.text", "body": "agenda for Friday?" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": root },
        }),
    )
    .await;
    let first = send(&bob, &room_id, thread_reply(&root, "rent strike")).await;
    let second = send(&alice, &room_id, thread_reply(&root, "and the garden")).await;

    // /relations, all of them newest first; then by type; then by type and event type.
    let base = format!("/_matrix/client/v1/rooms/{room_id}/relations/{root}");
    let all = alice.get(&base).await.ok();
    assert_eq!(event_ids(&all["chunk"]), [second.as_str(), first.as_str(), edit.as_str()]);
    let threads = alice.get(&format!("{base}/m.thread")).await.ok();
    assert_eq!(event_ids(&threads["chunk"]), [second.as_str(), first.as_str()]);
    let typed = alice.get(&format!("{base}/m.thread/m.room.message?dir=f&limit=1")).await.ok();
    assert_eq!(event_ids(&typed["chunk"]), [first.as_str()]);
    let next = typed["next_batch"].as_str().expect("a second page");
    let rest = alice.get(&format!("{base}/m.thread/m.room.message?dir=f&from={next}")).await.ok();
    assert_eq!(event_ids(&rest["chunk"]), [second.as_str()]);

    // The root carries its latest edit and a thread summary.
    let event = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{root}")).await.ok();
    let bundled = &event["unsigned"]["m.relations"];
    assert_eq!(bundled["m.replace"]["event_id"], edit.as_str());
    assert_eq!(bundled["m.thread"]["count"], 2);
    assert_eq!(bundled["m.thread"]["latest_event"]["event_id"], second.as_str());
    assert_eq!(bundled["m.thread"]["current_user_participated"], true);

    // The threads list: the root, once.
    let list = bob.get(&format!("/_matrix/client/v1/rooms/{room_id}/threads")).await.ok();
    assert_eq!(event_ids(&list["chunk"]), [root.as_str()]);

    // /context around the first reply.
    let context = alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/context/{first}?limit=2"))
        .await
        .ok();
    assert_eq!(context["event"]["event_id"], first.as_str());
    assert_eq!(event_ids(&context["events_before"])[0], edit.as_str());
    assert_eq!(event_ids(&context["events_after"]), [second.as_str()]);
    assert!(context["start"].is_string() && context["end"].is_string());
    let state_types: Vec<&str> = context["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert!(state_types.contains(&"m.room.create"), "{state_types:?}");
}

#[tokio::test]
async fn relations_made_after_someone_left_stay_hidden_from_them() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "",
                                "content": { "history_visibility": "joined" } }],
        }))
        .await;
    bob.join(&room_id).await;
    let root = send(&alice, &room_id, json!({ "msgtype": "m.text", "body": "plans" })).await;
    let seen = send(&alice, &room_id, thread_reply(&root, "before bob left")).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let hidden = send(&alice, &room_id, thread_reply(&root, "after bob left")).await;

    // Bob still sees the root and the reply from his time in the room, not the later one.
    let relations = bob
        .get(&format!("/_matrix/client/v1/rooms/{room_id}/relations/{root}/m.thread"))
        .await
        .ok();
    assert_eq!(event_ids(&relations["chunk"]), [seen.as_str()]);
    let event = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{root}")).await.ok();
    let thread = &event["unsigned"]["m.relations"]["m.thread"];
    assert_ne!(thread["latest_event"]["event_id"], hidden.as_str(), "{event}");
    bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{hidden}"))
        .await
        .expect_error(404, "M_NOT_FOUND");
    bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/context/{hidden}"))
        .await
        .expect_error(404, "M_NOT_FOUND");

    // Alice sees the whole thread.
    let event = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{root}")).await.ok();
    assert_eq!(
        event["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
        hidden.as_str()
    );

    // Search finds nothing from before a late joiner came, under `joined` visibility.
    let carol = Api::new_user(&server.base_url, "carol").await;
    carol.join(&room_id).await;
    let search = json!({ "search_categories": { "room_events": { "search_term": "bob" } } });
    let found = carol.post("/_matrix/client/v3/search", search.clone()).await.ok();
    let results = found["search_categories"]["room_events"]["results"].as_array();
    assert!(results.is_none_or(|results| results.is_empty()), "{found}");
    let found = alice.post("/_matrix/client/v3/search", search).await.ok();
    assert_eq!(found["search_categories"]["room_events"]["count"], 2, "{found}");
}
