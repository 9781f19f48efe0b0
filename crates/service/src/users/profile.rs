//! Profiles: display name and avatar, copied into the member events of every joined room.

use rhizome_core::{Error, Result};
use ruma::UserId;
use serde_json::{Value, json};

use crate::{Requester, Services, rooms::NewEvent};

/// A user's profile.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// The display name.
    pub displayname: Option<String>,
    /// The avatar.
    pub avatar_url: Option<String>,
}

/// The longest display name accepted.
const MAX_DISPLAYNAME_LENGTH: usize = 256;

impl Services {
    /// A local user's profile; `M_NOT_FOUND` for unknown or deactivated users.
    pub async fn profile(&self, user_id: &UserId) -> Result<Profile> {
        let user = self
            .store
            .get_user(user_id)
            .await?
            .filter(|user| !user.deactivated)
            .ok_or_else(|| Error::not_found("No such user"))?;
        Ok(Profile {
            displayname: user.displayname,
            avatar_url: user.avatar_url.map(|url| url.to_string()),
        })
    }

    /// Changes the display name (`None` removes it) and updates the user's rooms.
    pub async fn set_displayname(
        &self,
        requester: &Requester,
        displayname: Option<&str>,
    ) -> Result<()> {
        if displayname.is_some_and(|name| name.chars().count() > MAX_DISPLAYNAME_LENGTH) {
            return Err(Error::invalid_param("Display name too long"));
        }
        self.store.set_displayname(&requester.user_id, displayname).await?;
        self.refresh_member_events(&requester.user_id, "displayname", displayname).await
    }

    /// Changes the avatar (`None` removes it) and updates the user's rooms.
    pub async fn set_avatar_url(
        &self,
        requester: &Requester,
        avatar_url: Option<&str>,
    ) -> Result<()> {
        if avatar_url.is_some_and(|url| !url.is_empty() && !url.starts_with("mxc://")) {
            return Err(Error::invalid_param("Avatar URLs must be mxc:// URIs"));
        }
        let avatar_url = avatar_url.filter(|url| !url.is_empty());
        self.store.set_avatar_url(&requester.user_id, avatar_url).await?;
        self.refresh_member_events(&requester.user_id, "avatar_url", avatar_url).await
    }

    async fn refresh_member_events(
        &self,
        user_id: &UserId,
        field: &str,
        value: Option<&str>,
    ) -> Result<()> {
        for membership in self.store.rooms_of_user(user_id, &["join"]).await? {
            let Some(current) = self
                .current_state_event(
                    &membership.room_id,
                    &ruma::events::StateEventType::RoomMember,
                    user_id.as_str(),
                )
                .await?
            else {
                continue;
            };
            let mut content: Value = serde_json::from_str(current.pdu.content.get())?;
            match value {
                Some(value) => content[field] = json!(value),
                None => {
                    if let Some(object) = content.as_object_mut() {
                        object.remove(field);
                    }
                }
            }
            if let Some(object) = content.as_object_mut() {
                object.remove("reason");
                object.remove("join_authorised_via_users_server");
            }
            let event = NewEvent::state("m.room.member", user_id.as_str(), content);
            if let Err(error) = self.send_event(user_id, &membership.room_id, event, None).await {
                tracing::warn!(%error, "could not update a member event after a profile change");
            }
        }
        Ok(())
    }
}
