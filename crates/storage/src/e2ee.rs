//! End-to-end encryption storage: device keys, one-time and fallback keys, cross-signing keys
//! and signatures, to-device messages, device-list changes and key backups.
//!
//! Keys are stored as the JSON the client signed; the service validates them before they get
//! here. Every operation that changes what other users see of a user's devices records a
//! device-list change at the next stream position, in the same transaction.

use async_trait::async_trait;
use rhizome_core::Result;
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{MembershipRecord, StreamPos};

/// A device's identity keys, as the device uploaded them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceKeysRecord {
    /// The owner.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// The signed `DeviceKeys` JSON (without `unsigned`).
    pub json: String,
    /// The device's display name, from the device list.
    pub display_name: Option<String>,
}

/// A one-time or fallback key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneTimeKeyRecord {
    /// `<algorithm>:<key ID>`, e.g. `signed_curve25519:AAAAHg`.
    pub key_id: String,
    /// The key JSON (an object for signed keys, a string otherwise).
    pub json: String,
}

impl OneTimeKeyRecord {
    /// The algorithm part of the key ID.
    pub fn algorithm(&self) -> &str {
        self.key_id.split_once(':').map_or(self.key_id.as_str(), |(algorithm, _)| algorithm)
    }
}

/// What one cross-signing key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrossSigningKeyType {
    /// The master key: the user's identity.
    Master,
    /// Signs the user's own devices.
    SelfSigning,
    /// Signs other users' master keys.
    UserSigning,
}

impl CrossSigningKeyType {
    /// Every type, in storage order.
    pub const ALL: [Self; 3] = [Self::Master, Self::SelfSigning, Self::UserSigning];

    /// The name stored and used in `usage`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::SelfSigning => "self_signing",
            Self::UserSigning => "user_signing",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// A cross-signing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossSigningKeyRecord {
    /// What it is for.
    pub key_type: CrossSigningKeyType,
    /// The unpadded base64 ed25519 public key (the key's ID without `ed25519:`).
    pub public_key: String,
    /// The signed `CrossSigningKey` JSON.
    pub json: String,
}

/// A user's cross-signing keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrossSigningKeys {
    /// The master key.
    pub master: Option<CrossSigningKeyRecord>,
    /// The self-signing key.
    pub self_signing: Option<CrossSigningKeyRecord>,
    /// The user-signing key.
    pub user_signing: Option<CrossSigningKeyRecord>,
}

impl CrossSigningKeys {
    /// The key of a type.
    pub fn get(&self, key_type: CrossSigningKeyType) -> Option<&CrossSigningKeyRecord> {
        match key_type {
            CrossSigningKeyType::Master => self.master.as_ref(),
            CrossSigningKeyType::SelfSigning => self.self_signing.as_ref(),
            CrossSigningKeyType::UserSigning => self.user_signing.as_ref(),
        }
    }
}

/// A signature one user made on a key (a device or a master key), uploaded after the key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SignatureRecord {
    /// Whose key was signed.
    pub target_user_id: OwnedUserId,
    /// The signed key: a device ID, or the public key of a master key.
    pub target_key_id: String,
    /// Who signed.
    pub signer_user_id: OwnedUserId,
    /// The signing key's ID (`ed25519:…`).
    pub signer_key_id: String,
    /// The unpadded base64 signature.
    pub signature: String,
}

/// Where a to-device message goes on the recipient's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToDeviceTarget {
    /// Every device of the user.
    AllDevices,
    /// One device.
    Device(OwnedDeviceId),
}

/// One message of a `sendToDevice` request.
#[derive(Clone, Debug)]
pub struct ToDeviceMessage {
    /// The recipient.
    pub user_id: OwnedUserId,
    /// The recipient's devices.
    pub target: ToDeviceTarget,
    /// The content JSON.
    pub content: String,
}

/// A to-device message waiting for its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToDeviceRecord {
    /// The order of messages within one stream position.
    pub id: i64,
    /// The stream position it was sent at.
    pub stream_pos: StreamPos,
    /// The sender.
    pub sender: OwnedUserId,
    /// The event type.
    pub event_type: String,
    /// The content JSON.
    pub content: String,
}

