//! Outbound HTTP to addresses users or remote servers choose (URL previews, push gateways,
//! federation) without reaching into private networks: only http(s), names resolved here and
//! every address checked to be public (or one the organiser allowed, by address or CIDR range)
//! before connecting; the caller pins the connection to the checked address, so a second DNS
//! answer cannot differ, or (a client kept across requests, for push gateways) resolves names
//! through [`CheckedResolver`], which refuses any answer with an address that may not be
//! reached. Their TLS settings are built once and shared ([`OutboundTls`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use reqwest::Url;
use tokio::time::Instant;

/// Why a URL may not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It leads to an address that is neither public nor allowed.
    NotPublic,
    /// Its name did not resolve in time.
    Unresolvable,
    /// It is not a URL that may be reached at all (scheme, credentials, no host).
    Invalid(&'static str),
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
pub(crate) fn fetchable(ip: IpAddr, allowed: &[IpAddr]) -> bool {
    is_public_ip(ip) || allowed.contains(&ip)
}

/// Whether an address may be fetched from: public, or inside one of the allowed addresses or
/// CIDR ranges (`federation.allowed_addresses`). An IPv4-mapped IPv6 address counts as the
/// IPv4 address it reaches.
pub(crate) fn fetchable_within(ip: IpAddr, allowed: &[IpNet]) -> bool {
    let reached = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    is_public_ip(ip) || allowed.iter().any(|net| net.contains(&ip) || net.contains(&reached))
}

/// The addresses of a name, if it has any and every one may be reached: a name that also
/// points inside could be answered differently on the next lookup.
async fn resolve_fetchable(
    name: &str,
    port: u16,
    allowed: &[IpAddr],
) -> Result<Vec<SocketAddr>, Refusal> {
    let addresses: Vec<SocketAddr> =
        tokio::net::lookup_host((name, port)).await.map_err(|_| Refusal::Unresolvable)?.collect();
    if addresses.is_empty() {
        return Err(Refusal::Unresolvable);
    }
    if addresses.iter().any(|address| !fetchable(address.ip(), allowed)) {
        return Err(Refusal::NotPublic);
    }
    Ok(addresses)
}

/// Checks a URL's form and finds the public (or allowed) address to connect to.
pub(crate) async fn checked_address(
    url: &Url,
    deadline: Instant,
    allowed: &[IpAddr],
) -> Result<SocketAddr, Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Invalid("Only http and https URLs can be reached"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Invalid("URLs with credentials cannot be reached"));
    }
    let port = url.port_or_known_default().ok_or(Refusal::Invalid("Invalid URL"))?;
    let address = match url.host() {
        Some(url::Host::Ipv4(ip)) => SocketAddr::new(IpAddr::V4(ip), port),
        Some(url::Host::Ipv6(ip)) => SocketAddr::new(IpAddr::V6(ip), port),
        Some(url::Host::Domain(domain)) => {
            let lookup = resolve_fetchable(domain, port, allowed);
            let addresses = tokio::time::timeout_at(deadline, lookup)
                .await
                .map_err(|_| Refusal::Unresolvable)??;
            *addresses.first().ok_or(Refusal::Unresolvable)?
        }
        None => return Err(Refusal::Invalid("The URL has no host")),
    };
    if !fetchable(address.ip(), allowed) {
        return Err(Refusal::NotPublic);
    }
    Ok(address)
}

/// Why a name was not resolved for a kept client ([`CheckedResolver`]): it leads to an
/// address that is neither public nor allowed.
#[derive(Debug)]
pub(crate) struct AddressRefused;

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the name leads to an address that may not be reached")
    }
}

impl std::error::Error for AddressRefused {}

/// Whether a request's error came from [`CheckedResolver`] refusing the name.
pub(crate) fn refused_by_resolver(error: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if error.is::<AddressRefused>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Name resolution for a client kept across requests (push gateways): a name resolves only if
/// every address it has may be reached, as [`checked_address`] asks, and the client connects to
/// the addresses checked, so a connection kept open is one to a checked address. (An IP address
/// in a URL is not resolved: [`fetchable`] is asked before the request.)
pub(crate) struct CheckedResolver {
    allowed: Vec<IpAddr>,
}

impl CheckedResolver {
    pub(crate) fn new(allowed: &[IpAddr]) -> Self {
        Self { allowed: allowed.to_vec() }
    }
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            match resolve_fetchable(name.as_str(), 0, &allowed).await {
                Ok(addresses) => Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs),
                Err(Refusal::NotPublic) => Err(Box::new(AddressRefused) as _),
                Err(_) => Err("the name has no address".into()),
            }
        })
    }
}

