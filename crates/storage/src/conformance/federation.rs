//! Conformance checks for federation: server keys, the outbound queue (transactions retried
//! whole, catch-up, backoff, leases) and inbound transaction de-duplication.

use std::sync::Arc;

use ruma::{OwnedServerName, server_name};
use serde_json::json;

use super::rooms::RoomBuilder;
use crate::{DataStore, PendingTxnRecord, QueuedPdu, ServerKeyRecord, ServerKeyResponse};

fn key(id: &str, valid_until_ts: i64, expired_ts: Option<i64>) -> ServerKeyRecord {
    ServerKeyRecord {
        key_id: id.to_owned(),
        public_key: format!("pub-{id}"),
        valid_until_ts,
        expired_ts,
    }
}

fn response(server: &str, valid_until_ts: i64) -> ServerKeyResponse {
    ServerKeyResponse {
        server_name: OwnedServerName::try_from(server).unwrap(),
        json: json!({ "server_name": server, "valid_until_ts": valid_until_ts }).to_string(),
        valid_until_ts,
        fetched_ts: 5,
    }
}

/// Keys are stored per server; validity only grows, an old key stays old, and the newest
/// key document is kept.
pub async fn server_keys_are_kept_with_their_validity(store: Arc<dyn DataStore>) {
    let remote = server_name!("remote.example");
    assert!(store.server_keys(remote).await.unwrap().is_empty());
    assert!(store.server_key_response(remote).await.unwrap().is_none());
    store
        .store_server_keys(
            &response("remote.example", 100),
            &[key("ed25519:a", 100, None), key("ed25519:old", 50, Some(40))],
        )
        .await
        .unwrap();
    store
        .store_server_keys(&response("other.example", 7), &[key("ed25519:a", 7, None)])
        .await
        .unwrap();
    // A later document with an earlier validity neither shortens a key nor replaces the
    // stored document; it cannot make an old key current again.
    store
        .store_server_keys(
            &response("remote.example", 80),
            &[key("ed25519:a", 80, None), key("ed25519:old", 90, None)],
        )
        .await
        .unwrap();
    let keys = store.server_keys(remote).await.unwrap();
    assert_eq!(keys, vec![key("ed25519:a", 100, None), key("ed25519:old", 90, Some(40))]);
    assert_eq!(store.server_key_response(remote).await.unwrap().unwrap().valid_until_ts, 100);
    store
        .store_server_keys(&response("remote.example", 200), &[key("ed25519:b", 200, None)])
        .await
        .unwrap();
    assert_eq!(store.server_key_response(remote).await.unwrap().unwrap().valid_until_ts, 200);
    assert_eq!(store.server_keys(remote).await.unwrap().len(), 3);
    assert_eq!(store.server_keys(server_name!("other.example")).await.unwrap().len(), 1);

    assert!(store.local_old_keys().await.unwrap().is_empty());
    store.add_local_old_key("ed25519:a_1", "pub1", 10).await.unwrap();
    store.add_local_old_key("ed25519:a_1", "pub1", 20).await.unwrap();
    assert_eq!(
        store.local_old_keys().await.unwrap(),
        vec![("ed25519:a_1".to_owned(), "pub1".to_owned(), 10)]
    );
}

