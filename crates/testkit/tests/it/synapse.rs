//! Synapse as a test peer: it starts, registers users through the shared-secret API, runs a
//! room over its client API, serves a self-signed key document and its version over federation,
//! and two instances federate with each other over loopback.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rhizome_testkit::synapse::{RegisteredUser, Synapse, SynapseOptions};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet, verify_json},
};
use serde_json::{Value, json};

/// A client API call as `user`, returning the status and the JSON body.
async fn call(
    synapse: &Synapse,
    user: &RegisteredUser,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request =
        synapse.client().request(method, synapse.url(path)).bearer_auth(&user.access_token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("a response from Synapse");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A unique localpart, as the shared Synapse outlives single tests.
fn localpart(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Waits until `user`'s `/sync` shows a message with `body` in `room_id`, or panics.
async fn wait_for_message(synapse: &Synapse, user: &RegisteredUser, room_id: &str, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=2000&since={since}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let (status, sync) = call(synapse, user, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        let events = sync["rooms"]["join"][room_id]["timeline"]["events"].as_array();
        let found = events
            .into_iter()
            .flatten()
            .any(|event| event["type"] == "m.room.message" && event["content"]["body"] == body);
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "{} never saw the message", user.user_id);
        since = sync["next_batch"].as_str().map(ToOwned::to_owned);
    }
}

/// `inviter` on `host_a` creates a room, invites `invitee` (on `host_b`), who joins; a message
/// from `inviter` reaches `invitee`.
async fn invite_join_and_talk(
    host_a: &Synapse,
    inviter: &RegisteredUser,
    host_b: &Synapse,
    invitee: &RegisteredUser,
) {
    let (status, created) = call(
        host_a,
        inviter,
        Method::POST,
        "/_matrix/client/v3/createRoom",
        Some(json!({ "preset": "private_chat", "name": "smoke" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room_id = created["room_id"].as_str().expect("a room ID").to_owned();
    let encoded_room = urlencode(&room_id);

    let (status, body) = call(
        host_a,
        inviter,
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{encoded_room}/invite"),
        Some(json!({ "user_id": invitee.user_id })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let server = host_a.server_name().as_str();
    let join_path = format!("/_matrix/client/v3/join/{encoded_room}?server_name={server}");
    let (status, body) = call(host_b, invitee, Method::POST, &join_path, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let text = format!("hello from {}", inviter.user_id);
    let (status, body) = call(
        host_a,
        inviter,
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{encoded_room}/send/m.room.message/t1"),
        Some(json!({ "msgtype": "m.text", "body": text })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_message(host_b, invitee, &room_id, &text).await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn two_users_talk_in_a_room_on_synapse() {
    let synapse = Synapse::shared().await;
    eprintln!("Synapse started in {:?}", synapse.started_in());
    let alice = synapse.register(&localpart("alice"), false).await;
    let bob = synapse.register(&localpart("bob"), false).await;
    assert_eq!(alice.user_id.server_name(), synapse.server_name());
    assert_ne!(alice.access_token, bob.access_token);
    invite_join_and_talk(synapse, &alice, synapse, &bob).await;
}

#[tokio::test]
async fn synapse_refuses_a_registration_with_a_wrong_mac() {
    let synapse = Synapse::shared().await;
    let client = synapse.client();
    let url = synapse.url("/_synapse/admin/v1/register");
    let nonce: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    let mac = rhizome_testkit::synapse::registration_mac(
        "not the secret",
        nonce["nonce"].as_str().unwrap(),
        "mallory",
        "password",
        true,
    );
    let body = json!({
        "nonce": nonce["nonce"],
        "username": "mallory",
        "password": "password",
        "admin": true,
        "mac": mac,
    });
    let response = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

/// The public keys of a key document's `verify_keys`.
fn public_keys(document: &Value) -> PublicKeyMap {
    let server_name = document["server_name"].as_str().expect("a server name").to_owned();
    let mut keys = PublicKeySet::new();
    for (key_id, key) in document["verify_keys"].as_object().expect("verify_keys") {
        let key = Base64::parse(key["key"].as_str().expect("a key")).expect("base64 key");
        keys.insert(key_id.clone(), key);
    }
    PublicKeyMap::from([(server_name, keys)])
}

#[tokio::test]
async fn synapse_serves_a_self_signed_key_document_and_its_version() {
    let synapse = Synapse::shared().await;
    let client = synapse.client();

    let response = client.get(synapse.url("/_matrix/key/v2/server")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["server_name"], synapse.server_name().as_str());
    let now = ruma::MilliSecondsSinceUnixEpoch::now().get();
    let valid_until = document["valid_until_ts"].as_u64().expect("valid_until_ts");
    assert!(valid_until > u64::from(now), "{document}");
    let keys = public_keys(&document);
    assert_eq!(keys[synapse.server_name().as_str()].len(), 1, "{document}");

    let object: CanonicalJsonObject = serde_json::from_value(document.clone()).unwrap();
    verify_json(&keys, &object).expect("the key document is signed by its own key");
    // The check can fail: the same document with one field changed does not verify.
    let mut tampered = object.clone();
    tampered.insert("valid_until_ts".to_owned(), CanonicalJsonValue::Integer(1_u32.into()));
    assert!(verify_json(&keys, &tampered).is_err());

    let response = client.get(synapse.url("/_matrix/federation/v1/version")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let version: Value = response.json().await.unwrap();
    assert_eq!(version["server"]["name"], "Synapse", "{version}");
    let number = version["server"]["version"].as_str().expect("a version");
    assert!(number.starts_with("1.163."), "{number}");
}

#[tokio::test]
async fn two_synapses_federate_over_loopback() {
    // The shared instance and one of this test's own, on another loopback address.
    let first = Synapse::shared().await;
    let started = Instant::now();
    let second = Synapse::start_with(SynapseOptions::default().ip([127, 0, 0, 14].into())).await;
    eprintln!("a second Synapse started in {:?}", started.elapsed());
    assert_ne!(first.server_name(), second.server_name());
    assert!(second.server_name().as_str().starts_with("127.0.0.14:"));
    let alice = first.register(&localpart("alice"), false).await;
    let bob = second.register("bob", false).await;
    invite_join_and_talk(first, &alice, &second, &bob).await;
}
