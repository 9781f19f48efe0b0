//! Conformance checks for per-user data: account data, filters, receipts, unread counts and
//! pushers.

use std::sync::Arc;

use ruma::{device_id, owned_room_id, room_id, user_id};
use serde_json::json;

use super::rooms::RoomBuilder;
use crate::{DataStore, PushAction, PushActionRetention, PusherRecord, UnreadCounts};

/// Account data is versioned by stream position, per room or global.
pub async fn account_data_and_filters(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let room = room_id!("!room:example.org");
    let first = store.set_account_data(alice, None, "m.push_rules", "{\"a\":1}").await.unwrap();
    let second = store.set_account_data(alice, Some(room), "m.tag", "{\"tags\":{}}").await.unwrap();
    assert!(second > first);
    assert_eq!(store.current_stream_pos(), second);
    let all = store.account_data_since(alice, None).await.unwrap();
    assert_eq!(all.len(), 2);
    let since_first = store.account_data_since(alice, Some(first)).await.unwrap();
    assert_eq!(since_first.len(), 1);
    assert_eq!(since_first[0].room_id, Some(owned_room_id!("!room:example.org")));
    let third = store.set_account_data(alice, None, "m.push_rules", "{\"a\":2}").await.unwrap();
    let global = store.get_account_data(alice, None, "m.push_rules").await.unwrap().unwrap();
    assert_eq!((global.content.as_str(), global.stream_pos), ("{\"a\":2}", third));
    assert!(store.get_account_data(alice, Some(room), "m.push_rules").await.unwrap().is_none());
    assert!(store.account_data_since(user_id!("@bob:example.org"), None).await.unwrap().is_empty());

    let filter_id = store.create_filter(alice, "{\"room\":{}}").await.unwrap();
    assert_eq!(
        store.get_filter(alice, &filter_id).await.unwrap().as_deref(),
        Some("{\"room\":{}}")
    );
    assert_eq!(store.get_filter(user_id!("@bob:example.org"), &filter_id).await.unwrap(), None);
    assert_eq!(store.get_filter(alice, "not-a-number").await.unwrap(), None);
}

