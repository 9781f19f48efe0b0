//! Small behaviours the Matrix test suites check: statuses and shapes of single endpoints.

use rhizome_testkit::{Api, TestServer};
use serde_json::json;

#[tokio::test]
async fn context_outside_a_room_is_forbidden_and_a_hidden_event_not_found() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let stranger = Api::new_user(&server.base_url, "stranger").await;
    let room_id = alice.create_room(json!({ "preset": "private_chat" })).await;
    let said = alice.send_text(&room_id, "hello").await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/context/{said}");
    stranger.get(&path).await.expect_error(403, "M_FORBIDDEN");
    assert_eq!(alice.get(&path).await.ok()["event"]["event_id"], said.as_str());
    let missing = format!("/_matrix/client/v3/rooms/{room_id}/context/$nothing");
    alice.get(&missing).await.expect_error(404, "M_NOT_FOUND");

    // A world-readable room may be read by anyone.
    let open = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "",
            "content": { "history_visibility": "world_readable" } }] }))
        .await;
    let said = alice.send_text(&open, "for all").await;
    let path = format!("/_matrix/client/v3/rooms/{open}/context/{said}");
    assert_eq!(stranger.get(&path).await.ok()["event"]["event_id"], said.as_str());
}

#[tokio::test]
async fn capabilities_name_every_account_capability() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let body = alice.get("/_matrix/client/v3/capabilities").await.ok();
    let capabilities = &body["capabilities"];
    for name in ["m.change_password", "m.set_displayname", "m.set_avatar_url"] {
        assert_eq!(capabilities[name], json!({ "enabled": true }), "{name}: {body}");
    }
    assert_eq!(capabilities["m.3pid_changes"], json!({ "enabled": false }));
    assert!(capabilities["m.room_versions"]["available"]["12"].is_string(), "{body}");
    server.api().get("/_matrix/client/v3/capabilities").await.expect_error(401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn typing_without_a_timeout_lasts_a_while() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/typing/{}", alice.user());
    alice.put(&path, json!({ "typing": true })).await.ok();
    let sync = alice.sync("timeout=0").await;
    let ephemeral = &sync["rooms"]["join"][&room_id]["ephemeral"]["events"];
    let typing = ephemeral.as_array().unwrap().iter().find(|event| event["type"] == "m.typing");
    assert_eq!(typing.unwrap()["content"]["user_ids"], json!([alice.user()]), "{sync}");
    alice.put(&path, json!({ "typing": false })).await.ok();
    alice.put(&path, json!({ "typing": "yes" })).await.expect_error(400, "M_BAD_JSON");
}

#[tokio::test]
async fn redacting_an_event_of_another_room_is_a_bad_request() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let alices = alice.create_room(json!({})).await;
    let bobs = bob.create_room(json!({})).await;
    let said = alice.send_text(&alices, "mine").await;
    let path = format!("/_matrix/client/v3/rooms/{bobs}/redact/{said}/t1");
    bob.put(&path, json!({})).await.expect_error(400, "M_INVALID_PARAM");
    let own = format!("/_matrix/client/v3/rooms/{bobs}/redact/$unknown/t2");
    bob.put(&own, json!({})).await.expect_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn openid_userinfo_without_a_token_is_unauthorized() {
    let server = TestServer::start().await;
    let api = server.api();
    let path = "/_matrix/federation/v1/openid/userinfo";
    api.get(path).await.expect_error(401, "M_MISSING_TOKEN");
    api.get(&format!("{path}?access_token=wrong")).await.expect_error(401, "M_UNKNOWN_TOKEN");
}
