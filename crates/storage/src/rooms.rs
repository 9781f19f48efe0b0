//! Rooms: events, state groups, forward extremities, memberships, relations, aliases and the
//! public directory.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use rhizome_core::Result;
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomAliasId, RoomId, RoomVersionId, UserId};

use crate::{
    AliasRecord, Direction, EventRecord, MembershipRecord, PersistEvent, PersistedEvent,
    PublishedRoom, RoomRecord, StateGroupId, StateSlot, StreamPos, TxnRecord,
};

/// A room's event lock held in the store (see [`RoomStore::lock_room`]); what it holds is the
/// backend's business. Dropping it releases the lock.
pub struct RoomLock(Option<Box<dyn std::any::Any + Send>>);

impl RoomLock {
    /// A lock that holds nothing in the store.
    pub fn empty() -> Self {
        Self(None)
    }

    /// A lock holding the backend's `held` (a transaction, a connection).
    pub fn holding(held: Box<dyn std::any::Any + Send>) -> Self {
        Self(Some(held))
    }

    /// What the backend put in.
    pub fn into_held(self) -> Option<Box<dyn std::any::Any + Send>> {
        self.0
    }
}

impl std::fmt::Debug for RoomLock {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(if self.0.is_some() { "RoomLock(held)" } else { "RoomLock(empty)" })
    }
}

/// Rooms: events, state groups, forward extremities, memberships, relations, aliases and the
/// public directory.
#[async_trait]
pub trait RoomStore {
    /// Records a new room; `M_ROOM_IN_USE` if it exists.
    async fn create_room(
        &self,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        now: i64,
    ) -> Result<()>;

    /// Looks a room up.
    async fn get_room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>>;

    /// Every room the server knows.
    async fn list_rooms(&self) -> Result<Vec<RoomRecord>>;

    /// Persists an event, its state, the room's new forward extremities and current state, and
    /// takes the next stream position, all in one transaction (which holds the room's lock in
    /// the store while it runs).
    async fn persist_event(&self, event: &PersistEvent) -> Result<PersistedEvent>;

    /// Takes the room's event lock in the store, for a process that builds the room's next
    /// event: no other process builds one until the lock is given to
    /// [`RoomStore::persist_event_locked`] (whose transaction it is) or dropped. A store only
    /// one process can use may hand out an empty lock (the caller's lock in memory suffices).
    async fn lock_room(&self, room_id: &RoomId) -> Result<RoomLock>;

    /// [`RoomStore::persist_event`] inside the transaction that holds the room's lock, which
    /// ends with it.
    async fn persist_event_locked(
        &self,
        event: &PersistEvent,
        lock: RoomLock,
    ) -> Result<PersistedEvent>;

    /// Looks an event up.
    async fn get_event(&self, event_id: &EventId) -> Result<Option<EventRecord>>;

    /// Looks several events up (missing ones are left out).
    async fn get_events(&self, event_ids: &[OwnedEventId]) -> Result<Vec<EventRecord>>;

    /// The redactions stored before `target` was (recorded by
    /// [`PersistEvent::redaction_waits_for`]), oldest first.
    async fn waiting_redactions(&self, target: &EventId) -> Result<Vec<OwnedEventId>>;

    /// The event a client transaction made, if it was already sent.
    async fn event_for_txn(&self, txn: &TxnRecord) -> Result<Option<OwnedEventId>>;

    /// The room's forward extremities.
    async fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>>;

    /// The full state map of a state group.
    async fn load_state_group(
        &self,
        group: StateGroupId,
    ) -> Result<HashMap<StateSlot, OwnedEventId>>;

    /// The full state maps of several groups (those the store knows), in as few round trips
    /// as the backend can: a sync needs many at once.
    async fn load_state_groups(
        &self,
        groups: &[StateGroupId],
    ) -> Result<HashMap<StateGroupId, HashMap<StateSlot, OwnedEventId>>> {
        let mut maps = HashMap::with_capacity(groups.len());
        for group in groups {
            maps.insert(*group, self.load_state_group(*group).await?);
        }
        Ok(maps)
    }

    /// Every auth ancestor of the given events, the events themselves included.
    async fn auth_chain(&self, event_ids: &[OwnedEventId]) -> Result<HashSet<OwnedEventId>>;

    /// Events of a room by stream position, exclusive of `from`: older ones (descending) for
    /// [`Direction::Backward`], newer ones (ascending) for [`Direction::Forward`], up to `to`
    /// (inclusive for forward, exclusive for backward).
    async fn room_events(
        &self,
        room_id: &RoomId,
        from: StreamPos,
        to: Option<StreamPos>,
        direction: Direction,
        limit: i64,
    ) -> Result<Vec<EventRecord>>;

    /// The IDs of the latest events of several rooms at once, newest first in each: for every
    /// room, those of what [`RoomStore::room_events`] gives backward from `upper` (exclusive)
    /// down to `lower` (exclusive), at most `limit`. A room with no such event may be left
    /// out. IDs only: the events themselves are usually in the caller's cache.
    async fn latest_room_event_ids(
        &self,
        room_ids: &[&RoomId],
        upper: StreamPos,
        lower: Option<StreamPos>,
        limit: i64,
    ) -> Result<HashMap<OwnedRoomId, Vec<OwnedEventId>>> {
        let mut found = HashMap::with_capacity(room_ids.len());
        for room_id in room_ids {
            let events =
                self.room_events(room_id, upper, lower, Direction::Backward, limit).await?;
            found.insert(
                (*room_id).to_owned(),
                events.into_iter().map(|event| event.event_id).collect(),
            );
        }
        Ok(found)
    }

