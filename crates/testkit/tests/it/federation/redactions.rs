//! Redactions from other servers: one applies only where its sender may redact (the target's
//! own server, or the power to redact others' events), and one that comes before its target,
//! live or in backfilled history, redacts the target when it comes.

use reqwest::{Method, StatusCode};
use rhizome_room::Pdu;
use rhizome_testkit::{TestServer, encode, peer::Reply, peer::TestPeer};
use ruma::{OwnedEventId, events::StateEventType};
use serde_json::{Value, json};

use super::{
    adversarial::{Scene, is_error, scene},
    peer_rooms::{PeerRoom, bodies, host_rooms, json_of, page_back},
};

/// A redaction of `target` by the peer's user `pat`, after `prev`.
fn pat_redacts(scene: &Scene, prev: &OwnedEventId, target: &OwnedEventId) -> Pdu {
    let mut template = scene.template(
        std::slice::from_ref(prev),
        "pat",
        "m.room.redaction",
        None,
        json!({ "redacts": target }),
    );
    template.redacts = Some(target.clone());
    scene.peer.sign_pdu(&template, &scene.version)
}

/// The event as Alice's client reads it.
async fn alice_reads(scene: &Scene, event_id: &OwnedEventId) -> Value {
    scene
        .alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            encode(scene.room.as_str()),
            encode(event_id.as_str())
        ))
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_applies_only_where_its_sender_may_redact() {
    let scene = scene("127.0.0.181", "127.0.0.182").await;
    let alices =
        OwnedEventId::try_from(scene.alice.send_text(scene.room.as_str(), "alice's words").await)
            .unwrap();
    let name = scene.state[&(StateEventType::RoomName, String::new())].clone();
    let pats = scene.peer.sign_pdu(
        &scene.template(
            std::slice::from_ref(&scene.head),
            "pat",
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "pat's words" }),
        ),
        &scene.version,
    );
    let results = scene.send("t1", &[&pats]).await;
    assert!(!is_error(&results, &pats.event_id), "{results}");

    // Pat (power 0, another server) redacts Alice's message and the room's name, and its own.
    let of_alices = pat_redacts(&scene, &pats.event_id, &alices);
    let of_name = pat_redacts(&scene, &pats.event_id, &name);
    let of_own = pat_redacts(&scene, &pats.event_id, &pats.event_id);
    let results = scene.send("t2", &[&of_alices, &of_name, &of_own]).await;
    for redaction in [&of_alices, &of_name, &of_own] {
        // The auth rules leave redactions alone: each is a valid event of the room.
        assert!(!is_error(&results, &redaction.event_id), "{results}");
        assert_eq!(alice_reads(&scene, &redaction.event_id).await["type"], "m.room.redaction");
    }
    // Its own message it may redact; the others stay as they were.
    let own = alice_reads(&scene, &pats.event_id).await;
    assert_eq!(own["content"], json!({}), "{own}");
    assert_eq!(own["unsigned"]["redacted_because"]["event_id"], of_own.event_id.as_str());
    let kept = alice_reads(&scene, &alices).await;
    assert_eq!(kept["content"]["body"], "alice's words", "{kept}");
    assert!(kept["unsigned"]["redacted_because"].is_null(), "{kept}");
    let name_event = alice_reads(&scene, &name).await;
    assert_eq!(name_event["content"]["name"], "original", "{name_event}");
    let services = scene.server.services();
    for target in [&alices, &name] {
        let held = services.load_event(target).await.unwrap().expect("held");
        assert!(held.record.redacted_by.is_none(), "{target} was redacted in the store");
    }
    // The room's name (read through its current state) is the original one.
    let current = scene
        .alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.name/",
            encode(scene.room.as_str())
        ))
        .await
        .ok();
    assert_eq!(current["name"], "original");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_that_comes_before_its_event_redacts_it_when_it_comes() {
    let scene = scene("127.0.0.183", "127.0.0.184").await;
    let late = scene.peer.sign_pdu(
        &scene.template(
            std::slice::from_ref(&scene.head),
            "pat",
            "m.room.message",
            None,
            json!({ "msgtype": "m.text", "body": "sent late" }),
        ),
        &scene.version,
    );
    // The redaction follows the room's head, not the message: it comes on its own.
    let redaction = pat_redacts(&scene, &scene.head, &late.event_id);
    let results = scene.send("t1", &[&redaction]).await;
    assert!(!is_error(&results, &redaction.event_id), "{results}");
    let missing = scene
        .alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/event/{}",
            encode(scene.room.as_str()),
            encode(late.event_id.as_str())
        ))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "the message is not here yet");

    let results = scene.send("t2", &[&late]).await;
    assert!(!is_error(&results, &late.event_id), "{results}");
    let seen = alice_reads(&scene, &late.event_id).await;
    assert_eq!(seen["content"], json!({}), "stored redacted: {seen}");
    assert_eq!(seen["unsigned"]["redacted_because"]["event_id"], redaction.event_id.as_str());
    let held = scene.server.services().load_event(&late.event_id).await.unwrap().expect("held");
    assert_eq!(held.record.redacted_by.as_ref(), Some(&redaction.event_id));
    assert_eq!(held.pdu.content.get(), "{}");
}

