//! End-to-end encryption across two Rhizome servers with real clients (matrix-sdk and its
//! crypto machine, each client on its own server over plain HTTP; the servers federate over
//! HTTPS on loopback): an encrypted room whose messages decrypt both ways, a second device of
//! the remote member seen and sent the next message, users who stop being tracked when they
//! leave, emoji (SAS) verification between users of different servers, and a server that was
//! down catching up on the device list it missed; and an encrypted room between Rhizome and
//! Synapse.

use std::time::{Duration, Instant};

use matrix_sdk::{
    Client, RoomState,
    config::SyncSettings,
    ruma::{
        OwnedRoomId, UserId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::{InitialStateEvent, room::encryption::RoomEncryptionEventContent},
    },
};
use rhizome_testkit::{
    TestServer,
    synapse::{Synapse, SynapseOptions},
};

use crate::{
    e2ee::{ATTEMPTS, login, receive_decrypted, room, sees_verified, send, symbols, user_id},
    support::{register, sync},
};

/// How long anything crossing servers may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// One sync that waits up to `millis` for news.
async fn sync_for(client: &Client, millis: u64) {
    client
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(millis)))
        .await
        .expect("sync succeeds");
}

/// An encrypted private room of `owner`'s with `members` (of any server) invited and joined;
/// returns once the owner's client sees them all joined.
async fn encrypted_room(owner: &Client, members: &[&Client]) -> OwnedRoomId {
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = members.iter().map(|member| user_id(member)).collect();
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room_id = owner.create_room(request).await.expect("room created").room_id().to_owned();
    for member in members {
        let started = Instant::now();
        while !member.get_room(&room_id).is_some_and(|room| room.state() == RoomState::Invited) {
            assert!(started.elapsed() < PATIENCE, "the invite never arrived");
            sync_for(member, 300).await;
        }
        member.join_room_by_id(&room_id).await.expect("joined");
        sync(member).await;
    }
    let started = Instant::now();
    loop {
        sync_for(owner, 300).await;
        let joined = owner.get_room(&room_id).map_or(0, |room| room.joined_members_count());
        if joined == 1 + members.len() as u64 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the owner never saw everyone join");
    }
    room_id
}

