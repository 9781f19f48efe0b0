//! Push rules as each user holds them: JSON kept as the `m.push_rules` account data (so rule
//! IDs ruma's types refuse, as a room rule named by an alias, are kept as Synapse keeps them),
//! merged on every read with the server's current default rules (the poll rules of MSC3930
//! included), edited one rule at a time, and turned into ruma's `Ruleset` to evaluate events.

use std::sync::Arc;

use rhizome_core::{Error, Result};
use ruma::{RoomId, UserId, push::Ruleset};
use serde_json::{Map, Value, json};

use crate::{Services, push::PUSH_RULES_TYPE};

/// The kinds of rules, in the order the spec evaluates them.
pub const RULE_KINDS: &[&str] = &["override", "content", "room", "sender", "underride"];

/// The rule master, which stays ahead of the user's own override rules.
const MASTER_RULE: &str = ".m.rule.master";

/// A rule to place next to another of the user's rules.
#[derive(Clone, Copy, Debug)]
pub enum Placement<'a> {
    /// Ahead of the user's other rules of the kind.
    First,
    /// Just before this rule.
    Before(&'a str),
    /// Just after this rule.
    After(&'a str),
}

/// The poll rules of MSC3930, with the unstable identifiers and `event_match` conditions that
/// Synapse uses and clients look for.
fn poll_rules() -> (Value, Vec<Value>) {
    let type_is =
        |pattern: &str| json!({ "kind": "event_match", "key": "type", "pattern": pattern });
    let one_to_one = json!({ "kind": "room_member_count", "is": "2" });
    let sound = json!(["notify", { "set_tweak": "sound", "value": "default" }]);
    let rule = |id: &str, conditions: Vec<Value>, actions: Value| {
        json!({ "rule_id": id, "default": true, "enabled": true,
                "conditions": conditions, "actions": actions })
    };
    let response = rule(
        ".org.matrix.msc3930.rule.poll_response",
        vec![type_is("org.matrix.msc3381.poll.response")],
        json!([]),
    );
    let underride = vec![
        rule(
            ".org.matrix.msc3930.rule.poll_start_one_to_one",
            vec![one_to_one.clone(), type_is("org.matrix.msc3381.poll.start")],
            sound.clone(),
        ),
        rule(
            ".org.matrix.msc3930.rule.poll_start",
            vec![type_is("org.matrix.msc3381.poll.start")],
            json!(["notify"]),
        ),
        rule(
            ".org.matrix.msc3930.rule.poll_end_one_to_one",
            vec![one_to_one, type_is("org.matrix.msc3381.poll.end")],
            sound,
        ),
        rule(
            ".org.matrix.msc3930.rule.poll_end",
            vec![type_is("org.matrix.msc3381.poll.end")],
            json!(["notify"]),
        ),
    ];
    (response, underride)
}

/// The server's default rules for a user.
pub(crate) fn default_rules(user_id: &UserId) -> Value {
    let mut rules =
        serde_json::to_value(Ruleset::server_default(user_id)).unwrap_or_else(|_| json!({}));
    let (response, underride) = poll_rules();
    if let Some(list) = rules.get_mut("override").and_then(Value::as_array_mut) {
        list.push(response);
    }
    if let Some(list) = rules.get_mut("underride").and_then(Value::as_array_mut) {
        list.extend(underride);
    }
    rules
}

fn is_default(rule: &Value) -> bool {
    rule.get("default").and_then(Value::as_bool).unwrap_or(false)
}

/// The user's push rules from their stored `m.push_rules` account data (its content), if any:
/// what [`Services::push_rules`] answers, for a caller that has read the account data already.
pub(crate) fn push_rules_from(user_id: &UserId, stored: Option<&str>) -> Result<Value> {
    let stored: Value = match stored {
        Some(content) => serde_json::from_str(content)?,
        None => Value::Null,
    };
    let stored = stored.get("global").unwrap_or(&Value::Null);
    Ok(merge_with_defaults(stored, &default_rules(user_id)))
}

/// The user's stored rules over today's defaults: the user's own rules of each kind ahead of
/// the defaults (behind the master rule), the defaults with the user's `enabled` and `actions`.
fn merge_with_defaults(stored: &Value, defaults: &Value) -> Value {
    let mut merged = Map::new();
    for kind in RULE_KINDS {
        let stored_rules: &[Value] =
            stored.get(*kind).and_then(Value::as_array).map_or(&[], Vec::as_slice);
        let own = stored_rules.iter().filter(|rule| !is_default(rule)).cloned();
        let defaults = defaults.get(*kind).and_then(Value::as_array).into_iter().flatten();
        let defaults: Vec<Value> = defaults
            .map(|rule| {
                let mut rule = rule.clone();
                if let Some(kept) = stored_rules
                    .iter()
                    .find(|kept| is_default(kept) && kept["rule_id"] == rule["rule_id"])
                {
                    for field in ["enabled", "actions"] {
                        if let Some(value) = kept.get(field) {
                            rule[field] = value.clone();
                        }
                    }
                }
                rule
            })
            .collect();
        let (master, rest): (Vec<Value>, Vec<Value>) =
            defaults.into_iter().partition(|rule| rule["rule_id"] == MASTER_RULE);
        merged.insert(
            (*kind).to_owned(),
            Value::Array(master.into_iter().chain(own).chain(rest).collect()),
        );
    }
    Value::Object(merged)
}

/// A user's rules as ruma evaluates them, and whether they are the server's defaults for the
/// user. Default rules differ from one user to another only where they name the user (their
/// ID, their localpart) or use their display name, which lets a big room's event be evaluated
/// once for all the members it does not name (see `push_actions_for`).
#[derive(Debug)]
pub(crate) struct EvaluableRules {
    /// The rules, as ruma evaluates them.
    pub(crate) ruleset: Ruleset,
    /// Whether they are the server's default rules for the user, unchanged.
    pub(crate) is_default: bool,
}

impl EvaluableRules {
    /// The user's merged rules (the `global` ruleset).
    fn new(user_id: &UserId, rules: &Value) -> Self {
        let defaults = merge_with_defaults(&Value::Null, &default_rules(user_id));
        Self { ruleset: evaluable(rules), is_default: *rules == defaults }
    }
}

/// The rules ruma can evaluate: those whose IDs fit their kind (a room rule named by an alias
/// matches no event anyway).
fn evaluable(rules: &Value) -> Ruleset {
    let mut rules = rules.clone();
    let fits = |kind: &str, id: &str| match kind {
        "room" => RoomId::parse(id).is_ok(),
        "sender" => UserId::parse(id).is_ok(),
        _ => true,
    };
    for kind in ["room", "sender"] {
        if let Some(list) = rules.get_mut(kind).and_then(Value::as_array_mut) {
            list.retain(|rule| rule["rule_id"].as_str().is_some_and(|id| fits(kind, id)));
        }
    }
    serde_json::from_value(rules).unwrap_or_else(|error| {
        tracing::debug!(%error, "push rules ruma cannot read: evaluating them as none");
        Ruleset::default()
    })
}

/// Checks a rule's actions as Synapse does: a list of known actions and tweaks.
fn check_actions(actions: &Value) -> Result<()> {
    let valid = actions.as_array().is_some_and(|actions| {
        actions.iter().all(|action| match action {
            Value::String(name) => matches!(name.as_str(), "notify" | "dont_notify" | "coalesce"),
            Value::Object(tweak) => tweak.get("set_tweak").is_some_and(Value::is_string),
            _ => false,
        })
    });
    if valid { Ok(()) } else { Err(Error::bad_json("Invalid actions")) }
}

/// A new rule of the user's from a request body, checked for its kind.
fn new_rule(kind: &str, rule_id: &str, body: &Value) -> Result<Value> {
    let actions = body.get("actions").ok_or_else(|| Error::bad_json("A rule needs actions"))?;
    check_actions(actions)?;
    let mut rule = json!({ "rule_id": rule_id, "default": false, "enabled": true,
                           "actions": actions });
    match kind {
        "override" | "underride" => {
            let conditions = body
                .get("conditions")
                .and_then(Value::as_array)
                .filter(|conditions| {
                    conditions
                        .iter()
                        .all(|condition| condition.get("kind").is_some_and(Value::is_string))
                })
                .ok_or_else(|| Error::bad_json("This rule needs conditions, each with a kind"))?;
            rule["conditions"] = json!(conditions);
        }
        "content" => {
            let pattern = body
                .get("pattern")
                .filter(|pattern| pattern.is_string())
                .ok_or_else(|| Error::bad_json("A content rule needs a pattern"))?;
            rule["pattern"] = pattern.clone();
        }
        _ => {}
    }
    Ok(rule)
}

/// Checks a kind name and a rule ID from a path.
pub fn check_rule_path(kind: &str, rule_id: &str) -> Result<()> {
    if !RULE_KINDS.contains(&kind) {
        return Err(Error::invalid_param("Unknown kind of push rule"));
    }
    if rule_id.is_empty() || rule_id.contains('/') || rule_id.contains('\\') {
        return Err(Error::invalid_param("Invalid push rule ID"));
    }
    Ok(())
}

impl Services {
    /// The user's push rules (the `global` ruleset), defaults merged in.
    pub async fn push_rules(&self, user_id: &UserId) -> Result<Value> {
        let stored = self.store.get_account_data(user_id, None, PUSH_RULES_TYPE).await?;
        push_rules_from(user_id, stored.as_ref().map(|record| record.content.as_str()))
    }

    /// The user's push rules as ruma evaluates them, shared from the cache (event persistence
    /// reads them for every member of a room).
    pub(crate) async fn push_rules_cached(&self, user_id: &UserId) -> Result<Arc<EvaluableRules>> {
        if let Some(rules) = self.caches.push_rules.lock().get(user_id) {
            return Ok(rules.clone());
        }
        let rules = Arc::new(EvaluableRules::new(user_id, &self.push_rules(user_id).await?));
        self.caches.push_rules.lock().put(user_id.to_owned(), rules.clone());
        Ok(rules)
    }

    /// Stores the user's push rules (and wakes their syncs, which carry them).
    pub async fn set_push_rules(&self, user_id: &UserId, rules: &Value) -> Result<()> {
        let content = json!({ "global": rules }).to_string();
        self.store.set_account_data(user_id, None, PUSH_RULES_TYPE, &content).await?;
        self.caches
            .push_rules
            .lock()
            .put(user_id.to_owned(), Arc::new(EvaluableRules::new(user_id, rules)));
        let message = crate::processes::Message::ForgetPushRules { user_id: user_id.to_owned() };
        crate::processes::publish(self.store.as_ref(), &message);
        self.notifier.notify([user_id]);
        Ok(())
    }

    /// One of the user's rules.
    pub async fn push_rule(&self, user_id: &UserId, kind: &str, rule_id: &str) -> Result<Value> {
        check_rule_path(kind, rule_id)?;
        let rules = self.push_rules(user_id).await?;
        rules[kind]
            .as_array()
            .and_then(|list| list.iter().find(|rule| rule["rule_id"] == rule_id))
            .cloned()
            .ok_or_else(|| Error::not_found("No such push rule"))
    }

    /// Adds or replaces one of the user's own rules, placed as asked.
    pub async fn set_push_rule(
        &self,
        user_id: &UserId,
        kind: &str,
        rule_id: &str,
        body: &Value,
        placement: Placement<'_>,
    ) -> Result<()> {
        check_rule_path(kind, rule_id)?;
        if rule_id.starts_with('.') {
            return Err(Error::invalid_param("Rule IDs starting with a dot are the server's"));
        }
        let rule = new_rule(kind, rule_id, body)?;
        let mut rules = self.push_rules(user_id).await?;
        let list = rules[kind].as_array_mut().ok_or_else(|| Error::bug("a kind of push rule"))?;
        let existing = list.iter().position(|rule| rule["rule_id"] == rule_id);
        match (existing, placement) {
            (Some(index), Placement::First) => list[index] = rule,
            (existing, placement) => {
                if let Some(index) = existing {
                    list.remove(index);
                }
                let index = placement_index(list, placement)?;
                list.insert(index, rule);
            }
        }
        self.set_push_rules(user_id, &rules).await
    }

    /// Deletes one of the user's own rules.
    pub async fn delete_push_rule(
        &self,
        user_id: &UserId,
        kind: &str,
        rule_id: &str,
    ) -> Result<()> {
        check_rule_path(kind, rule_id)?;
        let mut rules = self.push_rules(user_id).await?;
        let list = rules[kind].as_array_mut().ok_or_else(|| Error::bug("a kind of push rule"))?;
        let index = list
            .iter()
            .position(|rule| rule["rule_id"] == rule_id)
            .ok_or_else(|| Error::not_found("No such push rule"))?;
        if is_default(&list[index]) {
            return Err(Error::invalid_param("The server's rules can be disabled, not deleted"));
        }
        list.remove(index);
        self.set_push_rules(user_id, &rules).await
    }

    /// Sets `enabled` or `actions` of one rule (the server's included).
    pub async fn set_push_rule_field(
        &self,
        user_id: &UserId,
        kind: &str,
        rule_id: &str,
        field: &str,
        value: Value,
    ) -> Result<()> {
        check_rule_path(kind, rule_id)?;
        match field {
            "enabled" if value.is_boolean() => {}
            "actions" => check_actions(&value)?,
            "enabled" => return Err(Error::bad_json("enabled must be true or false")),
            _ => return Err(Error::invalid_param("Unknown push rule attribute")),
        }
        let mut rules = self.push_rules(user_id).await?;
        let rule = rules[kind]
            .as_array_mut()
            .and_then(|list| list.iter_mut().find(|rule| rule["rule_id"] == rule_id))
            .ok_or_else(|| Error::not_found("No such push rule"))?;
        rule[field] = value;
        self.set_push_rules(user_id, &rules).await
    }
}

/// Where a rule goes among the user's rules of its kind: next to one of theirs, or ahead of
/// them all (behind the master rule).
fn placement_index(list: &[Value], placement: Placement<'_>) -> Result<usize> {
    let find = |id: &str| {
        list.iter()
            .position(|rule| rule["rule_id"] == id && !is_default(rule))
            .ok_or_else(|| Error::not_found("The rule to place it next to does not exist"))
    };
    match placement {
        Placement::First => {
            Ok(list.iter().position(|rule| rule["rule_id"] != MASTER_RULE).unwrap_or(list.len()))
        }
        Placement::Before(id) => find(id),
        Placement::After(id) => find(id).map(|index| index + 1),
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    /// A user who never changed their rules has the defaults, as `push_actions_for` sees
    /// them; one who changed a rule does not.
    #[test]
    fn unchanged_rules_are_known_as_the_defaults() {
        let user = user_id!("@a:x");
        let unchanged = merge_with_defaults(&Value::Null, &default_rules(user));
        assert!(EvaluableRules::new(user, &unchanged).is_default);
        let stored = json!({ "override": [{ "rule_id": ".m.rule.master", "default": true,
                                             "enabled": true, "actions": [] }] });
        let changed = merge_with_defaults(&stored, &default_rules(user));
        assert!(!EvaluableRules::new(user, &changed).is_default);
    }

    #[test]
    fn defaults_carry_the_poll_rules_and_stored_rules_keep_their_choices() {
        let user = user_id!("@a:x");
        let defaults = default_rules(user);
        let underride: Vec<&str> = defaults["underride"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|rule| rule["rule_id"].as_str())
            .collect();
        assert!(underride.ends_with(&[
            ".org.matrix.msc3930.rule.poll_start_one_to_one",
            ".org.matrix.msc3930.rule.poll_start",
            ".org.matrix.msc3930.rule.poll_end_one_to_one",
            ".org.matrix.msc3930.rule.poll_end",
        ]));
        // An old stored ruleset: the master disabled, one rule of the user's.
        let stored = json!({
            "override": [
                { "rule_id": ".m.rule.master", "default": true, "enabled": true, "actions": [],
                  "conditions": [] },
                { "rule_id": "mine", "default": false, "enabled": true, "actions": ["notify"],
                  "conditions": [] },
            ],
            "room": [{ "rule_id": "#alias:x", "default": false, "enabled": true, "actions": [] }],
        });
        let merged = merge_with_defaults(&stored, &defaults);
        let ids: Vec<&str> = merged["override"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["rule_id"].as_str())
            .collect();
        assert_eq!(&ids[..2], [".m.rule.master", "mine"]);
        assert!(ids.contains(&".org.matrix.msc3930.rule.poll_response"));
        assert_eq!(merged["room"][0]["rule_id"], "#alias:x");
        // What ruma evaluates leaves the alias-named room rule out.
        assert!(evaluable(&merged).room.is_empty());
        assert!(evaluable(&merged).override_.iter().any(|rule| rule.rule_id == "mine"));
    }
}
