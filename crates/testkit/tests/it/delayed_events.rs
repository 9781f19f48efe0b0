//! Delayed events (MSC4140): scheduled through `/send`, `/state` and the unstable endpoint,
//! listed, restarted, sent early or cancelled (with a token, or by delay ID alone), sent when
//! due, and still due after a restart; never sent for a deactivated account; listed and managed
//! as Synapse does.

use std::time::Duration;

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

const UNSTABLE: &str = "/_matrix/client/unstable/org.matrix.msc4140";

fn send_path(room_id: &str, txn: &str, delay_ms: &str) -> String {
    format!(
        "/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}?org.matrix.msc4140.delay={delay_ms}"
    )
}

fn state_path(room_id: &str, event_type: &str, state_key: &str, delay_ms: u64) -> String {
    format!(
        "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}\
         ?org.matrix.msc4140.delay={delay_ms}"
    )
}

async fn scheduled(api: &Api) -> Vec<Value> {
    api.get(&format!("{UNSTABLE}/delayed_events")).await.ok()["delayed_events"]
        .as_array()
        .unwrap()
        .clone()
}

/// The bodies of the room's latest messages, the newest first.
async fn bodies(api: &Api, room_id: &str) -> Vec<String> {
    let path = format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=20");
    let chunk = api.get(&path).await.ok()["chunk"].as_array().unwrap().clone();
    chunk
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits (up to ten seconds) until the room shows a message with `body`.
async fn wait_for_message(api: &Api, room_id: &str, body: &str) {
    for _ in 0..100 {
        if bodies(api, room_id).await.iter().any(|seen| seen == body) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the delayed message {body:?} was never sent");
}

#[tokio::test]
async fn delayed_messages_are_listed_then_sent_when_due() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let versions = alice.get("/_matrix/client/versions").await.ok();
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);
    let room_id = alice.create_room(json!({})).await;

    let content = json!({ "msgtype": "m.text", "body": "later" });
    let answer = alice.put(&send_path(&room_id, "t1", "1500"), content.clone()).await.ok();
    let delay_id = answer["delay_id"].as_str().unwrap().to_owned();
    assert!(answer.get("event_id").is_none(), "{answer}");
    let listed = scheduled(&alice).await;
    assert_eq!(listed.len(), 1);
    let entry = &listed[0];
    assert_eq!(entry["delay_id"], delay_id.as_str());
    assert_eq!(entry["room_id"], room_id.as_str());
    assert_eq!(entry["type"], "m.room.message");
    assert_eq!(entry["content"], content);
    assert_eq!(entry["delay"], 1500);
    assert_eq!(entry["delay_ms"], 1500);
    assert_eq!(entry["delayed_since_ts"], entry["running_since"]);
    assert!(entry.get("state_key").is_none());
    assert!(entry["running_since"].as_u64().unwrap() > 0);
    // A retried request (the same transaction) schedules nothing new.
    let again = alice.put(&send_path(&room_id, "t1", "1500"), content.clone()).await.ok();
    assert_eq!(again["delay_id"], delay_id.as_str());
    assert_eq!(scheduled(&alice).await.len(), 1);
    let one = alice.get(&format!("{UNSTABLE}/delayed_events/{delay_id}")).await.ok();
    assert_eq!(one["delay_id"], delay_id.as_str());
    assert!(!bodies(&alice, &room_id).await.contains(&"later".to_owned()), "not sent yet");

    wait_for_message(&alice, &room_id, "later").await;
    assert!(scheduled(&alice).await.is_empty(), "a sent event is no longer scheduled");
    let sent = bodies(&alice, &room_id).await;
    assert_eq!(sent.iter().filter(|body| *body == "later").count(), 1, "sent once");

    // The unstable endpoint of its own, with the delay in the body.
    let path = format!("{UNSTABLE}/rooms/{room_id}/delayed_event/m.room.message/t2");
    let body = json!({ "delay": 200, "content": { "msgtype": "m.text", "body": "by body" } });
    alice.put(&path, body).await.ok();
    wait_for_message(&alice, &room_id, "by body").await;
}

