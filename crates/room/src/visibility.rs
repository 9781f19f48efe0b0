//! History visibility: whether a user, or another server, may see an event, from the room's
//! state at that event.

use ruma::{
    EventId, OwnedEventId, ServerName, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::{history_visibility::HistoryVisibility, member::MembershipState},
    },
};

use crate::{Pdu, StateMap};

/// What the visibility decision needs to know about one event and one user.
#[derive(Clone, Debug)]
pub struct VisibilityInput<'a> {
    /// `m.room.history_visibility` in the state at the event (`shared` when unset).
    pub history_visibility: &'a HistoryVisibility,
    /// The user's membership in the state at the event (for the user's own membership event,
    /// the membership it sets).
    pub membership_at_event: Option<&'a MembershipState>,
    /// Whether the user is joined to the room now.
    pub joined_now: bool,
}

/// The spec's history visibility rules.
pub fn user_may_see_event(input: &VisibilityInput<'_>) -> bool {
    let visibility = input.history_visibility;
    *visibility == HistoryVisibility::WorldReadable
        || input.membership_at_event == Some(&MembershipState::Join)
        || (*visibility == HistoryVisibility::Shared && input.joined_now)
        || (*visibility == HistoryVisibility::Invited
            && input.membership_at_event == Some(&MembershipState::Invite))
}

/// What the visibility decision for another server needs to know about one event: the spec's
/// rules applied to the server's users as a whole (client-server API, "Room History
/// Visibility", server behaviour).
#[derive(Clone, Debug)]
pub struct ServerVisibilityInput<'a> {
    /// `m.room.history_visibility` in the state at the event (`shared` when unset).
    pub history_visibility: &'a HistoryVisibility,
    /// For an `m.room.history_visibility` event, the value it sets: it is visible when either
    /// value allows it.
    pub history_visibility_after: Option<&'a HistoryVisibility>,
    /// The memberships of the server's users in the state at the event.
    pub memberships_at_event: &'a [MembershipState],
    /// Whether one of the server's users is joined to the room now.
    pub joined_now: bool,
    /// Whether the event is the membership event of one of the server's users (a server always
    /// sees its users' own invites, joins, kicks and bans).
    pub own_member_event: bool,
}

/// Whether another server may see an event:
///
/// - `world_readable`: any server;
/// - `shared`: a server with a user joined at the event, or joined now (members see the
///   history shared with them);
/// - `invited`: a server with a user invited or joined at the event;
/// - `joined`: a server with a user joined at the event.
///
/// Values this server does not understand count as `shared`, as the spec says.
pub fn server_may_see_event(input: &ServerVisibilityInput<'_>) -> bool {
    if input.own_member_event {
        return true;
    }
    let has = |wanted: &MembershipState| input.memberships_at_event.contains(wanted);
    let allows = |visibility: &HistoryVisibility| match visibility {
        HistoryVisibility::WorldReadable => true,
        HistoryVisibility::Joined => has(&MembershipState::Join),
        HistoryVisibility::Invited => has(&MembershipState::Join) || has(&MembershipState::Invite),
        _ => has(&MembershipState::Join) || input.joined_now,
    };
    allows(input.history_visibility) || input.history_visibility_after.is_some_and(allows)
}

/// What the state at an event says to one server: its history visibility and the
/// memberships of the server's users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    /// `m.room.history_visibility` (`shared` when unset or unreadable).
    pub history_visibility: HistoryVisibility,
    /// The memberships of the server's users.
    pub memberships: Vec<MembershipState>,
}

impl ServerView {
    /// The events of `state` the view of `server` is read from: the history visibility and
    /// the member events of the server's users.
    pub fn event_ids(state: &StateMap, server: &ServerName) -> Vec<OwnedEventId> {
        state
            .iter()
            .filter(|((kind, key), _)| {
                *kind == StateEventType::RoomHistoryVisibility && key.is_empty()
                    || *kind == StateEventType::RoomMember && user_of(key, server)
            })
            .map(|(_, event_id)| event_id.clone())
            .collect()
    }

