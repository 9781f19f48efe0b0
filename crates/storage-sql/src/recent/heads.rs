//! Each room's record and forward extremities as last read or written: what every message
//! sent reads first (the current state group, the events it follows), kept so that a send
//! asks the database neither.
//!
//! A persisted event names the room's new head in its stream write ([`super::Touch::RoomHead`]),
//! which is recorded in commit order, before the event's position is readable and before the
//! room's lock is released. Other writers of `rooms` forget the room after they commit. A
//! value read from the database is kept only if the room's generation did not move while it
//! was read (a write bumps it).

use std::collections::HashMap;

use rhizome_storage::{RoomRecord, StateGroupId};
use ruma::{OwnedEventId, OwnedRoomId, RoomId};

/// How many rooms at most, before all are forgotten (a bound on memory).
const MAX_ROOMS: usize = 50_000;

/// What is known of one room.
#[derive(Default)]
struct Head {
    record: Option<RoomRecord>,
    /// Sorted by event ID, as the store's `forward_extremities` gives them.
    extremities: Option<Vec<OwnedEventId>>,
}

/// Room heads by room. A room's generation is the value of a counter at the room's latest
/// write (or at the latest time everything was forgotten), so that it never repeats.
#[derive(Default)]
pub(super) struct Heads {
    counter: u64,
    forgotten_at: u64,
    generations: HashMap<OwnedRoomId, u64>,
    rooms: HashMap<OwnedRoomId, Head>,
}

impl Heads {
    pub(super) fn generation(&self, room: &RoomId) -> u64 {
        self.generations.get(room).copied().unwrap_or(self.forgotten_at)
    }

    fn bump(&mut self, room: &RoomId) {
        if self.generations.len() >= MAX_ROOMS && !self.generations.contains_key(room) {
            // Forgetting everything is safe (each room is read again), and every read in
            // flight sees its generation move.
            self.forget_all();
        }
        self.counter += 1;
        self.generations.insert(room.to_owned(), self.counter);
    }

    fn forget_all(&mut self) {
        self.counter += 1;
        self.forgotten_at = self.counter;
        self.generations.clear();
        self.rooms.clear();
    }

    pub(super) fn record(&self, room: &RoomId) -> Option<RoomRecord> {
        self.rooms.get(room).and_then(|head| head.record.clone())
    }

    pub(super) fn extremities(&self, room: &RoomId) -> Option<Vec<OwnedEventId>> {
        self.rooms.get(room).and_then(|head| head.extremities.clone())
    }

    /// A persisted event moved the room on: its extremities, and its current state group
    /// when that changed.
    pub(super) fn moved(
        &mut self,
        room: &RoomId,
        current_group: Option<StateGroupId>,
        extremities: &[OwnedEventId],
    ) {
        self.bump(room);
        let head = self.rooms.entry(room.to_owned()).or_default();
        if let (Some(group), Some(record)) = (current_group, head.record.as_mut()) {
            record.current_state_group = Some(group);
        }
        let mut sorted = extremities.to_vec();
        sorted.sort();
        head.extremities = Some(sorted);
    }

    /// A write other than a persisted event changed the room's record: forget it.
    pub(super) fn forget(&mut self, room: &RoomId) {
        self.bump(room);
        self.rooms.remove(room);
    }

    pub(super) fn remember_record(&mut self, generation: u64, record: RoomRecord) {
        if self.generation(&record.room_id) != generation {
            return;
        }
        if self.rooms.len() >= MAX_ROOMS {
            self.forget_all();
            return;
        }
        let room = record.room_id.clone();
        self.rooms.entry(room).or_default().record = Some(record);
    }

    pub(super) fn remember_extremities(
        &mut self,
        room: &RoomId,
        generation: u64,
        extremities: Vec<OwnedEventId>,
    ) {
        if self.generation(room) != generation {
            return;
        }
        if self.rooms.len() >= MAX_ROOMS {
            self.forget_all();
            return;
        }
        self.rooms.entry(room.to_owned()).or_default().extremities = Some(extremities);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{RoomVersionId, owned_event_id, owned_room_id};

    fn record(group: i64) -> RoomRecord {
        RoomRecord {
            room_id: owned_room_id!("!r:x"),
            room_version: RoomVersionId::V11,
            published: false,
            current_state_group: Some(group),
            shut_down_ts: None,
        }
    }

    #[test]
    fn a_value_read_while_the_room_changed_is_not_kept() {
        let mut heads = Heads::default();
        let room = owned_room_id!("!r:x");
        let before = heads.generation(&room);
        heads.forget(&room);
        heads.remember_record(before, record(1));
        assert_eq!(heads.record(&room), None);
        heads.remember_record(heads.generation(&room), record(2));
        assert_eq!(heads.record(&room), Some(record(2)));
        // A persisted event moves the remembered record on, and sets the extremities.
        let (a, b) = (owned_event_id!("$b"), owned_event_id!("$a"));
        heads.moved(&room, Some(3), &[a.clone(), b.clone()]);
        assert_eq!(heads.record(&room), Some(record(3)));
        assert_eq!(heads.extremities(&room), Some(vec![b, a]));
        heads.moved(&room, None, &[]);
        assert_eq!(heads.record(&room), Some(record(3)), "no new group: the group stays");
        heads.forget(&room);
        assert_eq!((heads.record(&room), heads.extremities(&room)), (None, None));
    }

    #[test]
    fn forgetting_everything_moves_every_generation() {
        let mut heads = Heads::default();
        let room = owned_room_id!("!r:x");
        let before = heads.generation(&room);
        heads.forget_all();
        heads.remember_extremities(&room, before, vec![owned_event_id!("$e")]);
        assert_eq!(heads.extremities(&room), None);
    }
}
