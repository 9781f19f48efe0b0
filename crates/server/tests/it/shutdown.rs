//! An orderly stop: a server told to stop (SIGTERM) with push notifications still queued
//! delivers every one of them before it closes its database, and its log holds no warning.

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, routing};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::{free_port, post, register, serve};

/// A push gateway on loopback that takes its time: one notification every `delay`.
#[derive(Clone)]
struct SlowGateway {
    received: Arc<Mutex<Vec<Value>>>,
    delay: Duration,
}

impl SlowGateway {
    /// Serves the gateway; returns it and its notify URL.
    async fn start(delay: Duration) -> (Self, String) {
        let gateway = Self { received: Arc::default(), delay };
        let app = Router::new()
            .route("/_matrix/push/v1/notify", routing::post(notify))
            .with_state(gateway.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (gateway, format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"))
    }

    async fn event_ids(&self) -> Vec<String> {
        let received = self.received.lock().await;
        received
            .iter()
            .filter_map(|n| n["notification"]["event_id"].as_str().map(str::to_owned))
            .collect()
    }
}

async fn notify(State(gateway): State<SlowGateway>, Json(body): Json<Value>) -> Json<Value> {
    tokio::time::sleep(gateway.delay).await;
    gateway.received.lock().await.push(body);
    Json(json!({ "rejected": [] }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_delivers_the_notifications_it_queued_and_warns_of_nothing() {
    let (gateway, url) = SlowGateway::start(Duration::from_millis(150)).await;
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
        "data": { "url": url },
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
    let before_stop = gateway.event_ids().await;
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

    let delivered = gateway.event_ids().await;
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
