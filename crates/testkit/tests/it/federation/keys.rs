//! Part 1, identity and request signing: keys fetched from each other directly and through a
//! notary, signed requests accepted, forged ones refused with 401.

use reqwest::Method;
use rhizome_testkit::{
    TestServer,
    peer::{Signing, TestPeer},
};
use serde_json::json;

/// Two Rhizome servers fetch each other's keys, and one serves the other's as a notary,
/// counter-signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_fetch_each_others_keys_directly_and_through_a_notary() {
    let a = TestServer::start_federating("127.0.0.21").await;
    let b = TestServer::start_federating("127.0.0.22").await;
    let b_name = b.config.server_name.clone();
    // A asks B's keys (direct fetch through the key ring).
    let key_id = b.services().signing_key.key_id();
    let keys = a
        .services()
        .server_verify_keys(
            &b_name,
            std::slice::from_ref(&key_id),
            Some(rhizome_core::clock::now_millis()),
        )
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[&key_id].encode(), b.services().signing_key.public_key_base64());
    // A as a notary for B: the document carries both signatures.
    let answer = a
        .tls_api()
        .post("/_matrix/key/v2/query", json!({ "server_keys": { b_name.as_str(): {} } }))
        .await
        .ok();
    let document = &answer["server_keys"][0];
    assert_eq!(document["server_name"], b_name.as_str());
    let signers: Vec<&str> =
        document["signatures"].as_object().unwrap().keys().map(String::as_str).collect();
    assert!(signers.contains(&b_name.as_str()) && signers.contains(&a.config.server_name.as_str()));
    // Its own keys through GET /query/{serverName} too.
    let own =
        a.tls_api().get(&format!("/_matrix/key/v2/query/{}", a.config.server_name)).await.ok();
    assert_eq!(own["server_keys"][0]["server_name"], a.config.server_name.as_str());
    let version = b.tls_api().get("/_matrix/federation/v1/version").await.ok();
    assert_eq!(version["server"]["name"], "Rhizome");
}

/// Signed requests pass; a forged signature, another destination, an unknown key, an expired
/// key, a malformed or missing header are refused with 401 before any handler runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misdirected_requests_are_refused() {
    let server = TestServer::start_federating("127.0.0.23").await;
    let peer = TestPeer::start_on("127.0.0.24".parse().unwrap()).await;
    let base = server.tls_base_url.clone().unwrap();
    let destination = server.config.server_name.clone();
    let path = "/_matrix/federation/v1/send/t1";
    let body = json!({ "origin": peer.server_name(), "origin_server_ts": 1, "pdus": [] });
    let send = |signing: Signing| {
        let peer = &peer;
        let base = base.clone();
        let destination = destination.clone();
        let body = body.clone();
        async move {
            peer.request_with(signing, &destination, &base, Method::PUT, path, Some(body)).await
        }
    };
    let ok = send(Signing::Valid).await;
    assert_eq!(ok.status.as_u16(), 200, "{:?}", ok.json());
    for (name, signing) in [
        ("a forged signature", Signing::WrongSignature),
        (
            "another destination",
            Signing::OtherDestination(ruma::owned_server_name!("elsewhere.example")),
        ),
        ("an unknown key", Signing::UnknownKey),
        ("no header", Signing::NoHeader),
        ("a malformed header", Signing::MalformedHeader),
    ] {
        let refused = send(signing).await;
        assert_eq!(
            (refused.status.as_u16(), refused.errcode().as_deref()),
            (401, Some("M_UNAUTHORIZED")),
            "{name} was not refused: {:?}",
            refused.json()
        );
    }
    // A key past its validity is refused too (a fresh server knows nothing of the peer).
    let fresh = TestServer::start_federating("127.0.0.25").await;
    peer.set_valid_until(ruma::MilliSecondsSinceUnixEpoch(ruma::uint!(1)));
    let expired = peer
        .request_with(
            Signing::Valid,
            &fresh.config.server_name,
            fresh.tls_base_url.as_deref().unwrap(),
            Method::PUT,
            path,
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (expired.status.as_u16(), expired.errcode().as_deref()),
        (401, Some("M_UNAUTHORIZED"))
    );
}

/// After the peer rotates its key, what it signed with the old key still verifies (the old
/// key is published as old), and its new key signs requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_keeps_old_signatures_verifiable() {
    let server = TestServer::start_federating("127.0.0.26").await;
    let peer = TestPeer::start_on("127.0.0.27".parse().unwrap()).await;
    let old_key = peer.key_id();
    let old_public = peer.signing_key().public_key_base64();
    peer.rotate_key();
    let services = server.services();
    let old = services
        .server_verify_keys(peer.server_name(), std::slice::from_ref(&old_key), Some(0))
        .await
        .unwrap();
    assert_eq!(
        old.get(&old_key).map(|key| key.encode()),
        Some(old_public),
        "the old key, for signatures made before it expired"
    );
    let request = peer
        .request(
            &server.config.server_name,
            server.tls_base_url.as_deref().unwrap(),
            Method::PUT,
            "/_matrix/federation/v1/send/t2",
            Some(json!({ "origin": peer.server_name(), "origin_server_ts": 1, "pdus": [] })),
        )
        .await;
    assert_eq!(request.status.as_u16(), 200);
}

