//! What clients ask for besides rooms: TURN credentials, OpenID tokens for widgets and their
//! check over federation, third-party protocols, and the requests Element makes at start-up
//! (served, or refused with the error clients expect for optional features).

use rhizome_testkit::{Api, TestServer, encode};
use serde_json::json;

#[tokio::test]
async fn without_a_turn_server_clients_get_an_empty_answer() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let answer = alice.get("/_matrix/client/v3/voip/turnServer").await.ok();
    assert_eq!(answer, json!({}));
    assert_eq!(alice.get("/_matrix/client/r0/voip/turnServer").await.ok(), json!({}));
    Api::new(&server.base_url)
        .get("/_matrix/client/v3/voip/turnServer")
        .await
        .expect_error(401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn a_turn_server_gets_time_limited_credentials() {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("turn.secret");
    std::fs::write(&secret_file, "s3cret\n").unwrap();
    let server = TestServer::start_with(rhizome_testkit::Backend::Sqlite, |config| {
        config.voip.turn_uris = vec!["turn:turn.example.org:3478?transport=udp".into()];
        config.voip.turn_shared_secret_file = Some(secret_file.clone());
        config.voip.turn_user_lifetime_secs = 600;
    })
    .await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let answer = alice.get("/_matrix/client/v3/voip/turnServer").await.ok();
    assert_eq!(answer["uris"], json!(["turn:turn.example.org:3478?transport=udp"]));
    assert_eq!(answer["ttl"], 600);
    let username = answer["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "@alice:localhost");
    let expiry: i64 = expiry.parse().unwrap();
    let now = rhizome_core::clock::now_millis() / 1000;
    assert!((now + 590..=now + 610).contains(&expiry), "expiry {expiry}, now {now}");
    let (_, expected) = rhizome_service::voip::turn_credentials_for(
        "s3cret",
        &ruma::OwnedUserId::try_from("@alice:localhost").unwrap(),
        expiry,
    );
    assert_eq!(answer["password"], expected);
    assert!(!answer.to_string().contains("s3cret"), "the secret itself never leaves");
}

#[tokio::test]
async fn openid_tokens_are_checked_over_federation() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let bob = Api::new_user(&server.base_url, "bob").await;
    let token = alice
        .post("/_matrix/client/v3/user/@alice:localhost/openid/request_token", json!({}))
        .await
        .ok();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["matrix_server_name"], "localhost");
    assert_eq!(token["expires_in"], 3600);
    let access_token = token["access_token"].as_str().unwrap();

    // A widget checks it without any other credentials.
    let widget = Api::new(&server.base_url);
    let info = widget
        .get(&format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={}",
            encode(access_token)
        ))
        .await
        .ok();
    assert_eq!(info, json!({ "sub": "@alice:localhost" }));
    widget
        .get("/_matrix/federation/v1/openid/userinfo?access_token=made-up")
        .await
        .expect_error(401, "M_UNKNOWN_TOKEN");
    // An OpenID token is no access token, and an access token is no OpenID token.
    let mut misuse = Api::new(&server.base_url);
    misuse.token = Some(access_token.to_owned());
    misuse.get("/_matrix/client/v3/account/whoami").await.expect_error(401, "M_UNKNOWN_TOKEN");
    let alice_token = alice.token.clone().unwrap();
    widget
        .get(&format!(
            "/_matrix/federation/v1/openid/userinfo?access_token={}",
            encode(&alice_token)
        ))
        .await
        .expect_error(401, "M_UNKNOWN_TOKEN");

    // Only for oneself.
    bob.post("/_matrix/client/v3/user/@alice:localhost/openid/request_token", json!({}))
        .await
        .expect_error(403, "M_FORBIDDEN");
    Api::new(&server.base_url)
        .post("/_matrix/client/v3/user/@alice:localhost/openid/request_token", json!({}))
        .await
        .expect_error(401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn there_are_no_third_party_protocols() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    assert_eq!(alice.get("/_matrix/client/v3/thirdparty/protocols").await.ok(), json!({}));
    Api::new(&server.base_url)
        .get("/_matrix/client/v3/thirdparty/protocols")
        .await
        .expect_error(401, "M_MISSING_TOKEN");
}

