//! Knocking across servers (Server-Server API, "Knocking upon a room"): a local user knocking
//! on a room this server is not in (`make_knock` and `send_knock` through a server in the
//! room, the knock then recorded here with the room's stripped state, shown in `/sync`'s
//! knock section), and knocks of other servers' users on rooms here (templates and knocks
//! checked like any membership, answered with the room's stripped state). A knock is accepted
//! with an invite, which arrives as any invite from another server does.

use rhizome_core::{Error, Result, clock::now_millis};
use rhizome_room::{Pdu, versions};
use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, RoomVersionId, ServerName, UserId,
    api::federation::membership::{RawStrippedState, create_knock_event, prepare_knock_event},
};
use serde_json::{Map, Value, json, value::RawValue as RawJsonValue};

use super::client::RequestLimits;
use crate::Services;

/// The most servers a knock is tried through.
const MAX_KNOCK_CANDIDATES: usize = 10;

impl Services {
    /// `GET /make_knock/{roomId}/{userId}`: a knock template for a user of `origin`, if the
    /// room's rules let them knock now.
    pub async fn serve_make_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported_versions: &[RoomVersionId],
    ) -> Result<(RoomVersionId, Box<RawJsonValue>)> {
        self.membership_template(origin, room_id, user_id, "knock", Some(supported_versions)).await
    }

    /// `PUT /send_knock/{roomId}/{eventId}`: accepts a knock of a user of `origin` into the
    /// room and answers the room's stripped state (full PDUs, as for invites).
    pub async fn serve_send_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        json: &RawJsonValue,
    ) -> Result<Vec<RawStrippedState>> {
        let knock = self.receive_membership(origin, room_id, event_id, json, "knock").await?;
        self.invite_room_state(room_id, &knock.sender).await
    }

    /// Knocks on a room by ID or alias, through the servers in `via` when this server is not
    /// in the room (a local room is knocked on directly).
    pub async fn knock_room_via(
        &self,
        user_id: &UserId,
        room: &RoomOrAliasId,
        reason: Option<&str>,
        via: &[OwnedServerName],
    ) -> Result<OwnedRoomId> {
        let (room_id, mut servers) = match <&RoomId>::try_from(room) {
            Ok(room_id) => (room_id.to_owned(), via.to_vec()),
            Err(alias) if alias.server_name() != self.server_name() => {
                let (room_id, mut servers) = self.resolve_remote_alias(alias).await?;
                servers.extend(via.iter().cloned());
                (room_id, servers)
            }
            Err(_) => return self.knock(user_id, room, reason).await,
        };
        if !self.knock_needs_another_server(&room_id).await? {
            let room: &RoomOrAliasId = (&*room_id).into();
            return self.knock(user_id, room, reason).await;
        }
        if self.is_joined(&room_id, user_id).await? {
            return Err(Error::forbidden("You are already in this room"));
        }
        servers.extend(room_id.server_name().map(ToOwned::to_owned));
        let mut candidates: Vec<OwnedServerName> = Vec::new();
        for server in servers {
            if server != self.server_name() && !candidates.contains(&server) {
                candidates.push(server);
            }
        }
        candidates.truncate(MAX_KNOCK_CANDIDATES);
        let content = self.knock_content(user_id, reason).await?;
        let mut last_error = Error::not_found("No server to knock through is known");
        for server in candidates {
            match self.knock_through(user_id, &room_id, &server, content.clone()).await {
                Ok(()) => return Ok(room_id),
                Err(error) => {
                    tracing::debug!(%error, "a knock through one server failed");
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    /// Whether a knock needs another server: this server has no state of the room, or no
    /// local member while others' members are there (its state may be stale).
    async fn knock_needs_another_server(&self, room_id: &RoomId) -> Result<bool> {
        let has_state =
            self.store.get_room(room_id).await?.and_then(|room| room.current_state_group).is_some();
        if !has_state {
            return Ok(true);
        }
        Ok(!self.server_in_room(room_id).await? && !self.room_servers(room_id).await?.is_empty())
    }

    /// The knock's content: the reason, and the user's profile.
    async fn knock_content(
        &self,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<Map<String, Value>> {
        let mut content = Map::new();
        if let Some(user) = self.store.get_user(user_id).await? {
            if let Some(name) = user.displayname {
                content.insert("displayname".to_owned(), json!(name));
            }
            if let Some(avatar) = user.avatar_url {
                content.insert("avatar_url".to_owned(), json!(avatar));
            }
        }
        if let Some(reason) = reason {
            content.insert("reason".to_owned(), json!(reason));
        }
        Ok(content)
    }

    /// One knock attempt through `server`: the template, signed here, sent, and recorded with
    /// the stripped state the server answered.
    async fn knock_through(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        server: &ServerName,
        content: Map<String, Value>,
    ) -> Result<()> {
        let client = self.federation_client()?;
        let mut make =
            prepare_knock_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        make.ver = versions::SUPPORTED_ROOM_VERSIONS.to_vec();
        let template = client
            .send_with_limits(server, make, RequestLimits::small())
            .await
            .map_err(Error::from)?;
        let version = template.room_version;
        let knock =
            self.sign_template(&template.event, &version, room_id, user_id, "knock", content)?;
        let request = create_knock_event::v1::Request::new(
            room_id.to_owned(),
            knock.event_id.clone(),
            knock.json().to_owned(),
        );
        let response = client
            .send_with_limits(server, request, RequestLimits::small())
            .await
            .map_err(Error::from)?;
        let stripped = stripped_knock_state(room_id, &response.knock_room_state, &knock)?;
        self.store.ensure_room(room_id, &version, now_millis()).await?;
        self.record_outlier_membership(&knock, Some(&stripped)).await?;
        tracing::info!(room_version = %version, "knocked on a room on another server");
        Ok(())
    }
}

impl Services {
    /// Servers of the room a knock (or an invite) of a room this server is not in can be
    /// withdrawn (or rejected) through: those of the senders of the stripped state kept with
    /// it (the resident that answered is among them; the room's ID may name no server).
    pub(crate) async fn stripped_state_servers(
        &self,
        membership_event: &ruma::EventId,
    ) -> Result<Vec<OwnedServerName>> {
        let Some(stored) = self.store.invite_state(membership_event).await? else {
            return Ok(Vec::new());
        };
        let events: Vec<Value> = serde_json::from_str(&stored).unwrap_or_default();
        let mut servers: Vec<OwnedServerName> = Vec::new();
        for event in &events {
            let Some(Ok(sender)) = event.get("sender").and_then(Value::as_str).map(UserId::parse)
            else {
                continue;
            };
            let server = sender.server_name().to_owned();
            if server != self.server_name() && !servers.contains(&server) {
                servers.push(server);
            }
        }
        servers.truncate(MAX_KNOCK_CANDIDATES);
        Ok(servers)
    }
}

/// The stripped state clients are shown for a knock: what the resident server answered (full
/// PDUs or stripped events; those of another room left out), and the knock itself.
fn stripped_knock_state(
    room_id: &RoomId,
    knock_room_state: &[RawStrippedState],
    knock: &Pdu,
) -> Result<String> {
    #[allow(deprecated)] // Stripped events are still accepted from older servers.
    let events = knock_room_state.iter().filter_map(|state| {
        let json = match state {
            RawStrippedState::Pdu(json) => json.get(),
            RawStrippedState::Stripped(raw) => raw.json().get(),
            _ => return None,
        };
        serde_json::from_str::<Value>(json).ok()
    });
    let mut stripped: Vec<Value> = events
        .filter(|event| {
            event.is_object()
                && event.get("room_id").and_then(Value::as_str).is_none_or(|id| id == room_id)
                && event.get("type").and_then(Value::as_str).is_some()
                && !(event.get("type").and_then(Value::as_str) == Some("m.room.member")
                    && event.get("state_key").and_then(Value::as_str)
                        == Some(knock.sender.as_str()))
        })
        .map(|event| {
            json!({
                "type": event.get("type"),
                "state_key": event.get("state_key"),
                "content": event.get("content"),
                "sender": event.get("sender"),
            })
        })
        .collect();
    stripped.push(serde_json::from_str(knock.stripped_state_event().get()).unwrap_or_default());
    serde_json::to_string(&stripped).map_err(Error::internal)
}
