//! Power levels as ruma models them, read from a room's state (creators included for the
//! room versions that privilege them).

use rhizome_core::{Error, Result};
use rhizome_storage::StateGroupId;
use ruma::{
    OwnedUserId, RoomId,
    events::{
        StateEventType,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    },
};

use crate::Services;

impl Services {
    /// The room's current power levels.
    pub async fn power_levels(&self, room_id: &RoomId) -> Result<RoomPowerLevels> {
        let group = self.current_state_group(room_id).await?;
        self.power_levels_at(room_id, group).await
    }

    /// The power levels in a state group of the room.
    pub async fn power_levels_at(
        &self,
        room_id: &RoomId,
        group: StateGroupId,
    ) -> Result<RoomPowerLevels> {
        let version = self.room_version(room_id).await?;
        let rules = version.rules().ok_or_else(|| Error::bug("room of an unknown version"))?;
        let creators = self.room_creators(group).await?;
        let source = match self.state_event_in(group, &StateEventType::RoomPowerLevels, "").await? {
            Some(event) => match event.pdu.content_as::<RoomPowerLevelsEventContent>() {
                Ok(content) => RoomPowerLevelsSource::Original(content),
                Err(_) => RoomPowerLevelsSource::None,
            },
            None => RoomPowerLevelsSource::None,
        };
        Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
    }

    /// The room's creators: the create event's sender and, since v12, `additional_creators`.
    pub async fn room_creators(&self, group: StateGroupId) -> Result<Vec<OwnedUserId>> {
        let Some(create) = self.state_event_in(group, &StateEventType::RoomCreate, "").await?
        else {
            return Ok(Vec::new());
        };
        let mut creators = vec![create.pdu.sender.clone()];
        let content: serde_json::Value = serde_json::from_str(create.pdu.content.get())?;
        for creator in content
            .get("additional_creators")
            .and_then(|value| value.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(Ok(user_id)) = creator.as_str().map(OwnedUserId::try_from) {
                creators.push(user_id);
            }
        }
        Ok(creators)
    }
}
