//! Rhizome's room rules, free of I/O: PDUs for each supported room version (building, content
//! hashes, signatures, event IDs, redaction), authorisation by the spec's auth rules (through
//! ruma's state-res crate), state resolution and history visibility.
//!
//! Nothing here touches a database, a socket or the clock: callers hand in the events and state
//! the rules need, so every rule can be tested with fixture rooms held in memory.

pub mod auth;
pub mod build;
#[cfg(any(test, feature = "fixture"))]
pub mod fixture;
pub mod keys;
pub mod pdu;
pub mod received;
pub mod resolve;
pub mod resolve_v1;
pub mod versions;
pub mod visibility;

pub use build::{EventTemplate, build_pdu};
pub use keys::SigningKey;
pub use pdu::{Pdu, PduError};

/// A map of `(event type, state key)` to the event ID holding that state.
pub type StateMap =
    std::collections::HashMap<(ruma::events::StateEventType, String), ruma::OwnedEventId>;

#[cfg(test)]
mod tests;
