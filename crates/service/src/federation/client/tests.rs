//! The federation client against stub HTTPS servers on loopback: signatures verified where
//! the request arrives, policy refusals before any connection, time and size limits,
//! certificate checks, connection reuse, and the round-trip time of a signed request.

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::IntoResponse,
    routing::{get, put},
};
use futures_util::{StreamExt as _, future::BoxFuture};
use parking_lot::Mutex;
use rhizome_room::SigningKey;
use ruma::{
    MilliSecondsSinceUnixEpoch, ServerName, TransactionId,
    api::{
        error::ErrorKind,
        federation::{
            authentication::XMatrix,
            backfill::get_backfill,
            discovery::{get_server_keys, get_server_version},
            transactions::send_transaction_message,
        },
    },
    event_id, owned_room_id,
    serde::Base64,
    signatures::PublicKeyMap,
    uint,
};
use tokio::net::TcpListener;

use super::*;
use crate::federation::{
    SrvRecord,
    testing::{ORIGIN, StubDns, TestCa, TestServer, client, loopback_config, test_options},
};

type Captured = Arc<Mutex<Vec<http::Request<Bytes>>>>;

/// A stub server that records whole requests and answers the endpoints the tests use.
fn recording(captured: Captured) -> Router {
    let record = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let captured = captured.clone();
        async move {
            let mut request = http::Request::new(body);
            *request.method_mut() = method;
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers;
            captured.lock().push(request);
            if uri.path().starts_with("/_matrix/federation/v1/backfill/") {
                r#"{"origin":"dest.test","origin_server_ts":1,"pdus":[]}"#
            } else {
                r#"{"pdus":{}}"#
            }
        }
    };
    Router::new()
        .route("/_matrix/federation/v1/send/{txn}", put(record.clone()))
        .route("/_matrix/federation/v1/backfill/{room}", get(record))
        .route("/_matrix/federation/v1/version", get(|| async { r#"{"server":{"name":"stub"}}"# }))
}

struct Setup {
    ca: TestCa,
    dns: Arc<StubDns>,
    key: Arc<SigningKey>,
}

impl Setup {
    fn new() -> Self {
        let dns = Arc::new(StubDns::default());
        dns.host("dest.test", &["127.0.0.1"]);
        Self { ca: TestCa::new(), dns, key: Arc::new(SigningKey::generate()) }
    }

    fn client(&self, config: &FederationConfig) -> FederationClient {
        client(config, &self.dns, &self.ca, test_options(1, 1), &self.key)
    }

    fn public_keys(&self) -> PublicKeyMap {
        let key = Base64::parse(self.key.public_key_base64()).unwrap();
        BTreeMap::from([(ORIGIN.to_owned(), BTreeMap::from([(self.key.key_id(), key)]))])
    }
}

fn name(text: &str) -> &ServerName {
    text.try_into().unwrap()
}

fn transaction() -> send_transaction_message::v1::Request {
    let mut request = send_transaction_message::v1::Request::new(
        TransactionId::new(),
        ORIGIN.try_into().unwrap(),
        MilliSecondsSinceUnixEpoch::now(),
    );
    let pdu = serde_json::json!({"type": "m.room.message", "content": {"body": "hello"}});
    request.pdus.push(serde_json::value::to_raw_value(&pdu).unwrap());
    request
}

#[tokio::test]
async fn signed_requests_carry_a_valid_x_matrix_header_for_their_destination() {
    let setup = Setup::new();
    let captured = Captured::default();
    let server = TestServer::start(&setup.ca, &["dest.test"], recording(captured.clone())).await;
    let destination = format!("dest.test:{}", server.port());
    let client = setup.client(&loopback_config());

    let response = client.send(name(&destination), transaction()).await.unwrap();
    assert!(response.pdus.is_empty());
    let room_id = owned_room_id!("!room:dest.test");
    let backfill =
        get_backfill::v1::Request::new(room_id, vec![event_id!("$a:b").to_owned()], uint!(7));
    client.send(name(&destination), backfill).await.unwrap();

    let requests = captured.lock().clone();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].uri().query().unwrap().contains("limit=7"), "the query is signed too");
    for request in &requests {
        let x_matrix = XMatrix::extract_from_http_headers(request.headers()).unwrap();
        assert_eq!(x_matrix.origin, ORIGIN);
        assert_eq!(x_matrix.destination.as_deref().map(ServerName::as_str), Some(&*destination));
        assert_eq!(x_matrix.key.as_str(), setup.key.key_id());
        x_matrix.verify_http_request(request, name(&destination), &setup.public_keys()).unwrap();
        // The signature covers the destination and the key: anything else fails.
        assert!(
            x_matrix
                .verify_http_request(request, name("other.test"), &setup.public_keys())
                .is_err()
        );
        let other_key = SigningKey::generate();
        let other = BTreeMap::from([(
            ORIGIN.to_owned(),
            BTreeMap::from([(
                setup.key.key_id(),
                Base64::parse(other_key.public_key_base64()).unwrap(),
            )]),
        )]);
        assert!(x_matrix.verify_http_request(request, name(&destination), &other).is_err());
        assert_eq!(request.headers()[header::USER_AGENT], USER_AGENT);
    }
}

