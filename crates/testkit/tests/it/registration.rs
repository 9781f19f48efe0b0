//! Registration and user-interactive authentication as the Matrix test suites check them:
//! the challenge's shape, repeated and resumed sessions, other users' passwords, bad bytes; a
//! session keeps only the hash of the password its first request gave.

use reqwest::Method;
use rhizome_testkit::{Api, Backend, TestServer};
use serde_json::{Value, json};

const REGISTER: &str = "/_matrix/client/v3/register";

#[tokio::test]
async fn every_challenge_carries_params() {
    let server = TestServer::start().await;
    let anonymous = server.api();
    let challenge = anonymous.post(REGISTER, json!({})).await;
    assert_eq!(challenge.status, 401);
    assert!(challenge.body["params"].is_object(), "{}", challenge.body);
    let alice = Api::new_user(&server.base_url, "alice").await;
    let devices = alice.get("/_matrix/client/v3/devices").await.ok();
    let device = devices["devices"][0]["device_id"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/devices/{device}");
    let challenge = alice.call(Method::DELETE, &path, Some(json!({}))).await;
    assert_eq!(challenge.status, 401);
    assert_eq!(challenge.body["params"], json!({}), "{}", challenge.body);
}

#[tokio::test]
async fn authenticating_as_another_user_is_forbidden() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let devices = alice.get("/_matrix/client/v3/devices").await.ok();
    let device = devices["devices"][0]["device_id"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/devices/{device}");
    let as_bob = json!({ "auth": {
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": bob.user() },
        "password": "a-long-password",
    } });
    let refused = alice.call(Method::DELETE, &path, Some(as_bob)).await;
    refused.expect_error(403, "M_FORBIDDEN");
    alice.get(&path).await.ok();
}

#[tokio::test]
async fn a_completed_registration_repeated_answers_the_same_user() {
    let server = TestServer::start().await;
    let api = server.api();
    for username in [None, Some("carol")] {
        let mut first = json!({ "password": "sUp3rs3kr1t" });
        if let Some(username) = username {
            first["username"] = json!(username);
        }
        let challenge = api.post(REGISTER, first.clone()).await;
        assert_eq!(challenge.status, 401);
        let mut again = first.clone();
        again["auth"] = json!({ "type": "m.login.dummy", "session": challenge.body["session"] });
        let registered = api.post(REGISTER, again.clone()).await.ok();
        let repeated = api.post(REGISTER, again).await.ok();
        assert_eq!(repeated["user_id"], registered["user_id"], "{repeated}");
        assert!(repeated["access_token"].is_string());
        assert_ne!(repeated["access_token"], registered["access_token"]);
        if let Some(username) = username {
            assert_eq!(registered["user_id"], format!("@{username}:localhost"));
        }
    }
}

#[tokio::test]
async fn registration_remembers_the_parameters_of_its_first_request() {
    let server = TestServer::start().await;
    let api = server.api();
    let challenge = api
        .post(
            REGISTER,
            json!({ "username": "dave", "password": "sUp3rs3kr1t", "device_id": "xyzzy",
                    "initial_device_display_name": "display_name" }),
        )
        .await;
    assert_eq!(challenge.status, 401);
    let session = &challenge.body["session"];
    let registered = api
        .post(REGISTER, json!({ "auth": { "type": "m.login.dummy", "session": session } }))
        .await
        .ok();
    assert_eq!(registered["user_id"], "@dave:localhost");
    assert_eq!(registered["device_id"], "xyzzy");
    let mut dave = server.api();
    dave.token = registered["access_token"].as_str().map(str::to_owned);
    let device = dave.get("/_matrix/client/v3/devices/xyzzy").await.ok();
    assert_eq!(device["display_name"], "display_name");
    // The password came along too.
    let login = server
        .api()
        .post(
            "/_matrix/client/v3/login",
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "dave" },
                    "password": "sUp3rs3kr1t" }),
        )
        .await;
    login.ok();
}

#[tokio::test]
async fn invalid_utf8_is_not_json_before_any_authentication() {
    let server = TestServer::start().await;
    let api = server.api();
    let body = b"{ \"username\": \"a\x81\" }".to_vec();
    api.raw(Method::POST, REGISTER, Some(body.clone())).await.expect_error(400, "M_NOT_JSON");
    let alice = Api::new_user(&server.base_url, "alice").await;
    let path = "/_matrix/client/v3/account/password";
    alice.raw(Method::POST, path, Some(body)).await.expect_error(400, "M_NOT_JSON");
}

#[tokio::test]
async fn a_registration_session_keeps_the_password_only_as_the_accounts_hash() {
    let password = "a-distinctive-password-1234";
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let server = TestServer::start_with(backend, |config| {
            config.registration.mode = rhizome_core::config::RegistrationMode::Token;
        })
        .await;
        let services = server.services();
        let token = services.create_registration_token(None, Some(1), None).await.unwrap().token;
        let api = server.api();
        let first = json!({ "username": "erin", "password": password });
        let challenge = api.post(REGISTER, first).await;
        assert_eq!(challenge.status, 401, "{}", challenge.body);
        let session = challenge.body["session"].as_str().unwrap();

        // The row the next request (perhaps in another process) reads.
        let now = rhizome_core::clock::now_millis();
        let stored = services.store.get_client_session("uia", session, now).await.unwrap();
        let stored = stored.expect("the session is stored");
        assert!(!stored.contains(password), "a plain password is stored: {stored}");
        let stored: Value = serde_json::from_str(&stored).unwrap();
        let stored_hash = stored["params"]["password_hash"].as_str().unwrap().to_owned();
        assert!(stored_hash.starts_with("$argon2id$"), "{stored_hash}");

        // Completed without the password: the account gets the session's hash.
        let auth =
            json!({ "type": "m.login.registration_token", "token": token, "session": session });
        let registered = api.post(REGISTER, json!({ "auth": auth })).await.ok();
        assert_eq!(registered["user_id"], "@erin:localhost");
        let user_id = ruma::user_id!("@erin:localhost");
        let account = services.store.get_user(user_id).await.unwrap().unwrap();
        assert_eq!(account.password_hash.as_deref(), Some(stored_hash.as_str()));
        let login = |password: &str| {
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "erin" },
                    "password": password })
        };
        api.post("/_matrix/client/v3/login", login(password)).await.ok();
        let wrong = api.post("/_matrix/client/v3/login", login("not-the-password")).await;
        wrong.expect_error(403, "M_FORBIDDEN");
        server.stop().await;
    }
}
