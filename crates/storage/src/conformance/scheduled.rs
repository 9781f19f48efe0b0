//! Thread subscriptions and delayed events.

use std::sync::Arc;

use ruma::{event_id, room_id, user_id};

use crate::{DataStore, DelayedEventRecord};

/// Subscriptions change at stream positions, unsubscriptions are remembered, and changes are
/// listed newest first within a window.
pub async fn thread_subscriptions_are_kept_and_listed(store: Arc<dyn DataStore>) {
    let (alice, room) = (user_id!("@alice:example.org"), room_id!("!r:example.org"));
    let (one, two) = (event_id!("$one"), event_id!("$two"));
    assert!(store.thread_subscription(alice, room, one).await.unwrap().is_none());
    let first = store.subscribe_thread(alice, room, one, true).await.unwrap();
    let stored = store.thread_subscription(alice, room, one).await.unwrap().unwrap();
    assert!(stored.subscribed && stored.automatic);
    assert_eq!(stored.stream_pos, first);
    let second = store.subscribe_thread(alice, room, two, false).await.unwrap();
    assert!(second > first);
    let third = store.unsubscribe_thread(alice, room, one).await.unwrap();
    let stored = store.thread_subscription(alice, room, one).await.unwrap().unwrap();
    assert!(!stored.subscribed && !stored.automatic);
    assert_eq!(stored.stream_pos, third);

    let all = store.thread_subscriptions_between(alice, None, third, 10).await.unwrap();
    let roots: Vec<_> = all.iter().map(|record| record.thread_root_id.as_str()).collect();
    assert_eq!(roots, ["$one", "$two"], "newest first");
    let later = store.thread_subscriptions_between(alice, Some(second), third, 10).await.unwrap();
    assert_eq!(later.len(), 1);
    assert!(store.thread_subscriptions_between(alice, None, first, 10).await.unwrap().is_empty());
    assert_eq!(store.thread_subscriptions_between(alice, None, third, 1).await.unwrap().len(), 1);
    let bob = user_id!("@bob:example.org");
    assert!(store.thread_subscriptions_between(bob, None, third, 10).await.unwrap().is_empty());
}

fn delayed(delay_id: &str, user: &str, send_ts: i64) -> DelayedEventRecord {
    DelayedEventRecord {
        delay_id: delay_id.into(),
        user_id: ruma::UserId::parse(user).unwrap(),
        device_id: Some("DEV".into()),
        room_id: room_id!("!r:example.org").to_owned(),
        event_type: "m.room.message".into(),
        state_key: None,
        content: r#"{"body":"later"}"#.into(),
        delay_ms: 1_000,
        send_ts,
        created_ts: 1,
    }
}

/// Delayed events are found by ID, user and due time, moved, and taken exactly once.
pub async fn delayed_events_are_scheduled_and_taken_once(store: Arc<dyn DataStore>) {
    assert_eq!(store.next_delayed_event_ts().await.unwrap(), None);
    store.add_delayed_event(&delayed("b", "@alice:example.org", 200)).await.unwrap();
    store.add_delayed_event(&delayed("a", "@alice:example.org", 100)).await.unwrap();
    store.add_delayed_event(&delayed("c", "@bob:example.org", 300)).await.unwrap();
    let mut state = delayed("s", "@bob:example.org", 400);
    state.state_key = Some(String::new());
    state.device_id = None;
    store.add_delayed_event(&state).await.unwrap();
    assert_eq!(store.delayed_event("s").await.unwrap().unwrap(), state);
    assert_eq!(store.next_delayed_event_ts().await.unwrap(), Some(100));
    let alices = store.delayed_events_of(user_id!("@alice:example.org")).await.unwrap();
    let ids: Vec<_> = alices.iter().map(|event| event.delay_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    let due = store.due_delayed_events(250, 10).await.unwrap();
    assert_eq!(due.iter().map(|event| event.delay_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(store.reschedule_delayed_event("a", 500).await.unwrap());
    assert!(!store.reschedule_delayed_event("nothing", 500).await.unwrap());
    assert_eq!(store.due_delayed_events(250, 10).await.unwrap().len(), 1);
    assert_eq!(store.next_delayed_event_ts().await.unwrap(), Some(200));
    assert!(store.take_delayed_event("b").await.unwrap());
    assert!(!store.take_delayed_event("b").await.unwrap());
    assert!(store.delayed_event("b").await.unwrap().is_none());

    // Another user's change to the same state cancels the delayed state events of others.
    let mut bobs_topic = delayed("t", "@bob:example.org", 900);
    bobs_topic.event_type = "m.room.topic".into();
    bobs_topic.state_key = Some(String::new());
    store.add_delayed_event(&bobs_topic).await.unwrap();
    let (room, bob) = (room_id!("!r:example.org"), user_id!("@bob:example.org"));
    let alice = user_id!("@alice:example.org");
    assert_eq!(store.cancel_delayed_state_events(room, "m.room.topic", "", bob).await.unwrap(), 0);
    assert_eq!(store.cancel_delayed_state_events(room, "m.room.name", "", alice).await.unwrap(), 0);
    let other_room = room_id!("!other:example.org");
    let cancelled = store.cancel_delayed_state_events(other_room, "m.room.topic", "", alice);
    assert_eq!(cancelled.await.unwrap(), 0);
    assert_eq!(
        store.cancel_delayed_state_events(room, "m.room.topic", "", alice).await.unwrap(),
        1
    );
    assert!(store.delayed_event("t").await.unwrap().is_none());
    assert!(store.delayed_event("s").await.unwrap().is_some(), "other state untouched");
}
