//! A small JSON-over-HTTP client for endpoint tests: raw requests, so tests can send exactly
//! the bytes (bad JSON included) and see exactly the status and body.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A response: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body as JSON.
    pub body: Value,
}

impl Response {
    /// The `errcode`, if any.
    pub fn errcode(&self) -> Option<&str> {
        self.body.get("errcode").and_then(Value::as_str)
    }

    /// Panics unless the status is 200, showing the body.
    pub fn ok(self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "unexpected response: {}", self.body);
        self.body
    }

    /// Panics unless the status and errcode are as given.
    pub fn expect_error(&self, status: u16, errcode: &str) {
        assert_eq!(
            (self.status.as_u16(), self.errcode()),
            (status, Some(errcode)),
            "body: {}",
            self.body
        );
    }
}

/// A client bound to one server, optionally logged in.
#[derive(Clone)]
pub struct Api {
    pub(crate) base_url: String,
    pub(crate) http: reqwest::Client,
    /// The access token sent with requests.
    pub token: Option<String>,
    /// The user, once registered or logged in.
    pub user_id: Option<String>,
}

impl Api {
    /// A client for the server at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Self::with_client(base_url, reqwest::Client::new())
    }

    /// A client for the server at `base_url` sending through `http` (e.g. an HTTPS client
    /// trusting a test certificate).
    pub fn with_client(base_url: &str, http: reqwest::Client) -> Self {
        Self { base_url: base_url.to_owned(), http, token: None, user_id: None }
    }

    /// Sends a request with a raw body.
    pub async fn raw(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base_url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.expect("the request reaches the server");
        let status = response.status();
        let bytes = response.bytes().await.expect("the response body arrives");
        Response { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    /// Sends a JSON request.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        self.raw(method, path, body.map(|body| body.to_string().into_bytes())).await
    }

    /// `GET`.
    pub async fn get(&self, path: &str) -> Response {
        self.call(Method::GET, path, None).await
    }

    /// `POST` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `PUT` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> Response {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// `DELETE`.
    pub async fn delete(&self, path: &str) -> Response {
        self.call(Method::DELETE, path, None).await
    }

    /// Registers through the dummy UIA flow (open registration) and keeps the token.
    pub async fn register(&mut self, username: &str, password: &str) -> Value {
        let first = self
            .post(
                "/_matrix/client/v3/register",
                json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(first.status.as_u16(), 401, "expected the UIA flows: {}", first.body);
        let session = first.body["session"].as_str().expect("a UIA session").to_owned();
        let body = self
            .post(
                "/_matrix/client/v3/register",
                json!({ "username": username, "password": password, "auth": { "type": "m.login.dummy", "session": session } }),
            )
            .await
            .ok();
        self.token = body["access_token"].as_str().map(str::to_owned);
        self.user_id = body["user_id"].as_str().map(str::to_owned);
        body
    }

    /// A new client for a freshly registered user.
    pub async fn new_user(base_url: &str, username: &str) -> Self {
        let mut api = Self::new(base_url);
        api.register(username, "a-long-password").await;
        api
    }

    /// The user ID (panics when not logged in).
    pub fn user(&self) -> &str {
        self.user_id.as_deref().expect("logged in")
    }

    /// Creates a room and returns its ID.
    pub async fn create_room(&self, body: Value) -> String {
        let response = self.post("/_matrix/client/v3/createRoom", body).await.ok();
        response["room_id"].as_str().expect("a room ID").to_owned()
    }

    /// Sends a text message and returns the event ID.
    pub async fn send_text(&self, room_id: &str, text: &str) -> String {
        let txn = format!("t{}", rand_suffix());
        let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
        let response = self.put(&path, json!({ "msgtype": "m.text", "body": text })).await.ok();
        response["event_id"].as_str().expect("an event ID").to_owned()
    }

    /// Joins a room.
    pub async fn join(&self, room: &str) -> Value {
        self.post(&format!("/_matrix/client/v3/join/{}", encode(room)), json!({})).await.ok()
    }

    /// A `/sync` with the given query string.
    pub async fn sync(&self, query: &str) -> Value {
        self.get(&format!("/_matrix/client/v3/sync?{query}")).await.ok()
    }
}

/// Percent-encodes a path segment.
pub fn encode(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    NEXT.fetch_add(1, Ordering::SeqCst) * 1_000_000_000 + u64::from(nanos)
}