#[tokio::test]
async fn unauthenticated_endpoints_are_unsigned_and_raw_bytes_are_kept() {
    let setup = Setup::new();
    let exact = r#"{ "server_name":"dest.test", "valid_until_ts": 1,"verify_keys":{} , "old_verify_keys":{}}"#;
    let authorization = Arc::new(Mutex::new(Vec::new()));
    let seen = authorization.clone();
    let router = Router::new().route(
        "/_matrix/key/v2/server",
        get(move |headers: HeaderMap| {
            seen.lock().push(headers.get(header::AUTHORIZATION).cloned());
            async move { ([(header::CONTENT_TYPE, "application/json")], exact) }
        }),
    );
    let server = TestServer::start(&setup.ca, &["dest.test"], router).await;
    let destination = format!("dest.test:{}", server.port());
    let client = setup.client(&loopback_config());

    let raw = client
        .send_raw(name(&destination), get_server_keys::v2::Request::new(), RequestLimits::small())
        .await
        .unwrap();
    assert_eq!(raw, exact.as_bytes());
    let typed = client.send(name(&destination), get_server_keys::v2::Request::new()).await.unwrap();
    assert_eq!(typed.server_key.json().get(), exact);
    assert_eq!(*authorization.lock(), vec![None, None]);
}

#[tokio::test]
async fn remote_errors_and_malformed_answers_are_typed() {
    let setup = Setup::new();
    let router = Router::new()
        .route(
            "/_matrix/federation/v1/send/{txn}",
            put(|| async {
                (StatusCode::FORBIDDEN, r#"{"errcode":"M_FORBIDDEN","error":"not you"}"#)
            }),
        )
        .route("/_matrix/federation/v1/version", get(|| async { "<html>not json</html>" }))
        .route(
            "/_matrix/federation/v1/backfill/{room}",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream broke") }),
        );
    let server = TestServer::start(&setup.ca, &["dest.test"], router).await;
    let destination = format!("dest.test:{}", server.port());
    let client = setup.client(&loopback_config());

    let error = client.send(name(&destination), transaction()).await.unwrap_err();
    let FederationError::Remote { status, kind, message } = &error else { panic!("{error:?}") };
    assert_eq!(*status, StatusCode::FORBIDDEN);
    assert_eq!(kind, &Some(ErrorKind::Forbidden));
    assert_eq!(message.as_deref(), Some("not you"));
    let client_error = rhizome_core::Error::from(error);
    assert_eq!(client_error.matrix_kind(), Some(&ErrorKind::Forbidden));

    let error =
        client.send(name(&destination), get_server_version::v1::Request::new()).await.unwrap_err();
    assert!(matches!(error, FederationError::Malformed(_)), "{error:?}");

    let backfill = get_backfill::v1::Request::new(
        owned_room_id!("!room:dest.test"),
        vec![event_id!("$a:b").to_owned()],
        uint!(1),
    );
    let error = client.send(name(&destination), backfill).await.unwrap_err();
    assert!(
        matches!(
            error,
            FederationError::Remote { status: StatusCode::BAD_GATEWAY, kind: None, .. }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn refusals_by_policy_come_before_any_connection() {
    let setup = Setup::new();
    setup.dns.host("mixed.test", &["127.0.0.1", "127.0.0.2"]);
    let captured = Captured::default();
    let server = TestServer::start(
        &setup.ca,
        &["dest.test", "mixed.test", "127.0.0.1"],
        recording(captured),
    )
    .await;
    let port = server.port();
    let refused = |config: FederationConfig, destination: String, expected: FederationError| {
        let client = setup.client(&config);
        async move {
            let error = client.send(name(&destination), transaction()).await.unwrap_err();
            assert_eq!(error.to_string(), expected.to_string(), "{destination}");
            assert!(error.is_refused_by_policy());
        }
    };
    let disabled = FederationConfig { enabled: false, ..loopback_config() };
    refused(disabled, format!("dest.test:{port}"), FederationError::Disabled).await;
    let denied =
        FederationConfig { denied_servers: vec!["*.test".to_owned()], ..loopback_config() };
    refused(denied, format!("dest.test:{port}"), FederationError::ServerDenied).await;
    let allow_list =
        FederationConfig { allowed_servers: vec!["ally.org".to_owned()], ..loopback_config() };
    refused(allow_list, format!("dest.test:{port}"), FederationError::ServerDenied).await;
    // Loopback is not public: refused by name and by IP literal unless allowed.
    let public_only = FederationConfig::default();
    refused(public_only.clone(), format!("dest.test:{port}"), FederationError::AddressDenied).await;
    refused(public_only, format!("127.0.0.1:{port}"), FederationError::AddressDenied).await;
    // Every address of a name must be allowed.
    let one_address = FederationConfig {
        allowed_addresses: vec!["127.0.0.1/32".parse().unwrap()],
        ..loopback_config()
    };
    refused(one_address.clone(), format!("mixed.test:{port}"), FederationError::AddressDenied)
        .await;
    assert_eq!(server.connections(), 0);

    // Allowed exactly, or by a CIDR range.
    let client = setup.client(&one_address);
    client.send(name(&format!("dest.test:{port}")), transaction()).await.unwrap();
    let client = setup.client(&loopback_config());
    client.send(name(&format!("mixed.test:{port}")), transaction()).await.unwrap();
    assert_eq!(server.connections(), 2);
}

/// A DNS whose first answer is one address and every later answer another.
struct FlippingDns {
    lookups: AtomicUsize,
}

impl Dns for FlippingDns {
    fn lookup_ip<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        let first = self.lookups.fetch_add(1, Ordering::SeqCst) == 0;
        let ip = if first { "127.0.0.1" } else { "127.0.0.2" };
        Box::pin(async move { Ok(vec![ip.parse().unwrap()]) })
    }

    fn lookup_srv<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, io::Result<Vec<SrvRecord>>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Two servers on one port: 127.0.0.1 (allowed in the test) and 127.0.0.2 (not allowed).
async fn servers_on_one_port(ca: &TestCa) -> (TestServer, TestServer) {
    for _ in 0..20 {
        let other = TestServer::start_on(
            ca.issue(&["dest.test"]),
            "127.0.0.2:0".parse().unwrap(),
            recording(Captured::default()),
        )
        .await;
        let bind = format!("127.0.0.1:{}", other.port()).parse().unwrap();
        if std::net::TcpListener::bind(bind).is_ok() {
            let allowed = TestServer::start_on(
                ca.issue(&["dest.test"]),
                bind,
                recording(Captured::default()),
            )
            .await;
            return (allowed, other);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[tokio::test]
async fn a_second_dns_answer_cannot_redirect_a_connection() {
    let ca = TestCa::new();
    let (allowed, other) = servers_on_one_port(&ca).await;
    let config = FederationConfig {
        allowed_addresses: vec!["127.0.0.1/32".parse().unwrap()],
        ..loopback_config()
    };
    let dns = Arc::new(FlippingDns { lookups: AtomicUsize::new(0) });
    let new_client = || {
        let dns: Arc<dyn Dns> = dns.clone();
        let options = ClientOptions {
            dns: Some(dns),
            discovery: test_options(1, 1),
            extra_root_certificates: vec![ca.root()],
        };
        let key = Arc::new(SigningKey::generate());
        FederationClient::with_options(&config, ORIGIN.try_into().unwrap(), key, options).unwrap()
    };
    let destination = format!("dest.test:{}", allowed.port());
    let client = new_client();
    for _ in 0..3 {
        client.send(name(&destination), transaction()).await.unwrap();
    }
    // One lookup, checked, and the connection made to exactly that answer.
    assert_eq!(dns.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(allowed.connections(), 1);
    // The name now answers the address that is not allowed: the next connection is refused.
    let error = new_client().send(name(&destination), transaction()).await.unwrap_err();
    assert!(matches!(error, FederationError::AddressDenied), "{error:?}");
    assert_eq!(other.connections(), 0);
}

#[tokio::test]
async fn a_destination_that_never_answers_times_out_in_the_configured_time() {
    let setup = Setup::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    let silent = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            holder.lock().push(socket);
        }
    });
    let config = FederationConfig { request_timeout_secs: 1, ..loopback_config() };
    let client = setup.client(&config);
    let destination = format!("dest.test:{port}");

    let started = tokio::time::Instant::now();
    let error = client.send(name(&destination), transaction()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, FederationError::Timeout), "{error:?}");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );

    let limits = RequestLimits::default().with_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let error =
        client.send_with_limits(name(&destination), transaction(), limits).await.unwrap_err();
    assert!(matches!(error, FederationError::Timeout), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert!(!held.lock().is_empty());
    silent.abort();
}

#[tokio::test]
async fn a_huge_response_is_cut_off_without_buffering_it() {
    const CHUNK: usize = 1024 * 1024;
    const CHUNKS: usize = 100;
    let setup = Setup::new();
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let stream_body = move |declare_length: bool| {
        let counter = counter.clone();
        async move {
            let chunks = futures_util::stream::iter(0..CHUNKS).map(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, io::Error>(Bytes::from(vec![b' '; CHUNK]))
            });
            let mut response = Body::from_stream(chunks).into_response();
            if declare_length {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, (CHUNK * CHUNKS).to_string().parse().unwrap());
            }
            response
        }
    };
    let streaming = stream_body.clone();
    let router = Router::new()
        .route("/_matrix/federation/v1/send/{txn}", put(move || streaming(false)))
        .route("/_matrix/federation/v1/version", get(move || stream_body(true)));
    let server = TestServer::start(&setup.ca, &["dest.test"], router).await;
    let destination = format!("dest.test:{}", server.port());
    let client = setup.client(&loopback_config());

    let limits = RequestLimits::default().with_max_body_bytes(CHUNK);
    let error =
        client.send_with_limits(name(&destination), transaction(), limits).await.unwrap_err();
    assert!(matches!(error, FederationError::ResponseTooLarge { limit: CHUNK }), "{error:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = produced.load(Ordering::SeqCst);
    assert!(sent < 20, "the server could produce {sent} MiB: the client kept reading");

    // A declared length over the limit is refused before reading.
    let request = get_server_version::v1::Request::new();
    let error = client.send_with_limits(name(&destination), request, limits).await.unwrap_err();
    assert!(matches!(error, FederationError::ResponseTooLarge { .. }), "{error:?}");
}

#[tokio::test]
async fn certificates_must_be_valid_for_the_name_unless_verification_is_off() {
    let setup = Setup::new();
    setup.dns.host("named.test", &["127.0.0.1"]);
    let wrong_name =
        TestServer::start(&setup.ca, &["wrong.test"], recording(Captured::default())).await;
    let client = setup.client(&loopback_config());
    let error = client
        .send(name(&format!("named.test:{}", wrong_name.port())), transaction())
        .await
        .unwrap_err();
    assert!(matches!(error, FederationError::Tls(_)), "{error:?}");

    let stranger = TestCa::new();
    let untrusted =
        TestServer::start(&stranger, &["named.test"], recording(Captured::default())).await;
    let error = client
        .send(name(&format!("named.test:{}", untrusted.port())), transaction())
        .await
        .unwrap_err();
    assert!(matches!(error, FederationError::Tls(_)), "{error:?}");
    assert!(rhizome_core::Error::from(error).message().contains("could not be reached"));

    let unverified = FederationConfig { verify_certificates: false, ..loopback_config() };
    let client = setup.client(&unverified);
    for server in [&wrong_name, &untrusted] {
        client.send(name(&format!("named.test:{}", server.port())), transaction()).await.unwrap();
    }
}

#[tokio::test]
async fn signed_request_round_trip_time_on_loopback() {
    const ROUNDS: usize = 300;
    let setup = Setup::new();
    let server = TestServer::start(&setup.ca, &["dest.test"], recording(Captured::default())).await;
    let destination = format!("dest.test:{}", server.port());
    let client = setup.client(&loopback_config());
    client.send(name(&destination), transaction()).await.unwrap();
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = std::time::Instant::now();
        let response = client.send(name(&destination), transaction()).await.unwrap();
        times.push(started.elapsed());
        assert!(response.pdus.is_empty());
    }
    times.sort();
    println!(
        "signed federation request round trip on loopback (pooled, debug build): median {:?}, p90 {:?}, over {ROUNDS}",
        times[ROUNDS / 2],
        times[ROUNDS * 9 / 10],
    );
    assert_eq!(server.connections(), 1, "one pooled connection serves every request");
}
