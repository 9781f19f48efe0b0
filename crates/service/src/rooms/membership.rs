//! Memberships: join (by ID or alias, restricted rooms included), invite, leave, kick, ban,
//! unban, knock and forget. The auth rules have the last word on every change.

use rhizome_core::{Error, Result};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomOrAliasId, UserId, events::StateEventType};
use serde_json::{Map, Value, json};

use crate::{Services, rooms::NewEvent};

impl Services {
    /// Resolves a room ID or a local alias to a known room ID.
    pub async fn resolve_room(&self, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
        let room_id = match <&RoomId>::try_from(room) {
            Ok(room_id) => room_id.to_owned(),
            Err(alias) => self
                .store
                .get_alias(alias)
                .await?
                .map(|record| record.room_id)
                .ok_or_else(|| Error::not_found("Room alias not found"))?,
        };
        if !self.room_exists(&room_id).await? {
            return Err(Error::not_found("This server does not know that room"));
        }
        Ok(room_id)
    }

    /// The member event content for `user_id` with the given membership, carrying their
    /// profile for joins.
    async fn member_content(
        &self,
        user_id: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<Value> {
        let mut content = json!({ "membership": membership });
        if matches!(membership, "join" | "invite" | "knock")
            && let Some(user) = self.store.get_user(user_id).await?
        {
            if let Some(name) = user.displayname {
                content["displayname"] = json!(name);
            }
            if let Some(avatar) = user.avatar_url {
                content["avatar_url"] = json!(avatar);
            }
        }
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        Ok(content)
    }

    async fn send_membership(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        content: Value,
    ) -> Result<()> {
        let entering = matches!(
            content.get("membership").and_then(Value::as_str),
            Some("join" | "invite" | "knock")
        );
        if entering && self.room_is_shut_down(room_id).await? {
            return Err(Error::forbidden(
                "This room has been shut down by the server's administrator",
            ));
        }
        self.send_event(
            sender,
            room_id,
            NewEvent::state("m.room.member", target.as_str(), content),
            None,
        )
        .await?;
        Ok(())
    }

    /// Joins a room by ID or local alias.
    pub async fn join_room(
        &self,
        user_id: &UserId,
        room: &RoomOrAliasId,
        reason: Option<&str>,
    ) -> Result<OwnedRoomId> {
        let mut extra = Map::new();
        if let Some(reason) = reason {
            extra.insert("reason".to_owned(), json!(reason));
        }
        self.join_room_with_content(user_id, room, extra, &[]).await
    }

    /// Joins a room by ID or local alias, with the keys the client gave for the member event's
    /// content (a reason, a display name for this room, keys of its own). The membership and
    /// the restricted-join authoriser are the server's to set. Joining again with the same
    /// content changes nothing and sends no event.
    pub async fn join_room_with_content(
        &self,
        user_id: &UserId,
        room: &RoomOrAliasId,
        extra: Map<String, Value>,
        via: &[ruma::OwnedServerName],
    ) -> Result<OwnedRoomId> {
        let mut content = self.member_content(user_id, "join", None).await?;
        for (key, value) in extra {
            if !matches!(
                key.as_str(),
                "membership" | "join_authorised_via_users_server" | "third_party_signed"
            ) {
                content[key] = value;
            }
        }
        // Rooms this server is not in are joined through other servers.
        let (room_id, mut servers) = match <&RoomId>::try_from(room) {
            Ok(room_id) => (room_id.to_owned(), via.to_vec()),
            Err(alias) if alias.server_name() != self.server_name() => {
                let (room_id, mut servers) = self.resolve_remote_alias(alias).await?;
                servers.extend(via.iter().cloned());
                (room_id, servers)
            }
            Err(_) => (self.resolve_room(room).await?, via.to_vec()),
        };
        if self.needs_remote_join(&room_id).await? {
            if self.room_is_shut_down(&room_id).await? {
                return Err(Error::forbidden(
                    "This room has been shut down by the server's administrator",
                ));
            }
            if let Some(invite) = self.store.get_membership(&room_id, user_id).await?
                && let Some(event) = self.load_event(&invite.event_id).await?
            {
                servers.push(event.pdu.sender.server_name().to_owned());
            }
            let Value::Object(content) = content else {
                return Err(Error::bug("member content is an object"));
            };
            self.join_remote_room(user_id, &room_id, &servers, content).await?;
            return Ok(room_id);
        }
        let current = self.store.get_membership(&room_id, user_id).await?;
        if current.as_ref().is_some_and(|member| member.membership == "join")
            && let Some(event) = self
                .current_state_event(&room_id, &StateEventType::RoomMember, user_id.as_str())
                .await?
            && serde_json::from_str::<Value>(event.pdu.content.get()).ok().as_ref()
                == Some(&content)
        {
            return Ok(room_id);
        }
        let invited_or_joined = current
            .as_ref()
            .is_some_and(|member| matches!(member.membership.as_str(), "invite" | "join"));
        if !invited_or_joined
            && let Some(authoriser) = self.restricted_join_authoriser(&room_id, user_id).await?
        {
            content["join_authorised_via_users_server"] = json!(authoriser);
        }
        self.send_membership(user_id, &room_id, user_id, content).await?;
        if current.is_none_or(|member| member.membership != "join") {
            self.carry_over_from_predecessor(user_id, &room_id).await;
        }
        Ok(room_id)
    }

    /// Whether joining the room needs another server: this server has no state of it, or
    /// no local member while members of other servers are there (the state held may be
    /// stale).
    async fn needs_remote_join(&self, room_id: &RoomId) -> Result<bool> {
        let has_state =
            self.store.get_room(room_id).await?.and_then(|room| room.current_state_group).is_some();
        if !has_state {
            return Ok(true);
        }
        Ok(!self.server_in_room(room_id).await? && !self.room_servers(room_id).await?.is_empty())
    }

    /// For a restricted room the user may join through membership of an allowed room: a local
    /// member who can invite, to vouch for the join.
    pub(crate) async fn restricted_join_authoriser(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let Some(join_rules) =
            self.current_state_event(room_id, &StateEventType::RoomJoinRules, "").await?
        else {
            return Ok(None);
        };
        let content: Value = serde_json::from_str(join_rules.pdu.content.get())?;
        let rule = content.get("join_rule").and_then(Value::as_str).unwrap_or_default();
        if rule != "restricted" && rule != "knock_restricted" {
            return Ok(None);
        }
        let mut allowed = false;
        for condition in content.get("allow").and_then(Value::as_array).into_iter().flatten() {
            if condition.get("type").and_then(Value::as_str) != Some("m.room_membership") {
                continue;
            }
            let Some(Ok(allowed_room)) =
                condition.get("room_id").and_then(Value::as_str).map(RoomId::parse)
            else {
                continue;
            };
            if self.is_joined(&allowed_room, user_id).await? {
                allowed = true;
                break;
            }
        }
        if !allowed {
            return Ok(None);
        }
        let power_levels = self.power_levels(room_id).await?;
        for member in self.room_members_cached(room_id, false).await? {
            if member.server_name() == self.server_name() && power_levels.user_can_invite(&member) {
                return Ok(Some(member));
            }
        }
        Ok(None)
    }

    /// Invites a local user.
    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<()> {
        if target.server_name() != self.server_name() {
            if self.is_joined(room_id, target).await? {
                return Err(Error::forbidden("That user is already in the room"));
            }
            if self.room_is_shut_down(room_id).await? {
                return Err(Error::forbidden(
                    "This room has been shut down by the server's administrator",
                ));
            }
            let mut content = json!({ "membership": "invite" });
            if let Some(reason) = reason {
                content["reason"] = json!(reason);
            }
            if is_direct {
                content["is_direct"] = json!(true);
            }
            return self.invite_remote_user(sender, room_id, target, content).await;
        }
        let user = self.store.get_user(target).await?;
        if user.is_none_or(|user| user.deactivated) {
            return Err(Error::not_found("No such user"));
        }
        if self.is_joined(room_id, target).await? {
            return Err(Error::forbidden("That user is already in the room"));
        }
        // Blocked is refused; ignored is made, and hidden from the invitee's syncs.
        self.check_invite_allowed(target, sender).await?;
        let mut content = self.member_content(target, "invite", reason).await?;
        if is_direct {
            content["is_direct"] = json!(true);
        }
        self.send_membership(sender, room_id, target, content).await
    }

    /// Leaves a room, or rejects an invite or withdraws a knock.
    pub async fn leave_room(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
    ) -> Result<()> {
        let current = self.store.get_membership(room_id, user_id).await?;
        let Some(current) = current
            .filter(|member| matches!(member.membership.as_str(), "join" | "invite" | "knock"))
        else {
            return Err(Error::forbidden("You are not in this room"));
        };
        // An invite or knock in a room this server is not in is answered through the
        // server that sent it.
        if current.membership != "join" && !self.server_in_room(room_id).await? {
            let has_state = self
                .store
                .get_room(room_id)
                .await?
                .and_then(|room| room.current_state_group)
                .is_some();
            if !has_state || !self.room_servers(room_id).await?.is_empty() {
                return self.leave_remote_room(user_id, room_id, &current, reason).await;
            }
        }
        let content = self.member_content(user_id, "leave", reason).await?;
        self.send_membership(user_id, room_id, user_id, content).await
    }

    /// Kicks a member.
    pub async fn kick(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let current = self.store.get_membership(room_id, target).await?;
        if !current
            .is_some_and(|member| matches!(member.membership.as_str(), "join" | "invite" | "knock"))
        {
            return Err(Error::forbidden("That user is not in the room"));
        }
        let content = self.member_content(target, "leave", reason).await?;
        self.send_membership(sender, room_id, target, content).await
    }

    /// Bans a user (who need not be in the room).
    pub async fn ban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let content = self.member_content(target, "ban", reason).await?;
        self.send_membership(sender, room_id, target, content).await
    }

