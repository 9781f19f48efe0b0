//! Configuration of push notifications: what Rhizome sends to the push gateways of users'
//! phones.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Push notifications. Phone apps (Element X, Element, FluffyChat, …) register a push gateway
/// with `/pushers/set`; when a message notifies someone, Rhizome tells their gateway, which
/// wakes the phone. Each app chooses whether the notification carries the message or only
/// its ID (`format: event_id_only`); the content of encrypted messages is ciphertext either
/// way.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Whether notifications are sent to push gateways at all.
    pub enabled: bool,
    /// Addresses push gateways may be reached at although they are not public (a UnifiedPush
    /// server on the collective's own network, say). Every other loopback, private,
    /// link-local or reserved address is refused.
    pub allowed_addresses: Vec<IpAddr>,
    /// How many notifications are sent at once; more wait their turn.
    pub concurrency: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self { enabled: true, allowed_addresses: Vec::new(), concurrency: 16 }
    }
}
