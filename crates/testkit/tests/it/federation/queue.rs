//! The outbound queue: a destination that was down gets a catch-up (the latest event of each
//! room), not a flood; a destination that never answers does not delay the others; a
//! transaction is retried with the same ID and contents.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rhizome_testkit::{
    Api, TestServer,
    peer::{Reply, TestPeer},
};
use ruma::RoomId;
use serde_json::json;

/// The PDUs of the `/send` requests a peer received, per transaction, in order.
fn transactions(peer: &TestPeer) -> Vec<(String, Vec<serde_json::Value>)> {
    peer.received_matching(&Method::PUT, "/_matrix/federation/v1/send/{txn}")
        .into_iter()
        .map(|request| {
            let pdus = request.json().and_then(|body| body["pdus"].as_array().cloned());
            (request.param("txn").to_owned(), pdus.unwrap_or_default())
        })
        .collect()
}

/// Whether a PDU is a message with this body.
fn is_message(pdu: &serde_json::Value, body: &str) -> bool {
    pdu["type"] == "m.room.message" && pdu["content"]["body"] == body
}

async fn room_with_peer(server: &TestServer, peer: &TestPeer, alice: &Api) -> String {
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let room_id = <&RoomId>::try_from(room.as_str()).unwrap();
    peer.join_room(
        &server.config.server_name,
        server.tls_base_url.as_deref().unwrap(),
        room_id,
        "pat",
    )
    .await;
    room
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_was_down_gets_a_catch_up_not_a_flood() {
    let server = TestServer::start_federating("127.0.0.113").await;
    let peer = TestPeer::start_on("127.0.0.114".parse().unwrap()).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room = room_with_peer(&server, &peer, &alice).await;
    // The destination is down: every transaction fails.
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| {
        Reply::error(StatusCode::BAD_GATEWAY, "M_UNKNOWN", "down")
    });
    alice.send_text(&room, "first while down").await;
    peer.wait_for(&Method::PUT, "/_matrix/federation/v1/send/{txn}", Duration::from_secs(10)).await;
    for index in 0..80 {
        alice.send_text(&room, &format!("queued {index}")).await;
    }
    // It comes back.
    peer.clear_received();
    peer.clear_handlers();
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| json!({ "pdus": {} }));
    let started = Instant::now();
    loop {
        let sent = transactions(&peer);
        if sent.iter().flat_map(|(_, pdus)| pdus).any(|pdu| is_message(pdu, "queued 79")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no catch-up arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pdus: Vec<_> = transactions(&peer).into_iter().flat_map(|(_, pdus)| pdus).collect();
    assert!(pdus.len() < 10, "a catch-up, not a flood of {} PDUs", pdus.len());
    assert!(!pdus.iter().any(|pdu| is_message(pdu, "queued 3")), "old events are not replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_never_answers_does_not_delay_another() {
    let server = TestServer::start_federating_with(
        rhizome_testkit::Backend::Sqlite,
        "127.0.0.115",
        |config| {
            config.federation.request_timeout_secs = 60;
        },
    )
    .await;
    let stuck = TestPeer::start_on("127.0.0.116".parse().unwrap()).await;
    let healthy = TestPeer::start_on("127.0.0.117".parse().unwrap()).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room = room_with_peer(&server, &stuck, &alice).await;
    let room_id = <&RoomId>::try_from(room.as_str()).unwrap();
    healthy
        .join_room(
            &server.config.server_name,
            server.tls_base_url.as_deref().unwrap(),
            room_id,
            "hal",
        )
        .await;
    stuck.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| {
        Reply::json(StatusCode::OK, &json!({ "pdus": {} })).after(Duration::from_secs(3600))
    });
    healthy.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", |_| json!({ "pdus": {} }));
    stuck.clear_received();
    healthy.clear_received();
    let sent_at = Instant::now();
    alice.send_text(&room, "for everyone").await;
    let arrived = healthy
        .wait_for(&Method::PUT, "/_matrix/federation/v1/send/{txn}", Duration::from_secs(10))
        .await;
    let pdus = arrived.json().unwrap()["pdus"].as_array().cloned().unwrap_or_default();
    assert!(
        pdus.iter().any(|pdu| is_message(pdu, "for everyone")) || {
            // The join of the second peer may come first; the message follows at once.
            let started = Instant::now();
            loop {
                let all: Vec<_> =
                    transactions(&healthy).into_iter().flat_map(|(_, pdus)| pdus).collect();
                if all.iter().any(|pdu| is_message(pdu, "for everyone")) {
                    break true;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the healthy peer never got it"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    );
    assert!(sent_at.elapsed() < Duration::from_secs(10));
    // The stuck destination did get its request, and is still waiting on it.
    stuck
        .wait_for(&Method::PUT, "/_matrix/federation/v1/send/{txn}", Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_is_retried_with_the_same_id_and_contents() {
    let server = TestServer::start_federating("127.0.0.118").await;
    let peer = TestPeer::start_on("127.0.0.119".parse().unwrap()).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room = room_with_peer(&server, &peer, &alice).await;
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = failures.clone();
    peer.clear_received();
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn}", move |_| {
        if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "try again")
        } else {
            Reply::json(StatusCode::OK, &json!({ "pdus": {} }))
        }
    });
    alice.send_text(&room, "retried").await;
    let started = Instant::now();
    while transactions(&peer).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "not retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = transactions(&peer);
    let first = &sent[0];
    assert!(first.1.iter().any(|pdu| is_message(pdu, "retried")));
    for retry in &sent[1..3] {
        assert_eq!(retry.0, first.0, "the same transaction ID");
        assert_eq!(retry.1, first.1, "the same PDUs");
    }
}
