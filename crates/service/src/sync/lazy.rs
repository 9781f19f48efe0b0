//! Which lazily loaded members each device has received, so an incremental `/sync` leaves out
//! the member events a device already has (unless its filter asks for redundant members).
//! Kept in memory and best effort: a member forgotten (evicted, or after a restart) is merely
//! sent again, which the spec allows. A member counts as received only once the device has
//! synced from a position at or after the response that carried it, so a lost response never
//! hides a member.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;
use ruma::{OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};

use crate::{Requester, sync::SyncToken};

/// How many devices are remembered.
const DEVICES: usize = 4096;
/// How many members are remembered per device (over all its rooms).
const MEMBERS_PER_DEVICE: usize = 1024;

/// One member event sent to a device, and the position of the response that carried it.
#[derive(Clone, Debug)]
struct Sent {
    event_id: OwnedEventId,
    token: SyncToken,
}

type DeviceMembers = LruCache<(OwnedRoomId, String), Sent>;

/// The members each device was sent.
pub(crate) struct LazyMembersSent {
    devices: Mutex<LruCache<(OwnedUserId, OwnedDeviceId), DeviceMembers>>,
}

fn capacity(size: usize) -> NonZeroUsize {
    NonZeroUsize::new(size).unwrap_or(NonZeroUsize::MIN)
}

impl LazyMembersSent {
    pub(crate) fn new() -> Self {
        Self { devices: Mutex::new(crate::bounded::lru(capacity(DEVICES))) }
    }

    fn key(requester: &Requester) -> (OwnedUserId, OwnedDeviceId) {
        (requester.user_id.clone(), requester.device_id.clone())
    }

    /// Forgets what the device was sent: it starts over (an initial or full-state sync).
    pub(crate) fn forget_device(&self, requester: &Requester) {
        self.devices.lock().pop(&Self::key(requester));
    }

    /// Whether the device has `event_id` as the member event of `member` in the room, from a
    /// response at or before `since`.
    pub(crate) fn has(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        member: &str,
        event_id: &OwnedEventId,
        since: SyncToken,
    ) -> bool {
        let mut devices = self.devices.lock();
        let Some(members) = devices.get_mut(&Self::key(requester)) else { return false };
        members.get(&(room_id.to_owned(), member.to_owned())).is_some_and(|sent| {
            &sent.event_id == event_id
                && sent.token.pos <= since.pos
                && sent.token.ephemeral <= since.ephemeral
        })
    }

    /// Notes the member events a response at `token` carries to the device.
    pub(crate) fn record(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        members: impl IntoIterator<Item = (String, OwnedEventId)>,
        token: SyncToken,
    ) {
        let mut devices = self.devices.lock();
        let device = devices.get_or_insert_mut(Self::key(requester), || {
            crate::bounded::lru(capacity(MEMBERS_PER_DEVICE))
        });
        for (member, event_id) in members {
            let key = (room_id.to_owned(), member);
            // The same event sent again keeps its first position (the earliest the device may
            // have acknowledged).
            if device.get(&key).is_some_and(|sent| sent.event_id == event_id) {
                continue;
            }
            device.put(key, Sent { event_id, token });
        }
    }
}
