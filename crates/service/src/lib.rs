//! The running Rhizome server below HTTP: one explicit [`Services`] value holding the
//! configuration, the store, the signing key and in-memory state (caches, ephemeral data,
//! waiting syncs), with the domain logic of each spec area as methods in its own module.
//!
//! This crate knows the storage traits but no SQL, and the Matrix API types but no HTTP.

pub mod account_data;
pub mod auth;
pub(crate) mod bounded;
pub mod e2ee;
pub mod ephemeral;
pub mod federation;
pub mod invite_filter;
pub mod media;
pub mod moderation;
pub mod notifier;
pub(crate) mod outbound;
pub(crate) mod processes;
pub mod push;
pub mod rate_limit;
pub mod rooms;
pub mod search;
pub mod sync;
#[cfg(test)]
pub(crate) mod test_support;
pub mod users;
pub mod voip;

use std::sync::Arc;

use rhizome_core::Config;
use rhizome_room::SigningKey;
use rhizome_storage::DataStore;
use ruma::{OwnedServerName, ServerName};

pub use auth::Requester;

/// Everything the server is made of, passed explicitly (there are no globals).
pub struct Services {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Arc<dyn DataStore>,
    /// The server's signing key.
    pub signing_key: Arc<SigningKey>,
    /// Waiting `/sync` requests and their wake-ups.
    pub notifier: notifier::Notifier,
    /// Rate limits.
    pub rate_limiter: rate_limit::RateLimiter,
    pub(crate) caches: rooms::cache::RoomCaches,
    pub(crate) ephemeral: ephemeral::Ephemeral,
    pub(crate) token_cache: auth::TokenCache,
    /// Permits for password hashing, which is memory-hungry by design.
    pub(crate) password_permits: tokio::sync::Semaphore,
    pub(crate) media: media::MediaRuntime,
    pub(crate) sliding: sync::sliding::SlidingState,
    pub(crate) lazy_members: sync::lazy::LazyMembersSent,
    pub(crate) openid_tokens: users::openid::OpenIdTokens,
    pub(crate) push_queue: push::gateway::PushQueue,
    pub(crate) federation: federation::FederationRuntime,
    pub(crate) delayed: rooms::delayed::DelayedRuntime,
    pub(crate) push_prune: push::prune::PruneRuntime,
    /// TLS settings shared by requests to push gateways and previewed URLs.
    pub(crate) outbound_tls: outbound::OutboundTls,
    /// The services themselves, for work that outlives a call (wake-ups of senders).
    pub(crate) me: std::sync::Weak<Services>,
}

impl Services {
    /// Builds the services over a store and signing key.
    pub fn new(config: Config, store: Arc<dyn DataStore>, signing_key: SigningKey) -> Arc<Self> {
        let config = Arc::new(config);
        let signing_key = Arc::new(signing_key);
        let services = Arc::new_cyclic(|me| Self {
            federation: federation::FederationRuntime::new(&config, signing_key.clone()),
            me: me.clone(),
            rate_limiter: rate_limit::RateLimiter::new(config.rate_limits.clone()),
            notifier: notifier::Notifier::default(),
            caches: rooms::cache::RoomCaches::new(),
            ephemeral: ephemeral::Ephemeral::new(),
            token_cache: auth::TokenCache::default(),
            password_permits: tokio::sync::Semaphore::new(users::password::CONCURRENT_HASHES),
            media: media::MediaRuntime::new(&config),
            sliding: sync::sliding::SlidingState::new(),
            lazy_members: sync::lazy::LazyMembersSent::new(),
            openid_tokens: users::openid::OpenIdTokens::default(),
            push_queue: push::gateway::PushQueue::new(&config.push),
            delayed: rooms::delayed::DelayedRuntime::default(),
            push_prune: push::prune::PruneRuntime::default(),
            outbound_tls: outbound::OutboundTls,
            config,
            store,
            signing_key,
        });
        services.notifier.share_with_processes(services.store.clone());
        services.listen_to_processes();
        services
    }

    /// The services as a shared handle (they always live in an `Arc`).
    pub(crate) fn arc(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    /// This server's name.
    pub fn server_name(&self) -> &ServerName {
        &self.config.server_name
    }

    /// This server's name, owned.
    pub fn owned_server_name(&self) -> OwnedServerName {
        self.config.server_name.clone()
    }
}