#[tokio::test]
async fn delayed_state_is_restarted_sent_early_or_cancelled() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    let member_key = "_@alice:localhost_DEVICE";
    let call = "org.matrix.msc3401.call.member";

    // A call membership that ends itself unless restarted.
    let path = state_path(&room_id, call, member_key, 60_000);
    let id = alice.put(&path, json!({})).await.ok()["delay_id"].as_str().unwrap().to_owned();
    let entry = scheduled(&alice).await[0].clone();
    assert_eq!(entry["state_key"], member_key);
    assert_eq!(entry["type"], call);
    let before = entry["running_since"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    alice
        .post(&format!("{UNSTABLE}/delayed_events/{id}"), json!({ "action": "restart" }))
        .await
        .ok();
    let after = scheduled(&alice).await[0]["running_since"].as_u64().unwrap();
    assert!(after > before, "a restart starts the delay again ({before} → {after})");

    // Only its owner, with a token, or anyone with the delay ID alone.
    let owned = format!("{UNSTABLE}/delayed_events/{id}");
    bob.post(&owned, json!({ "action": "cancel" })).await.expect_error(404, "M_NOT_FOUND");
    bob.get(&owned).await.expect_error(404, "M_NOT_FOUND");
    assert!(scheduled(&bob).await.is_empty());
    alice.post(&owned, json!({ "action": "explode" })).await.expect_error(400, "M_INVALID_PARAM");
    let anonymous = Api::new(&server.base_url);
    anonymous.post(&format!("{owned}/restart"), json!({})).await.ok();
    anonymous.post(&format!("{owned}/cancel"), json!({})).await.ok();
    anonymous.post(&format!("{owned}/cancel"), json!({})).await.expect_error(404, "M_NOT_FOUND");
    alice.post(&owned, json!({ "action": "send" })).await.expect_error(404, "M_NOT_FOUND");
    assert!(scheduled(&alice).await.is_empty());
    let state = format!("/_matrix/client/v3/rooms/{room_id}/state/{call}/{member_key}");
    alice.get(&state).await.expect_error(404, "M_NOT_FOUND");

    // Sent early, at once, as its sender.
    let topic = state_path(&room_id, "m.room.topic", "", 60_000);
    let id = alice.put(&topic, json!({ "topic": "soon" })).await.ok()["delay_id"]
        .as_str()
        .unwrap()
        .to_owned();
    anonymous.post(&format!("{UNSTABLE}/delayed_events/{id}/send"), json!({})).await.ok();
    let topic_now = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/");
    assert_eq!(bob.get(&topic_now).await.ok()["topic"], "soon");
    anonymous
        .post(&format!("{UNSTABLE}/delayed_events/{id}/send"), json!({}))
        .await
        .expect_error(404, "M_NOT_FOUND");
    anonymous
        .post(&format!("{UNSTABLE}/delayed_events/{id}"), json!({ "action": "send" }))
        .await
        .expect_error(401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn delayed_events_refused() {
    let server = TestServer::start_with(rhizome_testkit::Backend::Sqlite, |config| {
        config.limits.max_event_delay_ms = 10_000;
        config.limits.max_delayed_events_per_user = 2;
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let stranger = Api::new_user(&server.base_url, "stranger").await;
    let room_id = alice.create_room(json!({})).await;
    let content = json!({ "msgtype": "m.text", "body": "x" });

    let too_long = alice.put(&send_path(&room_id, "a", "10001"), content.clone()).await;
    too_long.expect_error(400, "M_MAX_DELAY_EXCEEDED");
    assert_eq!(too_long.body["max_delay"], 10_000);
    for bad in ["-1", "soon", "1.5", ""] {
        alice
            .put(&send_path(&room_id, "b", bad), content.clone())
            .await
            .expect_error(400, "M_INVALID_PARAM");
    }
    stranger
        .put(&send_path(&room_id, "c", "1000"), content.clone())
        .await
        .expect_error(403, "M_FORBIDDEN");
    // Another user's membership is no more allowed later than now.
    let member = state_path(&room_id, "m.room.member", "@stranger:localhost", 1000);
    alice.put(&member, json!({ "membership": "join" })).await.expect_error(403, "M_FORBIDDEN");
    alice.put(&send_path(&room_id, "d", "10000"), content.clone()).await.ok();
    alice.put(&send_path(&room_id, "e", "10000"), content.clone()).await.ok();
    alice
        .put(&send_path(&room_id, "f", "10000"), content.clone())
        .await
        .expect_error(429, "M_LIMIT_EXCEEDED");
    assert_eq!(scheduled(&alice).await.len(), 2);

    // Turned off: not advertised, and refused.
    let off = TestServer::start_with(rhizome_testkit::Backend::Sqlite, |config| {
        config.limits.max_event_delay_ms = 0;
    })
    .await;
    let carol = Api::new_user(&off.base_url, "carol").await;
    let versions = carol.get("/_matrix/client/versions").await.ok();
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], false);
    let room_id = carol.create_room(json!({})).await;
    carol
        .put(&send_path(&room_id, "a", "1"), content)
        .await
        .expect_error(400, "M_MAX_DELAY_EXCEEDED");
}

#[tokio::test]
async fn delayed_events_survive_a_restart() {
    let mut server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let content = json!({ "msgtype": "m.text", "body": "after the restart" });
    alice.put(&send_path(&room_id, "r", "1500"), content).await.ok();
    server.restart().await;
    assert_eq!(scheduled(&alice).await.len(), 1, "still scheduled");
    wait_for_message(&alice, &room_id, "after the restart").await;
    assert!(scheduled(&alice).await.is_empty());
}

#[tokio::test]
async fn another_users_change_cancels_delayed_state() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let body =
        json!({ "preset": "public_chat", "power_level_content_override": { "state_default": 0 } });
    let room_id = alice.create_room(body).await;
    bob.join(&room_id).await;
    let shared = state_path(&room_id, "com.example.shared", "", 60_000);
    let other = state_path(&room_id, "com.example.other", "", 60_000);
    alice.put(&shared, json!({ "by": "alice" })).await.ok();
    alice.put(&other, json!({ "by": "alice" })).await.ok();
    let now = |event_type: &str| format!("/_matrix/client/v3/rooms/{room_id}/state/{event_type}/");

    // Her own change leaves her delayed events alone; someone else's cancels the one it moots.
    alice.put(&now("com.example.shared"), json!({ "by": "alice, now" })).await.ok();
    assert_eq!(scheduled(&alice).await.len(), 2);
    bob.put(&now("com.example.shared"), json!({ "by": "bob" })).await.ok();
    let left = scheduled(&alice).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["type"], "com.example.other");
}

