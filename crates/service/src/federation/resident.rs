//! Being joined: what this server answers as a resident of a room when another server's user
//! joins or leaves it (`make_join`/`send_join`, `make_leave`/`send_leave`, restricted joins
//! vouched for by a local member), and invites of local users from rooms elsewhere.

use std::sync::Arc;

use rhizome_core::{Error, Result, clock::now_millis, error::MatrixErrorKind};
use rhizome_room::{Pdu, auth, received, versions};
use rhizome_storage::QueuedPdu;
use ruma::{
    CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    room_version_rules::EventsReferenceFormatVersion, signatures::sign_json,
};
use serde_json::{Value, json, value::RawValue as RawJsonValue};

use crate::{Services, rooms::incoming::PduOutcome};

/// The most `prev_events` a template cites.
const MAX_TEMPLATE_PREV_EVENTS: usize = 20;

/// What a resident answers to `send_join`.
#[derive(Debug)]
pub struct JoinAnswer {
    /// The state before the join.
    pub state: Vec<Box<RawJsonValue>>,
    /// The auth chain of that state and of the join.
    pub auth_chain: Vec<Box<RawJsonValue>>,
    /// The join as this server signed it (restricted joins it vouched for).
    pub event: Option<Box<RawJsonValue>>,
    /// The servers in the room.
    pub servers_in_room: Vec<String>,
}

fn references(version: &RoomVersionId, ids: &[OwnedEventId]) -> Value {
    let pairs = versions::rules(version)
        .is_some_and(|rules| rules.events_reference_format == EventsReferenceFormatVersion::V1);
    Value::Array(ids.iter().map(|id| if pairs { json!([id, {}]) } else { json!(id) }).collect())
}

impl Services {
    /// Refuses a request about a room this server is not in, or from a server the room's
    /// ACL denies.
    async fn resident_room(&self, room_id: &RoomId, origin: &ServerName) -> Result<RoomVersionId> {
        let version = self
            .room_version(room_id)
            .await
            .map_err(|_| Error::not_found("This server is not in that room"))?;
        if !self.server_in_room(room_id).await? {
            return Err(Error::not_found("This server is not in that room"));
        }
        self.check_server_acl(room_id, origin).await?;
        Ok(version)
    }

