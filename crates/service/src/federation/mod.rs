//! Federation: talking to other Matrix homeservers over the Server-Server API.
//!
//! - [`discovery`] turns a server name into the addresses to connect to, the `Host` header and
//!   the TLS name (spec: "Resolving server names"), with `.well-known` delegation cached.
//! - [`client`] sends signed requests (`X-Matrix`) to another server by name, over TLS, only to
//!   public addresses (or those the organiser allowed), bounded in time and size.

pub mod client;
pub mod discovery;

#[cfg(test)]
mod testing;

pub use client::{
    ClientOptions, FederationAuthentication, FederationClient, FederationError, RequestLimits,
};
pub use discovery::{
    Destination, Discovery, DiscoveryOptions, Dns, Resolved, Route, SrvRecord, SystemDns,
};