/// What a client sees of a delayed event: the keys of a listed one, and the statuses of
/// restarting and cancelling it and of sending an unknown one.
async fn observed(
    http: &reqwest::Client,
    base_url: &str,
    token: &str,
    room_id: &str,
) -> (Vec<String>, Vec<u16>) {
    let url = |path: &str| format!("{base_url}{path}");
    let content = json!({ "msgtype": "m.text", "body": "compare" });
    let request = http.put(url(&send_path(room_id, "cmp", "60000"))).bearer_auth(token);
    let scheduled: Value = request.json(&content).send().await.unwrap().json().await.unwrap();
    let delay_id = scheduled["delay_id"].as_str().unwrap().to_owned();
    let request = http.get(url(&format!("{UNSTABLE}/delayed_events"))).bearer_auth(token);
    let listed: Value = request.send().await.unwrap().json().await.unwrap();
    let mut keys: Vec<String> =
        listed["delayed_events"][0].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    let mut statuses = Vec::new();
    let steps = [(delay_id.as_str(), "restart"), (delay_id.as_str(), "cancel"), ("none", "send")];
    for (id, action) in steps {
        let request = http.post(url(&format!("{UNSTABLE}/delayed_events/{id}")));
        let response =
            request.bearer_auth(token).json(&json!({ "action": action })).send().await.unwrap();
        statuses.push(response.status().as_u16());
    }
    (keys, statuses)
}

#[tokio::test]
async fn delayed_events_look_as_they_do_on_synapse() {
    use rhizome_testkit::synapse::{Synapse, SynapseOptions};
    let options = SynapseOptions::default()
        .ip([127, 0, 0, 178].into())
        .config("max_event_delay_duration", json!("1h"));
    let synapse = Synapse::start_with(options).await;
    let user = synapse.register("delayer", false).await;
    let request = synapse.client().post(synapse.url("/_matrix/client/v3/createRoom"));
    let request = request.bearer_auth(&user.access_token).json(&json!({}));
    let created: Value = request.send().await.unwrap().json().await.unwrap();
    let synapse_room = created["room_id"].as_str().unwrap();
    let on_synapse =
        observed(&synapse.client(), synapse.base_url(), &user.access_token, synapse_room).await;

    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let token = alice.token.clone().unwrap();
    let on_rhizome = observed(&reqwest::Client::new(), &server.base_url, &token, &room_id).await;
    assert_eq!(on_rhizome, on_synapse);
}

/// Deactivates the account behind `api` as its user does, with its password.
async fn deactivate_by_user(api: &Api) {
    let path = "/_matrix/client/v3/account/deactivate";
    let challenge = api.post(path, json!({})).await;
    let auth = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": api.user() },
        "password": "a-long-password",
        "session": challenge.body["session"],
    });
    api.post(path, json!({ "auth": auth })).await.ok();
}

