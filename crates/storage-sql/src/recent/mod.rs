//! What changed lately, kept in memory by a SQLite store (its database's one writer), so that
//! the questions every woken `/sync` asks ("anything new for this user, this device or these
//! rooms since position P?") are answered without a query when the answer is "nothing".
//!
//! Every stream write names what it changes ([`crate::stream::StreamWrite::touch`]) and its
//! commit records those names at the write's position *before* the position becomes readable:
//! a reader that can see position P also sees every change at or below P here. Nothing is
//! known of the changes before the store opened (`floor`), so a question about an earlier
//! position goes to the database. The answers only ever say "nothing changed" or "ask the
//! database": a change that is missed here would hide data, so each table's writers touch it
//! (see the `recent` tests and the storage suite's `recent_changes` checks).
//!
//! Two values every sync reads whole (a device's one-time key counts and unused fallback key
//! algorithms) and a user's global account data by type are remembered with a per-user
//! generation: a writer bumps it after its commit, and a value read while the generation moved
//! is not kept.
//!
//! PostgreSQL stores are shared by processes whose writes this process does not see, so there
//! it is disabled and every question goes to the database.

mod heads;
mod tails;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rhizome_storage::{
    AccountDataRecord, Direction, EventRecord, RoomRecord, StateGroupId, StreamPos, UnreadCounts,
};
use ruma::{EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use heads::Heads;
use tails::Tails;

/// Something a stream write changes.
#[derive(Clone, Debug)]
pub(crate) enum Touch {
    /// A timeline event (neither rejected nor soft-failed), and whether something relates to
    /// it already.
    RoomEvent(Box<EventRecord>, bool),
    /// A redaction rewrote an event (its redacted JSON, and the redaction's ID).
    Redaction(OwnedEventId, String, OwnedEventId),
    /// A relation to an event.
    Relation(OwnedEventId),
    /// A membership in a room, of a user.
    Membership(OwnedRoomId, OwnedUserId),
    /// A receipt in a room, by a user.
    Receipt(OwnedRoomId, OwnedUserId),
    /// Push actions of an event for users of a room: `(user, notify, highlight)`.
    PushActions(OwnedRoomId, Vec<(OwnedUserId, bool, bool)>),
    /// A user's account data.
    AccountData(OwnedUserId),
    /// To-device messages queued (or moved) for some of a user's devices.
    ToDevice(OwnedUserId),
    /// Any device-list change (of anyone).
    DeviceLists,
    /// A persisted event set the room's forward extremities, and its current state group
    /// when that changed.
    RoomHead(OwnedRoomId, Option<StateGroupId>, Vec<OwnedEventId>),
}

/// The latest positions of each kind of change since the store opened.
#[derive(Default)]
struct Positions {
    room_events: HashMap<OwnedRoomId, StreamPos>,
    room_memberships: HashMap<OwnedRoomId, StreamPos>,
    user_memberships: HashMap<OwnedUserId, StreamPos>,
    receipts: HashMap<OwnedRoomId, StreamPos>,
    account_data: HashMap<OwnedUserId, StreamPos>,
    to_device: HashMap<OwnedUserId, StreamPos>,
    /// Devices known to have no message waiting at or below the position.
    to_device_empty: HashMap<(OwnedUserId, OwnedDeviceId), StreamPos>,
    device_lists: Option<StreamPos>,
}

/// A device's key counts as last read.
#[derive(Clone, Default)]
struct DeviceKeys {
    one_time: Option<Vec<(String, i64)>>,
    fallback: Option<Vec<String>>,
}

/// Values remembered per user, valid while the user's generation stays.
#[derive(Default)]
struct Values {
    generations: HashMap<OwnedUserId, u64>,
    keys: HashMap<(OwnedUserId, OwnedDeviceId), (u64, DeviceKeys)>,
    account_data: HashMap<(OwnedUserId, String), (u64, Option<AccountDataRecord>)>,
    /// Per room: moves with every change of its unread counts.
    room_generations: HashMap<OwnedRoomId, u64>,
    /// Unread counts (all threads together) by user and room.
    unread: HashMap<(OwnedUserId, OwnedRoomId), UnreadCounts>,
}

/// How many remembered values at most, before they are all dropped (a bound on memory).
const MAX_VALUES: usize = 100_000;

/// What changed lately (see the module's documentation).
pub(crate) struct Recent {
    /// Off: every question goes to the database.
    enabled: bool,
    /// Changes after this position are all recorded.
    floor: StreamPos,
    positions: Mutex<Positions>,
    values: Mutex<Values>,
    tails: Mutex<Tails>,
    heads: Mutex<Heads>,
}

impl Recent {
    /// Records the changes after `floor` (when `enabled`).
    pub(crate) fn new(enabled: bool, floor: StreamPos) -> Self {
        Self {
            enabled,
            floor,
            positions: Mutex::new(Positions::default()),
            values: Mutex::new(Values::default()),
            tails: Mutex::new(Tails::new(floor)),
            heads: Mutex::new(Heads::default()),
        }
    }

    /// Whether it records anything (a SQLite store).
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, Tails> {
        self.tails.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, Positions> {
        self.positions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn values(&self) -> std::sync::MutexGuard<'_, Values> {
        self.values.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn heads(&self) -> std::sync::MutexGuard<'_, Heads> {
        self.heads.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what a write committed at `pos` changed; called before `pos` is readable.
    pub(crate) fn record(&self, pos: StreamPos, touched: &[Touch]) {
        if !self.enabled || touched.is_empty() {
            return;
        }
        let mut positions = self.positions();
        let mut tails = self.tails();
        let raise = |slot: &mut StreamPos| *slot = (*slot).max(pos);
        for touch in touched {
            match touch {
                Touch::RoomEvent(record, has_relations) => {
                    raise(positions.room_events.entry(record.room_id.clone()).or_insert(pos));
                    tails.push((**record).clone(), *has_relations);
                }
                Touch::Redaction(target, json, by) => tails.redact(target, json, by),
                Touch::Relation(target) => tails.relate(target),
                Touch::Membership(room, user) => {
                    raise(positions.room_memberships.entry(room.clone()).or_insert(pos));
                    raise(positions.user_memberships.entry(user.clone()).or_insert(pos));
                }
                Touch::Receipt(room, user) => {
                    raise(positions.receipts.entry(room.clone()).or_insert(pos));
                    self.unread_changed(room, Some(user), &[]);
                }
                Touch::PushActions(room, actions) => self.unread_changed(room, None, actions),
                Touch::AccountData(user) => {
                    raise(positions.account_data.entry(user.clone()).or_insert(pos));
                }
                Touch::ToDevice(user) => {
                    raise(positions.to_device.entry(user.clone()).or_insert(pos));
                }
                Touch::DeviceLists => {
                    positions.device_lists = Some(positions.device_lists.unwrap_or(pos).max(pos));
                }
                Touch::RoomHead(room, group, extremities) => {
                    self.heads().moved(room, *group, extremities);
                }
            }
        }
    }

    /// Whether nothing was recorded for a key after `since` (false: ask the database).
    fn unchanged(&self, since: Option<StreamPos>, last: Option<StreamPos>) -> bool {
        match since {
            Some(since) if self.enabled && since >= self.floor => last.is_none_or(|l| l <= since),
            _ => false,
        }
    }

    /// Of `rooms`, those known to have a timeline event after `since` and at or before
    /// `until` (their latest), and those that may have one (to be asked of the database).
    pub(crate) fn rooms_with_events(
        &self,
        rooms: &[OwnedRoomId],
        since: StreamPos,
        until: StreamPos,
    ) -> (Vec<OwnedRoomId>, Vec<OwnedRoomId>) {
        let positions = self.positions();
        let (mut known, mut maybe) = (Vec::new(), Vec::new());
        for room in rooms {
            let latest = positions.room_events.get(room).copied();
            if self.unchanged(Some(since), latest) {
                continue;
            }
            match latest {
                Some(latest) if since >= self.floor && latest <= until => known.push(room.clone()),
                _ => maybe.push(room.clone()),
            }
        }
        (known, maybe)
    }

    /// The rooms of `rooms` whose memberships may have changed after `since`.
    pub(crate) fn rooms_maybe_with_memberships(
        &self,
        rooms: &[OwnedRoomId],
        since: StreamPos,
    ) -> Vec<OwnedRoomId> {
        let positions = self.positions();
        rooms
            .iter()
            .filter(|room| {
                !self.unchanged(Some(since), positions.room_memberships.get(*room).copied())
            })
            .cloned()
            .collect()
    }

    /// The rooms of `rooms` that may have had receipts after `since` (all of them for none).
    pub(crate) fn rooms_maybe_with_receipts<'a>(
        &self,
        rooms: &[&'a RoomId],
        since: Option<StreamPos>,
    ) -> Vec<&'a RoomId> {
        let positions = self.positions();
        rooms
            .iter()
            .filter(|room| !self.unchanged(since, positions.receipts.get(**room).copied()))
            .copied()
            .collect()
    }

    /// Whether the user's memberships did not change after `since`.
    pub(crate) fn no_memberships_since(&self, user: &UserId, since: StreamPos) -> bool {
        self.unchanged(Some(since), self.positions().user_memberships.get(user).copied())
    }

    /// Whether the user's account data did not change after `since`.
    pub(crate) fn no_account_data_since(&self, user: &UserId, since: Option<StreamPos>) -> bool {
        self.unchanged(since, self.positions().account_data.get(user).copied())
    }

    /// Whether no device list changed after `since`.
    pub(crate) fn no_device_lists_since(&self, since: StreamPos) -> bool {
        self.unchanged(Some(since), self.positions().device_lists)
    }

    /// A room's events as the store's `room_events` gives them, when its tail holds them all.
    pub(crate) fn room_events(
        &self,
        room: &RoomId,
        from: StreamPos,
        to: Option<StreamPos>,
        direction: Direction,
        limit: i64,
    ) -> Option<Vec<EventRecord>> {
        if !self.enabled {
            return None;
        }
        let limit = usize::try_from(limit).unwrap_or(0);
        self.tails().events(room, from, to, direction, limit)
    }

    /// A room's latest event at or before `pos`, when its tail holds it.
    pub(crate) fn last_event_at(&self, room: &RoomId, pos: StreamPos) -> Option<EventRecord> {
        if !self.enabled {
            return None;
        }
        self.tails().last_at(room, pos)
    }

    /// Of `event_ids`, those the tails know to have relations, and those they do not know.
    pub(crate) fn events_with_relations(
        &self,
        event_ids: &[OwnedEventId],
    ) -> (HashSet<OwnedEventId>, Vec<OwnedEventId>) {
        if !self.enabled {
            return (HashSet::new(), event_ids.to_vec());
        }
        self.tails().with_relations(event_ids)
    }

    /// Records a redaction stored outside the stream (one fetched with history): the recent
    /// copy of its target, if any, takes the redacted JSON.
    pub(crate) fn redacted(&self, target: &EventId, json: &str, by: &EventId) {
        if self.enabled {
            self.tails().redact(target, json, by);
        }
    }

    /// A relation persisted outside the stream (history): its target has relations.
    pub(crate) fn relation_added(&self, target: &EventId) {
        if self.enabled {
            self.tails().relate(target);
        }
    }

    /// Whether the device is known to have no message waiting at or below `until`.
    pub(crate) fn no_to_device_waiting(&self, user: &UserId, device: &ruma::DeviceId) -> bool {
        if !self.enabled {
            return false;
        }
        let positions = self.positions();
        let Some(empty) = positions.to_device_empty.get(&(user.to_owned(), device.to_owned()))
        else {
            return false;
        };
        // Messages queued later took positions above the empty read's, unless none came.
        positions.to_device.get(user).is_none_or(|queued| queued <= empty)
    }

    /// Records that the device had no message waiting at or below `until` (a read found none).
    pub(crate) fn to_device_found_empty(
        &self,
        user: &UserId,
        device: &ruma::DeviceId,
        until: StreamPos,
    ) {
        if !self.enabled {
            return;
        }
        let mut positions = self.positions();
        let slot =
            positions.to_device_empty.entry((user.to_owned(), device.to_owned())).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// The user's generation, read before a value is read from the database.
    pub(crate) fn generation(&self, user: &UserId) -> u64 {
        self.values().generations.get(user).copied().unwrap_or(0)
    }

    /// Drops the user's remembered values; called after a write that changes them commits.
    pub(crate) fn values_changed(&self, user: &UserId) {
        if !self.enabled {
            return;
        }
        let mut values = self.values();
        *values.generations.entry(user.to_owned()).or_insert(0) += 1;
        values.keys.retain(|(owner, _), _| owner != user);
        values.account_data.retain(|(owner, _), _| owner != user);
    }

    /// The device's one-time key counts, if remembered.
    pub(crate) fn one_time_key_counts(
        &self,
        user: &UserId,
        device: &ruma::DeviceId,
    ) -> Option<Vec<(String, i64)>> {
        self.device_keys(user, device).and_then(|keys| keys.one_time)
    }

    /// The device's unused fallback key algorithms, if remembered.
    pub(crate) fn fallback_keys(
        &self,
        user: &UserId,
        device: &ruma::DeviceId,
    ) -> Option<Vec<String>> {
        self.device_keys(user, device).and_then(|keys| keys.fallback)
    }

    fn device_keys(&self, user: &UserId, device: &ruma::DeviceId) -> Option<DeviceKeys> {
        if !self.enabled {
            return None;
        }
        let values = self.values();
        let current = values.generations.get(user).copied().unwrap_or(0);
        let (generation, keys) = values.keys.get(&(user.to_owned(), device.to_owned()))?;
        (*generation == current).then(|| keys.clone())
    }

    /// Remembers a device's key values read at `generation` (unless it moved since).
    pub(crate) fn remember_keys(
        &self,
        user: &UserId,
        device: &ruma::DeviceId,
        generation: u64,
        one_time: Option<Vec<(String, i64)>>,
        fallback: Option<Vec<String>>,
    ) {
        if !self.enabled {
            return;
        }
        let mut values = self.values();
        if values.generations.get(user).copied().unwrap_or(0) != generation {
            return;
        }
        if values.keys.len() >= MAX_VALUES {
            values.keys.clear();
        }
        let entry = values
            .keys
            .entry((user.to_owned(), device.to_owned()))
            .or_insert_with(|| (generation, DeviceKeys::default()));
        if entry.0 != generation {
            *entry = (generation, DeviceKeys::default());
        }
        if one_time.is_some() {
            entry.1.one_time = one_time;
        }
        if fallback.is_some() {
            entry.1.fallback = fallback;
        }
    }

    /// The room's generation, read before its record or extremities are read from the
    /// database.
    pub(crate) fn room_generation(&self, room: &RoomId) -> u64 {
        self.heads().generation(room)
    }

    /// The room's record, if remembered.
    pub(crate) fn room_record(&self, room: &RoomId) -> Option<RoomRecord> {
        if !self.enabled {
            return None;
        }
        self.heads().record(room)
    }

    /// The room's forward extremities (sorted), if remembered.
    pub(crate) fn forward_extremities(&self, room: &RoomId) -> Option<Vec<OwnedEventId>> {
        if !self.enabled {
            return None;
        }
        self.heads().extremities(room)
    }

    /// Remembers a room's record read at `generation` (unless the room changed since).
    pub(crate) fn remember_room_record(&self, generation: u64, record: RoomRecord) {
        if self.enabled {
            self.heads().remember_record(generation, record);
        }
    }

    /// Remembers a room's forward extremities (sorted) read at `generation`.
    pub(crate) fn remember_forward_extremities(
        &self,
        room: &RoomId,
        generation: u64,
        extremities: Vec<OwnedEventId>,
    ) {
        if self.enabled {
            self.heads().remember_extremities(room, generation, extremities);
        }
    }

    /// A write other than a persisted event changed the room's record; called after it
    /// commits.
    pub(crate) fn room_changed(&self, room: &RoomId) {
        if self.enabled {
            self.heads().forget(room);
        }
    }

    /// Counts of the room's push actions or receipts changed: a receipt of `reader` drops
    /// theirs; new actions (always after every receipt) add to those remembered.
    fn unread_changed(
        &self,
        room: &RoomId,
        reader: Option<&UserId>,
        actions: &[(OwnedUserId, bool, bool)],
    ) {
        let mut values = self.values();
        *values.room_generations.entry(room.to_owned()).or_insert(0) += 1;
        if let Some(reader) = reader {
            values.unread.remove(&(reader.to_owned(), room.to_owned()));
        }
        for (user, notify, highlight) in actions {
            if let Some(counts) = values.unread.get_mut(&(user.clone(), room.to_owned())) {
                counts.notifications += u64::from(*notify);
                counts.highlights += u64::from(*highlight);
            }
        }
    }

    /// Push actions of a user in a room were pruned: their remembered counts go.
    pub(crate) fn unread_pruned(&self, user: &UserId, room: &RoomId) {
        if self.enabled {
            self.unread_changed(room, Some(user), &[]);
        }
    }

    /// The room's unread-counts generation, read before counts are read from the database.
    pub(crate) fn unread_generation(&self, room: &RoomId) -> u64 {
        self.values().room_generations.get(room).copied().unwrap_or(0)
    }

    /// A user's remembered unread counts in a room.
    pub(crate) fn unread_counts(&self, user: &UserId, room: &RoomId) -> Option<UnreadCounts> {
        if !self.enabled {
            return None;
        }
        self.values().unread.get(&(user.to_owned(), room.to_owned())).copied()
    }

    /// Remembers unread counts read at `generation` (unless the room's moved since).
    pub(crate) fn remember_unread(
        &self,
        user: &UserId,
        room: &RoomId,
        generation: u64,
        counts: UnreadCounts,
    ) {
        if !self.enabled {
            return;
        }
        let mut values = self.values();
        if values.room_generations.get(room).copied().unwrap_or(0) != generation {
            return;
        }
        if values.unread.len() >= MAX_VALUES {
            values.unread.clear();
        }
        values.unread.insert((user.to_owned(), room.to_owned()), counts);
    }

    /// A user's global account data of a type, if remembered (`Some(None)`: there is none).
    pub(crate) fn account_data(
        &self,
        user: &UserId,
        data_type: &str,
    ) -> Option<Option<AccountDataRecord>> {
        if !self.enabled {
            return None;
        }
        let values = self.values();
        let current = values.generations.get(user).copied().unwrap_or(0);
        let (generation, record) =
            values.account_data.get(&(user.to_owned(), data_type.to_owned()))?;
        (*generation == current).then(|| record.clone())
    }

    /// Remembers a user's global account data of a type read at `generation`.
    pub(crate) fn remember_account_data(
        &self,
        user: &UserId,
        data_type: &str,
        generation: u64,
        record: Option<AccountDataRecord>,
    ) {
        if !self.enabled {
            return;
        }
        let mut values = self.values();
        if values.generations.get(user).copied().unwrap_or(0) != generation {
            return;
        }
        if values.account_data.len() >= MAX_VALUES {
            values.account_data.clear();
        }
        values.account_data.insert((user.to_owned(), data_type.to_owned()), (generation, record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{device_id, owned_room_id, owned_user_id, user_id};

    #[test]
    fn nothing_is_known_before_the_floor_or_when_disabled() {
        let recent = Recent::new(true, 10);
        assert!(!recent.no_account_data_since(user_id!("@a:x"), Some(9)));
        assert!(!recent.no_account_data_since(user_id!("@a:x"), None));
        assert!(recent.no_account_data_since(user_id!("@a:x"), Some(10)));
        let off = Recent::new(false, 10);
        assert!(!off.no_account_data_since(user_id!("@a:x"), Some(12)));
        off.to_device_found_empty(user_id!("@a:x"), device_id!("D"), 12);
        assert!(!off.no_to_device_waiting(user_id!("@a:x"), device_id!("D")));
    }

    #[test]
    fn a_change_is_seen_from_every_position_before_it() {
        let recent = Recent::new(true, 0);
        let room = owned_room_id!("!r:x");
        let event = Box::new(tails::tests::record("!r:x", "$e5", 5));
        recent.record(
            5,
            &[Touch::RoomEvent(event, false), Touch::Receipt(room.clone(), owned_user_id!("@r:x"))],
        );
        recent.record(7, &[Touch::Membership(room.clone(), owned_user_id!("@b:x"))]);
        let other = owned_room_id!("!other:x");
        let both = [room.clone(), other.clone()];
        assert_eq!(recent.rooms_with_events(&both, 4, 5), (vec![room.clone()], vec![]));
        assert_eq!(recent.rooms_with_events(&both, 4, 4), (vec![], vec![room.clone()]));
        assert_eq!(recent.rooms_with_events(&both, 5, 9), (vec![], vec![]));
        assert_eq!(
            recent.rooms_maybe_with_memberships(std::slice::from_ref(&room), 6),
            vec![room.clone()]
        );
        assert!(recent.rooms_maybe_with_memberships(std::slice::from_ref(&room), 7).is_empty());
        assert!(!recent.no_memberships_since(user_id!("@b:x"), 6));
        assert_eq!(recent.rooms_maybe_with_receipts(&[&room], Some(4)).len(), 1);
        assert!(recent.rooms_maybe_with_receipts(&[&room], Some(5)).is_empty());
        // An older write recorded late never lowers what is known.
        recent.record(
            3,
            &[Touch::RoomEvent(Box::new(tails::tests::record("!r:x", "$e3", 3)), false)],
        );
        assert_eq!(recent.rooms_with_events(&both, 4, 9), (vec![room.clone()], vec![]));
        assert!(recent.no_device_lists_since(0));
        recent.record(9, &[Touch::DeviceLists]);
        assert!(!recent.no_device_lists_since(8));
    }

    #[test]
    fn an_empty_inbox_stays_empty_until_a_message_is_queued() {
        let recent = Recent::new(true, 0);
        let (user, device) = (user_id!("@a:x"), device_id!("D"));
        assert!(!recent.no_to_device_waiting(user, device), "never read");
        recent.to_device_found_empty(user, device, 4);
        assert!(recent.no_to_device_waiting(user, device));
        recent.record(6, &[Touch::ToDevice(user.to_owned())]);
        assert!(!recent.no_to_device_waiting(user, device));
        recent.to_device_found_empty(user, device, 5);
        assert!(!recent.no_to_device_waiting(user, device), "the message at 6 may wait");
        recent.to_device_found_empty(user, device, 6);
        assert!(recent.no_to_device_waiting(user, device));
    }

    #[test]
    fn unread_counts_grow_with_actions_and_drop_with_receipts() {
        let recent = Recent::new(true, 0);
        let (user, room) = (owned_user_id!("@a:x"), owned_room_id!("!r:x"));
        let before = recent.unread_generation(&room);
        let actions = vec![(user.clone(), true, false)];
        recent.record(1, &[Touch::PushActions(room.clone(), actions.clone())]);
        // Read before the action was counted: not kept.
        recent.remember_unread(&user, &room, before, UnreadCounts::default());
        assert_eq!(recent.unread_counts(&user, &room), None);
        let now = recent.unread_generation(&room);
        let one = UnreadCounts { notifications: 1, highlights: 0 };
        recent.remember_unread(&user, &room, now, one);
        recent.record(2, &[Touch::PushActions(room.clone(), vec![(user.clone(), true, true)])]);
        let two = UnreadCounts { notifications: 2, highlights: 1 };
        assert_eq!(recent.unread_counts(&user, &room), Some(two));
        recent.record(3, &[Touch::Receipt(room.clone(), owned_user_id!("@other:x"))]);
        assert_eq!(recent.unread_counts(&user, &room), Some(two));
        recent.record(4, &[Touch::Receipt(room.clone(), user.clone())]);
        assert_eq!(recent.unread_counts(&user, &room), None);
    }

    #[test]
    fn a_value_read_while_it_changed_is_not_kept() {
        let recent = Recent::new(true, 0);
        let (user, device) = (user_id!("@a:x"), device_id!("D"));
        let before = recent.generation(user);
        recent.values_changed(user);
        recent.remember_keys(user, device, before, Some(vec![("x".into(), 1)]), None);
        assert_eq!(recent.one_time_key_counts(user, device), None);
        let now = recent.generation(user);
        recent.remember_keys(user, device, now, Some(vec![("x".into(), 2)]), None);
        recent.remember_keys(user, device, now, None, Some(vec!["y".into()]));
        assert_eq!(recent.one_time_key_counts(user, device), Some(vec![("x".into(), 2)]));
        assert_eq!(recent.fallback_keys(user, device), Some(vec!["y".into()]));
        recent.values_changed(user);
        assert_eq!(recent.one_time_key_counts(user, device), None);
        recent.remember_account_data(user, "t", recent.generation(user), None);
        assert_eq!(recent.account_data(user, "t"), Some(None));
        recent.values_changed(user_id!("@other:x"));
        assert_eq!(recent.account_data(user, "t"), Some(None));
        recent.values_changed(user);
        assert_eq!(recent.account_data(user, "t"), None);
    }
}
