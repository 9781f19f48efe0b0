//! Conformance checks for singleton work: leases with one holder at a time, and the durable
//! push queue filled by the transaction that persists an event.

use std::sync::Arc;

use ruma::{device_id, user_id};
use serde_json::json;

use super::rooms::RoomBuilder;
use crate::{DataStore, PushAction, PusherRecord};

/// A lease has one holder until it lapses or is released; its holder renews it.
pub async fn job_leases_have_one_holder(store: Arc<dyn DataStore>) {
    assert!(store.acquire_job_lease("push", "a", 1_000, 6_000).await.unwrap());
    assert!(!store.acquire_job_lease("push", "b", 2_000, 7_000).await.unwrap(), "held by a");
    assert!(store.acquire_job_lease("push", "a", 3_000, 8_000).await.unwrap(), "renewed");
    assert!(!store.acquire_job_lease("push", "b", 7_000, 12_000).await.unwrap(), "renewed");
    assert!(store.acquire_job_lease("other", "b", 7_000, 12_000).await.unwrap(), "per job");
    assert!(store.acquire_job_lease("push", "b", 8_001, 13_000).await.unwrap(), "lapsed");
    assert!(!store.acquire_job_lease("push", "a", 9_000, 14_000).await.unwrap(), "taken over");
    store.release_job_lease("push", "a").await.unwrap();
    assert!(!store.acquire_job_lease("push", "a", 9_000, 14_000).await.unwrap(), "not a's");
    store.release_job_lease("push", "b").await.unwrap();
    assert!(store.acquire_job_lease("push", "a", 9_000, 14_000).await.unwrap(), "released");
}

/// Notifying actions of users with a pusher are queued with the event, when asked; a job stays
/// until deleted.
pub async fn pushes_are_queued_with_their_event(store: Arc<dyn DataStore>) {
    let alice = "@alice:example.org";
    let bob = user_id!("@bob:example.org");
    let carol = user_id!("@carol:example.org");
    store.upsert_device(bob, device_id!("PHONE"), None, 1).await.unwrap();
    let pusher = PusherRecord {
        user_id: bob.to_owned(),
        pushkey: "k".into(),
        app_id: "app".into(),
        json: "{}".into(),
        device_id: Some(device_id!("PHONE").to_owned()),
        created_ts: 1,
    };
    store.set_pusher(&pusher, false).await.unwrap();
    let mut room = RoomBuilder::new(store.clone(), "pushq").await;
    room.send(alice, "m.room.create", Some(""), json!({})).await;
    let action = |user: &ruma::UserId, notify| PushAction {
        user_id: user.to_owned(),
        notify,
        highlight: false,
        thread_id: None,
        actions: "[\"notify\"]".into(),
    };
    let mut quiet = room.template(alice, "m.room.message", None, json!({"body": "a"}));
    quiet.push_actions = vec![action(bob, true)];
    room.persist(quiet).await;
    assert!(store.queued_pushes(10).await.unwrap().is_empty(), "not asked to queue");

    let mut loud = room.template(alice, "m.room.message", None, json!({"body": "b"}));
    loud.push_actions = vec![action(bob, true), action(carol, true)];
    loud.queue_pushes = true;
    let loud_id = loud.event_id.clone();
    room.persist(loud).await;
    let mut silent = room.template(alice, "m.room.message", None, json!({"body": "c"}));
    silent.push_actions = vec![action(bob, false)];
    silent.queue_pushes = true;
    room.persist(silent).await;

    let jobs = store.queued_pushes(10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].event_id, loud_id);
    assert_eq!(jobs[0].room_id, room.room_id);
    assert_eq!(jobs[0].users, vec![(bob.to_owned(), "[\"notify\"]".to_owned())], "no pusher");
    store.delete_queued_push(jobs[0].id).await.unwrap();
    assert!(store.queued_pushes(10).await.unwrap().is_empty());
}
