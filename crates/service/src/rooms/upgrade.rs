//! Room upgrades: a new room of the new version that names its predecessor (and any additional
//! creators), the important state copied across, a tombstone in the old room, aliases moved,
//! and the old room muted.

use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_room::{StateMap, versions};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId, events::StateEventType};
use serde_json::{Value, json};

use crate::{Services, rooms::NewEvent};

/// State copied from the old room to the new one.
const COPIED_STATE: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

impl Services {
    /// Upgrades a room to a new version; returns the new room's ID. `additional_creators`
    /// become creators of the new room beside the upgrader (room versions that privilege
    /// creators only).
    pub async fn upgrade_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        new_version: &RoomVersionId,
        additional_creators: &[OwnedUserId],
    ) -> Result<OwnedRoomId> {
        let new_rules = versions::rules(new_version).ok_or_else(|| {
            Error::matrix(
                MatrixErrorKind::UnsupportedRoomVersion,
                "This server does not support that room version",
            )
        })?;
        let power_levels = self.power_levels(room_id).await?;
        if !power_levels.user_can_send_state(user_id, StateEventType::RoomTombstone) {
            return Err(Error::forbidden("You may not upgrade this room"));
        }
        let old_state = self.current_state(room_id).await?;
        let privileged_creators = new_rules.authorization.explicitly_privilege_room_creators;

        let create_content = self
            .upgraded_create_content(room_id, user_id, new_version, additional_creators)
            .await?;
        let new_room = self.persist_create_event(user_id, new_version, create_content).await?;
        self.join_room(user_id, <&ruma::RoomOrAliasId>::from(&*new_room), None).await?;

        // Power levels: the old ones, the upgrader at the top (or implicitly, as a creator, with
        // the other creators: creators are never listed).
        let old_levels: Value =
            match self.current_state_event(room_id, &StateEventType::RoomPowerLevels, "").await? {
                Some(event) => serde_json::from_str(event.pdu.content.get())?,
                None => json!({}),
            };
        let mut levels = old_levels.clone();
        if !levels.get("users").is_some_and(Value::is_object) {
            levels["users"] = json!({});
        }
        if let Some(users) = levels.get_mut("users").and_then(Value::as_object_mut) {
            if privileged_creators {
                users.remove(user_id.as_str());
                for creator in additional_creators {
                    users.remove(creator.as_str());
                }
            } else {
                users.insert(user_id.to_string(), json!(100));
            }
        }
        self.send_event(
            user_id,
            &new_room,
            NewEvent::state("m.room.power_levels", "", levels),
            None,
        )
        .await?;
        self.copy_state(user_id, &old_state, &new_room).await?;
        self.move_aliases(user_id, room_id, &new_room).await?;

        // The tombstone, then the old room is muted.
        self.send_event(
            user_id,
            room_id,
            NewEvent::state(
                "m.room.tombstone",
                "",
                json!({ "body": "This room has been replaced", "replacement_room": new_room }),
            ),
            None,
        )
        .await?;
        // Ordinary members can no longer speak or invite in the old room.
        let mut old_levels = old_levels;
        let users_default = old_levels.get("users_default").and_then(Value::as_i64).unwrap_or(0);
        let restricted = users_default.saturating_add(1).max(50);
        for key in ["events_default", "invite"] {
            let current = old_levels.get(key).and_then(Value::as_i64).unwrap_or(0);
            old_levels[key] = json!(current.max(restricted));
        }
        if let Err(error) = self
            .send_event(
                user_id,
                room_id,
                NewEvent::state("m.room.power_levels", "", old_levels),
                None,
            )
            .await
        {
            tracing::warn!(%error, "could not restrict the old room after an upgrade");
        }
        Ok(new_room)
    }

    /// The new room's create content: its version, its predecessor (by room ID alone where the
    /// room ID is the create event's hash, the event ID being deprecated; older versions get
    /// the old room's last event, where clients jump to), any additional creators, and the old
    /// room's type and federation flag.
    async fn upgraded_create_content(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        new_version: &RoomVersionId,
        additional_creators: &[OwnedUserId],
    ) -> Result<Value> {
        let rules = versions::rules(new_version)
            .ok_or_else(|| Error::bug("upgrade to an unknown version"))?;
        let old_create = self
            .current_state_event(room_id, &StateEventType::RoomCreate, "")
            .await?
            .ok_or_else(|| Error::bug("room without a create event"))?;
        let mut predecessor = json!({ "room_id": room_id });
        if !versions::room_id_is_create_event_hash(new_version)
            && let Some(last) =
                self.store.last_event_at(room_id, self.store.current_stream_pos()).await?
        {
            predecessor["event_id"] = json!(last.event_id);
        }
        let mut content =
            json!({ "room_version": new_version.as_str(), "predecessor": predecessor });
        if !rules.authorization.use_room_create_sender {
            content["creator"] = json!(user_id);
        }
        if rules.authorization.explicitly_privilege_room_creators && !additional_creators.is_empty()
        {
            content["additional_creators"] = json!(additional_creators);
        }
        let old_content: Value = serde_json::from_str(old_create.pdu.content.get())?;
        for key in ["type", "m.federate"] {
            if let Some(value) = old_content.get(key) {
                content[key] = value.clone();
            }
        }
        Ok(content)
    }

    /// Copies the important state and the bans (an upgrade is no way back in) to the new room.
    async fn copy_state(
        &self,
        user_id: &UserId,
        old_state: &StateMap,
        new_room: &RoomId,
    ) -> Result<()> {
        for kind in COPIED_STATE {
            if let Some(event_id) = old_state.get(&(StateEventType::from(*kind), String::new()))
                && let Some(event) = self.load_event(event_id).await?
            {
                let content: Value = serde_json::from_str(event.pdu.content.get())?;
                self.send_event(user_id, new_room, NewEvent::state(*kind, "", content), None)
                    .await?;
            }
        }

        // Bans follow the room, so an upgrade is no way back in.
        for ((kind, state_key), event_id) in old_state.iter() {
            if *kind != StateEventType::RoomMember || state_key.as_str() == user_id.as_str() {
                continue;
            }
            let Some(event) = self.load_event(event_id).await? else { continue };
            if event.pdu.content_str("membership").as_deref() != Some("ban") {
                continue;
            }
            let mut content = json!({ "membership": "ban" });
            if let Some(reason) = event.pdu.content_str("reason") {
                content["reason"] = json!(reason);
            }
            self.send_event(
                user_id,
                new_room,
                NewEvent::state("m.room.member", state_key, content),
                None,
            )
            .await?;
        }

        Ok(())
    }

    /// Moves the old room's aliases, canonical alias and directory entry to the new room.
    async fn move_aliases(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        new_room: &RoomId,
    ) -> Result<()> {
        let aliases = self.store.aliases_of_room(room_id).await?;
        for mut alias in aliases.clone() {
            self.store.delete_alias(&alias.alias).await?;
            alias.room_id = new_room.to_owned();
            self.store.create_alias(&alias).await?;
        }
        if let Some(canonical) =
            self.current_state_event(room_id, &StateEventType::RoomCanonicalAlias, "").await?
        {
            let content: Value = serde_json::from_str(canonical.pdu.content.get())?;
            self.send_event(
                user_id,
                new_room,
                NewEvent::state("m.room.canonical_alias", "", content),
                None,
            )
            .await?;
        }
        if self.room_published(room_id).await? {
            self.store.set_room_published(room_id, false).await?;
            self.store.set_room_published(new_room, true).await?;
        }

        Ok(())
    }
}

