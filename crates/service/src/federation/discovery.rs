//! Resolving server names (Server-Server API, "Resolving server names"): a server name becomes
//! the addresses to connect to, the `Host` header and the TLS name, in the spec's order:
//!
//! 1. an IP literal, with its port or 8448;
//! 2. a host name with an explicit port, through A/AAAA records;
//! 3. `https://<hostname>/.well-known/matrix/server` (cached, bounded, see [`well_known`]); a
//!    delegated name is an IP literal, a host name with a port, or a host name looked up
//!    through SRV (`_matrix-fed._tcp`, then the deprecated `_matrix._tcp`), else port 8448;
//! 4. without delegation, the same SRV lookups and port 8448 for the original host name.
//!
//! Every address a name resolves to is checked (public, or allowed by
//! `federation.allowed_addresses`) before anything connects, and the connection is made to
//! exactly the addresses checked.

mod dns;
#[cfg(test)]
mod tests;
mod well_known;

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use rhizome_core::config::FederationConfig;
use ruma::{OwnedServerName, ServerName};

pub use self::dns::{Dns, SrvRecord, SystemDns};
use super::client::{FederationError, transport::Transport};
use crate::outbound;

/// The SRV services looked up for a host name, in order; `_matrix._tcp` is deprecated.
const SRV_SERVICES: [&str; 2] = ["_matrix-fed._tcp", "_matrix._tcp"];

/// Tunables of discovery. The defaults follow the spec's recommendations.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    /// The port `.well-known/matrix/server` is fetched from (443; tests use another).
    pub well_known_port: u16,
    /// The port of a server with no port, no delegation and no SRV record (8448).
    pub default_port: u16,
    /// How long a `.well-known` fetch may take, redirects included.
    pub well_known_timeout: Duration,
    /// The largest `.well-known` body read.
    pub well_known_max_bytes: usize,
    /// The most redirects followed for `.well-known`.
    pub well_known_max_redirects: usize,
    /// How long a `.well-known` answer is kept when it has no caching headers.
    pub cache_default: Duration,
    /// The shortest time an answer is kept, whatever its headers say.
    pub cache_min: Duration,
    /// The longest time an answer is kept, whatever its headers say.
    pub cache_max: Duration,
    /// How long a failed `.well-known` fetch is remembered; doubled for each further failure
    /// in a row, up to `error_cache_max`.
    pub error_cache_min: Duration,
    /// The longest a failure is remembered.
    pub error_cache_max: Duration,
    /// How many host names' `.well-known` answers are remembered.
    pub cache_capacity: NonZeroUsize,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Self {
            well_known_port: 443,
            default_port: 8448,
            well_known_timeout: Duration::from_secs(5),
            well_known_max_bytes: 64 * 1024,
            well_known_max_redirects: 5,
            cache_default: Duration::from_secs(24 * HOUR),
            cache_min: Duration::from_secs(5 * 60),
            cache_max: Duration::from_secs(48 * HOUR),
            error_cache_min: Duration::from_secs(5 * 60),
            error_cache_max: Duration::from_secs(HOUR),
            cache_capacity: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Where a server name leads before any address lookup: what to send and how to find the
/// addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The `Host` header of requests.
    pub host_header: String,
    /// The name the certificate must be valid for: a host name (also sent as SNI) or an IP
    /// address (without brackets; no SNI).
    pub tls_name: String,
    /// How the addresses are found.
    pub route: Route,
}

/// How a destination's addresses are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// An IP literal and port: nothing to look up.
    Address(SocketAddr),
    /// A host name's A/AAAA records, at a port.
    Host {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
    /// The host name's SRV records (`_matrix-fed._tcp`, then `_matrix._tcp`), else its A/AAAA
    /// records at the default port.
    Srv {
        /// The host name.
        host: String,
    },
}

/// A destination with the checked addresses to connect to, in order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The destination.
    pub destination: Destination,
    /// Its addresses, every one public or allowed.
    pub addresses: Vec<SocketAddr>,
}