/// A key backup version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupVersionRecord {
    /// The version (a decimal number).
    pub version: String,
    /// `{"algorithm": …, "auth_data": …}` as the client gave it.
    pub algorithm: String,
    /// Changes whenever the keys change.
    pub etag: String,
    /// The number of keys.
    pub count: i64,
}

/// A backed-up room key (the client encrypts it; the server sees only these fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupKeyRecord {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The megolm session.
    pub session_id: String,
    /// The first message index the key can decrypt.
    pub first_message_index: i64,
    /// How many times the key was forwarded.
    pub forwarded_count: i64,
    /// Whether the key's device was verified.
    pub is_verified: bool,
    /// The encrypted `session_data` JSON.
    pub session_data: String,
}

/// The state of a backup version after a change to its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCounts {
    /// The new etag.
    pub etag: String,
    /// The number of keys.
    pub count: i64,
}

/// End-to-end encryption storage.
#[async_trait]
pub trait E2eeStore {
    /// Stores a device's identity keys. When they differ from the stored ones (or are new),
    /// records a device-list change of the user and returns its position; `None` when the
    /// same keys were already stored.
    async fn set_device_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        json: &str,
    ) -> Result<Option<StreamPos>>;

    /// The identity keys of the user's devices (all when `device_ids` is empty), of devices
    /// that still exist, ordered by device ID.
    async fn device_keys(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<Vec<DeviceKeysRecord>>;

    /// Adds one-time keys. A key ID already stored with the same key is ignored; with another
    /// key it is `M_INVALID_PARAM` and nothing is stored.
    async fn add_one_time_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: &[OneTimeKeyRecord],
    ) -> Result<()>;

    /// Sets the device's fallback key for each algorithm given, replacing the previous one.
    /// A key identical to the stored one keeps its used flag.
    async fn set_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: &[OneTimeKeyRecord],
    ) -> Result<()>;

    /// How many unclaimed one-time keys the device has, per algorithm.
    async fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<(String, i64)>>;

    /// The algorithms of the device's fallback keys that were not claimed yet.
    async fn unused_fallback_key_algorithms(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<String>>;

    /// Claims a key of the algorithm for a device: a one-time key (removed, so each is handed
    /// out exactly once, even to concurrent callers) or else the fallback key (marked used).
    async fn claim_key(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<OneTimeKeyRecord>>;

    /// The user's cross-signing keys.
    async fn cross_signing_keys(&self, user_id: &UserId) -> Result<CrossSigningKeys>;

    /// Stores cross-signing keys (each replacing the key of its type) and records a
    /// device-list change of the user.
    async fn set_cross_signing_keys(
        &self,
        user_id: &UserId,
        keys: &[CrossSigningKeyRecord],
    ) -> Result<StreamPos>;

    /// Stores signatures `signer` made (replacing an earlier signature by the same key on the
    /// same target). Records a device-list change of each target user: for everyone when
    /// `signer` signed their own keys, for the signer alone when they signed someone else's.
    async fn add_signatures(
        &self,
        signer: &UserId,
        signatures: &[SignatureRecord],
    ) -> Result<StreamPos>;

    /// Signatures on the target user's keys made by any of `signers`.
    async fn signatures_on(
        &self,
        target_user_id: &UserId,
        signers: &[&UserId],
    ) -> Result<Vec<SignatureRecord>>;

    /// Records a change of the user's devices, seen by everyone who shares a room with them.
    async fn record_device_list_change(&self, user_id: &UserId) -> Result<StreamPos>;

    /// Users whose devices changed after `since` up to `until`, as `viewer` may see it (changes
    /// seen by everyone, and those recorded for `viewer` alone). A user changed several times
    /// may be reported at their latest change only.
    async fn device_list_changes(
        &self,
        viewer: &UserId,
        since: StreamPos,
        until: StreamPos,
    ) -> Result<Vec<OwnedUserId>>;

    /// Current memberships in the given rooms that changed after `since` up to `until`.
    async fn memberships_changed_between(
        &self,
        room_ids: &[OwnedRoomId],
        since: StreamPos,
        until: StreamPos,
    ) -> Result<Vec<MembershipRecord>>;

    /// Deletes the encryption data of the user's devices that no longer exist (keys, one-time
    /// and fallback keys, waiting to-device messages, signatures on them) and returns how
    /// many devices had keys.
    async fn remove_deleted_devices_e2ee(&self, user_id: &UserId) -> Result<u64>;

    /// Deletes everything of the user's encryption (for a deactivated account): device data,
    /// cross-signing keys, signatures the user made and key backups.
    async fn delete_user_e2ee(&self, user_id: &UserId) -> Result<()>;

    /// Queues to-device messages at the next stream position, expanding
    /// [`ToDeviceTarget::AllDevices`] to the recipient's current devices; messages for devices
    /// that do not exist are dropped. Returns the position and the users who got a message,
    /// or `None` when the sender's device already used `txn_id` (nothing is queued again).
    async fn queue_to_device(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        txn_id: &str,
        event_type: &str,
        messages: &[ToDeviceMessage],
    ) -> Result<Option<(StreamPos, Vec<OwnedUserId>)>>;

    /// The device's waiting to-device messages up to stream position `until`, oldest first,
    /// at most `limit`.
    async fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        until: StreamPos,
        limit: i64,
    ) -> Result<Vec<ToDeviceRecord>>;

    /// Deletes the device's to-device messages up to stream position `until` (the device has
    /// received them). Returns how many were deleted.
    async fn delete_to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        until: StreamPos,
    ) -> Result<u64>;

    /// Moves the device's messages that come after `after` (by position, then ID) to the next
    /// stream position, so they are delivered after the ones before them were received.
    async fn defer_to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        after: &ToDeviceRecord,
    ) -> Result<StreamPos>;

    /// Creates a key backup version, which becomes the current one; returns its version.
    async fn create_backup_version(&self, user_id: &UserId, algorithm: &str) -> Result<String>;

    /// A backup version that was not deleted; the current (latest) one when `version` is
    /// `None`.
    async fn backup_version(
        &self,
        user_id: &UserId,
        version: Option<&str>,
    ) -> Result<Option<BackupVersionRecord>>;

    /// Replaces a backup version's algorithm data; `false` if the version does not exist.
    async fn update_backup_version(
        &self,
        user_id: &UserId,
        version: &str,
        algorithm: &str,
    ) -> Result<bool>;

    /// Deletes a backup version and its keys; `false` if it did not exist.
    async fn delete_backup_version(&self, user_id: &UserId, version: &str) -> Result<bool>;

    /// Stores room keys in the current backup version. A key for a session already backed up
    /// replaces it only if it is better: verified over unverified, then a lower first message
    /// index, then a lower forwarded count. `M_NOT_FOUND` if the version does not exist,
    /// `M_WRONG_ROOM_KEYS_VERSION` if it is not the current one.
    async fn put_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        keys: &[BackupKeyRecord],
    ) -> Result<BackupCounts>;

    /// Backed-up keys of a version, optionally of one room and one session.
    async fn backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&RoomId>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKeyRecord>>;

    /// Deletes backed-up keys of a version, optionally of one room and one session.
    /// `M_NOT_FOUND` if the version does not exist.
    async fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&RoomId>,
        session_id: Option<&str>,
    ) -> Result<BackupCounts>;

    /// Stores the user's dehydrated device (MSC3814), replacing the previous one; returns the
    /// ID of the device it replaced.
    async fn set_dehydrated_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        device_data: &str,
    ) -> Result<Option<OwnedDeviceId>>;

    /// The user's dehydrated device and its data.
    async fn dehydrated_device(&self, user_id: &UserId) -> Result<Option<(OwnedDeviceId, String)>>;

    /// Forgets the user's dehydrated device; returns its ID.
    async fn delete_dehydrated_device(&self, user_id: &UserId) -> Result<Option<OwnedDeviceId>>;
}
