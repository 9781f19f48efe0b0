//! Name lookups for server discovery, behind a small trait so tests can answer them: host
//! names through the system resolver (so `/etc/hosts` works), SRV records through
//! hickory-resolver reading the system's `resolv.conf` (no SRV lookups if that is unusable).

use std::{io, net::IpAddr};

use futures_util::future::BoxFuture;
use hickory_resolver::{TokioResolver, proto::rr::RData};

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Among equal priorities, higher is tried first.
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The host to connect to, without a trailing dot; `.` means "no service here".
    pub target: String,
}

/// The DNS lookups discovery needs.
pub trait Dns: Send + Sync + 'static {
    /// The addresses (A and AAAA) of a host name.
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>>;

    /// The SRV records of a name such as `_matrix-fed._tcp.example.org`; empty when it has
    /// none.
    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<SrvRecord>>>;
}

/// The machine's resolvers.
pub struct SystemDns {
    srv: Option<TokioResolver>,
}

impl std::fmt::Debug for SystemDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemDns").field("srv", &self.srv.is_some()).finish()
    }
}

impl SystemDns {
    /// Reads the system's resolver configuration. Without a usable one, SRV lookups find
    /// nothing (names still resolve through the system resolver).
    pub fn new() -> Self {
        let srv = match TokioResolver::builder_tokio().and_then(|builder| builder.build()) {
            Ok(resolver) => Some(resolver),
            Err(error) => {
                tracing::warn!("no usable resolv.conf: SRV records will not be looked up");
                tracing::debug!(%error, "reading resolv.conf failed");
                None
            }
        };
        Self { srv }
    }
}

impl Default for SystemDns {
    fn default() -> Self {
        Self::new()
    }
}

impl Dns for SystemDns {
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host, 0)).await?;
            let mut ips: Vec<IpAddr> = Vec::new();
            for address in addresses {
                if !ips.contains(&address.ip()) {
                    ips.push(address.ip());
                }
            }
            Ok(ips)
        })
    }

    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<SrvRecord>>> {
        Box::pin(async move {
            let Some(resolver) = &self.srv else { return Ok(Vec::new()) };
            // A fully qualified name: no search domains from resolv.conf.
            let fqdn = format!("{}.", name.trim_end_matches('.'));
            let lookup = match resolver.srv_lookup(fqdn.as_str()).await {
                Ok(lookup) => lookup,
                Err(error) if error.is_no_records_found() => return Ok(Vec::new()),
                Err(error) => return Err(io::Error::other(error)),
            };
            let records = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::SRV(srv) => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: if srv.target.is_root() {
                            ".".to_owned()
                        } else {
                            srv.target.to_utf8().trim_end_matches('.').to_owned()
                        },
                    }),
                    _ => None,
                })
                .collect();
            Ok(records)
        })
    }
}

/// SRV records in the order to try them: by priority, then heavier first (deterministic
/// rather than RFC 2782's weighted random choice: every target is tried in turn anyway).
pub(crate) fn sort_srv(records: &mut [SrvRecord]) {
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_records_are_tried_by_priority_then_weight() {
        let record = |priority, weight, target: &str| SrvRecord {
            priority,
            weight,
            port: 8448,
            target: target.to_owned(),
        };
        let mut records = vec![record(20, 0, "c"), record(10, 5, "b"), record(10, 50, "a")];
        sort_srv(&mut records);
        let order: Vec<&str> = records.iter().map(|record| record.target.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn the_system_resolver_reads_hosts_files() {
        let dns = SystemDns::new();
        let addresses = dns.lookup_ip("localhost").await.unwrap();
        assert!(addresses.iter().all(|ip| ip.is_loopback()), "{addresses:?}");
        assert!(!addresses.is_empty());
    }
}
