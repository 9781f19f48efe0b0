//! The user directory: whom a user finds by name. Users they share a room with, and users in
//! rooms anyone may see into (a public join rule or world-readable history), as Synapse
//! decides it; the server's name is no search term.

use std::collections::HashSet;

use rhizome_core::Result;
use rhizome_storage::DirectoryUser;
use ruma::{OwnedRoomId, RoomId, UserId, events::StateEventType};

use crate::Services;

/// How many name matches are looked at for one search.
const CANDIDATES: i64 = 500;

impl Services {
    /// Users matching `term` whom `searcher` may find, at most `limit`.
    pub async fn search_user_directory(
        &self,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<Vec<DirectoryUser>> {
        let candidates =
            self.store.user_directory_candidates(self.server_name(), term, CANDIDATES).await?;
        let shared: HashSet<OwnedRoomId> = self.joined_room_ids(searcher).await?;
        let mut found = Vec::new();
        for candidate in candidates {
            if found.len() >= limit {
                break;
            }
            if candidate.user_id == searcher || self.findable(&candidate.user_id, &shared).await? {
                found.push(candidate);
            }
        }
        Ok(found)
    }

    async fn joined_room_ids(&self, user_id: &UserId) -> Result<HashSet<OwnedRoomId>> {
        Ok(self
            .user_memberships_cached(user_id)
            .await?
            .iter()
            .filter(|member| member.membership == "join")
            .map(|member| member.room_id.clone())
            .collect())
    }

    /// Whether a user is in one of the searcher's rooms, or in a room anyone may see into.
    async fn findable(
        &self,
        user_id: &UserId,
        searchers_rooms: &HashSet<OwnedRoomId>,
    ) -> Result<bool> {
        for room_id in self.joined_room_ids(user_id).await? {
            if searchers_rooms.contains(&room_id) || self.room_is_open(&room_id).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A public join rule, or world-readable history.
    async fn room_is_open(&self, room_id: &RoomId) -> Result<bool> {
        let field = |kind: StateEventType, field: &'static str| async move {
            Ok::<_, rhizome_core::Error>(
                self.current_state_event(room_id, &kind, "")
                    .await?
                    .and_then(|event| event.pdu.content_str(field)),
            )
        };
        Ok(field(StateEventType::RoomJoinRules, "join_rule").await?.as_deref() == Some("public")
            || field(StateEventType::RoomHistoryVisibility, "history_visibility").await?.as_deref()
                == Some("world_readable"))
    }
}
