//! Device lists and keys between a Rhizome server and a test peer that joins a room on it:
//! updates applied from a complete `prev_id` chain, one update dropped in transit (the gap
//! detected and the list fetched again), a restarted sequence, cross-signing updates, updates
//! spoofed for another server's users; what the peer may fetch of local users' devices and
//! keys (bounded, local users only) and the updates it is sent; to-device messages from the
//! peer delivered once per `message_id`, and to the peer with a `message_id` and `*` targets.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use rhizome_testkit::{
    TestServer, encode,
    peer::{PeerResponse, Reply, TestPeer},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, RoomVersionId, UserId, events::TimelineEventType,
};
use serde_json::{Value, json};

use crate::e2ee::{Device, device_list, key_pair, next_batch, sign, to_device_events};

const PATIENCE: Duration = Duration::from_secs(20);

/// A peer answering transactions (recording them) and, for its user, `GET /user/devices` with
/// whatever the test set last (`None`: 503, the server is unwell).
fn answering_peer(peer: &TestPeer) -> Arc<Mutex<Option<Value>>> {
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| json!({ "pdus": {} }));
    let devices = Arc::new(Mutex::new(None));
    let answer = devices.clone();
    peer.handle(Method::GET, "/_matrix/federation/v1/user/devices/{user}", move |_| {
        match answer.lock().unwrap().clone() {
            Some(devices) => Reply::json(StatusCode::OK, &devices),
            None => Reply::error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "unwell"),
        }
    });
    devices
}

/// The peer's user joins `room_id` on `server` through `make_join` and `send_join`.
async fn peer_joins(peer: &TestPeer, server: &TestServer, room_id: &str, localpart: &str) {
    peer_membership(peer, server, room_id, localpart, "join").await;
}

/// The peer's user joins or leaves (`membership`) `room_id` on `server` through
/// `make_<membership>` and `send_<membership>`.
async fn peer_membership(
    peer: &TestPeer,
    server: &TestServer,
    room_id: &str,
    localpart: &str,
    membership: &str,
) {
    let user = peer.user_id(localpart);
    let (name, base) = destination(server);
    let versions: String = (1..=12).map(|version| format!("ver={version}&")).collect();
    let path = format!(
        "/_matrix/federation/v1/make_{membership}/{}/{}?{versions}",
        encode(room_id),
        encode(user.as_str())
    );
    let made = peer.request(&name, &base, Method::GET, &path, None).await.json();
    let version = RoomVersionId::try_from(made["room_version"].as_str().unwrap()).unwrap();
    let ids = |field: &str| -> Vec<OwnedEventId> {
        made["event"][field]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| OwnedEventId::try_from(id.as_str().unwrap()).unwrap())
            .collect()
    };
    let template = rhizome_room::EventTemplate {
        room_id: Some(room_id.try_into().unwrap()),
        sender: user.clone(),
        kind: TimelineEventType::RoomMember,
        state_key: Some(user.to_string()),
        content: serde_json::value::to_raw_value(&json!({ "membership": membership })).unwrap(),
        redacts: None,
        prev_events: ids("prev_events"),
        auth_events: ids("auth_events"),
        depth: made["event"]["depth"].as_u64().unwrap(),
        origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
    };
    let pdu = peer.sign_pdu(&template, &version);
    let path = format!(
        "/_matrix/federation/v2/send_{membership}/{}/{}",
        encode(room_id),
        encode(pdu.event_id.as_str())
    );
    let body: Value = serde_json::from_str(pdu.json().get()).unwrap();
    let joined = peer.request(&name, &base, Method::PUT, &path, Some(body)).await;
    assert_eq!(joined.status, 200, "{}", joined.json());
}

fn destination(server: &TestServer) -> (ruma::OwnedServerName, String) {
    (server.config.server_name.clone(), server.tls_base_url.clone().unwrap())
}

/// Sends EDUs from the peer in one transaction.
async fn send_edus(
    peer: &TestPeer,
    server: &TestServer,
    txn: &str,
    edus: Vec<Value>,
) -> PeerResponse {
    let (name, base) = destination(server);
    let body = peer.transaction(&[], edus);
    let response = peer
        .request(
            &name,
            &base,
            Method::PUT,
            &format!("/_matrix/federation/v1/send/{txn}"),
            Some(body),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.json());
    response
}

/// Signed device keys of a device of the peer's user.
fn peer_device_keys(user: &str, device: &str) -> Value {
    let (pair, public) = key_pair(device);
    sign(
        &pair,
        user,
        json!({
            "user_id": user,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("ed25519:{device}"): public, format!("curve25519:{device}"): public },
        }),
    )
}

