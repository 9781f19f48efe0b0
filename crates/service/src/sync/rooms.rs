//! The rooms part of `/sync`: joined rooms (timeline, state, ephemeral events, summary and
//! unread counts), invites, knocks and leaves.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use rhizome_core::Result;
use rhizome_room::StateMap;
use rhizome_storage::{Direction, MembershipRecord, ReceiptRecord, StateGroupId, UnreadCounts};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::LazyLoadOptions,
        sync::sync_events::{UnreadNotificationsCount, v3},
    },
    events::StateEventType,
};
use serde_json::json;

use crate::{
    Requester, Services,
    invite_filter::InviteRule,
    rooms::{
        cache::LoadedEvent,
        format::{Format, raw},
        read::pagination_token,
    },
    sync::{SyncRequest, SyncToken, Window, filter, receipt_content},
};

/// The timeline limit when the filter sets none.
const DEFAULT_TIMELINE_LIMIT: usize = 10;

/// The state types shown in invites and knocks.
const STRIPPED_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// How many timeline events a room gets: the filter's limit (0 is none at all, the state
/// alone), at most 500.
fn timeline_limit(request: &SyncRequest) -> usize {
    request
        .filter
        .room
        .timeline
        .limit
        .map(|limit| usize::try_from(u64::from(limit)).unwrap_or(usize::MAX))
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .min(500)
}

/// How many events a timeline's first read asks for: one more than it shows, to tell whether
/// it is limited.
fn timeline_batch(limit: usize) -> i64 {
    i64::try_from(limit + 1).unwrap_or(501)
}

/// Where a joined room's timeline stops going back: at `since`, unless it starts at the
/// beginning.
fn timeline_lower(window: Window, plan: &JoinedPlan) -> Option<i64> {
    if plan.from_start { None } else { window.since.map(|since| since.pos) }
}

/// The state events that pass the request's state filter.
fn passing_state_filter(
    request: &SyncRequest,
    events: Vec<Arc<LoadedEvent>>,
) -> Vec<Arc<LoadedEvent>> {
    let state_filter = &request.filter.room.state;
    events.into_iter().filter(|event| filter::room_event_passes(state_filter, &event.pdu)).collect()
}

/// How one joined room appears in a sync.
struct JoinedPlan {
    room_id: OwnedRoomId,
    /// Whether its timeline starts at the beginning (a first sync, or a room new to the
    /// client) rather than at `since`.
    from_start: bool,
    /// Whether it is given in full: state, all its receipts, typing, even without changes.
    full: bool,
}

/// What one room's timeline for a sync takes.
pub(super) struct TimelineQuery<'a> {
    /// The newest stream position to include.
    pub(super) upper: i64,
    /// The stream position to stop at (exclusive), if any.
    pub(super) lower: Option<i64>,
    /// The most events to return.
    pub(super) limit: usize,
    /// The timeline filter.
    pub(super) filter: &'a ruma::api::client::filter::RoomEventFilter,
    /// Senders whose messages are hidden.
    pub(super) ignored: &'a HashSet<OwnedUserId>,
    /// Whether the user is joined to the room now.
    pub(super) joined_now: bool,
    /// What a batch for many rooms already read for this one (see [`RoomPrefetch`]).
    pub(super) prefetched: Option<RoomPrefetch>,
}

/// What one statement for many rooms read ahead for one of them.
#[derive(Debug, Default)]
pub(super) struct RoomPrefetch {
    /// The room's newest events in the window, as `collect_timeline`'s first read would
    /// give them (newest first).
    pub(super) events: Vec<Arc<LoadedEvent>>,
    /// The room's current state group, when a state event in them makes it needed.
    pub(super) current_group: Option<StateGroupId>,
}

/// How many rooms one batch of a sync reads ahead for: enough to make the per-room reads a
/// few statements, few enough that their state maps stay in the cache until used.
pub(super) const ROOMS_PER_BATCH: usize = 50;

/// One room's timeline for a sync.
pub(super) struct TimelinePart {
    /// The events, oldest first.
    pub(super) events: Vec<Arc<LoadedEvent>>,
    /// Whether more events came before them (since the lower bound, if any).
    pub(super) limited: bool,
    /// The token to page back from the first event.
    pub(super) prev_batch: String,
}

