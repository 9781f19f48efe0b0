//! Spaces and previews over HTTP: `/hierarchy` (order, depth, suggested rooms, pagination and
//! who may see which room) and `/room_summary` (by ID or alias, with or without a token).

use std::time::Duration;

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

/// A space with children: `D` (a sub-space with `E` and `F`), `A`, `C` (suggested,
/// restricted to the space's members) and `B` (invite-only), plus an invalid child.
struct Tree {
    space: String,
    a: String,
    b: String,
    c: String,
    d: String,
    e: String,
    f: String,
}

async fn add_child(api: &Api, parent: &str, child: &str, content: Value) {
    api.put(&format!("/_matrix/client/v3/rooms/{parent}/state/m.space.child/{child}"), content)
        .await
        .ok();
    // Children without `order` are ordered by the time of their event.
    tokio::time::sleep(Duration::from_millis(5)).await;
}

async fn build(alice: &Api) -> Tree {
    let space_kind = json!({ "type": "m.space" });
    let space = alice
        .create_room(
            json!({ "preset": "public_chat", "name": "Space", "creation_content": space_kind }),
        )
        .await;
    let d = alice
        .create_room(
            json!({ "preset": "public_chat", "name": "D", "creation_content": space_kind }),
        )
        .await;
    let a = alice.create_room(json!({ "preset": "public_chat", "name": "A" })).await;
    let b = alice.create_room(json!({ "preset": "private_chat", "name": "B" })).await;
    let c = alice
        .create_room(json!({
            "preset": "private_chat", "name": "C",
            "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": "restricted",
                             "allow": [{ "type": "m.room_membership", "room_id": space }] },
            }],
        }))
        .await;
    let e = alice.create_room(json!({ "preset": "public_chat", "name": "E" })).await;
    let f = alice
        .create_room(json!({
            "preset": "private_chat", "name": "F",
            "initial_state": [{
                "type": "m.room.history_visibility", "state_key": "",
                "content": { "history_visibility": "world_readable" },
            }],
        }))
        .await;
    let via = json!(["localhost"]);
    add_child(alice, &space, &a, json!({ "via": via, "order": "b" })).await;
    add_child(alice, &space, &c, json!({ "via": via, "suggested": true })).await;
    add_child(alice, &space, &b, json!({ "via": via })).await;
    add_child(alice, &space, &d, json!({ "via": via, "order": "a" })).await;
    // No `via`: not a valid child.
    add_child(alice, &space, &e, json!({ "via": [] })).await;
    add_child(alice, &d, &e, json!({ "via": via })).await;
    add_child(alice, &d, &f, json!({ "via": via })).await;
    Tree { space, a, b, c, d, e, f }
}

fn ids(page: &Value) -> Vec<String> {
    page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|room| room["room_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts the page lists exactly these rooms, in this order.
#[track_caller]
fn assert_rooms(page: &Value, expected: &[&String]) {
    let expected: Vec<String> = expected.iter().map(|id| (*id).clone()).collect();
    assert_eq!(ids(page), expected);
}

fn room<'a>(page: &'a Value, room_id: &str) -> &'a Value {
    page["rooms"].as_array().unwrap().iter().find(|room| room["room_id"] == room_id).unwrap()
}

