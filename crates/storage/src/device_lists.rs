//! Device lists across servers: what this server last told other servers about each local
//! user's devices and cross-signing keys (so a change is sent as the difference, each device
//! update numbered in the user's own sequence), and its cache of other servers' users' device
//! lists (kept while they share a room with a local user, stale after a gap in their updates).
//!
//! Changes to a remote user's cached list record a device-list change of that user at the next
//! stream position, in the same transaction, as local changes do.

use async_trait::async_trait;
use rhizome_core::Result;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};

use crate::StreamPos;

/// One device of a local user as last published to other servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedDevice {
    /// The device.
    pub device_id: OwnedDeviceId,
    /// Its keys as published (with the owner's signatures), if it had uploaded any.
    pub keys: Option<String>,
}

/// A local user's device list as last published to other servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishedDeviceList {
    /// The latest `stream_id` of the user's `m.device_list_update` sequence (0 before any).
    pub stream_id: i64,
    /// The devices, by device ID.
    pub devices: Vec<PublishedDevice>,
    /// The master key as published (with the owner's signatures).
    pub master_key: Option<String>,
    /// The self-signing key as published.
    pub self_signing_key: Option<String>,
}

/// A change of one device to publish: new or changed keys, or its deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedDeviceChange {
    /// The device.
    pub device_id: OwnedDeviceId,
    /// Its keys now (`None`: none uploaded, or deleted).
    pub keys: Option<String>,
    /// Whether the device was deleted.
    pub deleted: bool,
}

/// One device of another server's user, as cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDevice {
    /// The device.
    pub device_id: OwnedDeviceId,
    /// Its signed keys, if it has any.
    pub keys: Option<String>,
    /// Its display name, if its server shares it.
    pub display_name: Option<String>,
}

/// Another server's user's device list, as cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDeviceList {
    /// The user.
    pub user_id: OwnedUserId,
    /// The latest `stream_id` of the user's update sequence applied.
    pub stream_id: i64,
    /// Whether an update was missed, so the list must be fetched again.
    pub stale: bool,
    /// When the list was last fetched whole (ms since the epoch).
    pub fetched_ts: i64,
    /// The stream position when it was fetched: the cache is current only while the user has
    /// shared a room with a local user ever since (updates are sent only while they do).
    pub fetched_pos: StreamPos,
    /// The devices, by device ID.
    pub devices: Vec<RemoteDevice>,
    /// The user's master key.
    pub master_key: Option<String>,
    /// The user's self-signing key.
    pub self_signing_key: Option<String>,
}

/// Device lists across servers.
#[async_trait]
pub trait DeviceListStore {
    /// What was last published of a local user's devices (empty, stream 0, before anything).
    async fn published_device_list(&self, user_id: &UserId) -> Result<PublishedDeviceList>;

    /// Records device changes as published: each takes the next `stream_id` of the user's
    /// sequence, in order. Returns the sequence before them and the IDs taken.
    async fn publish_device_changes(
        &self,
        user_id: &UserId,
        changes: &[PublishedDeviceChange],
    ) -> Result<(i64, Vec<i64>)>;

    /// Records the cross-signing keys published for a local user.
    async fn publish_signing_keys(
        &self,
        user_id: &UserId,
        master_key: Option<&str>,
        self_signing_key: Option<&str>,
    ) -> Result<()>;

    /// The cached device list of another server's user, if tracked.
    async fn remote_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>>;

    /// Replaces (or starts) the cached list of a user with a list fetched whole; it is fresh
    /// again. With `record_change`, records a device-list change of the user and returns its
    /// position.
    async fn replace_remote_device_list(
        &self,
        list: &RemoteDeviceList,
        record_change: bool,
    ) -> Result<Option<StreamPos>>;

    /// Applies one update to a tracked user's list: the device's new state (`None`: deleted)
    /// and the update's `stream_id`; records a device-list change of the user. `None` (and
    /// nothing changes) when the user is not tracked.
    async fn update_remote_device(
        &self,
        user_id: &UserId,
        stream_id: i64,
        device_id: &DeviceId,
        device: Option<&RemoteDevice>,
    ) -> Result<Option<StreamPos>>;

    /// Replaces a tracked user's cross-signing keys (a key left `None` is kept); records a
    /// device-list change of the user. `None` when the user is not tracked.
    async fn update_remote_signing_keys(
        &self,
        user_id: &UserId,
        master_key: Option<&str>,
        self_signing_key: Option<&str>,
    ) -> Result<Option<StreamPos>>;

    /// Marks a tracked user's list stale (an update was missed); `false` if not tracked.
    async fn mark_remote_device_list_stale(&self, user_id: &UserId) -> Result<bool>;

    /// Stops tracking a user: forgets the cached list; `false` if it was not tracked.
    async fn forget_remote_device_list(&self, user_id: &UserId) -> Result<bool>;

    /// The users whose lists are cached (only the stale ones when asked), by user ID.
    async fn tracked_remote_users(&self, stale_only: bool) -> Result<Vec<OwnedUserId>>;
}
