//! Push rules: each user's ruleset ([`rules`], stored as the `m.push_rules` account data
//! clients also sync), its evaluation with ruma for every new event (which gives the notification and
//! highlight counts), rule editing, and pushers; [`gateway`] sends the notifications to them.

pub(crate) mod gateway;
pub mod prune;
pub mod rules;
pub(crate) mod worker;

use std::{collections::HashMap, sync::Arc};

use rhizome_core::{Error, Result};
use rhizome_room::{Pdu, StateMap};
use rhizome_storage::{PushAction, PusherRecord, StreamPos};
use ruma::{
    OwnedEventId, OwnedRoomId, UInt, UserId,
    events::StateEventType,
    push::{
        Action, FlattenedJson, HighlightTweakValue, PushConditionPowerLevelsCtx,
        PushConditionRoomCtx, Tweak,
    },
    serde::Raw,
};
use serde_json::{Value, value::RawValue as RawJsonValue};

use crate::{
    Requester, Services,
    rooms::{cache::LoadedEvent, format::Format},
};

/// The account data type holding push rules.
pub const PUSH_RULES_TYPE: &str = "m.push_rules";

/// The most notifications `/notifications` returns at once (and its default).
pub const MAX_NOTIFICATIONS: usize = 100;
const DEFAULT_NOTIFICATIONS: usize = 50;

/// One notification of `/notifications`.
#[derive(Debug)]
pub struct Notification {
    /// The room.
    pub room_id: OwnedRoomId,
    /// The event, in the client format without `room_id`.
    pub event: Box<RawJsonValue>,
    /// When it was sent (ms since the epoch).
    pub ts: i64,
    /// Whether a read receipt of the user covers it.
    pub read: bool,
    /// The actions of the push rule that matched.
    pub actions: Vec<Action>,
}

/// A page of `/notifications`.
#[derive(Debug)]
pub struct NotificationsPage {
    /// The notifications, newest first.
    pub notifications: Vec<Notification>,
    /// The token of the next (older) page, if there is one.
    pub next_token: Option<String>,
}