    /// The current state group of each of the rooms the store knows (rooms it holds no state
    /// of are left out).
    async fn current_state_groups(
        &self,
        room_ids: &[&RoomId],
    ) -> Result<HashMap<OwnedRoomId, StateGroupId>> {
        let mut found = HashMap::with_capacity(room_ids.len());
        for room_id in room_ids {
            if let Some(group) =
                self.get_room(room_id).await?.and_then(|room| room.current_state_group)
            {
                found.insert((*room_id).to_owned(), group);
            }
        }
        Ok(found)
    }

    /// The latest event of the room at or before a stream position.
    async fn last_event_at(&self, room_id: &RoomId, pos: StreamPos) -> Result<Option<EventRecord>>;

    /// The stream position of the room's latest event of one of `event_types` at or before
    /// `pos`.
    async fn last_event_of_types(
        &self,
        room_id: &RoomId,
        event_types: &[&str],
        pos: StreamPos,
    ) -> Result<Option<StreamPos>>;

    /// Of the given rooms, those with events after `since` up to `until`.
    async fn rooms_with_events_between(
        &self,
        room_ids: &[OwnedRoomId],
        since: StreamPos,
        until: StreamPos,
    ) -> Result<Vec<OwnedRoomId>>;

    /// A user's current membership in a room.
    async fn get_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MembershipRecord>>;

    /// The rooms where the user's current membership is one of `memberships` (all if empty),
    /// forgotten rooms left out.
    async fn rooms_of_user(
        &self,
        user_id: &UserId,
        memberships: &[&str],
    ) -> Result<Vec<MembershipRecord>>;

    /// The room's members whose current membership is one of `memberships` (all if empty).
    async fn members_of_room(
        &self,
        room_id: &RoomId,
        memberships: &[&str],
    ) -> Result<Vec<MembershipRecord>>;

    /// The user's memberships that changed after `since`.
    async fn membership_changes_since(
        &self,
        user_id: &UserId,
        since: StreamPos,
    ) -> Result<Vec<MembershipRecord>>;

    /// Marks a room the user has left as forgotten.
    async fn forget_room(&self, user_id: &UserId, room_id: &RoomId) -> Result<()>;

    /// Whether the user forgot the room (and has not come back since).
    async fn is_room_forgotten(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool>;

    /// Events relating to `event_id`, optionally of one relation and event type, by stream
    /// position as in [`RoomStore::room_events`].
    #[allow(clippy::too_many_arguments)] // Mirrors the query parameters of `/relations`.
    async fn relations(
        &self,
        event_id: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: StreamPos,
        to: Option<StreamPos>,
        direction: Direction,
        limit: i64,
    ) -> Result<Vec<EventRecord>>;

    /// Of the given events, those that some other event relates to (so only they need their
    /// relations bundled).
    async fn events_with_relations(
        &self,
        event_ids: &[OwnedEventId],
    ) -> Result<HashSet<OwnedEventId>>;

    /// The latest `m.replace` of an event by its sender.
    async fn latest_edit(&self, event_id: &EventId, sender: &UserId)
    -> Result<Option<EventRecord>>;

    /// A thread's reply count, latest reply and whether `user_id` took part.
    async fn thread_summary(
        &self,
        root: &EventId,
        user_id: &UserId,
    ) -> Result<Option<(i64, EventRecord, bool)>>;

    /// Thread roots of a room, newest activity first, before stream position `from`
    /// (exclusive), optionally only those `participant` took part in. Returns each root with
    /// the position of its latest activity.
    async fn thread_roots(
        &self,
        room_id: &RoomId,
        from: Option<StreamPos>,
        participant: Option<&UserId>,
        limit: i64,
    ) -> Result<Vec<(EventRecord, StreamPos)>>;

    /// The event closest to a timestamp: the first at or after it (forward) or the last at or
    /// before it (backward).
    async fn event_at_timestamp(
        &self,
        room_id: &RoomId,
        ts: i64,
        direction: Direction,
    ) -> Result<Option<EventRecord>>;

    /// Messages of the given rooms whose body contains `term`, newest first, before `before`.
    async fn search_messages(
        &self,
        room_ids: &[OwnedRoomId],
        term: &str,
        before: Option<StreamPos>,
        limit: i64,
    ) -> Result<Vec<EventRecord>>;

    /// Adds an alias; `false` if it already exists.
    async fn create_alias(&self, alias: &AliasRecord) -> Result<bool>;

    /// Resolves an alias.
    async fn get_alias(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>>;

    /// Removes an alias; `false` if it did not exist.
    async fn delete_alias(&self, alias: &RoomAliasId) -> Result<bool>;

    /// The local aliases of a room.
    async fn aliases_of_room(&self, room_id: &RoomId) -> Result<Vec<AliasRecord>>;

    /// Lists or unlists a room in the public directory.
    async fn set_room_published(&self, room_id: &RoomId, published: bool) -> Result<()>;

    /// Published rooms, largest first.
    async fn published_rooms(&self) -> Result<Vec<PublishedRoom>>;

    /// Marks a room as shut down by the server's administrator (keeping the first time if it
    /// already was); `false` if the room is unknown.
    async fn set_room_shut_down(&self, room_id: &RoomId, ts: i64) -> Result<bool>;
}
