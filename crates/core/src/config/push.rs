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
    /// Days a notification the user has read, and that does not mention them, is kept. The
    /// record of who was notified of what makes the unread counts and the apps' list of
    /// notifications; a message to a room of 1,000 members is 1,000 of them.
    pub keep_read_days: u32,
    /// Days a mention the user has read is kept (the apps' list of mentions).
    pub keep_read_mentions_days: u32,
    /// Days any notification is kept, read or not: a room its member never opens counts its
    /// unread messages this far back.
    pub keep_unread_days: u32,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_addresses: Vec::new(),
            concurrency: 16,
            keep_read_days: 1,
            keep_read_mentions_days: 30,
            keep_unread_days: 90,
        }
    }
}
