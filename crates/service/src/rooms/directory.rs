//! Room aliases, the public room directory and room summaries.

use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_storage::AliasRecord;
use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, events::StateEventType};
use serde_json::Value;

use crate::{Requester, Services, rooms::NewEvent};

/// What the directory and room summaries show of a room.
#[derive(Clone, Debug)]
pub struct RoomSummary {
    /// The room.
    pub room_id: OwnedRoomId,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// `m.room.canonical_alias`.
    pub canonical_alias: Option<OwnedRoomAliasId>,
    /// `m.room.avatar`.
    pub avatar_url: Option<String>,
    /// Joined members.
    pub joined_members: u64,
    /// Whether history is world-readable.
    pub world_readable: bool,
    /// Whether guests may join.
    pub guest_can_join: bool,
    /// The join rule.
    pub join_rule: Option<String>,
    /// For restricted join rules: the rooms whose members may join.
    pub allowed_room_ids: Vec<OwnedRoomId>,
    /// The room type (`m.space`, …).
    pub room_type: Option<String>,
    /// The room version.
    pub room_version: Option<String>,
    /// Whether the room is encrypted (its algorithm).
    pub encryption: Option<String>,
}

/// What a page of the public directory is asked for.
#[derive(Clone, Debug, Default)]
pub struct DirectoryQuery {
    /// The most rooms on the page.
    pub limit: Option<usize>,
    /// A `next_batch` or `prev_batch` token of an earlier page.
    pub since: Option<String>,
    /// Only rooms whose name, topic or canonical alias contain this (case-insensitive).
    pub search_term: Option<String>,
    /// Only rooms of these types (`None`: rooms without a type); empty for every type.
    pub room_types: Vec<Option<String>>,
}

impl DirectoryQuery {
    /// Whether the query filters rooms (by term or type) rather than only paging.
    pub fn filters(&self) -> bool {
        self.search_term.as_deref().is_some_and(|term| !term.is_empty())
            || !self.room_types.is_empty()
    }

    /// Whether a room passes the filter.
    fn matches(&self, summary: &RoomSummary) -> bool {
        let type_ok = self.room_types.is_empty() || self.room_types.contains(&summary.room_type);
        let term_ok =
            self.search_term.as_deref().filter(|term| !term.is_empty()).is_none_or(|term| {
                let term = term.to_lowercase();
                [
                    summary.name.as_deref(),
                    summary.topic.as_deref(),
                    summary.canonical_alias.as_ref().map(|alias| alias.as_str()),
                ]
                .into_iter()
                .flatten()
                .any(|text| text.to_lowercase().contains(&term))
            });
        type_ok && term_ok
    }
}

/// A page of the public directory.
#[derive(Clone, Debug)]
pub struct PublicRoomsPage {
    /// The rooms.
    pub chunk: Vec<RoomSummary>,
    /// The token of the next page.
    pub next_batch: Option<String>,
    /// The token of the previous page.
    pub prev_batch: Option<String>,
    /// How many rooms are listed in all.
    pub total: u64,
}

impl Services {
    /// Maps a local alias to a room; `M_FORBIDDEN` unless the user is in the room, conflict if
    /// the alias exists.
    pub async fn set_alias(
        &self,
        requester: &Requester,
        alias: &RoomAliasId,
        room_id: &RoomId,
    ) -> Result<()> {
        if alias.server_name() != self.server_name() {
            return Err(Error::invalid_param("Aliases can only be made on this server"));
        }
        if !self.is_joined(room_id, &requester.user_id).await? {
            return Err(Error::forbidden("You must be in the room to give it an alias"));
        }
        let record = AliasRecord {
            alias: alias.to_owned(),
            room_id: room_id.to_owned(),
            creator: requester.user_id.clone(),
        };
        if self.store.create_alias(&record).await? {
            Ok(())
        } else {
            Err(Error::conflict(MatrixErrorKind::Unknown, "That alias exists already"))
        }
    }

