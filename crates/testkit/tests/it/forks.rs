//! Forks in a live room: events sent after older `prev_events` split the room graph; the next
//! event merges it, with state resolution deciding the state, as it will over federation.

use rhizome_service::rooms::NewEvent;
use rhizome_testkit::{Api, Backend, TestServer};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::json;

async fn fork_and_merge(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "original" })).await;
    bob.join(&room).await;
    let services = server.services();
    let room_id = OwnedRoomId::try_from(room.as_str()).unwrap();
    let alice_id = OwnedUserId::try_from(alice.user()).unwrap();
    let bob_id = OwnedUserId::try_from(bob.user()).unwrap();

    // Alice makes Bob a moderator.
    let mut levels = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"))
        .await
        .ok();
    levels["users"][bob.user()] = json!(50);
    alice
        .put(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"), levels.clone())
        .await
        .ok();
    let head: Vec<OwnedEventId> = services.store.forward_extremities(&room_id).await.unwrap();
    assert_eq!(head.len(), 1);

    // Two branches from the same point: Alice demotes Bob; Bob renames the room.
    levels["users"][bob.user()] = json!(0);
    let demote = services
        .send_event_after(
            &alice_id,
            &room_id,
            NewEvent::state("m.room.power_levels", "", levels),
            None,
            Some(head.clone()),
        )
        .await
        .unwrap();
    let rename = services
        .send_event_after(
            &bob_id,
            &room_id,
            NewEvent::state("m.room.name", "", json!({ "name": "bob's room" })),
            None,
            Some(head),
        )
        .await
        .expect("the rename is allowed on its own branch");
    let mut extremities = services.store.forward_extremities(&room_id).await.unwrap();
    extremities.sort();
    let mut expected = vec![demote.clone(), rename.clone()];
    expected.sort();
    assert_eq!(extremities, expected, "the room has forked");

    // The current state is already resolved: the demotion wins, the rename is dropped.
    let name = alice.get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/")).await.ok();
    assert_eq!(name["name"], "original");

    // The next event merges the branches.
    let merge = alice.send_text(&room, "merged").await;
    let extremities = services.store.forward_extremities(&room_id).await.unwrap();
    assert_eq!(extremities.len(), 1);
    assert_eq!(extremities[0].as_str(), merge);
    let merged = services.load_event(&extremities[0]).await.unwrap().unwrap();
    assert_eq!(merged.pdu.prev_events.len(), 2, "the merge cites both branches");
    let state = services.state_map(merged.record.state_before).await.unwrap();
    let name_slot = (ruma::events::StateEventType::RoomName, String::new());
    assert_ne!(state.get(&name_slot), Some(&rename));
    let levels = alice
        .get(&format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/"))
        .await
        .ok();
    assert_eq!(levels["users"][bob.user()], 0);
    // Bob, demoted, can no longer rename.
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
        json!({ "name": "again" }),
    )
    .await
    .expect_error(403, "M_FORBIDDEN");
    // Clients see both branches' events in history.
    let page =
        alice.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20")).await.ok();
    let ids: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["event_id"].as_str())
        .collect();
    assert!(ids.contains(&demote.as_str()) && ids.contains(&rename.as_str()));
}

#[tokio::test]
async fn forks_merge_by_state_resolution_on_sqlite() {
    fork_and_merge(Backend::Sqlite).await;
}

#[tokio::test]
async fn forks_merge_by_state_resolution_on_postgresql() {
    fork_and_merge(Backend::Postgres).await;
}
