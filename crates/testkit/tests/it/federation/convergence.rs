//! Two Rhizome servers agree on rooms they share: moderation from either side takes effect on
//! both, concurrent messages from both sides arrive everywhere with the same state afterwards,
//! and a partition heals with both sides converging.

use std::time::{Duration, Instant};

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::json;

use super::{has_message, wait_for_sync};

/// Two servers and a public room on the first, joined from the second.
async fn shared_room(ip_a: &str, ip_b: &str) -> (TestServer, TestServer, Api, Api, String) {
    let (a, b) =
        tokio::join!(TestServer::start_federating(ip_a), TestServer::start_federating(ip_b));
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "shared" })).await;
    bob.post(
        &format!("/_matrix/client/v3/join/{}?via={}", encode(&room), a.config.server_name),
        json!({}),
    )
    .await
    .ok();
    (a, b, alice, bob, room)
}

/// A room's current state as a user's server holds it: `(type, state_key) -> event_id`.
async fn state_of(user: &Api, room: &str) -> Vec<(String, String, String)> {
    let state = user.get(&format!("/_matrix/client/v3/rooms/{}/state", encode(room))).await.ok();
    let mut entries: Vec<(String, String, String)> = state
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["state_key"].as_str().unwrap().to_owned(),
                event["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    entries.sort();
    entries
}

/// Waits until both users' servers hold the same state of the room.
async fn wait_for_same_state(one: &Api, other: &Api, room: &str) -> Vec<(String, String, String)> {
    let started = Instant::now();
    loop {
        let (a, b) = (state_of(one, room).await, state_of(other, room).await);
        if a == b {
            return a;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the states never converged:\n{a:?}\n{b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every message body in the room, oldest first, as the user's server serves it.
async fn bodies(user: &Api, room: &str) -> Vec<String> {
    let messages = user
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=200", encode(room)))
        .await
        .ok();
    let mut bodies: Vec<String> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect();
    bodies.reverse();
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_from_either_side_takes_effect_on_both() {
    let (_a, b, alice, bob, room) = shared_room("127.0.0.151", "127.0.0.152").await;
    let levels_path =
        format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", encode(&room));
    // Alice makes Bob a moderator; Bob's server applies it, and Bob can now rename the room.
    let mut levels = alice.get(&levels_path).await.ok();
    levels["users"][bob.user()] = json!(50);
    alice.put(&levels_path, levels).await.ok();
    wait_for_sync(&bob, "the promotion", |sync| {
        sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|event| event["type"] == "m.room.power_levels"))
    })
    .await;
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", encode(&room)),
        json!({ "name": "renamed by bob" }),
    )
    .await
    .ok();
    wait_for_same_state(&alice, &bob, &room).await;
    // Bob redacts a message of Alice's from his server.
    let message = alice.send_text(&room, "to be removed").await;
    wait_for_sync(&bob, "the message", |sync| has_message(sync, &room, "to be removed")).await;
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", encode(&room), encode(&message)),
        json!({}),
    )
    .await
    .ok();
    let started = Instant::now();
    loop {
        let event = alice
            .get(&format!("/_matrix/client/v3/rooms/{}/event/{}", encode(&room), encode(&message)))
            .await
            .ok();
        if event["content"] == json!({}) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the redaction never reached A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Carol of B joins; Alice bans her; she cannot come back.
    let carol = Api::new_user(&b.base_url, "carol").await;
    carol.post(&format!("/_matrix/client/v3/join/{}", encode(&room)), json!({})).await.ok();
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", encode(&room)),
            json!({ "user_id": carol.user(), "reason": "spam" }),
        )
        .await
        .ok();
    let started = Instant::now();
    loop {
        let membership = bob
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                encode(&room),
                encode(carol.user())
            ))
            .await;
        if membership.body["membership"] == "ban" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the ban never reached B: {}",
            membership.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = carol.post(&format!("/_matrix/client/v3/join/{}", encode(&room)), json!({})).await;
    assert_eq!(again.status.as_u16(), 403, "a banned user came back: {}", again.body);
    // Bob leaves.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&room)), json!({})).await.ok();
    wait_for_sync(&alice, "bob's leave", |sync| {
        sync["rooms"]["join"][&room]["timeline"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["state_key"] == bob.user() && event["content"]["membership"] == "leave"
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_from_both_sides_reach_both_and_the_state_agrees() {
    let (_a, _b, alice, bob, room) = shared_room("127.0.0.153", "127.0.0.154").await;
    let sends_a = async {
        for index in 0..8 {
            alice.send_text(&room, &format!("a{index}")).await;
        }
    };
    let sends_b = async {
        for index in 0..8 {
            bob.send_text(&room, &format!("b{index}")).await;
        }
    };
    tokio::join!(sends_a, sends_b);
    let started = Instant::now();
    loop {
        let (on_a, on_b) = (bodies(&alice, &room).await, bodies(&bob, &room).await);
        let complete = |list: &Vec<String>| list.len() == 16;
        if complete(&on_a) && complete(&on_b) {
            for list in [&on_a, &on_b] {
                let mut sorted = list.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), 16, "a message twice: {list:?}");
                // Each side's own messages keep their order.
                for prefix in ["a", "b"] {
                    let own: Vec<&String> =
                        list.iter().filter(|body| body.starts_with(prefix)).collect();
                    let expected: Vec<String> =
                        (0..8).map(|index| format!("{prefix}{index}")).collect();
                    assert_eq!(own.into_iter().cloned().collect::<Vec<_>>(), expected);
                }
            }
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "A has {on_a:?}, B has {on_b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_same_state(&alice, &bob, &room).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_and_both_sides_converge() {
    let (mut a, mut b, alice, bob, room) = shared_room("127.0.0.155", "127.0.0.156").await;
    let topic_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", encode(&room));
    let name_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", encode(&room));
    // Cut apart: while B is down, A's side talks and sets the topic.
    b.stop_for_now().await;
    for index in 0..3 {
        alice.send_text(&room, &format!("a-apart {index}")).await;
    }
    alice.put(&topic_path, json!({ "topic": "set on A" })).await.ok();
    // Then A is down and B's side talks and renames the room, knowing nothing of A's changes.
    a.stop_for_now().await;
    b.start_again().await;
    for index in 0..3 {
        bob.send_text(&room, &format!("b-apart {index}")).await;
    }
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", encode(bob.user())),
        json!({ "displayname": "Bob while apart" }),
    )
    .await
    .ok();
    // Reconnected.
    a.start_again().await;
    let expected: Vec<String> = (0..3)
        .map(|index| format!("a-apart {index}"))
        .chain((0..3).map(|index| format!("b-apart {index}")))
        .collect();
    let started = Instant::now();
    loop {
        let (on_a, on_b) = (bodies(&alice, &room).await, bodies(&bob, &room).await);
        let has_all = |list: &Vec<String>| expected.iter().all(|body| list.contains(body));
        if has_all(&on_a) && has_all(&on_b) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "A has {on_a:?}, B has {on_b:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // One more message from each side merges the branches on both.
    alice.send_text(&room, "merged from A").await;
    bob.send_text(&room, "merged from B").await;
    let state = wait_for_same_state(&alice, &bob, &room).await;
    assert_eq!(bob.get(&topic_path).await.ok()["topic"], "set on A", "{state:?}");
    assert_eq!(alice.get(&name_path).await.ok()["name"], "shared", "{state:?}");
    let member = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            encode(&room),
            encode(bob.user())
        ))
        .await
        .ok();
    assert_eq!(member["displayname"], "Bob while apart", "{state:?}");
}
