//! Room features over HTTP: account data, tags and push rules, aliases and the directory,
//! knocking and forgetting, upgrades, `/timestamp_to_event`, search and `/members` at a point
//! in time.

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::json;

#[tokio::test]
async fn account_data_tags_and_push_rules() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    alice
        .put(
            "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.settings",
            json!({ "theme": "dark" }),
        )
        .await
        .ok();
    let data = alice
        .get("/_matrix/client/v3/user/@alice:localhost/account_data/org.example.settings")
        .await
        .ok();
    assert_eq!(data["theme"], "dark");
    alice
        .get("/_matrix/client/v3/user/@alice:localhost/account_data/org.example.unset")
        .await
        .expect_error(404, "M_NOT_FOUND");
    alice
        .put("/_matrix/client/v3/user/@bob:localhost/account_data/org.example.settings", json!({}))
        .await
        .expect_error(403, "M_FORBIDDEN");
    alice
        .put(
            &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room_id}/tags/m.favourite"),
            json!({ "order": 0.5 }),
        )
        .await
        .ok();
    let tags = alice
        .get(&format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room_id}/tags"))
        .await
        .ok();
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5);
    let sync = alice.sync("timeout=0").await;
    let room_data = sync["rooms"]["join"][&room_id]["account_data"]["events"].as_array().unwrap();
    assert!(room_data.iter().any(|event| event["type"] == "m.tag"));
    let global = sync["account_data"]["events"].as_array().unwrap();
    assert!(
        global.iter().any(|event| event["type"] == "m.push_rules"),
        "the push rules come with the first sync"
    );

    // Push rules: add a keyword rule, disable it, delete it.
    let path = "/_matrix/client/v3/pushrules/global/content/lunch";
    alice.put(path, json!({ "pattern": "lunch", "actions": ["notify"] })).await.ok();
    let rule = alice.get(path).await.ok();
    assert_eq!(rule["pattern"], "lunch");
    alice.put(&format!("{path}/enabled"), json!({ "enabled": false })).await.ok();
    assert_eq!(alice.get(&format!("{path}/enabled")).await.ok()["enabled"], false);
    alice.delete(path).await.ok();
    alice.get(path).await.expect_error(404, "M_NOT_FOUND");
    alice
        .delete("/_matrix/client/v3/pushrules/global/override/.m.rule.master")
        .await
        .expect_error(400, "M_INVALID_PARAM");
    let all = alice.get("/_matrix/client/v3/pushrules/").await.ok();
    assert!(
        all["global"]["override"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| rule["rule_id"] == ".m.rule.master")
    );
}

#[tokio::test]
async fn aliases_and_the_public_directory() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice
        .create_room(
            json!({ "room_alias_name": "garden", "name": "Community garden", "topic": "tomatoes" }),
        )
        .await;
    let alias = encode("#garden:localhost");
    assert_eq!(
        bob.get(&format!("/_matrix/client/v3/directory/room/{alias}")).await.ok()["room_id"],
        room_id.as_str()
    );
    alice
        .post("/_matrix/client/v3/createRoom", json!({ "room_alias_name": "garden" }))
        .await
        .expect_error(400, "M_ROOM_IN_USE");
    let extra = encode("#plots:localhost");
    alice
        .put(&format!("/_matrix/client/v3/directory/room/{extra}"), json!({ "room_id": room_id }))
        .await
        .ok();
    alice
        .put(&format!("/_matrix/client/v3/directory/room/{extra}"), json!({ "room_id": room_id }))
        .await
        .expect_error(409, "M_UNKNOWN");
    bob.delete(&format!("/_matrix/client/v3/directory/room/{extra}"))
        .await
        .expect_error(403, "M_FORBIDDEN");
    let aliases = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/aliases")).await.ok();
    assert_eq!(aliases["aliases"].as_array().unwrap().len(), 2);
    alice.delete(&format!("/_matrix/client/v3/directory/room/{extra}")).await.ok();
    bob.get(&format!("/_matrix/client/v3/directory/room/{extra}"))
        .await
        .expect_error(404, "M_NOT_FOUND");

    // Listing in the directory needs power in the room.
    assert!(
        bob.get("/_matrix/client/v3/publicRooms").await.ok()["chunk"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let visibility = format!("/_matrix/client/v3/directory/list/room/{room_id}");
    bob.put(&visibility, json!({ "visibility": "public" })).await.expect_error(403, "M_FORBIDDEN");
    alice.put(&visibility, json!({ "visibility": "public" })).await.ok();
    assert_eq!(bob.get(&visibility).await.ok()["visibility"], "public");
    let listed = bob
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({ "filter": { "generic_search_term": "tomato" } }),
        )
        .await
        .ok();
    assert_eq!(listed["chunk"][0]["room_id"], room_id.as_str());
    assert_eq!(listed["chunk"][0]["canonical_alias"], "#garden:localhost");
    let none = bob
        .post(
            "/_matrix/client/v3/publicRooms",
            json!({ "filter": { "generic_search_term": "cucumber" } }),
        )
        .await
        .ok();
    assert!(none["chunk"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn knocking_and_forgetting() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice
        .create_room(json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }] }))
        .await;
    bob.post(&format!("/_matrix/client/v3/join/{room_id}"), json!({}))
        .await
        .expect_error(403, "M_FORBIDDEN");
    bob.post(&format!("/_matrix/client/v3/knock/{room_id}"), json!({ "reason": "let me in" }))
        .await
        .ok();
    let knocked = bob.sync("timeout=0").await;
    assert!(knocked["rooms"]["knock"][&room_id]["knock_state"]["events"].as_array().is_some());
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({ "user_id": bob.user() }),
        )
        .await
        .ok();
    bob.join(&room_id).await;
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/forget"), json!({}))
        .await
        .expect_error(400, "M_UNKNOWN");
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/forget"), json!({})).await.ok();
    let filter = encode(&json!({ "room": { "include_leave": true } }).to_string());
    let after = bob.sync(&format!("filter={filter}&timeout=0")).await;
    assert!(after["rooms"]["leave"][&room_id].is_null(), "a forgotten room still shows");
}

