//! Rooms shared with Synapse (from PyPI) beyond joining: edits, redactions, receipts, power
//! levels, kicks and bans, leaving, history fetched by a late joiner, invites rejected, knocks
//! accepted, a restricted room joined through a space, an upgrade, and concurrent messages.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use rhizome_testkit::{Api, TestServer, encode, synapse::Synapse};
use serde_json::{Value, json};

use super::{has_message, wait_for_sync};

/// A fresh Synapse user on the shared instance.
async fn synapse_user(prefix: &str) -> (Api, &'static Synapse) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let synapse = Synapse::shared().await;
    let user =
        synapse.register(&format!("{prefix}{}", NEXT.fetch_add(1, Ordering::SeqCst)), false).await;
    let mut api = Api::with_client(synapse.base_url(), synapse.client());
    api.token = Some(user.access_token);
    api.user_id = Some(user.user_id.to_string());
    (api, synapse)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(40), "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn membership_of(viewer: &Api, room: &str, user: &str) -> Value {
    viewer
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            encode(room),
            encode(user)
        ))
        .await
        .body["membership"]
        .clone()
}

async fn join_via(user: &Api, room: &str, server: &str) -> rhizome_testkit::Response {
    user.post(&format!("/_matrix/client/v3/join/{}?via={server}", encode(room)), json!({})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_redactions_receipts_power_and_moderation_with_synapse() {
    let rhizome = TestServer::start_federating("127.0.0.171").await;
    let (sam, synapse) = synapse_user("sam").await;
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    let carol = Api::new_user(&rhizome.base_url, "carol").await;
    let dave = Api::new_user(&rhizome.base_url, "dave").await;
    let room = sam.create_room(json!({ "preset": "public_chat", "name": "mixed" })).await;
    for user in [&alice, &carol, &dave] {
        join_via(user, &room, synapse.server_name().as_str()).await.ok();
    }
    // Alice writes and edits; Sam sees the edit.
    let original = alice.send_text(&room, "typo").await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/e1", encode(&room)),
            json!({
                "msgtype": "m.text", "body": "* fixed",
                "m.new_content": { "msgtype": "m.text", "body": "fixed" },
                "m.relates_to": { "rel_type": "m.replace", "event_id": original },
            }),
        )
        .await
        .ok();
    wait_for_sync(&sam, "the edit", |sync| has_message(sync, &room, "* fixed")).await;
    // Sam redacts it; Alice's server strips it.
    sam.put(
        &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", encode(&room), encode(&original)),
        json!({}),
    )
    .await
    .ok();
    eventually("the redaction on Rhizome", || async {
        let event = alice
            .get(&format!("/_matrix/client/v3/rooms/{}/event/{}", encode(&room), encode(&original)))
            .await;
        event.body["content"] == json!({})
    })
    .await;
    // Receipts both ways.
    let from_sam = sam.send_text(&room, "read this").await;
    wait_for_sync(&alice, "sam's message", |sync| has_message(sync, &room, "read this")).await;
    alice
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                encode(&room),
                encode(&from_sam)
            ),
            json!({}),
        )
        .await
        .ok();
    wait_for_sync(&sam, "alice's receipt", |sync| {
        sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["type"] == "m.receipt"
                    && event["content"][&from_sam]["m.read"][alice.user()].is_object()
            })
        })
    })
    .await;
    // Sam gives Alice power; she sets the topic from Rhizome.
    let levels_path =
        format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", encode(&room));
    let mut levels = sam.get(&levels_path).await.ok();
    levels["users"][alice.user()] = json!(50);
    sam.put(&levels_path, levels).await.ok();
    eventually("the promotion on Rhizome", || async {
        alice.get(&levels_path).await.body["users"][alice.user()] == 50
    })
    .await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", encode(&room)),
            json!({ "topic": "from Rhizome" }),
        )
        .await
        .ok();
    eventually("the topic on Synapse", || async {
        sam.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", encode(&room)))
            .await
            .body["topic"]
            == "from Rhizome"
    })
    .await;
    // Sam kicks Carol and bans Dave; Dave cannot come back.
    sam.post(
        &format!("/_matrix/client/v3/rooms/{}/kick", encode(&room)),
        json!({ "user_id": carol.user() }),
    )
    .await
    .ok();
    sam.post(
        &format!("/_matrix/client/v3/rooms/{}/ban", encode(&room)),
        json!({ "user_id": dave.user() }),
    )
    .await
    .ok();
    eventually("the kick and ban on Rhizome", || async {
        membership_of(&alice, &room, carol.user()).await == "leave"
            && membership_of(&alice, &room, dave.user()).await == "ban"
    })
    .await;
    let again = join_via(&dave, &room, synapse.server_name().as_str()).await;
    assert_eq!(again.status.as_u16(), 403, "{}", again.body);
    // Alice leaves; Sam sees it.
    alice.post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&room)), json!({})).await.ok();
    eventually("alice's leave on Synapse", || async {
        membership_of(&sam, &room, alice.user()).await == "leave"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_rhizome_joiner_pages_back_through_synapse_history() {
    let rhizome = TestServer::start_federating("127.0.0.172").await;
    let (sam, synapse) = synapse_user("historian").await;
    let room = sam
        .create_room(json!({ "preset": "public_chat", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "shared" },
        }] }))
        .await;
    for index in 0..30 {
        sam.send_text(&room, &format!("before {index}")).await;
    }
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    join_via(&alice, &room, synapse.server_name().as_str()).await.ok();
    let mut seen: Vec<String> = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let query = match &from {
            Some(from) => format!("dir=b&limit=20&from={from}"),
            None => "dir=b&limit=20".to_owned(),
        };
        let page = alice
            .get(&format!("/_matrix/client/v3/rooms/{}/messages?{query}", encode(&room)))
            .await
            .ok();
        for event in page["chunk"].as_array().unwrap() {
            if let Some(body) = event["content"]["body"].as_str() {
                seen.push(body.to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).rev().map(|index| format!("before {index}")).collect();
    assert_eq!(seen, expected, "the history, newest first, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_rejected_and_knocks_accepted_with_synapse() {
    let rhizome = TestServer::start_federating("127.0.0.173").await;
    let (sam, synapse) = synapse_user("host").await;
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    // An invite from Synapse, rejected from Rhizome.
    let private = sam.create_room(json!({ "preset": "private_chat" })).await;
    sam.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", encode(&private)),
        json!({ "user_id": alice.user() }),
    )
    .await
    .ok();
    wait_for_sync(&alice, "the invite", |sync| sync["rooms"]["invite"][&private].is_object()).await;
    alice
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", encode(&private)), json!({}))
        .await
        .ok();
    eventually("the rejection on Synapse", || async {
        membership_of(&sam, &private, alice.user()).await == "leave"
    })
    .await;
    // A knock on a Synapse room, answered with an invite, then a join.
    let knockable = sam
        .create_room(json!({ "room_version": "11", "initial_state": [{
            "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" },
        }] }))
        .await;
    let knocked = alice
        .post(
            &format!(
                "/_matrix/client/v3/knock/{}?via={}",
                encode(&knockable),
                synapse.server_name()
            ),
            json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(knocked.status.as_u16(), 200, "{}", knocked.body);
    eventually("the knock on Synapse", || async {
        membership_of(&sam, &knockable, alice.user()).await == "knock"
    })
    .await;
    sam.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", encode(&knockable)),
        json!({ "user_id": alice.user() }),
    )
    .await
    .ok();
    wait_for_sync(&alice, "the invite after the knock", |sync| {
        sync["rooms"]["invite"][&knockable].is_object()
    })
    .await;
    join_via(&alice, &knockable, synapse.server_name().as_str()).await.ok();
    eventually("alice joined on Synapse", || async {
        membership_of(&sam, &knockable, alice.user()).await == "join"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_restricted_room_and_an_upgrade_with_synapse() {
    let rhizome = TestServer::start_federating("127.0.0.174").await;
    let (sam, synapse) = synapse_user("spacer").await;
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    let via = synapse.server_name().to_string();
    let space = sam
        .create_room(json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }))
        .await;
    let restricted = sam
        .create_room(json!({ "preset": "private_chat", "initial_state": [{
            "type": "m.room.join_rules", "state_key": "",
            "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] },
        }] }))
        .await;
    assert_eq!(join_via(&alice, &restricted, &via).await.status.as_u16(), 403);
    join_via(&alice, &space, &via).await.ok();
    let joined = join_via(&alice, &restricted, &via).await;
    assert_eq!(joined.status.as_u16(), 200, "{}", joined.body);
    // Sam upgrades the restricted room; Alice follows the tombstone.
    let upgraded = sam
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", encode(&restricted)),
            json!({ "new_version": "12" }),
        )
        .await
        .ok();
    let new = upgraded["replacement_room"].as_str().unwrap().to_owned();
    wait_for_sync(&alice, "the tombstone", |sync| {
        sync["rooms"]["join"][&restricted]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|event| event["type"] == "m.room.tombstone"))
    })
    .await;
    let joined = join_via(&alice, &new, &via).await;
    assert_eq!(joined.status.as_u16(), 200, "{}", joined.body);
    alice.send_text(&new, "followed").await;
    wait_for_sync(&sam, "alice in the new room", |sync| has_message(sync, &new, "followed")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_with_synapse_reach_both() {
    let rhizome = TestServer::start_federating("127.0.0.175").await;
    let (sam, synapse) = synapse_user("chatter").await;
    let alice = Api::new_user(&rhizome.base_url, "alice").await;
    let room = sam.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&alice, &room, synapse.server_name().as_str()).await.ok();
    let from_sam = async {
        for index in 0..8 {
            sam.send_text(&room, &format!("s{index}")).await;
        }
    };
    let from_alice = async {
        for index in 0..8 {
            alice.send_text(&room, &format!("r{index}")).await;
        }
    };
    tokio::join!(from_sam, from_alice);
    async fn bodies(user: &Api, room: &str) -> Vec<String> {
        let page = user
            .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", encode(room)))
            .await
            .ok();
        let mut bodies: Vec<String> = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
            .collect();
        bodies.sort();
        bodies
    }
    let mut expected: Vec<String> =
        (0..8).flat_map(|index| [format!("s{index}"), format!("r{index}")]).collect();
    expected.sort();
    eventually("every message on both servers", || async {
        bodies(&alice, &room).await == expected && bodies(&sam, &room).await == expected
    })
    .await;
}
