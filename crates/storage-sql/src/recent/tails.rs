//! The latest events of each room, kept in memory by [`super::Recent`], so that a woken sync's
//! timeline ("the room's events after my last sync"), the state at its start and the check
//! for relations to bundle are read without a query.
//!
//! A room's tail holds *every* timeline event (not rejected, not soft-failed) after its
//! `floor`, oldest first, at most [`TAIL_LEN`]; evicting the oldest raises the floor. A
//! question reaching at or below the floor goes to the database. The events' JSON is bounded
//! in total ([`MAX_BYTES`]): past it, every tail is emptied and starts again from the latest
//! position. A redaction rewrites its target in place; a relation marks its target.

use std::collections::{HashMap, HashSet, VecDeque};

use rhizome_storage::{Direction, EventRecord, StreamPos};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};

/// How many events a room's tail holds at most.
pub(crate) const TAIL_LEN: usize = 16;

/// How many bytes of event JSON all tails hold at most.
const MAX_BYTES: usize = 32 << 20;

/// One event of a tail.
#[derive(Clone, Debug)]
pub(crate) struct TailEvent {
    pub(crate) record: EventRecord,
    /// Whether some event relates to it.
    pub(crate) has_relations: bool,
}

#[derive(Default)]
struct Tail {
    /// Every timeline event of the room after this position is in `events`.
    floor: StreamPos,
    events: VecDeque<TailEvent>,
}

/// The rooms' tails.
pub(crate) struct Tails {
    /// The floor of a room without a tail (none of its events came after it).
    floor: StreamPos,
    rooms: HashMap<OwnedRoomId, Tail>,
    /// The events in tails, by ID, with their room.
    index: HashMap<OwnedEventId, OwnedRoomId>,
    bytes: usize,
}

impl Tails {
    pub(crate) fn new(floor: StreamPos) -> Self {
        Self { floor, rooms: HashMap::new(), index: HashMap::new(), bytes: 0 }
    }

    /// Adds a room's newest event (persisted at `record.stream_pos`, above every other).
    pub(crate) fn push(&mut self, record: EventRecord, has_relations: bool) {
        if self.bytes + record.json.len() > MAX_BYTES {
            // Start again: nothing after the event before this one is missing anywhere.
            self.floor = record.stream_pos - 1;
            self.rooms.clear();
            self.index.clear();
            self.bytes = 0;
        }
        let floor = self.floor;
        let room = record.room_id.clone();
        let tail =
            self.rooms.entry(room.clone()).or_insert_with(|| Tail { floor, ..Tail::default() });
        self.bytes += record.json.len();
        self.index.insert(record.event_id.clone(), room);
        tail.events.push_back(TailEvent { record, has_relations });
        if tail.events.len() > TAIL_LEN
            && let Some(oldest) = tail.events.pop_front()
        {
            tail.floor = oldest.record.stream_pos;
            self.bytes -= oldest.record.json.len();
            self.index.remove(&oldest.record.event_id);
        }
    }

    /// A redaction of an event in a tail: its stored form changes.
    pub(crate) fn redact(&mut self, target: &EventId, redacted_json: &str, by: &EventId) {
        if let Some(event) = self.find_mut(target) {
            let old = event.record.json.len();
            event.record.json = redacted_json.to_owned();
            event.record.redacted_by = Some(by.to_owned());
            self.bytes = self.bytes.saturating_sub(old) + redacted_json.len();
        }
    }

    /// A relation to an event: it has something to bundle.
    pub(crate) fn relate(&mut self, target: &EventId) {
        if let Some(event) = self.find_mut(target) {
            event.has_relations = true;
        }
    }

    fn find_mut(&mut self, event_id: &EventId) -> Option<&mut TailEvent> {
        let room = self.index.get(event_id)?;
        let tail = self.rooms.get_mut(room)?;
        tail.events.iter_mut().find(|event| event.record.event_id == event_id)
    }

    /// The room's events between two positions, as the store's `room_events` gives them, when
    /// the tail holds them all (`None`: ask the database).
    pub(crate) fn events(
        &self,
        room: &RoomId,
        from: StreamPos,
        to: Option<StreamPos>,
        direction: Direction,
        limit: usize,
    ) -> Option<Vec<EventRecord>> {
        let (floor, events) = match self.rooms.get(room) {
            Some(tail) => (tail.floor, Some(&tail.events)),
            None => (self.floor, None),
        };
        let (above, at_most) = match direction {
            Direction::Backward => (to.unwrap_or(StreamPos::MIN), from.saturating_sub(1)),
            Direction::Forward => (from, to.unwrap_or(StreamPos::MAX)),
        };
        let within = |event: &&TailEvent| {
            event.record.stream_pos > above && event.record.stream_pos <= at_most
        };
        if above < floor {
            // Older events may lie below the floor, out of sight. Going backward, `limit`
            // events found in the tail are the newest all the same: the tail holds every event
            // of the room above its floor.
            let events = events.filter(|_| direction == Direction::Backward && limit > 0)?;
            let records: Vec<EventRecord> =
                events.iter().rev().filter(within).take(limit).map(|e| e.record.clone()).collect();
            return (records.len() == limit).then_some(records);
        }
        let Some(events) = events else { return Some(Vec::new()) };
        let records = match direction {
            Direction::Backward => {
                events.iter().rev().filter(within).take(limit).map(|e| e.record.clone()).collect()
            }
            Direction::Forward => {
                events.iter().filter(within).take(limit).map(|e| e.record.clone()).collect()
            }
        };
        Some(records)
    }

