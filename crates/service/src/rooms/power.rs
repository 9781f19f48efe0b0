//! Power levels as ruma models them, read from a room's state (creators included for the
//! room versions that privilege them).

use rhizome_core::{Error, Result};
use rhizome_room::StateMap;
use rhizome_storage::StateGroupId;
use ruma::{
    OwnedUserId, RoomId, RoomVersionId,
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
        let state = self.state_map(group).await?;
        self.power_levels_in(&version, &state).await
    }

    /// The power levels in a state of a room of `version`.
    pub(crate) async fn power_levels_in(
        &self,
        version: &RoomVersionId,
        state: &StateMap,
    ) -> Result<RoomPowerLevels> {
        let rules = version.rules().ok_or_else(|| Error::bug("room of an unknown version"))?;
        let creators = self.room_creators_in(state).await?;
        let source = match self.state_event_of(state, &StateEventType::RoomPowerLevels).await? {
            Some(event) => match event.pdu.content_as::<RoomPowerLevelsEventContent>() {
                Ok(content) => RoomPowerLevelsSource::Original(content),
                Err(_) => RoomPowerLevelsSource::None,
            },
            None => RoomPowerLevelsSource::None,
        };
        Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
    }

    /// The event holding a state slot of empty key in `state`.
    async fn state_event_of(
        &self,
        state: &StateMap,
        kind: &StateEventType,
    ) -> Result<Option<std::sync::Arc<crate::rooms::cache::LoadedEvent>>> {
        match state.get(&(kind.clone(), String::new())) {
            Some(event_id) => self.load_event(event_id).await,
            None => Ok(None),
        }
    }

    /// The room's creators: the create event's sender and, since v12, `additional_creators`.
    pub async fn room_creators(&self, group: StateGroupId) -> Result<Vec<OwnedUserId>> {
        let state = self.state_map(group).await?;
        self.room_creators_in(&state).await
    }

    /// The creators of the room whose state `state` is.
    async fn room_creators_in(&self, state: &StateMap) -> Result<Vec<OwnedUserId>> {
        let Some(create) = self.state_event_of(state, &StateEventType::RoomCreate).await? else {
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
