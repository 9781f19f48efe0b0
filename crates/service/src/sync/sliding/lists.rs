//! Which rooms a sliding sync request selects: the user's rooms sorted by recent activity,
//! filtered per list (`is_dm`, `is_encrypted`, `is_invite`, `room_types`, `not_room_types`) and
//! cut to the list's ranges, plus the room subscriptions; each selected room with the superset
//! of the configs that selected it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rhizome_core::Result;
use rhizome_storage::{MembershipRecord, StreamPos};
use ruma::{
    OwnedRoomId, RoomId,
    api::client::sync::sync_events::v5::request::{ListFilters, RoomDetails, RoomSubscription},
    directory::RoomTypeFilter,
    events::StateEventType,
};

use super::{Ctx, connection::ConnState, required_state::RequiredState, timeline_limit};
use crate::{Services, invite_filter::InviteRule};

/// What a room is sent with: the superset of the configs that selected it.
#[derive(Clone, Debug, Default)]
pub(super) struct RoomConfig {
    /// The most timeline events to send.
    pub(super) timeline_limit: usize,
    /// The state to send.
    pub(super) required_state: RequiredState,
}

impl RoomConfig {
    fn new(
        required_state: &[(StateEventType, String)],
        limit: ruma::UInt,
        me: &ruma::UserId,
    ) -> Self {
        Self {
            timeline_limit: timeline_limit(limit),
            required_state: RequiredState::from_request(required_state, me),
        }
    }

    fn merge(&mut self, other: &Self) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        self.required_state.merge(&other.required_state);
    }
}

/// A selected room.
#[derive(Clone, Debug)]
pub(super) struct Relevant {
    /// The user's membership.
    pub(super) membership: MembershipRecord,
    /// What to send.
    pub(super) config: RoomConfig,
    /// The lists whose ranges it is in.
    pub(super) lists: BTreeSet<String>,
    /// Whether a room subscription names it.
    pub(super) subscribed: bool,
}

/// The rooms a request selects and the size of each list.
#[derive(Debug, Default)]
pub(super) struct Selection {
    /// The selected rooms.
    pub(super) rooms: BTreeMap<OwnedRoomId, Relevant>,
    /// The number of rooms matching each list's filters.
    pub(super) counts: BTreeMap<String, u64>,
}

/// A room of the user's, with what list filters look at.
struct Candidate<'a> {
    membership: &'a MembershipRecord,
    /// Its place in the activity order (greater is more recent).
    activity: StreamPos,
    /// Its room type and whether it is encrypted, when a filter needs them.
    facts: Option<(Option<String>, bool)>,
}

fn needs_facts(filters: &ListFilters) -> bool {
    filters.is_encrypted.is_some()
        || !filters.room_types.is_empty()
        || !filters.not_room_types.is_empty()
}

fn type_matches(filter: &RoomTypeFilter, room_type: Option<&str>) -> bool {
    filter.as_str() == room_type
}

fn passes(filters: &ListFilters, candidate: &Candidate<'_>, is_dm: bool) -> bool {
    let is_invite = candidate.membership.membership == "invite";
    if filters.is_dm.is_some_and(|wanted| wanted != is_dm)
        || filters.is_invite.is_some_and(|wanted| wanted != is_invite)
    {
        return false;
    }
    let Some((room_type, encrypted)) = &candidate.facts else { return true };
    let room_type = room_type.as_deref();
    filters.is_encrypted.is_none_or(|wanted| wanted == *encrypted)
        && (filters.room_types.is_empty()
            || filters.room_types.iter().any(|filter| type_matches(filter, room_type)))
        && !filters.not_room_types.iter().any(|filter| type_matches(filter, room_type))
}

/// The indices of a list of `len` rooms its ranges select (all of them without ranges).
fn indices_in_ranges(ranges: &[(ruma::UInt, ruma::UInt)], len: usize) -> BTreeSet<usize> {
    if ranges.is_empty() {
        return (0..len).collect();
    }
    let index = |value: ruma::UInt| usize::try_from(u64::from(value)).unwrap_or(usize::MAX);
    let mut selected = BTreeSet::new();
    for (start, end) in ranges {
        let end = index(*end).min(len.saturating_sub(1));
        if len > 0 && index(*start) <= end {
            selected.extend(index(*start)..=end);
        }
    }
    selected
}

impl Selection {
    fn add(&mut self, membership: &MembershipRecord, config: &RoomConfig, list: Option<&str>) {
        let relevant = self.rooms.entry(membership.room_id.clone()).or_insert_with(|| Relevant {
            membership: membership.clone(),
            config: config.clone(),
            lists: BTreeSet::new(),
            subscribed: false,
        });
        relevant.config.merge(config);
        match list {
            Some(name) => {
                relevant.lists.insert(name.to_owned());
            }
            None => relevant.subscribed = true,
        }
    }
}

