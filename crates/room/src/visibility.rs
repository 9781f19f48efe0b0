//! History visibility: whether a user, or another server, may see an event, from the room's
//! state at that event.

use ruma::events::room::{history_visibility::HistoryVisibility, member::MembershipState};

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
}