impl Services {
    pub(super) async fn sync_rooms(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        memberships: &[MembershipRecord],
        response: &mut v3::Response,
    ) -> Result<()> {
        let ignored = self.ignored_users(&requester.user_id).await?;
        let since_pos = window.since.map(|since| since.pos);
        let joined_ids = self
            .sync_other_rooms(requester, request, window, memberships, &ignored, response)
            .await?;
        let joined = self.plan_joined(requester, request, window, memberships, &joined_ids).await?;
        let changed_rooms: HashSet<OwnedRoomId> = match since_pos {
            Some(since) if !request.full_state => self
                .store
                .rooms_with_events_between(&joined_ids, since, window.upper.pos)
                .await?
                .into_iter()
                .collect(),
            _ => joined_ids.iter().cloned().collect(),
        };
        let mut receipts = self.sync_receipts(requester, request, window, &joined).await?;
        let mut with_counts = Vec::new();
        let format =
            Format { viewer: Some(requester), with_room_id: false, bundle_relations: true };
        for batch in joined.chunks(ROOMS_PER_BATCH) {
            let shown: Vec<&JoinedPlan> = batch
                .iter()
                .filter(|plan| plan.full || changed_rooms.contains(&plan.room_id))
                .collect();
            let mut prefetched = self.prefetch_rooms(requester, request, window, &shown).await?;
            // First each room's timeline and the state it needs, then one read for what all
            // of them need (relations, state events), then the rooms as clients see them.
            let mut parts: HashMap<
                &RoomId,
                (TimelinePart, Vec<OwnedEventId>, Option<StateGroupId>),
            > = HashMap::with_capacity(shown.len());
            for plan in &shown {
                let prefetch = prefetched.remove(&plan.room_id);
                let newest =
                    prefetch.as_ref().and_then(|p| p.events.first()).map(|e| e.record.state_after);
                let timeline = self
                    .timeline_part(requester, request, window, plan, &ignored, prefetch)
                    .await?;
                let state = self
                    .state_ids_part(requester, request, window, &plan.room_id, &timeline, plan.full)
                    .await?;
                parts.insert(&plan.room_id, (timeline, state, newest));
            }
            let related = self
                .events_with_relations(
                    parts.values().flat_map(|(timeline, _, _)| timeline.events.iter()),
                )
                .await?;
            let state_ids: Vec<OwnedEventId> =
                parts.values().flat_map(|(_, ids, _)| ids.iter().cloned()).collect();
            let state_events: HashMap<OwnedEventId, Arc<LoadedEvent>> = self
                .load_events(&state_ids)
                .await?
                .into_iter()
                .map(|event| (event.pdu.event_id.clone(), event))
                .collect();
            for plan in batch {
                let room_id = &plan.room_id;
                let mut room = v3::JoinedRoom::new();
                let mut has_data = false;
                if let Some((timeline, state_ids, newest)) = parts.remove::<RoomId>(room_id) {
                    let state = passing_state_filter(
                        request,
                        state_ids.iter().filter_map(|id| state_events.get(id).cloned()).collect(),
                    );
                    // New events the filters hide entirely are no news.
                    has_data = !timeline.events.is_empty() || !state.is_empty() || timeline.limited;
                    room.timeline.events = self
                        .format_events_related(&timeline.events, format, &related)
                        .await?
                        .into_iter()
                        .map(raw)
                        .collect();
                    room.timeline.limited = timeline.limited;
                    room.timeline.prev_batch = Some(timeline.prev_batch);
                    let state_events = self
                        .format_events_related(&state, format, &related)
                        .await?
                        .into_iter()
                        .map(raw)
                        .collect();
                    room.state = if request.use_state_after {
                        v3::State::After(v3::StateEvents::with_events(state_events))
                    } else {
                        v3::State::Before(v3::StateEvents::with_events(state_events))
                    };
                    self.fill_summary(&mut room, room_id, &requester.user_id, window, newest)
                        .await?;
                }
                let room_receipts = receipts.remove(room_id).unwrap_or_default();
                self.fill_ephemeral(&mut room, request, window, plan, room_receipts)?;
                has_data |= !room.ephemeral.events.is_empty();
                if has_data || plan.full {
                    with_counts.push(room_id);
                    response.rooms.join.insert(room_id.clone(), room);
                }
            }
        }
        self.set_unread_counts(response, &requester.user_id, &with_counts, request).await
    }

