//! One room of a sliding sync response: stripped state for invites and knocks; for joined and
//! left rooms the timeline (through the history visibility rules), the required state that
//! changed (or all of it when the room is sent in full, `initial`), lazily loaded members, name,
//! avatar, heroes, member counts, unread counts and `bump_stamp`. A room the connection already
//! has is left out when nothing about it changed.

use std::{collections::BTreeSet, sync::Arc};

use rhizome_core::Result;
use rhizome_room::StateMap;
use rhizome_storage::{Direction, MembershipRecord, StreamPos};
use ruma::{
    JsOption, OwnedEventId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{filter::RoomEventFilter, sync::sync_events::v5},
    events::StateEventType,
};

use super::{Ctx, activity::BUMP_TYPES, connection::SentRoom, lists::Relevant, room_from};
use crate::{
    Services,
    rooms::{
        cache::LoadedEvent,
        format::{Format, raw},
        read::pagination_token,
    },
    sync::rooms::{RoomPrefetch, TimelinePart, TimelineQuery},
};

/// The member event type.
const MEMBER: &str = "m.room.member";

/// How many heroes a room without a name gets.
const MAX_HEROES: usize = 5;

/// How many events beyond `timeline_limit` a timeline may reach back to hold the room's latest
/// bump event.
const BUMP_REACH: usize = 10;

/// Whether an event moves the room's `bump_stamp`.
fn is_bump(event: &LoadedEvent) -> bool {
    BUMP_TYPES.contains(&event.pdu.kind.to_string().as_str())
}

/// What was decided for one room.
pub(super) struct RoomOutcome {
    /// The room's entry in the response, if anything about it is new to the connection.
    pub(super) room: Option<v5::response::Room>,
    /// What the connection has of it now.
    pub(super) sent: SentRoom,
    /// The events of its timeline, when it was sent in full.
    pub(super) full_timeline: Option<Vec<OwnedEventId>>,
}

/// One room to compute.
struct RoomJob<'a> {
    room_id: &'a RoomId,
    relevant: &'a Relevant,
    sent: Option<&'a SentRoom>,
    /// Where its changes are sent from (`None`: in full).
    from: Option<StreamPos>,
    /// The last stream position the user may see of it.
    bound: StreamPos,
    is_dm: bool,
    own_receipt: bool,
    /// A room the user left without having been joined right before (a rejected invite or
    /// knock, a ban of an invitee): only their own membership is sent of its state.
    restricted: bool,
}

/// The room's state at the end of the response and where the connection last had it.
struct StateDiff {
    current: Arc<StateMap>,
    previous: Arc<StateMap>,
}

impl StateDiff {
    fn changed(&self, slot: &(StateEventType, String)) -> bool {
        self.current.get(slot) != self.previous.get(slot)
    }

    fn members_changed(&self) -> bool {
        self.current.iter().any(|(slot, id)| {
            slot.0 == StateEventType::RoomMember && self.previous.get(slot) != Some(id)
        })
    }
}

fn uint(value: usize) -> UInt {
    UInt::new_saturating(u64::try_from(value).unwrap_or(u64::MAX))
}

fn stream_uint(pos: StreamPos) -> UInt {
    UInt::new_saturating(u64::try_from(pos).unwrap_or(0))
}

/// The users the timeline's events need the membership of: senders and member event targets.
fn timeline_members(timeline: Option<&TimelinePart>) -> BTreeSet<OwnedUserId> {
    let mut users = BTreeSet::new();
    for event in timeline.map(|part| part.events.as_slice()).unwrap_or_default() {
        users.insert(event.pdu.sender.clone());
        if event.pdu.kind.to_string() == MEMBER
            && let Some(target) = event.pdu.state_key.as_deref()
            && let Ok(user_id) = UserId::parse(target)
        {
            users.insert(user_id);
        }
    }
    users
}