#[tokio::test]
async fn upgrading_a_room_moves_people_to_its_successor() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let old = alice.create_room(json!({ "room_version": "11", "preset": "public_chat", "name": "assembly", "room_alias_name": "assembly" })).await;
    bob.join(&old).await;
    let mallory = Api::new_user(&server.base_url, "mallory").await;
    mallory.join(&old).await;
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{old}/ban"),
            json!({ "user_id": mallory.user(), "reason": "spam" }),
        )
        .await
        .ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), json!({ "new_version": "12" }))
        .await
        .expect_error(403, "M_FORBIDDEN");
    alice
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), json!({ "new_version": "13" }))
        .await
        .expect_error(400, "M_UNSUPPORTED_ROOM_VERSION");
    let upgraded = alice
        .post(&format!("/_matrix/client/v3/rooms/{old}/upgrade"), json!({ "new_version": "12" }))
        .await
        .ok();
    let new = upgraded["replacement_room"].as_str().unwrap().to_owned();
    let tombstone =
        bob.get(&format!("/_matrix/client/v3/rooms/{old}/state/m.room.tombstone/")).await.ok();
    assert_eq!(tombstone["replacement_room"], new.as_str());
    let create =
        alice.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.create/")).await.ok();
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["predecessor"]["room_id"], old.as_str());
    assert_eq!(
        alice.get(&format!("/_matrix/client/v3/rooms/{new}/state/m.room.name/")).await.ok()["name"],
        "assembly"
    );
    let alias = encode("#assembly:localhost");
    assert_eq!(
        bob.get(&format!("/_matrix/client/v3/directory/room/{alias}")).await.ok()["room_id"],
        new.as_str()
    );
    // The old room is muted for ordinary members; Bob can follow to the new one.
    let path = format!("/_matrix/client/v3/rooms/{old}/send/m.room.message/late");
    bob.put(&path, json!({ "msgtype": "m.text", "body": "late" }))
        .await
        .expect_error(403, "M_FORBIDDEN");
    bob.join(&new).await;
    // The ban came along: the upgrade is no way back in.
    let ban = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{new}/state/m.room.member/{}",
            encode(mallory.user())
        ))
        .await
        .ok();
    assert_eq!(ban["membership"], "ban");
    assert_eq!(ban["reason"], "spam");
    mallory
        .post(&format!("/_matrix/client/v3/join/{}", encode(&new)), json!({}))
        .await
        .expect_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn timestamps_search_and_members_in_the_past() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let first = alice.send_text(&room_id, "The quick brown fox").await;
    let at = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    bob.join(&room_id).await;
    bob.send_text(&room_id, "jumps over the lazy dog").await;

    let event = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{first}")).await.ok();
    let ts = event["origin_server_ts"].as_u64().unwrap();
    let found = alice
        .get(&format!("/_matrix/client/v1/rooms/{room_id}/timestamp_to_event?ts={ts}&dir=f"))
        .await
        .ok();
    assert_eq!(found["event_id"], first.as_str());
    alice
        .get(&format!("/_matrix/client/v1/rooms/{room_id}/timestamp_to_event?ts=1&dir=b"))
        .await
        .expect_error(404, "M_NOT_FOUND");

    let search = json!({ "search_categories": { "room_events": { "search_term": "LAZY" } } });
    let results = alice.post("/_matrix/client/v3/search", search.clone()).await.ok();
    let hits = results["search_categories"]["room_events"]["results"].as_array().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["result"]["content"]["body"], "jumps over the lazy dog");
    let stranger = Api::new_user(&server.base_url, "carol").await;
    let none = stranger.post("/_matrix/client/v3/search", search).await.ok();
    let results = none["search_categories"]["room_events"]["results"].as_array();
    assert!(results.is_none_or(|results| results.is_empty()), "a stranger found messages: {none}");

    let now = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/members")).await.ok();
    assert_eq!(now["chunk"].as_array().unwrap().len(), 2);
    let then = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/members?at={at}")).await;
    let then = then.ok();
    assert_eq!(then["chunk"].as_array().unwrap().len(), 1, "only Alice was there then");
    let not_joined = alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/members?not_membership=join"))
        .await
        .ok();
    assert!(not_joined["chunk"].as_array().unwrap().is_empty());

    // Someone who left sees the members as they were when they left, whatever `at` they pass.
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({})).await.ok();
    let dave = Api::new_user(&server.base_url, "dave").await;
    dave.join(&room_id).await;
    let latest = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    for query in [String::new(), format!("?at={latest}")] {
        let seen = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/members{query}")).await;
        let seen = seen.ok();
        let members: Vec<&str> = seen["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["state_key"].as_str().unwrap())
            .collect();
        assert!(!members.contains(&dave.user()), "{query}: saw a member who came later");
        assert_eq!(members.len(), 2, "{query}: {members:?}");
    }
}