    /// Removes a local alias: its creator, a room moderator or a server admin may.
    pub async fn delete_alias(&self, requester: &Requester, alias: &RoomAliasId) -> Result<()> {
        let record =
            self.store.get_alias(alias).await?.ok_or_else(|| Error::not_found("Unknown alias"))?;
        let allowed = record.creator == requester.user_id
            || requester.is_admin
            || self
                .power_levels(&record.room_id)
                .await?
                .user_can_send_state(&requester.user_id, StateEventType::RoomCanonicalAlias);
        if !allowed {
            return Err(Error::forbidden("You may not remove this alias"));
        }
        self.store.delete_alias(alias).await?;
        self.drop_from_canonical_alias(&requester.user_id, &record.room_id, alias).await
    }

    /// Takes a deleted alias out of the room's canonical alias event, as the user who deleted
    /// it (if they may not, the event stays as it is).
    async fn drop_from_canonical_alias(
        &self,
        user_id: &ruma::UserId,
        room_id: &RoomId,
        alias: &RoomAliasId,
    ) -> Result<()> {
        let Some(event) =
            self.current_state_event(room_id, &StateEventType::RoomCanonicalAlias, "").await?
        else {
            return Ok(());
        };
        let mut content: Value = serde_json::from_str(event.pdu.content.get())?;
        let Some(object) = content.as_object_mut() else { return Ok(()) };
        let mut changed = false;
        if object.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
            object.remove("alias");
            changed = true;
        }
        if let Some(alternatives) = object.get_mut("alt_aliases").and_then(Value::as_array_mut) {
            let before = alternatives.len();
            alternatives.retain(|entry| entry.as_str() != Some(alias.as_str()));
            changed |= alternatives.len() != before;
        }
        if !changed {
            return Ok(());
        }
        let update = NewEvent::state("m.room.canonical_alias", "", content);
        if let Err(error) = self.send_event(user_id, room_id, update, None).await {
            tracing::debug!(%error, "could not take a deleted alias out of the canonical alias");
        }
        Ok(())
    }

    /// Resolves an alias to its room.
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId> {
        self.store
            .get_alias(alias)
            .await?
            .map(|record| record.room_id)
            .ok_or_else(|| Error::not_found("Unknown alias"))
    }

    /// The local aliases of a room the requester can read.
    pub async fn room_aliases(
        &self,
        requester: &Requester,
        room_id: &RoomId,
    ) -> Result<Vec<OwnedRoomAliasId>> {
        self.ensure_can_read_room(requester, room_id).await?;
        Ok(self
            .store
            .aliases_of_room(room_id)
            .await?
            .into_iter()
            .map(|record| record.alias)
            .collect())
    }

    /// Lists or unlists a room: those who may set the canonical alias may.
    pub async fn set_room_published(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        published: bool,
    ) -> Result<()> {
        let allowed = requester.is_admin
            || self
                .power_levels(room_id)
                .await?
                .user_can_send_state(&requester.user_id, StateEventType::RoomCanonicalAlias);
        if !allowed {
            return Err(Error::forbidden("You may not change this room's directory listing"));
        }
        self.store.set_room_published(room_id, published).await
    }

    /// Whether a room is listed.
    pub async fn room_published(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .store
            .get_room(room_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?
            .published)
    }

    /// The summary of a room from its current state.
    pub async fn room_summary(&self, room_id: &RoomId) -> Result<RoomSummary> {
        let state = self.current_state(room_id).await?;
        let events = self.state_events(&state).await?;
        let mut summary = RoomSummary {
            room_id: room_id.to_owned(),
            name: None,
            topic: None,
            canonical_alias: None,
            avatar_url: None,
            joined_members: 0,
            world_readable: false,
            guest_can_join: false,
            join_rule: None,
            allowed_room_ids: Vec::new(),
            room_type: None,
            room_version: None,
            encryption: None,
        };
        for event in &events {
            let content: Value = serde_json::from_str(event.pdu.content.get()).unwrap_or_default();
            let text = |field: &str| content.get(field).and_then(Value::as_str).map(str::to_owned);
            if event.pdu.state_key.as_deref() != Some("") {
                continue;
            }
            match event.pdu.kind.to_string().as_str() {
                "m.room.name" => summary.name = text("name").filter(|name| !name.is_empty()),
                "m.room.topic" => {
                    summary.topic = plain_text_topic(&content).filter(|topic| !topic.is_empty());
                }
                "m.room.canonical_alias" => {
                    summary.canonical_alias =
                        text("alias").and_then(|alias| OwnedRoomAliasId::try_from(alias).ok());
                }
                "m.room.avatar" => summary.avatar_url = text("url"),
                "m.room.history_visibility" => {
                    summary.world_readable =
                        text("history_visibility").as_deref() == Some("world_readable");
                }
                "m.room.guest_access" => {
                    summary.guest_can_join = text("guest_access").as_deref() == Some("can_join")
                }
                "m.room.join_rules" => {
                    summary.join_rule = text("join_rule");
                    summary.allowed_room_ids = content
                        .get("allow")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|rule| {
                            rule.get("type").and_then(Value::as_str) == Some("m.room_membership")
                        })
                        .filter_map(|rule| rule.get("room_id").and_then(Value::as_str))
                        .filter_map(|room_id| OwnedRoomId::try_from(room_id).ok())
                        .collect();
                }
                "m.room.create" => {
                    summary.room_type = text("type");
                    summary.room_version =
                        Some(text("room_version").unwrap_or_else(|| "1".to_owned()));
                }
                "m.room.encryption" => summary.encryption = text("algorithm"),
                _ => {}
            }
        }
        summary.joined_members =
            u64::try_from(self.room_members_cached(room_id, false).await?.len()).unwrap_or(0);
        Ok(summary)
    }

    /// A page of this server's public directory, filtered as asked.
    pub async fn public_rooms(&self, query: &DirectoryQuery) -> Result<PublicRoomsPage> {
        let offset: usize = match query.since.as_deref() {
            Some(token) => token
                .strip_prefix('p')
                .and_then(|number| number.parse().ok())
                .ok_or_else(|| Error::invalid_param("Invalid directory token"))?,
            None => 0,
        };
        let limit = query.limit;
        let mut rooms = Vec::new();
        for published in self.store.published_rooms().await? {
            let summary = self.room_summary(&published.room_id).await?;
            if query.matches(&summary) {
                rooms.push(summary);
            }
        }
        let total = u64::try_from(rooms.len()).unwrap_or(0);
        let limit = limit.unwrap_or(rooms.len().max(1)).max(1);
        let end = offset.saturating_add(limit).min(rooms.len());
        let chunk = rooms
            .get(offset.min(rooms.len())..end)
            .map(<[RoomSummary]>::to_vec)
            .unwrap_or_default();
        Ok(PublicRoomsPage {
            chunk,
            next_batch: (end < rooms.len()).then(|| format!("p{end}")),
            prev_batch: (offset > 0).then(|| format!("p{}", offset.saturating_sub(limit))),
            total,
        })
    }
}

/// The plain-text topic of `m.room.topic` content: the first plain-text representation of the
/// rich topic (`m.topic`), else `topic`.
pub fn plain_text_topic(content: &Value) -> Option<String> {
    let rich = content
        .get("m.topic")
        .and_then(|topic| topic.get("m.text"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|representation| {
            representation.get("body").is_some_and(Value::is_string)
                && representation
                    .get("mimetype")
                    .and_then(Value::as_str)
                    .is_none_or(|mimetype| mimetype == "text/plain")
        })
        .and_then(|representation| representation.get("body").and_then(Value::as_str));
    rich.or_else(|| content.get("topic").and_then(Value::as_str)).map(str::to_owned)
}
