//! Room upgrades: a new room of the new version that names its predecessor, the important
//! state copied across, a tombstone in the old room, aliases moved, and the old room muted.

use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_room::versions;
use ruma::{OwnedRoomId, RoomId, RoomVersionId, UserId, events::StateEventType};
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
    /// Upgrades a room to a new version; returns the new room's ID.
    pub async fn upgrade_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        new_version: &RoomVersionId,
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
        let old_create = self
            .current_state_event(room_id, &StateEventType::RoomCreate, "")
            .await?
            .ok_or_else(|| Error::bug("room without a create event"))?;

        // The new room, naming its predecessor.
        let mut create_content = json!({
            "room_version": new_version.as_str(),
            "predecessor": { "room_id": room_id, "event_id": old_create.pdu.event_id },
        });
        if !new_rules.authorization.use_room_create_sender {
            create_content["creator"] = json!(user_id);
        }
        let old_create_content: Value = serde_json::from_str(old_create.pdu.content.get())?;
        if let Some(room_type) = old_create_content.get("type") {
            create_content["type"] = room_type.clone();
        }
        let new_room = self.persist_create_event(user_id, new_version, create_content).await?;
        self.join_room(user_id, <&ruma::RoomOrAliasId>::from(&*new_room), None).await?;

        // Power levels: the old ones, the upgrader at the top (or implicitly, as a creator).
        let mut levels: Value =
            match self.current_state_event(room_id, &StateEventType::RoomPowerLevels, "").await? {
                Some(event) => serde_json::from_str(event.pdu.content.get())?,
                None => json!({}),
            };
        if let Some(users) = levels.get_mut("users").and_then(Value::as_object_mut) {
            if new_rules.authorization.explicitly_privilege_room_creators {
                users.remove(user_id.as_str());
            } else {
                users.insert(user_id.to_string(), json!(100));
            }
        } else if !new_rules.authorization.explicitly_privilege_room_creators {
            levels["users"] = json!({ user_id.as_str(): 100 });
        }
        self.send_event(
            user_id,
            &new_room,
            NewEvent::state("m.room.power_levels", "", levels.clone()),
            None,
        )
        .await?;
        for kind in COPIED_STATE {
            if let Some(event_id) = old_state.get(&(StateEventType::from(*kind), String::new()))
                && let Some(event) = self.load_event(event_id).await?
            {
                let content: Value = serde_json::from_str(event.pdu.content.get())?;
                self.send_event(user_id, &new_room, NewEvent::state(*kind, "", content), None)
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
                &new_room,
                NewEvent::state("m.room.member", state_key, content),
                None,
            )
            .await?;
        }

        // Aliases follow the room.
        let aliases = self.store.aliases_of_room(room_id).await?;
        for mut alias in aliases.clone() {
            self.store.delete_alias(&alias.alias).await?;
            alias.room_id = new_room.clone();
            self.store.create_alias(&alias).await?;
        }
        if let Some(canonical) =
            self.current_state_event(room_id, &StateEventType::RoomCanonicalAlias, "").await?
        {
            let content: Value = serde_json::from_str(canonical.pdu.content.get())?;
            self.send_event(
                user_id,
                &new_room,
                NewEvent::state("m.room.canonical_alias", "", content),
                None,
            )
            .await?;
        }
        if self.room_published(room_id).await? {
            self.store.set_room_published(room_id, false).await?;
            self.store.set_room_published(&new_room, true).await?;
        }

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
        let mut old_levels = levels;
        let raise =
            |value: Option<&Value>| json!(value.and_then(Value::as_i64).unwrap_or(0).max(50));
        old_levels["events_default"] = raise(old_levels.get("events_default"));
        old_levels["invite"] = raise(old_levels.get("invite"));
        if let Some(users) = old_levels.get_mut("users").and_then(Value::as_object_mut)
            && !versions::rules(&self.room_version(room_id).await?)
                .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators)
        {
            users.insert(user_id.to_string(), json!(100));
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
}
