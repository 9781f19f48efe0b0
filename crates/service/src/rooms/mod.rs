//! Rooms: creating events and rooms, memberships, reading history under the history
//! visibility rules, relations, aliases and the directory, and room upgrades.

pub mod actions;
pub mod cache;
pub mod create;
pub mod directory;
pub mod format;
pub mod membership;
pub mod power;
pub mod read;
pub mod relations;
pub mod send;
pub mod shutdown;
pub mod spaces;
pub mod upgrade;
pub mod visibility;

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;
use rhizome_core::Result;
use rhizome_storage::MembershipRecord;
use ruma::{OwnedRoomId, OwnedUserId, RoomId};

pub use send::NewEvent;

use crate::Services;

/// Current members of rooms, cached until a membership changes.
#[derive(Default)]
pub(crate) struct MemberCache {
    rooms: Mutex<HashMap<OwnedRoomId, Arc<Vec<MembershipRecord>>>>,
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

    /// Every membership row of the room, from the cache.
    pub async fn room_memberships_cached(
        &self,
        room_id: &RoomId,
    ) -> Result<Arc<Vec<MembershipRecord>>> {
        if let Some(members) = self.caches.members.rooms.lock().get(room_id) {
            return Ok(members.clone());
        }
        let members = Arc::new(self.store.members_of_room(room_id, &[]).await?);
        self.caches.members.rooms.lock().insert(room_id.to_owned(), members.clone());
        Ok(members)
    }

    /// Drops the cached members of a room (after a membership change).
    pub(crate) fn forget_room_members(&self, room_id: &RoomId) {
        self.caches.members.rooms.lock().remove(room_id);
    }
}
