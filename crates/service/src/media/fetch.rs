//! Fetching a URL on behalf of a user without reaching into private networks: every address
//! checked by [`outbound`](crate::outbound) before connecting and the connection pinned to it,
//! no proxies, redirects followed by hand with the same checks at every hop, and bounded in
//! size and time.

use std::{net::IpAddr, time::Duration};

use reqwest::{Url, redirect::Policy};
use rhizome_core::{Error, Result};
use tokio::time::Instant;

use crate::outbound::{self, Refusal, fetchable};

/// The most redirects followed.
const MAX_REDIRECTS: usize = 5;

/// A fetched resource.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The `Content-Type` essence (`text/html`), lowercased.
    pub content_type: Option<String>,
    /// The body, cut at the size limit.
    pub body: Vec<u8>,
    /// The URL it came from after redirects.
    pub url: Url,
}

fn refused() -> Error {
    Error::forbidden("That URL cannot be previewed: it does not lead to a public address")
}

fn unreachable() -> Error {
    Error::not_found("No preview could be fetched for that URL")
}

/// The address to connect to for a URL, or the error a client gets.
async fn checked_address(
    url: &Url,
    deadline: Instant,
    allowed: &[IpAddr],
) -> Result<std::net::SocketAddr> {
    outbound::checked_address(url, deadline, allowed).await.map_err(|refusal| match refusal {
        Refusal::NotPublic => refused(),
        Refusal::Unresolvable => unreachable(),
        Refusal::Invalid(why) => Error::invalid_param(why),
    })
}

/// The `Content-Type` essence of a response.
fn content_type_essence(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(reqwest::header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    (!essence.is_empty()).then_some(essence)
}

/// Fetches a URL from a public address (or one of `allowed`), following up to five redirects
/// (each checked), reading at most `max_bytes` and finishing by `deadline`, with the shared
/// TLS settings `tls`.
pub(crate) async fn fetch_public(
    tls: &crate::outbound::OutboundTls,
    url: Url,
    max_bytes: u64,
    deadline: Instant,
    allowed: &[IpAddr],
) -> Result<Fetched> {
    let mut url = url;
    for _ in 0..=MAX_REDIRECTS {
        let address = checked_address(&url, deadline, allowed).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(unreachable());
        }
        let mut builder = tls
            .client_builder()
            .redirect(Policy::none())
            .no_proxy()
            .timeout(remaining)
            .connect_timeout(remaining.min(Duration::from_secs(5)))
            .user_agent(concat!("Rhizome/", env!("CARGO_PKG_VERSION"), " (URL preview)"));
        if let Some(url::Host::Domain(domain)) = url.host() {
            builder = builder.resolve(domain, address);
        }
        let client = builder.build().map_err(Error::internal)?;
        let mut response = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "text/html,application/xhtml+xml,image/*;q=0.8")
            .send()
            .await
            .map_err(|_| unreachable())?;
        // The connection went where the checked address says (no proxy, pinned DNS); refuse
        // anything else all the same.
        if response.remote_addr().is_some_and(|remote| !fetchable(remote.ip(), allowed)) {
            return Err(refused());
        }
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(unreachable)?;
            url = url.join(location).map_err(|_| unreachable())?;
            continue;
        }
        if !response.status().is_success() {
            return Err(unreachable());
        }
        let content_type = content_type_essence(&response);
        let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout_at(deadline, response.chunk())
                .await
                .map_err(|_| unreachable())?
                .map_err(|_| unreachable())?;
            let Some(chunk) = chunk else { break };
            let room = limit.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= limit {
                break;
            }
        }
        return Ok(Fetched { content_type, body, url });
    }
    Err(unreachable())
}
