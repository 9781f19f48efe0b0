//! Profiles and aliases across servers: two Rhizome servers asking each other both ways, the
//! served `/query/profile` read by a test peer, and a misbehaving peer whose answers reach the
//! client as clear errors and are not remembered.

use std::time::Duration;

use http::{Method, StatusCode};
use rhizome_testkit::{
    Api, TestServer, encode,
    peer::{Reply, TestPeer},
};
use ruma::ServerName;
use serde_json::json;

async fn set_profile(user: &Api, displayname: &str, avatar_url: Option<&str>) {
    let base = format!("/_matrix/client/v3/profile/{}", encode(user.user()));
    user.put(&format!("{base}/displayname"), json!({ "displayname": displayname })).await.ok();
    if let Some(avatar_url) = avatar_url {
        user.put(&format!("{base}/avatar_url"), json!({ "avatar_url": avatar_url })).await.ok();
    }
}

fn profile_path(user_id: &str) -> String {
    format!("/_matrix/client/v3/profile/{}", encode(user_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_asked_of_the_users_server_both_ways_and_cached() {
    let a = TestServer::start_federating("127.0.0.60").await;
    let b = TestServer::start_federating("127.0.0.61").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    set_profile(&alice, "Alice of A", Some("mxc://a.example/avatar")).await;
    set_profile(&bob, "Bob of B", None).await;

    // Bob's server asks Alice's for her profile, and for one field.
    let profile = bob.get(&profile_path(alice.user())).await.ok();
    assert_eq!(profile["displayname"], "Alice of A");
    assert_eq!(profile["avatar_url"], "mxc://a.example/avatar");
    let name = bob.get(&format!("{}/displayname", profile_path(alice.user()))).await.ok();
    assert_eq!(name, json!({ "displayname": "Alice of A" }));
    // Alice's server asks Bob's; he has no avatar.
    let profile = alice.get(&profile_path(bob.user())).await.ok();
    assert_eq!(profile["displayname"], "Bob of B");
    assert!(profile.get("avatar_url").is_none(), "{profile}");
    alice
        .get(&format!("{}/avatar_url", profile_path(bob.user())))
        .await
        .expect_error(404, "M_NOT_FOUND");
    // Unknown users of the other server are not found.
    let nobody = format!("@nobody:{}", a.config.server_name);
    bob.get(&profile_path(&nobody)).await.expect_error(404, "M_NOT_FOUND");

    // The answer is kept a short while: a change is not seen at once by the other server.
    set_profile(&alice, "Alice renamed", None).await;
    let cached = bob.get(&profile_path(alice.user())).await.ok();
    assert_eq!(cached["displayname"], "Alice of A");
    let local = alice.get(&profile_path(alice.user())).await.ok();
    assert_eq!(local["displayname"], "Alice renamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_of_the_other_server_resolve_both_ways() {
    let a = TestServer::start_federating("127.0.0.62").await;
    let b = TestServer::start_federating("127.0.0.63").await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let forum =
        alice.create_room(json!({ "preset": "public_chat", "room_alias_name": "forum" })).await;
    let den = bob.create_room(json!({ "preset": "public_chat", "room_alias_name": "den" })).await;
    let alias_path = |alias: &str| format!("/_matrix/client/v3/directory/room/{}", encode(alias));

    let forum_alias = format!("#forum:{}", a.config.server_name);
    let found = bob.get(&alias_path(&forum_alias)).await.ok();
    assert_eq!(found["room_id"], forum.as_str());
    assert_eq!(found["servers"], json!([a.config.server_name.as_str()]));
    let den_alias = format!("#den:{}", b.config.server_name);
    let found = alice.get(&alias_path(&den_alias)).await.ok();
    assert_eq!(found["room_id"], den.as_str());
    assert_eq!(found["servers"][0], b.config.server_name.as_str());
    // A local alias lists this server; an unknown remote one is not found.
    let found = alice.get(&alias_path(&forum_alias)).await.ok();
    assert_eq!(found["servers"], json!([a.config.server_name.as_str()]));
    let unknown = format!("#nothing:{}", b.config.server_name);
    alice.get(&alias_path(&unknown)).await.expect_error(404, "M_NOT_FOUND");
    // So is an alias whose server is gone.
    b.stop().await;
    let gone = alice.get(&alias_path(&den_alias)).await;
    gone.expect_error(404, "M_NOT_FOUND");
    assert!(gone.body["error"].as_str().unwrap().contains("could not be reached"), "{}", gone.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_profile_query_gives_one_field_or_all() {
    let a = TestServer::start_federating("127.0.0.64").await;
    let peer = TestPeer::start_on("127.0.0.65".parse().unwrap()).await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    set_profile(&alice, "Alice", Some("mxc://a.example/face")).await;
    let destination = ServerName::parse(a.config.server_name.as_str()).unwrap();
    let base = a.tls_base_url.as_deref().unwrap();
    let query = |user: &str, field: &str| {
        let field = if field.is_empty() { String::new() } else { format!("&field={field}") };
        format!("/_matrix/federation/v1/query/profile?user_id={}{field}", encode(user))
    };
    let (peer_ref, destination_ref) = (&peer, &destination);
    let ask = move |path: String| async move {
        peer_ref.request(destination_ref, base, Method::GET, &path, None).await
    };

    let all = ask(query(alice.user(), "")).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.json(), json!({ "displayname": "Alice", "avatar_url": "mxc://a.example/face" }));
    let name = ask(query(alice.user(), "displayname")).await;
    assert_eq!(name.json(), json!({ "displayname": "Alice" }));
    let avatar = ask(query(alice.user(), "avatar_url")).await;
    assert_eq!(avatar.json(), json!({ "avatar_url": "mxc://a.example/face" }));
    let unknown = ask(query(&format!("@ghost:{destination}"), "")).await;
    assert_eq!(
        (unknown.status, unknown.errcode().as_deref()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );
    let elsewhere = ask(query(peer.user_id("someone").as_str(), "")).await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    let other_field = ask(query(alice.user(), "m.tz")).await;
    assert_eq!(other_field.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_server_gives_clear_profile_errors_that_are_not_kept() {
    let a = TestServer::start_federating("127.0.0.66").await;
    let peer = TestPeer::start_on("127.0.0.67".parse().unwrap()).await;
    let alice = Api::new_user(&a.base_url, "alice").await;
    let huge = format!("@huge:{}", peer.server_name());
    let garbled = format!("@garbled:{}", peer.server_name());
    let gone = format!("@gone:{}", peer.server_name());
    let odd = format!("@odd:{}", peer.server_name());
    let slow = format!("@slow:{}", peer.server_name());
    let answers = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fixed = answers.clone();
    peer.handle(Method::GET, "/_matrix/federation/v1/query/profile", move |request| {
        let user = request.query.clone().unwrap_or_default();
        if fixed.load(std::sync::atomic::Ordering::SeqCst) {
            return Reply::json(StatusCode::OK, &json!({ "displayname": "Fixed" }));
        }
        if user.contains("huge") {
            Reply::json(StatusCode::OK, &json!({ "displayname": "x".repeat(200_000) }))
        } else if user.contains("garbled") {
            Reply::raw(StatusCode::OK, "application/json", "{\"displayname\": ")
        } else if user.contains("gone") {
            Reply::error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "no such user")
        } else if user.contains("odd") {
            Reply::json(
                StatusCode::OK,
                &json!({ "displayname": 42, "avatar_url": "https://not.mxc/x", "extra": true }),
            )
        } else {
            Reply::json(StatusCode::OK, &json!({})).after(Duration::from_secs(30))
        }
    });

    for user in [&huge, &garbled] {
        let error = alice.get(&profile_path(user)).await;
        error.expect_error(400, "M_UNKNOWN");
        assert!(
            error.body["error"].as_str().unwrap().contains("invalid response"),
            "{}",
            error.body
        );
    }
    alice.get(&profile_path(&gone)).await.expect_error(404, "M_NOT_FOUND");
    // Fields of the wrong shape are left out.
    let profile = alice.get(&profile_path(&odd)).await.ok();
    assert_eq!(profile, json!({}));
    // A server that does not answer in time is given up.
    let started = std::time::Instant::now();
    let error = alice.get(&profile_path(&slow)).await;
    error.expect_error(404, "M_NOT_FOUND");
    assert!(error.body["error"].as_str().unwrap().contains("could not be reached"));
    assert!(started.elapsed() < Duration::from_secs(25));

    // Failed answers were not kept; a "no such user" is, for a while.
    answers.store(true, std::sync::atomic::Ordering::SeqCst);
    for user in [&huge, &garbled] {
        let profile = alice.get(&profile_path(user)).await.ok();
        assert_eq!(profile["displayname"], "Fixed");
    }
    alice.get(&profile_path(&gone)).await.expect_error(404, "M_NOT_FOUND");
}