/// Receipts replace each other per type and thread; unread counts start after them.
pub async fn receipts_and_unread_counts(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "rr").await;
    let bob = user_id!("@bob:example.org");
    room.join(bob.as_str()).await;
    let mut ids = Vec::new();
    for index in 0..4 {
        let mut event =
            room.template("@alice:example.org", "m.room.message", None, json!({"body": index}));
        event.push_actions = vec![PushAction {
            user_id: bob.to_owned(),
            notify: true,
            highlight: index == 3,
            thread_id: None,
            actions: "[\"notify\"]".into(),
        }];
        ids.push(event.event_id.clone());
        room.persist(event).await;
    }
    let counts = store.unread_counts(bob, &room.room_id).await.unwrap();
    assert_eq!(counts, UnreadCounts { notifications: 4, highlights: 1 });
    // Many rooms in one query: the same counts, and nothing for a room without any.
    let quiet = room_id!("!quiet:example.org");
    let batched = store.unread_counts_in_rooms(bob, &[quiet, &room.room_id]).await.unwrap();
    assert_eq!(batched, [(room.room_id.clone(), counts)].into());
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 1);
    let before = store.current_stream_pos();
    store.set_receipt(&room.room_id, "m.read", bob, None, &ids[1], 5).await.unwrap();
    assert_eq!(
        store.unread_counts(bob, &room.room_id).await.unwrap(),
        UnreadCounts { notifications: 2, highlights: 1 }
    );
    let partly = store.unread_counts_in_rooms(bob, &[&room.room_id]).await.unwrap();
    assert_eq!(partly[&room.room_id], UnreadCounts { notifications: 2, highlights: 1 });
    store.set_receipt(&room.room_id, "m.read.private", bob, None, &ids[3], 6).await.unwrap();
    assert_eq!(store.unread_counts(bob, &room.room_id).await.unwrap(), UnreadCounts::default());
    assert!(store.unread_counts_in_rooms(bob, &[&room.room_id]).await.unwrap().is_empty());
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 0);
    assert_eq!(
        store.unread_counts(user_id!("@alice:example.org"), &room.room_id).await.unwrap(),
        UnreadCounts::default()
    );

    // A threaded receipt covers its own thread only.
    let root = ids[0].clone();
    let mut threaded =
        room.template("@alice:example.org", "m.room.message", None, json!({"body": "in thread"}));
    threaded.push_actions = vec![PushAction {
        user_id: bob.to_owned(),
        notify: true,
        highlight: false,
        thread_id: Some(root.clone()),
        actions: "[\"notify\"]".into(),
    }];
    let threaded_id = threaded.event_id.clone();
    room.persist(threaded).await;
    let mut main =
        room.template("@alice:example.org", "m.room.message", None, json!({"body": "main"}));
    main.push_actions = vec![PushAction {
        user_id: bob.to_owned(),
        notify: true,
        highlight: false,
        thread_id: None,
        actions: "[\"notify\"]".into(),
    }];
    let main_id = main.event_id.clone();
    room.persist(main).await;
    assert_eq!(store.unread_counts(bob, &room.room_id).await.unwrap().notifications, 2);
    let batched = store.unread_counts_in_rooms(bob, &[&room.room_id]).await.unwrap();
    assert_eq!(batched[&room.room_id].notifications, 2);
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 1, "one room");
    let one = UnreadCounts { notifications: 1, highlights: 0 };
    assert_eq!(
        store.unread_counts_by_thread(bob, &room.room_id).await.unwrap(),
        vec![(None, one), (Some(root.clone()), one)]
    );
    store
        .set_receipt(&room.room_id, "m.read", bob, Some(root.as_str()), &threaded_id, 7)
        .await
        .unwrap();
    assert_eq!(store.unread_counts(bob, &room.room_id).await.unwrap().notifications, 1);
    assert_eq!(store.unread_counts_by_thread(bob, &room.room_id).await.unwrap(), vec![(None, one)]);
    let batched = store.unread_counts_in_rooms(bob, &[&room.room_id]).await.unwrap();
    assert_eq!(batched[&room.room_id], one);
    // The room stays unread for the badge while its main timeline is.
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 1);
    store.set_receipt(&room.room_id, "m.read", bob, Some("main"), &main_id, 8).await.unwrap();
    assert_eq!(store.unread_counts(bob, &room.room_id).await.unwrap().notifications, 0);
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 0);
    // A room left no longer counts, unread or not; one invited to does.
    let notifies_bob = || {
        vec![PushAction {
            user_id: bob.to_owned(),
            notify: true,
            highlight: false,
            thread_id: None,
            actions: "[\"notify\"]".into(),
        }]
    };
    let mut unread = room.template("@alice:example.org", "m.room.message", None, json!({}));
    unread.push_actions = notifies_bob();
    room.persist(unread).await;
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 1);
    room.send(bob.as_str(), "m.room.member", Some(bob.as_str()), json!({"membership": "leave"}))
        .await;
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 0, "left");
    let mut invite = RoomBuilder::new(store.clone(), "rr_invite").await;
    invite
        .send(
            "@alice:example.org",
            "m.room.member",
            Some(bob.as_str()),
            json!({"membership": "invite"}),
        )
        .await;
    let mut invited = invite.template("@alice:example.org", "m.room.message", None, json!({}));
    invited.push_actions = notifies_bob();
    invite.persist(invited).await;
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 1, "invited");

    let receipts = store.receipts_since(&[&room.room_id], Some(before)).await.unwrap();
    assert_eq!(receipts.len(), 4);
    let latest =
        store.receipts_since(&[&room.room_id], Some(receipts[2].stream_pos)).await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].thread_id.as_deref(), Some("main"));
    // Moving a receipt replaces it rather than adding one.
    store.set_receipt(&room.room_id, "m.read", bob, None, &ids[2], 9).await.unwrap();
    let all = store.receipts_since(&[&room.room_id], None).await.unwrap();
    assert_eq!(all.len(), 4);
    assert!(store.receipts_since(&[room_id!("!none:example.org")], None).await.unwrap().is_empty());
}

