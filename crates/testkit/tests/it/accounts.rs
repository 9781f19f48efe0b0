//! Accounts over HTTP: refresh tokens, login tokens, devices with user-interactive auth,
//! password changes, deactivation, profiles and the user directory.

use rhizome_testkit::{Api, TestServer};
use serde_json::{Value, json};

fn password_auth(user: &str, session: &Value) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": "a-long-password",
        "session": session,
    })
}

async fn login(api: &Api, user: &str, password: &str, extra: Value) -> rhizome_testkit::Response {
    let mut body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    api.post("/_matrix/client/v3/login", body).await
}

#[tokio::test]
async fn refresh_tokens_rotate_and_expire() {
    let server = TestServer::start_with(rhizome_testkit::Backend::Sqlite, |config| {
        config.sessions.refreshable_access_token_lifetime_secs = 1;
    })
    .await;
    Api::new_user(&server.base_url, "alice").await;
    let mut api = server.api();
    let session =
        login(&api, "alice", "a-long-password", json!({ "refresh_token": true })).await.ok();
    assert_eq!(session["expires_in_ms"], 1000);
    let refresh = session["refresh_token"].as_str().unwrap().to_owned();
    api.token = session["access_token"].as_str().map(str::to_owned);
    api.get("/_matrix/client/v3/account/whoami").await.ok();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let expired = api.get("/_matrix/client/v3/account/whoami").await;
    expired.expect_error(401, "M_UNKNOWN_TOKEN");
    assert_eq!(expired.body["soft_logout"], true, "an expired token is a soft logout");

    let renewed =
        api.post("/_matrix/client/v3/refresh", json!({ "refresh_token": refresh })).await.ok();
    api.token = renewed["access_token"].as_str().map(str::to_owned);
    let whoami = api.get("/_matrix/client/v3/account/whoami").await.ok();
    assert_eq!(whoami["device_id"], session["device_id"], "refreshing keeps the device");
    // A refresh token works once.
    api.post("/_matrix/client/v3/refresh", json!({ "refresh_token": refresh }))
        .await
        .expect_error(401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn a_login_token_signs_in_another_device_once() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let first = alice.post("/_matrix/client/v1/login/get_token", json!({})).await;
    assert_eq!(first.status.as_u16(), 401, "{}", first.body);
    let issued = alice
        .post(
            "/_matrix/client/v1/login/get_token",
            json!({ "auth": password_auth("alice", &first.body["session"]) }),
        )
        .await
        .ok();
    let token = issued["login_token"].as_str().unwrap();
    let api = server.api();
    let session = api
        .post("/_matrix/client/v3/login", json!({ "type": "m.login.token", "token": token }))
        .await
        .ok();
    assert_eq!(session["user_id"], "@alice:localhost");
    api.post("/_matrix/client/v3/login", json!({ "type": "m.login.token", "token": token }))
        .await
        .expect_error(403, "M_FORBIDDEN");
    let types = api.get("/_matrix/client/v3/login").await.ok();
    let flows: Vec<&str> = types["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|flow| flow["type"].as_str())
        .collect();
    assert_eq!(flows, vec!["m.login.password", "m.login.token"]);
}

#[tokio::test]
async fn devices_are_listed_renamed_and_deleted_with_the_password() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let mut phone = server.api();
    let session = login(
        &phone,
        "alice",
        "a-long-password",
        json!({ "initial_device_display_name": "phone" }),
    )
    .await
    .ok();
    phone.token = session["access_token"].as_str().map(str::to_owned);
    let phone_device = session["device_id"].as_str().unwrap().to_owned();

    let devices = alice.get("/_matrix/client/v3/devices").await.ok();
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
    assert!(
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|device| device["last_seen_ip"].is_null()),
        "addresses are never kept"
    );
    alice
        .put(
            &format!("/_matrix/client/v3/devices/{phone_device}"),
            json!({ "display_name": "old phone" }),
        )
        .await
        .ok();
    let device = alice.get(&format!("/_matrix/client/v3/devices/{phone_device}")).await.ok();
    assert_eq!(device["display_name"], "old phone");

    // Deleting needs the password.
    let path = format!("/_matrix/client/v3/devices/{phone_device}");
    let challenge = alice.call(reqwest::Method::DELETE, &path, Some(json!({}))).await;
    assert_eq!(challenge.status.as_u16(), 401);
    assert_eq!(challenge.body["flows"][0]["stages"][0], "m.login.password");
    let mut wrong = password_auth("alice", &challenge.body["session"]);
    wrong["password"] = json!("wrong password");
    let refused = alice.call(reqwest::Method::DELETE, &path, Some(json!({ "auth": wrong }))).await;
    assert_eq!(refused.status.as_u16(), 401);
    assert_eq!(refused.body["errcode"], "M_FORBIDDEN");
    phone.get("/_matrix/client/v3/account/whoami").await.ok();
    alice
        .call(
            reqwest::Method::DELETE,
            &path,
            Some(json!({ "auth": password_auth("alice", &challenge.body["session"]) })),
        )
        .await
        .ok();
    phone.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
    alice.get(&path).await.expect_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn password_changes_and_deactivation() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let mut other = server.api();
    other.token = login(&other, "alice", "a-long-password", json!({})).await.ok()["access_token"]
        .as_str()
        .map(str::to_owned);

    let challenge = alice
        .post(
            "/_matrix/client/v3/account/password",
            json!({ "new_password": "another-long-password" }),
        )
        .await;
    assert_eq!(challenge.status.as_u16(), 401);
    alice
        .post(
            "/_matrix/client/v3/account/password",
            json!({ "new_password": "another-long-password", "auth": password_auth("alice", &challenge.body["session"]) }),
        )
        .await
        .ok();
    other.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
    alice.get("/_matrix/client/v3/account/whoami").await.ok();
    login(&server.api(), "alice", "a-long-password", json!({}))
        .await
        .expect_error(403, "M_FORBIDDEN");
    login(&server.api(), "alice", "another-long-password", json!({})).await.ok();

    // Deactivation leaves rooms, ends sessions and keeps the name reserved.
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    let challenge = alice.post("/_matrix/client/v3/account/deactivate", json!({})).await;
    let mut auth = password_auth("alice", &challenge.body["session"]);
    auth["password"] = json!("another-long-password");
    alice.post("/_matrix/client/v3/account/deactivate", json!({ "auth": auth })).await.ok();
    login(&server.api(), "alice", "another-long-password", json!({}))
        .await
        .expect_error(403, "M_USER_DEACTIVATED");
    server
        .api()
        .get("/_matrix/client/v3/register/available?username=alice")
        .await
        .expect_error(400, "M_USER_IN_USE");
    let bob = Api::new_user(&server.base_url, "bob").await;
    bob.join(&room_id).await;
    let members = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/joined_members")).await.ok();
    assert!(
        members["joined"].get("@alice:localhost").is_none(),
        "a deactivated user is still in a room"
    );
}

