//! Simplified sliding sync (MSC4186, `org.matrix.simplified_msc3575`): room lists sorted by
//! recent activity and cut to ranges, room subscriptions, per-room timelines and required state,
//! and the to-device, e2ee, account data, receipts and typing extensions, long-polling like
//! `/sync` v3.
//!
//! A *connection* (user, device, `conn_id`) remembers what it was sent of each room
//! ([`connection`]), so each response carries only what changed for the rooms the lists and
//! subscriptions select ([`lists`], [`room`], [`extensions`]). The `pos` a response returns is
//! `s<stream position>_<ephemeral serial>_<connection version>`; its first part is also a
//! `/messages` token.
//!
//! Left out: the `spaces`, `tags` and `not_tags` list filters (ruma's request type does not carry
//! them), `StateStub`s for removed state (state is only ever removed by state resolution),
//! peeking into rooms the user has no membership in, and the thread subscription and sticky
//! event extensions. Receipts, typing and room account data of a room outside an extension's
//! `lists`/`rooms` scope are not kept back for later, and a ban of a user who never joined stays
//! listed (showing only the ban).

mod activity;
mod connection;
mod extensions;
mod lists;
mod required_state;
mod room;
mod shared;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_storage::{MembershipRecord, ReceiptRecord, StreamPos, UnreadCounts};
use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, api::client::sync::sync_events::v5,
    presence::PresenceState,
};
use serde_json::Value;

use self::{
    connection::{ConnState, Connections, SentRoom},
    lists::{Relevant, Selection},
};
use crate::{
    Requester, Services,
    sync::{
        SyncToken,
        rooms::{ROOMS_PER_BATCH, RoomPrefetch},
    },
};

/// The most timeline events one room gets per response.
const MAX_TIMELINE_LIMIT: usize = 100;

/// The most lists one request may have (as the MSC allows).
const MAX_LISTS: usize = 100;

/// The most ranges per list, room subscriptions and `required_state` entries per config.
const MAX_ENTRIES: usize = 1_000;

/// The longest `conn_id` accepted.
const MAX_CONN_ID_LEN: usize = 64;

/// The account data type listing direct chats.
const DIRECT_TYPE: &str = "m.direct";

/// In-memory state of sliding sync: the connections and the rooms' latest activity.
pub(crate) struct SlidingState {
    connections: Connections,
    activity: activity::RoomActivity,
}

impl SlidingState {
    pub(crate) fn new() -> Self {
        Self { connections: Connections::new(), activity: activity::RoomActivity::new() }
    }
}

/// A parsed `pos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    token: SyncToken,
    version: u64,
}

impl Pos {
    fn parse(pos: &str) -> Option<Self> {
        let (token, version) = pos.rsplit_once('_')?;
        Some(Self { token: SyncToken::parse(token).ok()?, version: version.parse().ok()? })
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.token, self.version)
    }
}

/// What one computation of a response works from.
pub(super) struct Ctx<'a> {
    requester: &'a Requester,
    request: &'a v5::Request,
    /// Where the connection's previous response ended.
    since: Option<SyncToken>,
    /// Where this response ends.
    upper: SyncToken,
    ignored: HashSet<OwnedUserId>,
    invite_filter: crate::invite_filter::InviteFilter,
    direct: HashSet<OwnedRoomId>,
    /// The unread counts of the selected joined rooms, read in one query (rooms without any
    /// are left out).
    unread: HashMap<OwnedRoomId, UnreadCounts>,
}

/// One computed response and the connection state it leaves.
struct Computed {
    response: v5::Response,
    state: ConnState,
    has_data: bool,
}

fn unknown_pos() -> Error {
    Error::matrix(MatrixErrorKind::UnknownPos, "Unknown or expired sliding sync position")
}

fn validate(request: &v5::Request) -> Result<()> {
    if request.conn_id.as_ref().is_some_and(|conn_id| conn_id.len() > MAX_CONN_ID_LEN) {
        return Err(Error::invalid_param("conn_id is too long"));
    }
    if request.lists.len() > MAX_LISTS || request.room_subscriptions.len() > MAX_ENTRIES {
        return Err(Error::invalid_param("Too many lists or room subscriptions"));
    }
    for list in request.lists.values() {
        if list.ranges.len() > MAX_ENTRIES || list.room_details.required_state.len() > MAX_ENTRIES {
            return Err(Error::invalid_param("Too many ranges or required state entries"));
        }
        if list.ranges.iter().any(|(start, end)| start > end) {
            return Err(Error::invalid_param("A range must not end before it starts"));
        }
    }
    if request.room_subscriptions.values().any(|sub| sub.required_state.len() > MAX_ENTRIES) {
        return Err(Error::invalid_param("Too many required state entries"));
    }
    Ok(())
}

/// The timeline limit a request gives, capped.
fn timeline_limit(limit: UInt) -> usize {
    usize::try_from(u64::from(limit)).unwrap_or(usize::MAX).min(MAX_TIMELINE_LIMIT)
}

