//! The sliding sync extensions: to-device messages (with their own `since`), end-to-end
//! encryption (device lists, one-time key counts, unused fallback key types), account data
//! (global, and per room for the rooms in scope), receipts and typing (for the joined rooms in
//! scope), and thread subscriptions (MSC4308). An extension's `lists` and `rooms` narrow its
//! scope to rooms of those lists and subscriptions; by default it covers every room the
//! response selects.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use rhizome_core::{Error, Result};
use rhizome_storage::{ReceiptRecord, StreamPos};
use ruma::{
    OneTimeKeyAlgorithm, OwnedEventId, OwnedRoomId, RoomId,
    api::client::sync::sync_events::v5::{self, request::ExtensionRoomConfig},
};
use serde_json::{Value, json};

use super::{Ctx, connection::ConnState, lists::Relevant, lists::Selection, room_from};
use crate::{
    Services, account_data::is_deleted, push::PUSH_RULES_TYPE, rooms::format::raw,
    sync::receipt_content,
};

/// What the rooms part of the response leaves for the extensions.
pub(super) struct Input<'a> {
    pub(super) selection: &'a Selection,
    pub(super) previous: &'a ConnState,
    /// The timeline events of the rooms sent in full.
    pub(super) full_timelines: HashMap<OwnedRoomId, Vec<OwnedEventId>>,
    /// Receipts changed in the other joined rooms since they were last sent.
    pub(super) receipts: HashMap<OwnedRoomId, Vec<ReceiptRecord>>,
}

/// Whether an extension with these `lists` and `rooms` covers a selected room.
fn in_scope(
    lists: Option<&[String]>,
    rooms: Option<&[ExtensionRoomConfig]>,
    room_id: &RoomId,
    relevant: &Relevant,
) -> bool {
    let by_list = match lists {
        None => !relevant.lists.is_empty(),
        Some(names) => names.iter().any(|name| name == "*" || relevant.lists.contains(name)),
    };
    let by_room = match rooms {
        None => relevant.subscribed,
        Some(configs) => configs.iter().any(|config| match config {
            ExtensionRoomConfig::AllSubscribed => relevant.subscribed,
            ExtensionRoomConfig::Room(id) => id == room_id,
            _ => false,
        }),
    };
    by_list || by_room
}

fn event<T>(value: &Value) -> Result<ruma::serde::Raw<T>> {
    Ok(raw(serde_json::value::to_raw_value(value)?))
}

impl Services {
    /// Fills the enabled extensions; whether any carries something new.
    pub(super) async fn sliding_extensions(
        &self,
        ctx: &Ctx<'_>,
        input: &Input<'_>,
        extensions: &mut v5::response::Extensions,
    ) -> Result<bool> {
        let config = &ctx.request.extensions;
        let mut has_data = false;
        if config.to_device.enabled == Some(true) {
            has_data |= self.to_device_extension(ctx, extensions).await?;
        }
        if config.e2ee.enabled == Some(true) {
            has_data |= self.e2ee_extension(ctx, extensions).await?;
        }
        if config.account_data.enabled == Some(true) {
            let scope =
                (config.account_data.lists.as_deref(), config.account_data.rooms.as_deref());
            has_data |= self.account_data_extension(ctx, input, scope, extensions).await?;
        }
        if config.receipts.enabled == Some(true) {
            let scope = (config.receipts.lists.as_deref(), config.receipts.rooms.as_deref());
            has_data |= self.receipts_extension(ctx, input, scope, extensions).await?;
        }
        if config.thread_subscriptions.enabled == Some(true) {
            has_data |= self.thread_subscriptions_extension(ctx, extensions).await?;
        }
        if config.typing.enabled == Some(true) {
            let scope = (config.typing.lists.as_deref(), config.typing.rooms.as_deref());
            for (room_id, relevant) in &input.selection.rooms {
                if relevant.membership.membership != "join"
                    || !in_scope(scope.0, scope.1, room_id, relevant)
                {
                    continue;
                }
                let sent = input.previous.rooms.get(room_id).map(Arc::as_ref);
                let since = match room_from(sent, &relevant.membership) {
                    Some(_) => sent.map(|sent| sent.typing_serial),
                    None => None,
                };
                if let Some(users) = self.typing_since(room_id, since) {
                    let typing = json!({ "type": "m.typing", "content": { "user_ids": users } });
                    extensions.typing.rooms.insert(room_id.clone(), event(&typing)?);
                    has_data = true;
                }
            }
        }
        Ok(has_data)
    }