/// Server discovery with its `.well-known` cache. Shared by every request of a client.
pub struct Discovery {
    dns: Arc<dyn Dns>,
    options: DiscoveryOptions,
    config: Arc<FederationConfig>,
    transport: Transport,
    well_known: well_known::WellKnownCache,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Discovery {
    pub(crate) fn new(
        config: Arc<FederationConfig>,
        dns: Arc<dyn Dns>,
        transport: Transport,
        options: DiscoveryOptions,
    ) -> Self {
        let well_known = well_known::WellKnownCache::new(options.cache_capacity);
        Self { dns, options, config, transport, well_known }
    }

    /// Refuses a destination before anything is sent: federation off, or the server denied.
    pub fn check_policy(&self, server_name: &ServerName) -> Result<(), FederationError> {
        if !self.config.enabled {
            tracing::debug!("federation request refused: federation is disabled");
            return Err(FederationError::Disabled);
        }
        // Patterns match the name with or without its port (`server_allowed` tries both).
        if !self.config.server_allowed(server_name.as_str()) {
            tracing::debug!(%server_name, "federation request refused: server not allowed");
            return Err(FederationError::ServerDenied);
        }
        Ok(())
    }

    /// The destination of a server name: steps 1 and 2 directly, else after `.well-known`
    /// (fetched once per cache period; a failure means no delegation).
    pub async fn destination(
        &self,
        server_name: &ServerName,
    ) -> Result<Destination, FederationError> {
        self.check_policy(server_name)?;
        if let Some(destination) = direct_destination(server_name, self.options.default_port) {
            return Ok(destination);
        }
        let hostname = server_name.host().to_ascii_lowercase();
        let destination = match self.delegation(&hostname).await {
            Some(delegated) => direct_destination(&delegated, self.options.default_port)
                .unwrap_or_else(|| srv_destination(delegated.host())),
            None => srv_destination(&hostname),
        };
        Ok(destination)
    }

    /// The destination and its checked addresses.
    pub async fn resolve(&self, server_name: &ServerName) -> Result<Resolved, FederationError> {
        let destination = self.destination(server_name).await?;
        let addresses = self.addresses(&destination.route).await?;
        Ok(Resolved { destination, addresses })
    }

    /// The checked addresses of a route.
    async fn addresses(&self, route: &Route) -> Result<Vec<SocketAddr>, FederationError> {
        match route {
            Route::Address(address) => {
                self.check_addresses(&[address.ip()])?;
                Ok(vec![*address])
            }
            Route::Host { host, port } => self.host_addresses(host, *port).await,
            Route::Srv { host } => self.srv_addresses(host).await,
        }
    }

    /// The addresses of a host name (or IP address) at a port, all checked.
    async fn host_addresses(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, FederationError> {
        let ips = match parse_ip(host) {
            Some(ip) => vec![ip],
            None => self.dns.lookup_ip(host).await.map_err(|error| {
                tracing::debug!(%error, "a federation host name did not resolve");
                FederationError::Unresolvable
            })?,
        };
        if ips.is_empty() {
            return Err(FederationError::Unresolvable);
        }
        self.check_addresses(&ips)?;
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }

    /// Steps 3.3–3.5 and 4–6: SRV records, else the host name at the default port.
    async fn srv_addresses(&self, host: &str) -> Result<Vec<SocketAddr>, FederationError> {
        for service in SRV_SERVICES {
            let mut records = match self.dns.lookup_srv(&format!("{service}.{host}")).await {
                Ok(records) => records,
                Err(error) => {
                    tracing::debug!(%error, "an SRV lookup failed; treated as no record");
                    Vec::new()
                }
            };
            if records.is_empty() {
                continue;
            }
            if records.iter().all(|record| record.target == ".") {
                // RFC 2782: the service is decidedly not available at this domain.
                return Err(FederationError::Unresolvable);
            }
            dns::sort_srv(&mut records);
            let mut addresses = Vec::new();
            for record in records.iter().filter(|record| record.target != ".") {
                match self.host_addresses(&record.target, record.port).await {
                    Ok(found) => addresses.extend(found),
                    Err(FederationError::AddressDenied) => {
                        return Err(FederationError::AddressDenied);
                    }
                    Err(_) => {}
                }
            }
            addresses.dedup();
            if addresses.is_empty() {
                return Err(FederationError::Unresolvable);
            }
            return Ok(addresses);
        }
        self.host_addresses(host, self.options.default_port).await
    }

    /// Refuses a set of addresses unless every one is public or allowed.
    fn check_addresses(&self, ips: &[IpAddr]) -> Result<(), FederationError> {
        let allowed: &[IpNet] = &self.config.allowed_addresses;
        if ips.iter().all(|ip| outbound::fetchable_within(*ip, allowed)) {
            Ok(())
        } else {
            tracing::debug!("federation request refused: an address is neither public nor allowed");
            Err(FederationError::AddressDenied)
        }
    }
}

/// Steps 1 and 2 (and 3.1, 3.2 for a delegated name): an IP literal, or a host name with an
/// explicit port. `None` for a bare host name.
fn direct_destination(name: &ServerName, default_port: u16) -> Option<Destination> {
    if name.is_ip_literal() {
        let ip = parse_ip(name.host())?;
        return Some(Destination {
            host_header: name.as_str().to_owned(),
            tls_name: ip.to_string(),
            route: Route::Address(SocketAddr::new(ip, name.port().unwrap_or(default_port))),
        });
    }
    let port = name.port()?;
    let host = name.host().to_ascii_lowercase();
    Some(Destination {
        host_header: format!("{host}:{port}"),
        tls_name: host.clone(),
        route: Route::Host { host, port },
    })
}

/// Steps 3.3–3.5 and 4–6: a bare host name, found through SRV or at the default port, with the
/// host name as `Host` header and TLS name.
fn srv_destination(host: &str) -> Destination {
    let host = host.to_ascii_lowercase();
    Destination { host_header: host.clone(), tls_name: host.clone(), route: Route::Srv { host } }
}

/// An IP address, IPv6 with or without brackets.
fn parse_ip(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')).unwrap_or(host).parse().ok()
}

/// A delegated server name from a `.well-known` answer, validated.
fn parse_delegation(value: &str) -> Option<OwnedServerName> {
    OwnedServerName::try_from(value).ok()
}
