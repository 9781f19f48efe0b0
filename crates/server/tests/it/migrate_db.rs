//! `rhizome admin migrate-db`: a server that ran on SQLite (accounts, a room with plain and
//! encrypted messages, media, a key backup) moves to PostgreSQL, and runs there with
//! everything it had: passwords, history in order, media, keys, new messages after the old.

use std::time::Duration;

use rhizome_storage_sql::testing::shared_postgres;
use serde_json::{Value, json};

use super::{command, free_port, post, register, serve, upload_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_server_moves_to_postgres_with_everything_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let open = [("RHIZOME_REGISTRATION__MODE", "open")];
    let server = serve(dir.path(), port, &open).await;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let (_, alice) = register(&client, &base, "alice", json!({ "type": "m.login.dummy" })).await;
    let (_, bob) = register(&client, &base, "bob", json!({ "type": "m.login.dummy" })).await;
    let alice_token = alice["access_token"].as_str().unwrap().to_owned();
    let bob_token = bob["access_token"].as_str().unwrap().to_owned();
    let (_, room) = post(
        &client,
        format!("{base}/_matrix/client/v3/createRoom"),
        Some(&alice_token),
        json!({ "preset": "public_chat", "name": "Moving" }),
    )
    .await;
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let (status, _) = post(
        &client,
        format!("{base}/_matrix/client/v3/join/{room_id}"),
        Some(&bob_token),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let mut sent = Vec::new();
    for index in 0..30 {
        let (kind, content) = if index % 2 == 0 {
            ("m.room.message", json!({ "msgtype": "m.text", "body": format!("m{index}") }))
        } else {
            (
                "m.room.encrypted",
                json!({
                    "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": format!("c{index}"),
                    "sender_key": "sk", "device_id": "D", "session_id": "s1",
                }),
            )
        };
        let url = format!("{base}/_matrix/client/v3/rooms/{room_id}/send/{kind}/t{index}");
        let token = if index % 3 == 0 { &bob_token } else { &alice_token };
        let sent_event: Value = client
            .put(url)
            .bearer_auth(token)
            .json(&content)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sent.push(sent_event["event_id"].as_str().unwrap().to_owned());
    }
    let mxc = upload_text(&client, &base, &alice_token, "a file that moves").await;
    let (status, version) = post(
        &client,
        format!("{base}/_matrix/client/v3/room_keys/version"),
        Some(&alice_token),
        json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "pk" } }),
    )
    .await;
    assert_eq!(status, 200, "{version}");
    let version = version["version"].as_str().unwrap().to_owned();
    let session = json!({
        "first_message_index": 0, "forwarded_count": 0, "is_verified": true,
        "session_data": { "ephemeral": "e", "ciphertext": "c", "mac": "m" },
    });
    let url = format!("{base}/_matrix/client/v3/room_keys/keys/{room_id}/s1?version={version}");
    let response = client.put(url).bearer_auth(&alice_token).json(&session).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // A running server's database is not copied; a stopped one's is, twice (the second run
    // finds every table copied and verifies again).
    let url = shared_postgres().create_database().await.unwrap();
    let migrate =
        || command(dir.path(), 0).args(["admin", "migrate-db", "--to", &url]).output().unwrap();
    let refused = migrate();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already running"));
    drop(server);
    let output = migrate();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("the latest 38 events identical"), "{stdout}");
    assert!(stderr.contains("table ") && stderr.contains("events: "), "no progress: {stderr}");
    let again = migrate();
    let again_out = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{again_out}{}", String::from_utf8_lossy(&again.stderr));
    assert!(again_out.starts_with("copied 0 tables (0 rows);"), "{again_out}");

    // The same data directory on PostgreSQL.
    let pg = [("RHIZOME_DATABASE__URL", url.as_str())];
    let server = serve(dir.path(), free_port(), &pg).await;
    let base = server.base.clone();
    let (status, login) = post(
        &client,
        format!("{base}/_matrix/client/v3/login"),
        None,
        json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "a-long-password" }),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap().to_owned();
    let old_session = client
        .get(format!("{base}/_matrix/client/v3/account/whoami"))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(old_session.status().as_u16(), 200, "Bob's session did not move");

    let url = format!("{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/after");
    let after: Value = client
        .put(url)
        .bearer_auth(&token)
        .json(&json!({ "msgtype": "m.text", "body": "after the move" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let after = after["event_id"].as_str().unwrap().to_owned();
    let url = format!("{base}/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100");
    let page: Value =
        client.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let mut history: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| {
            matches!(event["type"].as_str(), Some("m.room.message" | "m.room.encrypted"))
        })
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    history.reverse();
    sent.push(after);
    assert_eq!(history, sent, "the history is not the same, in the same order");

    let download =
        format!("{base}/_matrix/client/v1/media/download/{}", mxc.trim_start_matches("mxc://"));
    let file = client.get(download).bearer_auth(&token).send().await.unwrap();
    assert_eq!(file.status().as_u16(), 200);
    assert_eq!(file.text().await.unwrap(), "a file that moves");
    let url = format!("{base}/_matrix/client/v3/room_keys/keys?version={version}");
    let keys: Value =
        client.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        keys["rooms"][&room_id]["sessions"]["s1"]["session_data"]["ciphertext"], "c",
        "{keys}"
    );
    let sync = client
        .get(format!("{base}/_matrix/client/v3/sync?timeout=0"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(sync.status().as_u16(), 200);
}
