//! A federation peer of the test's own, as Complement's tests stand on a small federation server
//! inside the test: an HTTPS server on a loopback address with its own server name (`IP:PORT`)
//! and ed25519 key, which serves its key document and version, answers any other federation
//! path through handlers the test installs, and records every request it receives. Its client
//! side signs requests with X-Matrix, correctly or in chosen broken ways, and builds PDUs signed
//! with its key, correctly or with one thing broken: the adversarial cases a homeserver must
//! refuse become a few lines each.
//!
//! ```text
//! let peer = TestPeer::start().await;
//! peer.handle(Method::GET, "/_matrix/federation/v1/query/profile", |_request| {
//!     (200, json!({ "displayname": "Remote" }))
//! });
//! let response = peer
//!     .request(server_name, base_url, Method::GET, "/_matrix/federation/v1/version", None)
//!     .await;
//! ```
//!
//! Requests to the peer are not verified: it answers anyone.

mod client;
mod keys;
mod membership;
mod pdu;
mod server;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use rhizome_room::SigningKey;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::Value;

pub use client::{PeerResponse, Signing};
pub use membership::JoinedRoom;
pub use pdu::PduFlaw;

use crate::certs::TestCertificate;

/// The loopback address test peers listen on unless told otherwise.
pub const DEFAULT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 13);

/// A request the peer received.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// The method.
    pub method: Method,
    /// The path, as sent (percent-encoded).
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The path parameters (`{name}` segments, percent-decoded) of the handler pattern that
    /// matched, if any.
    pub params: BTreeMap<String, String>,
}

impl ReceivedRequest {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A path parameter of the matched pattern (`""` when absent).
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or_default()
    }

    /// The `Authorization` header, if any.
    pub fn authorization(&self) -> Option<&str> {
        self.headers.get(http::header::AUTHORIZATION).and_then(|value| value.to_str().ok())
    }

    /// Whether the method is `method` and the path matches `pattern`.
    pub fn matches(&self, method: &Method, pattern: &str) -> bool {
        self.method == method && server::match_path(pattern, &self.path).is_some()
    }
}

/// What a handler answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: Bytes,
    /// How long to wait before answering (to play a slow server).
    pub delay: Option<Duration>,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: StatusCode, body: &Value) -> Self {
        Self {
            status,
            content_type: "application/json".to_owned(),
            body: Bytes::from(body.to_string()),
            delay: None,
        }
    }

    /// A Matrix error: `{"errcode": …, "error": …}`.
    pub fn error(status: StatusCode, errcode: &str, message: &str) -> Self {
        Self::json(status, &serde_json::json!({ "errcode": errcode, "error": message }))
    }

    /// Any bytes with any content type (malformed answers).
    pub fn raw(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self { status, content_type: content_type.to_owned(), body: body.into(), delay: None }
    }

    /// The same answer, sent after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

impl From<(StatusCode, Value)> for Reply {
    fn from((status, body): (StatusCode, Value)) -> Self {
        Self::json(status, &body)
    }
}

impl From<(u16, Value)> for Reply {
    fn from((status, body): (u16, Value)) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::json(status, &body)
    }
}

impl From<Value> for Reply {
    fn from(body: Value) -> Self {
        Self::json(StatusCode::OK, &body)
    }
}

type Handler = Arc<dyn Fn(&ReceivedRequest) -> Reply + Send + Sync>;

struct Route {
    method: Method,
    pattern: String,
    handler: Handler,
}

/// The peer's keys as its key document publishes them.
struct KeyState {
    current: Arc<SigningKey>,
    valid_until: MilliSecondsSinceUnixEpoch,
    /// Key ID → (public key, unpadded base64; when it expired).
    old_keys: BTreeMap<String, (String, MilliSecondsSinceUnixEpoch)>,
}

