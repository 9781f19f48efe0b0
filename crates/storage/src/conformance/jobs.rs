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
    assert!(!room.persist(quiet).await.pushes_queued);
    assert!(store.queued_pushes(10).await.unwrap().is_empty(), "not asked to queue");

    let mut loud = room.template(alice, "m.room.message", None, json!({"body": "b"}));
    loud.push_actions = vec![action(bob, true), action(carol, true)];
    loud.queue_pushes = true;
    let loud_id = loud.event_id.clone();
    assert!(room.persist(loud).await.pushes_queued, "bob has a pusher");
    let mut silent = room.template(alice, "m.room.message", None, json!({"body": "c"}));
    silent.push_actions = vec![action(bob, false)];
    silent.queue_pushes = true;
    assert!(!room.persist(silent).await.pushes_queued, "nobody to notify");

    let jobs = store.queued_pushes(10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].event_id, loud_id);
    assert_eq!(jobs[0].room_id, room.room_id);
    assert_eq!(jobs[0].users, vec![(bob.to_owned(), "[\"notify\"]".to_owned())], "no pusher");
    store.delete_queued_push(jobs[0].id).await.unwrap();
    assert!(store.queued_pushes(10).await.unwrap().is_empty());
}

/// In a big room, exactly the notified users who have a pusher are queued, in the actions'
/// order, however the lookup is split into statements.
pub async fn pushes_of_a_big_room_are_queued_for_the_users_with_pushers(store: Arc<dyn DataStore>) {
    let members: Vec<ruma::OwnedUserId> = (0..200)
        .map(|n| ruma::OwnedUserId::try_from(format!("@member{n}:example.org")).unwrap())
        .collect();
    let with_pusher = [0, 63, 64, 127, 128, 150, 199];
    for n in with_pusher {
        let pusher = PusherRecord {
            user_id: members[n].clone(),
            pushkey: format!("key{n}"),
            app_id: "app".into(),
            json: "{}".into(),
            device_id: None,
            created_ts: 1,
        };
        store.set_pusher(&pusher, false).await.unwrap();
    }
    let mut room = RoomBuilder::new(store.clone(), "bigpushq").await;
    room.send("@alice:example.org", "m.room.create", Some(""), json!({})).await;
    let mut event =
        room.template("@alice:example.org", "m.room.message", None, json!({"body": "a"}));
    event.push_actions = members
        .iter()
        .enumerate()
        .map(|(n, user)| PushAction {
            user_id: user.clone(),
            notify: n != 150,
            highlight: false,
            thread_id: None,
            actions: format!("[\"notify\",{n}]"),
        })
        .collect();
    event.queue_pushes = true;
    room.persist(event).await;

    let jobs = store.queued_pushes(10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let expected: Vec<(ruma::OwnedUserId, String)> = with_pusher
        .into_iter()
        .filter(|n| *n != 150)
        .map(|n| (members[n].clone(), format!("[\"notify\",{n}]")))
        .collect();
    assert_eq!(jobs[0].users, expected, "the notified users with a pusher, in order");
}
