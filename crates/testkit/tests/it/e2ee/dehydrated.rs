//! Dehydrated devices (MSC3814) over HTTP: upload, fetch, keys served like any device's,
//! to-device messages collected with `next_batch`, replacement and deletion.

use rhizome_testkit::TestServer;
use serde_json::{Value, json};

use super::{Device, key_pair, next_batch, sign};

const BASE: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

/// The upload body of a dehydrated device with its own identity key.
fn dehydrated(owner: &Device, device_id: &str) -> Value {
    let (pair, ed25519) = key_pair(device_id);
    let (_, curve) = key_pair("curve");
    let device_keys = sign(
        &pair,
        &owner.user_id,
        json!({
            "user_id": owner.user_id,
            "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("ed25519:{device_id}"): ed25519, format!("curve25519:{device_id}"): curve },
            "dehydrated": true,
        }),
    );
    let (_, otk) = key_pair("otk");
    json!({
        "device_id": device_id,
        "initial_device_display_name": "Dehydrated device",
        "device_data": { "algorithm": "org.matrix.msc3814.v2", "device_pickle": "cGlja2xl", "nonce": "bm9uY2U" },
        "device_keys": device_keys,
        "one_time_keys": { "signed_curve25519:AAAA": sign(&pair, &owner.user_id, json!({ "key": otk })) },
    })
}

async fn device_ids(owner: &Device) -> Vec<String> {
    let devices = owner.api.get("/_matrix/client/v3/devices").await.ok();
    devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn dehydrated_devices_collect_messages_until_rehydrated() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let versions = alice.api.get("/_matrix/client/versions").await.ok();
    assert_eq!(versions["unstable_features"]["org.matrix.msc3814"], true, "{versions}");
    alice.api.get(BASE).await.expect_error(404, "M_NOT_FOUND");

    let put = alice.api.put(BASE, dehydrated(&alice, "DEHYDRATED1")).await.ok();
    assert_eq!(put["device_id"], "DEHYDRATED1");
    let fetched = alice.api.get(BASE).await.ok();
    assert_eq!(fetched["device_id"], "DEHYDRATED1");
    assert_eq!(fetched["device_data"]["device_pickle"], "cGlja2xl");
    assert!(device_ids(&alice).await.contains(&"DEHYDRATED1".to_owned()));
    let query = bob.query(&[&alice.user_id]).await;
    assert_eq!(query["device_keys"][&alice.user_id]["DEHYDRATED1"]["dehydrated"], true, "{query}");

    // Bob sends room keys to all of Alice's devices; the dehydrated one keeps them.
    bob.api
        .put(
            "/_matrix/client/v3/sendToDevice/m.room.encrypted/k1",
            json!({ "messages": { &alice.user_id: { "*": { "ciphertext": "room key" } } } }),
        )
        .await
        .ok();
    let events_path = format!("{BASE}/DEHYDRATED1/events");
    let first = alice.api.post(&events_path, json!({})).await.ok();
    let events = first["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{first}");
    assert_eq!(events[0]["content"]["ciphertext"], "room key");
    assert_eq!(events[0]["sender"], bob.user_id);
    // Asking again from the same point gives them again; from `next_batch`, nothing.
    assert_eq!(alice.api.post(&events_path, json!({})).await.ok()["events"], first["events"]);
    let next = next_batch(&first);
    let rest = alice.api.post(&events_path, json!({ "next_batch": next })).await.ok();
    assert_eq!(rest["events"], json!([]));
    // Only the user's own dehydrated device.
    alice
        .api
        .post(&format!("{BASE}/{}/events", alice.device_id), json!({}))
        .await
        .expect_error(403, "M_FORBIDDEN");
    bob.api.post(&events_path, json!({})).await.expect_error(403, "M_FORBIDDEN");

    // Bad uploads: a real device's ID, keys of another device, no algorithm.
    alice
        .api
        .put(BASE, dehydrated(&alice, &alice.device_id))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    let mut mismatched = dehydrated(&alice, "DEHYDRATED3");
    mismatched["device_id"] = json!("DEHYDRATED4");
    alice.api.put(BASE, mismatched).await.expect_error(400, "M_INVALID_PARAM");
    let mut no_algorithm = dehydrated(&alice, "DEHYDRATED5");
    no_algorithm["device_data"] = json!({ "device_pickle": "x" });
    alice.api.put(BASE, no_algorithm).await.expect_error(400, "M_BAD_JSON");
    assert_eq!(alice.api.get(BASE).await.ok()["device_id"], "DEHYDRATED1");

    // A new dehydrated device replaces the old one, which is deleted.
    alice.api.put(BASE, dehydrated(&alice, "DEHYDRATED2")).await.ok();
    let devices = device_ids(&alice).await;
    assert!(
        devices.contains(&"DEHYDRATED2".to_owned()) && !devices.contains(&"DEHYDRATED1".to_owned())
    );
    let query = bob.query(&[&alice.user_id]).await;
    assert!(query["device_keys"][&alice.user_id].get("DEHYDRATED1").is_none(), "{query}");
    let deleted = alice.api.delete(BASE).await.ok();
    assert_eq!(deleted["device_id"], "DEHYDRATED2");
    alice.api.get(BASE).await.expect_error(404, "M_NOT_FOUND");
    alice.api.delete(BASE).await.expect_error(404, "M_NOT_FOUND");
    assert_eq!(device_ids(&alice).await, [alice.device_id.as_str()]);
}
