//! Federation: other servers' signing keys, this server's earlier keys, the durable outbound
//! queue (PDUs and EDUs per destination, with each destination's backoff and lease) and the
//! inbound transactions already processed.

use async_trait::async_trait;
use rhizome_core::Result;
use ruma::{
    EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName,
};

use crate::{MembershipChange, OutlierEvent, StreamPos};

/// A signing key of another server, as fetched and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKeyRecord {
    /// The key ID (`ed25519:abc`).
    pub key_id: String,
    /// The public key, unpadded base64.
    pub public_key: String,
    /// Until when the server vouched for it (ms since the epoch).
    pub valid_until_ts: i64,
    /// For a key the server no longer uses: when it stopped using it.
    pub expired_ts: Option<i64>,
}

/// A server's signed key document, as received (a notary serves it again, counter-signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerKeyResponse {
    /// The server.
    pub server_name: OwnedServerName,
    /// The signed JSON, as the server sent it.
    pub json: String,
    /// Its `valid_until_ts`.
    pub valid_until_ts: i64,
    /// When it was fetched.
    pub fetched_ts: i64,
}

/// A PDU waiting to be sent to a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedPdu {
    /// The event's stream position (the queue's order).
    pub stream_pos: StreamPos,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event.
    pub event_id: OwnedEventId,
}

/// A durable EDU (to-device messages, device-list updates) waiting to be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEdu {
    /// Its number in the queue.
    pub id: i64,
    /// `m.direct_to_device`, `m.device_list_update`, …
    pub edu_type: String,
    /// The EDU's content, JSON.
    pub content: String,
}

/// The transaction being sent to a destination: retried with the same ID and the same PDUs
/// and durable EDUs until the destination accepts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTxnRecord {
    /// The transaction ID.
    pub txn_id: String,
    /// The greatest stream position of the PDUs in it (0 if none).
    pub max_pdu_pos: StreamPos,
    /// The greatest queue number of the EDUs in it (0 if none).
    pub max_edu_id: i64,
}

/// What the server knows of sending to another server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationRecord {
    /// The destination server.
    pub destination: OwnedServerName,
    /// Failures in a row since the last success.
    pub failures: i64,
    /// Not to be tried before this time (ms since the epoch); 0 for no backoff.
    pub retry_at: i64,
    /// The current backoff interval (ms).
    pub retry_interval_ms: i64,
    /// The last successful transaction.
    pub last_success_ts: Option<i64>,
    /// The last failure.
    pub last_failure_ts: Option<i64>,
    /// The transaction being sent, if any.
    pub pending_txn: Option<PendingTxnRecord>,
    /// PDUs queued.
    pub queued_pdus: i64,
    /// Durable EDUs queued.
    pub queued_edus: i64,
}

/// Federation: keys, the outbound queue and inbound transactions.
#[async_trait]
pub trait FederationStore {
    /// Stores keys of a server verified from a key document, and the document itself.
    async fn store_server_keys(
        &self,
        response: &ServerKeyResponse,
        keys: &[ServerKeyRecord],
    ) -> Result<()>;

    /// The stored keys of a server.
    async fn server_keys(&self, server_name: &ServerName) -> Result<Vec<ServerKeyRecord>>;

    /// The latest key document stored for a server.
    async fn server_key_response(
        &self,
        server_name: &ServerName,
    ) -> Result<Option<ServerKeyResponse>>;

    /// This server's earlier signing keys: key ID, public key (unpadded base64), when it
    /// stopped being used.
    async fn local_old_keys(&self) -> Result<Vec<(String, String, i64)>>;

    /// Records an earlier signing key of this server (after a rotation).
    async fn add_local_old_key(
        &self,
        key_id: &str,
        public_key: &str,
        expired_ts: i64,
    ) -> Result<()>;

    /// Queues PDUs for a destination (events persisted locally are queued by
    /// [`crate::RoomStore::persist_event`] itself, in its transaction).
    async fn queue_pdus(&self, destination: &ServerName, pdus: &[QueuedPdu]) -> Result<()>;