/// Syncs `viewer` until it knows the device `device_id` of `owner`.
async fn sees_device(viewer: &Client, owner: &UserId, device_id: &matrix_sdk::ruma::DeviceId) {
    let started = Instant::now();
    loop {
        sync_for(viewer, 300).await;
        let devices = viewer.encryption().get_user_devices(owner).await.expect("devices");
        if devices.devices().any(|device| device.device_id() == device_id) {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "{owner}'s device {device_id} never appeared");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_across_two_servers() {
    let a = TestServer::start_federating("127.0.0.90").await;
    let b = TestServer::start_federating("127.0.0.91").await;
    let alice = register(&a.base_url, "alice").await;
    let bob = register(&b.base_url, "bob").await;
    sync(&alice).await;
    sync(&bob).await;
    let room_id = encrypted_room(&alice, &[&bob]).await;

    send(&alice, &room_id, "hello from A").await;
    receive_decrypted(&bob, &room_id, "hello from A").await;
    send(&bob, &room_id, "hello from B").await;
    receive_decrypted(&alice, &room_id, "hello from B").await;

    // Bob signs in on a laptop: Alice's client learns of it through her server, which heard
    // of it from Bob's, and the next message reaches it.
    let bob_id = user_id(&bob);
    let laptop = login(&b.base_url, &bob_id, "laptop").await;
    sync(&laptop).await;
    sync(&laptop).await;
    let laptop_device = laptop.device_id().expect("a device").to_owned();
    sees_device(&alice, &bob_id, &laptop_device).await;
    send(&alice, &room_id, "to both of bob's devices").await;
    receive_decrypted(&laptop, &room_id, "to both of bob's devices").await;
    receive_decrypted(&bob, &room_id, "to both of bob's devices").await;
    send(&laptop, &room_id, "from bob's laptop").await;
    receive_decrypted(&alice, &room_id, "from bob's laptop").await;

    // Bob leaves: Alice's server stops tracking his devices.
    let tracked = || a.services().device_list_tracked(bob_id.as_str().try_into().unwrap());
    assert!(tracked().await.unwrap());
    room(&bob, &room_id).leave().await.expect("left");
    let started = Instant::now();
    while tracked().await.unwrap() {
        assert!(started.elapsed() < PATIENCE, "Alice's server still tracks Bob");
        sync_for(&alice, 300).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_servers_verify_each_other_by_emoji() {
    let a = TestServer::start_federating("127.0.0.92").await;
    let b = TestServer::start_federating("127.0.0.93").await;
    let alice = register(&a.base_url, "alice").await;
    let bob = register(&b.base_url, "bob").await;
    sync(&alice).await;
    sync(&bob).await;
    encrypted_room(&alice, &[&bob]).await;
    alice.encryption().bootstrap_cross_signing(None).await.expect("Alice bootstraps");
    bob.encryption().bootstrap_cross_signing(None).await.expect("Bob bootstraps");
    let (alice_id, bob_id) = (user_id(&alice), user_id(&bob));

    // Alice asks to verify Bob's device; the request crosses as a to-device message.
    let bob_device_id = bob.device_id().expect("a device").to_owned();
    let mut bob_device = None;
    for _ in 0..ATTEMPTS {
        sync(&alice).await;
        alice.encryption().request_user_identity(&bob_id).await.expect("query");
        bob_device = alice
            .encryption()
            .get_device(&bob_id, &bob_device_id)
            .await
            .expect("store")
            .filter(|device| device.is_cross_signed_by_owner());
        if bob_device.is_some() {
            break;
        }
    }
    let bob_device = bob_device.expect("Alice sees Bob's device signed by Bob");
    let request = bob_device.request_verification().await.expect("request sent");
    let flow_id = request.flow_id().to_owned();
    let mut incoming = None;
    for _ in 0..ATTEMPTS {
        sync_for(&bob, 300).await;
        incoming = bob.encryption().get_verification_request(&alice_id, &flow_id).await;
        if incoming.is_some() {
            break;
        }
    }
    incoming.expect("Bob gets the request").accept().await.expect("accepted");
    for _ in 0..ATTEMPTS {
        if request.is_ready() {
            break;
        }
        sync_for(&alice, 300).await;
    }
    let alice_sas = request.start_sas().await.expect("SAS").expect("SAS started");
    let mut bob_sas = None;
    for _ in 0..ATTEMPTS {
        sync_for(&bob, 300).await;
        let verification = bob.encryption().get_verification(&alice_id, &flow_id).await;
        bob_sas = verification.and_then(|verification| verification.sas());
        if bob_sas.is_some() {
            break;
        }
    }
    let bob_sas = bob_sas.expect("Bob sees the SAS start");
    bob_sas.accept().await.expect("accepted");
    for _ in 0..ATTEMPTS {
        if alice_sas.can_be_presented() && bob_sas.can_be_presented() {
            break;
        }
        sync_for(&alice, 200).await;
        sync_for(&bob, 200).await;
    }
    assert_eq!(symbols(&alice_sas).len(), 7, "the emojis never showed");
    assert_eq!(symbols(&alice_sas), symbols(&bob_sas), "both show the same emojis");
    alice_sas.confirm().await.expect("Alice confirms");
    bob_sas.confirm().await.expect("Bob confirms");
    for _ in 0..ATTEMPTS {
        if alice_sas.is_done() && bob_sas.is_done() {
            break;
        }
        sync_for(&alice, 200).await;
        sync_for(&bob, 200).await;
    }
    assert!(alice_sas.is_done() && bob_sas.is_done(), "the verification never finished");
    // Each now trusts the other's identity (signed with their user-signing key, the signature
    // kept on their own server) and so the other's device.
    assert!(sees_verified(&alice, &bob_id).await, "Alice does not see Bob verified");
    assert!(sees_verified(&bob, &alice_id).await, "Bob does not see Alice verified");
    let seen = alice.encryption().get_device(&bob_id, &bob_device_id).await.unwrap();
    assert!(seen.expect("Bob's device").is_verified());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_was_down_catches_up_on_a_device_list() {
    let mut a = TestServer::start_federating("127.0.0.94").await;
    let b = TestServer::start_federating("127.0.0.95").await;
    let alice = register(&a.base_url, "alice").await;
    let bob = register(&b.base_url, "bob").await;
    sync(&alice).await;
    sync(&bob).await;
    let room_id = encrypted_room(&alice, &[&bob]).await;
    send(&bob, &room_id, "before the outage").await;
    receive_decrypted(&alice, &room_id, "before the outage").await;

    // Alice's server is down while Bob signs in on a laptop.
    a.stop_for_now().await;
    let bob_id = user_id(&bob);
    let laptop = login(&b.base_url, &bob_id, "laptop").await;
    sync(&laptop).await;
    sync(&laptop).await;
    let laptop_device = laptop.device_id().expect("a device").to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.start_again().await;

    // Once it is back, Alice's client learns of the laptop and the next message reaches it.
    sees_device(&alice, &bob_id, &laptop_device).await;
    send(&alice, &room_id, "after the outage").await;
    receive_decrypted(&laptop, &room_id, "after the outage").await;
    receive_decrypted(&bob, &room_id, "after the outage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_between_rhizome_and_synapse() {
    let ip = std::net::Ipv4Addr::new(127, 0, 0, 97);
    let synapse = Synapse::start_with(SynapseOptions::default().ip(ip)).await;
    let a = TestServer::start_federating("127.0.0.96").await;
    let alice = register(&a.base_url, "alice").await;
    synapse.register("sam", false).await;
    let sam = Client::builder()
        .homeserver_url(synapse.base_url())
        .disable_ssl_verification()
        .build()
        .await
        .expect("the client builds");
    sam.matrix_auth().login_username("sam", "sam-password").send().await.expect("logged in");
    sync(&alice).await;
    sync(&sam).await;
    let room_id = encrypted_room(&alice, &[&sam]).await;

    send(&alice, &room_id, "hello from Rhizome").await;
    receive_decrypted(&sam, &room_id, "hello from Rhizome").await;
    send(&sam, &room_id, "hello from Synapse").await;
    receive_decrypted(&alice, &room_id, "hello from Synapse").await;

    // Sam's second device, announced by Synapse, gets the next message.
    let laptop = Client::builder()
        .homeserver_url(synapse.base_url())
        .disable_ssl_verification()
        .build()
        .await
        .expect("the client builds");
    laptop.matrix_auth().login_username("sam", "sam-password").send().await.expect("logged in");
    sync(&laptop).await;
    sync(&laptop).await;
    let laptop_device = laptop.device_id().expect("a device").to_owned();
    sees_device(&alice, &user_id(&sam), &laptop_device).await;
    send(&alice, &room_id, "to sam's laptop").await;
    receive_decrypted(&laptop, &room_id, "to sam's laptop").await;
}
