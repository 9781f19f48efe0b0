//! `/notifications` over HTTP: the events that notified a user, newest first, with their
//! actions, read state and pagination, on SQLite and PostgreSQL.

use rhizome_testkit::{Api, Backend, TestServer};
use serde_json::{Value, json};

fn bodies(page: &Value) -> Vec<&str> {
    page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|notification| notification["event"]["content"]["body"].as_str().unwrap())
        .collect()
}

async fn notifications_list_what_notified(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    // Three members: plain messages notify by `.m.rule.message`, mentions also highlight.
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;
    let first = alice.send_text(&room_id, "first").await;
    let mention = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/mention1"),
            json!({
                "msgtype": "m.text", "body": "bob: look",
                "m.mentions": { "user_ids": ["@bob:localhost"] },
            }),
        )
        .await
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.send_text(&room_id, "third").await;
    // Bob's own messages never notify him.
    bob.send_text(&room_id, "from bob").await;

    let page = bob.get("/_matrix/client/v3/notifications").await.ok();
    assert_eq!(bodies(&page), ["third", "bob: look", "first"]);
    assert!(page.get("next_token").is_none(), "{page}");
    let latest = &page["notifications"][0];
    assert_eq!(latest["room_id"], room_id);
    assert_eq!(latest["read"], false);
    assert_eq!(latest["event"]["sender"], "@alice:localhost");
    assert!(latest["event"].get("room_id").is_none(), "events come without room_id");
    assert!(latest["ts"].as_u64().unwrap() > 0);
    assert_eq!(latest["actions"], json!(["notify"]));
    let highlighted = &page["notifications"][1];
    assert_eq!(highlighted["event"]["event_id"], mention);
    let actions = highlighted["actions"].as_array().unwrap();
    assert!(actions.contains(&json!("notify")), "{actions:?}");
    assert!(actions.contains(&json!({ "set_tweak": "highlight" })), "{actions:?}");

    let highlights = bob.get("/_matrix/client/v3/notifications?only=highlight").await.ok();
    assert_eq!(bodies(&highlights), ["bob: look"]);
    let carols = carol.get("/_matrix/client/v3/notifications?only=highlight").await.ok();
    assert!(carols["notifications"].as_array().unwrap().is_empty());
    assert_eq!(bodies(&carol.get("/_matrix/client/v3/notifications").await.ok()).len(), 4);

    // Pages of two, then one, and the token runs out.
    let page = bob.get("/_matrix/client/v3/notifications?limit=2").await.ok();
    assert_eq!(bodies(&page), ["third", "bob: look"]);
    let token = page["next_token"].as_str().unwrap();
    let rest =
        bob.get(&format!("/_matrix/client/v3/notifications?limit=2&from={token}")).await.ok();
    assert_eq!(bodies(&rest), ["first"]);
    assert!(rest.get("next_token").is_none(), "{rest}");

    // A read receipt on the mention marks it and everything before it read.
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{mention}"), json!({}))
        .await
        .ok();
    let page = bob.get("/_matrix/client/v3/notifications").await.ok();
    let read: Vec<&Value> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|notification| &notification["read"])
        .collect();
    assert_eq!(read, [&json!(false), &json!(true), &json!(true)]);
    assert_eq!(first, page["notifications"][2]["event"]["event_id"].as_str().unwrap());

    // Bad input.
    bob.get("/_matrix/client/v3/notifications?from=yesterday")
        .await
        .expect_error(400, "M_INVALID_PARAM");
    bob.get("/_matrix/client/v3/notifications?only=everything")
        .await
        .expect_error(400, "M_INVALID_PARAM");
    Api::new(&server.base_url)
        .get("/_matrix/client/v3/notifications")
        .await
        .expect_error(401, "M_MISSING_TOKEN");
    // The r0 path is served too.
    assert_eq!(bodies(&bob.get("/_matrix/client/r0/notifications?limit=1").await.ok()), ["third"]);
}

#[tokio::test]
async fn notifications_list_what_notified_on_sqlite() {
    notifications_list_what_notified(Backend::Sqlite).await;
}

#[tokio::test]
async fn notifications_list_what_notified_on_postgres() {
    notifications_list_what_notified(Backend::Postgres).await;
}

#[tokio::test]
async fn redacted_notifications_show_the_redacted_event() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let event_id = alice.send_text(&room_id, "oops").await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/r1"),
            json!({ "reason": "typo" }),
        )
        .await
        .ok();
    let page = bob.get("/_matrix/client/v3/notifications").await.ok();
    let notification = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|notification| notification["event"]["event_id"] == event_id.as_str())
        .expect("the redacted message is still listed");
    assert!(notification["event"]["content"].as_object().unwrap().is_empty(), "{notification}");
}

