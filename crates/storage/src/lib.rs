//! Rhizome's storage traits: one domain-level trait per area (accounts, rooms and their
//! events and state, account data, receipts, …), the records they exchange, and the
//! conformance suite every backend must pass.
//!
//! The traits speak in domain operations, never in keys and values: persisting an event is
//! one call, and a backend must make it one transaction (the PDU, its state, the forward
//! extremities and the stream position, all or nothing).

pub mod accounts;
pub mod conformance;
pub mod device_lists;
pub mod e2ee;
pub mod federation;
pub mod media;
pub mod moderation;
pub mod records;
pub mod rooms;
pub mod scheduled;
pub mod user_data;

pub use accounts::AccountStore;
pub use device_lists::DeviceListStore;
pub use e2ee::E2eeStore;
pub use federation::{
    DestinationRecord, FederationStore, PendingTxnRecord, QueuedEdu, QueuedPdu, ServerKeyRecord,
    ServerKeyResponse,
};
pub use media::MediaStore;
pub use moderation::ModerationStore;
pub use records::*;
pub use rooms::RoomStore;
pub use scheduled::{DelayedEventRecord, ScheduledStore, ThreadSubscriptionRecord};
pub use user_data::UserDataStore;

/// A position in the server's one global stream: every change a client can sync (events,
/// account data, receipts, …) takes the next position.
pub type StreamPos = i64;

/// The ID of a stored state snapshot or delta.
pub type StateGroupId = i64;

/// Everything a backend stores, behind one object.
pub trait DataStore:
    AccountStore
    + RoomStore
    + UserDataStore
    + E2eeStore
    + DeviceListStore
    + FederationStore
    + MediaStore
    + ModerationStore
    + ScheduledStore
    + Send
    + Sync
    + 'static
{
    /// The greatest stream position whose change is committed and visible.
    fn current_stream_pos(&self) -> StreamPos;

    /// The backend's name, for logs (`sqlite`, `postgres`).
    fn backend_name(&self) -> &'static str;
}
