//! Room upgrades between every room version, and room version 12's creators: their power,
//! `additional_creators` on upgrade, `predecessor` without `event_id`, no second create event.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

async fn state(api: &Api, room_id: &str, kind: &str) -> Value {
    api.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/{kind}/")).await.ok()
}

async fn upgrade(api: &Api, room_id: &str, body: Value) -> String {
    let upgraded =
        api.post(&format!("/_matrix/client/v3/rooms/{room_id}/upgrade"), body).await.ok();
    upgraded["replacement_room"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_room_upgrades_through_every_version_and_to_twelve_from_each() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let mut room_id = alice
        .create_room(json!({ "room_version": "1", "preset": "public_chat", "name": "n" }))
        .await;
    bob.join(&room_id).await;
    for version in 2..=12 {
        let old = room_id.clone();
        room_id = upgrade(&alice, &old, json!({ "new_version": version.to_string() })).await;
        let create = state(&alice, &room_id, "m.room.create").await;
        assert_eq!(create["room_version"], version.to_string(), "{create}");
        assert_eq!(create["predecessor"]["room_id"], old.as_str());
        assert_eq!(state(&alice, &room_id, "m.room.name").await["name"], "n");
        assert_eq!(
            state(&alice, &old, "m.room.tombstone").await["replacement_room"],
            room_id.as_str()
        );
        // Others follow and can talk; the upgrader can upgrade again.
        bob.join(&room_id).await;
        bob.send_text(&room_id, &format!("in {version}")).await;
    }
    for version in 1..=11 {
        let old = alice
            .create_room(json!({ "room_version": version.to_string(), "preset": "public_chat" }))
            .await;
        let new = upgrade(&alice, &old, json!({ "new_version": "12" })).await;
        let create = state(&alice, &new, "m.room.create").await;
        assert_eq!(create["predecessor"], json!({ "room_id": old }), "from {version}");
        let levels = state(&alice, &new, "m.room.power_levels").await;
        assert_eq!(levels["users"], json!({}), "from {version}: {levels}");
        alice.send_text(&new, "still in charge").await;
    }
}

#[tokio::test]
async fn version_twelve_creators_hold_their_power_outside_the_power_levels() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "room_version": "12", "preset": "public_chat" })).await;
    let levels = state(&alice, &room_id, "m.room.power_levels").await;
    assert_eq!(levels["users"], json!({}));
    assert_eq!(levels["events"]["m.room.tombstone"], 150);

    // Naming a creator in the power levels, or a level canonical JSON cannot hold, is 400.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/");
    let refused = alice.put(&path, json!({ "users": { alice.user(): 100 } })).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    bob.join(&room_id).await;
    let refused =
        alice.put(&path, json!({ "users": { bob.user(): 9_007_199_254_740_992_u64 } })).await;
    assert_eq!(refused.status, 400, "{}", refused.body);

    // A creator outranks any admin.
    alice.put(&path, json!({ "users": { bob.user(): 9_007_199_254_740_991_u64 } })).await.ok();
    alice
        .post(&format!("/_matrix/client/v3/rooms/{room_id}/kick"), json!({ "user_id": bob.user() }))
        .await
        .ok();

    // The create event is never sent again, whatever the version.
    for version in ["11", "12"] {
        let room_id = alice.create_room(json!({ "room_version": version })).await;
        let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.create/");
        let refused = alice.put(&path, json!({ "room_version": version, "entropy": 100 })).await;
        assert_eq!(refused.status, 400, "{version}: {}", refused.body);
    }
}

#[tokio::test]
async fn upgrades_to_twelve_take_additional_creators_out_of_the_power_levels() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let room_id = alice.create_room(json!({ "room_version": "11", "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    carol.join(&room_id).await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/");
    let users = json!({ alice.user(): 100, bob.user(): 100, carol.user(): 50 });
    alice.put(&path, json!({ "users": users })).await.ok();

    let new = upgrade(
        &alice,
        &room_id,
        json!({ "new_version": "12", "additional_creators": [bob.user()] }),
    )
    .await;
    let create = state(&alice, &new, "m.room.create").await;
    assert_eq!(create["additional_creators"], json!([bob.user()]), "{create}");
    let levels = state(&alice, &new, "m.room.power_levels").await;
    assert_eq!(levels["users"], json!({ carol.user(): 50 }), "{levels}");

    // Bob, a creator of the new room, can upgrade it in turn (v12 to v12), naming Carol.
    bob.join(&new).await;
    let newer =
        upgrade(&bob, &new, json!({ "new_version": "12", "additional_creators": [carol.user()] }))
            .await;
    let create = state(&bob, &newer, "m.room.create").await;
    assert_eq!(create["additional_creators"], json!([carol.user()]), "{create}");
    assert_eq!(create["predecessor"], json!({ "room_id": new }));
    let levels = state(&bob, &newer, "m.room.power_levels").await;
    assert_eq!(levels["users"], json!({}), "{levels}");

    // Additional creators must be user IDs.
    let refused = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{newer}/upgrade"),
            json!({ "new_version": "12", "additional_creators": ["not a user"] }),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
}

#[tokio::test]
async fn creating_a_version_twelve_room_checks_its_creators() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let create = |body: Value| {
        let alice = alice.clone();
        async move { alice.post("/_matrix/client/v3/createRoom", body).await }
    };
    for bad in [json!("not-an-array"), json!(["@foo:example.com", 42]), json!(["not-a-user"])] {
        let refused = create(json!({ "room_version": "12",
            "creation_content": { "additional_creators": bad } }))
        .await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.body);
    }
    let fine = create(json!({ "room_version": "12",
        "creation_content": { "additional_creators": ["@foo:example.com", "@bar:baz.code"] } }))
    .await
    .ok();
    assert!(fine["room_id"].is_string());

    // The power level override may raise others, never name a creator.
    let refused = create(json!({ "room_version": "12", "invite": [bob.user()],
        "power_level_content_override": { "users": { alice.user(): 100 } } }))
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let room_id = create(json!({ "room_version": "12", "invite": [bob.user()],
        "power_level_content_override": { "users": { bob.user(): 100 } } }))
    .await
    .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let levels = state(&alice, &room_id, "m.room.power_levels").await;
    assert_eq!(levels["users"], json!({ bob.user(): 100 }));
}
