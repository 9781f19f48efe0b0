//! Registration and user-interactive authentication as the Matrix test suites check them:
//! the challenge's shape, repeated and resumed sessions, other users' passwords, bad bytes.

use reqwest::Method;
use rhizome_testkit::{Api, TestServer};
use serde_json::json;

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