#[tokio::test]
async fn threads_have_their_own_unread_counts_and_receipts() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let send = |txn: &'static str, content: Value| {
        let alice = alice.clone();
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
        async move { alice.put(&path, content).await.ok()["event_id"].as_str().unwrap().to_owned() }
    };
    let root = send("root", json!({ "msgtype": "m.text", "body": "root" })).await;
    let reply = |body: &str| {
        json!({ "msgtype": "m.text", "body": body,
                "m.relates_to": { "rel_type": "m.thread", "event_id": root } })
    };
    send("reply1", reply("one")).await;
    let last_reply = send("reply2", reply("two")).await;
    let mention = send(
        "mention",
        json!({ "msgtype": "m.text", "body": "bob?", "m.mentions": { "user_ids": [bob.user()] } }),
    )
    .await;

    let threaded = rhizome_testkit::encode(
        &json!({ "room": { "timeline": { "unread_thread_notifications": true } } }).to_string(),
    );
    let counts = |sync: &Value| {
        let room = &sync["rooms"]["join"][&room_id];
        (room["unread_notifications"].clone(), room["unread_thread_notifications"].clone())
    };
    let (all, threads) = counts(&bob.sync("timeout=0").await);
    assert_eq!(all, json!({ "notification_count": 4, "highlight_count": 1 }));
    assert!(threads.is_null() || threads == json!({}), "{threads}");
    let (main, threads) = counts(&bob.sync(&format!("filter={threaded}&timeout=0")).await);
    assert_eq!(main, json!({ "notification_count": 2, "highlight_count": 1 }));
    assert_eq!(threads, json!({ root.clone(): { "notification_count": 2, "highlight_count": 0 } }));

    // A threaded receipt reads its thread only; one on `main` reads the main timeline.
    let receipt =
        |event_id: &str| format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}");
    bob.post(&receipt(&last_reply), json!({ "thread_id": root })).await.ok();
    let (main, threads) = counts(&bob.sync(&format!("filter={threaded}&timeout=0")).await);
    assert_eq!(main["notification_count"], 2);
    assert!(threads.is_null() || threads == json!({}), "{threads}");
    bob.post(&receipt(&mention), json!({ "thread_id": "main" })).await.ok();
    let (all, _) = counts(&bob.sync("timeout=0").await);
    assert_eq!(all, json!({ "notification_count": 0, "highlight_count": 0 }));
    // Others see the threaded receipt with its thread.
    let receipts = alice.sync("timeout=0").await["rooms"]["join"][&room_id]["ephemeral"].clone();
    let receipt_event = receipts["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "m.receipt")
        .cloned()
        .unwrap();
    assert_eq!(
        receipt_event["content"][&last_reply]["m.read"][bob.user()]["thread_id"],
        root.as_str()
    );
}

/// Old notifications go, as the organiser set: here read ones (mentions too) at once, unread
/// ones after the default 90 days. What is unread stays listed and counted.
async fn read_notifications_are_pruned_after_the_set_time(backend: Backend) {
    let server = TestServer::start_with(backend, |config| {
        config.push.keep_read_days = 0;
        config.push.keep_read_mentions_days = 0;
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;
    alice.send_text(&room_id, "first").await;
    let mention = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/mention2"),
            json!({
                "msgtype": "m.text", "body": "bob: look",
                "m.mentions": { "user_ids": ["@bob:localhost"] },
            }),
        )
        .await
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.send_text(&room_id, "unread").await;
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{mention}"), json!({}))
        .await
        .ok();
    let page = bob.get("/_matrix/client/v3/notifications").await.ok();
    assert_eq!(bodies(&page), ["unread", "bob: look", "first"]);

    // The pruner's run at start-up may still hold its lease a moment.
    let services = server.services();
    let started = std::time::Instant::now();
    let mut pruned = 0;
    while pruned == 0 && started.elapsed() < std::time::Duration::from_secs(10) {
        pruned = services.prune_push_actions_once().await.unwrap();
        if pruned == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    assert_eq!(pruned, 2, "bob's two read notifications (carol read nothing)");
    let page = bob.get("/_matrix/client/v3/notifications").await.ok();
    assert_eq!(bodies(&page), ["unread"]);
    let sync = bob.sync("timeout=0").await;
    let counts = &sync["rooms"]["join"][&room_id]["unread_notifications"];
    assert_eq!(counts["notification_count"], 1, "{counts}");
    assert_eq!(counts["highlight_count"], 0, "{counts}");
    assert_eq!(bodies(&carol.get("/_matrix/client/v3/notifications").await.ok()).len(), 3);
}

#[tokio::test]
async fn read_notifications_are_pruned_after_the_set_time_on_sqlite() {
    read_notifications_are_pruned_after_the_set_time(Backend::Sqlite).await;
}

#[tokio::test]
async fn read_notifications_are_pruned_after_the_set_time_on_postgres() {
    read_notifications_are_pruned_after_the_set_time(Backend::Postgres).await;
}