    /// Reads ahead for the joined rooms of one batch of a sync: see
    /// [`Services::prefetch_timelines`].
    async fn prefetch_rooms(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        plans: &[&JoinedPlan],
    ) -> Result<HashMap<OwnedRoomId, RoomPrefetch>> {
        let rooms: Vec<(&RoomId, Option<i64>)> = plans
            .iter()
            .map(|plan| (plan.room_id.as_ref(), timeline_lower(window, plan)))
            .collect();
        self.prefetch_timelines(
            &requester.user_id,
            &rooms,
            window.upper.pos,
            timeline_limit(request),
        )
        .await
    }

    /// Reads ahead, for several rooms at once, what their timelines need (`collect_timeline`
    /// with `upper`, each room's lower bound and `limit`): each room's newest events (one
    /// statement for all), the current state group of those whose events change the state,
    /// the state maps at every event, and the events formatting and history visibility look
    /// up in them (the viewer's membership, the history visibility). A single room (a woken
    /// sync's usual news) is left to the per-room reads, which the store's memory answers.
    pub(super) async fn prefetch_timelines(
        &self,
        viewer: &UserId,
        rooms: &[(&RoomId, Option<i64>)],
        upper: i64,
        limit: usize,
    ) -> Result<HashMap<OwnedRoomId, RoomPrefetch>> {
        if rooms.len() < 2 {
            return Ok(HashMap::new());
        }
        let batch = timeline_batch(limit);
        let upper = upper.saturating_add(1);
        let mut by_lower: HashMap<Option<i64>, Vec<&RoomId>> = HashMap::new();
        for (room_id, lower) in rooms {
            by_lower.entry(*lower).or_default().push(room_id);
        }
        let mut ids: HashMap<OwnedRoomId, Vec<OwnedEventId>> = HashMap::new();
        for (lower, rooms) in by_lower {
            ids.extend(self.store.latest_room_event_ids(&rooms, upper, lower, batch).await?);
        }
        // The events from the cache, those it lacks in one read.
        let all: Vec<OwnedEventId> = ids.values().flatten().cloned().collect();
        let loaded: HashMap<OwnedEventId, Arc<LoadedEvent>> = self
            .load_events(&all)
            .await?
            .into_iter()
            .map(|event| (event.pdu.event_id.clone(), event))
            .collect();
        // A room whose events are not all there (gone since the IDs were read) is left to the
        // per-room reads.
        let events: HashMap<OwnedRoomId, Vec<Arc<LoadedEvent>>> = ids
            .into_iter()
            .filter_map(|(room_id, ids)| {
                let events: Vec<Arc<LoadedEvent>> =
                    ids.iter().filter_map(|id| loaded.get(id).cloned()).collect();
                (events.len() == ids.len()).then_some((room_id, events))
            })
            .collect();
        // Only rooms with a state event among them need their current state (to show the
        // state events that make it up).
        let with_state: Vec<&RoomId> = events
            .iter()
            .filter(|(_, events)| events.iter().any(|event| event.pdu.is_state()))
            .map(|(room_id, _)| room_id.as_ref())
            .collect();
        let current = if with_state.is_empty() {
            HashMap::new()
        } else {
            self.store.current_state_groups(&with_state).await?
        };
        let mut groups: Vec<StateGroupId> = events
            .values()
            .flatten()
            .flat_map(|event| [event.record.state_before, event.record.state_after])
            .chain(current.values().copied())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        self.prefetch_state_maps(&groups).await?;
        let looked_up = [
            (StateEventType::RoomMember, viewer.to_string()),
            (StateEventType::RoomHistoryVisibility, String::new()),
        ];
        let mut wanted: HashSet<OwnedEventId> = HashSet::new();
        for group in groups {
            let state = self.state_map(group).await?;
            wanted.extend(looked_up.iter().filter_map(|slot| state.get(slot).cloned()));
        }
        let wanted: Vec<OwnedEventId> = wanted.into_iter().collect();
        self.load_events(&wanted).await?;
        Ok(events
            .into_iter()
            .map(|(room_id, events)| {
                let current_group = current.get(&room_id).copied();
                (room_id, RoomPrefetch { events, current_group })
            })
            .collect())
    }

