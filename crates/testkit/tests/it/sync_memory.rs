//! What a woken `/sync` answers from memory (the store's record of what changed lately, and
//! the values it remembers: one-time key counts, fallback keys, ignored users) stays right
//! across every write that changes it: messages, receipts, account data, ignoring and
//! un-ignoring, to-device messages, device lists, key uploads and claims, memberships, state,
//! redactions, a room upgrade and forgetting. Each step syncs from the previous token, so a
//! change the memory missed would be missing from the step's response.

use std::time::Duration;

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

use crate::e2ee::{Device, device_list, next_batch, to_device_events};

/// An incremental sync that returns at once.
async fn after(api: &Api, since: &str) -> Value {
    api.sync(&format!("since={since}&timeout=0")).await
}

/// An incremental sync waiting (up to 10 s) for what `write` does, started before it.
async fn woken<F: std::future::Future<Output = ()>>(api: &Api, since: &str, write: F) -> Value {
    let waiting = {
        let api = api.clone();
        let since = since.to_owned();
        tokio::spawn(async move { api.sync(&format!("since={since}&timeout=10000")).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    write.await;
    waiting.await.unwrap()
}

fn timeline_bodies(sync: &Value, room_id: &str) -> Vec<String> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|event| event["content"]["body"].as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn timeline_types(sync: &Value, section: &str, room_id: &str) -> Vec<String> {
    sync["rooms"][section][room_id]["timeline"]["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["type"].as_str()).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn one_time_count(sync: &Value) -> u64 {
    sync["device_one_time_keys_count"]["signed_curve25519"].as_u64().unwrap_or(0)
}

fn fallback_types(sync: &Value) -> Vec<Value> {
    sync["device_unused_fallback_key_types"].as_array().cloned().unwrap_or_default()
}

async fn claim(claimer: &Device, owner: &Device) -> Value {
    let wanted =
        json!({ "one_time_keys": { &owner.user_id: { &owner.device_id: "signed_curve25519" } } });
    claimer.api.post("/_matrix/client/v3/keys/claim", wanted).await.ok()
}

#[tokio::test]
async fn keys_inboxes_account_data_and_receipts_follow_every_write() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let room_id = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    bob.api.join(&room_id).await;
    let quiet_room = bob.api.create_room(json!({})).await;
    bob.upload_all(2).await;
    let mut since = next_batch(&bob.sync(None).await);

    // Nothing new: the counts are read (and remembered).
    let sync = after(&bob.api, &since).await;
    assert_eq!(one_time_count(&sync), 2, "{sync}");
    assert_eq!(fallback_types(&sync), vec![json!("signed_curve25519")]);
    since = next_batch(&sync);

    // A claim by someone else changes the remembered count; the fallback is used up last.
    claim(&alice, &bob).await;
    let sync = after(&bob.api, &since).await;
    assert_eq!(one_time_count(&sync), 1, "{sync}");
    claim(&alice, &bob).await;
    claim(&alice, &bob).await;
    let sync = after(&bob.api, &since).await;
    assert_eq!(one_time_count(&sync), 0, "{sync}");
    assert!(fallback_types(&sync).is_empty(), "the fallback key was claimed: {sync}");
    // An upload by the owner changes them again.
    bob.upload(json!({ "one_time_keys": bob.one_time_keys("L", 3) })).await.ok();
    let sync = after(&bob.api, &since).await;
    assert_eq!(one_time_count(&sync), 3, "{sync}");
    since = next_batch(&sync);

    // A message wakes the sync; the room without events stays out of it.
    let sync = woken(&bob.api, &since, async {
        alice.api.send_text(&room_id, "first").await;
    })
    .await;
    assert_eq!(timeline_bodies(&sync, &room_id), vec!["first"], "{sync}");
    assert!(sync["rooms"]["join"].get(&quiet_room).is_none(), "{sync}");
    since = next_batch(&sync);

    // A receipt.
    let event_id = alice.api.send_text(&room_id, "read me").await;
    let sync = after(&bob.api, &since).await;
    since = next_batch(&sync);
    let path = format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}");
    let sync = woken(&bob.api, &since, async {
        alice.api.post(&path, json!({})).await.ok();
    })
    .await;
    let ephemeral = &sync["rooms"]["join"][&room_id]["ephemeral"]["events"];
    assert!(ephemeral.to_string().contains(&alice.user_id), "{sync}");
    since = next_batch(&sync);

    // Account data, global and of a room.
    let user = bob.user_id.clone();
    let path = format!("/_matrix/client/v3/user/{user}/account_data/org.example.setting");
    bob.api.put(&path, json!({ "on": true })).await.ok();
    let path = format!("/_matrix/client/v3/user/{user}/rooms/{room_id}/account_data/org.example.r");
    bob.api.put(&path, json!({ "x": 1 })).await.ok();
    let sync = after(&bob.api, &since).await;
    assert!(sync["account_data"].to_string().contains("org.example.setting"), "{sync}");
    assert!(
        sync["rooms"]["join"][&room_id]["account_data"].to_string().contains("org.example.r"),
        "{sync}"
    );
    since = next_batch(&sync);

    // Ignoring hides the sender's next message; un-ignoring shows the one after.
    let path = format!("/_matrix/client/v3/user/{user}/account_data/m.ignored_user_list");
    bob.api.put(&path, json!({ "ignored_users": { &alice.user_id: {} } })).await.ok();
    let sync = after(&bob.api, &since).await;
    since = next_batch(&sync);
    alice.api.send_text(&room_id, "hidden").await;
    let sync = after(&bob.api, &since).await;
    assert!(timeline_bodies(&sync, &room_id).is_empty(), "{sync}");
    since = next_batch(&sync);
    bob.api.put(&path, json!({ "ignored_users": {} })).await.ok();
    alice.api.send_text(&room_id, "shown").await;
    let sync = after(&bob.api, &since).await;
    assert!(timeline_bodies(&sync, &room_id).contains(&"shown".to_owned()), "{sync}");
    since = next_batch(&sync);

    // To-device: an empty inbox is read, then a message arrives, once; then another.
    for (txn, text) in [("t1", "one"), ("t2", "two")] {
        let sync = after(&bob.api, &since).await;
        assert!(to_device_events(&sync).is_empty(), "{sync}");
        since = next_batch(&sync);
        let path = format!("/_matrix/client/v3/sendToDevice/org.example.ping/{txn}");
        let body = json!({ "messages": { &bob.user_id: { &bob.device_id: { "text": text } } } });
        let sync = woken(&bob.api, &since, async {
            alice.api.put(&path, body).await.ok();
        })
        .await;
        let events = to_device_events(&sync);
        assert_eq!(events.len(), 1, "{sync}");
        assert_eq!(events[0]["content"]["text"], text);
        since = next_batch(&sync);
    }

    // Device lists: a new device of a user sharing the room.
    let sync = after(&bob.api, &since).await;
    assert!(device_list(&sync, "changed").is_empty(), "{sync}");
    since = next_batch(&sync);
    let alice2 = alice.login(&server).await;
    alice2.upload_all(1).await;
    let sync = after(&bob.api, &since).await;
    assert!(device_list(&sync, "changed").contains(&alice.user_id), "{sync}");
}

#[tokio::test]
async fn rooms_follow_memberships_state_redactions_upgrades_and_forgetting() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let carol = Device::register(&server, "carol").await;
    let room_id = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    bob.api.join(&room_id).await;
    carol.upload_all(1).await;
    let mut since = next_batch(&bob.sync(None).await);
    since = next_batch(&after(&bob.api, &since).await);

    // A join: its member event, and the joiner's device list.
    let sync = woken(&bob.api, &since, async {
        carol.api.join(&room_id).await;
    })
    .await;
    assert!(timeline_types(&sync, "join", &room_id).contains(&"m.room.member".to_owned()));
    assert!(device_list(&sync, "changed").contains(&carol.user_id), "{sync}");
    since = next_batch(&sync);

    // A leave: the leaver's device list is no longer shared.
    carol.api.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let sync = after(&bob.api, &since).await;
    assert!(device_list(&sync, "left").contains(&carol.user_id), "{sync}");
    since = next_batch(&sync);

    // State.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/");
    alice.api.put(&path, json!({ "name": "Renamed" })).await.ok();
    let sync = after(&bob.api, &since).await;
    assert!(timeline_types(&sync, "join", &room_id).contains(&"m.room.name".to_owned()));
    since = next_batch(&sync);

    // A redaction.
    let event_id = alice.api.send_text(&room_id, "oops").await;
    let sync = after(&bob.api, &since).await;
    since = next_batch(&sync);
    let path = format!("/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/r1");
    let sync = woken(&bob.api, &since, async {
        alice.api.put(&path, json!({})).await.ok();
    })
    .await;
    assert!(timeline_types(&sync, "join", &room_id).contains(&"m.room.redaction".to_owned()));
    since = next_batch(&sync);

    // An upgrade: the tombstone in the old room; the new room once joined.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/upgrade");
    let new_room =
        alice.api.post(&path, json!({ "new_version": "11" })).await.ok()["replacement_room"]
            .as_str()
            .unwrap()
            .to_owned();
    let sync = after(&bob.api, &since).await;
    assert!(timeline_types(&sync, "join", &room_id).contains(&"m.room.tombstone".to_owned()));
    since = next_batch(&sync);
    bob.api.join(&new_room).await;
    alice.api.send_text(&new_room, "new home").await;
    let sync = after(&bob.api, &since).await;
    assert_eq!(timeline_bodies(&sync, &new_room).last().map(String::as_str), Some("new home"));
    since = next_batch(&sync);

    // Leaving and forgetting the old room: it shows once as left, then never again.
    bob.api.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let sync = after(&bob.api, &since).await;
    assert!(sync["rooms"]["leave"].get(&room_id).is_some(), "{sync}");
    since = next_batch(&sync);
    bob.api.post(&format!("/_matrix/client/v3/rooms/{room_id}/forget"), json!({})).await.ok();
    alice.api.send_text(&room_id, "after the forget").await;
    let sync = after(&bob.api, &since).await;
    assert!(sync["rooms"]["leave"].get(&room_id).is_none(), "{sync}");
    assert!(sync["rooms"]["join"].get(&room_id).is_none(), "{sync}");
    let initial = bob.sync(None).await;
    assert!(initial["rooms"]["leave"].get(&room_id).is_none(), "{initial}");
    assert!(initial["rooms"]["join"].get(&new_room).is_some(), "{initial}");
}

fn unread(sync: &Value, room_id: &str) -> (u64, u64) {
    let counts = &sync["rooms"]["join"][room_id]["unread_notifications"];
    (
        counts["notification_count"].as_u64().unwrap_or(0),
        counts["highlight_count"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn unread_counts_follow_messages_mentions_and_receipts() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let room_id = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    bob.api.join(&room_id).await;
    let mut since = next_batch(&bob.sync(None).await);

    alice.api.send_text(&room_id, "one").await;
    let sync = after(&bob.api, &since).await;
    assert_eq!(unread(&sync, &room_id), (1, 0), "{sync}");
    since = next_batch(&sync);
    // Remembered counts grow with each message, and a mention highlights.
    alice.api.send_text(&room_id, "two").await;
    let sync = after(&bob.api, &since).await;
    assert_eq!(unread(&sync, &room_id), (2, 0), "{sync}");
    since = next_batch(&sync);
    let mention = json!({ "msgtype": "m.text", "body": "hey bob",
        "m.mentions": { "user_ids": [&bob.user_id] } });
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/m1");
    let latest = alice.api.put(&path, mention).await.ok()["event_id"].as_str().unwrap().to_owned();
    let sync = after(&bob.api, &since).await;
    assert_eq!(unread(&sync, &room_id), (3, 1), "{sync}");
    since = next_batch(&sync);
    // Another member's receipt changes nothing of Bob's; Bob's own resets them.
    let receipt = |kind: &str, event_id: &str| {
        format!("/_matrix/client/v3/rooms/{room_id}/receipt/{kind}/{event_id}")
    };
    alice.api.post(&receipt("m.read", &latest), json!({})).await.ok();
    bob.api.send_text(&room_id, "I am here").await;
    let sync = after(&bob.api, &since).await;
    assert_eq!(unread(&sync, &room_id), (3, 1), "{sync}");
    since = next_batch(&sync);
    bob.api.post(&receipt("m.read", &latest), json!({})).await.ok();
    let sync = after(&bob.api, &since).await;
    assert_eq!(unread(&sync, &room_id), (0, 0), "{sync}");
    since = next_batch(&sync);
    let newest = alice.api.send_text(&room_id, "four").await;
    let sync = after(&bob.api, &since).await;
    assert_eq!(unread(&sync, &room_id), (1, 0), "{sync}");
    since = next_batch(&sync);
    // A private receipt counts as read too.
    bob.api.post(&receipt("m.read.private", &newest), json!({})).await.ok();
    alice.api.send_text(&room_id, "five").await;
    let sync = after(&bob.api, &since).await;
    assert_eq!(unread(&sync, &room_id), (1, 0), "{sync}");
}