/// The state events to send and the lazily loaded members the connection has afterwards.
fn required_state_ids(
    job: &RoomJob<'_>,
    diff: &StateDiff,
    timeline: Option<&TimelinePart>,
) -> (Vec<OwnedEventId>, BTreeSet<OwnedUserId>) {
    let required = &job.relevant.config.required_state;
    let old = job.from.and(job.sent).map(|sent| &sent.required_state);
    let mut ids = Vec::new();
    let mut sent_members = BTreeSet::new();
    for (slot, id) in diff.current.iter() {
        let kind = slot.0.to_string();
        if required.matches(&kind, &slot.1)
            && (diff.changed(slot) || old.is_none_or(|old| !old.matches(&kind, &slot.1)))
        {
            ids.push(id.clone());
            if slot.0 == StateEventType::RoomMember {
                sent_members.insert(slot.1.clone());
            }
        }
    }
    let mut lazy: BTreeSet<OwnedUserId> = match (job.from, job.sent) {
        (Some(_), Some(sent)) => sent.lazy_members.clone(),
        _ => BTreeSet::new(),
    };
    if !required.lazy_members() {
        return (ids, BTreeSet::new());
    }
    // Members the client has but whose membership changed are stale unless sent again.
    lazy.retain(|user| {
        sent_members.contains(user.as_str())
            || !diff.changed(&(StateEventType::RoomMember, user.to_string()))
    });
    // Members sent for the explicit entries are on the client as well.
    lazy.extend(sent_members.iter().filter_map(|user| UserId::parse(user.as_str()).ok()));
    let needed = timeline_members(timeline);
    // Without a gap, every membership change is sent, keeping a full member list current.
    let gapless = job.from.is_some() && timeline.is_some_and(|part| !part.limited);
    for (slot, id) in diff.current.iter() {
        if slot.0 != StateEventType::RoomMember || sent_members.contains(&slot.1) {
            continue;
        }
        let Ok(user_id) = UserId::parse(slot.1.as_str()) else { continue };
        let sent_explicitly =
            old.is_some_and(|old| old.matches(MEMBER, &slot.1)) && !diff.changed(slot);
        let wanted = (needed.contains(&user_id) && !lazy.contains(&user_id) && !sent_explicitly)
            || (gapless && diff.changed(slot));
        if wanted {
            ids.push(id.clone());
            lazy.insert(user_id);
        }
    }
    (ids, lazy)
}

impl Services {
    /// Computes one selected room.
    pub(super) async fn sliding_room(
        &self,
        ctx: &Ctx<'_>,
        room_id: &RoomId,
        relevant: &Relevant,
        sent: Option<&SentRoom>,
        own_receipt: bool,
        prefetched: Option<RoomPrefetch>,
    ) -> Result<RoomOutcome> {
        let membership = &relevant.membership;
        let config = &relevant.config;
        let is_dm = ctx.direct.contains(room_id);
        let next = SentRoom {
            pos: ctx.upper.pos,
            typing_serial: ctx.upper.ephemeral,
            membership: membership.membership.clone(),
            timeline_limit: config.timeline_limit,
            required_state: config.required_state.clone(),
            lazy_members: BTreeSet::new(),
            is_dm,
        };
        let from = room_from(sent, membership);
        if matches!(membership.membership.as_str(), "invite" | "knock") {
            return self.stripped_room(membership, from.is_none(), sent, next).await;
        }
        let bound = if membership.membership == "join" {
            ctx.upper.pos
        } else {
            membership.stream_pos.min(ctx.upper.pos)
        };
        let mut job =
            RoomJob { room_id, relevant, sent, from, bound, is_dm, own_receipt, restricted: false };
        if let (Some(sent), Some(from)) = (sent, from) {
            let expanded = config.timeline_limit > sent.timeline_limit
                || !sent.required_state.covers(&config.required_state);
            if !expanded && !self.room_changed(&job, from).await? {
                let next = SentRoom {
                    timeline_limit: sent.timeline_limit,
                    lazy_members: sent.lazy_members.clone(),
                    ..next
                };
                return Ok(RoomOutcome { room: None, sent: next, full_timeline: None });
            }
        }
        job.restricted = membership.membership != "join" && !self.joined_before(membership).await?;
        self.full_room(ctx, &job, next, prefetched).await
    }

