//! Simplified sliding sync (MSC4186) with matrix-sdk's own sliding sync client: discovery
//! through `/versions`, a room list with its rooms' names, messages from another user arriving
//! through the long-polling loop, an invite then the joined room, and an encrypted room whose
//! messages decrypt with keys received through the to-device and e2ee extensions.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use matrix_sdk::{
    Client, RoomState, SlidingSync, SlidingSyncList, SlidingSyncMode,
    deserialized_responses::EncryptionInfo,
    ruma::{
        OwnedRoomId,
        api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset},
        events::{
            InitialStateEvent, StateEventType,
            room::{
                encryption::RoomEncryptionEventContent,
                message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent},
            },
        },
    },
    sliding_sync::Version,
};
use rhizome_testkit::TestServer;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::support::{register, sync};

/// How long to wait for something to arrive through sliding sync.
const PATIENCE: Duration = Duration::from_secs(30);

/// A message seen by a client's event handler: its body and whether it was encrypted.
type Seen = (String, bool);

/// Builds a sliding sync for `client` with one growing list of every room and all extensions.
async fn sliding_sync(client: &Client) -> SlidingSync {
    let list = SlidingSyncList::builder("all")
        .sync_mode(SlidingSyncMode::new_growing(10))
        .timeline_limit(10)
        .required_state(vec![
            (StateEventType::RoomName, String::new()),
            (StateEventType::RoomEncryption, String::new()),
            (StateEventType::RoomMember, "$LAZY".to_owned()),
            (StateEventType::RoomMember, "$ME".to_owned()),
        ]);
    client
        .sliding_sync("main")
        .expect("a sliding sync builder")
        .add_list(list)
        .with_all_extensions()
        .poll_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("sliding sync builds")
}

/// Runs the sync loop in the background, as an app does; panics in the task on an error.
fn run(sliding: SlidingSync) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = sliding.sync();
        futures_util::pin_mut!(stream);
        while let Some(update) = stream.next().await {
            update.expect("a sliding sync response is handled");
        }
    })
}

/// Collects the text messages the client's event handlers see.
fn watch_messages(client: &Client) -> mpsc::UnboundedReceiver<Seen> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let sender = Arc::new(sender);
    client.add_event_handler(
        move |event: OriginalSyncRoomMessageEvent, encryption: Option<EncryptionInfo>| {
            let sender = sender.clone();
            async move {
                let _ = sender.send((event.content.body().to_owned(), encryption.is_some()));
            }
        },
    );
    receiver
}

/// Waits until the event handlers saw a message with `body`.
async fn wait_for_message(messages: &mut mpsc::UnboundedReceiver<Seen>, body: &str) -> Seen {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let seen = messages.recv().await.expect("the event handler lives");
            if seen.0 == body {
                return seen;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{body:?} never arrived through sliding sync"))
}

/// Waits until the client knows the room in the given state.
async fn wait_for_room(client: &Client, room_id: &OwnedRoomId, state: RoomState) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if client.get_room(room_id).is_some_and(|room| room.state() == state) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the room never became {state:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_sync_client_sees_its_rooms_and_new_messages() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    let versions = bob.available_sliding_sync_versions().await;
    assert!(matches!(versions.as_slice(), [Version::Native]), "not discovered: {versions:?}");

    let mut request = CreateRoomRequest::new();
    request.name = Some("garden".to_owned());
    request.preset = Some(RoomPreset::PublicChat);
    let garden = alice.create_room(request).await.expect("room created");
    let garden_id = garden.room_id().to_owned();
    garden.send(RoomMessageEventContent::text_plain("earlier")).await.expect("sent");
    bob.join_room_by_id(&garden_id).await.expect("joined");
    let mut invite = CreateRoomRequest::new();
    invite.name = Some("shed".to_owned());
    invite.invite = vec![bob.user_id().expect("logged in").to_owned()];
    let shed_id = alice.create_room(invite).await.expect("room created").room_id().to_owned();

    let mut messages = watch_messages(&bob);
    let sliding = sliding_sync(&bob).await;
    let task = run(sliding.clone());
    wait_for_room(&bob, &garden_id, RoomState::Joined).await;
    wait_for_message(&mut messages, "earlier").await;
    let room = bob.get_room(&garden_id).expect("the room is known");
    assert_eq!(room.name().as_deref(), Some("garden"));
    // The list's count is the invite and the joined room.
    tokio::time::timeout(PATIENCE, async {
        loop {
            let count = sliding
                .on_list("all", |list| std::future::ready(list.maximum_number_of_rooms()))
                .await;
            if count.flatten() == Some(2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the list counts two rooms");

    garden.send(RoomMessageEventContent::text_plain("live from alice")).await.expect("sent");
    let (_, encrypted) = wait_for_message(&mut messages, "live from alice").await;
    assert!(!encrypted);

    // The invite arrives with its stripped state; once joined, the room is a joined one.
    wait_for_room(&bob, &shed_id, RoomState::Invited).await;
    assert_eq!(bob.get_room(&shed_id).expect("known").name().as_deref(), Some("shed"));
    bob.join_room_by_id(&shed_id).await.expect("joined");
    let shed = alice.get_room(&shed_id).expect("alice knows the room");
    sync(&alice).await;
    shed.send(RoomMessageEventContent::text_plain("welcome to the shed")).await.expect("sent");
    wait_for_message(&mut messages, "welcome to the shed").await;
    wait_for_room(&bob, &shed_id, RoomState::Joined).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_messages_decrypt_through_the_sliding_sync_extensions() {
    let server = TestServer::start().await;
    let alice = register(&server.base_url, "alice").await;
    let bob = register(&server.base_url, "bob").await;
    // Alice uses `/sync` v3; Bob sliding sync, which uploads his device keys as it runs.
    sync(&alice).await;
    let mut messages = watch_messages(&bob);
    let task = run(sliding_sync(&bob).await);

    let mut request = CreateRoomRequest::new();
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.user_id().expect("logged in").to_owned()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.create_room(request).await.expect("room created");
    let room_id = room.room_id().to_owned();
    wait_for_room(&bob, &room_id, RoomState::Invited).await;
    bob.join_room_by_id(&room_id).await.expect("joined");
    wait_for_room(&bob, &room_id, RoomState::Joined).await;
    sync(&alice).await;
    assert!(room.latest_encryption_state().await.expect("state").is_encrypted());

    room.send(RoomMessageEventContent::text_plain("a secret for bob")).await.expect("sent");
    let (_, encrypted) = wait_for_message(&mut messages, "a secret for bob").await;
    assert!(encrypted, "the message did not come encrypted");
    let bob_room = bob.get_room(&room_id).expect("bob knows the room");
    assert!(bob_room.latest_encryption_state().await.expect("state").is_encrypted());

    // And back: Bob's client encrypts for Alice's device, learnt through the e2ee extension.
    bob_room.send(RoomMessageEventContent::text_plain("a secret for alice")).await.expect("sent");
    let mut alice_messages = watch_messages(&alice);
    let seen = tokio::time::timeout(PATIENCE, async {
        loop {
            sync(&alice).await;
            while let Ok(seen) = alice_messages.try_recv() {
                if seen.0 == "a secret for alice" {
                    return seen;
                }
            }
        }
    })
    .await
    .expect("Alice decrypts Bob's message");
    assert!(seen.1);
    task.abort();
}