impl Services {
    /// The rooms the request's lists and subscriptions select.
    pub(super) async fn select_rooms(
        &self,
        ctx: &Ctx<'_>,
        previous: &ConnState,
        memberships: &[MembershipRecord],
    ) -> Result<Selection> {
        let mut selection = Selection::default();
        let me = &ctx.requester.user_id;
        if !ctx.request.lists.is_empty() {
            let with_facts = ctx
                .request
                .lists
                .values()
                .any(|list| list.filters.as_ref().is_some_and(needs_facts));
            let candidates = self.candidates(ctx, previous, memberships, with_facts).await?;
            for (name, list) in &ctx.request.lists {
                let RoomDetails { required_state, timeline_limit, .. } = &list.room_details;
                let config = RoomConfig::new(required_state, *timeline_limit, me);
                let matching: Vec<&Candidate<'_>> = candidates
                    .iter()
                    .filter(|candidate| {
                        let is_dm = ctx.direct.contains(&candidate.membership.room_id);
                        list.filters
                            .as_ref()
                            .is_none_or(|filters| passes(filters, candidate, is_dm))
                    })
                    .collect();
                selection.counts.insert(name.clone(), u64::try_from(matching.len()).unwrap_or(0));
                for index in indices_in_ranges(&list.ranges, matching.len()) {
                    if let Some(candidate) = matching.get(index) {
                        selection.add(candidate.membership, &config, Some(name));
                    }
                }
            }
        }
        let by_room: HashMap<&RoomId, &MembershipRecord> = memberships
            .iter()
            .map(|membership| (membership.room_id.as_ref(), membership))
            .collect();
        for (room_id, subscription) in &ctx.request.room_subscriptions {
            // Only rooms the user is, was or is asked to be in; others are ignored.
            let key: &RoomId = room_id;
            let Some(membership) = by_room.get(&key) else { continue };
            let RoomSubscription { required_state, timeline_limit, .. } = subscription;
            selection.add(membership, &RoomConfig::new(required_state, *timeline_limit, me), None);
        }
        Ok(selection)
    }

    /// The user's rooms that lists may show, most recently active first. Rooms the user left
    /// themselves are left out, unless this connection was sent them before and the leave is
    /// new (so the client learns of it); kicks and bans stay.
    async fn candidates<'a>(
        &self,
        ctx: &Ctx<'_>,
        previous: &ConnState,
        memberships: &'a [MembershipRecord],
        with_facts: bool,
    ) -> Result<Vec<Candidate<'a>>> {
        let me = &ctx.requester.user_id;
        let since = ctx.since.map(|since| since.pos);
        let mut candidates = Vec::with_capacity(memberships.len());
        for membership in memberships {
            let include = match membership.membership.as_str() {
                "join" | "knock" => true,
                "invite" => {
                    let inviter = self.membership_sender(membership).await?;
                    !ctx.ignored.contains(&inviter)
                        && ctx.invite_filter.rule(&inviter) == InviteRule::Allow
                }
                "leave" | "ban" => {
                    let newly_left = previous.rooms.contains_key(&membership.room_id)
                        && since.is_some_and(|since| membership.stream_pos > since);
                    newly_left || self.membership_sender(membership).await? != *me
                }
                _ => false,
            };
            if !include {
                continue;
            }
            let activity = if membership.membership == "join" {
                let latest = self.room_activity(&membership.room_id).await?.latest;
                latest.unwrap_or(membership.stream_pos)
            } else {
                membership.stream_pos
            };
            let facts = if with_facts { Some(self.room_facts(membership).await?) } else { None };
            candidates.push(Candidate { membership, activity, facts });
        }
        candidates.sort_by(|a, b| {
            b.activity
                .cmp(&a.activity)
                .then_with(|| a.membership.room_id.cmp(&b.membership.room_id))
        });
        Ok(candidates)
    }

    /// A room's type and whether it is encrypted, as the user may know them: from the current
    /// state when joined, from the state at their membership otherwise.
    async fn room_facts(&self, membership: &MembershipRecord) -> Result<(Option<String>, bool)> {
        let group = if membership.membership == "join" {
            self.current_state_group(&membership.room_id).await?
        } else {
            match self.load_event(&membership.event_id).await? {
                Some(event) => event.record.state_after,
                None => return Ok((None, false)),
            }
        };
        let state = self.state_map(group).await?;
        let encrypted = state.contains_key(&(StateEventType::RoomEncryption, String::new()));
        let room_type = match self.state_event_in(group, &StateEventType::RoomCreate, "").await? {
            Some(create) => create.pdu.content_str("type"),
            None => None,
        };
        Ok((room_type, encrypted))
    }
}

#[cfg(test)]
mod tests {
    use ruma::uint;

    use super::*;

    #[test]
    fn ranges_select_inclusive_indices_within_the_list() {
        let all: Vec<usize> = indices_in_ranges(&[], 3).into_iter().collect();
        assert_eq!(all, vec![0, 1, 2]);
        let cut: Vec<usize> = indices_in_ranges(&[(uint!(0), uint!(1)), (uint!(5), uint!(9))], 7)
            .into_iter()
            .collect();
        assert_eq!(cut, vec![0, 1, 5, 6]);
        let overlapping: Vec<usize> =
            indices_in_ranges(&[(uint!(0), uint!(2)), (uint!(1), uint!(3))], 10)
                .into_iter()
                .collect();
        assert_eq!(overlapping, vec![0, 1, 2, 3]);
        assert!(indices_in_ranges(&[(uint!(0), uint!(5))], 0).is_empty());
        assert!(indices_in_ranges(&[(uint!(4), uint!(5))], 3).is_empty());
    }
}