/// The TLS settings of requests to addresses users chose (push gateways, URL previews): the
/// federation client's, verified against the platform's roots (the webpki roots when it has
/// none), built on first use and shared by every request. Each request has a client of its own
/// (pinned to the address checked for it), and a client built with reqwest's own TLS settings
/// loads and parses the platform's whole certificate store: about 3 ms of CPU per push
/// notification, against 1 µs with these.
pub(crate) struct OutboundTls;

impl OutboundTls {
    /// The shared settings (`None` if they could not be built: reqwest's own are used then).
    fn config(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        match crate::federation::client::transport::platform_verifying() {
            Ok(config) => Some(config),
            Err(error) => {
                tracing::warn!(%error, "no shared TLS settings for outbound requests");
                None
            }
        }
    }

    /// A client builder for one request, with the shared TLS settings.
    pub(crate) fn client_builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder();
        match self.config() {
            Some(config) => builder.use_preconfigured_tls(config.as_ref().clone()),
            None => builder,
        }
    }
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
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
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
            let refusal = checked_address(&Url::parse(url).unwrap(), deadline, &[]).await;
            assert_eq!(refusal, Err(Refusal::NotPublic), "{url}");
        }
        // An allowed address may be reached; its neighbours still may not.
        let allowed = ["127.0.0.1".parse().unwrap()];
        let url = Url::parse("http://127.0.0.1:9/").unwrap();
        assert!(checked_address(&url, deadline, &allowed).await.is_ok());
        let url = Url::parse("http://127.0.0.2:9/").unwrap();
        assert_eq!(checked_address(&url, deadline, &allowed).await, Err(Refusal::NotPublic));
        for url in ["ftp://example.org/", "file:///etc/passwd", "http://user:pw@example.org/"] {
            let refusal = checked_address(&Url::parse(url).unwrap(), deadline, &[]).await;
            assert!(matches!(refusal, Err(Refusal::Invalid(_))), "{url}");
        }
    }

    #[test]
    fn cidr_ranges_allow_every_address_inside_and_nothing_outside() {
        let nets: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "10.1.2.3/32".parse().unwrap()];
        for inside in ["127.0.0.1", "127.9.8.7", "10.1.2.3", "::ffff:127.0.0.5"] {
            assert!(fetchable_within(inside.parse().unwrap(), &nets), "{inside}");
        }
        for outside in ["10.1.2.4", "192.168.1.1", "::1", "169.254.169.254", "fd00::1"] {
            assert!(!fetchable_within(outside.parse().unwrap(), &nets), "{outside}");
        }
        let v6: Vec<IpNet> = vec!["fd00::/8".parse().unwrap()];
        assert!(fetchable_within("fd12::1".parse().unwrap(), &v6));
        assert!(!fetchable_within("fe80::1".parse().unwrap(), &v6));
        // Public addresses need no allowance.
        assert!(fetchable_within("8.8.8.8".parse().unwrap(), &[]));
    }
}

#[cfg(test)]
mod tls_tests {
    use axum::{Router, routing::get};

    use super::OutboundTls;
    use crate::federation::testing::{TestCa, TestServer};

    /// The settings are built once, and still verify certificates: a server whose certificate
    /// comes from an authority the platform does not trust is refused, and the same request
    /// with verification off (as the test's own control) gets through.
    #[tokio::test]
    async fn outbound_requests_share_one_verifying_tls_setup() {
        let tls = OutboundTls;
        let first = tls.config().expect("TLS settings");
        let again = OutboundTls.config().expect("TLS settings");
        assert!(std::sync::Arc::ptr_eq(&first, &again), "built again");

        let ca = TestCa::new();
        let server = TestServer::start(
            &ca,
            &["127.0.0.1"],
            Router::new().route("/", get(|| async { "hi" })),
        )
        .await;
        let url = format!("https://127.0.0.1:{}/", server.port());
        let client = tls.client_builder().no_proxy().build().unwrap();
        let refused = client.get(&url).send().await;
        assert!(refused.is_err(), "a certificate from an unknown authority was accepted");
        let control = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        assert_eq!(control.get(&url).send().await.unwrap().text().await.unwrap(), "hi");
    }
}