    /// Queues a durable EDU for each destination.
    async fn queue_edu(
        &self,
        destinations: &[OwnedServerName],
        edu_type: &str,
        content: &str,
    ) -> Result<()>;

    /// Destinations with PDUs or EDUs queued.
    async fn destinations_with_queue(&self) -> Result<Vec<OwnedServerName>>;

    /// The next transaction's contents for a destination: the pending transaction's, or the
    /// oldest `max_pdus` PDUs and `max_edus` EDUs.
    async fn next_transaction(
        &self,
        destination: &ServerName,
        pending: Option<&PendingTxnRecord>,
        max_pdus: i64,
        max_edus: i64,
    ) -> Result<(Vec<QueuedPdu>, Vec<QueuedEdu>)>;

    /// Records (or clears) the transaction being sent to a destination.
    async fn set_pending_txn(
        &self,
        destination: &ServerName,
        pending: Option<&PendingTxnRecord>,
    ) -> Result<()>;

    /// A transaction was accepted: removes what it carried, clears the pending transaction and
    /// the backoff, and records the success.
    async fn complete_transaction(
        &self,
        destination: &ServerName,
        pending: &PendingTxnRecord,
        now: i64,
    ) -> Result<()>;

    /// Records a failure to reach a destination and its next retry time.
    async fn record_destination_failure(
        &self,
        destination: &ServerName,
        retry_at: i64,
        retry_interval_ms: i64,
        now: i64,
    ) -> Result<()>;

    /// Clears a destination's backoff (it contacted us, or the administrator asked).
    async fn reset_destination_backoff(&self, destination: &ServerName) -> Result<()>;

    /// A destination's record, with its queue lengths.
    async fn get_destination(&self, destination: &ServerName) -> Result<Option<DestinationRecord>>;

    /// Every destination known, by name.
    async fn list_destinations(&self) -> Result<Vec<DestinationRecord>>;

    /// Catch-up after an outage: keeps only the latest queued PDU of each room (the
    /// destination fetches the gap itself) and drops the pending transaction. Returns how many
    /// PDUs were dropped.
    async fn collapse_pdu_queue(&self, destination: &ServerName) -> Result<u64>;

    /// Takes or renews the lease on sending to a destination, for `owner` until `until`;
    /// `false` if another owner holds an unexpired lease.
    async fn acquire_destination_lease(
        &self,
        destination: &ServerName,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool>;

    /// Gives a lease up.
    async fn release_destination_lease(&self, destination: &ServerName, owner: &str) -> Result<()>;

    /// Gives up every destination's lease (at start-up on an engine only one process can use:
    /// whoever held them is gone).
    async fn release_all_destination_leases(&self) -> Result<()>;

    /// The response given to an inbound transaction already processed.
    async fn inbound_txn_response(
        &self,
        origin: &ServerName,
        txn_id: &str,
    ) -> Result<Option<String>>;

    /// Records the response to an inbound transaction.
    async fn store_inbound_txn(
        &self,
        origin: &ServerName,
        txn_id: &str,
        response: &str,
        now: i64,
    ) -> Result<()>;

    /// Forgets inbound transactions received before `before`.
    async fn prune_inbound_txns(&self, before: i64) -> Result<u64>;

    /// Records a room this server knows of without being in it (an invite), unless known.
    async fn ensure_room(
        &self,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        now: i64,
    ) -> Result<()>;

    /// Stores events as outliers (those already known, in the timeline or not, are left as
    /// they are).
    async fn store_outliers(&self, events: &[OutlierEvent]) -> Result<()>;

    /// Records a membership in a room this server is not in (an invite from another server,
    /// its rejection, a knock): the membership event as an outlier, the member's membership
    /// row, and for invites the room's stripped state. Takes a stream position so syncs see
    /// it; returns it.
    async fn store_outlier_membership(
        &self,
        event: &OutlierEvent,
        change: &MembershipChange,
        invite_state: Option<&str>,
    ) -> Result<StreamPos>;

    /// The stripped room state stored with an invite from another server.
    async fn invite_state(&self, event_id: &EventId) -> Result<Option<String>>;
}
