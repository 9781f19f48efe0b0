//! The test federation peer itself: its key document is self-signed and follows the knobs
//! tests turn, its handlers answer and its requests are recorded, its signed requests verify
//! with ruma's X-Matrix check (by a small axum stub standing for a receiving server) while each
//! broken variant fails, and its PDUs verify while each flawed one fails the way it should.

use std::{sync::Arc, time::Duration};

use axum::{Json, extract::State};
use reqwest::{Method, StatusCode};
use rhizome_room::{Pdu, versions};
use rhizome_testkit::peer::{PduFlaw, Reply, Signing, TestPeer};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName,
    RoomVersionId, ServerName,
    api::federation::authentication::XMatrix,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet, Verified, verify_event, verify_json},
};
use serde_json::{Value, json};

/// An HTTPS client that trusts only `peer`'s certificate.
fn client_for(peer: &TestPeer) -> reqwest::Client {
    let certificate =
        reqwest::Certificate::from_pem(peer.certificate().certificate_pem.as_bytes()).unwrap();
    reqwest::Client::builder().tls_certs_only([certificate]).no_proxy().build().unwrap()
}

/// The keys of a key document, old ones included, after checking its self-signature.
fn verified_keys(document: &Value) -> PublicKeyMap {
    let server_name = document["server_name"].as_str().unwrap().to_owned();
    let mut keys = PublicKeySet::new();
    for (key_id, key) in document["verify_keys"].as_object().unwrap() {
        keys.insert(key_id.clone(), Base64::parse(key["key"].as_str().unwrap()).unwrap());
    }
    let map = PublicKeyMap::from([(server_name, keys)]);
    let object: CanonicalJsonObject = serde_json::from_value(document.clone()).unwrap();
    verify_json(&map, &object).expect("the key document is signed by its own key");
    map
}