#[tokio::test]
async fn one_user_creating_rooms_concurrently_gets_distinct_rooms() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            alice.create_room(json!({ "preset": "private_chat" })).await
        }));
    }
    let mut rooms = Vec::new();
    for task in tasks {
        rooms.push(task.await.expect("every createRoom succeeds"));
    }
    rooms.sort();
    rooms.dedup();
    assert_eq!(rooms.len(), 8, "two creations made the same room");
}

#[tokio::test]
async fn rooms_of_each_version_by_alias_and_with_power_level_overrides() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let default = alice.create_room(json!({})).await;
    let create =
        alice.get(&format!("/_matrix/client/v3/rooms/{default}/state/m.room.create/")).await.ok();
    assert_eq!(create["room_version"], "12", "the spec's recommended version is the default");
    for version in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        let alias = format!("v{version}");
        let room_id = alice
            .create_room(json!({
                "room_version": version, "preset": "public_chat", "room_alias_name": alias,
                "power_level_content_override": { "events": { "m.room.topic": 0 }, "invite": 0 },
            }))
            .await;
        let create = alice
            .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.create/"))
            .await
            .ok();
        assert_eq!(create["room_version"], version);
        // Bob joins by alias, then may set the topic, as the override allows.
        let joined = bob.join(&format!("#{alias}:localhost")).await;
        assert_eq!(joined["room_id"], room_id.as_str());
        bob.put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/"),
            json!({ "topic": format!("version {version}") }),
        )
        .await
        .ok();
        bob.put(
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"),
            json!({ "name": "not allowed" }),
        )
        .await
        .expect_error(403, "M_FORBIDDEN");
        let levels = alice
            .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/"))
            .await
            .ok();
        assert_eq!(levels["invite"], 0);
        assert_eq!(levels["events"]["m.room.topic"], 0);
        // Messages, redactions and the room's history work in every version.
        let event_id = bob.send_text(&room_id, "hello").await;
        alice
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{room_id}/redact/{}/r{version}",
                    encode(&event_id)
                ),
                json!({ "reason": "test" }),
            )
            .await
            .ok();
        let messages = alice
            .get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=5"))
            .await
            .ok();
        let redacted = messages["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|event| event["event_id"] == event_id.as_str())
            .unwrap();
        assert_eq!(redacted["content"], json!({}), "{version}");
    }
    alice
        .post("/_matrix/client/v3/createRoom", json!({ "room_version": "13" }))
        .await
        .expect_error(400, "M_UNSUPPORTED_ROOM_VERSION");
    bob.post(&format!("/_matrix/client/v3/join/{}", encode("#nowhere:localhost")), json!({}))
        .await
        .expect_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn the_default_room_version_can_come_from_the_environment_as_a_number() {
    let variables = [("RHIZOME_ROOMS__DEFAULT_ROOM_VERSION".to_owned(), "10".to_owned())];
    let parsed = rhizome_core::Config::from_toml_and_env("", variables).unwrap();
    let server = TestServer::start_with(rhizome_testkit::Backend::Sqlite, |config| {
        config.rooms = parsed.rooms.clone();
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let create =
        alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.create/")).await.ok();
    assert_eq!(create["room_version"], "10");
    let capabilities = alice.get("/_matrix/client/v3/capabilities").await.ok();
    assert_eq!(capabilities["capabilities"]["m.room_versions"]["default"], "10");
}