    /// The room's latest event at or before `pos`, when the tail holds it (`None`: it may be
    /// older than every event held, ask the database).
    pub(crate) fn last_at(&self, room: &RoomId, pos: StreamPos) -> Option<EventRecord> {
        let tail = self.rooms.get(room)?;
        let found = tail.events.iter().rev().find(|event| event.record.stream_pos <= pos)?;
        Some(found.record.clone())
    }

    /// Of `event_ids`, those known to have relations, and those the tails do not know.
    pub(crate) fn with_relations(
        &self,
        event_ids: &[OwnedEventId],
    ) -> (HashSet<OwnedEventId>, Vec<OwnedEventId>) {
        let (mut related, mut unknown) = (HashSet::new(), Vec::new());
        for event_id in event_ids {
            let known = self.index.get(event_id).and_then(|room| {
                self.rooms
                    .get(room)?
                    .events
                    .iter()
                    .find(|event| &event.record.event_id == event_id)
                    .map(|event| event.has_relations)
            });
            match known {
                Some(true) => {
                    related.insert(event_id.clone());
                }
                Some(false) => {}
                None => unknown.push(event_id.clone()),
            }
        }
        (related, unknown)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ruma::{event_id, owned_event_id, room_id};

    /// A timeline event of `room` at `pos`.
    pub(in crate::recent) fn record(room: &str, id: &str, pos: StreamPos) -> EventRecord {
        EventRecord {
            event_id: OwnedEventId::try_from(id).unwrap(),
            room_id: OwnedRoomId::try_from(room).unwrap(),
            stream_pos: pos,
            json: format!("{{\"n\":{pos}}}"),
            rejected: false,
            state_before: pos,
            state_after: pos,
            txn: None,
            redacted_by: None,
            soft_failed: false,
            outlier: false,
        }
    }

    fn positions(records: &[EventRecord]) -> Vec<StreamPos> {
        records.iter().map(|record| record.stream_pos).collect()
    }

    #[test]
    fn a_tail_answers_only_what_it_holds_whole() {
        let mut tails = Tails::new(10);
        let room = room_id!("!r:x");
        // A room without events since the floor has none in any window above it.
        assert_eq!(
            tails.events(room, 100, Some(10), Direction::Backward, 5).map(|r| r.len()),
            Some(0)
        );
        assert!(tails.events(room, 100, Some(9), Direction::Backward, 5).is_none());
        assert!(tails.events(room, 100, None, Direction::Backward, 5).is_none());
        for pos in 11..=30 {
            tails.push(record("!r:x", &format!("$e{pos}"), pos), false);
        }
        // 16 kept: 15..=30, the floor is 14.
        let newest = tails.events(room, 31, Some(20), Direction::Backward, 3).unwrap();
        assert_eq!(positions(&newest), vec![30, 29, 28]);
        let all = tails.events(room, 31, Some(14), Direction::Backward, 100).unwrap();
        assert_eq!(all.len(), 16);
        assert!(tails.events(room, 31, Some(13), Direction::Backward, 100).is_none());
        // Below the floor, the newest `limit` are known when the tail holds as many.
        let newest = tails.events(room, 31, None, Direction::Backward, 3).unwrap();
        assert_eq!(positions(&newest), vec![30, 29, 28]);
        let newest = tails.events(room, 29, Some(2), Direction::Backward, 14).unwrap();
        assert_eq!(positions(&newest), (15..=28).rev().collect::<Vec<_>>());
        assert!(tails.events(room, 29, Some(2), Direction::Backward, 15).is_none());
        assert!(tails.events(room, 31, None, Direction::Backward, 17).is_none());
        assert!(tails.events(room, 2, None, Direction::Forward, 3).is_none());
        let forward = tails.events(room, 27, Some(29), Direction::Forward, 100).unwrap();
        assert_eq!(positions(&forward), vec![28, 29]);
        assert_eq!(tails.last_at(room, 25).unwrap().stream_pos, 25);
        assert_eq!(tails.last_at(room, 99).unwrap().stream_pos, 30);
        assert!(tails.last_at(room, 14).is_none(), "older than the tail");
        assert!(tails.last_at(room_id!("!none:x"), 14).is_none());
    }

    #[test]
    fn redactions_and_relations_change_the_events_held() {
        let mut tails = Tails::new(0);
        tails.push(record("!r:x", "$a", 1), false);
        tails.push(record("!r:x", "$b", 2), true);
        tails.redact(event_id!("$a"), "{}", event_id!("$c"));
        let held = tails.events(room_id!("!r:x"), 3, Some(0), Direction::Backward, 5).unwrap();
        assert_eq!(held[1].json, "{}");
        assert_eq!(held[1].redacted_by.as_deref(), Some(event_id!("$c")));
        let ids = [owned_event_id!("$a"), owned_event_id!("$b"), owned_event_id!("$old")];
        let (related, unknown) = tails.with_relations(&ids);
        assert_eq!(related, HashSet::from([owned_event_id!("$b")]));
        assert_eq!(unknown, vec![owned_event_id!("$old")]);
        tails.relate(event_id!("$a"));
        assert_eq!(tails.with_relations(&ids).0.len(), 2);
    }
}
