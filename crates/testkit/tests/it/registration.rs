//! Registration and user-interactive authentication as the Matrix test suites check them:
//! the challenge's shape, repeated and resumed sessions, other users' passwords, bad bytes.

use reqwest::Method;
use rhizome_testkit::{Api, TestServer};
use serde_json::json;

const REGISTER: &str = "/_matrix/client/v3/register";

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