impl Services {
    /// The notifications a new event gives each local joined member other than its sender,
    /// and a local user it invites (for "you were invited" on their phone) unless they filter
    /// out the inviter's invites.
    ///
    /// A big room makes this a large part of the send, so the event is flattened once for all
    /// members (not once per member, as `Ruleset::get_actions` would), and memberships and
    /// rulesets come from their caches.
    pub(crate) async fn push_actions_for(
        &self,
        pdu: &Pdu,
        state: &StateMap,
    ) -> Result<Vec<PushAction>> {
        let memberships = self.room_memberships_cached(&pdu.room_id).await?;
        let mut members: Vec<&UserId> = memberships
            .iter()
            .filter(|member| member.membership == "join")
            .map(|member| member.user_id.as_ref())
            .collect();
        let member_count = UInt::new_saturating(u64::try_from(members.len()).unwrap_or(u64::MAX));
        let invitee = match pdu.state_key.as_deref() {
            Some(key)
                if pdu.kind.to_string() == "m.room.member"
                    && pdu.content_str("membership").as_deref() == Some("invite") =>
            {
                ruma::UserId::parse(key).ok()
            }
            _ => None,
        };
        if let Some(invitee) = &invitee
            && !members.contains(&invitee.as_ref())
            // An invite the invitee ignores (or blocked after it came) does not notify them.
            && self.invite_filter(invitee).await?.rule(&pdu.sender)
                == crate::invite_filter::InviteRule::Allow
        {
            members.push(invitee);
        }
        let power_levels = self.push_power_levels(pdu, state).await?;
        let raw: Raw<Value> = Raw::from_json(pdu.client_event(true, None));
        let event = FlattenedJson::from_raw(&raw);
        let words = EventWords::of(&raw);
        let thread_id = thread_of(pdu);
        // The actions of the members whose rules are the defaults and whom the event does not
        // name: the same for all of them, so evaluated for the first one only.
        let mut unnamed_default: Option<PushAction> = None;
        let mut actions = Vec::new();
        for member in members
            .into_iter()
            .filter(|member| *member != pdu.sender && member.server_name() == self.server_name())
        {
            let display_name = self.push_display_name(state, member).await?;
            let rules = self.push_rules_cached(member).await?;
            let shared = rules.is_default && !words.name(member, &display_name);
            if shared && let Some(action) = &unnamed_default {
                actions.push(PushAction { user_id: member.to_owned(), ..action.clone() });
                continue;
            }
            let mut context = PushConditionRoomCtx::new(
                pdu.room_id.clone(),
                member_count,
                member.to_owned(),
                display_name,
            );
            context.power_levels = power_levels.clone();
            let rule_actions = first_matching_actions(&rules.ruleset, &event, &context).await;
            let notify = rule_actions.iter().any(|action| matches!(action, Action::Notify));
            let highlight = rule_actions.iter().any(|action| {
                matches!(action, Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)))
            });
            let action = PushAction {
                user_id: member.to_owned(),
                notify,
                highlight,
                thread_id: thread_id.clone(),
                actions: serde_json::to_string(rule_actions)?,
            };
            if shared {
                unnamed_default = Some(action.clone());
            }
            if notify || highlight {
                actions.push(action);
            }
        }
        // The shared actions were pushed for every unnamed member; none if they do nothing.
        actions.retain(|action| action.notify || action.highlight);
        Ok(actions)
    }

    /// The member's display name in `state` (their localpart without one), from their member
    /// event as it is now (a redacted one has none). Not from the membership rows: they keep
    /// the name of a member event redacted since.
    async fn push_display_name(&self, state: &StateMap, member: &UserId) -> Result<String> {
        let name = match state.get(&(StateEventType::RoomMember, member.to_string())) {
            Some(id) => {
                self.load_event(id).await?.and_then(|event| event.pdu.content_str("displayname"))
            }
            None => None,
        };
        Ok(name.unwrap_or_else(|| member.localpart().to_owned()))
    }

    /// The power levels push rules see (`sender_notification_permission`), when the room is
    /// known.
    async fn push_power_levels(
        &self,
        pdu: &Pdu,
        state: &StateMap,
    ) -> Result<Option<PushConditionPowerLevelsCtx>> {
        if !self.room_exists(&pdu.room_id).await? {
            return Ok(None);
        }
        let version = self.room_version(&pdu.room_id).await?;
        let rules = version.rules().ok_or_else(|| Error::bug("room of an unknown version"))?;
        let pl_event = match state.get(&(StateEventType::RoomPowerLevels, String::new())) {
            Some(id) => self.load_event(id).await?,
            None => None,
        };
        let content: Option<ruma::events::room::power_levels::RoomPowerLevelsEventContent> =
            pl_event.and_then(|event| event.pdu.content_as().ok());
        let mut creators = Vec::new();
        if let Some(create_id) = state.get(&(StateEventType::RoomCreate, String::new()))
            && let Some(create) = self.load_event(create_id).await?
        {
            creators.push(create.pdu.sender.clone());
        }
        let levels = ruma::events::room::power_levels::RoomPowerLevels::new(
            ruma::events::room::power_levels::RoomPowerLevelsSource::from(content),
            &rules.authorization,
            creators,
        );
        Ok(Some(levels.into()))
    }

    /// The requester's notifications, newest first, from a `next_token` of an earlier page;
    /// only those that highlight with `highlights_only`.
    pub async fn notifications(
        &self,
        requester: &Requester,
        from: Option<&str>,
        limit: Option<usize>,
        highlights_only: bool,
    ) -> Result<NotificationsPage> {
        let before = match from {
            Some(token) => Some(
                token
                    .parse::<StreamPos>()
                    .map_err(|_| Error::invalid_param("Invalid notifications token"))?,
            ),
            None => None,
        };
        let limit = limit.unwrap_or(DEFAULT_NOTIFICATIONS).clamp(1, MAX_NOTIFICATIONS);
        let mut records = self
            .store
            .notifications(
                &requester.user_id,
                before,
                highlights_only,
                i64::try_from(limit + 1).unwrap_or(i64::MAX),
            )
            .await?;
        let next_token = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|record| record.stream_pos.to_string())
        } else {
            None
        };
        let ids: Vec<OwnedEventId> = records.iter().map(|record| record.event_id.clone()).collect();
        let events: HashMap<OwnedEventId, Arc<LoadedEvent>> = self
            .load_events(&ids)
            .await?
            .into_iter()
            .map(|event| (event.pdu.event_id.clone(), event))
            .collect();
        let format =
            Format { viewer: Some(requester), with_room_id: false, bundle_relations: false };
        let mut notifications = Vec::with_capacity(records.len());
        for record in records {
            let Some(event) = events.get(&record.event_id) else { continue };
            let actions = match record.actions.as_deref().map(serde_json::from_str::<Vec<Action>>) {
                Some(Ok(actions)) => actions,
                // Notifications stored before their actions were kept.
                _ => {
                    let mut actions = vec![Action::Notify];
                    if record.highlight {
                        actions.push(Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)));
                    }
                    actions
                }
            };
            notifications.push(Notification {
                room_id: record.room_id,
                event: self.format_event(event, format).await?,
                ts: record.ts,
                read: record.read,
                actions,
            });
        }
        Ok(NotificationsPage { notifications, next_token })
    }

    /// Adds or replaces a pusher of the requester's device (`kind: null` deletes, as the spec
    /// says). Only `http` pushers are taken: there is no e-mail here.
    pub async fn set_pusher(&self, requester: &Requester, pusher: Value) -> Result<()> {
        let text = |field: &str| pusher.get(field).and_then(Value::as_str).map(str::to_owned);
        let (Some(app_id), Some(pushkey)) = (text("app_id"), text("pushkey")) else {
            return Err(Error::bad_json("A pusher needs app_id and pushkey"));
        };
        if pusher.get("kind").is_none_or(Value::is_null) {
            return self.store.delete_pusher(&requester.user_id, &app_id, &pushkey).await;
        }
        if app_id.len() > 64 || pushkey.len() > 512 {
            return Err(Error::invalid_param("app_id or pushkey is too long"));
        }
        match text("kind").as_deref() {
            Some("http") => {
                let url = pusher
                    .pointer("/data/url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::invalid_param("An http pusher needs data.url"))?;
                gateway::check_gateway_url(url)?;
            }
            Some("email") => {
                return Err(Error::invalid_param("This server does not send e-mail"));
            }
            _ => return Err(Error::invalid_param("Unknown pusher kind")),
        }
        let append = pusher.get("append").and_then(Value::as_bool).unwrap_or(false);
        self.store
            .set_pusher(
                &PusherRecord {
                    user_id: requester.user_id.clone(),
                    pushkey,
                    app_id,
                    json: pusher.to_string(),
                    device_id: Some(requester.device_id.clone()),
                    created_ts: rhizome_core::clock::now_millis(),
                },
                append,
            )
            .await
    }

    /// The requester's pushers, as the client gave them.
    pub async fn pushers(&self, requester: &Requester) -> Result<Vec<Value>> {
        let records = self.store.list_pushers(&requester.user_id).await?;
        records
            .iter()
            .map(|record| serde_json::from_str(&record.json).map_err(Error::from))
            .collect()
    }
}

