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
pub mod jobs;
pub mod media;
pub mod moderation;
pub mod records;
pub mod rooms;
pub mod scheduled;
pub mod sessions;
pub mod user_data;

pub use accounts::AccountStore;
pub use device_lists::DeviceListStore;
pub use e2ee::E2eeStore;
pub use federation::{
    DestinationRecord, FederationStore, PendingTxnRecord, QueuedEdu, QueuedPdu, ServerKeyRecord,
    ServerKeyResponse,
};
pub use jobs::{JobStore, QueuedPush};
pub use media::MediaStore;
pub use moderation::ModerationStore;
pub use records::*;
pub use rooms::{RoomLock, RoomStore};
pub use scheduled::{DelayedEventRecord, ScheduledStore, ThreadSubscriptionRecord};
pub use sessions::SessionStore;
pub use user_data::UserDataStore;

/// A position in the server's one global stream: every change a client can sync (events,
/// account data, receipts, …) takes the next position.
pub type StreamPos = i64;

/// The ID of a stored state snapshot or delta.
pub type StateGroupId = i64;

/// A message from another process sharing the store.
#[derive(Clone, Debug)]
pub enum ProcessMessage {
    /// What another process's services published ([`DataStore::publish_to_processes`]).
    Published(String),
    /// Another process persisted an event that changed memberships in a room: of these
    /// users, or of any (`None`).
    MembershipsChanged {
        /// The room.
        room_id: ruma::OwnedRoomId,
        /// The users whose membership changed, when few enough to name.
        users: Option<Vec<ruma::OwnedUserId>>,
    },
    /// Another process redacted an event (its copy in any cache is stale).
    EventRedacted {
        /// The redacted event.
        event_id: ruma::OwnedEventId,
    },
    /// Messages may have been lost (the connection carrying them was re-established): look
    /// at everything again.
    Resync,
}

/// Receives the other processes' messages (see [`DataStore::set_process_handler`]).
pub type ProcessHandler = std::sync::Arc<dyn Fn(ProcessMessage) + Send + Sync>;

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
    + SessionStore
    + JobStore
    + Send
    + Sync
    + 'static
{
    /// The greatest stream position below which every change is committed and visible (with
    /// several processes writing, positions taken by slower writers hold it back).
    fn current_stream_pos(&self) -> StreamPos;

    /// Follows [`DataStore::current_stream_pos`].
    fn subscribe_stream_pos(&self) -> tokio::sync::watch::Receiver<StreamPos>;

    /// Whether other processes may share this store (PostgreSQL), so what a process keeps in
    /// memory must be told to them through [`DataStore::publish_to_processes`].
    fn shared_by_processes(&self) -> bool {
        false
    }

    /// Sends a message (at most 7,900 bytes) to every other process on this store, in order,
    /// best effort. Nothing happens when no other process can share it.
    fn publish_to_processes(&self, _message: String) {}

    /// Sets what receives the other processes' messages: called in the order they were
    /// committed, each before any stream position after it is readable here, so it must be
    /// quick (no waiting). Never called when no other process can share the store.
    fn set_process_handler(&self, _handler: ProcessHandler) {}

    /// The backend's name, for logs (`sqlite`, `postgres`).
    fn backend_name(&self) -> &'static str;
}