    /// Whether the user was joined right before their current membership event.
    async fn joined_before(&self, membership: &MembershipRecord) -> Result<bool> {
        let Some(event) = self.load_event(&membership.event_id).await? else { return Ok(false) };
        let member = self
            .state_event_in(
                event.record.state_before,
                &StateEventType::RoomMember,
                membership.user_id.as_str(),
            )
            .await?;
        Ok(member.and_then(|member| member.pdu.content_str("membership")).as_deref()
            == Some("join"))
    }

    /// Whether anything about a room the connection has changed after `from`.
    async fn room_changed(&self, job: &RoomJob<'_>, from: StreamPos) -> Result<bool> {
        let dm_changed = job.sent.is_some_and(|sent| sent.is_dm != job.is_dm);
        if job.own_receipt || dm_changed || job.relevant.membership.stream_pos > from {
            return Ok(true);
        }
        if from >= job.bound {
            return Ok(false);
        }
        let latest = self.room_activity(job.room_id).await?.latest;
        Ok(latest.is_none_or(|latest| latest > from))
    }

    /// An invite or knock: stripped state, once (and again when its membership changes).
    async fn stripped_room(
        &self,
        membership: &MembershipRecord,
        initial: bool,
        sent: Option<&SentRoom>,
        next: SentRoom,
    ) -> Result<RoomOutcome> {
        let mut room = v5::response::Room::new();
        if initial {
            room.initial = Some(true);
            room.invite_state =
                Some(self.stripped_state(membership).await?.into_iter().map(raw).collect());
            room.bump_stamp = Some(stream_uint(membership.stream_pos));
            room.is_dm = next.is_dm.then_some(true);
        } else if sent.is_some_and(|sent| sent.is_dm != next.is_dm) {
            room.is_dm = Some(next.is_dm);
        } else {
            return Ok(RoomOutcome { room: None, sent: next, full_timeline: None });
        }
        Ok(RoomOutcome { room: Some(room), sent: next, full_timeline: None })
    }

    /// A joined or left room with its timeline, state and metadata.
    async fn full_room(
        &self,
        ctx: &Ctx<'_>,
        job: &RoomJob<'_>,
        mut next: SentRoom,
        prefetched: Option<RoomPrefetch>,
    ) -> Result<RoomOutcome> {
        let config = &job.relevant.config;
        let expanded_timeline = job.from.is_some()
            && job.sent.is_some_and(|sent| config.timeline_limit > sent.timeline_limit);
        let timeline = if config.timeline_limit > 0 {
            let lower = if expanded_timeline { None } else { job.from };
            let filter = RoomEventFilter::default();
            let query = TimelineQuery {
                upper: job.bound,
                lower,
                limit: config.timeline_limit,
                filter: &filter,
                ignored: &ctx.ignored,
                joined_now: job.relevant.membership.membership == "join",
                // Read ahead for a room new to the connection, whose timeline starts at the
                // beginning.
                prefetched: prefetched.filter(|_| lower.is_none()),
            };
            let part = self.collect_timeline(ctx.requester, job.room_id, query).await?;
            Some(self.reach_back_to_bump(ctx, job, lower, part).await?)
        } else {
            None
        };
        let Some(at_bound) = self.store.last_event_at(job.room_id, job.bound).await? else {
            return Ok(RoomOutcome { room: None, sent: next, full_timeline: None });
        };
        let current = self.state_map(at_bound.state_after).await?;
        let previous = match job.from {
            Some(from) => match self.store.last_event_at(job.room_id, from).await? {
                Some(event) => self.state_map(event.state_after).await?,
                None => Arc::new(StateMap::new()),
            },
            None => Arc::new(StateMap::new()),
        };
        let diff = StateDiff { current, previous };
        let (state_ids, lazy_members) = if job.restricted {
            let own = (StateEventType::RoomMember, ctx.requester.user_id.to_string());
            let id = diff.current.get(&own).filter(|_| diff.changed(&own)).cloned();
            (id.into_iter().collect(), BTreeSet::new())
        } else {
            required_state_ids(job, &diff, timeline.as_ref())
        };
        next.lazy_members = lazy_members;
        let mut room = v5::response::Room::new();
        let meta_changed = self.fill_room_meta(ctx, job, &diff, &mut room).await?;
        let format =
            Format { viewer: Some(ctx.requester), with_room_id: false, bundle_relations: true };
        let state_events = self.load_events(&state_ids).await?;
        room.required_state =
            self.format_events(&state_events, format).await?.into_iter().map(raw).collect();
        let mut full_timeline = None;
        if let Some(part) = &timeline {
            room.timeline =
                self.format_events(&part.events, format).await?.into_iter().map(raw).collect();
            room.limited = part.limited;
            room.prev_batch = Some(part.prev_batch.clone());
            if let Some(since) = ctx.since {
                let live = part.events.iter().filter(|event| event.record.stream_pos > since.pos);
                room.num_live = Some(uint(live.count()));
            }
            if job.from.is_some() && !part.limited {
                next.timeline_limit =
                    job.sent.map_or(0, |sent| sent.timeline_limit).max(next.timeline_limit);
            }
            if job.from.is_none() {
                full_timeline =
                    Some(part.events.iter().map(|event| event.pdu.event_id.clone()).collect());
            }
        } else if let Some(sent) = job.sent.filter(|_| job.from.is_some()) {
            next.timeline_limit = sent.timeline_limit;
        }
        if job.from.is_none() && full_timeline.is_none() {
            full_timeline = Some(Vec::new());
        }
        let send = job.from.is_none()
            || meta_changed
            || !room.timeline.is_empty()
            || !room.required_state.is_empty();
        Ok(RoomOutcome { room: send.then_some(room), sent: next, full_timeline })
    }

