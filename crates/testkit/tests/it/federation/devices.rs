//! End-to-end encryption between two Rhizome servers, over raw HTTP with devices that sign
//! their keys: device lists and cross-signing keys followed across servers (a join makes the
//! other side's users "changed", a new device and new keys reach the other server by
//! `m.device_list_update` and `m.signing_key_update`, a user who leaves is no longer tracked),
//! keys queried and claimed from the other server, signatures on the other server's users' keys,
//! to-device messages across servers, and an unreachable server reported in `failures`.

use std::time::{Duration, Instant};

use rhizome_testkit::{Api, TestServer, encode};
use ruma::{UserId, signatures::Ed25519KeyPair};
use serde_json::{Value, json};

use crate::e2ee::{Device, device_list, named_key_pair, next_batch, sign, to_device_events};

/// How long anything crossing servers may take here.
const PATIENCE: Duration = Duration::from_secs(20);

/// A user's master and self-signing key pairs, and a user-signing key pair.
pub struct CrossSigning {
    user_id: String,
    pub master: (Ed25519KeyPair, String),
    self_signing: (Ed25519KeyPair, String),
    pub user_signing: (Ed25519KeyPair, String),
}

impl CrossSigning {
    pub fn new(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            master: named_key_pair(),
            self_signing: named_key_pair(),
            user_signing: named_key_pair(),
        }
    }

    fn key(&self, usage: &str, public: &str) -> Value {
        json!({ "user_id": self.user_id, "usage": [usage], "keys": { format!("ed25519:{public}"): public } })
    }

    /// The upload body of all three keys.
    pub fn upload_body(&self) -> Value {
        json!({
            "master_key": self.key("master", &self.master.1),
            "self_signing_key":
                sign(&self.master.0, &self.user_id, self.key("self_signing", &self.self_signing.1)),
            "user_signing_key":
                sign(&self.master.0, &self.user_id, self.key("user_signing", &self.user_signing.1)),
        })
    }
}

/// A sliding sync request with the e2ee extension, from `pos`.
async fn sliding_e2ee(api: &Api, pos: Option<&str>) -> Value {
    let path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let path = match pos {
        Some(pos) => format!("{path}?pos={pos}&timeout=500"),
        None => path.to_owned(),
    };
    let body =
        json!({ "conn_id": "e2ee", "lists": {}, "extensions": { "e2ee": { "enabled": true } } });
    api.post(&path, body).await.ok()
}

/// Syncs `device` from `since` until `check` holds for a response; returns it.
async fn sync_until(
    device: &Device,
    since: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    let mut since = since.to_owned();
    loop {
        let sync = device.api.sync(&format!("since={since}&timeout=500")).await;
        if check(&sync) {
            return sync;
        }
        since = next_batch(&sync);
        assert!(started.elapsed() < PATIENCE, "never saw {what}");
    }
}