    /// Invites, knocks and leaves of this sync into `response`; returns the joined rooms.
    async fn sync_other_rooms(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        memberships: &[MembershipRecord],
        ignored: &HashSet<OwnedUserId>,
        response: &mut v3::Response,
    ) -> Result<Vec<OwnedRoomId>> {
        // Read only when there is an invite to show (a woken sync seldom has one).
        let mut invite_filter = None;
        let since_pos = window.since.map(|since| since.pos);
        let mut joined_ids: Vec<OwnedRoomId> = Vec::new();
        for membership in memberships {
            if membership.stream_pos > window.upper.pos
                || !filter::room_filter_passes(&request.filter.room, &membership.room_id)
            {
                continue;
            }
            let changed_in_window = since_pos.is_none_or(|since| membership.stream_pos > since);
            match membership.membership.as_str() {
                "join" => joined_ids.push(membership.room_id.clone()),
                "invite" if changed_in_window => {
                    let inviter = self.membership_sender(membership).await?;
                    if ignored.contains(&inviter) {
                        continue;
                    }
                    let invite_filter = match &mut invite_filter {
                        Some(filter) => filter,
                        None => invite_filter.insert(self.invite_filter(&requester.user_id).await?),
                    };
                    if invite_filter.rule(&inviter) != InviteRule::Allow {
                        continue;
                    }
                    let mut room = v3::InvitedRoom::new();
                    room.invite_state.events =
                        self.stripped_state(membership).await?.into_iter().map(raw).collect();
                    response.rooms.invite.insert(membership.room_id.clone(), room);
                }
                "knock" if changed_in_window => {
                    let mut room = v3::KnockedRoom::new();
                    room.knock_state.events =
                        self.stripped_state(membership).await?.into_iter().map(raw).collect();
                    response.rooms.knock.insert(membership.room_id.clone(), room);
                }
                "leave" | "ban"
                    if changed_in_window
                        && (since_pos.is_some() || request.filter.room.include_leave) =>
                {
                    if let Some(room) =
                        self.left_room(requester, request, window, membership).await?
                    {
                        response.rooms.leave.insert(membership.room_id.clone(), room);
                    }
                }
                _ => {}
            }
        }
        if let Some(since) = since_pos {
            // A room left in this window and forgotten since still shows the leave once.
            for change in self.store.membership_changes_since(&requester.user_id, since).await? {
                let forgotten = matches!(change.membership.as_str(), "leave" | "ban")
                    && change.stream_pos <= window.upper.pos
                    && !memberships.iter().any(|member| member.room_id == change.room_id)
                    && filter::room_filter_passes(&request.filter.room, &change.room_id);
                if forgotten
                    && let Some(room) = self.left_room(requester, request, window, &change).await?
                {
                    response.rooms.leave.insert(change.room_id.clone(), room);
                }
            }
        }
        Ok(joined_ids)
    }

    /// Which joined rooms this sync gives in full (the first sync, full state, or a room the
    /// user joined since the last one) and whose timeline starts at the beginning.
    async fn plan_joined(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        memberships: &[MembershipRecord],
        joined_ids: &[OwnedRoomId],
    ) -> Result<Vec<JoinedPlan>> {
        let since_pos = window.since.map(|since| since.pos);
        // Looked up by room (a user in 1,000 rooms made a million comparisons here).
        let memberships: HashMap<&RoomId, &MembershipRecord> =
            memberships.iter().map(|member| (member.room_id.as_ref(), member)).collect();
        let mut plans = Vec::with_capacity(joined_ids.len());
        for room_id in joined_ids {
            let membership = memberships.get::<&RoomId>(&&**room_id).copied();
            let newly_joined = match (since_pos, membership) {
                (Some(since), Some(member)) if member.stream_pos > since => {
                    !self.was_joined_at(room_id, &requester.user_id, since).await?
                }
                _ => false,
            };
            // Full state never resets the timeline, which starts at `since` unless the room is
            // new to this client.
            let from_start = since_pos.is_none() || newly_joined;
            let full = from_start || request.full_state;
            plans.push(JoinedPlan { room_id: room_id.clone(), from_start, full });
        }
        Ok(plans)
    }

    /// The receipts each joined room shows, in at most two queries for all rooms: all of them
    /// in the rooms given in full, those changed since the last sync in the others. Private
    /// receipts only the user's own.
    async fn sync_receipts(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        joined: &[JoinedPlan],
    ) -> Result<HashMap<OwnedRoomId, Vec<ReceiptRecord>>> {
        let full: Vec<&RoomId> =
            joined.iter().filter(|plan| plan.full).map(|plan| plan.room_id.as_ref()).collect();
        if !filter::room_event_type_passes(&request.filter.room.ephemeral, "m.receipt") {
            // The filter shows no receipt: none is read.
            return Ok(HashMap::new());
        }
        let mut found = if full.is_empty() {
            Vec::new()
        } else {
            self.store.receipts_since(&full, None).await?
        };
        if let Some(since) = window.since {
            let others: Vec<&RoomId> =
                joined.iter().filter(|plan| !plan.full).map(|plan| plan.room_id.as_ref()).collect();
            if !others.is_empty() {
                found.extend(self.store.receipts_since(&others, Some(since.pos)).await?);
            }
        }
        let mut by_room: HashMap<OwnedRoomId, Vec<ReceiptRecord>> = HashMap::new();
        for receipt in found {
            if receipt.stream_pos <= window.upper.pos
                && (receipt.receipt_type != "m.read.private"
                    || receipt.user_id == requester.user_id)
            {
                by_room.entry(receipt.room_id.clone()).or_default().push(receipt);
            }
        }
        Ok(by_room)
    }

