//! The `required_state` of a sliding sync room config: which state slots a client wants, with
//! wildcards (`*` as type or state key), lazily loaded members (`m.room.member` / `$LAZY`) and
//! the user's own ID (`$ME`). Configs of several lists and subscriptions combine into their
//! superset.

use std::collections::BTreeSet;

use ruma::{UserId, events::StateEventType};

const WILDCARD: &str = "*";
const LAZY: &str = "$LAZY";
const ME: &str = "$ME";
const MEMBER: &str = "m.room.member";

/// The state a room config asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RequiredState {
    /// `["*", "*"]`: everything.
    all: bool,
    /// `[type, "*"]`: every state key of these types.
    all_keys_of: BTreeSet<String>,
    /// `["*", key]`: this state key of any type.
    key_of_any_type: BTreeSet<String>,
    /// `[type, key]`, with `$ME` replaced by the user's ID.
    exact: BTreeSet<(String, String)>,
    /// `["m.room.member", "$LAZY"]`: the members the timeline needs.
    lazy_members: bool,
}

impl RequiredState {
    /// Reads the request's `[type, state_key]` pairs for the user `me`.
    pub(crate) fn from_request(entries: &[(StateEventType, String)], me: &UserId) -> Self {
        let mut required = Self::default();
        for (kind, key) in entries {
            let kind = kind.to_string();
            let key = if key == ME { me.to_string() } else { key.clone() };
            match (kind.as_str(), key.as_str()) {
                (WILDCARD, WILDCARD) => required.all = true,
                (WILDCARD, _) => {
                    required.key_of_any_type.insert(key);
                }
                (_, WILDCARD) => {
                    required.all_keys_of.insert(kind);
                }
                (MEMBER, LAZY) => required.lazy_members = true,
                _ => {
                    required.exact.insert((kind, key));
                }
            }
        }
        required
    }

    /// Adds what `other` asks for (the superset of two configs).
    pub(crate) fn merge(&mut self, other: &Self) {
        self.all |= other.all;
        self.all_keys_of.extend(other.all_keys_of.iter().cloned());
        self.key_of_any_type.extend(other.key_of_any_type.iter().cloned());
        self.exact.extend(other.exact.iter().cloned());
        self.lazy_members |= other.lazy_members;
    }

    /// Whether the slot is asked for explicitly (lazy members aside).
    pub(crate) fn matches(&self, kind: &str, key: &str) -> bool {
        self.all
            || self.all_keys_of.contains(kind)
            || self.key_of_any_type.contains(key)
            || self.exact.contains(&(kind.to_owned(), key.to_owned()))
    }

    /// Whether the members the timeline needs are asked for (and not all members anyway).
    pub(crate) fn lazy_members(&self) -> bool {
        self.lazy_members && !self.all && !self.all_keys_of.contains(MEMBER)
    }

    /// Whether every slot `other` asks for is asked for here too. Errs on "no" (the cost of a
    /// wrong "no" is state sent again, of a wrong "yes" state never sent).
    pub(crate) fn covers(&self, other: &Self) -> bool {
        if self.all {
            return true;
        }
        !other.all
            && other.all_keys_of.is_subset(&self.all_keys_of)
            && other.key_of_any_type.is_subset(&self.key_of_any_type)
            && other.exact.iter().all(|(kind, key)| self.matches(kind, key))
            && (!other.lazy_members || self.lazy_members || self.all_keys_of.contains(MEMBER))
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    fn required(entries: &[(&str, &str)]) -> RequiredState {
        let entries: Vec<(StateEventType, String)> = entries
            .iter()
            .map(|(kind, key)| (StateEventType::from(*kind), (*key).to_owned()))
            .collect();
        RequiredState::from_request(&entries, user_id!("@me:example.org"))
    }

    #[test]
    fn exact_entries_and_me_match_only_their_slot() {
        let state = required(&[("m.room.name", ""), ("m.room.member", "$ME")]);
        assert!(state.matches("m.room.name", ""));
        assert!(state.matches("m.room.member", "@me:example.org"));
        assert!(!state.matches("m.room.member", "@other:example.org"));
        assert!(!state.matches("m.room.topic", ""));
        assert!(!state.lazy_members());
        assert!(!RequiredState::default().matches("m.room.name", ""));
    }

    #[test]
    fn wildcards_match_types_keys_and_everything() {
        let by_type = required(&[("m.room.member", "*")]);
        assert!(by_type.matches("m.room.member", "@anyone:example.org"));
        assert!(!by_type.matches("m.room.name", ""));
        let by_key = required(&[("*", "")]);
        assert!(by_key.matches("m.room.topic", ""));
        assert!(!by_key.matches("m.room.member", "@anyone:example.org"));
        let all = required(&[("*", "*")]);
        assert!(all.matches("anything", "at all"));
    }

    #[test]
    fn lazy_members_give_way_to_all_members() {
        assert!(required(&[("m.room.member", "$LAZY")]).lazy_members());
        assert!(!required(&[("m.room.member", "$LAZY"), ("m.room.member", "*")]).lazy_members());
        assert!(!required(&[("m.room.member", "$LAZY"), ("*", "*")]).lazy_members());
    }

    #[test]
    fn merged_configs_are_the_superset_and_cover_their_parts() {
        let name = required(&[("m.room.name", "")]);
        let lazy = required(&[("m.room.member", "$LAZY"), ("m.room.topic", "")]);
        let mut merged = name.clone();
        merged.merge(&lazy);
        assert!(merged.matches("m.room.name", "") && merged.matches("m.room.topic", ""));
        assert!(merged.lazy_members());
        assert!(merged.covers(&name) && merged.covers(&lazy));
        assert!(!name.covers(&merged));
        assert!(!name.covers(&lazy));
        assert!(required(&[("*", "*")]).covers(&merged));
        assert!(!merged.covers(&required(&[("*", "*")])));
        assert!(required(&[("m.room.member", "*")]).covers(&required(&[("m.room.member", "$ME")])));
    }
}
