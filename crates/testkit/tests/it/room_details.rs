//! Room details clients rely on: canonical aliases that exist, the directory's join rules,
//! rich topics, what follows a user to an upgraded room, and the versions knocking and
//! restricted joins need.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::{Value, json};

async fn put_alias(api: &Api, alias: &str, room_id: &str) {
    let path = format!("/_matrix/client/v3/directory/room/{}", encode(alias));
    api.put(&path, json!({ "room_id": room_id })).await.ok();
}

#[tokio::test]
async fn a_canonical_alias_must_exist_here_and_point_to_the_room() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let other = alice.create_room(json!({})).await;
    put_alias(&alice, "#here:localhost", &room_id).await;
    put_alias(&alice, "#there:localhost", &other).await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.canonical_alias/");
    let set = |content: Value| {
        let alice = alice.clone();
        let path = path.clone();
        async move { alice.put(&path, content).await }
    };

    set(json!({ "alias": "#here:localhost", "alt_aliases": ["#here:localhost"] })).await.ok();
    set(json!({ "alias": "#missing:localhost" })).await.expect_error(400, "M_BAD_ALIAS");
    set(json!({ "alias": "#there:localhost" })).await.expect_error(400, "M_BAD_ALIAS");
    set(json!({ "alias": "%here:localhost" })).await.expect_error(400, "M_INVALID_PARAM");
    set(json!({ "alias": "#here:localhost", "alt_aliases": ["#missing:localhost"] }))
        .await
        .expect_error(400, "M_BAD_ALIAS");
    set(json!({ "alias": "#here:localhost", "alt_aliases": ["#there:localhost"] }))
        .await
        .expect_error(400, "M_BAD_ALIAS");
    set(json!({ "alias": "#here:localhost", "alt_aliases": ["%bad:localhost"] }))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    // Removing the canonical alias is always fine.
    set(json!({})).await.ok();

    // A deleted alias cannot be made canonical.
    put_alias(&alice, "#gone:localhost", &room_id).await;
    alice
        .delete(&format!("/_matrix/client/v3/directory/room/{}", encode("#gone:localhost")))
        .await
        .ok();
    set(json!({ "alias": "#gone:localhost" })).await.expect_error(400, "M_BAD_ALIAS");
}

#[tokio::test]
async fn deleting_an_alias_takes_it_out_of_the_canonical_alias() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    put_alias(&alice, "#main:localhost", &room_id).await;
    put_alias(&alice, "#alt:localhost", &room_id).await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.canonical_alias/");
    alice
        .put(&path, json!({ "alias": "#main:localhost", "alt_aliases": ["#alt:localhost"] }))
        .await
        .ok();
    let delete = |api: &Api, alias: &str| {
        let api = api.clone();
        let path = format!("/_matrix/client/v3/directory/room/{}", encode(alias));
        async move { api.delete(&path).await.ok() }
    };
    delete(&alice, "#alt:localhost").await;
    assert_eq!(
        alice.get(&path).await.ok(),
        json!({ "alias": "#main:localhost", "alt_aliases": [] })
    );
    delete(&alice, "#main:localhost").await;
    assert_eq!(alice.get(&path).await.ok(), json!({ "alt_aliases": [] }));

    // An alias's creator without power may still delete it; the state stays as it is.
    bob.join(&room_id).await;
    put_alias(&bob, "#bobs:localhost", &room_id).await;
    alice.put(&path, json!({ "alias": "#bobs:localhost" })).await.ok();
    delete(&bob, "#bobs:localhost").await;
    assert_eq!(alice.get(&path).await.ok()["alias"], "#bobs:localhost");
}

#[tokio::test]
async fn the_directory_names_each_rooms_join_rule_and_topics_are_rich() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let public = alice
        .create_room(json!({ "preset": "public_chat", "visibility": "public", "topic": "plans" }))
        .await;
    let knock = alice.create_room(json!({ "room_version": "7", "visibility": "public" })).await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{knock}/state/m.room.join_rules/"),
            json!({ "join_rule": "knock" }),
        )
        .await
        .ok();
    let directory = alice.get("/_matrix/client/v3/publicRooms").await.ok();
    let entry = |room_id: &str| {
        directory["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|room| room["room_id"] == room_id)
            .cloned()
    };
    assert_eq!(entry(&public).unwrap()["join_rule"], "public", "{directory}");
    assert_eq!(entry(&knock).unwrap()["join_rule"], "knock", "{directory}");
    assert_eq!(entry(&public).unwrap()["topic"], "plans");
    let filtered = alice.post("/_matrix/client/v3/publicRooms", json!({ "filter": {} })).await.ok();
    assert!(filtered["chunk"].as_array().unwrap().iter().all(|room| room["join_rule"].is_string()));

    // The topic carries its rich form; a rich topic's plain text is what the directory shows.
    let topic =
        alice.get(&format!("/_matrix/client/v3/rooms/{public}/state/m.room.topic/")).await.ok();
    assert_eq!(topic, json!({ "topic": "plans", "m.topic": { "m.text": [{ "body": "plans" }] } }));
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{public}/state/m.room.topic/"),
            json!({ "topic": "old", "m.topic": { "m.text": [
                { "mimetype": "text/html", "body": "<b>new</b>" }, { "body": "new" },
            ] } }),
        )
        .await
        .ok();
    let directory = alice.get("/_matrix/client/v3/publicRooms").await.ok();
    let entry =
        directory["chunk"].as_array().unwrap().iter().find(|room| room["room_id"] == public);
    assert_eq!(entry.unwrap()["topic"], "new");
}

