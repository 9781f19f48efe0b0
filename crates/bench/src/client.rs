//! A minimal Matrix Client-Server API client: plain JSON over HTTP, nothing server-specific.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::{Value, json};

/// How many times a setup request is retried on rate limiting, 5xx or transport errors.
pub const SETUP_RETRIES: u32 = 5;

/// How many `createRoom` requests the server refused with `M_ROOM_IN_USE` (then retried).
pub static ROOM_ID_COLLISIONS: AtomicU64 = AtomicU64::new(0);

/// A shared HTTP client bound to one homeserver's base URL. A server made of several
/// processes has one base URL per process: the client talks to the first, and
/// [`Api::pinned`] gives the one a user is assigned to.
#[derive(Clone)]
pub struct Api {
    client: Client,
    base: String,
    bases: std::sync::Arc<[String]>,
}

impl Api {
    /// Builds a client sized for many concurrent long-polls against one host (one or more
    /// processes of one server, each with its base URL).
    pub fn new(base_urls: &[String]) -> Result<Self> {
        let bases: std::sync::Arc<[String]> =
            base_urls.iter().map(|b| b.trim_end_matches('/').to_owned()).collect();
        let base = bases.first().cloned().context("a server needs at least one base URL")?;
        let client = Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(4096)
            .pool_idle_timeout(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .context("building HTTP client")?;
        Ok(Self { client, base, bases })
    }

    /// The same client talking to process `index` (round-robin over the server's processes),
    /// sharing the connection pool.
    pub fn pinned(&self, index: usize) -> Self {
        let base = self.bases[index % self.bases.len()].clone();
        Self { client: self.client.clone(), base, bases: self.bases.clone() }
    }

    /// How many processes (base URLs) the server has.
    pub fn processes(&self) -> usize {
        self.bases.len()
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url> {
        let mut url = Url::parse(&format!("{}{}", self.base, path))
            .with_context(|| format!("invalid URL for {path}"))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// Sends one request and returns the raw body of a successful response.
    async fn send_once(
        &self,
        method: Method,
        url: Url,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Vec<u8>, CallError> {
        let mut req = self.client.request(method, url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(CallError::Transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(CallError::Transport)?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Err(CallError::Status(status, body))
        }
    }

    /// Sends a request, retrying up to `retries` times on 429, 502-504 and transport errors.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        token: Option<&str>,
        body: Option<&Value>,
        retries: u32,
    ) -> Result<Vec<u8>, CallError> {
        let url = self
            .url(path, query)
            .map_err(|e| CallError::Status(StatusCode::BAD_REQUEST, json!(e.to_string())))?;
        let mut attempt = 0;
        loop {
            let res = self.send_once(method.clone(), url.clone(), token, body).await;
            let wait = match &res {
                Err(e) if attempt < retries => e.retry_after(),
                _ => None,
            };
            match wait {
                Some(wait) => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                None => return res,
            }
        }
    }

    /// Like [`Api::call_raw`], parsing the response body as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        retries: u32,
    ) -> Result<Value> {
        let bytes = self
            .call_raw(method.clone(), path, &[], token, body, retries)
            .await
            .map_err(|e| anyhow!("{method} {path}: {e}"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: invalid JSON"))
    }

    /// Registers a user through user-interactive auth with `m.login.dummy`.
    pub async fn register(&self, username: &str, password: &str) -> Result<User> {
        let path = "/_matrix/client/v3/register";
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": "rhizome-bench",
        });
        let first = self.call_raw(Method::POST, path, &[], None, Some(&body), SETUP_RETRIES).await;
        let resp = match first {
            Ok(bytes) => serde_json::from_slice::<Value>(&bytes)?,
            Err(CallError::Status(StatusCode::UNAUTHORIZED, uia)) => {
                let mut auth = json!({ "type": "m.login.dummy" });
                if let Some(session) = uia.get("session") {
                    auth["session"] = session.clone();
                }
                body["auth"] = auth;
                self.call(Method::POST, path, None, Some(&body), SETUP_RETRIES)
                    .await
                    .with_context(|| format!("registering {username}"))?
            }
            Err(e) => bail!("registering {username}: {e}"),
        };
        let user_id = str_field(&resp, "user_id")?;
        let token = str_field(&resp, "access_token")?;
        Ok(User { api: self.clone(), user_id, token, txn: AtomicU64::new(0) })
    }

    /// Logs a registered user in again: a new device with a new access token, so a server's
    /// cached sync answers for the old one cannot serve the next initial sync.
    pub async fn login(&self, user_id: &str, password: &str) -> Result<User> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": user_id },
            "password": password,
            "initial_device_display_name": "rhizome-bench",
        });
        let resp = self
            .call(Method::POST, "/_matrix/client/v3/login", None, Some(&body), SETUP_RETRIES)
            .await
            .with_context(|| format!("logging {user_id} in"))?;
        let token = str_field(&resp, "access_token")?;
        Ok(User { api: self.clone(), user_id: user_id.to_owned(), token, txn: AtomicU64::new(0) })
    }

    /// Waits until `/_matrix/client/versions` answers on every process, or fails after
    /// `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        for i in 0..self.processes() {
            self.pinned(i).wait_ready_one(timeout).await?;
        }
        Ok(())
    }

    async fn wait_ready_one(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let res = self.call(Method::GET, "/_matrix/client/versions", None, None, 0).await;
            match res {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context("server did not become ready"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Why one request failed.
#[derive(Debug)]
pub enum CallError {
    Transport(reqwest::Error),
    Status(StatusCode, Value),
}

impl CallError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Transport(_) => Some(Duration::from_millis(200)),
            CallError::Status(StatusCode::TOO_MANY_REQUESTS, body) => {
                let ms = body.get("retry_after_ms").and_then(Value::as_u64).unwrap_or(200);
                Some(Duration::from_millis(ms.clamp(10, 5_000)))
            }
            CallError::Status(s, _)
                if matches!(s.as_u16(), 502..=504) || *s == StatusCode::INTERNAL_SERVER_ERROR =>
            {
                Some(Duration::from_millis(250))
            }
            CallError::Status(..) => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport error: {e}"),
            CallError::Status(s, body) => write!(f, "HTTP {s}: {body}"),
        }
    }
}

