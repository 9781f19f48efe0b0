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
