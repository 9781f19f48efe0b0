//! Room features across two Rhizome servers: receipts, presence (only when the organiser shares
//! it), a room upgraded with members on both servers, a restricted room joined through a space,
//! and a room shut down by one server's administrator while the other's members stay.

use std::time::{Duration, Instant};

use reqwest::Method;
use rhizome_testkit::{Api, Backend, TestServer, encode, peer::TestPeer};
use ruma::RoomId;
use serde_json::json;

use super::{has_message, wait_for_sync};

async fn join_via(user: &Api, room: &str, server: &TestServer) {
    user.post(
        &format!("/_matrix/client/v3/join/{}?via={}", encode(room), server.config.server_name),
        json!({}),
    )
    .await
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_cross_and_presence_only_when_shared() {
    let share = |config: &mut rhizome_core::Config| config.federation.send_presence = true;
    let (a, b) = tokio::join!(
        TestServer::start_federating_with(Backend::Sqlite, "127.0.0.161", share),
        TestServer::start_federating_with(Backend::Sqlite, "127.0.0.162", share)
    );
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    join_via(&bob, &room, &a).await;
    let message = alice.send_text(&room, "read me").await;
    wait_for_sync(&bob, "the message", |sync| has_message(sync, &room, "read me")).await;
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", encode(&room), encode(&message)),
        json!({}),
    )
    .await
    .ok();
    wait_for_sync(&alice, "bob's receipt", |sync| {
        sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["type"] == "m.receipt"
                    && event["content"][&message]["m.read"][bob.user()].is_object()
            })
        })
    })
    .await;
    // Presence, shared by both organisers here.
    bob.put(
        &format!("/_matrix/client/v3/presence/{}/status", encode(bob.user())),
        json!({ "presence": "online", "status_msg": "organising" }),
    )
    .await
    .ok();
    let started = Instant::now();
    loop {
        let presence =
            alice.get(&format!("/_matrix/client/v3/presence/{}/status", encode(bob.user()))).await;
        if presence.body["presence"] == "online" && presence.body["status_msg"] == "organising" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "presence never crossed: {}",
            presence.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_not_sent_to_other_servers_by_default() {
    let server = TestServer::start_federating("127.0.0.163").await;
    let peer = TestPeer::start_on("127.0.0.164".parse().unwrap()).await;
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| json!({ "pdus": {} }));
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let room_id = <&RoomId>::try_from(room.as_str()).unwrap();
    peer.join_room(
        &server.config.server_name,
        server.tls_base_url.as_deref().unwrap(),
        room_id,
        "pat",
    )
    .await;
    alice
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", encode(alice.user())),
            json!({ "presence": "online" }),
        )
        .await
        .ok();
    alice.send_text(&room, "after going online").await;
    peer.wait_for(&Method::PUT, "/_matrix/federation/v1/send/{txn}", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let edus: Vec<serde_json::Value> = peer
        .received_matching(&Method::PUT, "/_matrix/federation/v1/send/{txn}")
        .iter()
        .filter_map(|request| request.json())
        .flat_map(|body| body["edus"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(
        !edus.iter().any(|edu| edu["edu_type"] == "m.presence"),
        "presence left the server: {edus:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_upgraded_with_members_on_both_servers_is_followed() {
    let (a, b) = tokio::join!(
        TestServer::start_federating("127.0.0.165"),
        TestServer::start_federating("127.0.0.166")
    );
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let old = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "10", "name": "old" }))
        .await;
    join_via(&bob, &old, &a).await;
    let upgraded = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", encode(&old)),
            json!({ "new_version": "12" }),
        )
        .await
        .ok();
    let new = upgraded["replacement_room"].as_str().unwrap().to_owned();
    // Bob's server sees the tombstone, and Bob follows it.
    wait_for_sync(&bob, "the tombstone", |sync| {
        sync["rooms"]["join"][&old]["timeline"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["type"] == "m.room.tombstone"
                    && event["content"]["replacement_room"] == new.as_str()
            })
        })
    })
    .await;
    join_via(&bob, &new, &a).await;
    bob.send_text(&new, "in the new room").await;
    wait_for_sync(&alice, "bob in the new room", |sync| has_message(sync, &new, "in the new room"))
        .await;
    let create = bob
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", encode(&new)))
        .await
        .ok();
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_room_is_joined_through_a_space_across_servers() {
    let (a, b) = tokio::join!(
        TestServer::start_federating("127.0.0.167"),
        TestServer::start_federating("127.0.0.168")
    );
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let space = alice
        .create_room(json!({ "preset": "public_chat", "creation_content": { "type": "m.space" } }))
        .await;
    let restricted = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] },
            }],
        }))
        .await;
    // Not in the space: refused.
    let refused = bob
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                encode(&restricted),
                a.config.server_name
            ),
            json!({}),
        )
        .await;
    assert_eq!(refused.status.as_u16(), 403, "{}", refused.body);
    // In the space: A vouches for the join.
    join_via(&bob, &space, &a).await;
    join_via(&bob, &restricted, &a).await;
    let member = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            encode(&restricted),
            encode(bob.user())
        ))
        .await;
    let started = Instant::now();
    let mut member = member;
    while member.body["membership"] != "join" {
        assert!(started.elapsed() < Duration::from_secs(20), "{}", member.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
        member = alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                encode(&restricted),
                encode(bob.user())
            ))
            .await;
    }
    assert_eq!(member.body["join_authorised_via_users_server"], alice.user());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_down_room_loses_the_local_members_and_keeps_the_others() {
    let (a, b) = tokio::join!(
        TestServer::start_federating("127.0.0.169"),
        TestServer::start_federating("127.0.0.170")
    );
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let carol = Api::new_user(&b.base_url, "carol").await;
    let room = bob.create_room(json!({ "preset": "public_chat", "name": "elsewhere" })).await;
    join_via(&alice, &room, &b).await;
    join_via(&carol, &room, &b).await;
    // A's administrator shuts the room down: Alice leaves it; B's members stay.
    let report = a
        .services()
        .shutdown_room(<&RoomId>::try_from(room.as_str()).unwrap(), None)
        .await
        .unwrap();
    let _ = report;
    wait_for_sync(&bob, "alice's leave", |sync| {
        sync["rooms"]["join"][&room]["timeline"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["state_key"] == alice.user() && event["content"]["membership"] == "leave"
            })
        })
    })
    .await;
    let members =
        bob.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", encode(&room))).await.ok();
    let joined = members["joined"].as_object().unwrap();
    assert!(joined.contains_key(bob.user()) && joined.contains_key(carol.user()));
    assert!(!joined.contains_key(alice.user()));
    let again = alice
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}", encode(&room), b.config.server_name),
            json!({}),
        )
        .await;
    assert_eq!(again.status.as_u16(), 403, "{}", again.body);
}
