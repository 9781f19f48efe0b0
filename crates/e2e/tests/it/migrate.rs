//! `rhizome admin migrate-db` with real clients: a server on SQLite with two users, an
//! encrypted room, encrypted messages and an encrypted image moves to PostgreSQL; the
//! receiver's client, its crypto store kept on disk, restores its session (the same access
//! token and device) on the moved server, decrypts its history, downloads and decrypts the
//! image, and receives a message sent after the move.

use std::{path::Path, time::Duration};

use matrix_sdk::{
    Client,
    attachment::AttachmentConfig,
    authentication::matrix::MatrixSession,
    config::SyncSettings,
    media::{MediaFormat, MediaRequestParameters},
    room::MessagesOptions,
    ruma::{
        OwnedRoomId, UInt,
        events::room::{MediaSource, message::MessageType},
    },
    store::RoomLoadSettings,
};
use rhizome_testkit::TestServer;
use serde_json::Value;

use crate::e2ee::{encrypted_room, receive_decrypted, room, send};
use crate::support::{register_client, sync};

/// A client whose state and crypto stores are SQLite files in `dir`.
async fn client_on_disk(base_url: &str, dir: &Path) -> Client {
    Client::builder()
        .homeserver_url(base_url)
        .sqlite_store(dir, None)
        .build()
        .await
        .expect("the client builds")
}

/// Registers `name` with a client that keeps its stores in `dir`.
async fn register_on_disk(base_url: &str, dir: &Path, name: &str) -> Client {
    register_client(client_on_disk(base_url, dir).await, name).await
}

/// A client on the stores in `dir`, back in `session` (no new login, no new device).
async fn restore(base_url: &str, dir: &Path, session: MatrixSession) -> Client {
    let client = client_on_disk(base_url, dir).await;
    client
        .matrix_auth()
        .restore_session(session, RoomLoadSettings::default())
        .await
        .expect("the session is restored");
    client
}

/// The room's history as the client sees it through `/messages`: the body of every text
/// message with whether it came encrypted, oldest first, and the image's source. Fails on a
/// message the client cannot decrypt.
async fn history(client: &Client, room_id: &OwnedRoomId) -> (Vec<(String, bool)>, MediaSource) {
    let mut options = MessagesOptions::backward();
    options.limit = UInt::from(100u32);
    let messages = room(client, room_id).messages(options).await.expect("/messages answers");
    let mut texts = Vec::new();
    let mut image = None;
    for event in messages.chunk.iter().rev() {
        let value: Value = serde_json::from_str(event.raw().json().get()).expect("event JSON");
        match value["type"].as_str() {
            Some("m.room.message") => {}
            Some("m.room.encrypted") => panic!("an undecryptable message in history: {value}"),
            _ => continue,
        }
        let content = serde_json::from_value(value["content"].clone()).expect("message content");
        let encrypted = event.encryption_info().is_some();
        match content {
            MessageType::Image(content) => image = Some(content.source),
            MessageType::Text(content) => texts.push((content.body, encrypted)),
            other => panic!("an unexpected message: {other:?}"),
        }
    }
    (texts, image.expect("the image is in the history"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_decrypts_its_history_after_the_server_moves_to_postgres() {
    let mut server = TestServer::start().await;
    let stores = tempfile::tempdir().expect("a temporary directory");
    let (alice_dir, bob_dir) = (stores.path().join("alice"), stores.path().join("bob"));
    let alice = register_on_disk(&server.base_url, &alice_dir, "alice").await;
    let bob = register_on_disk(&server.base_url, &bob_dir, "bob").await;
    sync(&alice).await;
    sync(&bob).await;
    let room_id = encrypted_room(&alice, &[&bob]).await;

    let texts = ["before the move", "a second secret", "and a third"];
    for text in texts {
        send(&alice, &room_id, text).await;
        receive_decrypted(&bob, &room_id, text).await;
    }
    let image = b"\x89PNG not really, but bytes all the same".repeat(100);
    room(&alice, &room_id)
        .send_attachment("plan.png", &mime::IMAGE_PNG, image.clone(), AttachmentConfig::new())
        .await
        .expect("the image is sent");
    send(&bob, &room_id, "got it").await;
    receive_decrypted(&alice, &room_id, "got it").await;
    receive_decrypted(&bob, &room_id, "got it").await;

    // Both clients go away with their stores on disk; the server moves to PostgreSQL.
    let alice_session = alice.matrix_auth().session().expect("alice has a session");
    let bob_session = bob.matrix_auth().session().expect("bob has a session");
    drop((alice, bob));
    let lines = server.move_to_postgres().await;
    assert!(lines.iter().any(|line| line.starts_with("verified: ")), "{lines:?}");
    assert!(server.config.database.url.starts_with("postgres"));

    // Bob comes back with the same token and device and reads his history, decrypted.
    let bob = restore(&server.base_url, &bob_dir, bob_session.clone()).await;
    bob.sync_once(SyncSettings::default().timeout(Duration::from_millis(100)))
        .await
        .expect("the old access token works on the moved server");
    assert_eq!(bob.device_id(), Some(bob_session.meta.device_id.as_ref()));
    let (history_texts, source) = history(&bob, &room_id).await;
    let expected: Vec<(String, bool)> =
        texts.iter().chain(&["got it"]).map(|text| ((*text).to_owned(), true)).collect();
    assert_eq!(history_texts, expected);

    // The image, encrypted by the client, comes back from the moved server and decrypts.
    assert!(matches!(source, MediaSource::Encrypted(_)), "{source:?}");
    let file = MediaRequestParameters { source, format: MediaFormat::File };
    let downloaded = bob.media().get_media_content(&file, false).await.expect("image downloaded");
    assert_eq!(downloaded, image);

    // Alice comes back too, and the conversation goes on, still encrypted.
    let alice = restore(&server.base_url, &alice_dir, alice_session).await;
    sync(&alice).await;
    send(&alice, &room_id, "after the move").await;
    receive_decrypted(&bob, &room_id, "after the move").await;
    server.stop().await;
}