/// Every string of an event (keys and values), lowercased: what tells whether the event names
/// a member. Push rules match strings case-insensitively (ruma lowercases both sides) or
/// exactly, so a rule that looks for a member's ID, localpart or display name can apply only
/// if that name, lowercased, is in here.
struct EventWords(Option<String>);

impl EventWords {
    fn of(raw: &Raw<Value>) -> Self {
        fn collect(value: &Value, into: &mut String) {
            match value {
                Value::String(text) => {
                    into.push_str(&text.to_lowercase());
                    into.push('\n');
                }
                Value::Array(items) => items.iter().for_each(|item| collect(item, into)),
                Value::Object(fields) => {
                    for (key, item) in fields {
                        into.push_str(&key.to_lowercase());
                        into.push('\n');
                        collect(item, into);
                    }
                }
                _ => {}
            }
        }
        // Unreadable, it names everyone: everyone is evaluated on their own.
        Self(raw.deserialize().ok().map(|value| {
            let mut words = String::new();
            collect(&value, &mut words);
            words
        }))
    }

    /// Whether the event may name the member: it holds their localpart (in their ID too) or
    /// their display name. A display name with glob characters (`*`, `?`) may match without
    /// appearing, and an empty one is not looked for by ruma: both count as named, as does
    /// everyone when the event could not be read.
    fn name(&self, member: &UserId, display_name: &str) -> bool {
        let Some(words) = &self.0 else { return true };
        display_name.is_empty()
            || display_name.contains(['*', '?'])
            || words.contains(&member.localpart().to_lowercase())
            || words.contains(&display_name.to_lowercase())
    }
}