#[tokio::test]
async fn profiles_and_the_user_directory() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let carol = Api::new_user(&server.base_url, "carol").await;
    alice
        .put(
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            json!({ "displayname": "Alice Liddell" }),
        )
        .await
        .ok();
    alice
        .put(
            "/_matrix/client/v3/profile/@alice:localhost/avatar_url",
            json!({ "avatar_url": "mxc://localhost/abc" }),
        )
        .await
        .ok();
    let profile = bob.get("/_matrix/client/v3/profile/@alice:localhost").await.ok();
    assert_eq!(
        (profile["displayname"].as_str(), profile["avatar_url"].as_str()),
        (Some("Alice Liddell"), Some("mxc://localhost/abc"))
    );
    bob.put(
        "/_matrix/client/v3/profile/@alice:localhost/displayname",
        json!({ "displayname": "not yours" }),
    )
    .await
    .expect_error(403, "M_FORBIDDEN");
    bob.get("/_matrix/client/v3/profile/@nobody:localhost").await.expect_error(404, "M_NOT_FOUND");

    // The directory finds users who share a room, not strangers.
    let room_id = alice.create_room(json!({ "invite": [bob.user()] })).await;
    bob.join(&room_id).await;
    let found = bob
        .post("/_matrix/client/v3/user_directory/search", json!({ "search_term": "liddell" }))
        .await
        .ok();
    assert_eq!(found["results"][0]["user_id"], "@alice:localhost");
    assert_eq!(found["results"][0]["display_name"], "Alice Liddell");
    let stranger = carol
        .post("/_matrix/client/v3/user_directory/search", json!({ "search_term": "liddell" }))
        .await
        .ok();
    assert!(stranger["results"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_register_request_without_auth_or_password_gets_the_flows() {
    // Element's sign-up page first sends only `initial_device_display_name` to learn the flows;
    // anything but the 401 challenge makes it show "Unable to query for supported registration
    // methods" and offer no form.
    let server = TestServer::start_with(rhizome_testkit::Backend::Sqlite, |config| {
        config.registration.mode = rhizome_core::config::RegistrationMode::Token;
    })
    .await;
    let token = server.services().create_registration_token(None, Some(1), None).await.unwrap();
    let api = server.api();
    let challenge = api
        .post("/_matrix/client/v3/register", json!({ "initial_device_display_name": "Element" }))
        .await;
    assert_eq!(challenge.status, 401, "body: {}", challenge.body);
    assert_eq!(challenge.body["flows"], json!([{ "stages": ["m.login.registration_token"] }]));
    let session = challenge.body["session"].clone();
    assert!(session.is_string());

    // The same session then completes with the form's fields and the token.
    let registered = api
        .post(
            "/_matrix/client/v3/register",
            json!({
                "username": "alice",
                "password": "a-long-password",
                "auth": { "type": "m.login.registration_token", "token": token.token, "session": session },
            }),
        )
        .await
        .ok();
    assert_eq!(registered["user_id"], "@alice:localhost");

    // A completed flow still needs a password; the token is not spent by such a request.
    let other = server.services().create_registration_token(None, Some(1), None).await.unwrap();
    let no_password = api
        .post(
            "/_matrix/client/v3/register",
            json!({ "username": "bob", "auth": { "type": "m.login.registration_token", "token": other.token } }),
        )
        .await;
    no_password.expect_error(400, "M_MISSING_PARAM");
    let validity = api
        .get(&format!(
            "/_matrix/client/v1/register/m.login.registration_token/validity?token={}",
            other.token
        ))
        .await
        .ok();
    assert_eq!(validity["valid"], true);
}

#[tokio::test]
async fn sessions_end_together_pushers_are_kept_and_ignored_users_go_quiet() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let mut session = server.api();
        let body = login(&session, "alice", "a-long-password", json!({})).await.ok();
        session.token = body["access_token"].as_str().map(str::to_owned);
        sessions.push((session, body["device_id"].as_str().unwrap().to_owned()));
    }

    // A pusher: set, listed, removed by setting kind null.
    let pusher = json!({
        "pushkey": "device-push-key", "kind": "http", "app_id": "org.example.app",
        "app_display_name": "Example", "device_display_name": "phone", "lang": "en",
        "data": { "url": "https://push.example.org/_matrix/push/v1/notify", "format": "event_id_only" },
    });
    alice.post("/_matrix/client/v3/pushers/set", pusher.clone()).await.ok();
    let listed = alice.get("/_matrix/client/v3/pushers").await.ok();
    assert_eq!(listed["pushers"][0]["pushkey"], "device-push-key");
    assert_eq!(listed["pushers"][0]["data"]["format"], "event_id_only");
    assert!(
        bob.get("/_matrix/client/v3/pushers").await.ok()["pushers"].as_array().unwrap().is_empty()
    );
    let mut removal = pusher;
    removal["kind"] = Value::Null;
    alice.post("/_matrix/client/v3/pushers/set", removal).await.ok();
    assert!(
        alice.get("/_matrix/client/v3/pushers").await.ok()["pushers"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Ignoring Bob hides his messages from Alice.
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room_id).await;
    alice
        .put(
            "/_matrix/client/v3/user/@alice:localhost/account_data/m.ignored_user_list",
            json!({ "ignored_users": { bob.user(): {} } }),
        )
        .await
        .ok();
    bob.send_text(&room_id, "can you hear me").await;
    alice.send_text(&room_id, "quiet in here").await;
    let page = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b")).await.ok();
    let senders: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["sender"].as_str().unwrap())
        .collect();
    assert_eq!(senders, ["@alice:localhost"]);
    let sync = alice.sync("timeout=0").await;
    let timeline = sync["rooms"]["join"][&room_id]["timeline"]["events"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .all(|event| event["sender"] != bob.user() || event["type"] == "m.room.member"),
        "{timeline:?}"
    );

    // Deleting several devices at once, with the password.
    let devices: Vec<&str> = sessions.iter().map(|(_, device)| device.as_str()).collect();
    let challenge =
        alice.post("/_matrix/client/v3/delete_devices", json!({ "devices": devices })).await;
    assert_eq!(challenge.status.as_u16(), 401);
    alice
        .post(
            "/_matrix/client/v3/delete_devices",
            json!({ "devices": devices, "auth": password_auth("alice", &challenge.body["session"]) }),
        )
        .await
        .ok();
    for (session, _) in &sessions {
        session.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
    }
    alice.get("/_matrix/client/v3/account/whoami").await.ok();

    // Logging out everywhere ends every session, the one that asked included.
    let mut other = server.api();
    other.token = login(&other, "alice", "a-long-password", json!({})).await.ok()["access_token"]
        .as_str()
        .map(str::to_owned);
    alice.post("/_matrix/client/v3/logout/all", json!({})).await.ok();
    alice.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
    other.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
}