/// Where a room's changes are to be sent from: `None` when it is sent in full (never sent on
/// this connection, or the user's membership changed in a way that makes the earlier data
/// meaningless: newly joined, invited or knocking).
fn room_from(sent: Option<&SentRoom>, membership: &MembershipRecord) -> Option<StreamPos> {
    let sent = sent?;
    let now = membership.membership.as_str();
    let before = sent.membership.as_str();
    let fresh = before != now
        && (matches!(now, "join" | "invite" | "knock") || matches!(before, "invite" | "knock"));
    (!fresh).then_some(sent.pos)
}

impl Services {
    /// Answers a sliding sync request, waiting up to its timeout for something new.
    pub async fn sliding_sync(
        self: &Arc<Self>,
        requester: &Requester,
        request: &v5::Request,
    ) -> Result<v5::Response> {
        validate(request)?;
        let device = (requester.user_id.clone(), requester.device_id.clone());
        let conn_id = request.conn_id.as_deref().unwrap_or_default();
        let since = match request.pos.as_deref() {
            None => None,
            Some(pos) => {
                let pos = Pos::parse(pos).ok_or_else(unknown_pos)?;
                // A `pos` from another process may be a moment ahead of this one.
                if !self.catch_up_to(pos.token.pos).await {
                    return Err(unknown_pos());
                }
                Some(pos)
            }
        };
        let previous = match since {
            None => self.start_connection(&device, conn_id).await?,
            Some(pos) => self
                .resume_connection(&device, conn_id, pos.version)
                .await?
                .ok_or_else(unknown_pos)?,
        };
        if request.set_presence != PresenceState::Offline {
            self.set_presence(&requester.user_id, request.set_presence.as_str(), None).await?;
        }
        // Without `pos` the answer comes at once; so it does without a timeout.
        let timeout = match since {
            None => Duration::ZERO,
            Some(_) => request
                .timeout
                .unwrap_or_default()
                .min(Duration::from_millis(self.config.limits.max_sync_timeout_ms)),
        };
        let deadline = Instant::now() + timeout;
        let mut wake = self.notifier.subscribe(&requester.user_id);
        let computed = loop {
            wake.borrow_and_update();
            let since = since.map(|pos| pos.token);
            let upper = SyncToken {
                pos: self.store.current_stream_pos(),
                // Another process's serial may be ahead of this one's (never of its clock).
                ephemeral: self.ephemeral_serial().max(since.map_or(0, |since| since.ephemeral)),
            };
            let computed = self.sliding_once(requester, request, &previous, since, upper).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if computed.has_data || remaining.is_zero() {
                break (computed, upper);
            }
            match tokio::time::timeout(remaining, wake.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the notifier went away): answer with what there is.
                _ => break (computed, upper),
            }
        };
        let (Computed { mut response, state, .. }, upper) = computed;
        let version = self.record_connection(&device, conn_id, state).await?;
        response.pos = Pos { token: upper, version }.to_string();
        response.txn_id.clone_from(&request.txn_id);
        Ok(response)
    }

    /// Computes one response for changes after `since` up to `upper`.
    async fn sliding_once(
        &self,
        requester: &Requester,
        request: &v5::Request,
        previous: &ConnState,
        since: Option<SyncToken>,
        upper: SyncToken,
    ) -> Result<Computed> {
        let mut ctx = Ctx {
            requester,
            request,
            since,
            upper,
            ignored: self.ignored_users(&requester.user_id).await?,
            invite_filter: self.invite_filter(&requester.user_id).await?,
            direct: self.direct_rooms(&requester.user_id).await?,
            unread: HashMap::new(),
        };
        let mut memberships = (*self.user_memberships_cached(&requester.user_id).await?).clone();
        // A membership newer than `upper` is seen by the next response.
        memberships.retain(|membership| membership.stream_pos <= upper.pos);
        let selection = self.select_rooms(&ctx, previous, &memberships).await?;
        let joined: Vec<&RoomId> = selection
            .rooms
            .iter()
            .filter(|(_, relevant)| relevant.membership.membership == "join")
            .map(|(room_id, _)| room_id.as_ref())
            .collect();
        if !joined.is_empty() {
            ctx.unread = self.store.unread_counts_in_rooms(&requester.user_id, &joined).await?;
        }
        let receipts = self.receipts_for_rooms(&ctx, previous, &selection).await?;
        let mut response = v5::Response::new(String::new());
        let mut state =
            ConnState { rooms: previous.rooms.clone(), list_counts: selection.counts.clone() };
        let mut full_timelines: HashMap<OwnedRoomId, Vec<OwnedEventId>> = HashMap::new();
        let selected: Vec<(&OwnedRoomId, &Relevant)> = selection.rooms.iter().collect();
        for batch in selected.chunks(ROOMS_PER_BATCH) {
            let mut prefetched = self.prefetch_new_rooms(&ctx, previous, batch).await?;
            for (room_id, relevant) in batch {
                let sent = previous.rooms.get(*room_id).map(Arc::as_ref);
                let own_receipt = receipts.get(*room_id).is_some_and(|list| {
                    list.iter().any(|receipt| receipt.user_id == requester.user_id)
                });
                let prefetch = prefetched.remove(*room_id);
                let outcome =
                    self.sliding_room(&ctx, room_id, relevant, sent, own_receipt, prefetch).await?;
                if let Some(timeline) = outcome.full_timeline {
                    full_timelines.insert((*room_id).clone(), timeline);
                }
                if let Some(room) = outcome.room {
                    response.rooms.insert((*room_id).clone(), room);
                }
                state.rooms.insert((*room_id).clone(), Arc::new(outcome.sent));
            }
        }
        for (name, count) in &selection.counts {
            let mut list = v5::response::List::default();
            list.count = UInt::new_saturating(*count);
            response.lists.insert(name.clone(), list);
        }
        let input = extensions::Input { selection: &selection, previous, full_timelines, receipts };
        let extensions_have_data =
            self.sliding_extensions(&ctx, &input, &mut response.extensions).await?;
        let has_data = since.is_none()
            || !response.rooms.is_empty()
            || extensions_have_data
            || selection.counts != previous.list_counts;
        Ok(Computed { response, state, has_data })
    }

    /// Reads ahead the timelines of the joined rooms of a batch that are new to the connection
    /// (a first request, or rooms scrolling into a list), grouped by timeline limit: see
    /// [`Services::prefetch_timelines`]. Rooms the connection already has are left to the
    /// per-room reads, which usually find nothing new.
    async fn prefetch_new_rooms(
        &self,
        ctx: &Ctx<'_>,
        previous: &ConnState,
        batch: &[(&OwnedRoomId, &Relevant)],
    ) -> Result<HashMap<OwnedRoomId, RoomPrefetch>> {
        let mut by_limit: HashMap<usize, Vec<(&RoomId, Option<StreamPos>)>> = HashMap::new();
        for (room_id, relevant) in batch {
            if relevant.membership.membership == "join"
                && relevant.config.timeline_limit > 0
                && !previous.rooms.contains_key(*room_id)
            {
                by_limit
                    .entry(relevant.config.timeline_limit)
                    .or_default()
                    .push((room_id.as_ref(), None));
            }
        }
        let mut prefetched = HashMap::new();
        for (limit, rooms) in by_limit {
            prefetched.extend(
                self.prefetch_timelines(&ctx.requester.user_id, &rooms, ctx.upper.pos, limit)
                    .await?,
            );
        }
        Ok(prefetched)
    }

    /// The rooms the user marked as direct chats.
    async fn direct_rooms(&self, user_id: &ruma::UserId) -> Result<HashSet<OwnedRoomId>> {
        let Some(record) = self.store.get_account_data(user_id, None, DIRECT_TYPE).await? else {
            return Ok(HashSet::new());
        };
        let content: Value = serde_json::from_str(&record.content)?;
        Ok(content
            .as_object()
            .into_iter()
            .flat_map(|users| users.values())
            .filter_map(Value::as_array)
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|room| RoomId::parse(room).ok())
            .collect())
    }

    /// Receipts of the selected joined rooms changed since each room was last sent (rooms sent
    /// in full get theirs with their timeline).
    async fn receipts_for_rooms(
        &self,
        ctx: &Ctx<'_>,
        previous: &ConnState,
        selection: &Selection,
    ) -> Result<HashMap<OwnedRoomId, Vec<ReceiptRecord>>> {
        let mut by_from: BTreeMap<StreamPos, Vec<&RoomId>> = BTreeMap::new();
        for (room_id, relevant) in &selection.rooms {
            if relevant.membership.membership != "join" {
                continue;
            }
            let sent = previous.rooms.get(room_id).map(Arc::as_ref);
            if let Some(from) = room_from(sent, &relevant.membership) {
                by_from.entry(from).or_default().push(room_id);
            }
        }
        let mut receipts: HashMap<OwnedRoomId, Vec<ReceiptRecord>> = HashMap::new();
        for (from, room_ids) in by_from {
            if from >= ctx.upper.pos {
                continue;
            }
            for receipt in self.store.receipts_since(&room_ids, Some(from)).await? {
                if receipt.stream_pos <= ctx.upper.pos {
                    receipts.entry(receipt.room_id.clone()).or_default().push(receipt);
                }
            }
        }
        Ok(receipts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pos_reads_back_and_its_head_is_a_sync_token() {
        let pos = Pos { token: SyncToken { pos: 42, ephemeral: 7 }, version: 1_700_000_000_123 };
        let text = pos.to_string();
        assert_eq!(text, "s42_7_1700000000123");
        assert_eq!(Pos::parse(&text), Some(pos));
        assert_eq!(crate::rooms::read::parse_pagination_token(&text).unwrap(), 42);
        for bad in ["", "s42_7", "42_7_1", "s42_x_1", "s42_7_x", "t42"] {
            assert_eq!(Pos::parse(bad), None, "{bad:?}");
        }
    }
}