#[tokio::test]
async fn the_hierarchy_walks_the_space_depth_first() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    let tree = build(&alice).await;
    bob.join(&tree.space).await;
    let path = format!("/_matrix/client/v1/rooms/{}/hierarchy", tree.space);

    // Bob is in the space: he sees the restricted room C but not the invite-only B.
    let page = bob.get(&path).await.ok();
    assert_rooms(&page, &[&tree.space, &tree.d, &tree.e, &tree.f, &tree.a, &tree.c]);
    assert!(page.get("next_batch").is_none(), "{page}");
    let root = room(&page, &tree.space);
    assert_eq!(root["room_type"], "m.space");
    assert_eq!(root["name"], "Space");
    assert_eq!(root["num_joined_members"], 2);
    let children: Vec<&str> = root["children_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| child["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(children, [&tree.d, &tree.a, &tree.c, &tree.b], "valid children, in order");
    let child = &root["children_state"][0];
    assert_eq!(child["type"], "m.space.child");
    assert_eq!(child["sender"], "@alice:localhost");
    assert_eq!(child["content"]["order"], "a");
    assert!(child["origin_server_ts"].as_u64().unwrap() > 0);
    assert!(room(&page, &tree.a)["children_state"].as_array().unwrap().is_empty());
    let restricted = room(&page, &tree.c);
    assert_eq!(restricted["join_rule"], "restricted");
    assert_eq!(restricted["allowed_room_ids"], json!([tree.space]));
    assert_eq!(room(&page, &tree.f)["world_readable"], true);

    // Depth, suggested rooms.
    let shallow = bob.get(&format!("{path}?max_depth=1")).await.ok();
    assert_rooms(&shallow, &[&tree.space, &tree.d, &tree.a, &tree.c]);
    assert_rooms(&bob.get(&format!("{path}?max_depth=0")).await.ok(), &[&tree.space]);
    let suggested = bob.get(&format!("{path}?suggested_only=true")).await.ok();
    assert_rooms(&suggested, &[&tree.space, &tree.c]);

    // Pages of two.
    let first = bob.get(&format!("{path}?limit=2")).await.ok();
    assert_rooms(&first, &[&tree.space, &tree.d]);
    let token = first["next_batch"].as_str().unwrap();
    let second = bob.get(&format!("{path}?limit=2&from={token}")).await.ok();
    assert_rooms(&second, &[&tree.e, &tree.f]);
    let token = second["next_batch"].as_str().unwrap();
    let third = bob.get(&format!("{path}?limit=2&from={token}")).await.ok();
    assert_rooms(&third, &[&tree.a, &tree.c]);
    assert!(third.get("next_batch").is_none(), "{third}");
    bob.get(&format!("{path}?limit=2&max_depth=1&from={token}"))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    bob.get(&format!("{path}?from=nonsense")).await.expect_error(400, "M_INVALID_PARAM");
    bob.get(&format!("{path}?limit=0")).await.expect_error(400, "M_INVALID_PARAM");

    // Carol is not in the space: the public rooms only.
    let page = carol.get(&path).await.ok();
    assert_rooms(&page, &[&tree.space, &tree.d, &tree.e, &tree.f, &tree.a]);

    // A room nobody may preview, an unknown room, a banned user.
    carol
        .get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", tree.b))
        .await
        .expect_error(403, "M_FORBIDDEN");
    carol
        .get("/_matrix/client/v1/rooms/!unknown:localhost/hierarchy")
        .await
        .expect_error(403, "M_FORBIDDEN");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", tree.space),
            json!({ "user_id": "@carol:localhost" }),
        )
        .await
        .ok();
    carol.get(&path).await.expect_error(403, "M_FORBIDDEN");
    Api::new(&server.base_url).get(&path).await.expect_error(401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn room_summaries_respect_who_may_preview() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let anonymous = Api::new(&server.base_url);
    let tree = build(&alice).await;
    let summary = |room: &str| format!("/_matrix/client/v1/room_summary/{}", encode(room));

    let space = bob.get(&summary(&tree.space)).await.ok();
    assert_eq!(space["room_id"], tree.space);
    assert_eq!(space["room_type"], "m.space");
    assert_eq!(space["name"], "Space");
    assert_eq!(space["num_joined_members"], 1);
    assert_eq!(space["world_readable"], false);
    assert_eq!(space["guest_can_join"], false);
    assert_eq!(space["room_version"], "12");
    assert!(space.get("membership").is_none(), "bob is not in the space: {space}");
    assert!(space.get("children_state").is_none());

    // By alias, and the membership of a member.
    alice
        .put(
            &format!("/_matrix/client/v3/directory/room/{}", encode("#a:localhost")),
            json!({ "room_id": tree.a }),
        )
        .await
        .ok();
    let by_alias = alice.get(&summary("#a:localhost")).await.ok();
    assert_eq!(by_alias["room_id"], tree.a);
    assert_eq!(by_alias["membership"], "join");
    assert_eq!(by_alias["canonical_alias"], Value::Null);

    // Invite-only: members only. World-readable: anyone, without a token too.
    bob.get(&summary(&tree.b)).await.expect_error(404, "M_NOT_FOUND");
    anonymous.get(&summary(&tree.b)).await.expect_error(404, "M_NOT_FOUND");
    assert_eq!(alice.get(&summary(&tree.b)).await.ok()["join_rule"], "invite");
    assert_eq!(anonymous.get(&summary(&tree.f)).await.ok()["world_readable"], true);
    assert_eq!(anonymous.get(&summary(&tree.a)).await.ok()["room_id"], tree.a);
    // Restricted: members of the allowed room.
    bob.get(&summary(&tree.c)).await.expect_error(404, "M_NOT_FOUND");
    bob.join(&tree.space).await;
    let restricted = bob.get(&summary(&tree.c)).await.ok();
    assert_eq!(restricted["allowed_room_ids"], json!([tree.space]));
    anonymous.get(&summary(&tree.c)).await.expect_error(404, "M_NOT_FOUND");
    // An invited user sees the room before joining.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", tree.b),
            json!({ "user_id": "@bob:localhost" }),
        )
        .await
        .ok();
    assert_eq!(bob.get(&summary(&tree.b)).await.ok()["membership"], "invite");

    anonymous.get(&summary("!unknown:localhost")).await.expect_error(404, "M_NOT_FOUND");
    anonymous.get(&summary("#nothing:localhost")).await.expect_error(404, "M_NOT_FOUND");
    let mut bad = Api::new(&server.base_url);
    bad.token = Some("not-a-token".into());
    bad.get(&summary(&tree.a)).await.expect_error(401, "M_UNKNOWN_TOKEN");
    // The unstable path clients used before v1.15.
    let unstable = bob
        .get(&format!("/_matrix/client/unstable/im.nheko.summary/rooms/{}/summary", tree.e))
        .await
        .ok();
    assert_eq!(unstable["name"], "E");
}