    /// A limited timeline without a bump event (a message, …), cut off before one the
    /// connection has not had, reaches back to it: a message and reactions to it arriving
    /// together with a `timeline_limit` of 1 would otherwise leave the client with the
    /// reactions only and the room's latest message unknown to it. Only for a bump event new
    /// since the connection's position, and at most [`BUMP_REACH`] events more than the limit.
    async fn reach_back_to_bump(
        &self,
        ctx: &Ctx<'_>,
        job: &RoomJob<'_>,
        lower: Option<StreamPos>,
        part: TimelinePart,
    ) -> Result<TimelinePart> {
        let Some(first) = part.events.first() else { return Ok(part) };
        if !part.limited || part.events.iter().any(|event| is_bump(event)) {
            return Ok(part);
        }
        let Some(bump) = self.bump_stamp_at(job.room_id, job.bound).await? else {
            return Ok(part);
        };
        // Only a bump event that arrived since the connection's position: a room sent in full
        // starts from its latest events, as the client asked.
        let Some(lower) = lower else { return Ok(part) };
        if bump >= first.record.stream_pos || bump <= lower {
            return Ok(part);
        }
        let filter = RoomEventFilter::default();
        let query = TimelineQuery {
            upper: job.bound,
            lower: Some(bump - 1),
            limit: job.relevant.config.timeline_limit.saturating_add(BUMP_REACH),
            filter: &filter,
            ignored: &ctx.ignored,
            joined_now: job.relevant.membership.membership == "join",
            prefetched: None,
        };
        let wide = self.collect_timeline(ctx.requester, job.room_id, query).await?;
        match wide.events.first() {
            Some(oldest) if oldest.record.stream_pos == bump && !wide.limited => {
                let prev_batch = pagination_token(bump - 1);
                // Whether anything between the connection's position and the bump event
                // is left out.
                let limited = !self
                    .store
                    .room_events(job.room_id, bump, Some(lower), Direction::Backward, 1)
                    .await?
                    .is_empty();
                Ok(TimelinePart { events: wide.events, limited, prev_batch })
            }
            _ => Ok(part),
        }
    }

    /// The position of the room's latest bump event at or before `bound`.
    async fn bump_stamp_at(&self, room_id: &RoomId, bound: StreamPos) -> Result<Option<StreamPos>> {
        match self.room_activity(room_id).await?.bump {
            Some(bump) if bump <= bound => Ok(Some(bump)),
            Some(_) => Ok(self.store.last_event_of_types(room_id, BUMP_TYPES, bound).await?),
            None => Ok(None),
        }
    }

