//! `createRoom`: the create event, the creator's join, power levels, presets, initial state,
//! name and topic, invites, alias and directory listing, in the order the spec gives.

use std::sync::Arc;

use rhizome_core::{
    Error, Result,
    clock::{millis_from_ts, now_millis, now_ts, ts_from_millis},
    error::MatrixErrorKind,
};
use rhizome_room::{EventTemplate, StateMap, build_pdu, versions};
use rhizome_storage::{AliasRecord, StateSpec};
use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomVersionId, UserId,
    events::TimelineEventType,
};
use serde_json::{Map, Value, json};

use crate::{
    Services,
    rooms::{NewEvent, send::pdu_error},
};

/// The presets of `createRoom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Invite-only, history shared, guests may join.
    PrivateChat,
    /// Invite-only, and every invitee gets the creator's power.
    TrustedPrivateChat,
    /// Anyone may join, guests may not.
    PublicChat,
}

/// What `createRoom` asks for.
#[derive(Clone, Debug, Default)]
pub struct CreateRoom {
    /// The preset; from the visibility when `None`.
    pub preset: Option<Preset>,
    /// Whether to list the room in the public directory.
    pub publish: bool,
    /// The local part of an alias to create.
    pub room_alias_name: Option<String>,
    /// The room name.
    pub name: Option<String>,
    /// The room topic.
    pub topic: Option<String>,
    /// Users to invite.
    pub invite: Vec<OwnedUserId>,
    /// Whether this is a direct chat.
    pub is_direct: bool,
    /// State events to add: type, state key, content.
    pub initial_state: Vec<(String, String, Value)>,
    /// Keys that override the default power levels.
    pub power_level_content_override: Option<Map<String, Value>>,
    /// The room version.
    pub room_version: Option<RoomVersionId>,
    /// Extra content of the create event.
    pub creation_content: Option<Map<String, Value>>,
}

fn random_localpart() -> String {
    use rand::Rng;
    (0..18).map(|_| char::from(rand::thread_rng().gen_range(b'a'..=b'z'))).collect()
}

impl Services {
    /// Creates a room, returning its ID.
    pub async fn create_room(&self, creator: &UserId, request: CreateRoom) -> Result<OwnedRoomId> {
        let version = request
            .room_version
            .clone()
            .unwrap_or_else(|| self.config.rooms.default_room_version.clone());
        let rules = versions::rules(&version).ok_or_else(|| {
            Error::matrix(
                MatrixErrorKind::UnsupportedRoomVersion,
                "This server does not support that room version",
            )
        })?;
        let alias = match &request.room_alias_name {
            Some(localpart) => {
                let alias = RoomAliasId::parse(format!("#{localpart}:{}", self.server_name()))
                    .map_err(|_| Error::invalid_param("Invalid room alias name"))?;
                if self.store.get_alias(&alias).await?.is_some() {
                    return Err(Error::matrix(
                        MatrixErrorKind::RoomInUse,
                        "That room alias is taken",
                    ));
                }
                Some(alias)
            }
            None => None,
        };
        let preset = request.preset.unwrap_or(if request.publish {
            Preset::PublicChat
        } else {
            Preset::PrivateChat
        });
        let privileged_creators = rules.authorization.explicitly_privilege_room_creators;

        // 1. The create event (its hash names the room from v12 on).
        let mut create_content = request.creation_content.clone().unwrap_or_default();
        create_content.insert("room_version".into(), json!(version.as_str()));
        if !rules.authorization.use_room_create_sender {
            create_content.insert("creator".into(), json!(creator));
        }
        if privileged_creators && preset == Preset::TrustedPrivateChat && !request.invite.is_empty()
        {
            create_content.insert("additional_creators".into(), json!(request.invite));
        }
        check_override_names_no_creator(creator, &request, &create_content, privileged_creators)?;
        let room_id =
            self.persist_create_event(creator, &version, Value::Object(create_content)).await?;

        // 2. The creator joins.
        self.join_room(creator, <&ruma::RoomOrAliasId>::from(&*room_id), None).await?;

        // 3. Power levels.
        let power_levels = initial_power_levels(creator, &request, preset, privileged_creators);
        let room = &room_id;
        let send =
            |event: NewEvent| async move { self.send_event(creator, room, event, None).await };
        send(NewEvent::state("m.room.power_levels", "", power_levels)).await?;

        // 4. The canonical alias.
        if let Some(alias) = &alias {
            self.store
                .create_alias(&AliasRecord {
                    alias: alias.clone(),
                    room_id: room_id.clone(),
                    creator: creator.to_owned(),
                })
                .await?;
            send(NewEvent::state("m.room.canonical_alias", "", json!({ "alias": alias }))).await?;
        }

        // 5. The preset's events, unless initial_state sets the same slot.
        let sets = |kind: &str| {
            request.initial_state.iter().any(|(k, key, _)| k == kind && key.is_empty())
        };
        let (join_rule, guest_access) = match preset {
            Preset::PublicChat => ("public", "forbidden"),
            Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
        };
        for (kind, content) in [
            ("m.room.join_rules", json!({ "join_rule": join_rule })),
            ("m.room.history_visibility", json!({ "history_visibility": "shared" })),
            ("m.room.guest_access", json!({ "guest_access": guest_access })),
        ] {
            if !sets(kind) {
                send(NewEvent::state(kind, "", content)).await?;
            }
        }

        // 6. Initial state, then name and topic.
        for (kind, state_key, content) in &request.initial_state {
            if kind == "m.room.create" || kind == "m.room.member" {
                return Err(Error::bad_json(
                    "initial_state may not set the create event or memberships",
                ));
            }
            send(NewEvent::state(kind.clone(), state_key.clone(), content.clone())).await?;
        }
        if let Some(name) = &request.name {
            send(NewEvent::state("m.room.name", "", json!({ "name": name }))).await?;
        }
        if let Some(topic) = &request.topic {
            // With its rich form (`m.topic`, spec 1.15), plain text only.
            let content = json!({ "topic": topic, "m.topic": { "m.text": [{ "body": topic }] } });
            send(NewEvent::state("m.room.topic", "", content)).await?;
        }

        // 7. Invites and the directory.
        for invitee in &request.invite {
            self.invite(creator, &room_id, invitee, None, request.is_direct).await?;
        }
        if request.publish {
            self.store.set_room_published(&room_id, true).await?;
        }
        tracing::info!(room_version = %version, "created a room");
        Ok(room_id)
    }

