//! History visibility: whether a user may see an event, from the room's state at that event.

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

#[cfg(test)]
mod tests {
    use super::*;

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