/// The requests Element Web and Element X make when they start: each is served, or answered
/// with the error a client takes as "not available here".
#[tokio::test]
async fn element_start_up_requests_are_answered() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let anonymous = Api::new(&server.base_url);

    for path in
        ["/_matrix/client/versions", "/.well-known/matrix/client", "/_matrix/client/v3/login"]
    {
        anonymous.get(path).await.ok();
    }
    // Where federation is reached: this server's own name and port.
    let server_well_known = anonymous.get("/.well-known/matrix/server").await.ok();
    assert_eq!(
        server_well_known["m.server"],
        server.base_url.trim_start_matches("http://"),
        "{server_well_known}"
    );
    // Features clients look for before offering room reports and room previews.
    let versions = anonymous.get("/_matrix/client/versions").await.ok();
    assert_eq!(versions["unstable_features"]["org.matrix.msc4151"], true, "{versions}");
    assert_eq!(versions["unstable_features"]["im.nheko.summary"], true, "{versions}");
    for path in [
        "/_matrix/client/v3/capabilities",
        "/_matrix/client/v3/account/whoami",
        "/_matrix/client/v3/pushrules/",
        "/_matrix/client/v3/account/3pid",
        "/_matrix/client/v3/pushers",
        "/_matrix/client/v3/devices",
        "/_matrix/client/v3/voip/turnServer",
        "/_matrix/client/v3/thirdparty/protocols",
        "/_matrix/client/v1/media/config",
        "/_matrix/client/v3/profile/@alice:localhost",
        "/_matrix/client/v3/notifications?limit=1",
        "/_matrix/client/v3/joined_rooms",
        "/_matrix/client/v3/sync?timeout=0",
    ] {
        let response = alice.get(path).await;
        assert_eq!(response.status.as_u16(), 200, "{path}: {}", response.body);
    }
    // No third-party identifiers: `threepids` is empty or left out.
    let threepids = alice.get("/_matrix/client/v3/account/3pid").await.ok();
    assert!(threepids.get("threepids").is_none_or(|list| list == &json!([])), "{threepids}");
    let filter = alice
        .post("/_matrix/client/v3/user/@alice:localhost/filter", json!({ "room": {} }))
        .await
        .ok();
    assert!(filter["filter_id"].is_string());
    // No key backup yet: M_NOT_FOUND, which clients take as "none".
    alice.get("/_matrix/client/v3/room_keys/version").await.expect_error(404, "M_NOT_FOUND");

    // OAuth 2.0 (next-generation auth) discovery: not offered, so Element uses password login.
    for path in [
        "/_matrix/client/v1/auth_metadata",
        "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
        "/_matrix/client/unstable/org.matrix.msc2965/auth_issuer",
        "/_matrix/client/v1/auth_issuer",
    ] {
        anonymous.get(path).await.expect_error(404, "M_UNRECOGNIZED");
        alice.get(path).await.expect_error(404, "M_UNRECOGNIZED");
    }
}

/// Browser clients (Element Web) on another origin: a preflight is answered with the spec's
/// CORS headers, `Authorization` named (a `*` no longer covers it), any path answers `OPTIONS`
/// without doing its work, and every response, errors included, allows any origin.
#[tokio::test]
async fn browsers_on_other_origins_are_answered_with_cors_headers() {
    let server = TestServer::start().await;
    let alice = Api::new_user(&server.base_url, "alice").await;
    let room_id = alice.create_room(json!({})).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.base_url);
    let allowed = |response: &reqwest::Response, name: &str| {
        response.headers().get(name).map(|value| value.to_str().unwrap().to_ascii_lowercase())
    };
    let send = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1", encode(&room_id));
    let preflight = http
        .request(reqwest::Method::OPTIONS, url(&send))
        .header("origin", "https://app.example.org")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(allowed(&preflight, "access-control-allow-origin").as_deref(), Some("*"));
    let methods = allowed(&preflight, "access-control-allow-methods").unwrap();
    for method in ["get", "post", "put", "delete", "options"] {
        assert!(methods.contains(method), "{methods}");
    }
    let headers = allowed(&preflight, "access-control-allow-headers").unwrap();
    for header in ["authorization", "content-type", "x-requested-with"] {
        assert!(headers.contains(header), "{headers}");
    }
    // A bare OPTIONS, on a route of another method and on no route at all: answered, and the
    // message is not sent.
    for path in [send.as_str(), "/_matrix/client/v3/no/such/thing"] {
        let bare = http.request(reqwest::Method::OPTIONS, url(path)).send().await.unwrap();
        assert_eq!(bare.status().as_u16(), 200, "{path}");
        assert_eq!(allowed(&bare, "access-control-allow-origin").as_deref(), Some("*"));
    }
    let messages = format!("/_matrix/client/v3/rooms/{}/messages?dir=b", encode(&room_id));
    let page = alice.get(&messages).await.ok();
    assert!(!page["chunk"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.message"));
    // Answers and errors alike carry the origin header.
    for (path, status) in [
        ("/_matrix/client/versions", 200),
        ("/_matrix/client/v3/account/whoami", 401),
        ("/_matrix/client/v3/no/such/thing", 404),
    ] {
        let response =
            http.get(url(path)).header("origin", "https://app.example.org").send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(allowed(&response, "access-control-allow-origin").as_deref(), Some("*"));
    }
}
