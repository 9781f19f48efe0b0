//! Per-connection state of sliding sync, in memory: for each connection (user, device,
//! `conn_id`) what it was last sent of each room (up to which stream position, with which room
//! config, which lazily loaded members) and the list counts.
//!
//! Every response records a new *version* of that state, named in the `pos` it returns. A
//! request names the version it continues from; the others are dropped then, since the client
//! never saw them (a retried request simply continues from the same version again). Versions
//! come from one counter for the whole server, seeded from the clock, so a `pos` of another
//! connection or of an earlier run of the server names nothing here and is refused with
//! `M_UNKNOWN_POS`. Memory is bounded: a few versions per connection, a few connections per
//! device, and the least recently used devices are forgotten first.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use lru::LruCache;
use parking_lot::Mutex;
use rhizome_storage::StreamPos;
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};

use super::required_state::RequiredState;

/// The most versions kept per connection (the one continued from and responses not yet
/// continued from, of requests that were retried while running).
const MAX_VERSIONS: usize = 4;

/// The most connections kept per device.
const MAX_CONNECTIONS_PER_DEVICE: usize = 10;

/// The most devices whose connections are kept.
const MAX_DEVICES: usize = 10_000;

/// What a connection was last sent of one room.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct SentRoom {
    /// The client has the room's changes up to this stream position.
    pub(crate) pos: StreamPos,
    /// The ephemeral serial its typing notifications were sent up to.
    pub(crate) typing_serial: i64,
    /// The user's membership when it was sent.
    pub(crate) membership: String,
    /// The timeline the client has: at least this many latest events (or all since the room
    /// was first sent).
    pub(crate) timeline_limit: usize,
    /// The required state it was last sent with.
    pub(crate) required_state: RequiredState,
    /// Members whose membership was sent as lazily loaded members and is still current.
    pub(crate) lazy_members: BTreeSet<OwnedUserId>,
    /// Whether it was sent as a direct chat.
    pub(crate) is_dm: bool,
}

/// One version of a connection's state (kept in the store when processes share it, see
/// [`super::shared`]).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ConnState {
    /// The rooms sent so far.
    pub(crate) rooms: HashMap<OwnedRoomId, Arc<SentRoom>>,
    /// The room count of each list, as last sent.
    pub(crate) list_counts: BTreeMap<String, u64>,
}

struct Connection {
    versions: Vec<(u64, Arc<ConnState>)>,
    /// When it was last used, on the [`Connections::uses`] counter.
    last_used: u64,
}

pub(crate) type DeviceKey = (OwnedUserId, OwnedDeviceId);

/// The connections of every device.
pub(crate) struct Connections {
    devices: Mutex<LruCache<DeviceKey, HashMap<String, Connection>>>,
    next_version: AtomicU64,
    uses: AtomicU64,
}

impl Connections {
    pub(crate) fn new() -> Self {
        let seed = u64::try_from(rhizome_core::clock::now_millis()).unwrap_or(1).max(1);
        Self {
            devices: Mutex::new(crate::bounded::lru(
                NonZeroUsize::new(MAX_DEVICES).unwrap_or(NonZeroUsize::MIN),
            )),
            next_version: AtomicU64::new(seed),
            uses: AtomicU64::new(0),
        }
    }

    /// Starts a connection afresh (a request without `pos`), forgetting its earlier state.
    pub(crate) fn start(&self, device: &DeviceKey, conn_id: &str) -> Arc<ConnState> {
        if let Some(connections) = self.devices.lock().get_mut(device) {
            connections.remove(conn_id);
        }
        Arc::new(ConnState::default())
    }