    /// Builds and persists the create event of a new room; returns the room ID.
    pub(crate) async fn persist_create_event(
        &self,
        creator: &UserId,
        version: &RoomVersionId,
        content: Value,
    ) -> Result<OwnedRoomId> {
        let derived = versions::room_id_is_create_event_hash(version);
        // Two rooms made by one user in the same millisecond would get the same create event,
        // and so (since v12) the same ID: on a clash, try again a millisecond later.
        let mut origin_server_ts = now_ts();
        let mut attempts = 0;
        let (room_id, pdu) = loop {
            let room_id = if derived {
                None
            } else {
                Some(
                    OwnedRoomId::try_from(format!(
                        "!{}:{}",
                        random_localpart(),
                        self.server_name()
                    ))
                    .map_err(|_| Error::bug("generated room ID is invalid"))?,
                )
            };
            let template = EventTemplate {
                room_id,
                sender: creator.to_owned(),
                kind: TimelineEventType::RoomCreate,
                state_key: Some(String::new()),
                content: serde_json::value::to_raw_value(&content)?,
                redacts: None,
                prev_events: Vec::new(),
                auth_events: Vec::new(),
                depth: 1,
                origin_server_ts,
            };
            let pdu = build_pdu(&template, version, self.server_name(), &self.signing_key)
                .map_err(pdu_error)?;
            rhizome_room::auth::check_event(version, &pdu, |_| None, |_, _| None)
                .map_err(|error| Error::bad_json(format!("Invalid create event: {error}")))?;
            let room_id = pdu.room_id.clone();
            match self.store.create_room(&room_id, version, now_millis()).await {
                Ok(()) => break (room_id, pdu),
                Err(error)
                    if attempts < 10
                        && error
                            .matrix_kind()
                            .is_some_and(|kind| *kind == MatrixErrorKind::RoomInUse) =>
                {
                    attempts += 1;
                    origin_server_ts = ts_from_millis(millis_from_ts(origin_server_ts) + 1);
                }
                Err(error) => return Err(error),
            }
        };
        let _guard = self.lock_room(&room_id).await?;
        self.persist_first_event(&room_id, version, pdu).await?;
        Ok(room_id)
    }

    async fn persist_first_event(
        &self,
        room_id: &ruma::RoomId,
        version: &RoomVersionId,
        pdu: rhizome_room::Pdu,
    ) -> Result<()> {
        let state_before = super::send::StateBeforeParts {
            map: Arc::new(StateMap::new()),
            spec: StateSpec::New { base: None, changes: Vec::new() },
        };
        self.persist_prepared(
            room_id,
            version,
            pdu,
            state_before,
            &[],
            Vec::new(),
            super::send::Provenance::Local { txn: None },
        )
        .await?;
        Ok(())
    }

    /// The alias of `localpart` on this server.
    pub fn local_alias(&self, localpart: &str) -> Result<OwnedRoomAliasId> {
        RoomAliasId::parse(format!("#{localpart}:{}", self.server_name()))
            .map_err(|_| Error::invalid_param("Invalid alias"))
    }
}

/// The power levels of a new room: the creator (and a trusted private chat's invitees) at 100
/// unless the room version privileges creators, room version 12's tombstone at 150, then the
/// request's overrides.
fn initial_power_levels(
    creator: &UserId,
    request: &CreateRoom,
    preset: Preset,
    privileged_creators: bool,
) -> Value {
    let mut users = Map::new();
    if !privileged_creators {
        users.insert(creator.to_string(), json!(100));
        if preset == Preset::TrustedPrivateChat {
            for invitee in &request.invite {
                users.insert(invitee.to_string(), json!(100));
            }
        }
    }
    let mut power_levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": if privileged_creators { 150 } else { 100 },
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": { "room": 50 },
    });
    if let (Some(overrides), Some(object)) =
        (&request.power_level_content_override, power_levels.as_object_mut())
    {
        for (key, value) in overrides {
            object.insert(key.clone(), value.clone());
        }
    }
    power_levels
}

/// Room versions that privilege creators list none in the power levels: an override naming one
/// is refused.
fn check_override_names_no_creator(
    creator: &UserId,
    request: &CreateRoom,
    create_content: &Map<String, Value>,
    privileged_creators: bool,
) -> Result<()> {
    if privileged_creators
        && let Some(users) = request
            .power_level_content_override
            .as_ref()
            .and_then(|overrides| overrides.get("users"))
            .and_then(Value::as_object)
    {
        let additional = create_content.get("additional_creators").and_then(Value::as_array);
        let is_creator = |user: &str| {
            user == creator.as_str()
                || additional.is_some_and(|list| list.iter().any(|entry| entry == user))
        };
        if users.keys().any(|user| is_creator(user)) {
            return Err(Error::invalid_param(
                "Room creators have the highest power already and cannot be listed in the \
                 power levels",
            ));
        }
    }
    Ok(())
}