/// Queries until `check` holds for the answer; returns it.
async fn query_until(
    device: &Device,
    user: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let keys = device.query(&[user]).await;
        if check(&keys) {
            return keys;
        }
        assert!(started.elapsed() < PATIENCE, "never saw {what}: {keys}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn devices_of(keys: &Value, user: &str) -> Vec<String> {
    let mut devices: Vec<String> = keys["device_keys"][user]
        .as_object()
        .map(|devices| devices.keys().cloned().collect())
        .unwrap_or_default();
    devices.sort();
    devices
}

fn claim_body(user: &str, device: &str) -> Value {
    json!({ "one_time_keys": { user: { device: "signed_curve25519" } } })
}

/// Alice on A, Bob on B, both with keys, in a public room on A that Bob joined.
async fn two_users_sharing_a_room(
    a: &TestServer,
    b: &TestServer,
    alias: &str,
) -> (Device, Device, String) {
    let alice = Device::register(a, "alice").await;
    alice.upload_all(5).await;
    let bob = Device::register(b, "bob").await;
    bob.upload_all(5).await;
    let room =
        alice.api.create_room(json!({ "preset": "public_chat", "room_alias_name": alias })).await;
    let alice_since = next_batch(&alice.sync(None).await);
    let bob_since = next_batch(&bob.sync(None).await);
    bob.api.join(&format!("#{alias}:{}", a.config.server_name)).await;
    // The resident side: Bob joining makes his device list "changed" for Alice.
    sync_until(&alice, &alice_since, "bob's list changed", |sync| {
        device_list(sync, "changed").contains(&bob.user_id)
    })
    .await;
    // The joining side: Alice's list is "changed" for Bob.
    sync_until(&bob, &bob_since, "alice's list changed", |sync| {
        device_list(sync, "changed").contains(&alice.user_id)
    })
    .await;
    (alice, bob, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lists_and_keys_cross_servers_and_stop_with_the_last_shared_room() {
    let a = TestServer::start_federating("127.0.0.80").await;
    let b = TestServer::start_federating("127.0.0.81").await;
    {
        let (alice, bob, room) = two_users_sharing_a_room(&a, &b, "keys").await;
        // Each sees the other's device keys, fetched from the other server, and no failures.
        let keys = alice.query(&[&bob.user_id]).await;
        assert_eq!(
            keys["device_keys"][&bob.user_id][&bob.device_id]["keys"]
                [format!("ed25519:{}", bob.device_id)],
            bob.ed25519,
            "{keys}"
        );
        assert!(keys["failures"].as_object().is_none_or(|failures| failures.is_empty()), "{keys}");
        let keys = bob.query(&[&alice.user_id]).await;
        assert_eq!(
            devices_of(&keys, &alice.user_id),
            std::slice::from_ref(&alice.device_id),
            "{keys}"
        );
        let bob_id = UserId::parse(&bob.user_id).unwrap();
        assert!(a.services().device_list_tracked(&bob_id).await.unwrap(), "A tracks Bob");

        // One-time keys are claimed from the other server, each once.
        let first = alice
            .api
            .post("/_matrix/client/v3/keys/claim", claim_body(&bob.user_id, &bob.device_id))
            .await
            .ok();
        let second = alice
            .api
            .post("/_matrix/client/v3/keys/claim", claim_body(&bob.user_id, &bob.device_id))
            .await
            .ok();
        let key_of = |claim: &Value| {
            let keys =
                claim["one_time_keys"][&bob.user_id][&bob.device_id].as_object().cloned().unwrap();
            assert_eq!(keys.len(), 1, "{claim}");
            keys.keys().next().unwrap().clone()
        };
        let (first, second) = (key_of(&first), key_of(&second));
        assert!(
            first.starts_with("signed_curve25519:K") && second.starts_with("signed_curve25519:K")
        );
        assert_ne!(first, second, "a one-time key was handed out twice");

        new_device_and_cross_signing_reach_the_other_server(&a, &alice, &b, &bob).await;
        to_device_messages_cross_once(&alice, &bob).await;

        // Bob leaves: Alice sees him "left", and A stops tracking him.
        let since = next_batch(&alice.sync(None).await);
        bob.api
            .post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&room)), json!({}))
            .await
            .ok();
        sync_until(&alice, &since, "bob left", |sync| {
            device_list(sync, "left").contains(&bob.user_id)
        })
        .await;
        let started = Instant::now();
        while a.services().device_list_tracked(&bob_id).await.unwrap() {
            assert!(started.elapsed() < PATIENCE, "A still tracks Bob after he left");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A later update of Bob's is not taken in.
        let since = next_batch(&bob.sync(None).await);
        bob.login(&b).await.upload_all(1).await;
        sync_until(&bob, &since, "bob's own change", |sync| {
            device_list(sync, "changed").contains(&bob.user_id)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!a.services().device_list_tracked(&bob_id).await.unwrap());
    }
}

/// Bob's new device and his cross-signing keys reach A by EDU; Alice signs Bob's master key.
async fn new_device_and_cross_signing_reach_the_other_server(
    a: &TestServer,
    alice: &Device,
    b: &TestServer,
    bob: &Device,
) {
    let since = next_batch(&alice.sync(None).await);
    let sliding_pos = sliding_e2ee(&alice.api, None).await["pos"].as_str().unwrap().to_owned();
    let fetched_before = fetched_at(a, &bob.user_id).await;
    let laptop = bob.login(b).await;
    let uploaded = Instant::now();
    laptop.upload_all(2).await;
    // The list is applied from the update: Alice's next query is answered from A's cache.
    let keys = query_until(alice, &bob.user_id, "bob's laptop", |keys| {
        devices_of(keys, &bob.user_id).contains(&laptop.device_id)
            && keys["device_keys"][&bob.user_id][&laptop.device_id]["keys"].is_object()
    })
    .await;
    let in_query = uploaded.elapsed();
    sync_until(alice, &since, "bob changed", |sync| {
        device_list(sync, "changed").contains(&bob.user_id)
    })
    .await;
    let in_sync = uploaded.elapsed();
    // Sliding sync's e2ee extension says so too.
    let mut pos = sliding_pos;
    loop {
        let response = sliding_e2ee(&alice.api, Some(&pos)).await;
        let changed = &response["extensions"]["e2ee"]["device_lists"]["changed"];
        if changed
            .as_array()
            .is_some_and(|users| users.iter().any(|user| *user == bob.user_id.as_str()))
        {
            break;
        }
        assert!(uploaded.elapsed() < PATIENCE, "sliding sync never said bob changed: {response}");
        pos = response["pos"].as_str().unwrap().to_owned();
    }
    println!(
        "a new remote device's keys reached the other server's /keys/query in {in_query:?} and \
         device_lists.changed in {in_sync:?}"
    );
    assert_eq!(devices_of(&keys, &bob.user_id).len(), 2);
    assert_eq!(
        fetched_at(a, &bob.user_id).await,
        fetched_before,
        "the update was applied without fetching the list again"
    );

    // Bob's cross-signing keys follow.
    let since = next_batch(&alice.sync(None).await);
    let cross = CrossSigning::new(&bob.user_id);
    bob.api.post("/_matrix/client/v3/keys/device_signing/upload", cross.upload_body()).await.ok();
    query_until(alice, &bob.user_id, "bob's master key", |keys| {
        keys["master_keys"][&bob.user_id]["keys"][format!("ed25519:{}", cross.master.1)]
            == cross.master.1
            && keys["self_signing_keys"][&bob.user_id].is_object()
            && keys["user_signing_keys"][&bob.user_id].is_null()
    })
    .await;
    sync_until(alice, &since, "bob's keys changed", |sync| {
        device_list(sync, "changed").contains(&bob.user_id)
    })
    .await;

    // Alice signs Bob's master key: stored on A, seen by Alice alone.
    let alice_cross = CrossSigning::new(&alice.user_id);
    alice
        .api
        .post("/_matrix/client/v3/keys/device_signing/upload", alice_cross.upload_body())
        .await
        .ok();
    let bob_master = json!({
        "user_id": bob.user_id,
        "usage": ["master"],
        "keys": { format!("ed25519:{}", cross.master.1): cross.master.1 },
    });
    let signed = sign(&alice_cross.user_signing.0, &alice.user_id, bob_master);
    let answer = alice
        .api
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            json!({ bob.user_id.as_str(): { cross.master.1.as_str(): signed } }),
        )
        .await
        .ok();
    assert!(answer["failures"].as_object().is_none_or(|failures| failures.is_empty()), "{answer}");
    let keys = alice.query(&[&bob.user_id]).await;
    let signatures = &keys["master_keys"][&bob.user_id]["signatures"];
    assert!(
        signatures[&alice.user_id][format!("ed25519:{}", alice_cross.user_signing.1)].is_string(),
        "{keys}"
    );
}

/// When `server` last fetched `user`'s device list whole.
async fn fetched_at(server: &TestServer, user: &str) -> i64 {
    let user = UserId::parse(user).unwrap();
    server.services().cached_device_list(&user).await.unwrap().expect("a tracked list").fetched_ts
}

/// To-device messages to another server's user, to all their devices and to one, arrive once.
async fn to_device_messages_cross_once(alice: &Device, bob: &Device) {
    let bob_since = next_batch(&bob.sync(None).await);
    let path = "/_matrix/client/v3/sendToDevice/m.test.ping/txn-1";
    let body = json!({ "messages": { bob.user_id.as_str(): { "*": { "n": 1 } } } });
    alice.api.put(path, body.clone()).await.ok();
    // A retried transaction sends nothing again.
    alice.api.put(path, body).await.ok();
    let body =
        json!({ "messages": { bob.user_id.as_str(): { bob.device_id.as_str(): { "n": 2 } } } });
    alice.api.put("/_matrix/client/v3/sendToDevice/m.test.ping/txn-2", body).await.ok();
    let started = Instant::now();
    let mut since = bob_since;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        assert!(started.elapsed() < PATIENCE, "to-device messages missing: {seen:?}");
        let sync = bob.sync(Some(&since)).await;
        since = next_batch(&sync);
        for event in to_device_events(&sync) {
            assert_eq!(event["sender"], alice.user_id.as_str());
            assert_eq!(event["type"], "m.test.ping");
            seen.push(event["content"]["n"].as_i64().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more comes: each message was delivered once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sync = bob.sync(Some(&since)).await;
    seen.extend(to_device_events(&sync).iter().filter_map(|event| event["content"]["n"].as_i64()));
    seen.sort_unstable();
    assert_eq!(seen, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_in_failures() {
    let a = TestServer::start_federating("127.0.0.82").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    // Nothing listens there.
    let nobody = "@nobody:127.0.0.83:9";
    let started = Instant::now();
    let keys = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({ "device_keys": { nobody: [], alice.user(): [] } }),
        )
        .await
        .ok();
    assert!(keys["failures"]["127.0.0.83:9"].is_object(), "{keys}");
    assert!(keys["device_keys"][alice.user()].is_object(), "local users are still answered");
    let claim =
        alice.post("/_matrix/client/v3/keys/claim", claim_body(nobody, "DEVICE")).await.ok();
    assert!(claim["failures"]["127.0.0.83:9"].is_object(), "{claim}");
    assert!(started.elapsed() < Duration::from_secs(15), "the failures took too long");
}
