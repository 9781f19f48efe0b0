//! Configuration of federation: whether and with whom Rhizome talks to other homeservers, how
//! it trusts their keys and certificates, and how it retries.

use std::collections::BTreeMap;

use ipnet::IpNet;
use ruma::OwnedServerName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Federation: talking to other Matrix homeservers, so members reach people on any server and
/// others can join the collective's rooms.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Whether this server federates at all. When false, the federation API answers
    /// `M_FORBIDDEN` and nothing is sent to other servers.
    pub enabled: bool,
    /// Servers allowed to federate with this one, as patterns (`example.org`, `*.example.org`;
    /// `*` matches any run of characters, `?` one). Empty allows every server not denied.
    /// A list makes a closed federation of allied collectives.
    pub allowed_servers: Vec<String>,
    /// Servers refused, as patterns like `allowed_servers`. Denial wins over allowance.
    pub denied_servers: Vec<String>,
    /// Notary servers asked for other servers' signing keys when a server cannot be reached
    /// directly (`/_matrix/key/v2/query`), with the keys their answers must be signed with.
    /// Empty by default: asking a notary tells it whom this server talks to.
    pub trusted_key_servers: Vec<TrustedKeyServer>,
    /// Whether other servers' TLS certificates are verified against the usual web roots.
    /// Only for tests against peers with self-signed certificates: never turn this off on a
    /// server people use.
    pub verify_certificates: bool,
    /// Addresses or CIDR ranges (`127.0.0.0/8`, `10.1.2.3`) other servers may be reached at
    /// although they are not public. Every other loopback, private, link-local or reserved
    /// address is refused, after name resolution.
    #[schemars(with = "Vec<String>")]
    #[serde(deserialize_with = "addresses_or_ranges")]
    pub allowed_addresses: Vec<IpNet>,
    /// Whether presence (online, idle, offline) is shared with other servers. Off by default:
    /// it tells strangers when members are active.
    pub send_presence: bool,
    /// How long a request to another server may take, in seconds, before it is given up.
    pub request_timeout_secs: u64,
    /// The first wait before retrying a server that failed, in seconds; each further failure
    /// multiplies it by four, up to `max_retry_interval_secs`.
    pub min_retry_interval_secs: u64,
    /// The longest wait between retries of a failing server, in seconds.
    pub max_retry_interval_secs: u64,
    /// Whether other servers may read this server's public room directory (the rooms its
    /// users published, `/_matrix/federation/v1/publicRooms`), so their users can find the
    /// collective's public rooms. When false, other servers are refused with `M_FORBIDDEN`;
    /// the rooms stay joinable by alias or invitation, and local users still see the list.
    pub publish_room_directory: bool,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_servers: Vec::new(),
            denied_servers: Vec::new(),
            trusted_key_servers: Vec::new(),
            verify_certificates: true,
            allowed_addresses: Vec::new(),
            send_presence: false,
            request_timeout_secs: 60,
            min_retry_interval_secs: 30,
            max_retry_interval_secs: 86_400,
            publish_room_directory: true,
        }
    }
}

/// A notary server trusted to vouch for other servers' keys.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyServer {
    /// Its server name (`matrix.org`).
    #[schemars(with = "String")]
    pub server_name: OwnedServerName,
    /// Its signing keys: key ID (`ed25519:auto`) to unpadded base64 public key. Answers not
    /// signed by one of them are ignored.
    pub verify_keys: BTreeMap<String, String>,
}

impl FederationConfig {
    /// Whether a server may federate with this one: allowed (or no allow-list) and not denied.
    /// A pattern matches the server name with or without its port (`*.example.org` matches
    /// `chat.example.org:8448`).
    pub fn server_allowed(&self, server_name: &str) -> bool {
        let name = server_name.to_ascii_lowercase();
        let host = ruma::ServerName::parse(&name)
            .map(|parsed| parsed.host().to_owned())
            .unwrap_or_else(|_| name.clone());
        let matches = |patterns: &[String]| {
            patterns.iter().any(|pattern| {
                let pattern = pattern.to_ascii_lowercase();
                glob_match(&pattern, &name) || glob_match(&pattern, &host)
            })
        };
        (self.allowed_servers.is_empty() || matches(&self.allowed_servers))
            && !matches(&self.denied_servers)
    }
}

/// Addresses (`10.1.2.3`, `::1`) or CIDR ranges (`127.0.0.0/8`).
fn addresses_or_ranges<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    let texts: Vec<String> = Vec::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{text}` is neither an IP address nor a CIDR range"
                    ))
                })
        })
        .collect()
}

/// Matches `text` against a pattern where `*` is any run of characters and `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Iterative matching with backtracking to the last `*`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_server_acls() {
        assert!(glob_match("*", "anything.org"));
        assert!(glob_match("*.example.org", "chat.example.org"));
        assert!(!glob_match("*.example.org", "example.org"));
        assert!(glob_match("example.org", "example.org"));
        assert!(glob_match("hs?.test", "hs1.test"));
        assert!(!glob_match("hs?.test", "hs10.test"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXbY"));
    }

    #[test]
    fn allowed_addresses_take_addresses_and_ranges() {
        let config = crate::Config::from_toml_and_env(
            "[federation]\nallowed_addresses = [\"10.1.2.3\", \"127.0.0.0/8\", \"::1\"]\n",
            Vec::new(),
        )
        .unwrap();
        let nets = &config.federation.allowed_addresses;
        assert!(nets[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(!nets[0].contains(&"10.1.2.4".parse::<std::net::IpAddr>().unwrap()));
        assert!(nets[1].contains(&"127.9.9.9".parse::<std::net::IpAddr>().unwrap()));
        assert!(nets[2].contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
        let error = crate::Config::from_toml_and_env(
            "[federation]\nallowed_addresses = [\"nowhere\"]\n",
            Vec::new(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("nowhere"), "{error}");
    }

    #[test]
    fn denial_wins_and_an_allow_list_closes_federation() {
        let mut config = FederationConfig::default();
        assert!(config.server_allowed("anyone.org"));
        config.denied_servers = vec!["*.bad.example".to_owned()];
        assert!(!config.server_allowed("evil.bad.example"));
        assert!(!config.server_allowed("evil.bad.example:443"));
        assert!(config.server_allowed("good.example"));
        config.allowed_servers = vec!["ally.org".to_owned(), "*.ally.org".to_owned()];
        assert!(config.server_allowed("ALLY.org"));
        assert!(config.server_allowed("chat.ally.org"));
        assert!(config.server_allowed("chat.ally.org:8448"));
        assert!(!config.server_allowed("good.example"));
    }
}