/// A server unreachable for its keys is vouched for by a notary the organiser trusts (and only
/// by one whose signature checks out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_notary_vouches_for_a_server_whose_keys_cannot_be_fetched() {
    let notary = TestServer::start_federating("127.0.0.28").await;
    let peer = TestPeer::start_on("127.0.0.29".parse().unwrap()).await;
    let notary_key =
        (notary.services().signing_key.key_id(), notary.services().signing_key.public_key_base64());
    let server = TestServer::start_federating_with(
        rhizome_testkit::Backend::Sqlite,
        "127.0.0.30",
        |config| {
            config.federation.trusted_key_servers = vec![rhizome_core::config::TrustedKeyServer {
                server_name: notary.config.server_name.clone(),
                verify_keys: [notary_key.clone()].into_iter().collect(),
            }];
        },
    )
    .await;
    // The notary learns the peer's keys while it can reach them.
    let key_id = peer.key_id();
    let learned = notary
        .services()
        .server_verify_keys(
            peer.server_name(),
            std::slice::from_ref(&key_id),
            Some(rhizome_core::clock::now_millis()),
        )
        .await
        .unwrap();
    assert_eq!(learned.len(), 1);
    // Then the peer's key endpoint breaks.
    peer.handle(Method::GET, "/_matrix/key/v2/server", |_| {
        rhizome_testkit::peer::Reply::error(
            reqwest::StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "broken",
        )
    });
    let keys = server
        .services()
        .server_verify_keys(
            peer.server_name(),
            std::slice::from_ref(&key_id),
            Some(rhizome_core::clock::now_millis()),
        )
        .await
        .unwrap();
    assert_eq!(
        keys.get(&key_id).map(|key| key.encode()),
        Some(peer.signing_key().public_key_base64()),
        "the notary's answer was not used"
    );
    // A server trusting the notary under another key ignores its answers.
    let wary = TestServer::start_federating_with(
        rhizome_testkit::Backend::Sqlite,
        "127.0.0.38",
        |config| {
            config.federation.trusted_key_servers = vec![rhizome_core::config::TrustedKeyServer {
                server_name: notary.config.server_name.clone(),
                verify_keys: [(
                    notary_key.0.clone(),
                    rhizome_room::SigningKey::generate().public_key_base64(),
                )]
                .into_iter()
                .collect(),
            }];
        },
    )
    .await;
    let keys = wary
        .services()
        .server_verify_keys(
            peer.server_name(),
            std::slice::from_ref(&key_id),
            Some(rhizome_core::clock::now_millis()),
        )
        .await
        .unwrap();
    assert!(keys.is_empty(), "an answer not signed by the trusted key was used");
}

/// The organiser's lists: a denied server is refused both ways, and an allow-list closes
/// federation to everyone else; oversized bodies are refused before anything is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_servers_are_refused_both_ways_and_bodies_are_bounded() {
    let peer = TestPeer::start_on("127.0.0.36".parse().unwrap()).await;
    let other = TestPeer::start_on("127.0.0.37".parse().unwrap()).await;
    let server = TestServer::start_federating_with(
        rhizome_testkit::Backend::Sqlite,
        "127.0.0.35",
        |config| {
            config.federation.denied_servers = vec![peer.server_name().to_string()];
        },
    )
    .await;
    let base = server.tls_base_url.clone().unwrap();
    let body =
        |origin: &ruma::ServerName| json!({ "origin": origin, "origin_server_ts": 1, "pdus": [] });
    let refused = peer
        .request(
            &server.config.server_name,
            &base,
            Method::PUT,
            "/_matrix/federation/v1/send/t1",
            Some(body(peer.server_name())),
        )
        .await;
    assert_eq!((refused.status.as_u16(), refused.errcode().as_deref()), (403, Some("M_FORBIDDEN")));
    let allowed = other
        .request(
            &server.config.server_name,
            &base,
            Method::PUT,
            "/_matrix/federation/v1/send/t1",
            Some(body(other.server_name())),
        )
        .await;
    assert_eq!(allowed.status.as_u16(), 200);
    // Outbound: nothing is sent to a denied server.
    let outbound = server
        .services()
        .federation_client()
        .unwrap()
        .send(
            peer.server_name(),
            ruma::api::federation::discovery::get_server_version::v1::Request::new(),
        )
        .await;
    assert!(outbound.is_err_and(|error| error.is_refused_by_policy()));
    assert!(peer.received_matching(&Method::GET, "/_matrix/federation/v1/version").is_empty());
    // A body over the limit: 413, nothing processed.
    let huge = json!({ "origin": other.server_name(), "origin_server_ts": 1, "pdus": [], "padding": "x".repeat(9 * 1024 * 1024) });
    let too_large = other
        .request(
            &server.config.server_name,
            &base,
            Method::PUT,
            "/_matrix/federation/v1/send/t2",
            Some(huge),
        )
        .await;
    assert_eq!(
        (too_large.status.as_u16(), too_large.errcode().as_deref()),
        (413, Some("M_TOO_LARGE"))
    );
    // Unknown federation paths answer like unknown client paths.
    let unknown = other
        .request(
            &server.config.server_name,
            &base,
            Method::GET,
            "/_matrix/federation/v1/nonsense",
            None,
        )
        .await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.errcode().as_deref()),
        (404, Some("M_UNRECOGNIZED"))
    );
}