    /// Lifts a ban.
    pub async fn unban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let current = self.store.get_membership(room_id, target).await?;
        if current.is_none_or(|member| member.membership != "ban") {
            return Err(Error::forbidden("That user is not banned"));
        }
        let content = self.member_content(target, "leave", reason).await?;
        self.send_membership(sender, room_id, target, content).await
    }

    /// Knocks on a room.
    pub async fn knock(
        &self,
        user_id: &UserId,
        room: &RoomOrAliasId,
        reason: Option<&str>,
    ) -> Result<OwnedRoomId> {
        let room_id = self.resolve_room(room).await?;
        if self.is_joined(&room_id, user_id).await? {
            return Err(Error::forbidden("You are already in this room"));
        }
        let content = self.member_content(user_id, "knock", reason).await?;
        self.send_membership(user_id, &room_id, user_id, content).await?;
        Ok(room_id)
    }

    /// Forgets a room the user has left.
    pub async fn forget_room(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let current = self.store.get_membership(room_id, user_id).await?;
        match current {
            Some(member) if matches!(member.membership.as_str(), "join" | "invite" | "knock") => {
                Err(Error::matrix(
                    rhizome_core::error::MatrixErrorKind::Unknown,
                    "Leave the room before forgetting it",
                ))
            }
            Some(_) => {
                self.store.forget_room(user_id, room_id).await?;
                self.forget_user_memberships(user_id);
                let message = crate::processes::Message::ForgetUserMemberships {
                    user_id: user_id.to_owned(),
                };
                crate::processes::publish(self.store.as_ref(), &message);
                Ok(())
            }
            None => Err(Error::not_found("You were never in this room")),
        }
    }
}
