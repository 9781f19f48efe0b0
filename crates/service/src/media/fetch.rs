//! Fetching a URL on behalf of a user without reaching into private networks: only http(s),
//! names resolved here and every address checked to be public before connecting (the
//! connection is pinned to the checked address, so a second DNS answer cannot differ), no
//! proxies, redirects followed by hand with the same checks at every hop, and bounded in size
//! and time.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use reqwest::{Url, redirect::Policy};
use rhizome_core::{Error, Result};
use tokio::time::Instant;

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

/// Whether an IPv4 address is publicly routable.
fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT), 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, 192.0.0/24
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18/15
        || a >= 240) // reserved, 240/4
}

/// Whether an IPv6 address is publicly routable: global unicast (2000::/3) outside the
/// special ranges, with embedded IPv4 addresses checked as IPv4.
fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    let embedded_v4 = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(segments[6], segments[7]));
    }
    // 6to4 (2002::/16) reaches the IPv4 address in the next 32 bits.
    if segments[0] == 0x2002 {
        return is_public_v4(embedded_v4(segments[1], segments[2]));
    }
    let global_unicast = segments[0] & 0xe000 == 0x2000;
    global_unicast
        && !(segments[0] == 0x2001 && segments[1] < 0x0200) // IETF assignments incl. Teredo, 2001::/23
        && !(segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation, 2001:db8::/32
        && segments[0] & 0xfff0 != 0x3ff0 // documentation, 3fff::/20
}

/// Whether an address may be fetched from: publicly routable, IPv4 or IPv6.
pub(crate) fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => is_public_v6(ip),
    }
}

/// Whether an address may be fetched from: public, or allowed by the configuration.
fn fetchable(ip: IpAddr, allowed: &[IpAddr]) -> bool {
    is_public_ip(ip) || allowed.contains(&ip)
}

fn refused() -> Error {
    Error::forbidden("That URL cannot be previewed: it does not lead to a public address")
}

fn unreachable() -> Error {
    Error::not_found("No preview could be fetched for that URL")
}

/// Checks a URL's form and finds the public (or allowed) address to connect to.
async fn checked_address(url: &Url, deadline: Instant, allowed: &[IpAddr]) -> Result<SocketAddr> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid_param("Only http and https URLs can be previewed"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid_param("URLs with credentials cannot be previewed"));
    }
    let port = url.port_or_known_default().ok_or_else(|| Error::invalid_param("Invalid URL"))?;
    let address = match url.host() {
        Some(url::Host::Ipv4(ip)) => SocketAddr::new(IpAddr::V4(ip), port),
        Some(url::Host::Ipv6(ip)) => SocketAddr::new(IpAddr::V6(ip), port),
        Some(url::Host::Domain(domain)) => {
            let lookup = tokio::net::lookup_host((domain, port));
            let addresses: Vec<SocketAddr> = tokio::time::timeout_at(deadline, lookup)
                .await
                .map_err(|_| unreachable())?
                .map_err(|_| unreachable())?
                .collect();
            // Every address the name has must be public: a name that also points inside
            // could be answered differently on the next lookup.
            if addresses.iter().any(|address| !fetchable(address.ip(), allowed)) {
                return Err(refused());
            }
            *addresses.first().ok_or_else(unreachable)?
        }
        None => return Err(Error::invalid_param("The URL has no host")),
    };
    if !fetchable(address.ip(), allowed) {
        return Err(refused());
    }
    Ok(address)
}

/// The `Content-Type` essence of a response.
fn content_type_essence(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get(reqwest::header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    (!essence.is_empty()).then_some(essence)
}

/// Fetches a URL from a public address (or one of `allowed`), following up to five redirects
/// (each checked), reading at most `max_bytes` and finishing by `deadline`.
pub(crate) async fn fetch_public(
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
        let mut builder = reqwest::Client::builder()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public_ip(text.parse().unwrap())
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for address in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "3fff::1",
            "100::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
        ] {
            assert!(!public(address), "{address} must not be fetched from");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.128.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(public(address), "{address} is public");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_before_any_connection() {
        let deadline = Instant::now() + Duration::from_secs(5);
        for url in [
            "http://127.0.0.1/",
            "http://localhost:8008/",
            "http://[::1]:80/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://0x7f000001/",
            "http://2130706433/",
        ] {
            let error =
                checked_address(&Url::parse(url).unwrap(), deadline, &[]).await.unwrap_err();
            assert_eq!(
                error.matrix_kind().map(|kind| kind.errcode()),
                Some("M_FORBIDDEN".into()),
                "{url}"
            );
        }
        for url in ["ftp://example.org/", "file:///etc/passwd", "http://user:pw@example.org/"] {
            let error =
                checked_address(&Url::parse(url).unwrap(), deadline, &[]).await.unwrap_err();
            assert_eq!(
                error.matrix_kind().map(|kind| kind.errcode()),
                Some("M_INVALID_PARAM".into()),
                "{url}"
            );
        }
    }
}