#[tokio::test]
async fn push_rules_tags_and_direct_follow_a_user_to_an_upgraded_room() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat", "room_version": "10" })).await;
    bob.join(&room_id).await;
    for user in [&alice, &bob] {
        let path = format!("/_matrix/client/v3/pushrules/global/room/{}", encode(&room_id));
        user.put(&path, json!({ "actions": ["dont_notify"] })).await.ok();
    }
    let keyword = "/_matrix/client/v3/pushrules/global/override/loud";
    bob.put(
        keyword,
        json!({ "actions": ["notify"], "conditions": [
            { "kind": "event_match", "key": "room_id", "pattern": room_id },
        ] }),
    )
    .await
    .ok();
    bob.put(
        &format!("/_matrix/client/v3/user/{}/rooms/{room_id}/tags/u.work", encode(bob.user())),
        json!({ "order": 0.5 }),
    )
    .await
    .ok();
    let direct = format!("/_matrix/client/v3/user/{}/account_data/m.direct", encode(bob.user()));
    bob.put(&direct, json!({ alice.user(): [room_id] })).await.ok();

    let upgraded = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/upgrade"),
            json!({ "new_version": "11" }),
        )
        .await
        .ok();
    let new = upgraded["replacement_room"].as_str().unwrap().to_owned();
    bob.join(&new).await;

    for user in [&alice, &bob] {
        let rules = user.get("/_matrix/client/v3/pushrules/").await.ok();
        let room_rules: Vec<&Value> = rules["global"]["room"].as_array().unwrap().iter().collect();
        for id in [&room_id, &new] {
            let rule = room_rules.iter().find(|rule| rule["rule_id"] == id.as_str());
            assert_eq!(rule.unwrap()["actions"], json!(["dont_notify"]), "{rules}");
        }
    }
    let rules = bob.get("/_matrix/client/v3/pushrules/").await.ok();
    let copied = rules["global"]["override"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["rule_id"] == new.as_str())
        .unwrap_or_else(|| panic!("no copied override: {rules}"));
    assert_eq!(copied["conditions"][0]["pattern"], new.as_str());
    let tags = bob
        .get(&format!("/_matrix/client/v3/user/{}/rooms/{new}/tags", encode(bob.user())))
        .await
        .ok();
    assert_eq!(tags["tags"]["u.work"]["order"], 0.5);
    assert_eq!(bob.get(&direct).await.ok(), json!({ alice.user(): [room_id, new] }));
}

/// A room with the given version and join rules (`allow` for restricted rooms).
async fn room_with_rule(api: &Api, version: &str, join_rule: Value) -> String {
    let body = json!({ "room_version": version, "initial_state": [
        { "type": "m.room.join_rules", "state_key": "", "content": join_rule },
    ] });
    api.create_room(body).await
}

#[tokio::test]
async fn knocking_needs_version_seven_and_restricted_joins_version_eight() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let knock = |room_id: String| format!("/_matrix/client/v3/knock/{room_id}");
    let knock_rule = json!({ "join_rule": "knock" });
    for version in ["1", "6"] {
        let room_id = room_with_rule(&alice, version, knock_rule.clone()).await;
        bob.post(&knock(room_id), json!({})).await.expect_error(403, "M_FORBIDDEN");
    }
    for version in ["7", "12"] {
        let room_id = room_with_rule(&alice, version, knock_rule.clone()).await;
        bob.post(&knock(room_id.clone()), json!({})).await.ok();
        let sync = bob.sync("").await;
        assert!(sync["rooms"]["knock"].get(&room_id).is_some(), "{version}: {sync}");
    }

    // Bob is in the space that a restricted room allows.
    let space = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&space).await;
    let restricted = json!({ "join_rule": "restricted",
        "allow": [{ "type": "m.room_membership", "room_id": space }] });
    let room_id = room_with_rule(&alice, "7", restricted.clone()).await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/join");
    bob.post(&path, json!({})).await.expect_error(403, "M_FORBIDDEN");
    for version in ["8", "10", "12"] {
        let room_id = room_with_rule(&alice, version, restricted.clone()).await;
        let path = format!("/_matrix/client/v3/rooms/{room_id}/join");
        let joined = bob.post(&path, json!({})).await.ok();
        assert_eq!(joined["room_id"], room_id.as_str(), "{version}");
    }
}