    /// Name, avatar, heroes, counts, `is_dm`, `initial` and `bump_stamp`; whether any of them is
    /// news to the connection.
    async fn fill_room_meta(
        &self,
        ctx: &Ctx<'_>,
        job: &RoomJob<'_>,
        diff: &StateDiff,
        room: &mut v5::response::Room,
    ) -> Result<bool> {
        let initial = job.from.is_none();
        let joined = job.relevant.membership.membership == "join";
        let mut changed = initial;
        if initial {
            room.initial = Some(true);
            room.is_dm = job.is_dm.then_some(true);
        } else if job.sent.is_some_and(|sent| sent.is_dm != job.is_dm) {
            room.is_dm = Some(job.is_dm);
            changed = true;
        }
        if job.restricted {
            room.bump_stamp = Some(stream_uint(job.relevant.membership.stream_pos));
            return Ok(changed);
        }
        let name_slot = (StateEventType::RoomName, String::new());
        let name = match diff.current.get(&name_slot) {
            Some(id) => self
                .load_event(id)
                .await?
                .and_then(|event| event.pdu.content_str("name"))
                .filter(|name| !name.is_empty()),
            None => None,
        };
        if initial || diff.changed(&name_slot) {
            changed |= name.is_some();
            room.name.clone_from(&name);
        }
        let avatar_slot = (StateEventType::RoomAvatar, String::new());
        if initial || diff.changed(&avatar_slot) {
            let url = match diff.current.get(&avatar_slot) {
                Some(id) => {
                    self.load_event(id).await?.and_then(|event| event.pdu.content_str("url"))
                }
                None => None,
            };
            room.avatar = match (url.filter(|url| !url.is_empty()), initial) {
                (Some(url), _) => JsOption::Some(url.into()),
                (None, true) => JsOption::Undefined,
                (None, false) => JsOption::Null,
            };
            changed |= !room.avatar.is_undefined();
        }
        if joined && (initial || diff.members_changed()) {
            changed = true;
            self.fill_members(&ctx.requester.user_id, job.room_id, name.is_none(), room).await?;
        }
        if joined {
            let counts = ctx.unread.get(job.room_id).copied().unwrap_or_default();
            room.unread_notifications.notification_count =
                Some(UInt::new_saturating(counts.notifications));
            room.unread_notifications.highlight_count =
                Some(UInt::new_saturating(counts.highlights));
            changed |= job.own_receipt;
            let bump = self.bump_stamp_at(job.room_id, job.bound).await?;
            room.bump_stamp = Some(stream_uint(bump.unwrap_or(job.relevant.membership.stream_pos)));
        } else {
            room.bump_stamp = Some(stream_uint(job.relevant.membership.stream_pos));
        }
        Ok(changed)
    }

    /// Member counts and, for a room without a name, heroes (joined members first, then
    /// invited, then former members).
    async fn fill_members(
        &self,
        me: &UserId,
        room_id: &RoomId,
        with_heroes: bool,
        room: &mut v5::response::Room,
    ) -> Result<()> {
        let members = self.room_memberships_cached(room_id).await?;
        let count =
            |membership: &str| members.iter().filter(|m| m.membership == membership).count();
        room.joined_count = Some(uint(count("join")));
        room.invited_count = Some(uint(count("invite")));
        if !with_heroes {
            return Ok(());
        }
        let rank = |membership: &str| match membership {
            "join" => 0,
            "invite" => 1,
            _ => 2,
        };
        let mut candidates: Vec<&MembershipRecord> = members
            .iter()
            .filter(|member| member.user_id != me && member.membership != "knock")
            .collect();
        candidates.sort_by_key(|member| rank(&member.membership));
        room.heroes = Some(
            candidates
                .into_iter()
                .take(MAX_HEROES)
                .map(|member| {
                    let mut hero = v5::response::Hero::new(member.user_id.clone());
                    hero.name.clone_from(&member.displayname);
                    hero.avatar = member.avatar_url.as_deref().map(Into::into);
                    hero
                })
                .collect(),
        );
        Ok(())
    }
}