async fn fetch_key_document(peer: &TestPeer) -> Value {
    let url = format!("{}/_matrix/key/v2/server", peer.base_url());
    let response = client_for(peer).get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_peer_serves_a_self_signed_key_document() {
    let peer = TestPeer::start().await;
    assert!(peer.server_name().as_str().starts_with("127.0.0.13:"));
    let document = fetch_key_document(&peer).await;
    assert_eq!(document["server_name"], peer.server_name().as_str());
    let keys = verified_keys(&document);
    let published = &keys[peer.server_name().as_str()];
    assert_eq!(published.keys().collect::<Vec<_>>(), [&peer.key_id()]);
    let now = u64::from(MilliSecondsSinceUnixEpoch::now().get());
    assert!(document["valid_until_ts"].as_u64().unwrap() > now);
    let mut tampered: CanonicalJsonObject = serde_json::from_value(document.clone()).unwrap();
    tampered.insert("server_name".to_owned(), CanonicalJsonValue::String("evil.test".into()));
    assert!(verify_json(&keys, &tampered).is_err());

    // An expired document, an old key, then a rotation: each still self-signed.
    let past = MilliSecondsSinceUnixEpoch(1_000_u32.into());
    peer.set_valid_until(past);
    peer.add_old_verify_key("ed25519:old", "b2xkIGtleQ", past);
    let document = fetch_key_document(&peer).await;
    verified_keys(&document);
    assert_eq!(document["valid_until_ts"], 1000);
    assert_eq!(document["old_verify_keys"]["ed25519:old"]["expired_ts"], 1000);
    let old_key = peer.rotate_key();
    assert_ne!(old_key.key_id(), peer.key_id());
    let document = fetch_key_document(&peer).await;
    let keys = verified_keys(&document);
    assert!(keys[peer.server_name().as_str()].contains_key(&peer.key_id()));
    assert_eq!(document["old_verify_keys"][old_key.key_id()]["key"], old_key.public_key_base64());

    let url = format!("{}/_matrix/federation/v1/version", peer.base_url());
    let version: Value = client_for(&peer).get(url).send().await.unwrap().json().await.unwrap();
    assert!(version["server"]["name"].is_string(), "{version}");
    let recorded = peer.received_matching(&Method::GET, "/_matrix/key/v2/server");
    assert_eq!(recorded.len(), 3);
}

#[tokio::test]
async fn the_peer_answers_through_handlers_and_records_requests() {
    let peer = TestPeer::start().await;
    peer.handle(Method::PUT, "/_matrix/federation/v1/send/{txn_id}", |request| {
        let pdus = request.json().unwrap()["pdus"].as_array().unwrap().len();
        (200, json!({ "pdus": {}, "txn": request.param("txn_id"), "count": pdus }))
    });
    peer.handle(Method::GET, "/_matrix/federation/v1/query/*", |_| {
        Reply::error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "nobody")
            .after(Duration::from_millis(50))
    });
    let client = client_for(&peer);
    let response = client
        .put(format!("{}/_matrix/federation/v1/send/t%201", peer.base_url()))
        .json(&json!({ "pdus": [{}, {}], "edus": [] }))
        .header("Authorization", "X-Matrix test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["txn"], "t 1");
    assert_eq!(body["count"], 2);
    let response = client
        .get(format!("{}/_matrix/federation/v1/query/profile?field=x", peer.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response =
        client.get(format!("{}/_matrix/federation/v1/nothing", peer.base_url())).send().await;
    assert_eq!(response.unwrap().status(), StatusCode::NOT_FOUND);

    let sent = peer
        .wait_for(&Method::PUT, "/_matrix/federation/v1/send/{txn_id}", Duration::from_secs(1))
        .await;
    assert_eq!(sent.authorization(), Some("X-Matrix test"));
    assert_eq!(sent.json().unwrap()["pdus"].as_array().unwrap().len(), 2);
    let query = &peer.received_matching(&Method::GET, "/_matrix/federation/v1/query/*")[0];
    assert_eq!(query.query.as_deref(), Some("field=x"));
    assert_eq!(peer.received().len(), 3);
}

/// The receiving side of a signed request: fetch the origin's key document from
/// `https://<origin>` (names are `IP:PORT`), check its self-signature, then check the request
/// with ruma's X-Matrix verification. 200 with the origin, or 401 with the reason.
async fn verify_request(
    State(own_name): State<Arc<OwnedServerName>>,
    request: axum::extract::Request,
) -> (StatusCode, Json<Value>) {
    let refuse = |reason: String| {
        (StatusCode::UNAUTHORIZED, Json(json!({ "errcode": "M_UNAUTHORIZED", "error": reason })))
    };
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let xmatrix = match XMatrix::extract_from_http_headers(&parts.headers) {
        Ok(xmatrix) => xmatrix,
        Err(error) => return refuse(format!("header: {error}")),
    };
    let keys = match fetch_keys(&xmatrix.origin).await {
        Ok(keys) => keys,
        Err(error) => return refuse(format!("keys: {error}")),
    };
    let request = axum::http::Request::from_parts(parts, body);
    match xmatrix.verify_http_request(&request, &own_name, &keys) {
        Ok(()) => (StatusCode::OK, Json(json!({ "origin": xmatrix.origin }))),
        Err(error) => refuse(format!("signature: {error}")),
    }
}

async fn fetch_keys(origin: &ServerName) -> Result<PublicKeyMap, String> {
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("https://{origin}/_matrix/key/v2/server");
    let response = client.get(url).send().await.map_err(|error| error.to_string())?;
    let document: Value = response.json().await.map_err(|error| error.to_string())?;
    if document["server_name"] != origin.as_str() {
        return Err("the document names another server".to_owned());
    }
    Ok(verified_keys(&document))
}

/// Starts the verifying stub on plain HTTP; returns its server name and base URL.
async fn start_verifying_stub() -> (OwnedServerName, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let name = OwnedServerName::try_from(address.to_string()).unwrap();
    let app = axum::Router::new().fallback(verify_request).with_state(Arc::new(name.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (name, format!("http://{address}"))
}

#[tokio::test]
async fn signed_requests_verify_and_broken_ones_do_not() {
    let peer = TestPeer::start().await;
    let (stub_name, stub_url) = start_verifying_stub().await;
    let path = "/_matrix/federation/v1/send/txn1?ver=1&x=%21a%3Ab";
    let body = json!({ "pdus": [], "edus": [{ "edu_type": "m.typing", "content": {} }] });
    let send = |signing: Signing| {
        peer.request_with(signing, &stub_name, &stub_url, Method::PUT, path, Some(body.clone()))
    };

    let response = send(Signing::Valid).await;
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.json());
    assert_eq!(response.json()["origin"], peer.server_name().as_str());
    let get = peer
        .request(&stub_name, &stub_url, Method::GET, "/_matrix/federation/v1/version", None)
        .await;
    assert_eq!(get.status, StatusCode::OK, "{:?}", get.json());

    // Another live peer, whose keys the stub can fetch, and a name nobody answers for.
    let second_peer = TestPeer::start_on([127, 0, 0, 15].into()).await;
    let nobody: OwnedServerName = "127.0.0.99:9".try_into().unwrap();
    let broken = [
        (Signing::WrongSignature, "signature"),
        (Signing::OtherDestination(nobody.clone()), "signature"),
        (Signing::OtherOrigin(second_peer.server_name().to_owned()), "signature"),
        (Signing::OtherOrigin(nobody), "keys"),
        (Signing::UnknownKey, "signature"),
        (Signing::NoHeader, "header"),
        (Signing::MalformedHeader, "header"),
        (Signing::Header("Bearer abc".to_owned()), "header"),
    ];
    for (signing, reason) in broken {
        let response = send(signing.clone()).await;
        let answer = response.json();
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{signing:?}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(reason), "{signing:?}: {error}");
    }
}

fn public_keys_of(peer: &TestPeer) -> PublicKeyMap {
    verified_keys(&peer.key_document())
}

fn verify(peer: &TestPeer, pdu: &Pdu, version: &RoomVersionId) -> Result<Verified, String> {
    let rules = versions::rules(version).unwrap();
    let object = pdu.canonical_object().unwrap();
    verify_event(&public_keys_of(peer), &object, &rules).map_err(|error| error.to_string())
}

#[tokio::test]
async fn the_peer_signs_pdus_and_flaws_them_on_request() {
    let peer = TestPeer::start().await;
    let version = RoomVersionId::V12;
    let create = peer.event_template(
        None,
        "alice",
        "m.room.create",
        Some(""),
        json!({ "room_version": "12" }),
    );
    let create = peer.sign_pdu(&create, &version);
    assert_eq!(verify(&peer, &create, &version), Ok(Verified::All));
    assert_eq!(create.sender, peer.user_id("alice"));

    let mut message = peer.event_template(
        Some(create.room_id.clone()),
        "alice",
        "m.room.message",
        None,
        json!({ "msgtype": "m.text", "body": "hi" }),
    );
    message.prev_events = vec![create.event_id.clone()];
    message.depth = 2;
    let valid = peer.sign_pdu(&message, &version);
    assert_eq!(verify(&peer, &valid, &version), Ok(Verified::All));

    let hash_wrong = peer.sign_flawed_pdu(&message, &version, PduFlaw::ContentHashWrong);
    assert_eq!(verify(&peer, &hash_wrong, &version), Ok(Verified::Signatures));
    assert_ne!(hash_wrong.event_id, valid.event_id);

    let signature_wrong = peer.sign_flawed_pdu(&message, &version, PduFlaw::SignatureWrong);
    assert!(verify(&peer, &signature_wrong, &version).is_err());
    assert_eq!(signature_wrong.event_id, valid.event_id, "signatures are not hashed");

    let unsigned = peer.sign_flawed_pdu(&message, &version, PduFlaw::Unsigned);
    assert!(verify(&peer, &unsigned, &version).is_err());

    let other: OwnedServerName = "127.0.0.99:8448".try_into().unwrap();
    let foreign = peer.sign_flawed_pdu(&message, &version, PduFlaw::ForeignSender(other.clone()));
    assert_eq!(foreign.sender.server_name(), other);
    let mut keys = public_keys_of(&peer);
    let peer_keys = keys[peer.server_name().as_str()].clone();
    keys.insert(other.to_string(), peer_keys);
    let object = foreign.canonical_object().unwrap();
    let rules = versions::rules(&version).unwrap();
    assert!(verify_event(&keys, &object, &rules).is_err(), "the sender's server did not sign");

    let transaction = peer.transaction(&[&valid, &hash_wrong], Vec::new());
    assert_eq!(transaction["origin"], peer.server_name().as_str());
    assert_eq!(transaction["pdus"].as_array().unwrap().len(), 2);
    assert_eq!(transaction["pdus"][0]["sender"], valid.sender.as_str());
}