#[tokio::test]
async fn deactivation_cancels_delayed_events() {
    use rhizome::admin::users;
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let body =
        json!({ "preset": "public_chat", "power_level_content_override": { "state_default": 0 } });
    let room_id = alice.create_room(body).await;
    // Long enough for both deactivations to finish before anything is due.
    let delay_ms = 3_000;
    let delay = Duration::from_millis(delay_ms);
    let scheduled_at = std::time::Instant::now();
    for (name, by_administrator) in [("bob", false), ("carol", true)] {
        let user = Api::new_user(&server.base_url, name).await;
        user.join(&room_id).await;
        let user_id = format!("@{name}:localhost");
        let message = json!({ "msgtype": "m.text", "body": format!("from {name}") });
        user.put(&send_path(&room_id, "later", &delay_ms.to_string()), message).await.ok();
        let later = state_path(&room_id, "com.example.later", &user_id, delay_ms);
        user.put(&later, json!({ "by": name })).await.ok();
        // A delayed join would bring the deactivated account back into the public room.
        let member = state_path(&room_id, "m.room.member", &user_id, delay_ms);
        user.put(&member, json!({ "membership": "join" })).await.ok();
        assert_eq!(scheduled(&user).await.len(), 3);
        if by_administrator {
            users::deactivate(server.services(), name).await.unwrap();
        } else {
            deactivate_by_user(&user).await;
        }
        let user_id = ruma::UserId::parse(&user_id).unwrap();
        assert!(server.services().delayed_events(&user_id).await.unwrap().is_empty());
    }
    assert!(scheduled_at.elapsed() < delay, "the deactivations took longer than the delay");
    // Scheduled last, due last: once it is sent, the others' due time has passed too.
    let control = json!({ "msgtype": "m.text", "body": "control" });
    let remaining = delay.saturating_sub(scheduled_at.elapsed()).as_millis().to_string();
    alice.put(&send_path(&room_id, "control", &remaining), control).await.ok();
    wait_for_message(&alice, &room_id, "control").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let seen = bodies(&alice, &room_id).await;
    assert!(
        !seen.iter().any(|body| body.starts_with("from ")),
        "sent after deactivation: {seen:?}"
    );
    let members = format!("/_matrix/client/v3/rooms/{room_id}/joined_members");
    let joined = alice.get(&members).await.ok()["joined"].clone();
    assert_eq!(joined.as_object().unwrap().len(), 1, "a deactivated account is back: {joined}");
    for name in ["bob", "carol"] {
        let state =
            format!("/_matrix/client/v3/rooms/{room_id}/state/com.example.later/@{name}:localhost");
        alice.get(&state).await.expect_error(404, "M_NOT_FOUND");
    }
}

#[tokio::test]
async fn managing_delayed_events_is_rate_limited() {
    let server = TestServer::start_with(rhizome_testkit::Backend::Sqlite, |config| {
        use rhizome_core::config::RateLimit;
        config.rate_limits.enabled = true;
        config.rate_limits.delayed_event_management = RateLimit { per_second: 0.001, burst: 2 };
        config.rate_limits.delayed_event_management_per_address =
            RateLimit { per_second: 0.001, burst: 3 };
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let content = json!({ "msgtype": "m.text", "body": "x" });
    let answer = alice.put(&send_path(&room_id, "limited", "60000"), content).await.ok();
    let owned = format!("{UNSTABLE}/delayed_events/{}", answer["delay_id"].as_str().unwrap());

    // With a token: per user.
    for _ in 0..2 {
        alice.post(&owned, json!({ "action": "restart" })).await.ok();
    }
    let limited = alice.post(&owned, json!({ "action": "restart" })).await;
    limited.expect_error(429, "M_LIMIT_EXCEEDED");
    assert!(limited.body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", limited.body);

    // By delay ID alone: per client address, known IDs and guessed ones alike, so IDs cannot
    // be guessed at speed.
    let anonymous = Api::new(&server.base_url);
    anonymous.post(&format!("{owned}/restart"), json!({})).await.ok();
    for guess in ["syd_a", "syd_b"] {
        let path = format!("{UNSTABLE}/delayed_events/{guess}/send");
        anonymous.post(&path, json!({})).await.expect_error(404, "M_NOT_FOUND");
    }
    let limited = anonymous.post(&format!("{owned}/restart"), json!({})).await;
    limited.expect_error(429, "M_LIMIT_EXCEEDED");
    assert!(limited.body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", limited.body);
    assert_eq!(scheduled(&alice).await.len(), 1, "the refused requests changed nothing");
}
