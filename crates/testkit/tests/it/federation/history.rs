//! History across two Rhizome servers: a user who joins late pages back past their join, and
//! their server backfills the room from the other, in order, without what the room's history
//! visibility hides from it, and without asking again once it has it all; a backfill of 100
//! events, timed.

use std::time::{Duration, Instant};

use rhizome_testkit::{Api, Backend, TestServer, encode};
use ruma::{EventId, RoomId};
use serde_json::json;

use super::{
    has_message,
    peer_rooms::{bodies, page_back},
    wait_for_sync,
};

/// Alice's room on A, with `shared` history then `joined` history, and Bob of B joined
/// after both; returns Bob, the room, the IDs of the `joined`-era messages.
async fn room_with_history(
    a: &TestServer,
    b: &TestServer,
    alias: &str,
    shared: usize,
    secret: usize,
) -> (Api, String, Vec<String>) {
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let room = alice
        .create_room(
            json!({ "preset": "public_chat", "name": "archive", "room_alias_name": alias }),
        )
        .await;
    for i in 0..shared {
        alice.send_text(&room, &format!("shared {i}")).await;
    }
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/", encode(&room)),
            json!({ "history_visibility": "joined" }),
        )
        .await
        .ok();
    let mut secrets = Vec::new();
    for i in 0..secret {
        secrets.push(alice.send_text(&room, &format!("secret {i}")).await);
    }
    bob.join(&format!("#{alias}:{}", a.config.server_name)).await;
    alice.send_text(&room, "after the join").await;
    wait_for_sync(&bob, "the message after the join", |sync| {
        has_message(sync, &room, "after the join")
    })
    .await;
    (bob, room, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_pages_back_through_the_history_it_may_see_in_order() {
    let a = TestServer::start_federating("127.0.0.40").await;
    let b = TestServer::start_federating("127.0.0.41").await;
    let (bob, room, secrets) = room_with_history(&a, &b, "archive", 5, 3).await;
    assert_eq!(b.services().backfill_rounds(), 0);

    // Three events a page, back to the room's creation.
    let (events, pages) = page_back(&bob, &room, 3).await;
    let expected: Vec<String> = ["after the join".to_owned()]
        .into_iter()
        .chain((0..5).rev().map(|i| format!("shared {i}")))
        .collect();
    assert_eq!(bodies(&events), expected, "in order, the `joined` history left out");
    assert!(pages > 3, "it took several pages");
    assert_eq!(events.last().unwrap()["type"], "m.room.create", "back to the start");
    let types: Vec<&str> = events.iter().filter_map(|event| event["type"].as_str()).collect();
    assert!(types.contains(&"m.room.history_visibility") && types.contains(&"m.room.name"));
    assert_eq!(b.services().backfill_rounds(), 1, "one round fetched it all");
    // Bob's server has the hidden messages only redacted: A did not give B their content.
    for secret in &secrets {
        let event_id = EventId::parse(secret).unwrap();
        let held = b.services().load_event(&event_id).await.unwrap().expect("the event is held");
        assert!(!held.record.outlier, "it is part of the room's history on B");
        assert_eq!(held.pdu.content.get(), "{}", "its content stayed on A");
        let seen = bob
            .get(&format!("/_matrix/client/v3/rooms/{}/event/{}", encode(&room), encode(secret)))
            .await;
        seen.expect_error(404, "M_NOT_FOUND");
    }

    // Again, in one page: the same history, and nobody is asked.
    let (again, pages) = page_back(&bob, &room, 100).await;
    assert_eq!(pages, 1);
    assert_eq!(bodies(&again), expected);
    assert_eq!(b.services().backfill_rounds(), 1, "backfill is not asked again");
}

/// How long one round of 100 events takes on loopback (printed), and that it takes 100; the
/// late joiner keeps its history in PostgreSQL here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_100_events_is_timed() {
    let a = TestServer::start_federating("127.0.0.42").await;
    let b = TestServer::start_federating_with(Backend::Postgres, "127.0.0.43", |_| {}).await;
    let (bob, room, _) = room_with_history(&a, &b, "long", 130, 0).await;
    let room_id = RoomId::parse(&room).unwrap();

    let started = Instant::now();
    assert!(b.services().backfill_if_needed(&room_id).await, "history came");
    let elapsed = started.elapsed();
    eprintln!("backfill of 100 events over loopback took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "bounded by the round's time limit");

    // The answer held the join and the 99 events before it (the oldest of them with its state
    // from /state_ids), kept as history below every synced position; the rest comes with the
    // next round, as Bob pages on.
    // (History sits below position 0: forwards from far below it to 0 is all of it.)
    let history = bob
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=f&from=t-1000000&to=t0&limit=500",
            encode(&room)
        ))
        .await
        .ok();
    assert_eq!(history["chunk"].as_array().unwrap().len(), 99);
    assert_eq!(b.services().backfill_rounds(), 1);
    let (events, _) = page_back(&bob, &room, 50).await;
    let expected: Vec<String> = ["after the join".to_owned()]
        .into_iter()
        .chain((0..130).rev().map(|i| format!("shared {i}")))
        .collect();
    assert_eq!(bodies(&events), expected);
    assert_eq!(b.services().backfill_rounds(), 2);
}
