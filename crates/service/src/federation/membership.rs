//! Memberships that need another server: joining a room this server is not in
//! (`make_join`/`send_join` through each candidate server in turn, the returned state and
//! auth chain verified in full before the room appears), inviting a user of another server
//! (their server signs the invite first), rejecting an invite to a room this server is not in
//! (`make_leave`/`send_leave`), and resolving another server's alias.

use std::collections::BTreeSet;

use rhizome_core::{Error, Result, clock::now_ts, error::MatrixErrorKind};
use rhizome_room::{EventTemplate, Pdu, StateMap, build_pdu, received, versions};
use rhizome_storage::{MembershipChange, MembershipRecord, StateSpec};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, RoomVersionId, ServerName,
    UserId,
    api::federation::{
        membership::{
            create_invite, create_join_event, create_leave_event, prepare_join_event,
            prepare_leave_event,
        },
        query::get_room_information,
    },
    events::StateEventType,
};
use serde_json::{Map, Value, json, value::RawValue as RawJsonValue};

use super::client::RequestLimits;
use crate::{
    Services,
    rooms::{
        NewEvent,
        send::{Provenance, StateBeforeParts, diff_states},
    },
};

/// The most candidate servers a join tries.
const MAX_JOIN_CANDIDATES: usize = 10;

/// The state types an invite carries to the invitee's server (stripped).
const INVITE_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