    /// Thread subscription changes since the connection's last response (MSC4308), the
    /// newest up to the limit, with a token to page back for the rest.
    async fn thread_subscriptions_extension(
        &self,
        ctx: &Ctx<'_>,
        extensions: &mut v5::response::Extensions,
    ) -> Result<bool> {
        use ruma::api::client::threads::get_thread_subscriptions_changes::unstable::{
            ThreadSubscription, ThreadUnsubscription,
        };
        let config = &ctx.request.extensions.thread_subscriptions;
        let limit =
            config.limit.map_or(100, |limit| usize::try_from(u64::from(limit)).unwrap_or(100));
        let page = self
            .thread_subscription_changes(
                &ctx.requester.user_id,
                Some(ctx.upper.pos),
                ctx.since.map(|since| since.pos),
                limit,
            )
            .await?;
        let out = &mut extensions.thread_subscriptions;
        for change in page.changes {
            let bump_stamp = ruma::UInt::new_saturating(change.stream_pos.unsigned_abs());
            if change.subscribed {
                out.subscribed.entry(change.room_id).or_default().insert(
                    change.thread_root_id,
                    ThreadSubscription::new(change.automatic, bump_stamp),
                );
            } else {
                out.unsubscribed
                    .entry(change.room_id)
                    .or_default()
                    .insert(change.thread_root_id, ThreadUnsubscription::new(bump_stamp));
            }
        }
        out.prev_batch = page.more_from.map(|pos| pos.to_string());
        Ok(!out.is_empty())
    }

    /// To-device messages after the extension's own `since`, which shows the device received
    /// everything up to it.
    async fn to_device_extension(
        &self,
        ctx: &Ctx<'_>,
        extensions: &mut v5::response::Extensions,
    ) -> Result<bool> {
        let since = match ctx.request.extensions.to_device.since.as_deref() {
            Some(since) => Some(
                since
                    .parse::<StreamPos>()
                    .map_err(|_| Error::invalid_param("Invalid to-device since token"))?,
            ),
            None => None,
        };
        // A `since` past this response cannot show anything was received beyond it.
        let since = since.map(|since| since.min(ctx.upper.pos));
        let events = self.sync_to_device(ctx.requester, since, ctx.upper.pos).await?;
        let has_data = !events.is_empty();
        let mut to_device = v5::response::ToDevice::default();
        to_device.next_batch = ctx.upper.pos.to_string();
        to_device.events = events;
        extensions.to_device = Some(to_device);
        Ok(has_data)
    }

    /// Device-list changes since the connection's last response, one-time key counts and
    /// unused fallback key types.
    async fn e2ee_extension(
        &self,
        ctx: &Ctx<'_>,
        extensions: &mut v5::response::Extensions,
    ) -> Result<bool> {
        let (user_id, device_id) = (&ctx.requester.user_id, &ctx.requester.device_id);
        let e2ee = &mut extensions.e2ee;
        if let Some(since) = ctx.since {
            let (changed, left) =
                self.device_list_changes(user_id, since.pos, ctx.upper.pos).await?;
            e2ee.device_lists.changed = changed;
            e2ee.device_lists.left = left;
        }
        e2ee.device_one_time_keys_count = self.one_time_key_counts(user_id, device_id).await?;
        e2ee.device_unused_fallback_key_types = Some(
            self.store
                .unused_fallback_key_algorithms(user_id, device_id)
                .await?
                .iter()
                .map(|algorithm| OneTimeKeyAlgorithm::from(algorithm.as_str()))
                .collect(),
        );
        Ok(!e2ee.device_lists.changed.is_empty() || !e2ee.device_lists.left.is_empty())
    }

