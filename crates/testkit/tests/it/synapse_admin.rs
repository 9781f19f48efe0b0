//! The parts of Synapse's admin API tooling uses: registration with the shared secret (as
//! `register_new_matrix_user` and the Matrix test suites do it) and registration tokens.

use hmac::{Hmac, Mac};
use rhizome_testkit::{Api, Backend, TestServer};
use serde_json::{Value, json};
use sha1::Sha1;

const REGISTER: &str = "/_synapse/admin/v1/register";
const TOKENS: &str = "/_synapse/admin/v1/registration_tokens";

fn mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    for (index, part) in
        [nonce, user, password, if admin { "admin" } else { "notadmin" }].iter().enumerate()
    {
        if index > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn register(api: &Api, secret: &str, user: &str, admin: bool) -> rhizome_testkit::Response {
    let nonce = api.get(REGISTER).await.ok()["nonce"].as_str().unwrap().to_owned();
    let body = json!({ "nonce": nonce, "username": user, "password": "sUp3rs3kr1t",
        "admin": admin, "mac": mac(secret, &nonce, user, "sUp3rs3kr1t", admin) });
    api.post(REGISTER, body).await
}

#[tokio::test]
async fn tools_holding_the_shared_secret_create_accounts() {
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.registration.shared_secret = Some("s3cret".into());
        config.registration.mode = rhizome_core::config::RegistrationMode::Disabled;
    })
    .await;
    let api = server.api();
    let admin = register(&api, "s3cret", "adminuser", true).await.ok();
    assert_eq!(admin["user_id"], "@adminuser:localhost");
    assert_eq!(admin["home_server"], "localhost");
    let mut admin_api = server.api();
    admin_api.token = admin["access_token"].as_str().map(str::to_owned);
    admin_api.get("/_matrix/client/v3/account/whoami").await.ok();
    let user = register(&api, "s3cret", "user-UPPER-shared-SECRET", false).await.ok();
    assert_eq!(user["user_id"], "@user-upper-shared-secret:localhost");
    let user_id = ruma::UserId::parse("@user-upper-shared-secret:localhost").unwrap();
    let record = server.services().store.get_user(&user_id).await.unwrap().unwrap();
    assert!(!record.is_admin);

    register(&api, "s3cret", "us,er", false).await.expect_error(400, "M_INVALID_USERNAME");
    register(&api, "s3cret", "adminuser", false).await.expect_error(400, "M_USER_IN_USE");
    register(&api, "wrong", "someone", false).await.expect_error(403, "M_FORBIDDEN");
    // A nonce serves once.
    let nonce = api.get(REGISTER).await.ok()["nonce"].as_str().unwrap().to_owned();
    let body = |user: &str| {
        json!({ "nonce": nonce, "username": user, "password": "sUp3rs3kr1t",
            "mac": mac("s3cret", &nonce, user, "sUp3rs3kr1t", false) })
    };
    api.post(REGISTER, body("first")).await.ok();
    let again = api.post(REGISTER, body("second")).await;
    assert_eq!(again.status, 400, "{}", again.body);
    api.post(REGISTER, json!({ "nonce": "x" })).await.expect_error(400, "M_BAD_JSON");
}

#[tokio::test]
async fn the_shared_secret_can_come_from_a_file_and_is_off_without_one() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("secret");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.registration.shared_secret_file = Some(file.clone());
    })
    .await;
    register(&server.api(), "from-a-file", "filed", false).await.ok();

    let without = TestServer::start().await;
    let refused = without.api().get(REGISTER).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
}

fn tokens(list: &Value) -> Vec<String> {
    let mut tokens: Vec<String> = list["registration_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token["token"].as_str().unwrap().to_owned())
        .collect();
    tokens.sort();
    tokens
}

#[tokio::test]
async fn administrators_manage_registration_tokens() {
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        config.registration.shared_secret = Some("s3cret".into());
    })
    .await;
    let body = register(&server.api(), "s3cret", "root", true).await.ok();
    let mut admin = server.api();
    admin.token = body["access_token"].as_str().map(str::to_owned);
    let user = Api::new_user(&server.base_url, "plain").await;
    user.get(TOKENS).await.expect_error(403, "M_FORBIDDEN");
    server.api().get(TOKENS).await.expect_error(401, "M_MISSING_TOKEN");

    let new = format!("{TOKENS}/new");
    let made = admin.post(&new, json!({ "token": "abcd", "uses_allowed": 1 })).await.ok();
    assert_eq!(
        made,
        json!({ "token": "abcd", "uses_allowed": 1, "pending": 0, "completed": 0,
                "expiry_time": null })
    );
    let random = admin.post(&new, json!({ "length": 24 })).await.ok();
    assert_eq!(random["token"].as_str().unwrap().len(), 24);
    let default = admin.post(&new, json!({})).await.ok();
    assert_eq!(default["token"].as_str().unwrap().len(), 16);
    admin.post(&new, json!({ "token": "abcd" })).await.expect_error(400, "M_INVALID_PARAM");
    for bad in [
        json!({ "token": "a b" }),
        json!({ "uses_allowed": -1 }),
        json!({ "uses_allowed": "1" }),
        json!({ "expiry_time": 1 }),
        json!({ "length": 65 }),
    ] {
        admin.post(&new, bad.clone()).await.expect_error(400, "M_INVALID_PARAM");
    }

    let one = format!("{TOKENS}/abcd");
    assert_eq!(admin.get(&one).await.ok()["uses_allowed"], 1);
    let future = rhizome_core::clock::now_millis() + 3_600_000;
    let updated = admin.put(&one, json!({ "expiry_time": future })).await.ok();
    assert_eq!(
        (updated["uses_allowed"].clone(), updated["expiry_time"].clone()),
        (json!(1), json!(future))
    );
    let updated = admin.put(&one, json!({ "uses_allowed": null })).await.ok();
    assert_eq!(updated["uses_allowed"], Value::Null);
    assert_eq!(updated["expiry_time"], future);
    admin.put(&format!("{TOKENS}/nothing"), json!({})).await.expect_error(404, "M_NOT_FOUND");

    // Used up, a token is no longer valid.
    admin.post(&new, json!({ "token": "spent", "uses_allowed": 0 })).await.ok();
    let valid = admin.get(&format!("{TOKENS}?valid=true")).await.ok();
    assert!(!tokens(&valid).contains(&"spent".to_owned()), "{valid}");
    let invalid = admin.get(&format!("{TOKENS}?valid=false")).await.ok();
    assert_eq!(tokens(&invalid), vec!["spent".to_owned()]);
    assert_eq!(tokens(&admin.get(TOKENS).await.ok()).len(), 4);

    admin.delete(&one).await.ok();
    admin.get(&one).await.expect_error(404, "M_NOT_FOUND");
    admin.delete(&one).await.expect_error(404, "M_NOT_FOUND");
}