impl Services {
    /// Whether a local user is joined to the room (this server is in it and follows it).
    pub async fn server_in_room(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .room_members_cached(room_id, false)
            .await
            .unwrap_or_default()
            .iter()
            .any(|member| member.server_name() == self.server_name()))
    }

    /// Resolves an alias of another server: the room and the servers that know it.
    pub async fn resolve_remote_alias(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let client = self.federation_client()?;
        let response = client
            .send_with_limits(
                alias.server_name(),
                get_room_information::v1::Request::new(alias.to_owned()),
                RequestLimits::small(),
            )
            .await?;
        Ok((response.room_id, response.servers))
    }

    /// Builds and signs this server's membership event from another server's template
    /// (`make_join`, `make_leave`, `make_knock`), with `content` as the member event's content
    /// (the template's `join_authorised_via_users_server` kept). The room version must be one
    /// this server supports and the template must be for `room_id`.
    pub(super) fn sign_template(
        &self,
        template: &RawJsonValue,
        version: &RoomVersionId,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
        mut content: Map<String, Value>,
    ) -> Result<Pdu> {
        if versions::rules(version).is_none() {
            return Err(Error::matrix(
                MatrixErrorKind::UnsupportedRoomVersion,
                format!("Room version {version} is not supported by this server"),
            ));
        }
        let bad = |reason: &str| {
            Error::matrix(
                MatrixErrorKind::Unknown,
                format!("The remote server's template is invalid: {reason}"),
            )
        };
        let parsed = Pdu::from_json(
            OwnedEventId::try_from("$template").map_err(Error::internal)?,
            template.to_owned(),
            version,
        )
        .map_err(|_| bad("it is not an event of its room version"))?;
        if parsed.room_id != room_id {
            return Err(Error::forbidden("The remote server's template is for another room"));
        }
        if parsed.sender != user_id
            || parsed.state_key.as_deref() != Some(user_id.as_str())
            || parsed.kind.to_string() != "m.room.member"
        {
            return Err(bad("it is for another event"));
        }
        let template_content: Map<String, Value> =
            serde_json::from_str(parsed.content.get()).unwrap_or_default();
        if let Some(authoriser) = template_content.get("join_authorised_via_users_server") {
            content.insert("join_authorised_via_users_server".to_owned(), authoriser.clone());
        }
        content.insert("membership".to_owned(), json!(membership));
        let event = EventTemplate {
            room_id: Some(parsed.room_id.clone()),
            sender: user_id.to_owned(),
            kind: parsed.kind.clone(),
            state_key: Some(user_id.to_string()),
            content: serde_json::value::to_raw_value(&content).map_err(Error::internal)?,
            redacts: None,
            prev_events: parsed.prev_events.clone(),
            auth_events: parsed.auth_events.clone(),
            depth: parsed.depth,
            origin_server_ts: now_ts(),
        };
        build_pdu(&event, version, self.server_name(), &self.signing_key)
            .map_err(|error| bad(&error.to_string()))
    }

    /// Joins a room this server is not in, through the first of `servers` that lets the user
    /// in. The room appears only once the returned state and auth chain are verified.
    pub async fn join_remote_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        servers: &[OwnedServerName],
        content: Map<String, Value>,
    ) -> Result<()> {
        let mut candidates: Vec<OwnedServerName> = Vec::new();
        for server in servers.iter().cloned().chain(room_id.server_name().map(ToOwned::to_owned)) {
            if server != self.server_name() && !candidates.contains(&server) {
                candidates.push(server);
            }
        }
        candidates.truncate(MAX_JOIN_CANDIDATES);
        if candidates.is_empty() {
            return Err(Error::not_found("No server to join the room through is known"));
        }
        let mut last_error = Error::not_found("No server could let you into the room");
        for server in candidates {
            match self.join_through(user_id, room_id, &server, content.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::debug!(%error, "a join through one server failed");
                    let fatal = matches!(
                        error.matrix_kind(),
                        Some(MatrixErrorKind::IncompatibleRoomVersion(_))
                    );
                    last_error = error;
                    if fatal {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// One join attempt through `server`.
    async fn join_through(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        server: &ServerName,
        content: Map<String, Value>,
    ) -> Result<()> {
        let client = self.federation_client()?;
        let mut make = prepare_join_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        make.ver = versions::SUPPORTED_ROOM_VERSIONS.to_vec();
        let template = client
            .send_with_limits(server, make, RequestLimits::small())
            .await
            .map_err(Error::from)?;
        let version = template.room_version.unwrap_or(RoomVersionId::V1);
        let join =
            self.sign_template(&template.event, &version, room_id, user_id, "join", content)?;
        let request = create_join_event::v2::Request::new(
            room_id.to_owned(),
            join.event_id.clone(),
            join.json().to_owned(),
        );
        let response = client
            .send_with_limits(server, request, RequestLimits::large())
            .await
            .map_err(Error::from)?;
        let room_state = response.room_state;
        // A restricted join comes back signed by the server that vouched for it.
        let join = match room_state.event {
            Some(signed) => {
                let checked = received::check_format(signed.get(), &version, Some(room_id))
                    .map_err(|error| Error::forbidden(error.to_string()))?;
                if checked.event_id != join.event_id {
                    return Err(Error::forbidden("The join came back changed"));
                }
                self.verify_received(checked, &version).await?
            }
            None => join,
        };
        // Verify the state and its auth chain in full before the room appears.
        let state_ids: Vec<OwnedEventId> = room_state
            .state
            .iter()
            .filter_map(|event| received::check_format(event.get(), &version, Some(room_id)).ok())
            .map(|checked| checked.event_id)
            .collect();
        self.store.ensure_room(room_id, &version, rhizome_core::clock::now_millis()).await?;
        let events: Vec<Box<RawJsonValue>> =
            room_state.auth_chain.into_iter().chain(room_state.state).collect();
        self.store_fetched_events(room_id, &version, events).await?;
        let mut state = StateMap::new();
        for event in self.load_events(&state_ids).await? {
            if event.record.rejected {
                continue;
            }
            if let Some(slot) = event.pdu.state_slot() {
                state.insert(slot, event.pdu.event_id.clone());
            }
        }
        let create = state
            .get(&(StateEventType::RoomCreate, String::new()))
            .ok_or_else(|| Error::forbidden("The room's state has no create event"))?;
        let create = self
            .load_event(create)
            .await?
            .ok_or_else(|| Error::forbidden("The room's create event is missing"))?;
        let create_version =
            create.pdu.content_str("room_version").unwrap_or_else(|| "1".to_owned());
        if create_version != version.as_str() || create.pdu.room_id != room_id {
            return Err(Error::forbidden("The room's state is for another room or version"));
        }
        if let Err(reason) = self.check_against_state(&version, &join, &state).await? {
            return Err(Error::forbidden(format!("The join is not allowed: {reason}")));
        }
        let _guard = self.lock_room(room_id).await?;
        if self.server_in_room(room_id).await? && self.is_joined(room_id, user_id).await? {
            return Ok(());
        }
        let extremities = self.store.forward_extremities(room_id).await?;
        let state_before = StateBeforeParts {
            spec: StateSpec::New { base: None, changes: diff_states(&StateMap::new(), &state) },
            map: std::sync::Arc::new(state),
        };
        let prev_events = join.prev_events.clone();
        self.persist_prepared(
            room_id,
            &version,
            join,
            state_before,
            &prev_events,
            extremities,
            Provenance::Remote { soft_failed: false },
        )
        .await?;
        tracing::info!(room_version = %version, "joined a room on another server");
        Ok(())
    }

    /// Invites a user of another server: their server signs the invite (and learns the room
    /// from its stripped state), then it is persisted and sent to the room's servers.
    pub async fn invite_remote_user(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        content: Value,
    ) -> Result<()> {
        let event = NewEvent::state("m.room.member", target.as_str(), content);
        let prepared = self.prepare_local_event(sender, room_id, &event).await?;
        let invite_state = self.invite_room_state(room_id, sender).await?;
        let client = self.federation_client()?;
        let request = create_invite::v2::Request::new(
            room_id.to_owned(),
            prepared.pdu.event_id.clone(),
            prepared.version.clone(),
            prepared.pdu.json().to_owned(),
            invite_state,
        );
        let response = client
            .send_with_limits(target.server_name(), request, RequestLimits::small())
            .await
            .map_err(Error::from)?;
        let checked =
            received::check_format(response.event.get(), &prepared.version, Some(room_id))
                .map_err(|error| Error::forbidden(error.to_string()))?;
        if checked.event_id != prepared.pdu.event_id {
            return Err(Error::forbidden("The invitee's server changed the invite"));
        }
        // The invite keeps this server's signature; the invitee's server added its own.
        let signed = self.verify_received(checked, &prepared.version).await?;
        let _guard = self.lock_room(room_id).await?;
        let extremities = self.store.forward_extremities(room_id).await?;
        self.persist_prepared(
            room_id,
            &prepared.version,
            signed,
            prepared.state_before,
            &prepared.prev_events,
            extremities,
            Provenance::Local { txn: None },
        )
        .await?;
        Ok(())
    }

    /// The stripped state an invite carries: the room's identifying state and the inviter's
    /// member event.
    pub(crate) async fn invite_room_state(
        &self,
        room_id: &RoomId,
        inviter: &UserId,
    ) -> Result<Vec<ruma::api::federation::membership::RawStrippedState>> {
        let state = self.current_state(room_id).await?;
        let mut ids: Vec<OwnedEventId> = INVITE_STATE_TYPES
            .iter()
            .filter_map(|kind| state.get(&(StateEventType::from(*kind), String::new())).cloned())
            .collect();
        if let Some(member) = state.get(&(StateEventType::RoomMember, inviter.to_string())) {
            ids.push(member.clone());
        }
        Ok(self
            .load_events(&ids)
            .await?
            .iter()
            .map(|event| {
                ruma::api::federation::membership::RawStrippedState::Pdu(
                    event.pdu.json().to_owned(),
                )
            })
            .collect())
    }

    /// Rejects an invite (or withdraws a knock) in a room this server is not in, through the
    /// server that invited: `make_leave` and `send_leave`, then the leave is recorded here.
    pub async fn leave_remote_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        membership: &MembershipRecord,
        reason: Option<&str>,
    ) -> Result<()> {
        let version = self.room_version(room_id).await?;
        let mut servers: BTreeSet<OwnedServerName> = BTreeSet::new();
        if let Some(event) = self.load_event(&membership.event_id).await? {
            servers.insert(event.pdu.sender.server_name().to_owned());
        }
        if let Some(server) = room_id.server_name() {
            servers.insert(server.to_owned());
        }
        servers.extend(self.stripped_state_servers(&membership.event_id).await?);
        servers.remove(self.server_name());
        let client = self.federation_client()?;
        let mut content = Map::new();
        if let Some(reason) = reason {
            content.insert("reason".to_owned(), json!(reason));
        }
        let mut last_error = Error::not_found("No server could take the leave");
        for server in servers {
            let attempt = async {
                let template = client
                    .send_with_limits(
                        &server,
                        prepare_leave_event::v1::Request::new(
                            room_id.to_owned(),
                            user_id.to_owned(),
                        ),
                        RequestLimits::small(),
                    )
                    .await
                    .map_err(Error::from)?;
                let version = template.room_version.clone().unwrap_or_else(|| version.clone());
                let leave = self.sign_template(
                    &template.event,
                    &version,
                    room_id,
                    user_id,
                    "leave",
                    content.clone(),
                )?;
                client
                    .send_with_limits(
                        &server,
                        create_leave_event::v2::Request::new(
                            room_id.to_owned(),
                            leave.event_id.clone(),
                            leave.json().to_owned(),
                        ),
                        RequestLimits::small(),
                    )
                    .await
                    .map_err(Error::from)?;
                Ok::<Pdu, Error>(leave)
            };
            match attempt.await {
                Ok(leave) => {
                    self.record_outlier_membership(&leave, None).await?;
                    return Ok(());
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    /// Records a membership event of a room this server is not in (an invite received, a
    /// leave sent), with the invite's stripped state, and wakes the member's syncs.
    pub(crate) async fn record_outlier_membership(
        &self,
        pdu: &Pdu,
        invite_state: Option<&str>,
    ) -> Result<()> {
        let Some(user_id) = pdu.state_key.as_deref().and_then(|key| UserId::parse(key).ok()) else {
            return Err(Error::bad_json("A member event needs a user as its state key"));
        };
        let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
        let change = MembershipChange {
            user_id: user_id.clone(),
            membership: content
                .get("membership")
                .and_then(Value::as_str)
                .unwrap_or("leave")
                .to_owned(),
            event_id: pdu.event_id.clone(),
            displayname: content.get("displayname").and_then(Value::as_str).map(str::to_owned),
            avatar_url: content.get("avatar_url").and_then(Value::as_str).map(str::to_owned),
        };
        let outlier = rhizome_storage::OutlierEvent {
            event_id: pdu.event_id.clone(),
            room_id: pdu.room_id.clone(),
            json: pdu.json().get().to_owned(),
            rejected: false,
            auth_events: pdu.auth_events.clone(),
        };
        let write = self.begin_membership_write(&pdu.room_id, vec![user_id.clone()]);
        let stored = self.store.store_outlier_membership(&outlier, &change, invite_state).await;
        self.end_membership_write(write);
        stored?;
        self.notifier.notify([user_id.as_ref()]);
        Ok(())
    }
}