impl std::error::Error for CallError {}

/// A registered user with an access token.
pub struct User {
    api: Api,
    pub user_id: String,
    token: String,
    txn: AtomicU64,
}

/// Parameters of one `/sync` request.
pub struct SyncReq<'a> {
    pub since: Option<&'a str>,
    pub timeout_ms: u64,
    pub filter: &'a str,
}

impl User {
    /// Logs this user in again on the same process (see [`Api::login`]).
    pub async fn login_again(&self, password: &str) -> Result<User> {
        self.api.login(&self.user_id, password).await
    }

    /// Creates a room. A server that derives room IDs from the create event (room version
    /// 12) may answer `M_ROOM_IN_USE` when one user creates rooms concurrently; such requests
    /// are retried a few times and counted in [`ROOM_ID_COLLISIONS`], so the report shows them.
    pub async fn create_room(&self, body: &Value) -> Result<String> {
        let path = "/_matrix/client/v3/createRoom";
        let mut attempt = 0;
        loop {
            let res = self
                .api
                .call_raw(Method::POST, path, &[], Some(&self.token), Some(body), SETUP_RETRIES)
                .await;
            match res {
                Ok(bytes) => {
                    let resp: Value = serde_json::from_slice(&bytes).context("createRoom JSON")?;
                    return str_field(&resp, "room_id");
                }
                Err(CallError::Status(_, err))
                    if attempt < 5
                        && err.get("errcode").and_then(Value::as_str) == Some("M_ROOM_IN_USE") =>
                {
                    ROOM_ID_COLLISIONS.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(2 * attempt)).await;
                }
                Err(e) => bail!("POST {path}: {e}"),
            }
        }
    }

    pub async fn join(&self, room_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/join/{}", encode_segment(room_id));
        self.api
            .call(Method::POST, &path, Some(&self.token), Some(&json!({})), SETUP_RETRIES)
            .await
            .with_context(|| format!("{} joining {room_id}", self.user_id))?;
        Ok(())
    }

    /// Sends an `m.text` message and returns its event ID.
    pub async fn send_text(&self, room_id: &str, text: &str, retries: u32) -> Result<String> {
        let txn = self.txn.fetch_add(1, Ordering::Relaxed);
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/b{txn}",
            encode_segment(room_id)
        );
        let body = json!({ "msgtype": "m.text", "body": text });
        let resp =
            self.api.call(Method::PUT, &path, Some(&self.token), Some(&body), retries).await?;
        str_field(&resp, "event_id")
    }

    /// Runs one `/sync` and returns the raw response body.
    pub async fn sync_raw(&self, req: &SyncReq<'_>, retries: u32) -> Result<Vec<u8>> {
        let timeout = req.timeout_ms.to_string();
        let mut query = vec![("filter", req.filter), ("timeout", timeout.as_str())];
        if let Some(since) = req.since {
            query.push(("since", since));
        }
        self.api
            .call_raw(
                Method::GET,
                "/_matrix/client/v3/sync",
                &query,
                Some(&self.token),
                None,
                retries,
            )
            .await
            .map_err(|e| anyhow!("{} /sync: {e}", self.user_id))
    }

    /// Runs one `/sync` and parses the response.
    pub async fn sync(&self, req: &SyncReq<'_>, retries: u32) -> Result<Value> {
        let bytes = self.sync_raw(req, retries).await?;
        serde_json::from_slice(&bytes).context("/sync returned invalid JSON")
    }
}

/// The `next_batch` token of a sync response.
pub fn next_batch(sync: &Value) -> Result<String> {
    str_field(sync, "next_batch")
}

/// Whether any joined room's timeline in a sync response holds a message with this body.
pub fn timeline_has_body(sync: &Value, body: &str) -> bool {
    let Some(rooms) = sync.pointer("/rooms/join").and_then(Value::as_object) else {
        return false;
    };
    rooms.values().any(|room| {
        room.pointer("/timeline/events").and_then(Value::as_array).is_some_and(|events| {
            events
                .iter()
                .any(|ev| ev.pointer("/content/body").and_then(Value::as_str) == Some(body))
        })
    })
}

/// How many rooms a sync response lists as joined.
pub fn joined_room_count(sync: &Value) -> usize {
    sync.pointer("/rooms/join").and_then(Value::as_object).map_or(0, |m| m.len())
}

fn str_field(v: &Value, key: &str) -> Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("response lacks string field `{key}`: {v}"))
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_room_ids() {
        assert_eq!(encode_segment("!abc:bench.local"), "%21abc%3Abench.local");
        assert_eq!(encode_segment("!a-b_c~d"), "%21a-b_c~d");
    }

    #[test]
    fn finds_bodies_in_timelines() {
        let sync = json!({"next_batch": "s1", "rooms": {"join": {"!r": {"timeline": {"events": [
            {"type": "m.room.message", "content": {"body": "hello"}}
        ]}}}}});
        assert!(timeline_has_body(&sync, "hello"));
        assert!(!timeline_has_body(&sync, "bye"));
        assert_eq!(joined_room_count(&sync), 1);
        assert_eq!(next_batch(&sync).unwrap(), "s1");
    }
}
