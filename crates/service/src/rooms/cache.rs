//! In-memory caches over the store: room versions, parsed events, state maps by group, and one
//! lock per room that serialises event creation in it.

use std::{
    collections::HashMap,
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use lru::LruCache;
use parking_lot::Mutex;
use rhizome_core::{Error, Result};
use rhizome_room::{Pdu, StateMap};
use rhizome_storage::{EventRecord, RoomLock, StateGroupId};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, events::StateEventType};

use crate::{Services, users::LoginTokens};

/// An event as loaded from the store: the parsed PDU and where it sits.
#[derive(Debug)]
pub struct LoadedEvent {
    /// The PDU (redacted, once redacted).
    pub pdu: Pdu,
    /// The stored record, without its JSON (the PDU holds it: kept twice, it doubled what
    /// the event cache holds).
    pub record: EventRecord,
}

fn lru<K: std::hash::Hash + Eq, V>(size: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(crate::bounded::lru(NonZeroUsize::new(size).unwrap_or(NonZeroUsize::MIN)))
}

/// The caches.
pub(crate) struct RoomCaches {
    versions: Mutex<HashMap<OwnedRoomId, RoomVersionId>>,
    events: Mutex<LruCache<OwnedEventId, Arc<LoadedEvent>>>,
    /// Counts the times cached events were dropped (a redaction, here or announced by another
    /// process): an event read before a drop is not cached after it, so a copy read just
    /// before its redaction never outlives the redaction in the cache.
    events_dropped: AtomicU64,
    state_groups: Mutex<StateMapCache>,
    locks: Mutex<HashMap<OwnedRoomId, Arc<RoomLockSlot>>>,
    pub(crate) members: super::MemberCache,
    pub(crate) push_rules:
        Mutex<LruCache<ruma::OwnedUserId, Arc<crate::push::rules::EvaluableRules>>>,
    pub(crate) login_tokens: LoginTokens,
}

impl RoomCaches {
    pub(crate) fn new() -> Self {
        Self {
            versions: Mutex::new(HashMap::new()),
            // An event takes roughly one to two KB here, by estimate (its JSON once, and the
            // parsed PDU): 20,000 was the biggest part of a busy small server's memory. An
            // initial sync of 1,000 rooms reads what is missing in one statement.
            events: lru(10_000),
            events_dropped: AtomicU64::new(0),
            state_groups: Mutex::new(StateMapCache::new(STATE_CACHE_SLOTS)),
            locks: Mutex::new(HashMap::new()),
            members: super::MemberCache::default(),
            push_rules: lru(10_000),
            login_tokens: LoginTokens::default(),
        }
    }
}

/// How many state slots (entries of state maps) the state cache holds in all: about 17 MB by
/// estimate.
/// Counted in slots, not maps, since a big room's map is a thousand times a small one's.
/// (An initial sync of a user in 1,000 small rooms needs about 10,000; 300,000 filled up with
/// the maps after each of a big room's joins, each one member longer than the last.)
const STATE_CACHE_SLOTS: usize = 100_000;

/// State maps by group, the least recently used dropped first once they hold more slots than
/// the budget.
pub(crate) struct StateMapCache {
    maps: LruCache<StateGroupId, Arc<StateMap>>,
    slots: usize,
    budget: usize,
}

impl StateMapCache {
    fn new(budget: usize) -> Self {
        Self { maps: LruCache::unbounded(), slots: 0, budget }
    }

    fn get(&mut self, group: StateGroupId) -> Option<Arc<StateMap>> {
        self.maps.get(&group).cloned()
    }

    fn contains(&self, group: StateGroupId) -> bool {
        self.maps.contains(&group)
    }

    fn put(&mut self, group: StateGroupId, map: Arc<StateMap>) {
        if map.len() > self.budget {
            // It would push out everything, itself last.
            return;
        }
        self.slots += map.len().max(1);
        if let Some(old) = self.maps.put(group, map) {
            self.slots -= old.len().max(1);
        }
        while self.slots > self.budget {
            let Some((_, dropped)) = self.maps.pop_lru() else { break };
            self.slots -= dropped.len().max(1);
        }
    }
}

/// A room's lock: in memory for this process, and the store's for every process.
#[derive(Default)]
pub(crate) struct RoomLockSlot {
    local: Arc<tokio::sync::Mutex<()>>,
    /// The store's lock, while the holder of `local` has it and has not persisted with it.
    store: Mutex<Option<RoomLock>>,
}

