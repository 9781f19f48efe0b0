//! Push notifications over HTTP: pushers are checked when set, and a message that notifies
//! someone reaches their push gateway (a small one served by the test) in the format their
//! app asked for; rejected pushkeys and signed-out devices lose their pushers.

use std::time::Duration;

use rhizome_testkit::{Api, Backend, RecordingPushGateway, TestServer};
use serde_json::{Value, json};

fn pusher(pushkey: &str, url: &str, format: Option<&str>) -> Value {
    let mut data = json!({ "url": url });
    if let Some(format) = format {
        data["format"] = json!(format);
    }
    json!({
        "pushkey": pushkey, "kind": "http", "app_id": "org.example.chat",
        "app_display_name": "Chat", "device_display_name": "phone", "lang": "en",
        "data": data, "append": true,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_the_gateway_in_the_format_asked_for() {
    let gateway = RecordingPushGateway::start().await;
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.push.allowed_addresses = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;

    // Pushers are checked.
    let set = "/_matrix/client/v3/pushers/set";
    let wrong_path = pusher("k0", "https://push.example.org/notify", None);
    alice.post(set, wrong_path).await.expect_error(400, "M_INVALID_PARAM");
    let mut email = pusher("k0", gateway.url(), None);
    email["kind"] = json!("email");
    alice.post(set, email).await.expect_error(400, "M_INVALID_PARAM");

    // Two of Alice's apps: one wants the whole event, one only its ID.
    alice.post(set, pusher("full-key", gateway.url(), None)).await.ok();
    let mut phone = server.api();
    let login = json!({
        "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
        "password": "a-long-password",
    });
    phone.token = phone.post("/_matrix/client/v3/login", login).await.ok()["access_token"]
        .as_str()
        .map(str::to_owned);
    phone.post(set, pusher("id-only-key", gateway.url(), Some("event_id_only"))).await.ok();

    // Bob invites Alice: both her apps hear of it.
    let room_id = bob
        .create_room(json!({ "preset": "trusted_private_chat", "name": "Garden",
                             "invite": [alice.user()], "is_direct": true }))
        .await;
    let received = gateway.wait_for(2).await;
    for invite in &received {
        assert_eq!(invite["notification"]["room_id"], room_id.as_str(), "{invite}");
    }
    let invite = received
        .iter()
        .find(|body| body["notification"]["devices"][0]["pushkey"] == "full-key")
        .unwrap();
    assert_eq!(invite["notification"]["type"], "m.room.member");
    assert_eq!(invite["notification"]["user_is_target"], true);
    assert_eq!(invite["notification"]["content"]["membership"], "invite");

    alice.join(&room_id).await;
    let event_id = bob.send_text(&room_id, "the seedlings are up").await;
    let received = gateway.wait_for(4).await;
    let by_key = |key: &str| {
        received
            .iter()
            .find(|body| {
                body["notification"]["devices"][0]["pushkey"] == key
                    && body["notification"]["event_id"] == event_id.as_str()
            })
            .unwrap_or_else(|| panic!("nothing for {key}: {received:?}"))["notification"]
            .clone()
    };
    let full = by_key("full-key");
    assert_eq!(full["event_id"], event_id.as_str());
    assert_eq!(full["room_id"], room_id.as_str());
    assert_eq!(full["type"], "m.room.message");
    assert_eq!(full["sender"], bob.user());
    assert_eq!(full["sender_display_name"], "bob");
    assert_eq!(full["room_name"], "Garden");
    assert_eq!(full["content"]["body"], "the seedlings are up");
    // The badge: rooms with unread notifications (the invite and the message are in one).
    assert_eq!(full["counts"]["unread"], 1);
    assert_eq!(full["prio"], "high");
    let device = &full["devices"][0];
    assert_eq!(device["app_id"], "org.example.chat");
    assert!(device["data"].get("url").is_none(), "the gateway URL is not echoed: {device}");
    // A one-to-one room rings: the default rules add a sound.
    assert_eq!(device["tweaks"]["sound"], "default");
    let id_only = by_key("id-only-key");
    assert_eq!(id_only["event_id"], event_id.as_str());
    assert_eq!(id_only["counts"]["unread"], 1);
    for field in ["content", "sender", "type", "room_name", "sender_display_name"] {
        assert!(id_only.get(field).is_none(), "event_id_only carried {field}: {id_only}");
    }
    // Alice's own messages do not notify her.
    alice.send_text(&room_id, "lovely").await;

    // The gateway rejects one pushkey: its pusher goes.
    gateway.reject("full-key");
    bob.send_text(&room_id, "and the beans").await;
    gateway.wait_for(6).await;
    let pushers = || async {
        let listed = alice.get("/_matrix/client/v3/pushers").await.ok();
        let mut keys: Vec<String> = listed["pushers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pusher| pusher["pushkey"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    };
    for _ in 0..100 {
        if pushers().await == ["id-only-key"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pushers().await, ["id-only-key"]);

    // The phone signs out: its pusher ends with its session, and nothing more is pushed.
    phone.post("/_matrix/client/v3/logout", json!({})).await.ok();
    assert!(pushers().await.is_empty());
    bob.send_text(&room_id, "anyone?").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gateway.received().len(), 6, "a signed-out phone was notified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_private_addresses_are_not_reached_unless_allowed() {
    let gateway = RecordingPushGateway::start().await;
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    alice.post("/_matrix/client/v3/pushers/set", pusher("key", gateway.url(), None)).await.ok();
    let room_id = bob
        .create_room(json!({ "preset": "trusted_private_chat", "invite": [alice.user()] }))
        .await;
    alice.join(&room_id).await;
    bob.send_text(&room_id, "hello").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gateway.received().is_empty(), "a loopback gateway was reached");
    // The notifications themselves still count: the invite and the message.
    let sync = alice.sync("timeout=0").await;
    assert_eq!(sync["rooms"]["join"][&room_id]["unread_notifications"]["notification_count"], 2);
}

/// More notifications than the push worker takes from the queue at once (50) all reach a slow
/// gateway: each delivery that finishes has the worker look at the queue again (on SQLite
/// nothing else would for a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_beyond_one_batch_are_sent_as_earlier_ones_finish() {
    let gateway = RecordingPushGateway::start_slow(Duration::from_secs(2)).await;
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.push.allowed_addresses = vec!["127.0.0.1".parse().unwrap()];
        // Every job taken is sent at once: the batch, not the requests, is the limit here.
        config.push.concurrency = 100;
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let set = "/_matrix/client/v3/pushers/set";
    alice.post(set, pusher("phone", gateway.url(), Some("event_id_only"))).await.ok();
    let room_id = bob.create_room(json!({ "preset": "public_chat" })).await;
    alice.join(&room_id).await;

    let mut sent = Vec::new();
    for n in 0..60 {
        sent.push(bob.send_text(&room_id, &format!("message {n}")).await.to_string());
    }
    // Fifty at most are under way at once; the rest follow as those finish.
    gateway.wait_for(50).await;
    gateway.wait_for(60).await;
    let mut received = gateway.event_ids();
    received.sort();
    sent.sort();
    assert_eq!(received, sent);
}

/// Notifications to one gateway go over one kept connection, and a gateway named by a host
/// name is reached only if every address the name has may be: `localhost` is refused until the
/// organiser allows the loopback addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_keep_one_connection_and_names_are_checked_like_addresses() {
    let by_address = RecordingPushGateway::start().await;
    let by_name = RecordingPushGateway::start().await;
    let named_url = by_name.url().replace("127.0.0.1", "localhost");
    for allowed in [vec![], vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]] {
        let server = TestServer::start_with(Backend::Sqlite, |config| {
            config.push.allowed_addresses = allowed.clone();
        })
        .await;
        let alice = Api::new_user(&server.base_url, "alice").await;
        let bob = Api::new_user(&server.base_url, "bob").await;
        let set = "/_matrix/client/v3/pushers/set";
        alice.post(set, pusher("phone", by_address.url(), Some("event_id_only"))).await.ok();
        alice.post(set, pusher("tablet", &named_url, Some("event_id_only"))).await.ok();
        let room_id = bob.create_room(json!({ "preset": "public_chat" })).await;
        alice.join(&room_id).await;

        if allowed.is_empty() {
            bob.send_text(&room_id, "hello").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(by_name.received().is_empty(), "a loopback name was reached");
            assert!(by_address.received().is_empty(), "a loopback address was reached");
            continue;
        }
        for n in 1..=5 {
            bob.send_text(&room_id, &format!("message {n}")).await;
            by_address.wait_for(n).await;
            by_name.wait_for(n).await;
        }
        assert_eq!(by_address.connections(), 1, "one kept connection");
        assert_eq!(by_name.connections(), 1, "one kept connection");
    }
}