    /// The state of `version` of a connection, dropping its other versions; `None` when the
    /// connection or the version is unknown.
    pub(crate) fn resume(
        &self,
        device: &DeviceKey,
        conn_id: &str,
        version: u64,
    ) -> Option<Arc<ConnState>> {
        let mut devices = self.devices.lock();
        let connection = devices.get_mut(device)?.get_mut(conn_id)?;
        let state = connection
            .versions
            .iter()
            .find(|(known, _)| *known == version)
            .map(|(_, state)| state.clone())?;
        connection.versions.retain(|(known, _)| *known == version);
        connection.last_used = self.uses.fetch_add(1, Ordering::Relaxed);
        Some(state)
    }

    /// Records a new version of a connection's state and returns its number.
    pub(crate) fn record(&self, device: &DeviceKey, conn_id: &str, state: ConnState) -> u64 {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let mut devices = self.devices.lock();
        let connections = devices.get_or_insert_mut(device.clone(), HashMap::new);
        if !connections.contains_key(conn_id)
            && connections.len() >= MAX_CONNECTIONS_PER_DEVICE
            && let Some(oldest) = connections
                .iter()
                .min_by_key(|(_, connection)| connection.last_used)
                .map(|(name, _)| name.clone())
        {
            connections.remove(&oldest);
        }
        let connection = connections
            .entry(conn_id.to_owned())
            .or_insert_with(|| Connection { versions: Vec::new(), last_used: 0 });
        connection.versions.push((version, Arc::new(state)));
        if connection.versions.len() > MAX_VERSIONS {
            connection.versions.remove(0);
        }
        connection.last_used = self.uses.fetch_add(1, Ordering::Relaxed);
        version
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_device_id, owned_user_id};

    use super::*;

    fn device() -> DeviceKey {
        (owned_user_id!("@alice:example.org"), owned_device_id!("PHONE"))
    }

    fn state_with_count(count: u64) -> ConnState {
        ConnState {
            list_counts: BTreeMap::from([("all".to_owned(), count)]),
            ..ConnState::default()
        }
    }

    #[test]
    fn a_version_resumes_once_its_siblings_are_dropped() {
        let connections = Connections::new();
        let first = connections.record(&device(), "main", state_with_count(1));
        let retried = connections.record(&device(), "main", state_with_count(2));
        let resumed = connections.resume(&device(), "main", first).expect("known version");
        assert_eq!(resumed.list_counts["all"], 1);
        assert!(connections.resume(&device(), "main", retried).is_none(), "sibling kept");
        assert!(connections.resume(&device(), "main", first).is_some(), "resuming is repeatable");
        assert!(connections.resume(&device(), "other", first).is_none(), "another conn_id");
        let other_device = (owned_user_id!("@alice:example.org"), owned_device_id!("LAPTOP"));
        assert!(connections.resume(&other_device, "main", first).is_none());
    }

    #[test]
    fn starting_again_forgets_the_connection() {
        let connections = Connections::new();
        let version = connections.record(&device(), "main", state_with_count(1));
        let fresh = connections.start(&device(), "main");
        assert!(fresh.list_counts.is_empty());
        assert!(connections.resume(&device(), "main", version).is_none());
    }

    #[test]
    fn versions_and_connections_are_bounded() {
        let connections = Connections::new();
        let first = connections.record(&device(), "main", state_with_count(0));
        for count in 1..=u64::try_from(MAX_VERSIONS).unwrap() {
            connections.record(&device(), "main", state_with_count(count));
        }
        assert!(connections.resume(&device(), "main", first).is_none(), "oldest version kept");
        // `main` and `conn0` are the least recently used when the device is full.
        let oldest = connections.record(&device(), "conn0", state_with_count(0));
        let mut newest = oldest;
        for index in 1..=MAX_CONNECTIONS_PER_DEVICE {
            newest = connections.record(&device(), &format!("conn{index}"), state_with_count(0));
        }
        assert!(connections.resume(&device(), "conn0", oldest).is_none(), "oldest connection");
        let last = format!("conn{MAX_CONNECTIONS_PER_DEVICE}");
        assert!(connections.resume(&device(), &last, newest).is_some());
    }
}
