//! Room activity for sliding sync: the stream position of each room's latest event (which
//! orders the room lists) and of its latest *bump* event (a message, an encrypted event, a
//! sticker, …: the room's `bump_stamp`). Kept in memory as the event path persists events, and
//! read from the store when a room is not in memory yet.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;
use rhizome_core::Result;
use rhizome_storage::StreamPos;
use ruma::{OwnedRoomId, RoomId};

use crate::Services;

/// The event types that count as activity for a room's `bump_stamp` (as the MSC lists them).
pub(crate) const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// How many rooms are kept in memory.
const CAPACITY: usize = 50_000;

/// What is known of one room; `None` is not known yet (to be read from the store).
#[derive(Clone, Copy, Debug, Default)]
struct Activity {
    latest: Option<StreamPos>,
    bump: Option<StreamPos>,
}

impl Activity {
    fn merge(&mut self, other: Self) {
        self.latest = self.latest.max(other.latest);
        self.bump = self.bump.max(other.bump);
    }
}

/// The latest activity of rooms.
pub(crate) struct RoomActivity {
    rooms: Mutex<LruCache<OwnedRoomId, Activity>>,
}

impl RoomActivity {
    pub(crate) fn new() -> Self {
        Self {
            rooms: Mutex::new(crate::bounded::lru(
                NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

/// A room's latest activity: its latest event and its latest bump event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LatestActivity {
    /// The stream position of its latest event.
    pub(crate) latest: Option<StreamPos>,
    /// The stream position of its latest bump event.
    pub(crate) bump: Option<StreamPos>,
}

impl Services {
    /// Notes an event the event path persisted. Values only ever grow, so a read from the
    /// store racing with this cannot move a room back.
    pub(crate) fn record_room_activity(&self, room_id: &RoomId, event_type: &str, pos: StreamPos) {
        let update =
            Activity { latest: Some(pos), bump: BUMP_TYPES.contains(&event_type).then_some(pos) };
        let mut rooms = self.sliding.activity.rooms.lock();
        rooms.get_or_insert_mut(room_id.to_owned(), Activity::default).merge(update);
    }

    /// The room's latest activity.
    pub(crate) async fn room_activity(&self, room_id: &RoomId) -> Result<LatestActivity> {
        let known = self.sliding.activity.rooms.lock().get(room_id).copied().unwrap_or_default();
        if known.latest.is_some() && known.bump.is_some() {
            return Ok(LatestActivity { latest: known.latest, bump: known.bump });
        }
        let mut loaded = known;
        if known.latest.is_none() {
            loaded.latest = self
                .store
                .last_event_at(room_id, StreamPos::MAX)
                .await?
                .map(|event| event.stream_pos);
        }
        if known.bump.is_none() {
            loaded.bump =
                self.store.last_event_of_types(room_id, BUMP_TYPES, StreamPos::MAX).await?;
        }
        let mut rooms = self.sliding.activity.rooms.lock();
        let entry = rooms.get_or_insert_mut(room_id.to_owned(), Activity::default);
        entry.merge(loaded);
        Ok(LatestActivity { latest: entry.latest, bump: entry.bump })
    }
}
