//! `/.well-known/matrix/server`: fetched over HTTPS from the host name (every address checked,
//! redirects followed a few times without loops, bounded in size and time), and cached as the
//! spec recommends: `Cache-Control`/`Expires` clamped between a minimum and 48 hours, 24 hours
//! without headers, failures remembered briefly with exponential backoff. Concurrent lookups of
//! one name wait for a single fetch.

use std::{
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use lru::LruCache;
use parking_lot::Mutex;
use ruma::OwnedServerName;
use tokio::time::Instant;
use url::Url;

use super::{Discovery, parse_delegation};
use crate::federation::client::{FederationError, body::read_limited};

/// One host name's remembered answer.
#[derive(Clone, Debug)]
struct Entry {
    /// The delegated server name, or `None` after a failure (or an answer without one).
    delegated: Option<OwnedServerName>,
    expires: Instant,
    /// Failures in a row, for the backoff.
    failures: u32,
}

type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

/// The remembered answers, one slot per host name; a slot's lock is held while it is fetched,
/// so concurrent lookups of one name make one request.
pub(super) struct WellKnownCache {
    slots: Mutex<LruCache<String, Slot>>,
}

impl WellKnownCache {
    pub(super) fn new(capacity: NonZeroUsize) -> Self {
        Self { slots: Mutex::new(crate::bounded::lru(capacity)) }
    }

    fn slot(&self, hostname: &str) -> Slot {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(hostname) {
            return slot.clone();
        }
        let slot = Slot::default();
        slots.put(hostname.to_owned(), slot.clone());
        slot
    }
}

/// Why a `.well-known` fetch gave no delegation (for debug logs only).
#[derive(Debug)]
enum Failure {
    Transport(FederationError),
    Status(StatusCode),
    Redirects,
    NotJson,
    NoServer,
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(error) => write!(f, "{error}"),
            Self::Status(status) => write!(f, "HTTP {status}"),
            Self::Redirects => f.write_str("a redirect loop or too many redirects"),
            Self::NotJson => f.write_str("not JSON"),
            Self::NoServer => f.write_str("no valid m.server"),
            Self::Timeout => f.write_str("timed out"),
        }
    }
}

/// A fetched response: status, headers, and the body of a 200.
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Discovery {
    /// The server name `hostname` delegates to, if its `.well-known` says so (cached).
    pub(super) async fn delegation(&self, hostname: &str) -> Option<OwnedServerName> {
        let slot = self.well_known.slot(hostname);
        let mut entry = slot.lock().await;
        let now = Instant::now();
        if let Some(cached) = entry.as_ref().filter(|cached| cached.expires > now) {
            return cached.delegated.clone();
        }
        let previous_failures = entry.as_ref().map_or(0, |cached| cached.failures);
        let outcome =
            tokio::time::timeout(self.options.well_known_timeout, self.fetch_well_known(hostname))
                .await
                .unwrap_or(Err(Failure::Timeout));
        let now = Instant::now();
        let fresh = match outcome {
            Ok((delegated, period)) => {
                Entry { delegated: Some(delegated), expires: now + period, failures: 0 }
            }
            Err(failure) => {
                tracing::debug!(%failure, "no server delegation from .well-known");
                let failures = previous_failures.saturating_add(1);
                let backoff = self
                    .options
                    .error_cache_min
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(self.options.error_cache_max);
                Entry { delegated: None, expires: now + backoff, failures }
            }
        };
        let delegated = fresh.delegated.clone();
        *entry = Some(fresh);
        delegated
    }

    /// Fetches and parses `.well-known/matrix/server`, following redirects.
    async fn fetch_well_known(
        &self,
        hostname: &str,
    ) -> Result<(OwnedServerName, Duration), Failure> {
        let start = format!(
            "https://{hostname}:{}/.well-known/matrix/server",
            self.options.well_known_port
        );
        let mut url = Url::parse(&start).map_err(|_| Failure::NoServer)?;
        let mut visited: Vec<Url> = Vec::new();
        for _ in 0..=self.options.well_known_max_redirects {
            if visited.contains(&url) {
                return Err(Failure::Redirects);
            }
            visited.push(url.clone());
            let fetched = self.get_once(&url).await.map_err(Failure::Transport)?;
            if fetched.status.is_redirection() {
                let location = fetched
                    .headers
                    .get(header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .ok_or(Failure::Status(fetched.status))?;
                url = url.join(location).map_err(|_| Failure::Status(fetched.status))?;
                continue;
            }
            if fetched.status != StatusCode::OK {
                return Err(Failure::Status(fetched.status));
            }
            let json: serde_json::Value =
                serde_json::from_slice(&fetched.body).map_err(|_| Failure::NotJson)?;
            let delegated = json
                .get("m.server")
                .and_then(serde_json::Value::as_str)
                .and_then(parse_delegation)
                .ok_or(Failure::NoServer)?;
            let period = cache_period(&fetched.headers, SystemTime::now(), &self.options);
            return Ok((delegated, period));
        }
        Err(Failure::Redirects)
    }

    /// One HTTPS GET over a fresh connection to a checked address of the URL's host.
    async fn get_once(&self, url: &Url) -> Result<Fetched, FederationError> {
        if url.scheme() != "https" || !url.username().is_empty() || url.password().is_some() {
            return Err(FederationError::Malformed(FederationError::message_cause(
                "a .well-known redirect leads to a URL that is not plain https",
            )));
        }
        let host = match url.host() {
            Some(url::Host::Domain(domain)) => domain.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(FederationError::Unresolvable),
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses = self.host_addresses(&host, port).await?;
        let stream = self.transport.connect(&addresses, &host).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|error| FederationError::Connection(FederationError::cause(error)))?;
        let limit = self.options.well_known_timeout;
        tokio::spawn(async move {
            // Ends with the request, or when the fetch is given up.
            let _ = tokio::time::timeout(limit, connection).await;
        });
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or(&host)),
            None => url.host_str().unwrap_or(&host).to_owned(),
        };
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::USER_AGENT, super::super::client::USER_AGENT)
            .body(Empty::new())
            .map_err(|error| FederationError::Request(FederationError::cause(error)))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| FederationError::Connection(FederationError::cause(error)))?;
        let (parts, body) = response.into_parts();
        let body = if parts.status == StatusCode::OK {
            read_limited(&parts.headers, body, self.options.well_known_max_bytes).await?
        } else {
            drop(body);
            Bytes::new()
        };
        Ok(Fetched { status: parts.status, headers: parts.headers, body })
    }
}

/// How long an answer is kept: `Cache-Control` (`no-store`/`no-cache` as zero, `max-age`),
/// else `Expires`, else the default; clamped between the minimum and the maximum.
pub(super) fn cache_period(
    headers: &HeaderMap,
    now: SystemTime,
    options: &super::DiscoveryOptions,
) -> Duration {
    let mut period: Option<Duration> = None;
    let directives = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|directive| directive.trim().to_ascii_lowercase());
    for directive in directives {
        if directive == "no-store" || directive == "no-cache" {
            period = Some(Duration::ZERO);
            break;
        }
        if let Some(seconds) = directive.strip_prefix("max-age=")
            && let Ok(seconds) = seconds.trim_matches('"').parse::<u64>()
        {
            period = Some(Duration::from_secs(seconds));
        }
    }
    if period.is_none() {
        period = headers
            .get(header::EXPIRES)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| httpdate::parse_http_date(value).ok())
            .map(|expires| expires.duration_since(now).unwrap_or(Duration::ZERO));
    }
    match period {
        Some(period) => period.clamp(options.cache_min, options.cache_max),
        None => options.cache_default,
    }
}