/// Events persisted with destinations are queued in their transaction; a transaction is
/// retried whole (nothing queued later joins it) and removed once accepted.
pub async fn the_outbound_queue_sends_transactions_whole(store: Arc<dyn DataStore>) {
    let one = OwnedServerName::try_from("one.example").unwrap();
    let two = OwnedServerName::try_from("two.example").unwrap();
    let mut room = RoomBuilder::new(store.clone(), "fed").await;
    let mut positions = Vec::new();
    for index in 0..3 {
        let mut event =
            room.template("@a:example.org", "m.room.message", None, json!({ "n": index }));
        event.federation_destinations = vec![one.clone(), two.clone()];
        positions.push(room.persist(event).await.stream_pos);
    }
    assert_eq!(store.destinations_with_queue().await.unwrap(), vec![one.clone(), two.clone()]);
    store.queue_edu(std::slice::from_ref(&one), "m.direct_to_device", "{\"a\":1}").await.unwrap();

    let (pdus, edus) = store.next_transaction(&one, None, 2, 100).await.unwrap();
    assert_eq!(pdus.iter().map(|pdu| pdu.stream_pos).collect::<Vec<_>>(), positions[..2]);
    assert_eq!(pdus[0].room_id, room.room_id);
    assert_eq!(edus.len(), 1);
    assert_eq!(
        (edus[0].edu_type.as_str(), edus[0].content.as_str()),
        ("m.direct_to_device", "{\"a\":1}")
    );
    let pending = PendingTxnRecord {
        txn_id: "t1".to_owned(),
        max_pdu_pos: positions[1],
        max_edu_id: edus[0].id,
    };
    store.set_pending_txn(&one, Some(&pending)).await.unwrap();
    store.queue_edu(std::slice::from_ref(&one), "m.direct_to_device", "{\"a\":2}").await.unwrap();
    let destination = store.get_destination(&one).await.unwrap().unwrap();
    assert_eq!(destination.pending_txn.as_ref(), Some(&pending));
    assert_eq!((destination.queued_pdus, destination.queued_edus), (3, 2));

    // A retry carries exactly the pending transaction's contents.
    let (again, again_edus) = store.next_transaction(&one, Some(&pending), 50, 100).await.unwrap();
    assert_eq!(again, pdus);
    assert_eq!(again_edus, edus);

    store.record_destination_failure(&one, 1_000, 500, 900).await.unwrap();
    store.record_destination_failure(&one, 3_000, 2_000, 1_000).await.unwrap();
    let failing = store.get_destination(&one).await.unwrap().unwrap();
    assert_eq!((failing.failures, failing.retry_at, failing.retry_interval_ms), (2, 3_000, 2_000));
    assert_eq!(failing.last_failure_ts, Some(1_000));

    store.complete_transaction(&one, &pending, 5_000).await.unwrap();
    let done = store.get_destination(&one).await.unwrap().unwrap();
    assert_eq!((done.failures, done.retry_at, done.pending_txn), (0, 0, None));
    assert_eq!((done.queued_pdus, done.queued_edus, done.last_success_ts), (1, 1, Some(5_000)));
    let (rest, rest_edus) = store.next_transaction(&one, None, 50, 100).await.unwrap();
    assert_eq!(rest.iter().map(|pdu| pdu.stream_pos).collect::<Vec<_>>(), positions[2..]);
    assert_eq!(rest_edus[0].content, "{\"a\":2}");
    // The other destination's queue is its own.
    assert_eq!(store.next_transaction(&two, None, 50, 100).await.unwrap().0.len(), 3);

    store.record_destination_failure(&two, 9_000, 4_000, 8_000).await.unwrap();
    store.reset_destination_backoff(&two).await.unwrap();
    let reset = store.get_destination(&two).await.unwrap().unwrap();
    assert_eq!((reset.retry_at, reset.failures), (0, 1));
    let all = store.list_destinations().await.unwrap();
    assert_eq!(all.iter().map(|d| d.destination.clone()).collect::<Vec<_>>(), vec![one, two]);
}

/// Catch-up after an outage keeps only the latest queued event of each room.
pub async fn catch_up_keeps_the_latest_event_per_room(store: Arc<dyn DataStore>) {
    let destination = server_name!("down.example");
    let pdu = |pos: i64, room: &str| QueuedPdu {
        stream_pos: pos,
        room_id: ruma::OwnedRoomId::try_from(format!("!{room}:example.org")).unwrap(),
        event_id: ruma::OwnedEventId::try_from(format!("$e{pos}")).unwrap(),
    };
    let queued = [pdu(1, "a"), pdu(2, "b"), pdu(3, "a"), pdu(4, "a"), pdu(5, "b"), pdu(6, "c")];
    store.queue_pdus(destination, &queued).await.unwrap();
    store.queue_pdus(server_name!("up.example"), &queued).await.unwrap();
    let pending = PendingTxnRecord { txn_id: "t".into(), max_pdu_pos: 2, max_edu_id: 0 };
    store.set_pending_txn(destination, Some(&pending)).await.unwrap();
    assert_eq!(store.collapse_pdu_queue(destination).await.unwrap(), 3);
    let (left, _) = store.next_transaction(destination, None, 50, 100).await.unwrap();
    assert_eq!(left, vec![pdu(4, "a"), pdu(5, "b"), pdu(6, "c")]);
    assert_eq!(store.get_destination(destination).await.unwrap().unwrap().pending_txn, None);
    assert_eq!(
        store.next_transaction(server_name!("up.example"), None, 50, 100).await.unwrap().0.len(),
        6
    );
}

