//! End-to-end encryption with real clients (matrix-sdk with its crypto machine): encrypted
//! messages both ways and to a device that appears later, cross-signing and manual
//! verification seen by both users, emoji (SAS) verification between two sessions over
//! to-device messages, and history restored from key backup on a new device.

use std::time::Duration;

use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::{
    Client, Room,
    config::SyncSettings,
    ruma::{
        OwnedEventId, OwnedRoomId, OwnedUserId, UserId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::{
            InitialStateEvent,
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
        },
    },
};
use rhizome_testkit::TestServer;
use serde_json::Value;

use crate::support::{PASSWORD, register, sync};

/// How many short syncs to try before giving up on something arriving.
pub(crate) const ATTEMPTS: usize = 60;

/// Logs in as an existing user: a new device with its own keys.
pub(crate) async fn login(base_url: &str, user_id: &UserId, name: &str) -> Client {
    let client = crate::support::client(base_url).await;
    client
        .matrix_auth()
        .login_username(user_id, PASSWORD)
        .initial_device_display_name(name)
        .send()
        .await
        .expect("login succeeds");
    client
}

pub(crate) fn user_id(client: &Client) -> OwnedUserId {
    client.user_id().expect("logged in").to_owned()
}

/// An encrypted private room with the given users invited; they join it.
pub(crate) async fn encrypted_room(owner: &Client, members: &[&Client]) -> OwnedRoomId {
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = members.iter().map(|member| user_id(member)).collect();
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = owner.create_room(request).await.expect("room created");
    let room_id = room.room_id().to_owned();
    for member in members {
        sync(member).await;
        member.join_room_by_id(&room_id).await.expect("joined");
    }
    sync(owner).await;
    for member in members {
        sync(member).await;
    }
    room_id
}

pub(crate) fn room(client: &Client, room_id: &OwnedRoomId) -> Room {
    client.get_room(room_id).expect("the client knows the room")
}

pub(crate) async fn send(client: &Client, room_id: &OwnedRoomId, text: &str) -> OwnedEventId {
    let room = room(client, room_id);
    assert!(room.latest_encryption_state().await.expect("state").is_encrypted());
    room.send(RoomMessageEventContent::text_plain(text))
        .await
        .expect("message sent")
        .response
        .event_id
}

/// Syncs until a message with `text` arrives in the room decrypted. A message whose key came
/// after it (as when another server's transaction carries both, the event first) is fetched
/// again once the key may be there, as a client retries decryption.
pub(crate) async fn receive_decrypted(client: &Client, room_id: &OwnedRoomId, text: &str) {
    let mut undecrypted: Vec<OwnedEventId> = Vec::new();
    for _ in 0..ATTEMPTS {
        let response = client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(300)))
            .await
            .expect("sync succeeds");
        let mut events: Vec<TimelineEvent> = response
            .rooms
            .joined
            .get(room_id)
            .map(|joined| joined.timeline.events.clone())
            .unwrap_or_default();
        for event_id in &undecrypted {
            if let Ok(event) = room(client, room_id).event(event_id, None).await {
                events.push(event);
            }
        }
        for event in &events {
            let value: Value = serde_json::from_str(event.raw().json().get()).expect("event JSON");
            if value["content"]["body"] == text {
                assert_eq!(value["type"], "m.room.message");
                assert!(event.encryption_info().is_some(), "the message was not encrypted");
                return;
            }
            if value["type"] == "m.room.encrypted"
                && let Some(event_id) = event.event_id()
                && !undecrypted.contains(&event_id)
            {
                undecrypted.push(event_id);
            }
        }
    }
    panic!("{text:?} never arrived decrypted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_messages_flow_both_ways_and_to_a_new_device() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    sync(&alice).await;
    sync(&bob).await;
    let room_id = encrypted_room(&alice, &[&bob]).await;

    send(&alice, &room_id, "hello bob").await;
    receive_decrypted(&bob, &room_id, "hello bob").await;
    send(&bob, &room_id, "hello alice").await;
    receive_decrypted(&alice, &room_id, "hello alice").await;

    // Bob signs in on a second device: Alice learns of it through her device list.
    let bob_id = user_id(&bob);
    let laptop = login(&server.base_url, &bob_id, "laptop").await;
    sync(&laptop).await;
    sync(&laptop).await;
    let laptop_device = laptop.device_id().expect("a device").to_owned();
    let mut seen = false;
    for _ in 0..ATTEMPTS {
        sync(&alice).await;
        let devices = alice.encryption().get_user_devices(&bob_id).await.expect("devices");
        if devices.devices().any(|device| device.device_id() == laptop_device) {
            seen = true;
            break;
        }
    }
    assert!(seen, "Alice never saw Bob's new device");

    send(&alice, &room_id, "after the new device").await;
    receive_decrypted(&laptop, &room_id, "after the new device").await;
    receive_decrypted(&bob, &room_id, "after the new device").await;
    send(&laptop, &room_id, "from the laptop").await;
    receive_decrypted(&alice, &room_id, "from the laptop").await;
}

