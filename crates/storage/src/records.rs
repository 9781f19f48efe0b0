//! The records the storage traits exchange with the service.

use ruma::{
    OwnedDeviceId, OwnedEventId, OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, OwnedUserId,
    RoomVersionId,
};

use crate::{StateGroupId, StreamPos};

/// A local account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The full user ID.
    pub user_id: OwnedUserId,
    /// The argon2 PHC string, or `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    /// The display name.
    pub displayname: Option<String>,
    /// The avatar.
    pub avatar_url: Option<OwnedMxcUri>,
    /// Whether the account may use the admin API.
    pub is_admin: bool,
    /// Whether the account was deactivated (it then can never log in again).
    pub deactivated: bool,
    /// When the account was made (ms since the epoch).
    pub created_ts: i64,
}

/// A device (a session of a client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The owner.
    pub user_id: OwnedUserId,
    /// The device ID.
    pub device_id: OwnedDeviceId,
    /// The name the user gave it.
    pub display_name: Option<String>,
    /// When it last made a request (ms since the epoch); no address is kept.
    pub last_seen_ts: Option<i64>,
    /// When it was made.
    pub created_ts: i64,
}

/// What an access token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessTokenRecord {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// When it stops working (ms since the epoch), for refreshable tokens.
    pub expires_ts: Option<i64>,
}

/// A new access token (stored by hash only), with an optional refresh token.
#[derive(Clone, Debug)]
pub struct NewAccessToken {
    /// SHA-256 of the access token.
    pub token_hash: String,
    /// SHA-256 of the refresh token paired with it, if any.
    pub refresh_token_hash: Option<String>,
    /// The user.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// When it expires.
    pub expires_ts: Option<i64>,
}

/// A registration (invite) token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationTokenRecord {
    /// The token.
    pub token: String,
    /// How many sign-ups it allows in all; `None` is unlimited.
    pub uses_allowed: Option<i64>,
    /// Sign-ups completed with it.
    pub completed: i64,
    /// When it expires (ms since the epoch).
    pub expiry_ts: Option<i64>,
    /// When it was made.
    pub created_ts: i64,
}

impl RegistrationTokenRecord {
    /// Whether the token can still be used at time `now`.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.expiry_ts.is_none_or(|expiry| expiry > now)
            && self.uses_allowed.is_none_or(|allowed| self.completed < allowed)
    }
}

/// A room known to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRecord {
    /// The room ID.
    pub room_id: OwnedRoomId,
    /// Its version.
    pub room_version: RoomVersionId,
    /// Whether it is listed in the public room directory.
    pub published: bool,
    /// The state group holding its current state.
    pub current_state_group: Option<StateGroupId>,
    /// When the server's administrator shut it down (ms since the epoch); nobody of this
    /// server may join it since.
    pub shut_down_ts: Option<i64>,
}

/// A stored event with its place in the room.
#[derive(Clone, Debug)]
pub struct EventRecord {
    /// The event ID.
    pub event_id: OwnedEventId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// Its position in the global stream.
    pub stream_pos: StreamPos,
    /// The PDU JSON (redacted, once redacted).
    pub json: String,
    /// Whether the auth rules rejected it.
    pub rejected: bool,
    /// The state before it.
    pub state_before: StateGroupId,
    /// The state after it.
    pub state_after: StateGroupId,
    /// The transaction that sent it, for the sending device's echo.
    pub txn: Option<TxnRecord>,
    /// The redaction that redacted it.
    pub redacted_by: Option<OwnedEventId>,
    /// Whether it was accepted but soft-failed (it broke the auth rules against the room's
    /// current state): kept in the room graph, never shown to clients.
    pub soft_failed: bool,
    /// Whether it is known outside the room's timeline only (an auth event or a piece of
    /// state fetched from another server): no stream position, no state groups.
    pub outlier: bool,
}

/// A client transaction ID and the device that used it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    /// The sender.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// The transaction ID.
    pub txn_id: String,
}

/// One slot of room state: `(event type, state key)`.
pub type StateSlot = (String, String);

/// How a state group is made from another.
#[derive(Clone, Debug)]
pub enum StateSpec {
    /// An existing group.
    Existing(StateGroupId),
    /// A new group: `base` (or empty) with slots set or removed.
    New {
        /// The group it derives from.
        base: Option<StateGroupId>,
        /// Slots set to an event, or removed (`None`).
        changes: Vec<(StateSlot, Option<OwnedEventId>)>,
    },
}