/// One owner at a time holds a destination's lease, until it expires or is given up.
pub async fn destination_leases_have_one_owner(store: Arc<dyn DataStore>) {
    let destination = server_name!("leased.example");
    assert!(store.acquire_destination_lease(destination, "p1", 100, 0).await.unwrap());
    assert!(!store.acquire_destination_lease(destination, "p2", 150, 50).await.unwrap());
    assert!(store.acquire_destination_lease(destination, "p1", 200, 60).await.unwrap());
    assert!(!store.acquire_destination_lease(destination, "p2", 250, 150).await.unwrap());
    assert!(store.acquire_destination_lease(destination, "p2", 300, 201).await.unwrap());
    store.release_destination_lease(destination, "p1").await.unwrap();
    assert!(!store.acquire_destination_lease(destination, "p1", 300, 210).await.unwrap());
    store.release_destination_lease(destination, "p2").await.unwrap();
    assert!(store.acquire_destination_lease(destination, "p1", 300, 210).await.unwrap());
    // After a crash of the only process, its leases are given up at once.
    store.release_all_destination_leases().await.unwrap();
    assert!(store.acquire_destination_lease(destination, "p3", 400, 220).await.unwrap());
}

/// Inbound transactions are remembered per origin with their answer, and pruned by age.
pub async fn inbound_transactions_are_remembered(store: Arc<dyn DataStore>) {
    let origin = server_name!("origin.example");
    assert_eq!(store.inbound_txn_response(origin, "t1").await.unwrap(), None);
    store.store_inbound_txn(origin, "t1", "{\"pdus\":{}}", 10).await.unwrap();
    store.store_inbound_txn(origin, "t1", "{\"other\":1}", 11).await.unwrap();
    store.store_inbound_txn(server_name!("b.example"), "t1", "{}", 100).await.unwrap();
    assert_eq!(
        store.inbound_txn_response(origin, "t1").await.unwrap().as_deref(),
        Some("{\"pdus\":{}}")
    );
    assert_eq!(store.prune_inbound_txns(50).await.unwrap(), 1);
    assert_eq!(store.inbound_txn_response(origin, "t1").await.unwrap(), None);
    assert!(store.inbound_txn_response(server_name!("b.example"), "t1").await.unwrap().is_some());
}

fn outlier(name: &str, room: &ruma::RoomId, auth: &[&str]) -> crate::OutlierEvent {
    crate::OutlierEvent {
        event_id: super::rooms::event_id(name),
        room_id: room.to_owned(),
        json: json!({ "type": "m.room.member", "room_id": room, "n": name }).to_string(),
        rejected: false,
        auth_events: auth.iter().map(|id| super::rooms::event_id(id)).collect(),
    }
}

/// Outliers are found like timeline events (marked as outliers, with their auth edges) and
/// stop being outliers when they join the timeline.
pub async fn outliers_are_found_and_can_join_the_timeline(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "outliers").await;
    let room_id = room.room_id.clone();
    store
        .store_outliers(&[outlier("o1", &room_id, &[]), outlier("o2", &room_id, &["o1"])])
        .await
        .unwrap();
    let found = store.get_event(&super::rooms::event_id("o2")).await.unwrap().unwrap();
    assert!(found.outlier && !found.soft_failed && !found.rejected);
    assert_eq!(found.room_id, room_id);
    let chain = store.auth_chain(&[super::rooms::event_id("o2")]).await.unwrap();
    assert!(chain.contains(&super::rooms::event_id("o1")));
    let both = store
        .get_events(&[super::rooms::event_id("o1"), super::rooms::event_id("o2")])
        .await
        .unwrap();
    assert_eq!(both.len(), 2);
    assert!(room.store.forward_extremities(&room_id).await.unwrap().is_empty());

    // A timeline event that was an outlier: found once, in the timeline.
    let mut event = room.template("@a:example.org", "m.room.message", None, json!({}));
    event.event_id = super::rooms::event_id("o1");
    let persisted = room.persist(event).await;
    let found = store.get_event(&super::rooms::event_id("o1")).await.unwrap().unwrap();
    assert!(!found.outlier);
    assert_eq!(found.stream_pos, persisted.stream_pos);
    let both = store
        .get_events(&[super::rooms::event_id("o1"), super::rooms::event_id("o2")])
        .await
        .unwrap();
    assert_eq!(both.len(), 2);
    // Storing it as an outlier again changes nothing.
    store.store_outliers(&[outlier("o1", &room_id, &[])]).await.unwrap();
    assert!(!store.get_event(&super::rooms::event_id("o1")).await.unwrap().unwrap().outlier);
}

