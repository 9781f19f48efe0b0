//! Every step of server name resolution against a stub DNS and stub HTTPS servers on loopback,
//! with the `Host` header and SNI asserted where the request arrives.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use rhizome_room::SigningKey;
use ruma::{ServerName, api::federation::discovery::get_server_version};

use super::*;
use crate::federation::{
    FederationClient,
    testing::{Seen, StubDns, TestCa, TestServer, client, loopback_config, test_options},
};

const WELL_KNOWN: &str = "/.well-known/matrix/server";
const VERSION: &str = "/_matrix/federation/v1/version";

/// A server answering the version endpoint.
fn federation() -> Router {
    Router::new().route(VERSION, get(|| async { r#"{"server":{"name":"stub"}}"# }))
}

/// A server answering `.well-known` with `body` (and the version endpoint).
fn well_known(body: &'static str) -> Router {
    federation().route(WELL_KNOWN, get(move || async move { body }))
}

struct Setup {
    ca: TestCa,
    dns: Arc<StubDns>,
    key: Arc<SigningKey>,
}

impl Setup {
    fn new() -> Self {
        let dns = Arc::new(StubDns::default());
        for name in ["origin.test", "delegated.test", "target.test", "named.test"] {
            dns.host(name, &["127.0.0.1"]);
        }
        Self { ca: TestCa::new(), dns, key: Arc::new(SigningKey::generate()) }
    }

    fn client(&self, well_known_port: u16, default_port: u16) -> FederationClient {
        self.client_with(test_options(well_known_port, default_port))
    }

    fn client_with(&self, options: DiscoveryOptions) -> FederationClient {
        client(&loopback_config(), &self.dns, &self.ca, options, &self.key)
    }
}

fn name(text: &str) -> &ServerName {
    text.try_into().unwrap()
}

async fn version(client: &FederationClient, server_name: &str) {
    let request = get_server_version::v1::Request::new();
    let response = client.send(name(server_name), request).await.unwrap();
    assert_eq!(response.server.unwrap().name.as_deref(), Some("stub"));
}

fn seen(sni: Option<&str>, host: &str, path: &str) -> Seen {
    Seen { sni: sni.map(str::to_owned), host: Some(host.to_owned()), path: path.to_owned() }
}

#[tokio::test]
async fn ip_literals_are_used_as_they_are() {
    let setup = Setup::new();
    let server = TestServer::start(&setup.ca, &["127.0.0.1"], federation()).await;
    let port = server.port();
    let client = setup.client(1, port);

    let with_port = format!("127.0.0.1:{port}");
    let resolved = client.discovery().resolve(name(&with_port)).await.unwrap();
    assert_eq!(resolved.destination.host_header, with_port);
    assert_eq!(resolved.destination.tls_name, "127.0.0.1");
    assert_eq!(resolved.addresses, vec![server.address]);
    version(&client, &with_port).await;
    // Without a port: the default port (8448 outside tests), and a Host without port.
    version(&client, "127.0.0.1").await;
    assert_eq!(
        server.seen(),
        vec![seen(None, &with_port, VERSION), seen(None, "127.0.0.1", VERSION)],
        "IP addresses get no SNI"
    );

    let v6 = client.discovery().destination(name("[::1]:8448")).await.unwrap();
    assert_eq!(v6.host_header, "[::1]:8448");
    assert_eq!(v6.tls_name, "::1");
    assert_eq!(v6.route, Route::Address("[::1]:8448".parse().unwrap()));
    assert_eq!(setup.dns.host_lookups.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_host_name_with_a_port_uses_its_addresses_without_well_known() {
    let setup = Setup::new();
    let server = TestServer::start(&setup.ca, &["named.test"], well_known("{}")).await;
    let port = server.port();
    let client = setup.client(port, 1);
    let server_name = format!("named.test:{port}");
    version(&client, &server_name).await;
    assert_eq!(server.seen(), vec![seen(Some("named.test"), &server_name, VERSION)]);
}

#[tokio::test]
async fn well_known_delegation_to_a_name_with_a_port() {
    let setup = Setup::new();
    let target = TestServer::start(&setup.ca, &["delegated.test"], federation()).await;
    let body: &'static str = format!(r#"{{"m.server":"delegated.test:{}"}}"#, target.port()).leak();
    let origin = TestServer::start(&setup.ca, &["origin.test"], well_known(body)).await;
    let client = setup.client(origin.port(), 1);
    version(&client, "origin.test").await;
    assert_eq!(
        origin.seen(),
        vec![seen(Some("origin.test"), &format!("origin.test:{}", origin.port()), WELL_KNOWN)]
    );
    let delegated = format!("delegated.test:{}", target.port());
    assert_eq!(target.seen(), vec![seen(Some("delegated.test"), &delegated, VERSION)]);
}

#[tokio::test]
async fn well_known_delegation_to_an_ip_literal() {
    let setup = Setup::new();
    let target = TestServer::start(&setup.ca, &["127.0.0.1"], federation()).await;
    let delegated = format!("127.0.0.1:{}", target.port());
    let body: &'static str = format!(r#"{{"m.server":"{delegated}"}}"#).leak();
    let origin = TestServer::start(&setup.ca, &["origin.test"], well_known(body)).await;
    let client = setup.client(origin.port(), 1);
    version(&client, "origin.test").await;
    assert_eq!(target.seen(), vec![seen(None, &delegated, VERSION)]);
}

#[tokio::test]
async fn well_known_delegation_without_a_port_uses_srv_then_the_default_port() {
    let setup = Setup::new();
    // The certificate is for the delegated name, wherever SRV points.
    let target = TestServer::start(&setup.ca, &["delegated.test"], federation()).await;
    let origin = TestServer::start(
        &setup.ca,
        &["origin.test"],
        well_known(r#"{"m.server":"delegated.test"}"#),
    )
    .await;
    let expected = vec![seen(Some("delegated.test"), "delegated.test", VERSION)];

    // _matrix-fed._tcp first.
    setup.dns.srv("_matrix-fed._tcp.delegated.test", &[(target.port(), "target.test")]);
    setup.dns.srv("_matrix._tcp.delegated.test", &[(1, "target.test")]);
    let client = setup.client(origin.port(), 1);
    version(&client, "origin.test").await;
    assert_eq!(target.seen(), expected);

    // Then the deprecated _matrix._tcp.
    setup.dns.srv("_matrix-fed._tcp.delegated.test", &[]);
    setup.dns.srv("_matrix._tcp.delegated.test", &[(target.port(), "target.test")]);
    let client = setup.client(origin.port(), 1);
    version(&client, "origin.test").await;
    assert_eq!(target.seen()[1..], expected);

    // Then the host name itself at the default port.
    setup.dns.srv("_matrix._tcp.delegated.test", &[]);
    let client = setup.client(origin.port(), target.port());
    version(&client, "origin.test").await;
    assert_eq!(target.seen()[2..], expected);
}

#[tokio::test]
async fn without_delegation_the_host_name_is_found_through_srv_or_the_default_port() {
    let setup = Setup::new();
    let server = TestServer::start(&setup.ca, &["origin.test"], federation()).await;
    let expected = seen(Some("origin.test"), "origin.test", VERSION);

    // No .well-known (404 from the same server): SRV of the host name.
    setup.dns.srv("_matrix-fed._tcp.origin.test", &[(server.port(), "target.test")]);
    let client = setup.client(server.port(), 1);
    version(&client, "origin.test").await;
    assert_eq!(server.seen()[1], expected);
    assert_eq!(server.seen()[0].path, WELL_KNOWN);

    // No SRV either: the default port.
    setup.dns.srv("_matrix-fed._tcp.origin.test", &[]);
    let client = setup.client(server.port(), server.port());
    version(&client, "origin.test").await;
    assert_eq!(server.seen()[3], expected);

    // An SRV answer of "." means no service at all.
    setup.dns.srv("_matrix-fed._tcp.origin.test", &[(0, ".")]);
    let client = setup.client(server.port(), server.port());
    let refused = client.discovery().resolve(name("origin.test")).await;
    assert!(matches!(refused, Err(FederationError::Unresolvable)), "{refused:?}");
}

/// A `.well-known` server that misbehaves in one way.
fn bad_well_known(path: &'static str) -> Router {
    let huge = format!(r#"{{"m.server":"delegated.test:1","padding":"{}"}}"#, "x".repeat(200_000));
    Router::new()
        .route(WELL_KNOWN, get(move || async move { axum::response::Redirect::temporary(path) }))
        .route(
            "/huge",
            get(move || {
                let huge = huge.clone();
                async move { huge }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                r#"{"m.server":"delegated.test:1"}"#
            }),
        )
        .route("/not-json", get(|| async { "<html>hello</html>" }))
        .route("/no-server", get(|| async { r#"{"m.homeserver":"delegated.test:1"}"# }))
        .route("/bad-server", get(|| async { r#"{"m.server":"not a server name!"}"# }))
        .route("/loop-a", get(|| async { axum::response::Redirect::temporary("/loop-b") }))
        .route("/loop-b", get(|| async { axum::response::Redirect::temporary("/loop-a") }))
        .route(
            "/plain-http",
            get(|| async { axum::response::Redirect::temporary("http://origin.test/x") }),
        )
        .route(
            "/error",
            get(|| async {
                (StatusCode::INTERNAL_SERVER_ERROR, r#"{"m.server":"delegated.test:1"}"#)
            }),
        )
        .route("/good", get(|| async { r#"{"m.server":"delegated.test:1234"}"# }))
}

#[tokio::test]
async fn a_bad_well_known_means_no_delegation_quickly() {
    let setup = Setup::new();
    let no_delegation = Destination {
        host_header: "origin.test".to_owned(),
        tls_name: "origin.test".to_owned(),
        route: Route::Srv { host: "origin.test".to_owned() },
    };
    for path in [
        "/huge",
        "/slow",
        "/not-json",
        "/no-server",
        "/bad-server",
        "/loop-a",
        "/plain-http",
        "/error",
    ] {
        let server = TestServer::start(&setup.ca, &["origin.test"], bad_well_known(path)).await;
        let mut options = test_options(server.port(), 1);
        options.well_known_timeout = Duration::from_millis(800);
        let client = setup.client_with(options);
        let started = tokio::time::Instant::now();
        let destination = client.discovery().destination(name("origin.test")).await.unwrap();
        assert_eq!(destination, no_delegation, "{path}");
        assert!(started.elapsed() < Duration::from_secs(2), "{path} took {:?}", started.elapsed());
    }
    // A redirect to a good answer is followed.
    let server = TestServer::start(&setup.ca, &["origin.test"], bad_well_known("/good")).await;
    let client = setup.client(server.port(), 1);
    let destination = client.discovery().destination(name("origin.test")).await.unwrap();
    assert_eq!(destination.route, Route::Host { host: "delegated.test".to_owned(), port: 1234 });
    assert_eq!(destination.host_header, "delegated.test:1234");
    assert_eq!(server.count("/good"), 1);
}

#[tokio::test]
async fn answers_are_cached_and_failures_briefly_with_backoff() {
    let setup = Setup::new();
    let good = TestServer::start(
        &setup.ca,
        &["origin.test"],
        well_known(r#"{"m.server":"delegated.test:9"}"#),
    )
    .await;
    let client = setup.client(good.port(), 1);
    for _ in 0..3 {
        let destination = client.discovery().destination(name("origin.test")).await.unwrap();
        assert_eq!(destination.host_header, "delegated.test:9");
    }
    assert_eq!(good.count(WELL_KNOWN), 1, "a second resolution does not fetch again");

    // Failures (404 here) are remembered for error_cache_min (500 ms), then doubled.
    let missing = TestServer::start(&setup.ca, &["origin.test"], federation()).await;
    let client = setup.client(missing.port(), 1);
    let discovery = client.discovery();
    discovery.destination(name("origin.test")).await.unwrap();
    discovery.destination(name("origin.test")).await.unwrap();
    assert_eq!(missing.count(WELL_KNOWN), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    discovery.destination(name("origin.test")).await.unwrap();
    assert_eq!(missing.count(WELL_KNOWN), 2, "a failure is fetched again after a while");
    tokio::time::sleep(Duration::from_millis(300)).await;
    discovery.destination(name("origin.test")).await.unwrap();
    assert_eq!(missing.count(WELL_KNOWN), 2, "a second failure is remembered longer");
}

#[tokio::test]
async fn cache_control_sets_how_long_an_answer_is_kept() {
    let setup = Setup::new();
    let router = Router::new().route(
        WELL_KNOWN,
        get(|| async {
            ([(header::CACHE_CONTROL, "public, max-age=1")], r#"{"m.server":"delegated.test:9"}"#)
                .into_response()
        }),
    );
    let server = TestServer::start(&setup.ca, &["origin.test"], router).await;
    let mut options = test_options(server.port(), 1);
    options.cache_min = Duration::ZERO;
    let client = setup.client_with(options);
    client.discovery().destination(name("origin.test")).await.unwrap();
    client.discovery().destination(name("origin.test")).await.unwrap();
    assert_eq!(server.count(WELL_KNOWN), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client.discovery().destination(name("origin.test")).await.unwrap();
    assert_eq!(server.count(WELL_KNOWN), 2);
}

#[tokio::test]
async fn concurrent_lookups_of_one_name_make_one_fetch() {
    let setup = Setup::new();
    let router = Router::new().route(
        WELL_KNOWN,
        get(|| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            r#"{"m.server":"delegated.test:9"}"#
        }),
    );
    let server = TestServer::start(&setup.ca, &["origin.test"], router).await;
    let client = setup.client(server.port(), 1);
    let lookups = (0..20).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.discovery().destination(name("origin.test")).await })
    });
    for lookup in futures_util::future::join_all(lookups).await {
        assert_eq!(lookup.unwrap().unwrap().host_header, "delegated.test:9");
    }
    assert_eq!(server.count(WELL_KNOWN), 1);
}

#[test]
fn cache_periods_follow_the_headers_within_bounds() {
    use http::{HeaderMap, HeaderValue};
    let options = DiscoveryOptions::default();
    let now = std::time::SystemTime::now();
    let period = |pairs: &[(header::HeaderName, &str)]| {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        well_known::cache_period(&headers, now, &options)
    };
    let hours = |hours: u64| Duration::from_secs(hours * 3600);
    assert_eq!(period(&[]), hours(24));
    assert_eq!(period(&[(header::CACHE_CONTROL, "max-age=7200")]), hours(2));
    assert_eq!(period(&[(header::CACHE_CONTROL, "public, max-age=9999999")]), hours(48));
    assert_eq!(period(&[(header::CACHE_CONTROL, "max-age=1")]), options.cache_min);
    assert_eq!(period(&[(header::CACHE_CONTROL, "no-store")]), options.cache_min);
    assert_eq!(period(&[(header::CACHE_CONTROL, "max-age=nonsense")]), hours(24));
    let in_three_hours = httpdate::fmt_http_date(now + hours(3));
    let expires = period(&[(header::EXPIRES, &in_three_hours)]);
    assert!(expires <= hours(3) && expires > hours(3) - Duration::from_secs(2), "{expires:?}");
    // Cache-Control wins over Expires.
    assert_eq!(
        period(&[(header::CACHE_CONTROL, "max-age=7200"), (header::EXPIRES, &in_three_hours)]),
        hours(2)
    );
}
