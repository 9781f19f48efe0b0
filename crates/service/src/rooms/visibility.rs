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

/// Where a viewer stands in a room now, as far as reading its history goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Joined now.
    Joined,
    /// Not joined now (left, invited, banned, never there).
    Outside,
    /// Left and forgot the room: its history is closed to them (bar what is world-readable).
    Forgotten,
}

impl Standing {
    pub(crate) fn joined_or_outside(joined_now: bool) -> Self {
        if joined_now { Self::Joined } else { Self::Outside }
    }
}

impl Services {
    /// Whether the user may see the event now.
    pub async fn can_see_event(&self, user_id: &UserId, event: &LoadedEvent) -> Result<bool> {
        let standing = self.standing(&event.pdu.room_id, user_id).await?;
        self.visible_with(user_id, event, standing).await
    }

    /// The user's standing in the room now.
    pub(crate) async fn standing(&self, room_id: &RoomId, user_id: &UserId) -> Result<Standing> {
        if self.is_joined(room_id, user_id).await? {
            Ok(Standing::Joined)
        } else if self.store.is_room_forgotten(user_id, room_id).await? {
            Ok(Standing::Forgotten)
        } else {
            Ok(Standing::Outside)
        }
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
        let standing = self.standing(&first_room, user_id).await?;
        let mut visible = Vec::with_capacity(events.len());
        for event in events {
            let standing = if event.pdu.room_id == first_room {
                standing
            } else {
                self.standing(&event.pdu.room_id, user_id).await?
            };
            if self.visible_with(user_id, &event, standing).await? {
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
        let standing = match events.first() {
            Some(first) if !joined_now => self.standing(&first.pdu.room_id, user_id).await?,
            _ => Standing::joined_or_outside(joined_now),
        };
        let mut visible = Vec::with_capacity(events.len());
        for event in events {
            if self.visible_with(user_id, &event, standing).await? {
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
        standing: Standing,
    ) -> Result<bool> {
        // Events outside the timeline (outliers), rejected by the auth rules or soft-failed
        // are never shown to clients.
        if event.record.outlier || event.record.rejected || event.record.soft_failed {
            return Ok(false);
        }
        let own_membership_event = event.pdu.kind == TimelineEventType::RoomMember
            && event.pdu.state_key.as_deref() == Some(user_id.as_str());
        if own_membership_event && standing != Standing::Forgotten {
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
        let membership = match standing {
            // Forgotten: as if never there.
            Standing::Forgotten => None,
            Standing::Joined | Standing::Outside => self
                .state_event_in(group, &StateEventType::RoomMember, user_id.as_str())
                .await?
                .and_then(|member| member.pdu.content_str("membership"))
                .map(|membership| MembershipState::from(membership.as_str())),
        };
        Ok(user_may_see_event(&VisibilityInput {
            history_visibility: &history_visibility,
            membership_at_event: membership.as_ref(),
            joined_now: standing == Standing::Joined,
        }))
    }
}