/// `room` with a redaction by its creator of its message at `index`, as its newest event.
fn with_redaction(peer: &TestPeer, room: &PeerRoom, index: usize) -> (PeerRoom, OwnedEventId) {
    let mut room = room.clone();
    let target = room.events[index].event_id.clone();
    let last = room.events.last().unwrap();
    let mut template = peer.event_template(
        Some(room.room_id.clone()),
        "creator",
        "m.room.redaction",
        None,
        json!({ "redacts": target }),
    );
    template.redacts = Some(target.clone());
    template.prev_events = vec![last.event_id.clone()];
    template.auth_events = room.events[..3].iter().map(|pdu| pdu.event_id.clone()).collect();
    template.depth = last.depth + 1;
    let redaction = peer.sign_pdu(&template, &ruma::RoomVersionId::V10);
    let id = redaction.event_id.clone();
    room.events.push(redaction);
    (room, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_redaction_redacts_the_older_event_that_comes_after_it() {
    let b = TestServer::start_federating("127.0.0.185").await;
    let peer = TestPeer::start_on("127.0.0.186".parse().unwrap()).await;
    let plain = PeerRoom::new(&peer, "redacted", &["one", "two", "three"]);
    // Events 5, 6, 7 are the messages: the creator redacts "two", the newest event.
    let (room, redaction) = with_redaction(&peer, &plain, 6);
    let target = room.events[6].event_id.clone();
    host_rooms(&peer, &[&room]);
    let (answering_peer, events) = (peer.server_name().to_owned(), room.events_json());
    // Newest first, as a server answers `/backfill`: the redaction comes before its target.
    let newest_first: Vec<Value> = events.iter().rev().cloned().collect();
    peer.handle(Method::GET, "/_matrix/federation/v1/backfill/{room}", move |_| {
        Reply::json(
            StatusCode::OK,
            &json!({ "origin": answering_peer, "origin_server_ts": 1, "pdus": newest_first }),
        )
    });

    let bob = rhizome_testkit::Api::new_user(&b.base_url, "bob").await;
    let path = format!(
        "/_matrix/client/v3/join/{}?via={}",
        encode(room.room_id.as_str()),
        encode(peer.server_name().as_str())
    );
    bob.post(&path, json!({})).await.ok();
    let (history, _) = page_back(&bob, room.room_id.as_str(), 2).await;
    assert_eq!(bodies(&history), ["three", "one"], "{history:?}");
    let redacted = history
        .iter()
        .find(|event| event["event_id"] == target.as_str())
        .unwrap_or_else(|| panic!("the redacted message is in the history: {history:?}"));
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    assert_eq!(redacted["unsigned"]["redacted_because"]["event_id"], redaction.as_str());
    assert!(history.iter().any(|event| event["event_id"] == redaction.as_str()));
    let held = b.services().load_event(&target).await.unwrap().expect("held");
    assert_eq!(held.record.redacted_by.as_ref(), Some(&redaction));
    // The peer gave the message whole: its JSON here is the redacted one all the same.
    assert_ne!(json_of(&room.events[6])["content"], json!({}));
    assert_eq!(held.pdu.content.get(), "{}");
}