/// The thread an event belongs to, if it is in one.
pub(crate) fn thread_of(pdu: &Pdu) -> Option<OwnedEventId> {
    let content: Value = serde_json::from_str(pdu.content.get()).ok()?;
    let relates_to = content.get("m.relates_to")?;
    if relates_to.get("rel_type")?.as_str()? != "m.thread" {
        return None;
    }
    OwnedEventId::try_from(relates_to.get("event_id")?.as_str()?).ok()
}

/// The actions of the first rule of `ruleset` that applies to the (already flattened) event,
/// as ruma's `Ruleset::get_actions` gives them, without flattening the event again for every
/// member of the room.
async fn first_matching_actions<'a>(
    ruleset: &'a ruma::push::Ruleset,
    event: &FlattenedJson,
    context: &PushConditionRoomCtx,
) -> &'a [Action] {
    if event.get_str("sender").is_some_and(|sender| sender == context.user_id) {
        return &[];
    }
    for rule in ruleset {
        if rule.applies(event, context).await {
            return rule.actions();
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use ruma::{push::Ruleset, room_id, user_id};
    use serde_json::json;

    use super::*;

    /// The actions of the event flattened once are those ruma gives flattening it itself, for
    /// mentions by name, by ID and of the room, DMs, notices, member events, own events and a
    /// user rule that mutes the room.
    #[tokio::test]
    async fn one_flattening_gives_rumas_actions() {
        let bob = user_id!("@bob:example.org");
        let room = room_id!("!room:example.org");
        let mut muted = Ruleset::server_default(bob);
        muted.room.insert(
            ruma::push::SimplePushRuleInit {
                actions: Vec::new(),
                default: false,
                enabled: true,
                rule_id: room.to_owned(),
            }
            .into(),
        );
        let events = [
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "hello" } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "hey Bobby Tables, look" } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "@room look",
                    "m.mentions": { "room": true } } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "you",
                    "m.mentions": { "user_ids": ["@bob:example.org"] } } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.notice", "body": "bot" } }),
            json!({ "type": "m.room.member", "sender": "@alice:example.org",
                "state_key": "@bob:example.org", "content": { "membership": "invite" } }),
            json!({ "type": "m.room.message", "sender": "@bob:example.org",
                "content": { "msgtype": "m.text", "body": "mine, Bobby Tables" } }),
        ];
        let mut seen = std::collections::HashSet::new();
        for members in [2_u32, 30] {
            for ruleset in [Ruleset::server_default(bob), muted.clone()] {
                for event in &events {
                    let raw: Raw<Value> = Raw::new(event).unwrap();
                    let context = PushConditionRoomCtx::new(
                        room.to_owned(),
                        UInt::from(members),
                        bob.to_owned(),
                        "Bobby Tables".to_owned(),
                    );
                    let flattened = FlattenedJson::from_raw(&raw);
                    let ours = first_matching_actions(&ruleset, &flattened, &context).await;
                    let theirs = ruleset.get_actions(&raw, &context).await;
                    assert_eq!(
                        serde_json::to_value(ours).unwrap(),
                        serde_json::to_value(theirs).unwrap(),
                        "{event}"
                    );
                    seen.insert(serde_json::to_string(ours).unwrap());
                }
            }
        }
        // The cases differ: no notification, a notification, and a highlight at least.
        assert!(seen.len() >= 3, "{seen:?}");
    }

    /// Default rules differ from one user to another only where they name the user: with the
    /// user's ID and then localpart replaced, two users' defaults are the same rules. (What
    /// lets `push_actions_for` evaluate an event once for every member it does not name.)
    #[test]
    fn default_rules_differ_only_by_the_users_name() {
        let neutral = |user: &UserId| {
            super::rules::default_rules(user)
                .to_string()
                .replace(user.as_str(), "@USER")
                .replace(user.localpart(), "LOCALPART")
        };
        let alice = user_id!("@alice:example.org");
        let bob = user_id!("@bob:example.org");
        assert_eq!(neutral(alice), neutral(bob));
        // ... and they do name the user, so the check above compares something.
        assert!(super::rules::default_rules(alice).to_string().contains("alice"));
        assert_ne!(
            super::rules::default_rules(alice).to_string(),
            super::rules::default_rules(bob).to_string()
        );
    }

    /// Two members with the default rules whom an event does not name get the same actions,
    /// whatever the event, and `EventWords` says a member is named when a rule may name them.
    #[tokio::test]
    async fn members_an_event_does_not_name_get_the_same_actions() {
        let room = room_id!("!room:example.org");
        let members = [
            ("@bob:example.org", "Bobby Tables"),
            ("@carol:example.org", "Carol"),
            ("@dave:example.org", "Élodie Dupré"),
            ("@erin:example.org", "erin"),
            ("@frank:example.org", "F*nk"),
            ("@2:example.org", "two"),
        ];
        let events = [
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "hello" } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "hey BOBBY TABLES, look" } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "ping carol" } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "merci élodie dupré" } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "Fank and Funk" } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "@room look",
                    "m.mentions": { "room": true } } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.text", "body": "you",
                    "m.mentions": { "user_ids": ["@erin:example.org"] } } }),
            json!({ "type": "m.room.message", "sender": "@alice:example.org",
                "content": { "msgtype": "m.notice", "body": "bot 2" } }),
            json!({ "type": "m.room.member", "sender": "@alice:example.org",
                "state_key": "@dave:example.org", "content": { "membership": "invite" } }),
            json!({ "type": "m.room.encrypted", "sender": "@alice:example.org",
                "content": { "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA" } }),
        ];
        let mut named = 0;
        for member_count in [2_u32, 30] {
            for event in &events {
                let raw: Raw<Value> = Raw::new(event).unwrap();
                let flattened = FlattenedJson::from_raw(&raw);
                let words = EventWords::of(&raw);
                let mut unnamed = Vec::new();
                for (user, display_name) in members {
                    let user = UserId::parse(user).unwrap();
                    let rules: Ruleset =
                        serde_json::from_value(super::rules::default_rules(&user)).unwrap();
                    let context = PushConditionRoomCtx::new(
                        room.to_owned(),
                        UInt::from(member_count),
                        user.clone(),
                        display_name.to_owned(),
                    );
                    let actions = first_matching_actions(&rules, &flattened, &context).await;
                    let actions = serde_json::to_string(actions).unwrap();
                    if words.name(&user, display_name) {
                        named += 1;
                    } else {
                        unnamed.push((user, actions));
                    }
                }
                for (user, actions) in &unnamed {
                    assert_eq!(actions, &unnamed[0].1, "{user} for {event}");
                }
            }
        }
        // Some were named (and evaluated on their own): by name, in any case, by ID, by
        // localpart, as invited, and always with a glob in the display name.
        assert!(named >= 2 * (5 + events.len()), "{named}");
    }
}
