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
