//! `/keys/upload`, `/keys/query` and `/keys/claim`: what is stored, what others see, bad
//! input refused without changing anything, and one-time keys handed out once under
//! concurrent claims.

use std::collections::HashSet;

use rhizome_testkit::{Backend, TestServer};
use serde_json::{Value, json};

use super::{Device, sign};

#[tokio::test]
async fn uploaded_keys_are_served_with_counts_and_display_names() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let counts = alice.upload_all(5).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 5, "{counts}");
    // Counts always name signed_curve25519, so clients know to upload.
    let empty = bob.upload(json!({})).await.ok();
    assert_eq!(empty["one_time_key_counts"], json!({ "signed_curve25519": 0 }));

    let rename = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    alice.api.put(&rename, json!({ "display_name": "Alice's phone" })).await.ok();
    let query = bob.query(&[&alice.user_id, &bob.user_id]).await;
    let keys = &query["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(keys["unsigned"], json!({ "device_display_name": "Alice's phone" }), "{keys}");
    // Apart from `unsigned`, the keys are exactly what the device uploaded.
    let mut served = keys.clone();
    served.as_object_mut().unwrap().remove("unsigned");
    assert_eq!(served, alice.device_keys());
    // Bob uploaded no device keys: he is listed with no devices.
    assert_eq!(query["device_keys"][&bob.user_id], json!({}));
    // Users of other servers are reported as failures.
    let remote = bob
        .api
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { "@x:elsewhere.example": [] } }),
        )
        .await
        .ok();
    assert!(remote["failures"]["elsewhere.example"].is_object(), "{remote}");

    // More keys add up; the same ones again change nothing.
    let more = json!({ "one_time_keys": alice.one_time_keys("L", 3) });
    let again = alice.upload(more.clone()).await.ok();
    assert_eq!(again["one_time_key_counts"]["signed_curve25519"], 8);
    assert_eq!(alice.upload(more).await.ok()["one_time_key_counts"]["signed_curve25519"], 8);
    let sync = alice.sync(None).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 8, "{sync}");
    assert_eq!(sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]));
}

#[tokio::test]
async fn bad_keys_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    alice.upload_all(2).await;
    let before = bob.query(&[&alice.user_id]).await;
    let upload = |body: Value| alice.upload(body);

    // Keys naming another user or device.
    let mut other_user = alice.device_keys();
    other_user.as_object_mut().unwrap().remove("signatures");
    other_user["user_id"] = json!(bob.user_id);
    upload(json!({ "device_keys": sign(&alice.pair, &bob.user_id, other_user) }))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    let mut other_device = alice.device_keys();
    other_device["device_id"] = json!("SOMEONEELSE");
    upload(json!({ "device_keys": other_device })).await.expect_error(400, "M_INVALID_PARAM");
    // Malformed keys.
    let mut missing = alice.device_keys();
    missing.as_object_mut().unwrap().remove("algorithms");
    upload(json!({ "device_keys": missing })).await.expect_error(400, "M_BAD_JSON");
    upload(json!({ "device_keys": "text" })).await.expect_error(400, "M_BAD_JSON");
    upload(json!({ "one_time_keys": { "signed_curve25519:X": 5 } }))
        .await
        .expect_error(400, "M_BAD_JSON");
    upload(json!({ "one_time_keys": { "no-algorithm": alice.signed_key(false) } }))
        .await
        .expect_error(400, "M_BAD_JSON");
    // A key ID reused with another key refuses the whole upload: the good key in it is not
    // stored either.
    upload(json!({ "one_time_keys": {
        "signed_curve25519:NEW2": alice.signed_key(false),
        "signed_curve25519:K0000": alice.signed_key(false),
    } }))
    .await
    .expect_error(400, "M_INVALID_PARAM");

    let counts = upload(json!({})).await.ok();
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 2);
    assert_eq!(bob.query(&[&alice.user_id]).await, before);
}