/// Syncs `viewer` until it sees `other`'s identity as verified.
pub(crate) async fn sees_verified(viewer: &Client, other: &UserId) -> bool {
    for _ in 0..ATTEMPTS {
        sync(viewer).await;
        let identity = viewer.encryption().get_user_identity(other).await.expect("store");
        if identity.is_some_and(|identity| identity.is_verified()) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_signing_verification_is_visible_to_both() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    sync(&alice).await;
    sync(&bob).await;
    encrypted_room(&alice, &[&bob]).await;
    // The first cross-signing upload needs no user-interactive authentication.
    alice.encryption().bootstrap_cross_signing(None).await.expect("Alice bootstraps");
    bob.encryption().bootstrap_cross_signing(None).await.expect("Bob bootstraps");
    let status = alice.encryption().cross_signing_status().await.expect("status");
    assert!(status.is_complete(), "{status:?}");
    let (alice_id, bob_id) = (user_id(&alice), user_id(&bob));

    // Each sees the other's own device signed by its owner (through the server's signatures).
    for (viewer, owner, device_id) in
        [(&alice, &bob_id, bob.device_id()), (&bob, &alice_id, alice.device_id())]
    {
        let device_id = device_id.expect("a device").to_owned();
        let mut signed = false;
        for _ in 0..ATTEMPTS {
            sync(viewer).await;
            let identity = viewer.encryption().request_user_identity(owner).await.expect("query");
            let device = viewer.encryption().get_device(owner, &device_id).await.expect("store");
            if identity.is_some() && device.is_some_and(|device| device.is_cross_signed_by_owner())
            {
                signed = true;
                break;
            }
        }
        assert!(signed, "{owner}'s device is not cross-signed as seen by the other");
    }

    // Alice verifies Bob, and Bob verifies Alice, by their identities.
    let bob_identity = alice.encryption().get_user_identity(&bob_id).await.unwrap().unwrap();
    assert!(!bob_identity.is_verified());
    bob_identity.verify().await.expect("Alice signs Bob's master key");
    let alice_identity = bob.encryption().get_user_identity(&alice_id).await.unwrap().unwrap();
    alice_identity.verify().await.expect("Bob signs Alice's master key");
    assert!(sees_verified(&alice, &bob_id).await, "Alice does not see Bob verified");
    assert!(sees_verified(&bob, &alice_id).await, "Bob does not see Alice verified");
    // Verifying an identity makes its cross-signed devices verified.
    let bob_device = alice
        .encryption()
        .get_device(&bob_id, bob.device_id().unwrap())
        .await
        .unwrap()
        .expect("Bob's device");
    assert!(bob_device.is_verified());
    let alice_device = bob
        .encryption()
        .get_device(&alice_id, alice.device_id().unwrap())
        .await
        .unwrap()
        .expect("Alice's device");
    assert!(alice_device.is_verified());

    // The server keeps Alice's signature on Bob's master key for Alice's eyes only.
    let query = |client: &Client| {
        let mut api = server.api();
        api.token = client.access_token();
        let body = serde_json::json!({ "device_keys": { bob_id.as_str(): [] } });
        async move { api.post("/_matrix/client/v3/keys/query", body).await.ok() }
    };
    let by_alice = query(&alice).await;
    let signatures = &by_alice["master_keys"][bob_id.as_str()]["signatures"];
    assert!(signatures[alice_id.as_str()].is_object(), "{by_alice}");
    let by_bob = query(&bob).await;
    assert!(by_bob["master_keys"][bob_id.as_str()]["signatures"][alice_id.as_str()].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_restores_history_from_key_backup() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    sync(&alice).await;
    sync(&bob).await;
    let room_id = encrypted_room(&alice, &[&bob]).await;
    let recovery_key = bob
        .encryption()
        .recovery()
        .enable()
        .wait_for_backups_to_upload()
        .await
        .expect("Bob enables recovery and key backup");

    let event_id = send(&alice, &room_id, "before the new device").await;
    receive_decrypted(&bob, &room_id, "before the new device").await;
    bob.encryption().backups().wait_for_steady_state().await.expect("the key is backed up");

    // A new device of Bob's cannot read the old message until it restores the backup.
    let bob_id = user_id(&bob);
    let phone = login(&server.base_url, &bob_id, "phone").await;
    sync(&phone).await;
    let before = room(&phone, &room_id).event(&event_id, None).await.expect("event fetched");
    assert!(before.encryption_info().is_none(), "decrypted without the backup");
    phone.encryption().recovery().recover(&recovery_key).await.expect("recovered");
    phone
        .encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .expect("room keys downloaded");
    let after = room(&phone, &room_id).event(&event_id, None).await.expect("event fetched");
    let value: Value = serde_json::from_str(after.raw().json().get()).expect("event JSON");
    assert_eq!(value["content"]["body"], "before the new device", "{value}");
    assert!(after.encryption_info().is_some());
}

/// The seven emoji symbols a SAS verification shows.
pub(crate) fn symbols(
    sas: &matrix_sdk::encryption::verification::SasVerification,
) -> Vec<&'static str> {
    sas.emoji().map(|emoji| emoji.iter().map(|emoji| emoji.symbol).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_verify_each_other_by_emoji() {
    let server = TestServer::start().await;
    let phone = register(&server.base_url, "alice").await;
    sync(&phone).await;
    phone.encryption().bootstrap_cross_signing(None).await.expect("Alice bootstraps");
    let alice_id = user_id(&phone);
    let phone_id = phone.device_id().expect("a device").to_owned();
    let laptop = login(&server.base_url, &alice_id, "laptop").await;
    sync(&laptop).await;
    sync(&laptop).await;
    let laptop_id = laptop.device_id().expect("a device").to_owned();

    // The phone learns of the laptop and asks to verify it; the request goes over to-device.
    let mut laptop_device = None;
    for _ in 0..ATTEMPTS {
        sync(&phone).await;
        laptop_device = phone.encryption().get_device(&alice_id, &laptop_id).await.unwrap();
        if laptop_device.is_some() {
            break;
        }
    }
    let laptop_device = laptop_device.expect("the phone sees the laptop");
    assert!(!laptop_device.is_verified());
    let request = laptop_device.request_verification().await.expect("request sent");
    let flow_id = request.flow_id().to_owned();
    let mut incoming = None;
    for _ in 0..ATTEMPTS {
        sync(&laptop).await;
        incoming = laptop.encryption().get_verification_request(&alice_id, &flow_id).await;
        if incoming.is_some() {
            break;
        }
    }
    incoming.expect("the laptop gets the request").accept().await.expect("accepted");
    for _ in 0..ATTEMPTS {
        if request.is_ready() {
            break;
        }
        sync(&phone).await;
    }
    let phone_sas = request.start_sas().await.expect("SAS").expect("SAS started");
    let mut laptop_sas = None;
    for _ in 0..ATTEMPTS {
        sync(&laptop).await;
        let verification = laptop.encryption().get_verification(&alice_id, &flow_id).await;
        laptop_sas = verification.and_then(|verification| verification.sas());
        if laptop_sas.is_some() {
            break;
        }
    }
    let laptop_sas = laptop_sas.expect("the laptop sees the SAS start");
    laptop_sas.accept().await.expect("accepted");
    for _ in 0..ATTEMPTS {
        if phone_sas.can_be_presented() && laptop_sas.can_be_presented() {
            break;
        }
        sync(&phone).await;
        sync(&laptop).await;
    }
    assert_eq!(symbols(&phone_sas).len(), 7, "the emojis never showed");
    assert_eq!(symbols(&phone_sas), symbols(&laptop_sas), "both sessions show the same emojis");
    phone_sas.confirm().await.expect("the phone confirms");
    laptop_sas.confirm().await.expect("the laptop confirms");
    for _ in 0..ATTEMPTS {
        if phone_sas.is_done() && laptop_sas.is_done() {
            break;
        }
        sync(&phone).await;
        sync(&laptop).await;
    }
    assert!(phone_sas.is_done() && laptop_sas.is_done(), "the verification never finished");
    let seen_by_phone = phone.encryption().get_device(&alice_id, &laptop_id).await.unwrap();
    assert!(seen_by_phone.expect("laptop").is_verified());
    let seen_by_laptop = laptop.encryption().get_device(&alice_id, &phone_id).await.unwrap();
    assert!(seen_by_laptop.expect("phone").is_verified());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_keys_a_real_device_uploaded_are_each_claimed_once() {
    use std::collections::{BTreeMap, HashSet};

    use matrix_sdk::ruma::{OneTimeKeyAlgorithm, api::client::keys::claim_keys};

    let server = TestServer::start().await;
    // Bob's crypto machine uploads his device keys and a batch of one-time keys (and a
    // fallback key) on its first sync; he does not sync again, so no more are uploaded.
    let bob = register(&server.base_url, "bob").await;
    sync(&bob).await;
    let bob_id = user_id(&bob);
    let bob_device = bob.device_id().expect("logged in").to_owned();

    // Four people's clients claim Bob's keys at once, many times over.
    let mut claimers = Vec::new();
    for name in ["carol", "dave", "erin", "frank"] {
        claimers.push(register(&server.base_url, name).await);
    }
    let mut tasks = Vec::new();
    for claimer in claimers {
        for _ in 0..20 {
            let claimer = claimer.clone();
            let wanted = BTreeMap::from([(
                bob_id.clone(),
                BTreeMap::from([(bob_device.clone(), OneTimeKeyAlgorithm::SignedCurve25519)]),
            )]);
            tasks.push(tokio::spawn(async move {
                claimer.send(claim_keys::v3::Request::new(wanted)).await.expect("claim answered")
            }));
        }
    }
    let mut one_time = Vec::new();
    let mut fallback = HashSet::new();
    for task in tasks {
        let response = task.await.expect("the claim task ends");
        assert!(response.failures.is_empty(), "{:?}", response.failures);
        let keys = &response.one_time_keys[&bob_id][&bob_device];
        assert_eq!(keys.len(), 1, "one key per claim");
        for (key_id, key) in keys {
            let key: Value = serde_json::from_str(key.json().get()).expect("key JSON");
            if key["fallback"] == true {
                fallback.insert(key_id.to_string());
            } else {
                one_time.push(key_id.to_string());
            }
        }
    }
    let distinct: HashSet<&String> = one_time.iter().collect();
    assert_eq!(distinct.len(), one_time.len(), "a one-time key was handed out twice");
    assert!(!one_time.is_empty(), "no one-time key was handed out");
    // Once they ran out, every further claim got the one fallback key.
    assert!(fallback.len() <= 1, "{fallback:?}");
    if one_time.len() < 80 {
        assert_eq!(fallback.len(), 1, "claims past the one-time keys got no fallback key");
    }

    // Bob's next sync learns how many are left, and his machine tops them up (it sends its
    // uploads around its syncs, so two make sure).
    sync(&bob).await;
    sync(&bob).await;
    let claimer = register(&server.base_url, "grace").await;
    let wanted = BTreeMap::from([(
        bob_id.clone(),
        BTreeMap::from([(bob_device.clone(), OneTimeKeyAlgorithm::SignedCurve25519)]),
    )]);
    let response = claimer.send(claim_keys::v3::Request::new(wanted)).await.expect("claimed");
    let (key_id, key) = response.one_time_keys[&bob_id][&bob_device].iter().next().expect("a key");
    let key: Value = serde_json::from_str(key.json().get()).expect("key JSON");
    assert_ne!(key["fallback"], true, "no fresh one-time key after Bob's sync");
    assert!(!distinct.contains(&key_id.to_string()), "a claimed key came back");
}
