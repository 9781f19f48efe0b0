//! History visibility: every event that leaves the server passes [`Services::filter_visible`]
//! (or [`Services::can_see_event`]), which applies the spec's rules to the state at the event
//! and never lets out outliers, rejected or soft-failed events.

use std::sync::Arc;

use rhizome_core::Result;
use rhizome_room::visibility::{VisibilityInput, user_may_see_event};
use ruma::{
    RoomId, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::{history_visibility::HistoryVisibility, member::MembershipState},
    },
};

use crate::{Services, rooms::cache::LoadedEvent};

impl Services {
    /// Whether the user may see the event now.
    pub async fn can_see_event(&self, user_id: &UserId, event: &LoadedEvent) -> Result<bool> {
        let joined_now = self.is_joined(&event.pdu.room_id, user_id).await?;
        self.visible_with(user_id, event, joined_now).await
    }

    /// The events the user may see, in their order.
    pub async fn filter_visible(
        &self,
        user_id: &UserId,
        events: Vec<Arc<LoadedEvent>>,
    ) -> Result<Vec<Arc<LoadedEvent>>> {
        let Some(first_room) = events.first().map(|event| event.pdu.room_id.clone()) else {
            return Ok(events);
        };
        let joined_now = self.is_joined(&first_room, user_id).await?;
        let mut visible = Vec::with_capacity(events.len());
        for event in events {
            let joined_now = if event.pdu.room_id == first_room {
                joined_now
            } else {
                self.is_joined(&event.pdu.room_id, user_id).await?
            };
            if self.visible_with(user_id, &event, joined_now).await? {
                visible.push(event);
            }
        }
        Ok(visible)
    }

    /// The events the user may see, in their order, all from rooms where the user's current
    /// membership is already known (`joined_now`).
    pub(crate) async fn filter_visible_with(
        &self,
        user_id: &UserId,
        events: Vec<Arc<LoadedEvent>>,
        joined_now: bool,
    ) -> Result<Vec<Arc<LoadedEvent>>> {
        let mut visible = Vec::with_capacity(events.len());
        for event in events {
            if self.visible_with(user_id, &event, joined_now).await? {
                visible.push(event);
            }
        }
        Ok(visible)
    }

    /// Whether the user's current membership in the room is `join`.
    pub async fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self
            .store
            .get_membership(room_id, user_id)
            .await?
            .is_some_and(|member| member.membership == "join"))
    }

    async fn visible_with(
        &self,
        user_id: &UserId,
        event: &LoadedEvent,
        joined_now: bool,
    ) -> Result<bool> {
        // Events outside the timeline (outliers), rejected by the auth rules or soft-failed
        // are never shown to clients.
        if event.record.outlier || event.record.rejected || event.record.soft_failed {
            return Ok(false);
        }
        let own_membership_event = event.pdu.kind == TimelineEventType::RoomMember
            && event.pdu.state_key.as_deref() == Some(user_id.as_str());
        if own_membership_event {
            // A user always sees their own membership changes (their invite, their kick).
            return Ok(true);
        }
        let group = event.record.state_before;
        let history_visibility =
            match self.state_event_in(group, &StateEventType::RoomHistoryVisibility, "").await? {
                Some(state) => state
                    .pdu
                    .content_str("history_visibility")
                    .map(|value| HistoryVisibility::from(value.as_str()))
                    .unwrap_or(HistoryVisibility::Shared),
                None => HistoryVisibility::Shared,
            };
        let membership = self
            .state_event_in(group, &StateEventType::RoomMember, user_id.as_str())
            .await?
            .and_then(|member| member.pdu.content_str("membership"))
            .map(|membership| MembershipState::from(membership.as_str()));
        Ok(user_may_see_event(&VisibilityInput {
            history_visibility: &history_visibility,
            membership_at_event: membership.as_ref(),
            joined_now,
        }))
    }
}