/// A room held for building and persisting its next events; dropping it lets the room go.
pub(crate) struct RoomGuard {
    slot: Arc<RoomLockSlot>,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for RoomGuard {
    fn drop(&mut self) {
        // The store's lock goes first (its transaction is rolled back), then the local one.
        self.slot.store.lock().take();
    }
}

/// Converts the store's state rows to a state map.
pub(crate) fn state_map_from_rows(rows: HashMap<(String, String), OwnedEventId>) -> StateMap {
    rows.into_iter().map(|((kind, key), id)| ((StateEventType::from(kind), key), id)).collect()
}

impl Services {
    /// The room's version, or `M_NOT_FOUND` if the server does not know the room.
    pub async fn room_version(&self, room_id: &RoomId) -> Result<RoomVersionId> {
        if let Some(version) = self.caches.versions.lock().get(room_id) {
            return Ok(version.clone());
        }
        let room =
            self.store.get_room(room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        self.caches.versions.lock().insert(room_id.to_owned(), room.room_version.clone());
        Ok(room.room_version)
    }

    /// Whether the server knows the room.
    pub async fn room_exists(&self, room_id: &RoomId) -> Result<bool> {
        match self.room_version(room_id).await {
            Ok(_) => Ok(true),
            Err(error) if error.matrix_kind().is_some() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Takes the lock that serialises event creation in a room: in memory, then in the store
    /// (so another process sharing the database waits too). The store's lock is handed to the
    /// transaction of the next event persisted under it ([`Services::take_store_room_lock`]).
    pub(crate) async fn lock_room(&self, room_id: &RoomId) -> Result<RoomGuard> {
        let slot = self.caches.locks.lock().entry(room_id.to_owned()).or_default().clone();
        let local = slot.local.clone().lock_owned().await;
        let guard = RoomGuard { slot, _local: local };
        if self.store.shared_by_processes() {
            let held = self.store.lock_room(room_id).await?;
            *guard.slot.store.lock() = Some(held);
        }
        Ok(guard)
    }

    /// The store's lock on a room, for the transaction persisting its next event. The caller
    /// holds the room's lock in memory; the store's is taken again for the events after this
    /// one ([`Services::relock_room_in_store`]).
    pub(crate) fn take_store_room_lock(&self, room_id: &RoomId) -> Option<RoomLock> {
        let slot = self.caches.locks.lock().get(room_id).cloned()?;
        slot.store.lock().take()
    }

    /// Takes the store's lock on a room again after an event was persisted, so the next event
    /// built under the same lock in memory is built under it too.
    pub(crate) async fn relock_room_in_store(&self, room_id: &RoomId) -> Result<()> {
        if !self.store.shared_by_processes() {
            return Ok(());
        }
        let Some(slot) = self.caches.locks.lock().get(room_id).cloned() else { return Ok(()) };
        if slot.local.try_lock().is_ok() {
            // Nobody holds the room any more.
            return Ok(());
        }
        let held = self.store.lock_room(room_id).await?;
        *slot.store.lock() = Some(held);
        Ok(())
    }

    /// Loads an event with its place in the room.
    pub async fn load_event(&self, event_id: &EventId) -> Result<Option<Arc<LoadedEvent>>> {
        if let Some(event) = self.caches.events.lock().get(event_id) {
            return Ok(Some(event.clone()));
        }
        let dropped = self.events_dropped();
        let Some(record) = self.store.get_event(event_id).await? else { return Ok(None) };
        let event = Arc::new(self.parse_record(record).await?);
        self.remember_event(dropped, event.clone());
        Ok(Some(event))
    }

    /// Loads several events, keeping the given order and leaving out unknown ones.
    pub async fn load_events(&self, event_ids: &[OwnedEventId]) -> Result<Vec<Arc<LoadedEvent>>> {
        let mut found: HashMap<OwnedEventId, Arc<LoadedEvent>> = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut cache = self.caches.events.lock();
            for event_id in event_ids {
                match cache.get(event_id) {
                    Some(event) => {
                        found.insert(event_id.clone(), event.clone());
                    }
                    None => missing.push(event_id.clone()),
                }
            }
        }
        if !missing.is_empty() {
            let dropped = self.events_dropped();
            for record in self.store.get_events(&missing).await? {
                let event = Arc::new(self.parse_record(record).await?);
                self.remember_event(dropped, event.clone());
                found.insert(event.pdu.event_id.clone(), event);
            }
        }
        Ok(event_ids.iter().filter_map(|event_id| found.get(event_id).cloned()).collect())
    }

    /// Parses store records (from a timeline query) into loaded events, using the cache.
    /// `dropped` is [`Self::events_dropped`] read before the records were: a drop of cached
    /// events (a redaction) since keeps them out of the cache, as for [`Self::load_events`].
    pub(crate) async fn loaded_from_records(
        &self,
        dropped: u64,
        records: Vec<EventRecord>,
    ) -> Result<Vec<Arc<LoadedEvent>>> {
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            let cached = self.caches.events.lock().get(&record.event_id).cloned();
            let event = match cached {
                Some(event) => event,
                None => {
                    let event = Arc::new(self.parse_record(record).await?);
                    self.remember_event(dropped, event.clone());
                    event
                }
            };
            events.push(event);
        }
        Ok(events)
    }

    async fn parse_record(&self, mut record: EventRecord) -> Result<LoadedEvent> {
        let version = self.room_version(&record.room_id).await?;
        let json = serde_json::value::RawValue::from_string(std::mem::take(&mut record.json))?;
        let mut pdu = Pdu::from_json(record.event_id.clone(), json, &version)
            .map_err(|error| Error::bug(format!("stored event does not parse: {error}")))?;
        pdu.rejected = record.rejected;
        Ok(LoadedEvent { pdu, record })
    }

    /// Caches an event just persisted with its record (whose JSON the PDU holds), unless
    /// cached events were dropped since `dropped` was read, before it was persisted.
    pub(crate) fn cache_persisted(&self, dropped: u64, pdu: Pdu, record: EventRecord) {
        self.remember_event(dropped, Arc::new(LoadedEvent { pdu, record }));
    }

    /// How many times cached events were dropped so far: read before reading events that
    /// will be cached.
    pub(crate) fn events_dropped(&self) -> u64 {
        self.caches.events_dropped.load(Ordering::Acquire)
    }

    /// Caches an event read (or written) after `dropped` was read, unless events were dropped
    /// since (the check and the drop hold the cache's lock, so none comes between).
    fn remember_event(&self, dropped: u64, event: Arc<LoadedEvent>) {
        let mut cache = self.caches.events.lock();
        if self.caches.events_dropped.load(Ordering::Acquire) == dropped {
            cache.put(event.pdu.event_id.clone(), event);
        }
    }

    /// Forgets a cached event (after it was redacted).
    pub(crate) fn forget_event(&self, event_id: &EventId) {
        let mut cache = self.caches.events.lock();
        self.caches.events_dropped.fetch_add(1, Ordering::AcqRel);
        cache.pop(event_id);
    }

    /// Drops every cached event.
    pub(crate) fn forget_all_events(&self) {
        let mut cache = self.caches.events.lock();
        self.caches.events_dropped.fetch_add(1, Ordering::AcqRel);
        cache.clear();
    }

    /// The state map of a state group.
    pub async fn state_map(&self, group: StateGroupId) -> Result<Arc<StateMap>> {
        if let Some(state) = self.caches.state_groups.lock().get(group) {
            return Ok(state);
        }
        let state = Arc::new(state_map_from_rows(self.store.load_state_group(group).await?));
        self.caches.state_groups.lock().put(group, state.clone());
        Ok(state)
    }

    /// Loads into the cache, in one read, the state maps of those groups it lacks.
    pub(crate) async fn prefetch_state_maps(&self, groups: &[StateGroupId]) -> Result<()> {
        let missing: Vec<StateGroupId> = {
            let cache = self.caches.state_groups.lock();
            let mut missing: Vec<StateGroupId> =
                groups.iter().copied().filter(|group| !cache.contains(*group)).collect();
            missing.sort_unstable();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let maps = self.store.load_state_groups(&missing).await?;
        let mut cache = self.caches.state_groups.lock();
        for (group, rows) in maps {
            cache.put(group, Arc::new(state_map_from_rows(rows)));
        }
        Ok(())
    }

    /// The event filling a state slot in a state group.
    pub async fn state_event_in(
        &self,
        group: StateGroupId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Arc<LoadedEvent>>> {
        let state = self.state_map(group).await?;
        match state.get(&(kind.clone(), state_key.to_owned())) {
            Some(event_id) => self.load_event(event_id).await,
            None => Ok(None),
        }
    }

    /// The room's current state group.
    pub async fn current_state_group(&self, room_id: &RoomId) -> Result<StateGroupId> {
        self.store
            .get_room(room_id)
            .await?
            .and_then(|room| room.current_state_group)
            .ok_or_else(|| Error::not_found("Unknown room"))
    }

    /// The room's current state.
    pub async fn current_state(&self, room_id: &RoomId) -> Result<Arc<StateMap>> {
        let group = self.current_state_group(room_id).await?;
        self.state_map(group).await
    }

    /// The event filling a slot of the room's current state.
    pub async fn current_state_event(
        &self,
        room_id: &RoomId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Arc<LoadedEvent>>> {
        let group = self.current_state_group(room_id).await?;
        self.state_event_in(group, kind, state_key).await
    }

    /// Loads the events of a state map.
    pub async fn state_events(&self, state: &StateMap) -> Result<Vec<Arc<LoadedEvent>>> {
        let ids: Vec<OwnedEventId> = state.values().cloned().collect();
        self.load_events(&ids).await
    }
}

#[cfg(test)]
mod tests {
    use ruma::owned_event_id;

    use super::*;

    fn map(slots: usize) -> Arc<StateMap> {
        Arc::new(
            (0..slots)
                .map(|index| {
                    ((StateEventType::RoomMember, format!("@u{index}:x")), owned_event_id!("$e"))
                })
                .collect(),
        )
    }

    /// The state cache holds maps up to its budget of slots, dropping the least recently used
    /// first, whatever the number of maps.
    #[test]
    fn the_state_cache_keeps_to_its_slot_budget() {
        let mut cache = StateMapCache::new(100);
        cache.put(1, map(40));
        cache.put(2, map(40));
        assert!(cache.get(1).is_some(), "1 is now the most recently used");
        cache.put(3, map(40));
        assert!(cache.contains(1) && cache.contains(3));
        assert!(!cache.contains(2), "the least recently used went");
        assert_eq!(cache.slots, 80);
        // Replacing a map counts its new size only.
        cache.put(3, map(10));
        assert_eq!(cache.slots, 50);
        // Many small maps fit where few big ones did.
        for group in 10..60 {
            cache.put(group, map(1));
        }
        assert!(cache.slots <= 100);
        assert!(cache.contains(59));
        // A map bigger than the budget is not kept, and pushes nothing out for nothing.
        cache.put(99, map(500));
        assert!(!cache.contains(99));
        assert!(cache.contains(59));
    }

    /// Records read before a redaction are not cached after it: the parse of a timeline page
    /// that raced a redaction returns what it read, and the cache keeps the redacted event.
    #[tokio::test]
    async fn records_read_before_a_redaction_are_not_cached_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let services =
            crate::test_support::services(crate::test_support::sqlite_store(dir.path()).await);
        let alice = ruma::owned_user_id!("@alice:example.org");
        let room = services.create_room(&alice, crate::rooms::create::CreateRoom::default()).await;
        let room = room.unwrap();
        let message = crate::rooms::NewEvent::message(
            "m.room.message",
            serde_json::json!({ "msgtype": "m.text", "body": "soon gone" }),
        );
        let target = services.send_event(&alice, &room, message, None).await.unwrap();
        services.forget_all_events();

        let dropped = services.events_dropped();
        let records = services
            .store
            .room_events(&room, i64::MAX, None, rhizome_storage::Direction::Backward, 1)
            .await
            .unwrap();
        assert_eq!(records[0].event_id, target);
        let mut redaction = crate::rooms::NewEvent::message(
            "m.room.redaction",
            serde_json::json!({ "redacts": target }),
        );
        redaction.redacts = Some(target.clone());
        services.send_event(&alice, &room, redaction, None).await.unwrap();

        let read = services.loaded_from_records(dropped, records).await.unwrap();
        assert!(read[0].pdu.content.get().contains("soon gone"), "what was read");
        let now = services.load_event(&target).await.unwrap().unwrap();
        assert_eq!(now.pdu.content.get(), "{}", "the cache kept the stale copy");
    }
}