/// Notifications come newest first from a position, with their actions and read state.
pub async fn notifications_page_newest_first(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "nt").await;
    let bob = user_id!("@bob:example.org");
    let carol = user_id!("@carol:example.org");
    let mut ids = Vec::new();
    for index in 0..5 {
        let mut event =
            room.template("@alice:example.org", "m.room.message", None, json!({"body": index}));
        let highlight = index % 2 == 1;
        let actions = if highlight {
            json!(["notify", {"set_tweak": "highlight"}])
        } else {
            json!(["notify"])
        };
        event.push_actions = vec![PushAction {
            user_id: bob.to_owned(),
            // The third message highlights without notifying.
            notify: index != 3,
            highlight,
            thread_id: None,
            actions: actions.to_string(),
        }];
        ids.push(event.event_id.clone());
        room.persist(event).await;
    }
    // An event without push actions for bob is not a notification.
    room.send("@alice:example.org", "m.room.message", None, json!({"body": "quiet"})).await;

    let all = store.notifications(bob, None, false, 10).await.unwrap();
    let listed: Vec<_> = all.iter().map(|n| n.event_id.clone()).collect();
    assert_eq!(listed, ids.iter().rev().cloned().collect::<Vec<_>>());
    assert!(all.windows(2).all(|pair| pair[0].stream_pos > pair[1].stream_pos));
    assert!(all.iter().all(|n| n.room_id == room.room_id && !n.read));
    assert_eq!(all[1].actions.as_deref(), Some("[\"notify\",{\"set_tweak\":\"highlight\"}]"));
    assert!(all[1].highlight && !all[0].highlight);
    assert!(all[0].ts > all[1].ts, "ts is the event's origin_server_ts");

    let page = store.notifications(bob, None, false, 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let next = store.notifications(bob, Some(page[1].stream_pos), false, 2).await.unwrap();
    assert_eq!(next.iter().map(|n| &n.event_id).collect::<Vec<_>>(), vec![&ids[2], &ids[1]]);

    let highlights = store.notifications(bob, None, true, 10).await.unwrap();
    assert_eq!(highlights.iter().map(|n| &n.event_id).collect::<Vec<_>>(), vec![&ids[3], &ids[1]]);

    store.set_receipt(&room.room_id, "m.read", bob, None, &ids[2], 5).await.unwrap();
    let read: Vec<bool> =
        store.notifications(bob, None, false, 10).await.unwrap().iter().map(|n| n.read).collect();
    assert_eq!(read, vec![false, false, true, true, true]);
    assert!(store.notifications(carol, None, false, 10).await.unwrap().is_empty());
    assert!(store.notifications(bob, None, false, 0).await.unwrap().is_empty());
}

