//! Bad input gets the Matrix error the spec gives, never a panic or a 500, and changes nothing.

use reqwest::Method;
use rhizome_testkit::{Api, Backend, TestServer};
use serde_json::json;

#[tokio::test]
async fn unknown_endpoints_and_methods_are_unrecognized() {
    let server = TestServer::start().await;
    let api = server.api();
    api.get("/_matrix/client/v3/no/such/thing").await.expect_error(404, "M_UNRECOGNIZED");
    api.call(Method::DELETE, "/_matrix/client/versions", None)
        .await
        .expect_error(405, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn malformed_bodies_are_not_json_or_bad_json() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1");
    alice
        .raw(Method::PUT, &path, Some(b"{not json".to_vec()))
        .await
        .expect_error(400, "M_NOT_JSON");
    // Valid JSON of the wrong shape.
    alice.raw(Method::PUT, &path, Some(b"[1, 2]".to_vec())).await.expect_error(400, "M_BAD_JSON");
    alice
        .post("/_matrix/client/v3/createRoom", json!({ "invite": "not-a-list" }))
        .await
        .expect_error(400, "M_BAD_JSON");
    alice
        .post("/_matrix/client/v3/login", json!({ "type": 7 }))
        .await
        .expect_error(400, "M_BAD_JSON");
    // Bad query strings and path segments are bad parameters, not bad JSON.
    alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=many"))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=sideways"))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    alice
        .get("/_matrix/client/v3/rooms/not-a-room-id/state")
        .await
        .expect_error(400, "M_INVALID_PARAM");
    // Nothing was sent.
    let page = alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=50"))
        .await
        .ok();
    assert!(
        !page["chunk"].as_array().unwrap().iter().any(|event| event["type"] == "m.room.message")
    );
}

#[tokio::test]
async fn oversized_bodies_are_too_large() {
    let server =
        TestServer::start_with(Backend::Sqlite, |config| config.limits.max_request_bytes = 10_000)
            .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let body = json!({ "msgtype": "m.text", "body": "x".repeat(20_000) });
    let response = alice
        .put(&format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/big"), body)
        .await;
    response.expect_error(413, "M_TOO_LARGE");
}

#[tokio::test]
async fn events_over_the_pdu_size_limit_are_refused() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let body = json!({ "msgtype": "m.text", "body": "x".repeat(70_000) });
    let response = alice
        .put(&format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/big"), body)
        .await;
    response.expect_error(413, "M_TOO_LARGE");
}

#[tokio::test]
async fn tokens_are_checked() {
    let server = TestServer::start().await;
    let mut api = server.api();
    api.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_MISSING_TOKEN");
    api.token = Some("syt_not_a_real_token".into());
    let response = api.get("/_matrix/client/v3/account/whoami").await;
    response.expect_error(401, "M_UNKNOWN_TOKEN");
    assert_ne!(response.body["soft_logout"], true, "an unknown token is not a soft logout");
    // A logged-out token stops working.
    let mut alice = Api::new_user(&server.base_url, "alice").await;
    alice.post("/_matrix/client/v3/logout", json!({})).await.ok();
    alice.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
    alice.token = None;
    let login = alice
        .post(
            "/_matrix/client/v3/login",
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "wrong" }),
        )
        .await;
    login.expect_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn forbidden_actions_are_forbidden_and_change_nothing() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat", "name": "before" })).await;
    // Not in the room: cannot send.
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1");
    bob.put(&path, json!({ "msgtype": "m.text", "body": "hi" }))
        .await
        .expect_error(403, "M_FORBIDDEN");
    bob.join(&room_id).await;
    // In the room at power 0: cannot rename, kick or change power levels.
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"),
        json!({ "name": "after" }),
    )
    .await
    .expect_error(403, "M_FORBIDDEN");
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/kick"),
        json!({ "user_id": alice.user() }),
    )
    .await
    .expect_error(403, "M_FORBIDDEN");
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels/"),
        json!({ "users": { bob.user(): 100 } }),
    )
    .await
    .expect_error(403, "M_FORBIDDEN");
    let name =
        alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/")).await.ok();
    assert_eq!(name["name"], "before");
    // Changing someone else's membership through the state endpoint is refused.
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", alice.user()),
        json!({ "membership": "leave" }),
    )
    .await
    .expect_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn registration_errors() {
    let server = TestServer::start().await;
    let api = server.api();
    Api::new_user(&server.base_url, "alice").await;
    api.get("/_matrix/client/v3/register/available?username=alice")
        .await
        .expect_error(400, "M_USER_IN_USE");
    api.get("/_matrix/client/v3/register/available?username=Bad%20Name!")
        .await
        .expect_error(400, "M_INVALID_USERNAME");
    assert_eq!(
        api.get("/_matrix/client/v3/register/available?username=bob").await.ok()["available"],
        true
    );
    let short = api
        .post("/_matrix/client/v3/register", json!({ "username": "carol", "password": "short" }))
        .await;
    short.expect_error(400, "M_WEAK_PASSWORD");
    let guest = api.post("/_matrix/client/v3/register?kind=guest", json!({})).await;
    guest.expect_error(403, "M_GUEST_ACCESS_FORBIDDEN");
}