/// What the server task and the test share.
struct State {
    server_name: OwnedServerName,
    keys: Mutex<KeyState>,
    routes: Mutex<Vec<Route>>,
    received: Mutex<Vec<ReceivedRequest>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler that panicked poisons nothing the peer relies on.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running test peer; its server stops when it is dropped.
pub struct TestPeer {
    state: Arc<State>,
    address: SocketAddr,
    base_url: String,
    certificate: TestCertificate,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TestPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPeer").field("server_name", &self.state.server_name).finish()
    }
}

impl Drop for TestPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestPeer {
    /// Starts a peer on [`DEFAULT_IP`] and a free port, with a fresh key valid for a day.
    pub async fn start() -> Self {
        Self::start_on(DEFAULT_IP).await
    }

    /// Starts a peer on the given loopback address and a free port.
    pub async fn start_on(ip: Ipv4Addr) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("a free port");
        let address = listener.local_addr().expect("invariant: a bound socket has an address");
        let server_name = OwnedServerName::try_from(address.to_string())
            .expect("invariant: an IP address and port make a server name");
        let certificate = TestCertificate::self_signed(&[&ip.to_string()]);
        let valid_until = MilliSecondsSinceUnixEpoch::from_system_time(
            std::time::SystemTime::now() + Duration::from_secs(24 * 3600),
        )
        .expect("invariant: tomorrow is a valid timestamp");
        let state = Arc::new(State {
            server_name,
            keys: Mutex::new(KeyState {
                current: Arc::new(SigningKey::generate()),
                valid_until,
                old_keys: BTreeMap::new(),
            }),
            routes: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
        });
        let acceptor = server::tls_acceptor(&certificate);
        let task = tokio::spawn(server::serve(listener, acceptor, Arc::clone(&state)));
        Self { state, address, base_url: format!("https://{address}"), certificate, task }
    }

    /// Its server name, `IP:PORT`.
    pub fn server_name(&self) -> &ServerName {
        &self.state.server_name
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `https://IP:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Its self-signed TLS certificate.
    pub fn certificate(&self) -> &TestCertificate {
        &self.certificate
    }

    /// A user ID on this peer.
    pub fn user_id(&self, localpart: &str) -> OwnedUserId {
        UserId::parse(format!("@{localpart}:{}", self.state.server_name))
            .expect("invariant: a test localpart makes a valid user ID")
    }

    /// Installs a handler for `method` and paths matching `pattern`: literal segments, `{name}`
    /// for any one segment (available as [`ReceivedRequest::param`]), and a final `*` for any
    /// rest. Handlers installed later take precedence, also over the built-in key and version
    /// endpoints; paths nothing handles get 404 `M_UNRECOGNIZED`.
    pub fn handle<R: Into<Reply>>(
        &self,
        method: Method,
        pattern: &str,
        handler: impl Fn(&ReceivedRequest) -> R + Send + Sync + 'static,
    ) {
        let handler: Handler = Arc::new(move |request| handler(request).into());
        lock(&self.state.routes).push(Route { method, pattern: pattern.to_owned(), handler });
    }

    /// Removes every installed handler.
    pub fn clear_handlers(&self) {
        lock(&self.state.routes).clear();
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        lock(&self.state.received).clone()
    }

    /// The requests received so far for `method` and paths matching `pattern`.
    pub fn received_matching(&self, method: &Method, pattern: &str) -> Vec<ReceivedRequest> {
        lock(&self.state.received)
            .iter()
            .filter(|request| request.matches(method, pattern))
            .cloned()
            .collect()
    }

    /// Forgets the requests received so far.
    pub fn clear_received(&self) {
        lock(&self.state.received).clear();
    }

    /// Waits for the first request (already received or still to come) for `method` and a path
    /// matching `pattern`; panics, listing what was received, after `timeout`.
    pub async fn wait_for(
        &self,
        method: &Method,
        pattern: &str,
        timeout: Duration,
    ) -> ReceivedRequest {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(request) = self.received_matching(method, pattern).into_iter().next() {
                return request;
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = self
                    .received()
                    .iter()
                    .map(|request| format!("{} {}", request.method, request.path))
                    .collect();
                panic!("no {method} {pattern} within {timeout:?}; received: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
