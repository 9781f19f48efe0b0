//! Device lists over HTTP: `device_lists.changed` and `left` in `/sync` and `/keys/changes`,
//! deleting a device deleting its keys and waiting messages, and encrypted room events stored
//! and relayed untouched.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

use super::{Device, PASSWORD, device_list, next_batch, to_device_events};

fn password_login(user_id: &str, device_id: Option<&str>) -> Value {
    let mut body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user_id },
        "password": PASSWORD,
    });
    if let Some(device_id) = device_id {
        body["device_id"] = json!(device_id);
    }
    body
}

#[tokio::test]
async fn device_lists_follow_key_changes_and_shared_rooms() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let carol = Device::register(&server, "carol").await;
    let dave = Device::register(&server, "dave").await;
    let room_id = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    bob.api.join(&room_id).await;
    let start = next_batch(&bob.sync(None).await);
    let alice_start = next_batch(&alice.sync(None).await);

    // Alice uploads keys; Dave (who shares no room with Bob) too.
    alice.upload_all(1).await;
    dave.upload_all(1).await;
    let after_keys = bob.sync(Some(&start)).await;
    assert_eq!(device_list(&after_keys, "changed"), [alice.user_id.as_str()], "{after_keys}");
    assert!(device_list(&after_keys, "left").is_empty());
    // Alice sees her own change.
    let own = alice.sync(Some(&alice_start)).await;
    assert!(device_list(&own, "changed").contains(&alice.user_id), "{own}");
    let mut since = next_batch(&after_keys);
    assert!(device_list(&bob.sync(Some(&since)).await, "changed").is_empty());

    // Carol newly shares a room with Bob: she is changed for him, and he (and Alice) for her.
    let carol_start = next_batch(&carol.sync(None).await);
    carol.api.join(&room_id).await;
    let joined = bob.sync(Some(&since)).await;
    assert_eq!(device_list(&joined, "changed"), [carol.user_id.as_str()], "{joined}");
    let carol_view = carol.sync(Some(&carol_start)).await;
    let mut carol_changed = device_list(&carol_view, "changed");
    carol_changed.sort();
    assert_eq!(carol_changed, [alice.user_id.clone(), bob.user_id.clone()], "{carol_view}");
    since = next_batch(&joined);

    // A new device of Alice's is a change.
    let alice_phone = alice.login(&server).await;
    alice_phone.upload_all(1).await;
    let phone = bob.sync(Some(&since)).await;
    assert_eq!(device_list(&phone, "changed"), [alice.user_id.as_str()]);
    since = next_batch(&phone);

    // Carol leaves: she shares no room with Bob any more.
    let leave = format!("/_matrix/client/v3/rooms/{}/leave", encode(&room_id));
    carol.api.post(&leave, json!({})).await.ok();
    let left = bob.sync(Some(&since)).await;
    assert_eq!(device_list(&left, "left"), [carol.user_id.as_str()], "{left}");
    assert!(!device_list(&left, "changed").contains(&carol.user_id));
    let end = next_batch(&left);

    // `/keys/changes` gives the same over the whole span.
    let path = format!("/_matrix/client/v3/keys/changes?from={start}&to={end}");
    let changes = bob.api.get(&path).await.ok();
    assert_eq!(changes["changed"], json!([alice.user_id]), "{changes}");
    assert_eq!(changes["left"], json!([carol.user_id]));
    bob.api
        .get(&format!("/_matrix/client/v3/keys/changes?from=nonsense&to={end}"))
        .await
        .expect_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn deleting_a_device_deletes_its_keys_and_messages() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let room_id = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    bob.api.join(&room_id).await;
    alice.upload_all(1).await;
    let phone = alice.login(&server).await;
    phone.upload_all(3).await;
    let message =
        json!({ "messages": { &alice.user_id: { &phone.device_id: { "for": "phone" } } } });
    bob.api.put("/_matrix/client/v3/sendToDevice/m.test/d1", message).await.ok();
    let devices = bob.query(&[&alice.user_id]).await;
    assert!(devices["device_keys"][&alice.user_id][&phone.device_id].is_object());
    let since = next_batch(&bob.sync(None).await);

    let path = format!("/_matrix/client/v3/devices/{}", phone.device_id);
    let challenge = alice.api.delete(&path).await;
    let mut auth = password_login(&alice.user_id, None);
    auth["session"] = challenge.body["session"].clone();
    alice.api.call(reqwest::Method::DELETE, &path, Some(json!({ "auth": auth }))).await.ok();

    assert!(device_list(&bob.sync(Some(&since)).await, "changed").contains(&alice.user_id));
    let devices = bob.query(&[&alice.user_id]).await;
    let remaining: Vec<_> =
        devices["device_keys"][&alice.user_id].as_object().unwrap().keys().cloned().collect();
    assert_eq!(remaining, [alice.device_id.as_str()]);
    let wanted =
        json!({ "one_time_keys": { &alice.user_id: { &phone.device_id: "signed_curve25519" } } });
    let claim = bob.api.post("/_matrix/client/v3/keys/claim", wanted).await.ok();
    assert_eq!(claim["one_time_keys"], json!({}), "{claim}");

    // Logging in again with the same device ID finds nothing of the old device.
    let mut again = Api::new(&server.base_url);
    let login = password_login(&alice.user_id, Some(&phone.device_id));
    let body = again.post("/_matrix/client/v3/login", login).await.ok();
    again.token = body["access_token"].as_str().map(str::to_owned);
    let sync = again.sync("timeout=0").await;
    assert!(to_device_events(&sync).is_empty(), "{sync}");
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
}

#[tokio::test]
async fn encrypted_rooms_and_events_are_relayed_untouched() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let encryption = json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "rotation_period_ms": 604800000,
        "rotation_period_msgs": 100,
    });
    let initial_state =
        json!([{ "type": "m.room.encryption", "state_key": "", "content": encryption }]);
    let room_id = alice
        .api
        .create_room(json!({ "preset": "public_chat", "initial_state": initial_state }))
        .await;
    bob.api.join(&room_id).await;
    let since = next_batch(&bob.sync(None).await);
    let ciphertext = json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "QmFzZTY0IGNpcGhlcnRleHQ",
        "device_id": alice.device_id,
        "sender_key": "c2VuZGVyIGtleQ",
        "session_id": "c2Vzc2lvbg",
        "m.relates_to": { "rel_type": "m.thread", "event_id": "$root" },
    });
    let send = format!("/_matrix/client/v3/rooms/{}/send/m.room.encrypted/e1", encode(&room_id));
    alice.api.put(&send, ciphertext.clone()).await.ok();
    let state = format!("/_matrix/client/v3/rooms/{}/state/m.room.encryption/", encode(&room_id));
    assert_eq!(bob.api.get(&state).await.ok(), encryption);
    let sync = bob.sync(Some(&since)).await;
    let events = sync["rooms"]["join"][&room_id]["timeline"]["events"].as_array().unwrap().clone();
    let event = events.iter().find(|event| event["type"] == "m.room.encrypted").unwrap();
    assert_eq!(event["content"], ciphertext, "{sync}");
}
