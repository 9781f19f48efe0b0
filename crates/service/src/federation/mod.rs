//! Federation: talking to other Matrix homeservers over the Server-Server API.
//!
//! - [`discovery`] turns a server name into the addresses to connect to, the `Host` header and
//!   the TLS name (spec: "Resolving server names"), with `.well-known` delegation cached.
//! - [`client`] sends signed requests (`X-Matrix`) to another server by name, over TLS, only to
//!   public addresses (or those the organiser allowed), bounded in time and size.
//! - [`keys`] is the key ring: this server's key document, other servers' keys fetched,
//!   verified and cached, and the notary service.
//! - [`sender`] sends the durable outbound queue, one task per destination.
//! - [`transactions`] receives other servers' transactions (`/send`).
//! - [`queries`], [`public_rooms`], [`hierarchy`] and [`media`] answer other servers' queries
//!   (profiles, the room directory, spaces, media) and ask them for local clients.
//! - [`history`] serves a room's history to other servers and backfills it from them.
//! - [`knock`] knocks on rooms of other servers, and takes knocks on rooms here.

pub mod client;
pub mod devices;
pub mod discovery;
pub mod fetch;
pub mod hierarchy;
pub mod history;
pub mod keys;
pub mod knock;
pub mod media;
pub mod membership;
pub mod public_rooms;
pub mod queries;
pub mod resident;
pub mod sender;
pub mod transactions;

#[cfg(test)]
pub(crate) mod testing;

pub use client::{
    ClientOptions, FederationAuthentication, FederationClient, FederationError, RequestLimits,
};
pub use discovery::{
    Destination, Discovery, DiscoveryOptions, Dns, Resolved, Route, SrvRecord, SystemDns,
};

use std::sync::Arc;

use rhizome_core::{Config, Error, Result};
use rhizome_room::SigningKey;

use crate::Services;

/// The federation parts of the running server.
pub(crate) struct FederationRuntime {
    /// `None` when federation is off (or its TLS setup failed, which is logged).
    client: Option<FederationClient>,
    pub(crate) keys: keys::KeyRing,
    pub(crate) sender: sender::OutboundSender,
    pub(crate) inbound: transactions::InboundState,
    /// Other servers' answers to queries, kept a short while.
    pub(crate) queries: queries::QueryCaches,
    pub(crate) backfill: history::BackfillState,
    pub(crate) devices: devices::DeviceListState,
}

impl FederationRuntime {
    pub(crate) fn new(config: &Config, signing_key: Arc<SigningKey>) -> Self {
        let client = if config.federation.enabled {
            match FederationClient::new(&config.federation, config.server_name.clone(), signing_key)
            {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::error!(%error, "federation cannot start: no requests to other servers");
                    None
                }
            }
        } else {
            None
        };
        Self {
            client,
            keys: keys::KeyRing::default(),
            sender: sender::OutboundSender::new(),
            inbound: transactions::InboundState::default(),
            queries: queries::QueryCaches::default(),
            backfill: history::BackfillState::default(),
            devices: devices::DeviceListState::default(),
        }
    }
}

impl Services {
    /// The client for other servers, or `M_FORBIDDEN` when federation is off.
    pub fn federation_client(&self) -> Result<&FederationClient> {
        self.federation.client.as_ref().ok_or_else(|| Error::forbidden("Federation is disabled"))
    }
}

/// A random string of ASCII letters and digits.
pub(crate) fn random_string(length: usize) -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(length).map(char::from).collect()
}
