//! Rooms: creating events and rooms, memberships, reading history under the history
//! visibility rules, relations, aliases and the directory, and room upgrades.

pub mod actions;
pub mod cache;
pub mod create;
pub mod delayed;
pub mod directory;
pub mod format;
pub mod incoming;
pub mod membership;
pub mod power;
pub mod read;
pub mod relations;
pub mod send;
pub mod shutdown;
pub mod spaces;
pub mod subscriptions;
pub mod upgrade;
pub mod visibility;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use rhizome_core::Result;
use rhizome_storage::MembershipRecord;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

pub use send::NewEvent;

use crate::Services;

/// Current members of rooms, and the rooms of users, cached until a membership changes.
///
/// A membership write marks its room and users as changing before it commits and clears the
/// mark after; while marked they are read from the store and not cached, and a read that
/// raced with a write (the generation moved while it loaded) is not cached either. So a sync
/// that sees a stream position never sees memberships older than it.
#[derive(Default)]
pub(crate) struct MemberCache {
    inner: Mutex<MemberCacheInner>,
}

#[derive(Default)]
struct MemberCacheInner {
    rooms: HashMap<OwnedRoomId, Arc<Vec<MembershipRecord>>>,
    users: HashMap<OwnedUserId, Arc<Vec<MembershipRecord>>>,
    changing_rooms: HashMap<OwnedRoomId, usize>,
    changing_users: HashMap<OwnedUserId, usize>,
    generation: u64,
}

/// How many rooms' and users' lists are kept.
const CACHED_ENTRIES: usize = 10_000;

/// A membership write in progress; see [`MemberCache`].
pub(crate) struct MembershipWrite {
    room_id: OwnedRoomId,
    users: Vec<OwnedUserId>,
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

impl Services {
    /// The room's current members (joined, and invited when asked), from the cache.
    pub async fn room_members_cached(
        &self,
        room_id: &RoomId,
        include_invited: bool,
    ) -> Result<Vec<OwnedUserId>> {
        let members = self.room_memberships_cached(room_id).await?;
        Ok(members
            .iter()
            .filter(|member| {
                member.membership == "join" || (include_invited && member.membership == "invite")
            })
            .map(|member| member.user_id.clone())
            .collect())
    }

    /// The other servers with members joined to the room (federation's audience for it).
    pub async fn room_servers(&self, room_id: &RoomId) -> Result<Vec<ruma::OwnedServerName>> {
        let mut servers: Vec<ruma::OwnedServerName> = self
            .room_members_cached(room_id, false)
            .await?
            .iter()
            .map(|member| member.server_name().to_owned())
            .filter(|server| server != self.server_name())
            .collect();
        servers.sort();
        servers.dedup();
        Ok(servers)
    }

    /// Every membership row of the room, from the cache.
    pub async fn room_memberships_cached(
        &self,
        room_id: &RoomId,
    ) -> Result<Arc<Vec<MembershipRecord>>> {
        let generation = {
            let inner = self.caches.members.inner.lock();
            if let Some(members) = inner.rooms.get(room_id) {
                return Ok(members.clone());
            }
            inner.generation
        };
        let members = Arc::new(self.store.members_of_room(room_id, &[]).await?);
        let mut inner = self.caches.members.inner.lock();
        if inner.generation == generation && !inner.changing_rooms.contains_key(room_id) {
            if inner.rooms.len() >= CACHED_ENTRIES {
                inner.rooms.clear();
            }
            inner.rooms.insert(room_id.to_owned(), members.clone());
        }
        Ok(members)
    }

    /// The user's memberships (forgotten rooms left out), from the cache: every sync reads
    /// them, and they change rarely.
    pub async fn user_memberships_cached(
        &self,
        user_id: &UserId,
    ) -> Result<Arc<Vec<MembershipRecord>>> {
        let generation = {
            let inner = self.caches.members.inner.lock();
            if let Some(memberships) = inner.users.get(user_id) {
                return Ok(memberships.clone());
            }
            inner.generation
        };
        let memberships = Arc::new(self.store.rooms_of_user(user_id, &[]).await?);
        let mut inner = self.caches.members.inner.lock();
        if inner.generation == generation && !inner.changing_users.contains_key(user_id) {
            if inner.users.len() >= CACHED_ENTRIES {
                inner.users.clear();
            }
            inner.users.insert(user_id.to_owned(), memberships.clone());
        }
        Ok(memberships)
    }

    /// Marks a room's and some users' memberships as changing, before the write commits.
    pub(crate) fn begin_membership_write(
        &self,
        room_id: &RoomId,
        users: Vec<OwnedUserId>,
    ) -> MembershipWrite {
        let mut inner = self.caches.members.inner.lock();
        inner.generation += 1;
        inner.rooms.remove(room_id);
        *inner.changing_rooms.entry(room_id.to_owned()).or_default() += 1;
        for user in &users {
            inner.users.remove(user);
            *inner.changing_users.entry(user.clone()).or_default() += 1;
        }
        MembershipWrite { room_id: room_id.to_owned(), users }
    }

    /// Ends a membership write (committed or not).
    pub(crate) fn end_membership_write(&self, write: MembershipWrite) {
        let mut inner = self.caches.members.inner.lock();
        inner.generation += 1;
        inner.rooms.remove(&write.room_id);
        decrement(&mut inner.changing_rooms, &write.room_id);
        for user in &write.users {
            inner.users.remove(user);
            decrement(&mut inner.changing_users, user);
        }
    }

    /// Drops a user's cached memberships (after forgetting a room).
    pub(crate) fn forget_user_memberships(&self, user_id: &UserId) {
        let mut inner = self.caches.members.inner.lock();
        inner.generation += 1;
        inner.users.remove(user_id);
    }

    /// Drops a room's cached members and these users' (or every user's) cached rooms: another
    /// process changed them.
    pub(crate) fn forget_memberships(&self, room_id: &RoomId, users: Option<&[OwnedUserId]>) {
        let mut inner = self.caches.members.inner.lock();
        inner.generation += 1;
        inner.rooms.remove(room_id);
        match users {
            Some(users) => {
                for user in users {
                    inner.users.remove(user);
                }
            }
            None => inner.users.clear(),
        }
    }

    /// Drops every cached membership.
    pub(crate) fn forget_all_memberships(&self) {
        let mut inner = self.caches.members.inner.lock();
        inner.generation += 1;
        inner.rooms.clear();
        inner.users.clear();
    }
}
