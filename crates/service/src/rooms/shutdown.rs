//! Shutting a room down, the administrator's last resort (`rhizome admin room shutdown`): the
//! room is closed to this server's users, taken out of the directory and stripped of its
//! aliases, and every local member is made to leave through the normal event path (kicked by
//! the room's most powerful local member where the auth rules allow, leaving by themselves
//! otherwise). Optionally the members who were joined get a notice in a new room.

use rhizome_core::{Error, Result, clock::now_millis};
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId};
use serde_json::json;

use crate::{
    Services,
    rooms::{
        NewEvent,
        create::{CreateRoom, Preset},
    },
};

/// The reason given in the membership events of a shutdown.
pub const SHUTDOWN_REASON: &str = "This room has been shut down by the server's administrator";

/// What a shutdown did.
#[derive(Clone, Debug, Default)]
pub struct ShutdownReport {
    /// Members kicked (invites and knocks included).
    pub kicked: Vec<OwnedUserId>,
    /// Members who were made to leave by themselves (no member could kick them, or they were
    /// the one kicking).
    pub left: Vec<OwnedUserId>,
    /// Members who could not be removed, with why.
    pub failed: Vec<(OwnedUserId, String)>,
    /// Aliases removed.
    pub aliases_removed: Vec<OwnedRoomAliasId>,
    /// Whether the room was listed in the directory.
    pub was_published: bool,
    /// The room the notice was sent in.
    pub notice_room: Option<OwnedRoomId>,
}

impl Services {
    /// Whether the administrator shut the room down.
    pub async fn room_is_shut_down(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.store.get_room(room_id).await?.is_some_and(|room| room.shut_down_ts.is_some()))
    }

    /// Shuts a room down; with `message`, the members who were joined are invited to a new
    /// room where the notices account tells them.
    pub async fn shutdown_room(
        &self,
        room_id: &RoomId,
        message: Option<&str>,
    ) -> Result<ShutdownReport> {
        let room =
            self.store.get_room(room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let mut report = ShutdownReport { was_published: room.published, ..Default::default() };
        // Closed first, so nobody joins while the members are removed.
        self.store.set_room_shut_down(room_id, now_millis()).await?;
        self.store.set_room_published(room_id, false).await?;
        for alias in self.store.aliases_of_room(room_id).await? {
            self.store.delete_alias(&alias.alias).await?;
            report.aliases_removed.push(alias.alias);
        }

        let local: Vec<(OwnedUserId, String)> = self
            .store
            .members_of_room(room_id, &["join", "invite", "knock"])
            .await?
            .into_iter()
            .filter(|member| member.user_id.server_name() == self.server_name())
            .map(|member| (member.user_id, member.membership))
            .collect();
        let joined: Vec<OwnedUserId> = local
            .iter()
            .filter(|(_, membership)| membership == "join")
            .map(|(user_id, _)| user_id.clone())
            .collect();
        let power_levels = self.power_levels(room_id).await?;
        // The most powerful joined local member kicks; ties go to the first user ID.
        let kicker = joined
            .iter()
            .max_by(|a, b| power_levels.for_user(a).cmp(&power_levels.for_user(b)).then(b.cmp(a)))
            .cloned();

        for (user_id, _) in &local {
            if Some(user_id) == kicker.as_ref() {
                continue;
            }
            let outcome = match &kicker {
                Some(kicker) if power_levels.user_can_kick_user(kicker, user_id) => {
                    self.kick(kicker, room_id, user_id, Some(SHUTDOWN_REASON)).await.map(|()| true)
                }
                _ => self.leave_room(user_id, room_id, Some(SHUTDOWN_REASON)).await.map(|()| false),
            };
            match outcome {
                Ok(true) => report.kicked.push(user_id.clone()),
                Ok(false) => report.left.push(user_id.clone()),
                Err(error) => report.failed.push((user_id.clone(), error.message().to_owned())),
            }
        }
        if let Some(kicker) = kicker {
            match self.leave_room(&kicker, room_id, Some(SHUTDOWN_REASON)).await {
                Ok(()) => report.left.push(kicker),
                Err(error) => report.failed.push((kicker, error.message().to_owned())),
            }
        }
        tracing::info!(
            kicked = report.kicked.len(),
            left = report.left.len(),
            failed = report.failed.len(),
            "the administrator shut a room down"
        );

        if let Some(message) = message.filter(|message| !message.trim().is_empty()) {
            report.notice_room = Some(self.send_shutdown_notice(room_id, &joined, message).await?);
        }
        Ok(report)
    }

    /// A new room from the notices account, where only it may speak, with the message, and
    /// the affected users invited.
    async fn send_shutdown_notice(
        &self,
        room_id: &RoomId,
        recipients: &[OwnedUserId],
        message: &str,
    ) -> Result<OwnedRoomId> {
        let sender = self.notices_account().await?;
        let about = self.room_summary(room_id).await?.name.unwrap_or_else(|| room_id.to_string());
        let overrides = json!({ "events_default": 100, "invite": 100, "state_default": 100 });
        let notice_room = self
            .create_room(
                &sender,
                CreateRoom {
                    preset: Some(Preset::PrivateChat),
                    name: Some("Server notice".to_owned()),
                    topic: Some(format!("About {about}, shut down by the server's administrator")),
                    power_level_content_override: overrides.as_object().cloned(),
                    ..Default::default()
                },
            )
            .await?;
        self.send_event(
            &sender,
            &notice_room,
            NewEvent::message("m.room.message", json!({ "msgtype": "m.text", "body": message })),
            None,
        )
        .await?;
        for user_id in recipients {
            if self.active_account(user_id).await.is_err() || *user_id == sender {
                continue;
            }
            if let Err(error) = self.invite(&sender, &notice_room, user_id, None, false).await {
                tracing::warn!(%error, "could not invite a member to the shutdown notice room");
            }
        }
        Ok(notice_room)
    }
}