/// Pushers are keyed by app and pushkey, per user; a pushkey moves to whoever sets it last
/// (unless appended); pushers end with their device.
pub async fn pushers_are_stored_per_user(store: Arc<dyn DataStore>) {
    let alice = user_id!("@alice:example.org");
    let bob = user_id!("@bob:example.org");
    let phone = device_id!("PHONE");
    store.upsert_device(alice, phone, Some("phone"), 1).await.unwrap();
    let pusher = PusherRecord {
        user_id: alice.to_owned(),
        pushkey: "k".into(),
        app_id: "app".into(),
        json: "{}".into(),
        device_id: Some(phone.to_owned()),
        created_ts: 7,
    };
    store.set_pusher(&pusher, false).await.unwrap();
    store
        .set_pusher(&PusherRecord { json: "{\"v\":2}".into(), ..pusher.clone() }, false)
        .await
        .unwrap();
    let pushers = store.list_pushers(alice).await.unwrap();
    assert_eq!(pushers.len(), 1);
    assert_eq!(pushers[0].json, "{\"v\":2}");
    assert_eq!(pushers[0].device_id.as_deref(), Some(phone));
    assert_eq!(pushers[0].created_ts, 7);
    assert!(store.list_pushers(bob).await.unwrap().is_empty());
    store.delete_pusher(alice, "app", "k").await.unwrap();
    assert!(store.list_pushers(alice).await.unwrap().is_empty());

    // The same pushkey set by Bob takes it from Alice, unless appended.
    store.set_pusher(&pusher, false).await.unwrap();
    let bobs = PusherRecord { user_id: bob.to_owned(), device_id: None, ..pusher.clone() };
    store.set_pusher(&bobs, true).await.unwrap();
    assert_eq!(store.list_pushers(alice).await.unwrap().len(), 1);
    store.set_pusher(&bobs, false).await.unwrap();
    assert!(store.list_pushers(alice).await.unwrap().is_empty());
    assert_eq!(store.list_pushers(bob).await.unwrap().len(), 1);

    // Deleting the device deletes its pushers.
    store.set_pusher(&pusher, true).await.unwrap();
    store.delete_device(alice, phone).await.unwrap();
    assert!(store.list_pushers(alice).await.unwrap().is_empty());
    assert_eq!(store.list_pushers(bob).await.unwrap().len(), 1);
}

/// An event that notifies every member of a big room keeps every member's action, whatever
/// the number of rows the store writes at once: counts, highlights, threads and actions.
pub async fn push_actions_of_a_big_room(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "big").await;
    let thread = ruma::owned_event_id!("$root:example.org");
    let members: Vec<ruma::OwnedUserId> = (0..601)
        .map(|index| ruma::UserId::parse(format!("@m{index}:example.org")).unwrap())
        .collect();
    let mut event =
        room.template("@alice:example.org", "m.room.message", None, json!({"body": "all"}));
    event.push_actions = members
        .iter()
        .enumerate()
        .map(|(index, member)| PushAction {
            user_id: member.clone(),
            notify: index % 7 != 0,
            highlight: index % 5 == 0,
            thread_id: (index % 3 == 0).then(|| thread.clone()),
            actions: format!("[\"notify\",{{\"n\":{index}}}]"),
        })
        .collect();
    let event_id = event.event_id.clone();
    room.persist(event).await;
    for (index, member) in members.iter().enumerate() {
        let counts = store.unread_counts(member, &room.room_id).await.unwrap();
        let expected = UnreadCounts {
            notifications: u64::from(index % 7 != 0),
            highlights: u64::from(index % 5 == 0),
        };
        assert_eq!(counts, expected, "member {index}");
    }
    // Rows on both sides of every boundary a store might split its writes at.
    for index in [1, 31, 32, 33, 64, 255, 256, 257, 510, 512, 600] {
        let found = store.notifications(&members[index], None, false, 10).await.unwrap();
        assert_eq!(found.len(), 1, "member {index}");
        assert_eq!(found[0].event_id, event_id);
        assert_eq!(found[0].highlight, index % 5 == 0, "member {index}");
        let expected = format!("[\"notify\",{{\"n\":{index}}}]");
        assert_eq!(found[0].actions.as_deref(), Some(expected.as_str()), "member {index}");
    }
    let none = store.unread_counts(user_id!("@outsider:example.org"), &room.room_id).await;
    assert_eq!(none.unwrap(), UnreadCounts::default());
}

