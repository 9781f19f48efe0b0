//! Rhizome's own TLS listener: the same API as over plain HTTP, HTTP/2 and HTTP/1.1 by ALPN,
//! client addresses known (rate limits), certificate reloads that leave open connections
//! alone, broken files on reload, and clients that never finish a handshake.

use std::time::Duration;

use reqwest::{StatusCode, Version, tls::TlsInfo};
use rhizome_testkit::{Backend, TestServer, certs::TestCertificate, https_client_trusting};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VERSIONS: &str = "/_matrix/client/versions";

/// The DER certificate a response came over.
fn peer_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<TlsInfo>()
        .and_then(TlsInfo::peer_certificate)
        .expect("the response came over TLS")
        .to_vec()
}

fn served_certificate(server: &TestServer) -> Vec<u8> {
    server.running().tls_certificate_chain().expect("a certificate")[0].to_vec()
}

#[tokio::test]
async fn both_listeners_serve_the_same_api_under_an_ip_server_name() {
    let server = TestServer::start_tls(Backend::Sqlite, "127.0.0.11", |_| {}).await;
    let tls_address = server.running().tls_address.unwrap();
    assert_eq!(tls_address.ip().to_string(), "127.0.0.11");
    assert_ne!(tls_address.port(), 0);
    assert_eq!(server.config.server_name.as_str(), tls_address.to_string());
    assert_eq!(server.tls_base_url.as_deref(), Some(format!("https://{tls_address}").as_str()));

    // Registered over plain HTTP, known over HTTPS with the same token.
    let alice = rhizome_testkit::Api::new_user(&server.base_url, "alice").await;
    let mut over_tls = server.tls_api();
    over_tls.token = alice.token.clone();
    let whoami = over_tls.get("/_matrix/client/v3/account/whoami").await.ok();
    assert_eq!(whoami["user_id"], format!("@alice:127.0.0.11:{}", tls_address.port()));
    let room_id = over_tls.create_room(json!({ "name": "over TLS" })).await;
    let state = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.name/",
            rhizome_testkit::encode(&room_id)
        ))
        .await
        .ok();
    assert_eq!(state["name"], "over TLS");

    // HTTP/2 when the client offers it, HTTP/1.1 when it does not.
    let url = format!("{}{VERSIONS}", server.tls_base_url.as_deref().unwrap());
    let response = server.https_client().get(&url).send().await.unwrap();
    assert_eq!((response.status(), response.version()), (StatusCode::OK, Version::HTTP_2));
    let pem = server.tls_certificate_pem.clone().unwrap();
    let http1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let response = http1.get(&url).send().await.unwrap();
    assert_eq!((response.status(), response.version()), (StatusCode::OK, Version::HTTP_11));
    let plain: Value =
        reqwest::get(format!("{}{VERSIONS}", server.base_url)).await.unwrap().json().await.unwrap();
    assert_eq!(response.json::<Value>().await.unwrap(), plain);

    // A client that does not trust the certificate is refused.
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn client_addresses_are_known_over_tls() {
    // Connections from 127.0.0.1 are a trusted proxy's, so the client is the address in
    // X-Forwarded-For; without the connection's address every request would count as one.
    let server = TestServer::start_with(Backend::Sqlite, |config| {
        rhizome_testkit::use_tls(config, "127.0.0.1", &["127.0.0.1"]);
        config.rate_limits.enabled = true;
        config.rate_limits.login.burst = 1;
        config.rate_limits.login.per_second = 0.001;
        config.rate_limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let client = server.https_client();
    let login = |user: &'static str, client_address: &'static str| {
        let request = client
            .post(format!("{}/_matrix/client/v3/login", server.tls_base_url.as_deref().unwrap()))
            .header("x-forwarded-for", client_address)
            .json(&json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": user },
                "password": "not-the-password",
            }));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(login("nobody1", "192.0.2.1").await, 403);
    assert_eq!(login("nobody2", "192.0.2.1").await, 429);
    assert_eq!(login("nobody3", "192.0.2.2").await, 403);
    server.stop().await;
}

#[tokio::test]
async fn a_reload_serves_new_connections_the_new_certificate_and_keeps_open_ones() {
    let server = TestServer::start_tls(Backend::Sqlite, "127.0.0.12", |_| {}).await;
    let url = format!("{}{VERSIONS}", server.tls_base_url.as_deref().unwrap());
    let old_pem = server.tls_certificate_pem.clone().unwrap();
    let new = TestCertificate::self_signed(&["127.0.0.12"]);
    let both = https_client_trusting(&[&old_pem, &new.certificate_pem]);

    let response = both.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let old_der = peer_certificate(&response);
    assert_eq!(old_der, served_certificate(&server));

    new.write_to(&server.config.data_dir, "tls");
    server.running().reload_tls_certificate().unwrap();
    let new_der = served_certificate(&server);
    assert_ne!(new_der, old_der);

    // The connection opened before (kept alive in the client's pool) still works, and is
    // still the one with the old certificate.
    let response = both.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(peer_certificate(&response), old_der);

    // A new connection gets the new certificate; a client trusting only the old one fails.
    let fresh = https_client_trusting(&[&old_pem, &new.certificate_pem]);
    let response = fresh.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(peer_certificate(&response), new_der);
    assert!(https_client_trusting(&[&old_pem]).get(&url).send().await.is_err());
    let response = https_client_trusting(&[&new.certificate_pem]).get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_broken_certificate_on_reload_keeps_the_old_one() {
    let server = TestServer::start_tls(Backend::Sqlite, "127.0.0.13", |_| {}).await;
    let url = format!("{}{VERSIONS}", server.tls_base_url.as_deref().unwrap());
    let served = served_certificate(&server);
    let certificate_file = server.config.tls.certificate_file.clone().unwrap();
    let key_file = server.config.tls.private_key_file.clone().unwrap();
    let good_key = std::fs::read(&key_file).unwrap();

    // A truncated certificate, a key of another certificate, a missing key file.
    let pem = server.tls_certificate_pem.clone().unwrap();
    std::fs::write(&certificate_file, &pem[..pem.len() / 2]).unwrap();
    let error = server.running().reload_tls_certificate().unwrap_err();
    assert!(format!("{error:#}").contains("PEM"), "{error:#}");
    std::fs::write(&certificate_file, &pem).unwrap();
    let other = TestCertificate::self_signed(&["127.0.0.13"]);
    std::fs::write(&key_file, &other.private_key_pem).unwrap();
    let error = server.running().reload_tls_certificate().unwrap_err();
    assert!(format!("{error:#}").contains("do not fit together"), "{error:#}");
    std::fs::remove_file(&key_file).unwrap();
    assert!(server.running().reload_tls_certificate().is_err());

    assert_eq!(served_certificate(&server), served);
    let response = server.https_client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(peer_certificate(&response), served);

    // Once the files are right again, a reload succeeds (with the same certificate).
    std::fs::write(&key_file, good_key).unwrap();
    server.running().reload_tls_certificate().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn clients_that_never_finish_a_handshake_do_not_stop_others() {
    let server = TestServer::start_tls(Backend::Sqlite, "127.0.0.14", |_| {}).await;
    let address = server.running().tls_address.unwrap();
    let url = format!("{}{VERSIONS}", server.tls_base_url.as_deref().unwrap());

    // Connections that say nothing, and one that starts a ClientHello and stops.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    let mut partial = tokio::net::TcpStream::connect(address).await.unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();

    for _ in 0..3 {
        let response =
            tokio::time::timeout(Duration::from_secs(5), server.https_client().get(&url).send())
                .await
                .expect("served while other handshakes hang")
                .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    // Plain HTTP on the TLS port: the handshake fails and the connection closes.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    plain.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was closed");
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"));

    // The silent ones are still open (waiting for their handshake timeout) and harmless.
    let mut byte = [0u8; 1];
    let waiting = tokio::time::timeout(Duration::from_millis(200), silent[0].read(&mut byte)).await;
    assert!(waiting.is_err(), "a silent connection is left to its handshake timeout");
    drop(silent);
    drop(partial);
    let response = server.https_client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_tls_configuration_that_cannot_work_stops_the_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let base = rhizome_core::Config {
        data_dir: data_dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..rhizome_core::Config::default()
    };
    let error_of = |config: rhizome_core::Config| async move {
        match rhizome::start(config).await {
            Ok(_) => panic!("the server started"),
            Err(error) => format!("{error:#}"),
        }
    };

    let mut acme_without_listener = base.clone();
    acme_without_listener.tls.acme.enabled = true;
    let error = error_of(acme_without_listener).await;
    assert!(error.contains("tls.acme.enabled needs tls.listen"), "{error}");

    let mut missing_files = base.clone();
    missing_files.tls.listen = Some("127.0.0.1:0".parse().unwrap());
    missing_files.tls.certificate_file = Some(data_dir.path().join("missing.crt"));
    missing_files.tls.private_key_file = Some(data_dir.path().join("missing.key"));
    let error = error_of(missing_files).await;
    assert!(error.contains("missing.crt"), "{error}");

    let options = rhizome::StartOptions { server_name_from_tls_listener: true };
    let error = match rhizome::start_with_options(base, options).await {
        Ok(_) => panic!("the server started"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("needs tls.listen"), "{error}");
}
