//! Device lists, keys and to-device messages between Rhizome and Synapse, over raw HTTP with
//! devices that sign their keys: each server fetches the other's users' lists, applies the other's
//! `m.device_list_update` EDUs, answers its key queries and claims, and delivers its to-device
//! messages.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use rhizome_testkit::{
    Api, TestServer, encode,
    synapse::{Synapse, SynapseOptions},
};
use serde_json::{Value, json};

use crate::e2ee::{Device, device_list, key_pair, next_batch, to_device_events};

const PATIENCE: Duration = Duration::from_secs(30);

/// A device with fresh identity keys for a logged-in client.
fn device_for(api: Api, device_id: &str) -> Device {
    let (pair, ed25519) = key_pair(device_id);
    let (_, curve25519) = key_pair("curve");
    let user_id = api.user().to_owned();
    Device { api, user_id, device_id: device_id.to_owned(), pair, ed25519, curve25519 }
}

/// A device on Synapse, driven over its client API (HTTPS) with the same signing helpers.
async fn synapse_device(synapse: &Synapse, localpart: &str) -> Device {
    let user = synapse.register(localpart, false).await;
    let mut api = Api::with_client(synapse.base_url(), synapse.client());
    api.token = Some(user.access_token);
    api.user_id = Some(user.user_id.to_string());
    device_for(api, &user.device_id)
}

/// A new device of the same user on Synapse.
async fn synapse_login(synapse: &Synapse, device: &Device) -> Device {
    let mut api = Api::with_client(synapse.base_url(), synapse.client());
    let localpart = device.user_id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let body = api
        .post(
            "/_matrix/client/v3/login",
            json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": localpart },
                "password": format!("{localpart}-password"),
            }),
        )
        .await
        .ok();
    api.token = body["access_token"].as_str().map(str::to_owned);
    api.user_id = Some(device.user_id.clone());
    device_for(api, body["device_id"].as_str().unwrap())
}

async fn devices_until(viewer: &Device, user: &str, count: usize) -> Value {
    let started = Instant::now();
    loop {
        let keys = viewer.query(&[user]).await;
        let devices = keys["device_keys"][user].as_object().map_or(0, |devices| devices.len());
        if devices == count {
            return keys;
        }
        assert!(started.elapsed() < PATIENCE, "never saw {count} devices of {user}: {keys}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn changed_until(viewer: &Device, since: &str, user: &str) -> String {
    let started = Instant::now();
    let mut since = since.to_owned();
    loop {
        let sync = viewer.api.sync(&format!("since={since}&timeout=1000")).await;
        since = next_batch(&sync);
        if device_list(&sync, "changed").iter().any(|changed| changed == user) {
            return since;
        }
        assert!(started.elapsed() < PATIENCE, "{user} never appeared in device_lists.changed");
    }
}

fn claimed_key(claim: &Value, user: &str, device: &str) -> String {
    let keys = claim["one_time_keys"][user][device].as_object();
    keys.and_then(|keys| keys.keys().next().cloned())
        .unwrap_or_else(|| panic!("no key claimed: {claim}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lists_keys_and_to_device_with_synapse() {
    let synapse =
        Synapse::start_with(SynapseOptions::default().ip(Ipv4Addr::new(127, 0, 0, 83))).await;
    let a = TestServer::start_federating("127.0.0.82").await;
    let alice = Device::register(&a, "alice").await;
    alice.upload_all(3).await;
    let sam = synapse_device(&synapse, "sam").await;
    sam.upload_all(3).await;
    let room = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    let since = next_batch(&alice.sync(None).await);
    let server = a.config.server_name.as_str();
    sam.api
        .post(&format!("/_matrix/client/v3/join/{}?server_name={server}", encode(&room)), json!({}))
        .await
        .ok();
    let since = changed_until(&alice, &since, &sam.user_id).await;

    // Each fetches the other's users' lists and keys.
    let keys = devices_until(&alice, &sam.user_id, 1).await;
    assert_eq!(
        keys["device_keys"][&sam.user_id][&sam.device_id]["keys"]
            [format!("ed25519:{}", sam.device_id)],
        sam.ed25519
    );
    let keys = devices_until(&sam, &alice.user_id, 1).await;
    assert_eq!(
        keys["device_keys"][&alice.user_id][&alice.device_id]["keys"]
            [format!("ed25519:{}", alice.device_id)],
        alice.ed25519
    );
    let claim = |device: &Device| json!({ "one_time_keys": { device.user_id.as_str(): { device.device_id.as_str(): "signed_curve25519" } } });
    let first = alice.api.post("/_matrix/client/v3/keys/claim", claim(&sam)).await.ok();
    let second = alice.api.post("/_matrix/client/v3/keys/claim", claim(&sam)).await.ok();
    assert_ne!(
        claimed_key(&first, &sam.user_id, &sam.device_id),
        claimed_key(&second, &sam.user_id, &sam.device_id)
    );
    let from_sam = sam.api.post("/_matrix/client/v3/keys/claim", claim(&alice)).await.ok();
    assert!(
        claimed_key(&from_sam, &alice.user_id, &alice.device_id).starts_with("signed_curve25519:K")
    );

    // Synapse's updates apply here, and ours there.
    let sam_laptop = synapse_login(&synapse, &sam).await;
    sam_laptop.upload_all(1).await;
    changed_until(&alice, &since, &sam.user_id).await;
    devices_until(&alice, &sam.user_id, 2).await;
    let alice_laptop = alice.login(&a).await;
    alice_laptop.upload_all(1).await;
    devices_until(&sam, &alice.user_id, 2).await;

    // To-device messages both ways.
    let sam_since = next_batch(&sam.sync(None).await);
    let body = json!({ "messages": { sam.user_id.as_str(): { "*": { "n": 1 } } } });
    alice.api.put("/_matrix/client/v3/sendToDevice/m.test.ping/s1", body).await.ok();
    let alice_since = next_batch(&alice.sync(None).await);
    let body =
        json!({ "messages": { alice.user_id.as_str(): { alice.device_id.as_str(): { "n": 2 } } } });
    sam.api.put("/_matrix/client/v3/sendToDevice/m.test.ping/s2", body).await.ok();
    for (device, since, from, n) in [(&sam, sam_since, &alice, 1), (&alice, alice_since, &sam, 2)] {
        let started = Instant::now();
        let mut since = since;
        loop {
            let sync = device.api.sync(&format!("since={since}&timeout=1000")).await;
            since = next_batch(&sync);
            let events = to_device_events(&sync);
            if let Some(event) = events.iter().find(|event| event["type"] == "m.test.ping") {
                assert_eq!(
                    (&event["sender"], &event["content"]["n"]),
                    (&json!(from.user_id), &json!(n))
                );
                break;
            }
            assert!(started.elapsed() < PATIENCE, "the to-device message never arrived");
        }
    }
}
