//! Invites with a real client: the invitee's client knows who invited them (the inviter's
//! member event in the invite's stripped state), and a new member decrypts the history the
//! inviter shared on invite (MSC4268: a key bundle sent to the invitee, accepted only from the
//! inviter).

use std::time::Duration;

use matrix_sdk::{
    Client, RoomState,
    config::SyncSettings,
    room::MessagesOptions,
    ruma::{
        OwnedRoomId, OwnedUserId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::{
            InitialStateEvent,
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
        },
    },
};
use rhizome_testkit::TestServer;
use serde_json::Value;

use crate::support::{register, sync};

/// How many short syncs to try before giving up on something arriving.
const ATTEMPTS: usize = 60;

fn user_id(client: &Client) -> OwnedUserId {
    client.user_id().expect("logged in").to_owned()
}

/// An encrypted private room (history shared with members) with nobody invited yet.
async fn encrypted_room(owner: &Client) -> OwnedRoomId {
    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = owner.create_room(request).await.expect("room created");
    room.room_id().to_owned()
}

/// Syncs until the client holds an invite to the room.
async fn wait_for_invite(client: &Client, room_id: &OwnedRoomId) {
    for _ in 0..ATTEMPTS {
        client
            .sync_once(SyncSettings::default().timeout(Duration::from_millis(300)))
            .await
            .expect("sync succeeds");
        if client.get_room(room_id).is_some_and(|room| room.state() == RoomState::Invited) {
            return;
        }
    }
    panic!("the invite never arrived");
}

/// The decrypted bodies of the room's history, oldest first, as the client reads it back.
async fn history_bodies(client: &Client, room_id: &OwnedRoomId) -> Vec<String> {
    let room = client.get_room(room_id).expect("the client knows the room");
    let mut options = MessagesOptions::backward();
    options.limit = 50u32.into();
    let page = room.messages(options).await.expect("history");
    let mut bodies: Vec<String> = page
        .chunk
        .iter()
        .filter(|event| event.encryption_info().is_some())
        .filter_map(|event| {
            let value: Value = serde_json::from_str(event.raw().json().get()).ok()?;
            value["content"]["body"].as_str().map(str::to_owned)
        })
        .collect();
    bodies.reverse();
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invitee_sees_the_inviter_and_decrypts_history_shared_on_invite() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    sync(&alice).await;
    sync(&bob).await;
    // History is shared only by users with cross-signing, to cross-signed devices.
    alice.encryption().bootstrap_cross_signing(None).await.expect("Alice bootstraps");
    bob.encryption().bootstrap_cross_signing(None).await.expect("Bob bootstraps");
    sync(&alice).await;
    sync(&bob).await;

    let room_id = encrypted_room(&alice).await;
    sync(&alice).await;
    let room = alice.get_room(&room_id).expect("Alice's room");
    assert!(room.latest_encryption_state().await.expect("state").is_encrypted());
    room.send(RoomMessageEventContent::text_plain("said before Bob came")).await.expect("sent");
    room.send(RoomMessageEventContent::text_plain("and once more")).await.expect("sent");

    // Inviting shares the room's keys with Bob (on by default in this matrix-sdk).
    room.invite_user_by_id(&user_id(&bob)).await.expect("invited");

    wait_for_invite(&bob, &room_id).await;
    let invited = bob.get_room(&room_id).expect("Bob's invite");
    let details = invited.invite_details().await.expect("invite details");
    assert_eq!(details.inviter_id, user_id(&alice));
    let inviter = details.inviter.expect("the client knows the inviter as a member");
    assert_eq!(inviter.user_id(), user_id(&alice));
    assert_eq!(inviter.display_name(), Some("alice"));

    // The key bundle comes as a to-device message; let it arrive, then join.
    for _ in 0..3 {
        sync(&bob).await;
    }
    bob.join_room_by_id(&room_id).await.expect("Bob joins");
    let mut bodies = Vec::new();
    for _ in 0..ATTEMPTS {
        sync(&bob).await;
        bodies = history_bodies(&bob, &room_id).await;
        if bodies.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(bodies, vec!["said before Bob came", "and once more"]);
}
