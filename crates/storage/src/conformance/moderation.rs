//! Conformance checks for moderation: reports and rooms shut down by the administrator.

use std::sync::Arc;

use ruma::{RoomVersionId, owned_event_id, owned_room_id, owned_user_id, room_id};

use crate::{DataStore, NewReport};

fn report(room: &str, event: Option<&str>, received_ts: i64) -> NewReport {
    NewReport {
        reporter: owned_user_id!("@reporter:example.org"),
        room_id: ruma::OwnedRoomId::try_from(room).expect("valid room ID"),
        event_id: event.map(|id| ruma::OwnedEventId::try_from(id).expect("valid event ID")),
        reason: Some(format!("reason {received_ts}")),
        score: event.map(|_| -100),
        received_ts,
    }
}

/// Reports are numbered in order, listed until resolved, and resolved once.
pub async fn reports_are_kept_and_resolved(store: Arc<dyn DataStore>) {
    assert!(store.list_reports(true).await.unwrap().is_empty());
    let first = store.add_report(&report("!a:example.org", Some("$e1"), 10)).await.unwrap();
    let mut room_report = report("!b:example.org", None, 20);
    room_report.reason = None;
    let second = store.add_report(&room_report).await.unwrap();
    let third = store.add_report(&report("!a:example.org", Some("$e2"), 30)).await.unwrap();
    assert!(first < second && second < third);

    let open = store.list_reports(false).await.unwrap();
    assert_eq!(open.iter().map(|r| r.report_id).collect::<Vec<_>>(), vec![first, second, third]);
    assert_eq!(open[0].report, report("!a:example.org", Some("$e1"), 10));
    assert_eq!(open[0].report.event_id, Some(owned_event_id!("$e1")));
    assert_eq!(open[1].report, room_report);
    assert_eq!((open[1].report.score, open[1].report.event_id.as_ref()), (None, None));
    assert!(open.iter().all(|r| r.resolved_ts.is_none()));

    assert!(store.resolve_report(second, 40).await.unwrap());
    assert!(!store.resolve_report(second, 50).await.unwrap(), "a report is resolved once");
    assert!(!store.resolve_report(third + 100, 50).await.unwrap());
    let open = store.list_reports(false).await.unwrap();
    assert_eq!(open.iter().map(|r| r.report_id).collect::<Vec<_>>(), vec![first, third]);
    let all = store.list_reports(true).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].resolved_ts, Some(40));
}

/// A room shut down keeps the time it first was, and only known rooms can be.
pub async fn rooms_are_shut_down(store: Arc<dyn DataStore>) {
    let room = owned_room_id!("!shut:example.org");
    store.create_room(&room, &RoomVersionId::V11, 1).await.unwrap();
    store.create_room(room_id!("!open:example.org"), &RoomVersionId::V11, 2).await.unwrap();
    assert_eq!(store.get_room(&room).await.unwrap().unwrap().shut_down_ts, None);
    assert!(store.set_room_shut_down(&room, 100).await.unwrap());
    assert!(store.set_room_shut_down(&room, 200).await.unwrap());
    assert_eq!(store.get_room(&room).await.unwrap().unwrap().shut_down_ts, Some(100));
    let rooms = store.list_rooms().await.unwrap();
    assert_eq!(rooms.len(), 2);
    assert_eq!(rooms[1].shut_down_ts, None);
    assert!(!store.set_room_shut_down(room_id!("!unknown:example.org"), 100).await.unwrap());
}