impl Services {
    /// When a user joins a room that replaced another, what they set up for the old room
    /// carries over: push rules about it (under the new room's ID), its tags, and its place in
    /// `m.direct`. Best effort: a failure leaves the join as it is.
    pub(crate) async fn carry_over_from_predecessor(&self, user_id: &UserId, room_id: &RoomId) {
        if let Err(error) = self.try_carry_over(user_id, room_id).await {
            tracing::warn!(%error, "could not carry settings over to an upgraded room");
        }
    }

    async fn try_carry_over(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let Some(create) =
            self.current_state_event(room_id, &StateEventType::RoomCreate, "").await?
        else {
            return Ok(());
        };
        let content: Value = serde_json::from_str(create.pdu.content.get())?;
        let Some(old_room) = content
            .get("predecessor")
            .and_then(|predecessor| predecessor.get("room_id"))
            .and_then(Value::as_str)
            .and_then(|room_id| RoomId::parse(room_id).ok())
        else {
            return Ok(());
        };
        let rules = self.push_rules(user_id).await?;
        if let Some(copied) = copied_push_rules(&rules, &old_room, room_id) {
            self.set_push_rules(user_id, &copied).await?;
        }
        if self.store.get_account_data(user_id, Some(room_id), "m.tag").await?.is_none()
            && let Some(tags) =
                self.store.get_account_data(user_id, Some(&old_room), "m.tag").await?
        {
            self.store.set_account_data(user_id, Some(room_id), "m.tag", &tags.content).await?;
        }
        if let Some(direct) = self.store.get_account_data(user_id, None, "m.direct").await? {
            let mut direct: Value = serde_json::from_str(&direct.content)?;
            let mut changed = false;
            for rooms in direct.as_object_mut().into_iter().flat_map(|map| map.values_mut()) {
                if let Some(rooms) = rooms.as_array_mut()
                    && rooms.iter().any(|room| room == old_room.as_str())
                    && !rooms.iter().any(|room| room == room_id.as_str())
                {
                    rooms.push(json!(room_id));
                    changed = true;
                }
            }
            if changed {
                let content = direct.to_string();
                self.store.set_account_data(user_id, None, "m.direct", &content).await?;
            }
        }
        self.notifier.notify([user_id]);
        Ok(())
    }
}

/// The ruleset (as JSON) with a copy, for the new room, of each enabled rule about the old
/// one: a room rule, or a rule with a `room_id` condition (copied under the new room's ID, as
/// Synapse does). `None` when nothing is to be copied.
fn copied_push_rules(rules: &Value, old_room: &RoomId, new_room: &RoomId) -> Option<Value> {
    let mut rules = rules.clone();
    let mut copied_any = false;
    for kind in ["override", "content", "room", "sender", "underride"] {
        let Some(list) = rules.get_mut(kind).and_then(Value::as_array_mut) else { continue };
        if list.iter().any(|rule| rule["rule_id"] == new_room.as_str()) {
            continue;
        }
        let about_old_room = |rule: &Value| {
            rule["enabled"] != false
                && ((kind == "room" && rule["rule_id"] == old_room.as_str())
                    || rule["conditions"].as_array().is_some_and(|conditions| {
                        conditions.iter().any(|condition| {
                            condition["key"] == "room_id"
                                && condition["pattern"] == old_room.as_str()
                        })
                    }))
        };
        let Some(position) = list.iter().position(about_old_room) else { continue };
        let mut copy = list[position].clone();
        copy["rule_id"] = json!(new_room);
        if let Some(conditions) = copy.get_mut("conditions").and_then(Value::as_array_mut) {
            for condition in conditions.iter_mut().filter(|condition| condition["key"] == "room_id")
            {
                condition["pattern"] = json!(new_room);
            }
        }
        list.insert(position + 1, copy);
        copied_any = true;
    }
    copied_any.then_some(rules)
}
