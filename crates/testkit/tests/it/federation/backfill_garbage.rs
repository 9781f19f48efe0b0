//! Backfill from a server that misbehaves: a Rhizome server joins rooms the test peer hosts,
//! and the peer answers `/backfill` well (the history arrives, in order), with bytes that are
//! not JSON, with events that are malformed, of another room, badly signed or refused by the
//! auth rules, or not at all in time. The user always gets what is held, promptly, and the
//! server does not ask again at once.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rhizome_testkit::{
    Api, TestServer, encode,
    peer::{PduFlaw, Reply, TestPeer},
};
use ruma::OwnedEventId;
use serde_json::{Value, json};

use super::peer_rooms::{PeerRoom, bodies, host_rooms, json_of, page_back};

const BACKFILL: &str = "/_matrix/federation/v1/backfill/{room}";

/// How many times the server asked the peer for the history of `room`.
fn asked(peer: &TestPeer, room: &PeerRoom) -> usize {
    peer.received_matching(&Method::GET, BACKFILL)
        .iter()
        .filter(|request| request.param("room") == room.room_id.as_str())
        .count()
}

/// Bob pages back through `room` in one page: the events, how long it took.
async fn messages(bob: &Api, room: &PeerRoom) -> (Vec<Value>, Duration) {
    let started = Instant::now();
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        encode(room.room_id.as_str())
    );
    let answer = bob.get(&path).await.ok();
    assert!(answer["end"].is_null(), "nothing more: {answer}");
    (answer["chunk"].as_array().unwrap().clone(), started.elapsed())
}

/// Only Bob's join is held of the room.
fn only_the_join(events: &[Value], bob: &Api) {
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "m.room.member");
    assert_eq!(events[0]["state_key"], bob.user());
}

/// The junk answer for `junk`: not events, an event of another room, a forged signature, and
/// a message of someone not in the room (well signed, refused by the auth rules); with the
/// IDs of the last two.
fn junk_answer(
    peer: &TestPeer,
    junk: &PeerRoom,
    good: &PeerRoom,
) -> (Vec<Value>, OwnedEventId, OwnedEventId) {
    let version = ruma::RoomVersionId::V10;
    let last = junk.events.last().unwrap();
    let mut template = peer.event_template(
        Some(junk.room_id.clone()),
        "creator",
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "forged" }),
    );
    template.prev_events = vec![last.event_id.clone()];
    template.auth_events = junk.events[..3].iter().map(|pdu| pdu.event_id.clone()).collect();
    template.depth = last.depth + 1;
    let forged = peer.sign_flawed_pdu(&template, &version, PduFlaw::SignatureWrong);
    let mut stranger = template.clone();
    stranger.sender = peer.user_id("stranger");
    stranger.content = serde_json::value::to_raw_value(&json!({ "body": "intruder" })).unwrap();
    let stranger = peer.sign_pdu(&stranger, &version);
    let pdus = vec![
        json!(42),
        json!("an event"),
        json!({ "type": "m.room.message" }),
        json_of(&good.events[6]),
        json_of(&forged),
        json_of(&stranger),
    ];
    (pdus, forged.event_id, stranger.event_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_answering_garbage_during_backfill_leaves_the_user_what_is_held() {
    let b = TestServer::start_federating("127.0.0.46").await;
    let peer = TestPeer::start_on("127.0.0.47".parse().unwrap()).await;
    let good = PeerRoom::new(&peer, "good", &["one", "two", "three"]);
    let not_json = PeerRoom::new(&peer, "notjson", &["hidden"]);
    let junk = PeerRoom::new(&peer, "junk", &["hidden"]);
    let slow = PeerRoom::new(&peer, "slow", &["hidden"]);
    host_rooms(&peer, &[&good, &not_json, &junk, &slow]);

    let (junk_pdus, forged, stranger) = junk_answer(&peer, &junk, &good);
    let junk_state: Vec<String> = junk.state.iter().map(|pdu| pdu.event_id.to_string()).collect();

    let rooms = [good.clone(), not_json.clone(), junk.clone(), slow.clone()];
    let (answering_peer, good_events) = (peer.server_name().to_owned(), good.events_json());
    peer.handle(Method::GET, BACKFILL, move |request| {
        let name = &answering_peer;
        let answer = |pdus: Vec<Value>| {
            Reply::json(
                StatusCode::OK,
                &json!({ "origin": name, "origin_server_ts": 1, "pdus": pdus }),
            )
        };
        match request.param("room") {
            room if room == rooms[0].room_id.as_str() => answer(good_events.clone()),
            room if room == rooms[1].room_id.as_str() => {
                Reply::raw(StatusCode::OK, "application/json", "this is not JSON")
            }
            room if room == rooms[2].room_id.as_str() => answer(junk_pdus.clone()),
            room if room == rooms[3].room_id.as_str() => {
                answer(rooms[3].events_json()).after(Duration::from_secs(30))
            }
            _ => Reply::error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "Unknown room"),
        }
    });
    peer.handle(
        Method::GET,
        "/_matrix/federation/v1/state_ids/{room}",
        move |_| json!({ "pdu_ids": junk_state, "auth_chain_ids": [] }),
    );

    let bob = Api::new_user(&b.base_url, "bob").await;
    for room in [&good, &not_json, &junk, &slow] {
        let path = format!(
            "/_matrix/client/v3/join/{}?via={}",
            encode(room.room_id.as_str()),
            encode(peer.server_name().as_str())
        );
        bob.post(&path, json!({})).await.ok();
    }

    // A good answer: the history arrives, in order (so the garbage below is what fails).
    let (events, _) = page_back(&bob, good.room_id.as_str(), 2).await;
    assert_eq!(bodies(&events), ["three", "two", "one"]);
    assert_eq!(events.last().unwrap()["type"], "m.room.create");
    assert_eq!(asked(&peer, &good), 1);

    // Not JSON: what is held, at once; not asked again right away.
    let (events, took) = messages(&bob, &not_json).await;
    only_the_join(&events, &bob);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (events, _) = messages(&bob, &not_json).await;
    only_the_join(&events, &bob);
    assert_eq!(asked(&peer, &not_json), 1);

    // Junk: nothing of it is kept in the history; the refused message is known as rejected.
    let (events, _) = messages(&bob, &junk).await;
    only_the_join(&events, &bob);
    let services = b.services();
    assert!(services.load_event(&forged).await.unwrap().is_none(), "forged: dropped");
    let refused = services.load_event(&stranger).await.unwrap().expect("kept as refused");
    assert!(refused.record.rejected && refused.record.outlier);
    let (events, _) = messages(&bob, &junk).await;
    only_the_join(&events, &bob);
    assert_eq!(asked(&peer, &junk), 1, "nothing more is asked from where nothing came");

    // No answer in time: what is held, within the round's time limit; not asked again.
    let (events, took) = messages(&bob, &slow).await;
    only_the_join(&events, &bob);
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(14), "{took:?}");
    let (events, took) = messages(&bob, &slow).await;
    only_the_join(&events, &bob);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(asked(&peer, &slow), 1);
}