#[tokio::test]
async fn rate_limits_answer_limit_exceeded_with_a_retry_time() {
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.rate_limits.enabled = true;
        config.rate_limits.login = rhizome_core::config::RateLimit { per_second: 0.1, burst: 3 };
    })
    .await;
    let api = server.api();
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "nobody" }, "password": "x" });
    for _ in 0..3 {
        api.post("/_matrix/client/v3/login", body.clone()).await.expect_error(403, "M_FORBIDDEN");
    }
    let limited = api.post("/_matrix/client/v3/login", body).await;
    limited.expect_error(429, "M_LIMIT_EXCEEDED");
    assert!(limited.body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", limited.body);
}

/// A request as a trusted reverse proxy would forward it for `client`.
async fn forwarded(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    client: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", server.base_url))
        .header("x-forwarded-for", client)
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn sign_ups_and_sending_are_limited_per_address_and_per_user() {
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        use rhizome_core::config::RateLimit;
        config.rate_limits.enabled = true;
        config.rate_limits.registration = RateLimit { per_second: 0.001, burst: 2 };
        config.rate_limits.message = RateLimit { per_second: 0.001, burst: 3 };
        config.rate_limits.message_per_address = RateLimit { per_second: 0.001, burst: 5 };
        config.rate_limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    // Two sign-ups from this address (each two requests: the flows, then the sign-up), then no
    // more from it; another address behind the proxy still may.
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let register = json!({ "username": "carol", "password": "a-long-password" });
    server
        .api()
        .post("/_matrix/client/v3/register", register.clone())
        .await
        .expect_error(429, "M_LIMIT_EXCEEDED");
    let (status, flows) = forwarded(
        &server,
        Method::POST,
        "/_matrix/client/v3/register",
        None,
        "10.0.0.2",
        register.clone(),
    )
    .await;
    assert_eq!(status, 401, "{flows}");
    let mut register = register;
    register["auth"] = json!({ "type": "m.login.dummy", "session": flows["session"] });
    let (status, carol) =
        forwarded(&server, Method::POST, "/_matrix/client/v3/register", None, "10.0.0.2", register)
            .await;
    assert_eq!(status, 200, "{carol}");

    // Sending: three per user, five per address.
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    for index in 0..3 {
        alice.send_text(&room_id, &format!("alice {index}")).await;
    }
    let path = |txn: &str| format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
    let text = json!({ "msgtype": "m.text", "body": "more" });
    let limited = alice.put(&path("a4"), text.clone()).await;
    limited.expect_error(429, "M_LIMIT_EXCEEDED");
    assert!(limited.body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
    bob.send_text(&room_id, "bob 1").await;
    bob.send_text(&room_id, "bob 2").await;
    // Bob has a message left, but the address has none.
    bob.put(&path("b3"), text.clone()).await.expect_error(429, "M_LIMIT_EXCEEDED");
    let (status, sent) =
        forwarded(&server, Method::PUT, &path("b3"), bob.token.as_deref(), "10.0.0.9", text).await;
    assert_eq!(status, 200, "{sent}");
}

#[tokio::test]
async fn the_same_checks_hold_on_postgresql() {
    let server = TestServer::start_with(Backend::Postgres, |_| {}).await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"),
        json!({ "name": "x" }),
    )
    .await
    .expect_error(403, "M_FORBIDDEN");
    let event_id = alice.send_text(&room_id, "hello from postgres").await;
    let event = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/event/{event_id}")).await.ok();
    assert_eq!(event["content"]["body"], "hello from postgres");
}