    /// Global account data changed since the last response (all of it at first, with the
    /// default push rules), and room account data of the rooms in scope changed since each
    /// was last sent (all of it for rooms sent in full).
    async fn account_data_extension(
        &self,
        ctx: &Ctx<'_>,
        input: &Input<'_>,
        (lists, rooms): (Option<&[String]>, Option<&[ExtensionRoomConfig]>),
        extensions: &mut v5::response::Extensions,
    ) -> Result<bool> {
        let since = ctx.since.map(|since| since.pos);
        let mut room_from_pos: BTreeMap<&RoomId, Option<StreamPos>> = BTreeMap::new();
        for (room_id, relevant) in &input.selection.rooms {
            if in_scope(lists, rooms, room_id, relevant) {
                let sent = input.previous.rooms.get(room_id).map(Arc::as_ref);
                room_from_pos.insert(room_id, room_from(sent, &relevant.membership));
            }
        }
        let lowest = room_from_pos.values().copied().chain([since]).min().flatten();
        let records = self.store.account_data_since(&ctx.requester.user_id, lowest).await?;
        let data = &mut extensions.account_data;
        let mut saw_push_rules = false;
        for record in records.into_iter().filter(|record| record.stream_pos <= ctx.upper.pos) {
            let content: Value = serde_json::from_str(&record.content)?;
            let value = json!({ "type": record.data_type, "content": content });
            match &record.room_id {
                None => {
                    saw_push_rules |= record.data_type == PUSH_RULES_TYPE;
                    // Deleted data (MSC3391) goes to those who had it, not to a fresh start.
                    let fresh = since.is_none() && is_deleted(&record.content);
                    if !fresh && since.is_none_or(|since| record.stream_pos > since) {
                        data.global.push(event(&value)?);
                    }
                }
                Some(room_id) => {
                    let key: &RoomId = room_id;
                    let Some(from) = room_from_pos.get(&key) else { continue };
                    let fresh = from.is_none() && is_deleted(&record.content);
                    if !fresh && from.is_none_or(|from| record.stream_pos > from) {
                        data.rooms.entry(room_id.clone()).or_default().push(event(&value)?);
                    }
                }
            }
        }
        if since.is_none() && !saw_push_rules {
            let rules = self.push_rules(&ctx.requester.user_id).await?;
            let value = json!({ "type": PUSH_RULES_TYPE, "content": { "global": rules } });
            data.global.push(event(&value)?);
        }
        Ok(!data.global.is_empty() || !data.rooms.is_empty())
    }

    /// Receipts of the joined rooms in scope: those changed since the room was last sent, or
    /// for a room sent in full those on its timeline's events and the user's own.
    async fn receipts_extension(
        &self,
        ctx: &Ctx<'_>,
        input: &Input<'_>,
        (lists, rooms): (Option<&[String]>, Option<&[ExtensionRoomConfig]>),
        extensions: &mut v5::response::Extensions,
    ) -> Result<bool> {
        let me = &ctx.requester.user_id;
        let mut has_data = false;
        let wanted = |room_id: &OwnedRoomId, relevant: &Relevant| {
            relevant.membership.membership == "join" && in_scope(lists, rooms, room_id, relevant)
        };
        // The rooms sent in full: all their receipts, in one query.
        let full: Vec<&RoomId> = input
            .selection
            .rooms
            .iter()
            .filter(|(room_id, relevant)| {
                wanted(room_id, relevant) && input.full_timelines.contains_key(*room_id)
            })
            .map(|(room_id, _)| room_id.as_ref())
            .collect();
        let mut in_full: HashMap<OwnedRoomId, Vec<ReceiptRecord>> = HashMap::new();
        if !full.is_empty() {
            for receipt in self.store.receipts_since(&full, None).await? {
                in_full.entry(receipt.room_id.clone()).or_default().push(receipt);
            }
        }
        for (room_id, relevant) in &input.selection.rooms {
            if !wanted(room_id, relevant) {
                continue;
            }
            let receipts: Vec<ReceiptRecord> = match input.full_timelines.get(room_id) {
                Some(timeline) => in_full
                    .remove(room_id)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|receipt| receipt.stream_pos <= ctx.upper.pos)
                    .filter(|receipt| {
                        receipt.user_id == *me || timeline.contains(&receipt.event_id)
                    })
                    .collect(),
                None => input.receipts.get(room_id).cloned().unwrap_or_default(),
            };
            let visible: Vec<ReceiptRecord> = receipts
                .into_iter()
                .filter(|receipt| {
                    receipt.receipt_type != "m.read.private" || receipt.user_id == *me
                })
                .collect();
            if visible.is_empty() {
                continue;
            }
            let value = json!({ "type": "m.receipt", "content": receipt_content(&visible) });
            extensions.receipts.rooms.insert(room_id.clone(), event(&value)?);
            has_data = true;
        }
        Ok(has_data)
    }
}