/// What a persisted event does to the room's current state.
#[derive(Clone, Debug)]
pub enum CurrentState {
    /// It stays as it was (the event does not reach the room's forward extremities, or
    /// follows the current state alone and sets no state).
    Unchanged,
    /// It becomes the state after this event (the event is the only forward extremity).
    StateAfter,
    /// It becomes a new group (resolved across several forward extremities).
    New(StateSpec),
}

/// A change to a user's current membership in a room.
#[derive(Clone, Debug)]
pub struct MembershipChange {
    /// The member.
    pub user_id: OwnedUserId,
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// The membership event.
    pub event_id: OwnedEventId,
    /// The display name in the member event.
    pub displayname: Option<String>,
    /// The avatar in the member event.
    pub avatar_url: Option<String>,
}

/// A notification computed by the push rules for one local user.
#[derive(Clone, Debug)]
pub struct PushAction {
    /// The user notified.
    pub user_id: OwnedUserId,
    /// Whether it counts as a notification.
    pub notify: bool,
    /// Whether it highlights.
    pub highlight: bool,
    /// The thread it belongs to, if any.
    pub thread_id: Option<OwnedEventId>,
    /// The actions of the push rule that matched, as JSON (an array).
    pub actions: String,
}

/// A relation from the new event to another.
#[derive(Clone, Debug)]
pub struct RelationRecord {
    /// The event related to.
    pub relates_to: OwnedEventId,
    /// `m.annotation`, `m.replace`, `m.thread`, `m.reference`, …
    pub rel_type: String,
    /// For annotations: the key (the emoji).
    pub key: Option<String>,
}

/// Everything about persisting one event, done in one transaction.
#[derive(Clone, Debug)]
pub struct PersistEvent {
    /// The event ID.
    pub event_id: OwnedEventId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The sender.
    pub sender: OwnedUserId,
    /// The event type.
    pub event_type: String,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// The depth.
    pub depth: i64,
    /// The sending time.
    pub origin_server_ts: i64,
    /// The signed PDU JSON.
    pub json: String,
    /// The auth events (stored as edges for auth-chain queries).
    pub auth_events: Vec<OwnedEventId>,
    /// Whether the auth rules rejected it.
    pub rejected: bool,
    /// The state before it.
    pub state_before: StateSpec,
    /// How the state after it differs from the state before (empty: the same group).
    pub state_after_changes: Vec<(StateSlot, Option<OwnedEventId>)>,
    /// The room's forward extremities after this event.
    pub new_extremities: Vec<OwnedEventId>,
    /// What the room's current state becomes.
    pub current_state: CurrentState,
    /// Membership rows to update with the current state.
    pub membership_changes: Vec<MembershipChange>,
    /// The sending client's transaction.
    pub txn: Option<TxnRecord>,
    /// A relation to another event.
    pub relation: Option<RelationRecord>,
    /// For a redaction: the target and its redacted JSON.
    pub redaction: Option<(OwnedEventId, String)>,
    /// For a redaction whose target is not stored yet: the target, redacted when it comes
    /// (see [`crate::RoomStore::waiting_redactions`]).
    pub redaction_waits_for: Option<OwnedEventId>,
    /// The redaction, stored before this event came, that this event is stored redacted by
    /// (`json` is the redacted JSON).
    pub redacted_by: Option<OwnedEventId>,
    /// Notifications for local users.
    pub push_actions: Vec<PushAction>,
    /// Whether the notifying ones go to the durable push queue (for push gateways), in the
    /// same transaction.
    pub queue_pushes: bool,
    /// Other servers to send the event to (queued in the same transaction).
    pub federation_destinations: Vec<ruma::OwnedServerName>,
    /// Whether it soft-failed (see [`EventRecord::soft_failed`]).
    pub soft_failed: bool,
    /// Whether it is history fetched from another server (backfill): it takes a position
    /// before every earlier one and changes neither the forward extremities, the current
    /// state nor the memberships.
    pub historical: bool,
    /// Whether it was just built here: a new event, so neither an outlier nor the target of
    /// a relation already stored (no other event can know its ID yet).
    pub new_here: bool,
}

/// An event known outside the room's timeline: an auth event or state fetched from another
/// server, or an invite to a room this server is not in.
#[derive(Clone, Debug)]
pub struct OutlierEvent {
    /// The event ID.
    pub event_id: OwnedEventId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The PDU JSON.
    pub json: String,
    /// Whether the auth rules rejected it.
    pub rejected: bool,
    /// Its auth events (stored as edges for auth-chain queries).
    pub auth_events: Vec<OwnedEventId>,
}

/// What persisting an event assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistedEvent {
    /// Its stream position.
    pub stream_pos: StreamPos,
    /// The state group before it.
    pub state_before: StateGroupId,
    /// The state group after it.
    pub state_after: StateGroupId,
    /// Whether it queued notifications for push gateways (someone it notifies has a pusher).
    pub pushes_queued: bool,
}