#[tokio::test]
async fn claims_take_one_time_keys_then_the_fallback_key() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    alice.upload_all(2).await;
    let wanted =
        json!({ "one_time_keys": { &alice.user_id: { &alice.device_id: "signed_curve25519" } } });
    let mut claimed = Vec::new();
    for _ in 0..4 {
        let body = bob.api.post("/_matrix/client/v3/keys/claim", wanted.clone()).await.ok();
        let keys =
            body["one_time_keys"][&alice.user_id][&alice.device_id].as_object().unwrap().clone();
        assert_eq!(keys.len(), 1, "{body}");
        let (key_id, key) = keys.into_iter().next().unwrap();
        assert!(key["signatures"][&alice.user_id].is_object());
        claimed.push((key_id, key["fallback"].as_bool().unwrap_or(false)));
    }
    let ids: Vec<_> = claimed.iter().map(|(id, fallback)| (id.as_str(), *fallback)).collect();
    assert_eq!(
        ids,
        [
            ("signed_curve25519:K0000", false),
            ("signed_curve25519:K0001", false),
            ("signed_curve25519:FB", true),
            ("signed_curve25519:FB", true),
        ]
    );
    let sync = alice.sync(None).await;
    assert_eq!(sync["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert_eq!(sync["device_unused_fallback_key_types"], json!([]));
    // Unknown devices give nothing.
    let none = bob
        .api
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { &alice.user_id: { "NOPE": "signed_curve25519" } } }),
        )
        .await
        .ok();
    assert_eq!(none["one_time_keys"], json!({}));
}

async fn concurrent_claims(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    let alice = Device::register(&server, "alice").await;
    let keys = 60;
    let body = json!({ "device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys("C", keys) });
    let counts = alice.upload(body).await.ok();
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], keys);
    let mut claimers = Vec::new();
    for index in 0..4 {
        claimers.push(Device::register(&server, &format!("claimer{index}")).await);
    }
    let wanted =
        json!({ "one_time_keys": { &alice.user_id: { &alice.device_id: "signed_curve25519" } } });
    let mut tasks = Vec::new();
    for _ in 0..25 {
        for claimer in &claimers {
            let api = claimer.api.clone();
            let wanted = wanted.clone();
            tasks.push(tokio::spawn(async move {
                api.post("/_matrix/client/v3/keys/claim", wanted).await.ok()
            }));
        }
    }
    let mut handed_out = Vec::new();
    for task in tasks {
        let body = task.await.unwrap();
        if let Some(devices) = body["one_time_keys"][&alice.user_id].as_object() {
            for device in devices.values() {
                handed_out.extend(device.as_object().unwrap().keys().cloned());
            }
        }
    }
    let distinct: HashSet<_> = handed_out.iter().collect();
    assert_eq!(handed_out.len(), keys, "100 claims of 60 keys (no fallback) hand out all 60");
    assert_eq!(distinct.len(), keys, "no one-time key is handed out twice");
    let left = alice.upload(json!({})).await.ok();
    assert_eq!(left["one_time_key_counts"]["signed_curve25519"], 0);
}

#[tokio::test]
async fn concurrent_claims_never_hand_out_a_key_twice() {
    concurrent_claims(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_claims_never_hand_out_a_key_twice_on_postgresql() {
    concurrent_claims(Backend::Postgres).await;
}

#[tokio::test]
async fn keys_are_taken_as_uploaded_their_signatures_left_to_clients() {
    // The spec asks clients, not the server, to verify a device's signatures: keys signed by
    // nobody in particular (as the Matrix test suites upload them) are stored and served.
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let fake = json!({
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": { format!("ed25519:{}", alice.device_id): "anotherpubkey" },
        "signatures": { &alice.user_id: { format!("ed25519:{}", alice.device_id): "self-signature" } },
    });
    let one_time = json!({ "signed_curve25519:AAAAHQ": {
        "key": "onetimekey",
        "signatures": { &alice.user_id: { format!("ed25519:{}", alice.device_id): "anything" } },
    } });
    let counts = alice.upload(json!({ "device_keys": fake, "one_time_keys": one_time })).await.ok();
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 1);
    let keys = bob.query(&[&alice.user_id]).await;
    let served = &keys["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(served["keys"][format!("ed25519:{}", alice.device_id)], "anotherpubkey", "{keys}");
    let wanted =
        json!({ "one_time_keys": { &alice.user_id: { &alice.device_id: "signed_curve25519" } } });
    let claimed = bob.api.post("/_matrix/client/v3/keys/claim", wanted).await.ok();
    let key =
        &claimed["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:AAAAHQ"];
    assert_eq!(key["key"], "onetimekey", "{claimed}");
}