    /// The view of `server` of `state`, reading the events [`ServerView::event_ids`] names
    /// through `event` (those it cannot find count as absent).
    pub fn of_state<'a>(
        state: &StateMap,
        server: &ServerName,
        event: impl Fn(&EventId) -> Option<&'a Pdu>,
    ) -> Self {
        let history_visibility = state
            .get(&(StateEventType::RoomHistoryVisibility, String::new()))
            .and_then(|event_id| event(event_id))
            .and_then(|pdu| pdu.content_str("history_visibility"))
            .map_or(HistoryVisibility::Shared, |value| HistoryVisibility::from(value.as_str()));
        let memberships = state
            .iter()
            .filter(|((kind, key), _)| *kind == StateEventType::RoomMember && user_of(key, server))
            .filter_map(|(_, event_id)| event(event_id))
            .filter_map(|pdu| pdu.content_str("membership"))
            .map(|membership| MembershipState::from(membership.as_str()))
            .collect();
        Self { history_visibility, memberships }
    }

    /// Whether `server` may see `pdu`, this being its view of the state before it.
    pub fn allows(&self, pdu: &Pdu, server: &ServerName, joined_now: bool) -> bool {
        let own_member_event = pdu.kind == TimelineEventType::RoomMember
            && pdu.state_key.as_deref().is_some_and(|key| user_of(key, server));
        let history_visibility_after = (pdu.kind == TimelineEventType::RoomHistoryVisibility
            && pdu.state_key.as_deref() == Some(""))
        .then(|| pdu.content_str("history_visibility"))
        .flatten()
        .map(|value| HistoryVisibility::from(value.as_str()));
        server_may_see_event(&ServerVisibilityInput {
            history_visibility: &self.history_visibility,
            history_visibility_after: history_visibility_after.as_ref(),
            memberships_at_event: &self.memberships,
            joined_now,
            own_member_event,
        })
    }
}