/// A user's current membership in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipRecord {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The member.
    pub user_id: OwnedUserId,
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// The membership event.
    pub event_id: OwnedEventId,
    /// The stream position of that event.
    pub stream_pos: StreamPos,
    /// The display name in the member event.
    pub displayname: Option<String>,
    /// The avatar in the member event.
    pub avatar_url: Option<String>,
}

/// A direction of pagination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Towards older events.
    Backward,
    /// Towards newer events.
    Forward,
}

/// A room alias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasRecord {
    /// The alias.
    pub alias: OwnedRoomAliasId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// Who made it.
    pub creator: OwnedUserId,
}

/// A read receipt or marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptRecord {
    /// The room.
    pub room_id: OwnedRoomId,
    /// `m.read`, `m.read.private`, …
    pub receipt_type: String,
    /// The reader.
    pub user_id: OwnedUserId,
    /// The thread (`main`, an event ID) or `None` for an unthreaded receipt.
    pub thread_id: Option<String>,
    /// The event read up to.
    pub event_id: OwnedEventId,
    /// When.
    pub ts: i64,
    /// The stream position of the receipt itself.
    pub stream_pos: StreamPos,
}

/// A piece of account data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountDataRecord {
    /// The room, or `None` for global account data.
    pub room_id: Option<OwnedRoomId>,
    /// The type.
    pub data_type: String,
    /// The content JSON.
    pub content: String,
    /// The stream position of the change.
    pub stream_pos: StreamPos,
}

/// A room in the public directory, with what the directory shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedRoom {
    /// The room.
    pub room_id: OwnedRoomId,
    /// How many members are joined.
    pub joined_members: i64,
}

/// A user found by the user directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryUser {
    /// The user.
    pub user_id: OwnedUserId,
    /// Their display name.
    pub displayname: Option<String>,
    /// Their avatar.
    pub avatar_url: Option<String>,
}

/// A pusher (where to send push notifications for a device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PusherRecord {
    /// The owner.
    pub user_id: OwnedUserId,
    /// The pushkey.
    pub pushkey: String,
    /// The app ID.
    pub app_id: String,
    /// The pusher JSON as the client gave it.
    pub json: String,
    /// The device whose session set it (it ends with that session); `None` for pushers set
    /// before devices were recorded.
    pub device_id: Option<OwnedDeviceId>,
    /// When it was set (ms since the epoch); 0 when unknown.
    pub created_ts: i64,
}

/// Unread counts of one room for one user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    /// Notifications.
    pub notifications: u64,
    /// Highlights.
    pub highlights: u64,
}

/// How long notifications (push actions) are kept, in milliseconds of age. The unread counts
/// are counted from them, and `/notifications` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushActionRetention {
    /// One the user has read (a read receipt of the whole room covers it) and that does not
    /// highlight: it counts for nothing, and is listed by `/notifications` this long.
    pub read_ms: i64,
    /// A highlight the user has read (a mention, listed by `/notifications` this long).
    pub read_highlight_ms: i64,
    /// Any, read or not (a room the user never opens): unread counts count this far back.
    pub unread_ms: i64,
}

/// A notification of a user, as `/notifications` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationRecord {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event that notified.
    pub event_id: OwnedEventId,
    /// The event's stream position (the pagination key).
    pub stream_pos: StreamPos,
    /// When the event was sent (ms since the epoch).
    pub ts: i64,
    /// Whether it highlights.
    pub highlight: bool,
    /// The actions of the push rule that matched, as JSON; `None` for notifications stored
    /// before the actions were kept.
    pub actions: Option<String>,
    /// Whether a read receipt of the user covers it.
    pub read: bool,
}

/// A report of a room or an event, made by a user for the server's administrator. The
/// reported content itself is not copied: the administrator looks at the room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewReport {
    /// Who reported.
    pub reporter: OwnedUserId,
    /// The room reported, or the room of the event reported.
    pub room_id: OwnedRoomId,
    /// The event reported, for event reports.
    pub event_id: Option<OwnedEventId>,
    /// The reason the reporter gave.
    pub reason: Option<String>,
    /// The score the reporter gave (-100 most offensive, 0 inoffensive).
    pub score: Option<i64>,
    /// When it was received (ms since the epoch).
    pub received_ts: i64,
}

/// A stored report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRecord {
    /// The report's number.
    pub report_id: i64,
    /// What was reported.
    pub report: NewReport,
    /// When the administrator resolved it.
    pub resolved_ts: Option<i64>,
}