fn update(user: &str, device: &str, stream_id: u64, prev: &[u64], deleted: bool) -> Value {
    let mut content =
        json!({ "user_id": user, "device_id": device, "stream_id": stream_id, "prev_id": prev });
    if deleted {
        content["deleted"] = json!(true);
    } else {
        content["keys"] = peer_device_keys(user, device);
    }
    json!({ "edu_type": "m.device_list_update", "content": content })
}

fn devices_answer(user: &str, stream_id: u64, devices: &[&str]) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|device| json!({ "device_id": device, "keys": peer_device_keys(user, device) }))
        .collect();
    json!({ "user_id": user, "stream_id": stream_id, "devices": devices })
}

fn fetches(peer: &TestPeer) -> usize {
    peer.received_matching(&Method::GET, "/_matrix/federation/v1/user/devices/{user}").len()
}

/// Queries `user`'s devices until they are exactly `expected`.
async fn wait_for_devices(alice: &Device, user: &str, expected: &[&str]) -> Value {
    let started = Instant::now();
    loop {
        let keys = alice.query(&[user]).await;
        let mut devices: Vec<&str> = keys["device_keys"][user]
            .as_object()
            .map(|devices| devices.keys().map(String::as_str).collect())
            .unwrap_or_default();
        devices.sort_unstable();
        if devices == expected {
            return keys;
        }
        assert!(started.elapsed() < PATIENCE, "never saw devices {expected:?}: {keys}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_changed(alice: &Device, since: &str, user: &str) -> String {
    let started = Instant::now();
    let mut since = since.to_owned();
    loop {
        let sync = alice.api.sync(&format!("since={since}&timeout=500")).await;
        since = next_batch(&sync);
        if device_list(&sync, "changed").iter().any(|changed| changed == user) {
            return since;
        }
        assert!(started.elapsed() < PATIENCE, "{user} never appeared in device_lists.changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_device_list_update_is_detected_and_the_list_fetched_again() {
    let a = TestServer::start_federating("127.0.0.84").await;
    let peer = TestPeer::start_on(Ipv4Addr::new(127, 0, 0, 85)).await;
    let answer = answering_peer(&peer);
    let bob = peer.user_id("bob");
    let bob = bob.as_str();
    let alice = Device::register(&a, "alice").await;
    alice.upload_all(1).await;
    let room = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    *answer.lock().unwrap() = Some(devices_answer(bob, 5, &["D1"]));
    peer_joins(&peer, &a, &room, "bob").await;

    // First contact: the list is fetched whole.
    wait_for_devices(&alice, bob, &["D1"]).await;
    assert_eq!(fetches(&peer), 1);
    let bob_id = UserId::parse(bob).unwrap();
    assert!(a.services().device_list_tracked(&bob_id).await.unwrap());

    // An update whose chain is complete is applied as it is.
    let since = next_batch(&alice.sync(None).await);
    send_edus(&peer, &a, "t1", vec![update(bob, "D2", 6, &[5], false)]).await;
    let since = wait_changed(&alice, &since, bob).await;
    wait_for_devices(&alice, bob, &["D1", "D2"]).await;
    assert_eq!(fetches(&peer), 1, "a complete chain needs no fetch");
    // The same update again changes nothing.
    send_edus(&peer, &a, "t2", vec![update(bob, "D2", 6, &[5], false)]).await;

    // Update 7 (D1 deleted) is lost in transit; update 8 (D3 added) refers to it.
    *answer.lock().unwrap() = Some(devices_answer(bob, 8, &["D2", "D3"]));
    send_edus(&peer, &a, "t3", vec![update(bob, "D3", 8, &[7], false)]).await;
    let since = wait_changed(&alice, &since, bob).await;
    wait_for_devices(&alice, bob, &["D2", "D3"]).await;
    assert_eq!(fetches(&peer), 2, "the gap made the list be fetched again");

    // A sequence that starts over (no prev_id) is not trusted either.
    *answer.lock().unwrap() = Some(devices_answer(bob, 9, &["D3", "D4"]));
    send_edus(&peer, &a, "t4", vec![update(bob, "D4", 9, &[], false)]).await;
    let since = wait_changed(&alice, &since, bob).await;
    wait_for_devices(&alice, bob, &["D3", "D4"]).await;
    assert_eq!(fetches(&peer), 3);

    // Deletions apply from the chain too.
    send_edus(&peer, &a, "t5", vec![update(bob, "D3", 10, &[9], true)]).await;
    let since = wait_changed(&alice, &since, bob).await;
    wait_for_devices(&alice, bob, &["D4"]).await;

    // Cross-signing keys come by m.signing_key_update.
    let (_, master) = crate::e2ee::named_key_pair();
    let master_key = json!({ "user_id": bob, "usage": ["master"], "keys": { format!("ed25519:{master}"): master } });
    let edu = json!({ "edu_type": "m.signing_key_update", "content": { "user_id": bob, "master_key": master_key } });
    send_edus(&peer, &a, "t6", vec![edu]).await;
    wait_changed(&alice, &since, bob).await;
    let keys = alice.query(&[bob]).await;
    assert_eq!(
        keys["master_keys"][bob]["keys"][format!("ed25519:{master}")],
        master.as_str(),
        "{keys}"
    );
    assert_eq!(fetches(&peer), 3);

    // The peer may not speak for another server's users, nor is a user sharing no room with
    // this server's users tracked.
    let forged = update("@mallory:elsewhere.example", "M1", 1, &[], false);
    let carol = peer.user_id("carol");
    send_edus(&peer, &a, "t7", vec![forged, update(carol.as_str(), "C1", 1, &[], false)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fetches(&peer), 3);
    let mallory = UserId::parse("@mallory:elsewhere.example").unwrap();
    assert!(!a.services().device_list_tracked(&mallory).await.unwrap());
    assert!(!a.services().device_list_tracked(&carol).await.unwrap());
}

/// The EDUs of a type the peer received in transactions, in order.
fn edus_received(peer: &TestPeer, edu_type: &str) -> Vec<Value> {
    peer.received_matching(&Method::PUT, "/_matrix/federation/v1/send/{txn}")
        .iter()
        .filter_map(|request| request.json())
        .flat_map(|body| body["edus"].as_array().cloned().unwrap_or_default())
        .filter(|edu| edu["edu_type"] == edu_type)
        .map(|edu| edu["content"].clone())
        .collect()
}

async fn wait_for_edus(peer: &TestPeer, edu_type: &str, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let edus = edus_received(peer, edu_type);
        if edus.len() >= count {
            return edus;
        }
        assert!(started.elapsed() < PATIENCE, "only {} {edu_type} EDUs arrived", edus.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_server_fetches_local_device_lists_and_keys_and_is_sent_updates() {
    let a = TestServer::start_federating("127.0.0.86").await;
    let peer = TestPeer::start_on(Ipv4Addr::new(127, 0, 0, 87)).await;
    answering_peer(&peer);
    let (name, base) = destination(&a);
    let alice = Device::register(&a, "alice").await;
    alice.upload_all(3).await;
    let get = |path: String| {
        let (peer, name, base) = (&peer, name.clone(), base.clone());
        async move { peer.request(&name, &base, Method::GET, &path, None).await }
    };
    let post = |path: &'static str, body: Value| {
        let (peer, name, base) = (&peer, name.clone(), base.clone());
        async move { peer.request(&name, &base, Method::POST, path, Some(body)).await }
    };

    let devices_path = format!("/_matrix/federation/v1/user/devices/{}", encode(&alice.user_id));
    let listed = get(devices_path.clone()).await.json();
    assert_eq!(listed["user_id"], alice.user_id.as_str());
    let stream_id = listed["stream_id"].as_u64().unwrap();
    let devices = listed["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{listed}");
    assert_eq!(devices[0]["device_id"], alice.device_id.as_str());
    assert_eq!(devices[0]["keys"], alice.device_keys());
    assert!(devices[0].get("device_display_name").is_none(), "names stay on this server");
    // Only local users who exist.
    let missing =
        get(format!("/_matrix/federation/v1/user/devices/{}", encode(&format!("@nobody:{name}"))))
            .await;
    assert_eq!((missing.status.as_u16(), missing.errcode().as_deref()), (404, Some("M_NOT_FOUND")));
    let foreign =
        get(format!("/_matrix/federation/v1/user/devices/{}", encode("@x:elsewhere.example")))
            .await;
    assert_eq!(foreign.status, 400);

    // Keys queried and claimed, local users only, bounded.
    let query = "/_matrix/federation/v1/user/keys/query";
    let keys = post(
        query,
        json!({ "device_keys": { alice.user_id.as_str(): [], "@x:elsewhere.example": [] } }),
    )
    .await
    .json();
    assert_eq!(
        keys["device_keys"][&alice.user_id][&alice.device_id],
        alice.device_keys(),
        "{keys}"
    );
    assert!(keys["device_keys"]["@x:elsewhere.example"].is_null());
    let too_many: serde_json::Map<String, Value> =
        (0..1001).map(|index| (format!("@u{index}:{name}"), json!([]))).collect();
    let refused = post(query, json!({ "device_keys": too_many })).await;
    assert_eq!(
        (refused.status.as_u16(), refused.errcode().as_deref()),
        (400, Some("M_INVALID_PARAM"))
    );
    let claim = "/_matrix/federation/v1/user/keys/claim";
    let body = json!({ "one_time_keys": { alice.user_id.as_str(): { alice.device_id.as_str(): "signed_curve25519" } } });
    let first = post(claim, body.clone()).await.json();
    let second = post(claim, body).await.json();
    let key_of = |claimed: &Value| {
        claimed["one_time_keys"][&alice.user_id][&alice.device_id]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone()
    };
    assert_ne!(key_of(&first), key_of(&second), "each one-time key is handed out once");

    // Once the peer shares a room with Alice, her changes are sent to it, chained.
    let room = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    peer_joins(&peer, &a, &room, "bob").await;
    let phone = alice.login(&a).await;
    phone.upload_all(1).await;
    let updates = wait_for_edus(&peer, "m.device_list_update", 2).await;
    let mut previous = stream_id;
    for update in &updates {
        assert_eq!(update["user_id"], alice.user_id.as_str());
        assert_eq!(update["device_id"], phone.device_id.as_str());
        assert_eq!(update["prev_id"], json!([previous]), "{updates:?}");
        previous = update["stream_id"].as_u64().unwrap();
    }
    assert_eq!(updates.last().unwrap()["keys"], phone.device_keys());
    assert!(updates.iter().all(|update| update.get("device_display_name").is_none()));
    // The list fetched now carries the latest stream ID.
    let listed = get(devices_path).await.json();
    assert_eq!(listed["stream_id"].as_u64(), Some(previous));
    assert_eq!(listed["devices"].as_array().unwrap().len(), 2);

    // Cross-signing keys go as m.signing_key_update; a logout as a deletion.
    let cross = super::devices::CrossSigning::new(&alice.user_id);
    alice.api.post("/_matrix/client/v3/keys/device_signing/upload", cross.upload_body()).await.ok();
    let signing = wait_for_edus(&peer, "m.signing_key_update", 1).await;
    assert_eq!(
        signing[0]["master_key"]["keys"][format!("ed25519:{}", cross.master.1)],
        cross.master.1.as_str()
    );
    assert!(signing[0].get("user_signing_key").is_none());
    phone.api.post("/_matrix/client/v3/logout", json!({})).await.ok();
    let updates = wait_for_edus(&peer, "m.device_list_update", 3).await;
    let deleted = updates.last().unwrap();
    assert_eq!(
        (deleted["device_id"].as_str(), deleted["deleted"].as_bool()),
        (Some(phone.device_id.as_str()), Some(true))
    );
    assert_eq!(deleted["prev_id"], json!([previous]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_cross_with_a_message_id_and_arrive_once() {
    let a = TestServer::start_federating("127.0.0.88").await;
    let peer = TestPeer::start_on(Ipv4Addr::new(127, 0, 0, 89)).await;
    answering_peer(&peer);
    let alice = Device::register(&a, "alice").await;
    let laptop = alice.login(&a).await;
    let bob = peer.user_id("bob");
    let since = next_batch(&alice.sync(None).await);
    let laptop_since = next_batch(&laptop.sync(None).await);

    let message = |message_id: &str, sender: &str, n: i64| {
        json!({ "edu_type": "m.direct_to_device", "content": {
            "sender": sender, "type": "m.test.ping", "message_id": message_id,
            "messages": { alice.user_id.as_str(): { "*": { "n": n } } },
        } })
    };
    send_edus(&peer, &a, "d1", vec![message("m-1", bob.as_str(), 1)]).await;
    // The same message in another transaction (a retry by the peer) is not delivered again;
    // one claiming another server's sender is refused.
    send_edus(
        &peer,
        &a,
        "d2",
        vec![message("m-1", bob.as_str(), 1), message("m-2", "@x:elsewhere.example", 2)],
    )
    .await;
    send_edus(&peer, &a, "d3", vec![message("m-3", bob.as_str(), 3)]).await;
    for (device, since) in [(&alice, since), (&laptop, laptop_since)] {
        let sync = device.sync(Some(&since)).await;
        let seen: Vec<(Value, Value)> = to_device_events(&sync)
            .iter()
            .map(|event| (event["sender"].clone(), event["content"]["n"].clone()))
            .collect();
        assert_eq!(seen, [(json!(bob), json!(1)), (json!(bob), json!(3))], "{sync}");
    }

    // Alice's messages for the peer's user go out as EDUs with a message ID.
    let body =
        json!({ "messages": { bob.as_str(): { "*": { "n": 10 }, "BOBDEVICE": { "n": 11 } } } });
    alice.api.put("/_matrix/client/v3/sendToDevice/m.test.ping/out-1", body.clone()).await.ok();
    alice.api.put("/_matrix/client/v3/sendToDevice/m.test.ping/out-1", body).await.ok();
    let edus = wait_for_edus(&peer, "m.direct_to_device", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let edus_now = edus_received(&peer, "m.direct_to_device");
    assert_eq!(edus_now.len(), 1, "a retried transaction sent again: {edus_now:?}");
    let edu = &edus[0];
    assert_eq!(edu["sender"], alice.user_id.as_str());
    assert_eq!(edu["type"], "m.test.ping");
    assert!(edu["message_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(edu["messages"][bob.as_str()]["*"]["n"], 10);
    assert_eq!(edu["messages"][bob.as_str()]["BOBDEVICE"]["n"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_list_is_fetched_again_once_its_server_answers() {
    let a = TestServer::start_federating("127.0.0.96").await;
    let peer = TestPeer::start_on(Ipv4Addr::new(127, 0, 0, 97)).await;
    let answer = answering_peer(&peer);
    let bob = peer.user_id("bob");
    let bob = bob.as_str();
    let alice = Device::register(&a, "alice").await;
    let room = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    *answer.lock().unwrap() = Some(devices_answer(bob, 5, &["D1"]));
    peer_joins(&peer, &a, &room, "bob").await;
    wait_for_devices(&alice, bob, &["D1"]).await;

    // An update is missed while the peer cannot answer for its list.
    *answer.lock().unwrap() = None;
    send_edus(&peer, &a, "s1", vec![update(bob, "D3", 8, &[7], false)]).await;
    let since = next_batch(&alice.sync(None).await);
    let keys = alice.query(&[bob]).await;
    let server = peer.server_name().as_str();
    assert!(keys["failures"][server].is_object(), "{keys}");
    assert!(keys["device_keys"][bob]["D1"].is_object(), "the stale list is served meanwhile");
    let bob_id = UserId::parse(bob).unwrap();
    let cached = a.services().cached_device_list(&bob_id).await.unwrap().unwrap();
    assert!(cached.stale);

    // Once it answers, the list is fetched again in the background, no update needed.
    *answer.lock().unwrap() = Some(devices_answer(bob, 8, &["D1", "D3"]));
    wait_changed(&alice, &since, bob).await;
    let keys = wait_for_devices(&alice, bob, &["D1", "D3"]).await;
    assert!(keys["failures"].as_object().is_none_or(|failures| failures.is_empty()), "{keys}");
    assert!(!a.services().cached_device_list(&bob_id).await.unwrap().unwrap().stale);

    // A user sharing no room with this server's users is asked directly, and not tracked.
    let carol = peer.user_id("carol");
    let carol_keys = peer_device_keys(carol.as_str(), "C1");
    let answered = json!({ "device_keys": { carol.as_str(): { "C1": carol_keys } } });
    peer.handle(Method::POST, "/_matrix/federation/v1/user/keys/query", move |_| answered.clone());
    let keys = alice.query(&[carol.as_str()]).await;
    assert_eq!(keys["device_keys"][carol.as_str()]["C1"]["device_id"], "C1", "{keys}");
    assert!(!a.services().device_list_tracked(&carol).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_cached_before_a_user_left_is_not_trusted_after_they_return() {
    let a = TestServer::start_federating("127.0.0.98").await;
    let peer = TestPeer::start_on(Ipv4Addr::new(127, 0, 0, 99)).await;
    let answer = answering_peer(&peer);
    let bob = peer.user_id("bob");
    let bob = bob.as_str();
    let alice = Device::register(&a, "alice").await;
    let room = alice.api.create_room(json!({ "preset": "public_chat" })).await;
    *answer.lock().unwrap() = Some(devices_answer(bob, 5, &["D1"]));
    peer_joins(&peer, &a, &room, "bob").await;
    wait_for_devices(&alice, bob, &["D1"]).await;
    assert_eq!(fetches(&peer), 1);

    // Bob leaves and comes back before anyone here syncs; meanwhile his devices changed, and
    // his server sent no updates here (no room was shared).
    peer_membership(&peer, &a, &room, "bob", "leave").await;
    *answer.lock().unwrap() = Some(devices_answer(bob, 7, &["D1", "D2"]));
    peer_joins(&peer, &a, &room, "bob").await;
    wait_for_devices(&alice, bob, &["D1", "D2"]).await;
    assert_eq!(fetches(&peer), 2, "the list was fetched again");
}