    /// `make_join` / `make_leave` / `make_knock`: an unsigned member event for a user of
    /// `origin`, after the room's forward extremities, that the auth rules allow now.
    pub async fn membership_template(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
        supported_versions: Option<&[RoomVersionId]>,
    ) -> Result<(RoomVersionId, Box<RawJsonValue>)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden("A server may only act for its own users"));
        }
        let version = self.resident_room(room_id, origin).await?;
        if let Some(supported) = supported_versions
            && !supported.contains(&version)
        {
            return Err(Error::matrix(
                MatrixErrorKind::IncompatibleRoomVersion(
                    ruma::api::error::IncompatibleRoomVersionErrorData::new(version.clone()),
                ),
                "Your server does not support this room's version",
            ));
        }
        let mut content = json!({ "membership": membership });
        if membership == "join"
            && let Some(authoriser) = self.join_authoriser_for(room_id, user_id).await?
        {
            content["join_authorised_via_users_server"] = json!(authoriser);
        }
        let mut extremities = self.store.forward_extremities(room_id).await?;
        extremities.truncate(MAX_TEMPLATE_PREV_EVENTS);
        let prevs = self.load_events(&extremities).await?;
        let state_before = self.state_before(room_id, &version, &prevs).await?;
        let depth = prevs.iter().map(|prev| prev.pdu.depth).max().unwrap_or(0) + 1;
        let raw_content = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
        let auth_events = auth::select_auth_events(
            &version,
            &"m.room.member".into(),
            user_id,
            Some(user_id.as_str()),
            &raw_content,
            &state_before.map,
        )
        .map_err(|error| Error::forbidden(error.to_string()))?;
        let template = json!({
            "room_id": room_id,
            "sender": user_id,
            "type": "m.room.member",
            "state_key": user_id,
            "content": content,
            "prev_events": references(&version, &extremities),
            "auth_events": references(&version, &auth_events),
            "depth": depth,
            "origin": self.server_name(),
            "origin_server_ts": now_millis(),
        });
        let raw = serde_json::value::to_raw_value(&template).map_err(Error::internal)?;
        // The rules must allow it now, or the other server is told why at once.
        let pdu = Pdu::from_json(
            OwnedEventId::try_from("$template").map_err(Error::internal)?,
            raw.clone(),
            &version,
        )
        .map_err(|error| Error::bug(format!("a template does not parse: {error}")))?;
        if let Err(reason) = self.check_against_state(&version, &pdu, &state_before.map).await? {
            return Err(Error::forbidden(format!("Not allowed: {reason}")));
        }
        Ok((version, raw))
    }

    /// A local member who may invite, to vouch for a restricted join of `user_id`.
    async fn join_authoriser_for(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<ruma::OwnedUserId>> {
        let current = self.store.get_membership(room_id, user_id).await?;
        if current.is_some_and(|member| matches!(member.membership.as_str(), "invite" | "join")) {
            return Ok(None);
        }
        self.restricted_join_authoriser(room_id, user_id).await
    }

    /// `send_join` / `send_leave` / `send_knock`: a signed member event of a user of `origin`,
    /// checked like any PDU and accepted into the room, then sent on to the room's other
    /// servers. Returns the event as accepted (signed by this server too when it vouched for
    /// a restricted join).
    pub async fn receive_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        json: &RawJsonValue,
        membership: &str,
    ) -> Result<Pdu> {
        let version = self.resident_room(room_id, origin).await?;
        let checked = received::check_format(json.get(), &version, Some(room_id))
            .map_err(|error| Error::bad_json(error.to_string()))?;
        if checked.event_id != event_id {
            return Err(Error::bad_json("The event ID does not match the event"));
        }
        // A restricted join this server vouches for needs its signature before the checks
        // (which require the vouching server's signature).
        let unverified = Pdu::from_json(
            checked.event_id.clone(),
            serde_json::value::to_raw_value(&checked.object).map_err(Error::internal)?,
            &version,
        )
        .map_err(|error| Error::bad_json(error.to_string()))?;
        let vouched_here = membership == "join"
            && unverified
                .content_str("join_authorised_via_users_server")
                .and_then(|user| UserId::parse(&user).ok())
                .is_some_and(|user| user.server_name() == self.server_name());
        let checked = if vouched_here {
            let signed = self.countersign(&unverified, &version)?;
            received::check_format(signed.json().get(), &version, Some(room_id))
                .map_err(|error| Error::bad_json(error.to_string()))?
        } else {
            checked
        };
        let pdu = self.verify_received(checked, &version).await?;
        let sender_ok = pdu.sender.server_name() == origin
            && pdu.state_key.as_deref() == Some(pdu.sender.as_str())
            && pdu.kind.to_string() == "m.room.member"
            && pdu.content_str("membership").as_deref() == Some(membership);
        if !sender_ok {
            return Err(Error::bad_json(format!(
                "Expected a {membership} of a user of the sending server for themselves"
            )));
        }
        let outcome = {
            let _guard = self.lock_room(room_id).await?;
            self.process_pdu_locked(origin, room_id, &version, pdu.clone(), 1).await?
        };
        match outcome {
            PduOutcome::Accepted | PduOutcome::AlreadyKnown => {}
            PduOutcome::SoftFailed => {
                return Err(Error::forbidden("The room's current state does not allow this"));
            }
            PduOutcome::Rejected(reason) => {
                return Err(Error::forbidden(format!("Not allowed: {reason}")));
            }
        }
        self.forward_to_room(room_id, &pdu.event_id, origin).await?;
        Ok(pdu)
    }

    /// Adds this server's signature to an event.
    fn countersign(&self, pdu: &Pdu, version: &RoomVersionId) -> Result<Pdu> {
        let mut object =
            pdu.canonical_object().map_err(|error| Error::bad_json(error.to_string()))?;
        let rules = versions::rules(version).ok_or_else(|| Error::bug("unsupported version"))?;
        let redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
            .map_err(|error| Error::bad_json(error.to_string()))?;
        let mut signed = redacted;
        sign_json(self.server_name().as_str(), self.signing_key.pair(), &mut signed)
            .map_err(Error::internal)?;
        if let Some(CanonicalJsonValue::Object(signatures)) = signed.get("signatures").cloned() {
            object.insert("signatures".to_owned(), CanonicalJsonValue::Object(signatures));
        }
        let json = serde_json::value::to_raw_value(&object).map_err(Error::internal)?;
        Pdu::from_json(pdu.event_id.clone(), json, version)
            .map_err(|error| Error::bad_json(error.to_string()))
    }

    /// Queues an event accepted from `origin` for the room's other servers (a resident passes
    /// on the joins and leaves it was sent directly).
    async fn forward_to_room(
        &self,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        origin: &ServerName,
    ) -> Result<()> {
        let Some(event) = self.load_event(event_id).await? else { return Ok(()) };
        if event.record.outlier || event.record.stream_pos <= 0 {
            return Ok(());
        }
        let queued = QueuedPdu {
            stream_pos: event.record.stream_pos,
            room_id: room_id.to_owned(),
            event_id: event_id.to_owned(),
        };
        let servers: Vec<OwnedServerName> = self
            .room_servers(room_id)
            .await?
            .into_iter()
            .filter(|server| {
                server != origin && self.config.federation.server_allowed(server.as_str())
            })
            .collect();
        for server in &servers {
            self.store.queue_pdus(server, std::slice::from_ref(&queued)).await?;
        }
        self.wake_destinations(&servers);
        Ok(())
    }

    /// What `send_join` answers: the state before the join and its auth chain.
    pub async fn join_answer(&self, pdu: &Pdu, vouched: bool) -> Result<JoinAnswer> {
        let event = self
            .load_event(&pdu.event_id)
            .await?
            .ok_or_else(|| Error::bug("an accepted join is missing"))?;
        let state = self.state_map(event.record.state_before).await?;
        let state_ids: Vec<OwnedEventId> = state.values().cloned().collect();
        let mut chain_roots = state_ids.clone();
        chain_roots.extend(pdu.auth_events.iter().cloned());
        let chain = self.store.auth_chain(&chain_roots).await?;
        let chain_ids: Vec<OwnedEventId> =
            chain.into_iter().filter(|id| !state.values().any(|state_id| state_id == id)).collect();
        let to_json =
            |events: Vec<Arc<crate::rooms::cache::LoadedEvent>>| -> Vec<Box<RawJsonValue>> {
                events
                    .iter()
                    .filter(|event| !event.record.rejected)
                    .map(|event| event.pdu.json().to_owned())
                    .collect()
            };
        let servers_in_room = self
            .room_servers(&pdu.room_id)
            .await?
            .iter()
            .map(ToString::to_string)
            .chain([self.server_name().to_string()])
            .collect();
        Ok(JoinAnswer {
            state: to_json(self.load_events(&state_ids).await?),
            auth_chain: to_json(self.load_events(&chain_ids).await?),
            event: vouched.then(|| pdu.json().to_owned()),
            servers_in_room,
        })
    }

    /// An invite of a local user from a room on `origin`: checked, signed by this server,
    /// recorded with the room's stripped state, and returned.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        version: &RoomVersionId,
        json: &RawJsonValue,
        invite_state: &[Box<RawJsonValue>],
    ) -> Result<Pdu> {
        if versions::rules(version).is_none() {
            return Err(Error::matrix(
                MatrixErrorKind::IncompatibleRoomVersion(
                    ruma::api::error::IncompatibleRoomVersionErrorData::new(version.clone()),
                ),
                "This server does not support the room's version",
            ));
        }
        let checked = received::check_format(json.get(), version, Some(room_id))
            .map_err(|error| Error::bad_json(error.to_string()))?;
        if checked.event_id != event_id {
            return Err(Error::bad_json("The event ID does not match the event"));
        }
        let pdu = self.verify_received(checked, version).await?;
        let target = pdu.state_key.as_deref().and_then(|key| UserId::parse(key).ok());
        let valid = pdu.kind.to_string() == "m.room.member"
            && pdu.content_str("membership").as_deref() == Some("invite")
            && pdu.sender.server_name() == origin
            && target.as_ref().is_some_and(|target| target.server_name() == self.server_name());
        let Some(target) = target.filter(|_| valid) else {
            return Err(Error::bad_json("Expected an invite of a user of this server"));
        };
        let user = self.store.get_user(&target).await?;
        if user.is_none_or(|user| user.deactivated) {
            return Err(Error::not_found("No such user"));
        }
        self.check_invite_allowed(&target, &pdu.sender).await?;
        if self.server_in_room(room_id).await? {
            // This server is in the room: the invite arrives as a room event as well, but
            // it must be signed here first.
            tracing::debug!("an invite to a room this server is in");
        }
        let signed = self.countersign(&pdu, version)?;
        // Full PDUs (since v1.16) or stripped events: clients get the stripped form.
        let stripped: Vec<Value> = invite_state
            .iter()
            .filter_map(|event| serde_json::from_str::<Value>(event.get()).ok())
            .filter(|event| event.is_object())
            .map(|event| {
                json!({
                    "type": event.get("type"),
                    "state_key": event.get("state_key"),
                    "content": event.get("content"),
                    "sender": event.get("sender"),
                })
            })
            .chain([serde_json::from_str::<Value>(signed.stripped_state_event().get())
                .unwrap_or_default()])
            .collect();
        let invite_state_json = serde_json::to_string(&stripped).map_err(Error::internal)?;
        self.store.ensure_room(room_id, version, now_millis()).await?;
        if !self.server_in_room(room_id).await? {
            self.record_outlier_membership(&signed, Some(&invite_state_json)).await?;
        }
        Ok(signed)
    }
}