/// Soft-failed events are stored but never in the timeline; history fetched from other
/// servers sits before everything, outside the synced stream.
pub async fn soft_failed_and_historical_events(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "remote").await;
    let first = room.template("@a:example.org", "m.room.message", None, json!({ "n": 1 }));
    let first_id = first.event_id.clone();
    let first_pos = room.persist(first).await.stream_pos;
    let before = store.current_stream_pos();
    let extremities = store.forward_extremities(&room.room_id).await.unwrap();

    let mut soft = room.template("@a:example.org", "m.room.message", None, json!({ "n": 2 }));
    soft.soft_failed = true;
    soft.new_extremities = extremities.clone();
    soft.current_state = crate::CurrentState::Unchanged;
    let soft_id = soft.event_id.clone();
    store.persist_event(&soft).await.unwrap();
    let found = store.get_event(&soft_id).await.unwrap().unwrap();
    assert!(found.soft_failed && !found.rejected);
    assert_eq!(store.forward_extremities(&room.room_id).await.unwrap(), extremities);

    let mut old = room.template("@a:example.org", "m.room.message", None, json!({ "n": 0 }));
    old.historical = true;
    let older = store.persist_event(&old).await.unwrap().stream_pos;
    let mut oldest = room.template("@a:example.org", "m.room.message", None, json!({ "n": -1 }));
    oldest.historical = true;
    let oldest_pos = store.persist_event(&oldest).await.unwrap().stream_pos;
    assert!(oldest_pos < older && older < 0, "history counts down below zero");
    assert_eq!(store.current_stream_pos(), before + 1, "history is not in the synced stream");
    assert_eq!(store.forward_extremities(&room.room_id).await.unwrap(), extremities);

    let timeline = store
        .room_events(&room.room_id, i64::MAX, None, crate::Direction::Backward, 10)
        .await
        .unwrap();
    let ids: Vec<_> = timeline.iter().map(|event| event.event_id.clone()).collect();
    assert_eq!(ids, vec![first_id, old.event_id, oldest.event_id], "no soft-failed events");
    assert_eq!(timeline[0].stream_pos, first_pos);
    let changed = store
        .rooms_with_events_between(std::slice::from_ref(&room.room_id), first_pos, i64::MAX)
        .await
        .unwrap();
    assert!(changed.is_empty(), "a soft-failed event is no change for clients");
}

/// A membership in a room this server is not in: the room is known, the member's row and
/// the invite's stripped state are kept, and the change is in the synced stream.
pub async fn memberships_in_rooms_not_joined(store: Arc<dyn DataStore>) {
    let room_id = ruma::owned_room_id!("!elsewhere:remote.example");
    store.ensure_room(&room_id, &ruma::RoomVersionId::V10, 1).await.unwrap();
    store.ensure_room(&room_id, &ruma::RoomVersionId::V11, 2).await.unwrap();
    let room = store.get_room(&room_id).await.unwrap().unwrap();
    assert_eq!((room.room_version, room.current_state_group), (ruma::RoomVersionId::V10, None));
    let invite = outlier("invite", &room_id, &[]);
    let user = ruma::owned_user_id!("@me:example.org");
    let change = crate::MembershipChange {
        user_id: user.clone(),
        membership: "invite".into(),
        event_id: invite.event_id.clone(),
        displayname: None,
        avatar_url: None,
    };
    let before = store.current_stream_pos();
    let pos = store
        .store_outlier_membership(&invite, &change, Some("[{\"type\":\"m.room.name\"}]"))
        .await
        .unwrap();
    assert_eq!((pos, store.current_stream_pos()), (before + 1, before + 1));
    let membership = store.get_membership(&room_id, &user).await.unwrap().unwrap();
    assert_eq!((membership.membership.as_str(), membership.stream_pos), ("invite", pos));
    assert!(store.get_event(&invite.event_id).await.unwrap().unwrap().outlier);
    assert_eq!(
        store.invite_state(&invite.event_id).await.unwrap().as_deref(),
        Some("[{\"type\":\"m.room.name\"}]")
    );
    let leave = outlier("leave", &room_id, &[]);
    let change = crate::MembershipChange {
        membership: "leave".into(),
        event_id: leave.event_id.clone(),
        ..change
    };
    store.store_outlier_membership(&leave, &change, None).await.unwrap();
    let rooms = store.rooms_of_user(&user, &["invite"]).await.unwrap();
    assert!(rooms.is_empty());
    assert_eq!(store.invite_state(&leave.event_id).await.unwrap(), None);
}