/// Whether a state key is a user of `server`.
fn user_of(state_key: &str, server: &ServerName) -> bool {
    UserId::parse(state_key).is_ok_and(|user| user.server_name() == server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_check(
        visibility: HistoryVisibility,
        memberships: &[MembershipState],
        joined_now: bool,
    ) -> bool {
        server_may_see_event(&ServerVisibilityInput {
            history_visibility: &visibility,
            history_visibility_after: None,
            memberships_at_event: memberships,
            joined_now,
            own_member_event: false,
        })
    }

    #[test]
    fn the_rules_for_servers() {
        use HistoryVisibility::*;
        use MembershipState as M;
        // world_readable: every server, even one never in the room.
        assert!(server_check(WorldReadable, &[], false));
        // shared: a server with a user joined at the event, or one joined now.
        assert!(server_check(Shared, &[M::Join], false));
        assert!(server_check(Shared, &[], true));
        assert!(server_check(Shared, &[M::Leave], true));
        assert!(!server_check(Shared, &[], false), "never in the room");
        assert!(!server_check(Shared, &[M::Leave, M::Invite], false), "left, or only invited");
        // An unknown value is shared.
        assert!(server_check(HistoryVisibility::from("m.custom"), &[], true));
        assert!(!server_check(HistoryVisibility::from("m.custom"), &[], false));
        // invited: a user invited (or joined) at the event.
        assert!(server_check(Invited, &[M::Leave, M::Invite], false));
        assert!(server_check(Invited, &[M::Join], false));
        assert!(!server_check(Invited, &[M::Leave], true), "joining later is not enough");
        // joined: a user joined at the event, whatever the others' memberships.
        assert!(server_check(Joined, &[M::Ban, M::Join], false));
        assert!(!server_check(Joined, &[M::Invite], true));
        assert!(!server_check(Joined, &[], true), "a server that joined later sees nothing");
    }

    #[test]
    fn servers_see_their_own_members_and_visibility_changes() {
        use HistoryVisibility::*;
        let own = ServerVisibilityInput {
            history_visibility: &Joined,
            history_visibility_after: None,
            memberships_at_event: &[],
            joined_now: false,
            own_member_event: true,
        };
        assert!(server_may_see_event(&own), "its user's invite, before any join");
        // A change from joined to world_readable is visible to all: the value after counts.
        let opened = ServerVisibilityInput {
            own_member_event: false,
            history_visibility_after: Some(&WorldReadable),
            ..own.clone()
        };
        assert!(server_may_see_event(&opened));
        let closed = ServerVisibilityInput { history_visibility_after: Some(&Joined), ..opened };
        assert!(!server_may_see_event(&closed));
    }

    fn check(
        visibility: HistoryVisibility,
        membership: Option<MembershipState>,
        joined_now: bool,
    ) -> bool {
        user_may_see_event(&VisibilityInput {
            history_visibility: &visibility,
            membership_at_event: membership.as_ref(),
            joined_now,
        })
    }

    #[test]
    fn the_rules_of_the_spec() {
        use HistoryVisibility::*;
        use MembershipState as M;
        // world_readable: everyone.
        assert!(check(WorldReadable, None, false));
        // joined at the event: always.
        for visibility in [Shared, Invited, Joined] {
            assert!(check(visibility.clone(), Some(M::Join), false));
        }
        // shared: any current member sees everything.
        assert!(check(Shared, None, true));
        assert!(check(Shared, Some(M::Leave), true));
        assert!(!check(Shared, None, false));
        // invited: an invitee sees events from their invite on.
        assert!(check(Invited, Some(M::Invite), false));
        assert!(!check(Invited, None, true));
        // joined: only events while joined.
        assert!(!check(Joined, Some(M::Invite), true));
        assert!(!check(Joined, None, true));
        assert!(!check(Joined, Some(M::Leave), true));
    }

    /// A room of `a.example` where `b.example` joins once the history is `joined` and
    /// `c.example` is invited once it is `invited`, and `d.example` is never in it.
    #[test]
    fn servers_see_a_fixture_room_by_the_state_at_each_event() {
        use crate::fixture::FixtureRoom;
        use ruma::{RoomVersionId, server_name, user_id};

        let alice = user_id!("@alice:a.example");
        let mut room = FixtureRoom::new(RoomVersionId::V11, alice);
        let say = |room: &mut FixtureRoom, body: &str| {
            let head = room.head();
            room.send(&[head], alice, "m.room.message", None, serde_json::json!({ "body": body }))
                .unwrap()
        };
        let visibility = |room: &mut FixtureRoom, value: &str| {
            let head = room.head();
            let content = serde_json::json!({ "history_visibility": value });
            room.send_state(&[head], alice, "m.room.history_visibility", "", content).unwrap()
        };
        let shared = say(&mut room, "shared");
        let opened = visibility(&mut room, "world_readable");
        let public = say(&mut room, "public");
        let closed = visibility(&mut room, "joined");
        let before_bob = say(&mut room, "before bob");
        let bob_joins = room.member(user_id!("@bob:b.example"), user_id!("@bob:b.example"), "join");
        let with_bob = say(&mut room, "with bob");
        visibility(&mut room, "invited");
        let carol_invited = room.member(alice, user_id!("@carol:c.example"), "invite");
        let with_carol = say(&mut room, "with carol invited");

        let sees = |server: &ServerName, event_id: &OwnedEventId, joined_now: bool| {
            let pdu = &room.events[event_id];
            let state = room.state_before(&pdu.prev_events);
            let ids = ServerView::event_ids(&state, server);
            assert!(ids.len() <= state.len());
            let view = ServerView::of_state(&state, server, |id| room.events.get(id));
            view.allows(pdu, server, joined_now)
        };
        let (b, c, d) =
            (server_name!("b.example"), server_name!("c.example"), server_name!("d.example"));
        // `shared` history: B sees it once in the room, a server never in it does not.
        assert!(sees(b, &shared, true));
        assert!(!sees(d, &shared, false));
        // Opening the history is seen by all, and so is what was said while open, and closing
        // it again; not what came after.
        assert!(sees(d, &opened, false) && sees(d, &public, false) && sees(d, &closed, false));
        assert!(!sees(d, &before_bob, false));
        // `joined` history: B sees nothing before its user joined, its join, and what follows.
        assert!(!sees(b, &before_bob, true));
        assert!(sees(b, &bob_joins, true) && sees(b, &with_bob, true));
        assert!(!sees(c, &with_bob, false));
        // `invited` history: C sees its user's invite and what follows it.
        assert!(sees(c, &carol_invited, false) && sees(c, &with_carol, false));
        assert!(!sees(d, &with_carol, false));
    }
}