    /// A joined room's ephemeral events: its receipts and who is typing.
    fn fill_ephemeral(
        &self,
        room: &mut v3::JoinedRoom,
        request: &SyncRequest,
        window: Window,
        plan: &JoinedPlan,
        receipts: Vec<ReceiptRecord>,
    ) -> Result<()> {
        let ephemeral_filter = &request.filter.room.ephemeral;
        if !receipts.is_empty() && filter::room_event_type_passes(ephemeral_filter, "m.receipt") {
            let event = json!({ "type": "m.receipt", "content": receipt_content(&receipts) });
            room.ephemeral.events.push(raw(serde_json::value::to_raw_value(&event)?));
        }
        let typing_since = if plan.full { None } else { window.since.map(|since| since.ephemeral) };
        if let Some(users) = self.typing_since(&plan.room_id, typing_since)
            && filter::room_event_type_passes(ephemeral_filter, "m.typing")
        {
            let event = json!({ "type": "m.typing", "content": { "user_ids": users } });
            room.ephemeral.events.push(raw(serde_json::value::to_raw_value(&event)?));
        }
        Ok(())
    }

    /// The joined rooms' unread counts: in all, for every room in one query, or (when the
    /// filter asks for `unread_thread_notifications`) of the main timeline and of each thread
    /// apart.
    async fn set_unread_counts(
        &self,
        response: &mut v3::Response,
        user_id: &UserId,
        room_ids: &[&OwnedRoomId],
        request: &SyncRequest,
    ) -> Result<()> {
        let count = |counts: UnreadCounts| {
            let mut count = UnreadNotificationsCount::new();
            count.notification_count = Some(UInt::new_saturating(counts.notifications));
            count.highlight_count = Some(UInt::new_saturating(counts.highlights));
            count
        };
        if !request.filter.room.timeline.unread_thread_notifications {
            let ids: Vec<&RoomId> = room_ids.iter().map(|room_id| room_id.as_ref()).collect();
            let mut counts = self.store.unread_counts_in_rooms(user_id, &ids).await?;
            for (room_id, room) in response.rooms.join.iter_mut() {
                room.unread_notifications = count(counts.remove(room_id).unwrap_or_default());
            }
            return Ok(());
        }
        for room_id in room_ids {
            let Some(room) = response.rooms.join.get_mut(*room_id) else { continue };
            room.unread_notifications = count(UnreadCounts::default());
            for (thread, counts) in self.store.unread_counts_by_thread(user_id, room_id).await? {
                match thread {
                    None => room.unread_notifications = count(counts),
                    Some(root) => {
                        room.unread_thread_notifications.insert(root, count(counts));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the user was joined to the room at a stream position.
    async fn was_joined_at(
        &self,
        room_id: &RoomId,
        user_id: &ruma::UserId,
        pos: i64,
    ) -> Result<bool> {
        let Some(event) = self.store.last_event_at(room_id, pos).await? else { return Ok(false) };
        let member = self
            .state_event_in(event.state_after, &StateEventType::RoomMember, user_id.as_str())
            .await?;
        Ok(member.and_then(|member| member.pdu.content_str("membership")).as_deref()
            == Some("join"))
    }

    pub(super) async fn membership_sender(
        &self,
        membership: &MembershipRecord,
    ) -> Result<OwnedUserId> {
        Ok(self
            .load_event(&membership.event_id)
            .await?
            .map(|event| event.pdu.sender.clone())
            .unwrap_or_else(|| membership.user_id.clone()))
    }

    /// The stripped state of a room for an invite or knock, with the membership event itself
    /// and, for an invite, the inviter's own member event (clients show who invited whom from
    /// it, and accept keys shared on invite only from the inviter).
    pub(super) async fn stripped_state(
        &self,
        membership: &MembershipRecord,
    ) -> Result<Vec<Box<serde_json::value::RawValue>>> {
        let Some(member_event) = self.load_event(&membership.event_id).await? else {
            return Ok(Vec::new());
        };
        if member_event.record.outlier {
            // An invite from a room this server is not in carries the room's stripped state,
            // the invite itself included.
            let stored = self.store.invite_state(&member_event.pdu.event_id).await?;
            let events: Vec<Box<serde_json::value::RawValue>> = stored
                .and_then(|json| serde_json::from_str(&json).ok())
                .unwrap_or_else(|| vec![member_event.pdu.stripped_state_event()]);
            return Ok(events);
        }
        let state = self.state_map(member_event.record.state_after).await?;
        let mut ids: Vec<OwnedEventId> = STRIPPED_STATE_TYPES
            .iter()
            .filter_map(|kind| state.get(&(StateEventType::from(*kind), String::new())).cloned())
            .collect();
        if member_event.pdu.sender != membership.user_id
            && let Some(inviter) = state
                .get(&(StateEventType::RoomMember, member_event.pdu.sender.as_str().to_owned()))
        {
            ids.push(inviter.clone());
        }
        ids.push(member_event.pdu.event_id.clone());
        let events = self.load_events(&ids).await?;
        Ok(events.iter().map(|event| event.pdu.stripped_state_event()).collect())
    }

    /// The timeline of a room for this sync.
    async fn timeline_part(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        plan: &JoinedPlan,
        ignored: &HashSet<OwnedUserId>,
        prefetched: Option<RoomPrefetch>,
    ) -> Result<TimelinePart> {
        let query = TimelineQuery {
            upper: window.upper.pos,
            lower: timeline_lower(window, plan),
            limit: timeline_limit(request),
            filter: &request.filter.room.timeline,
            ignored,
            joined_now: true,
            prefetched,
        };
        let mut part = self.collect_timeline(requester, &plan.room_id, query).await?;
        // A limited timeline continues just before its first event. One that is complete
        // names the point it ends at, as Synapse does: `/members?at=` then gives the members
        // as the client has them, and paging back from it merely shows the same events again.
        if !part.limited {
            part.prev_batch = pagination_token(window.upper.pos);
        }
        Ok(part)
    }

    /// The newest `limit` events at or before `upper` (and after `lower`) that pass.
    pub(super) async fn collect_timeline(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        query: TimelineQuery<'_>,
    ) -> Result<TimelinePart> {
        let TimelineQuery {
            upper,
            lower,
            limit,
            filter: timeline_filter,
            ignored,
            joined_now,
            prefetched,
        } = query;
        let (mut first, current_group) = match prefetched {
            Some(prefetch) => (Some(prefetch.events), prefetch.current_group),
            None => (None, None),
        };
        let mut collected: Vec<Arc<LoadedEvent>> = Vec::new();
        let mut from = upper.saturating_add(1);
        let mut exhausted = false;
        let batch = timeline_batch(limit);
        while collected.len() <= limit {
            let events = match first.take() {
                Some(events) => events,
                None => {
                    let dropped = self.events_dropped();
                    let records = self
                        .store
                        .room_events(room_id, from, lower, Direction::Backward, batch)
                        .await?;
                    self.loaded_from_records(dropped, records).await?
                }
            };
            if events.len() < usize::try_from(batch).unwrap_or(usize::MAX) {
                exhausted = true;
            }
            let Some(last) = events.last() else { break };
            from = last.record.stream_pos;
            let events: Vec<_> = events
                .into_iter()
                .filter(|event| filter::room_event_passes(timeline_filter, &event.pdu))
                .filter(|event| event.pdu.is_state() || !ignored.contains(&event.pdu.sender))
                .collect();
            collected.extend(
                self.visible_in_timeline(requester, room_id, events, joined_now, current_group)
                    .await?,
            );
            if exhausted {
                break;
            }
        }
        let limited = collected.len() > limit || (!exhausted && collected.len() >= limit);
        collected.truncate(limit);
        collected.reverse();
        let prev_batch = match collected.first() {
            Some(first) => pagination_token(first.record.stream_pos - 1),
            None => pagination_token(upper),
        };
        Ok(TimelinePart { events: collected, limited, prev_batch })
    }

    /// The events of a sync timeline the user may see. In a room they are joined to, state
    /// events that make up the current state are always shown (as Synapse does): a member who
    /// joined while the user was away under `joined` visibility still shows up on their return.
    async fn visible_in_timeline(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        events: Vec<Arc<LoadedEvent>>,
        joined_now: bool,
        current_group: Option<StateGroupId>,
    ) -> Result<Vec<Arc<LoadedEvent>>> {
        let current: HashSet<OwnedEventId> =
            if joined_now && events.iter().any(|e| e.pdu.is_state()) {
                let current = match current_group {
                    Some(group) => self.state_map(group).await?,
                    None => self.current_state(room_id).await?,
                };
                current.values().cloned().collect()
            } else {
                HashSet::new()
            };
        let visible: HashSet<OwnedEventId> = self
            .filter_visible_with(&requester.user_id, events.clone(), joined_now)
            .await?
            .iter()
            .map(|event| event.pdu.event_id.clone())
            .collect();
        Ok(events
            .into_iter()
            .filter(|event| {
                visible.contains(&event.pdu.event_id) || current.contains(&event.pdu.event_id)
            })
            .collect())
    }

    /// The IDs of the state events of a room for this sync (before the state filter).
    async fn state_ids_part(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        room_id: &RoomId,
        timeline: &TimelinePart,
        full: bool,
    ) -> Result<Vec<OwnedEventId>> {
        // The state at the point the client needs: before the timeline (or after it).
        let target_group: StateGroupId =
            match (request.use_state_after, timeline.events.first(), timeline.events.last()) {
                (false, Some(first), _) => first.record.state_before,
                (true, _, Some(last)) => last.record.state_after,
                _ => match self.store.last_event_at(room_id, window.upper.pos).await? {
                    Some(event) => event.state_after,
                    None => return Ok(Vec::new()),
                },
            };
        let target = self.state_map(target_group).await?;
        let since_group = match (full, window.since) {
            (false, Some(since)) => {
                self.store.last_event_at(room_id, since.pos).await?.map(|event| event.state_after)
            }
            _ => None,
        };
        let since_state: Arc<StateMap> = match since_group {
            Some(group) if group == target_group => target.clone(),
            Some(group) => self.state_map(group).await?,
            None => Arc::new(StateMap::new()),
        };
        let lazy = !request.filter.room.state.lazy_load_options.is_disabled();
        // Members the device already has are left out of incremental syncs, unless asked for.
        let dedupe = match (full, window.since, &request.filter.room.state.lazy_load_options) {
            (false, Some(since), LazyLoadOptions::Enabled { include_redundant_members: false }) => {
                Some(since)
            }
            _ => None,
        };
        let in_timeline: HashSet<&OwnedEventId> = if request.use_state_after {
            HashSet::new()
        } else {
            timeline.events.iter().map(|event| &event.pdu.event_id).collect()
        };
        let wanted_members: HashSet<String> = timeline
            .events
            .iter()
            .map(|event| event.pdu.sender.to_string())
            .chain(std::iter::once(requester.user_id.to_string()))
            .collect();
        let wanted = |key: &String, id: &OwnedEventId| {
            wanted_members.contains(key)
                && dedupe
                    .is_none_or(|since| !self.lazy_members.has(requester, room_id, key, id, since))
        };
        // Every change since the last sync that the timeline does not show: those of a gap,
        // those a timeline filter hides, and those state resolution made.
        if !lazy {
            return Ok(target
                .iter()
                .filter(|(pair, id)| {
                    !in_timeline.contains(id) && since_state.get(*pair) != Some(*id)
                })
                .map(|(_, id)| id.clone())
                .collect());
        }
        // Lazy-loaded members: those the timeline needs, looked up by key. A big room's state
        // is mostly members, so they are not walked (a fresh sync of a room of 1,000 members
        // hashed every member's key and event ID here, twice).
        let members: Vec<(String, OwnedEventId)> = wanted_members
            .iter()
            .filter_map(|key| {
                let id = target.get(&(StateEventType::RoomMember, key.clone()))?;
                (!in_timeline.contains(id) && wanted(key, id)).then(|| (key.clone(), id.clone()))
            })
            .collect();
        let mut ids: Vec<OwnedEventId> = members.iter().map(|(_, id)| id.clone()).collect();
        if since_group != Some(target_group) {
            // The rest of the state (new messages only, the common case of a woken sync,
            // leave it unchanged).
            ids.extend(
                target
                    .iter()
                    .filter(|(pair, id)| {
                        pair.0 != StateEventType::RoomMember
                            && since_state.get(*pair) != Some(*id)
                            && !in_timeline.contains(id)
                    })
                    .map(|(_, id)| id.clone()),
            );
        }
        self.record_lazy_members(requester, room_id, members, timeline, window);
        Ok(ids)
    }

    /// Records the members this response gives the device: those in its state (`in_state`:
    /// state key and event) and its timeline.
    fn record_lazy_members(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        in_state: Vec<(String, OwnedEventId)>,
        timeline: &TimelinePart,
        window: Window,
    ) {
        let sent = in_state.into_iter().chain(timeline.events.iter().filter_map(|event| {
            let key = event.pdu.state_key.as_ref()?;
            (event.pdu.kind.to_string() == "m.room.member")
                .then(|| (key.clone(), event.pdu.event_id.clone()))
        }));
        self.lazy_members.record(requester, room_id, sent, window.upper);
    }

    /// Room summary: heroes and member counts; heroes only for a room that, at the end of the
    /// sync's window, has neither a name nor a canonical alias.
    async fn fill_summary(
        &self,
        room: &mut v3::JoinedRoom,
        room_id: &RoomId,
        user_id: &ruma::UserId,
        window: Window,
        newest: Option<StateGroupId>,
    ) -> Result<()> {
        let members = self.room_memberships_cached(room_id).await?;
        let joined = members.iter().filter(|member| member.membership == "join").count();
        let invited = members.iter().filter(|member| member.membership == "invite").count();
        room.summary.joined_member_count =
            Some(UInt::new_saturating(u64::try_from(joined).unwrap_or(0)));
        room.summary.invited_member_count =
            Some(UInt::new_saturating(u64::try_from(invited).unwrap_or(0)));
        // The state after the window's last event (read ahead with the timeline, or the store
        // knows a room's latest events).
        let state = match newest {
            Some(group) => self.state_map(group).await?,
            None => match self.store.last_event_at(room_id, window.upper.pos).await? {
                Some(event) => self.state_map(event.state_after).await?,
                None => self.current_state(room_id).await?,
            },
        };
        let named = state.contains_key(&(StateEventType::RoomName, String::new()))
            || state.contains_key(&(StateEventType::RoomCanonicalAlias, String::new()));
        if !named {
            room.summary.heroes = members
                .iter()
                .filter(|member| {
                    matches!(member.membership.as_str(), "join" | "invite")
                        && member.user_id != user_id
                })
                .take(5)
                .map(|member| member.user_id.clone())
                .collect();
        }
        Ok(())
    }

    /// A room the user left (or was kicked or banned from) within this sync's window: what
    /// they could see until they left, and the state as it was then. A room the client never
    /// had as joined (joined and left between two syncs, or a first sync) comes whole.
    async fn left_room(
        &self,
        requester: &Requester,
        request: &SyncRequest,
        window: Window,
        membership: &MembershipRecord,
    ) -> Result<Option<v3::LeftRoom>> {
        let room_id = &membership.room_id;
        let since_pos = window.since.map(|since| since.pos);
        let from_start = match since_pos {
            Some(since) => !self.was_joined_at(room_id, &requester.user_id, since).await?,
            None => true,
        };
        let timeline = self
            .collect_timeline(
                requester,
                room_id,
                TimelineQuery {
                    upper: membership.stream_pos,
                    lower: if from_start { None } else { since_pos },
                    limit: timeline_limit(request),
                    filter: &request.filter.room.timeline,
                    ignored: &HashSet::new(),
                    joined_now: false,
                    prefetched: None,
                },
            )
            .await?;
        // The sync ends, for this room, at the leave.
        let until_leave = Window {
            since: window.since,
            upper: SyncToken { pos: membership.stream_pos, ephemeral: window.upper.ephemeral },
        };
        let full = from_start || request.full_state;
        let ids =
            self.state_ids_part(requester, request, until_leave, room_id, &timeline, full).await?;
        let state = passing_state_filter(request, self.load_events(&ids).await?);
        let format =
            Format { viewer: Some(requester), with_room_id: false, bundle_relations: true };
        let mut room = v3::LeftRoom::new();
        room.timeline.events =
            self.format_events(&timeline.events, format).await?.into_iter().map(raw).collect();
        room.timeline.limited = timeline.limited;
        room.timeline.prev_batch = Some(timeline.prev_batch);
        let state_events = self.format_events(&state, format).await?.into_iter().map(raw).collect();
        room.state = if request.use_state_after {
            v3::State::After(v3::StateEvents::with_events(state_events))
        } else {
            v3::State::Before(v3::StateEvents::with_events(state_events))
        };
        Ok(Some(room))
    }
}
