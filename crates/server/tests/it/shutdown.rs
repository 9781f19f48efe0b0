//! An orderly stop: a server told to stop (SIGTERM) with push notifications still queued
//! delivers every one of them before it closes its database, and its log holds no warning.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use rhizome_testkit::RecordingPushGateway;
use serde_json::{Value, json};

use super::{free_port, post, register, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_delivers_the_notifications_it_queued_and_warns_of_nothing() {
    let gateway = RecordingPushGateway::start_slow(Duration::from_millis(150)).await;
    let dir = tempfile::tempdir().unwrap();
    // One notification at a time, so most of them are still queued when the server stops.
    let env = [
        ("RHIZOME_REGISTRATION__MODE", "open"),
        ("RHIZOME_PUSH__ALLOWED_ADDRESSES", "[\"127.0.0.1\"]"),
        ("RHIZOME_PUSH__CONCURRENCY", "1"),
    ];
    let mut server = serve(dir.path(), free_port(), &env).await;
    let client = reqwest::Client::new();
    let base = server.base.clone();
    let dummy = json!({ "type": "m.login.dummy" });
    let (_, alice) = register(&client, &base, "alice", dummy.clone()).await;
    let (_, bob) = register(&client, &base, "bob", dummy).await;
    let alice_token = alice["access_token"].as_str().unwrap();
    let bob_token = bob["access_token"].as_str().unwrap();
    let (status, room) = post(
        &client,
        format!("{base}/_matrix/client/v3/createRoom"),
        Some(alice_token),
        json!({ "preset": "private_chat", "invite": [bob["user_id"]] }),
    )
    .await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap();
    let url_join = format!("{base}/_matrix/client/v3/join/{room_id}");
    let (status, joined) = post(&client, url_join, Some(bob_token), json!({})).await;
    assert_eq!(status, 200, "{joined}");
    let pusher = json!({
        "pushkey": "bobs-phone", "kind": "http", "app_id": "org.example.chat",
        "app_display_name": "Chat", "device_display_name": "phone", "lang": "en",
        "data": { "url": gateway.url() },
    });
    let url_pusher = format!("{base}/_matrix/client/v3/pushers/set");
    let (status, set) = post(&client, url_pusher, Some(bob_token), pusher).await;
    assert_eq!(status, 200, "{set}");

    // Ten messages, each notifying Bob.
    let mut sent = Vec::new();
    for index in 0..10 {
        let url = format!("{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/m{index}");
        let response = client
            .put(url)
            .bearer_auth(alice_token)
            .json(&json!({ "msgtype": "m.text", "body": format!("message {index}") }))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        sent.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let before_stop = gateway.event_ids();
    let queued = sent.iter().filter(|id| !before_stop.contains(id)).count();
    assert!(queued >= 5, "only {queued} notifications were queued at the stop: no test");

    let stopping = Instant::now();
    let killed =
        Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(stopping.elapsed() < Duration::from_secs(30), "the server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "the server exited with {status}");

    let delivered = gateway.event_ids();
    for event_id in &sent {
        assert!(delivered.contains(event_id), "the notification of {event_id} was lost");
    }
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    for line in log.lines() {
        assert!(
            !line.contains(" WARN ") && !line.contains(" ERROR "),
            "the server warned: {line}\n{log}"
        );
    }
    assert!(log.contains("stopped"), "{log}");
}