/// Push actions read the same after `settle` (on SQLite: the staged rows moved to their table,
/// then a store opened afresh on the database, which remembers nothing and so reads it all):
/// notifications newest first across rows settled and rows not yet, unread counts and the
/// count of rooms with unread notifications, before and after a receipt.
pub async fn push_actions_read_the_same_after<F, Fut>(store: Arc<dyn DataStore>, settle: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn DataStore>>,
{
    let mut room = RoomBuilder::new(store.clone(), "settled").await;
    let bob = user_id!("@bob:example.org");
    room.join(bob.as_str()).await;
    let mut ids = Vec::new();
    for index in 0..6 {
        if index == 3 {
            // The first three settle; the last three stay where the store wrote them.
            settle().await;
        }
        let mut event =
            room.template("@alice:example.org", "m.room.message", None, json!({"body": index}));
        event.push_actions = vec![PushAction {
            user_id: bob.to_owned(),
            notify: true,
            highlight: index == 1 || index == 4,
            thread_id: None,
            actions: format!("[\"notify\",{{\"n\":{index}}}]"),
        }];
        ids.push(event.event_id.clone());
        room.persist(event).await;
    }
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    for reader in [store.clone(), settle().await] {
        let all = reader.notifications(bob, None, false, 10).await.unwrap();
        assert_eq!(all.iter().map(|n| n.event_id.clone()).collect::<Vec<_>>(), newest_first);
        let expected: Vec<String> =
            (0..6).rev().map(|index| format!("[\"notify\",{{\"n\":{index}}}]")).collect();
        let actions: Vec<String> = all.iter().filter_map(|n| n.actions.clone()).collect();
        assert_eq!(actions, expected);
        let page = reader.notifications(bob, None, false, 4).await.unwrap();
        assert_eq!(page.iter().map(|n| n.event_id.clone()).collect::<Vec<_>>(), newest_first[..4]);
        let older = reader.notifications(bob, Some(page[3].stream_pos), false, 4).await.unwrap();
        assert_eq!(older.iter().map(|n| n.event_id.clone()).collect::<Vec<_>>(), newest_first[4..]);
        let highlights = reader.notifications(bob, None, true, 10).await.unwrap();
        assert_eq!(
            highlights.iter().map(|n| n.event_id.clone()).collect::<Vec<_>>(),
            vec![ids[4].clone(), ids[1].clone()]
        );
        let counts = reader.unread_counts(bob, &room.room_id).await.unwrap();
        assert_eq!(counts, UnreadCounts { notifications: 6, highlights: 2 });
        assert_eq!(reader.rooms_with_unread_notifications(bob).await.unwrap(), 1);
    }
    // Read up to the fourth (a row not settled yet): two left, one of them a highlight.
    store.set_receipt(&room.room_id, "m.read", bob, None, &ids[3], 7).await.unwrap();
    for reader in [store.clone(), settle().await] {
        let counts = reader.unread_counts(bob, &room.room_id).await.unwrap();
        assert_eq!(counts, UnreadCounts { notifications: 2, highlights: 1 });
        let read: Vec<bool> = reader
            .notifications(bob, None, false, 10)
            .await
            .unwrap()
            .iter()
            .map(|n| n.read)
            .collect();
        assert_eq!(read, vec![false, false, true, true, true, true]);
    }
    store.set_receipt(&room.room_id, "m.read", bob, None, &ids[5], 8).await.unwrap();
    let reader = settle().await;
    assert_eq!(reader.unread_counts(bob, &room.room_id).await.unwrap(), UnreadCounts::default());
    assert_eq!(reader.rooms_with_unread_notifications(bob).await.unwrap(), 0);
}

/// A store that stages push actions moves them by itself once enough have gathered, and they
/// still count: `staged` tells how many rows are staged now.
pub async fn staged_push_actions_are_moved_by_themselves(
    store: Arc<dyn DataStore>,
    staged: impl Fn() -> usize,
) {
    let mut room = RoomBuilder::new(store.clone(), "moved").await;
    let members: Vec<ruma::OwnedUserId> = (0..1000)
        .map(|index| ruma::UserId::parse(format!("@m{index}:example.org")).unwrap())
        .collect();
    for index in 0..12 {
        let mut event =
            room.template("@alice:example.org", "m.room.message", None, json!({"body": index}));
        event.push_actions = members
            .iter()
            .map(|member| PushAction {
                user_id: member.clone(),
                notify: true,
                highlight: false,
                thread_id: None,
                actions: "[\"notify\"]".into(),
            })
            .collect();
        room.persist(event).await;
    }
    // 12,000 rows were staged; at 10,000 they began to move, in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while staged() >= 10_000 {
        assert!(std::time::Instant::now() < deadline, "{} rows still staged", staged());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for member in [&members[0], &members[999]] {
        let counts = store.unread_counts(member, &room.room_id).await.unwrap();
        assert_eq!(counts, UnreadCounts { notifications: 12, highlights: 0 });
        assert_eq!(store.notifications(member, None, false, 20).await.unwrap().len(), 12);
    }
}

/// Notifications are pruned by age: nothing older than the first run; then read ones that do
/// not highlight, read highlights, and at last unread ones, each after its own time; the
/// counts stay right throughout (and drop only when unread ones go).
pub async fn push_actions_are_pruned_by_age(store: Arc<dyn DataStore>) {
    let mut room = RoomBuilder::new(store.clone(), "rp").await;
    let bob = user_id!("@bob:example.org");
    room.join(bob.as_str()).await;
    let mut ids = Vec::new();
    let notify = |room: &mut RoomBuilder, index: usize| {
        let mut event =
            room.template("@alice:example.org", "m.room.message", None, json!({"body": index}));
        event.push_actions = vec![PushAction {
            user_id: bob.to_owned(),
            notify: true,
            highlight: index == 1,
            thread_id: None,
            actions: "[\"notify\"]".into(),
        }];
        event
    };
    for index in 0..4 {
        let event = notify(&mut room, index);
        ids.push(event.event_id.clone());
        room.persist(event).await;
    }
    store.set_receipt(&room.room_id, "m.read", bob, None, &ids[2], 5).await.unwrap();
    let counts = |notifications, highlights| UnreadCounts { notifications, highlights };
    assert_eq!(store.unread_counts(bob, &room.room_id).await.unwrap(), counts(1, 0));
    let listed = |store: Arc<dyn DataStore>| async move {
        let all = store.notifications(bob, None, false, 100).await.unwrap();
        all.into_iter().map(|n| n.event_id).rev().collect::<Vec<_>>()
    };
    assert_eq!(listed(store.clone()).await, ids);

    let keep = |read_ms, read_highlight_ms, unread_ms| PushActionRetention {
        read_ms,
        read_highlight_ms,
        unread_ms,
    };
    // The first run only notes where the stream is.
    assert_eq!(store.prune_push_actions(1_000, &keep(100, 100, 100)).await.unwrap(), 0);
    let event = notify(&mut room, 4);
    ids.push(event.event_id.clone());
    room.persist(event).await;

    // A run later: read ones that do not highlight, as of the first mark.
    assert_eq!(store.prune_push_actions(1_200, &keep(100, 1_000, 1_000)).await.unwrap(), 2);
    assert_eq!(listed(store.clone()).await, [ids[1].clone(), ids[3].clone(), ids[4].clone()]);
    assert_eq!(store.unread_counts(bob, &room.room_id).await.unwrap(), counts(2, 0));

    // Then read highlights, and unread ones as old (the counts, remembered, drop with them).
    assert_eq!(store.prune_push_actions(1_300, &keep(100, 100, 200)).await.unwrap(), 2);
    assert_eq!(listed(store.clone()).await, [ids[4].clone()]);
    assert_eq!(store.unread_counts(bob, &room.room_id).await.unwrap(), counts(1, 0));
    assert_eq!(store.rooms_with_unread_notifications(bob).await.unwrap(), 1);
}
