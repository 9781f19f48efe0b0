//! To-device messages: `PUT /sendToDevice/{type}/{txnId}` (idempotent per sending device, `*`
//! fanning out to every device of the recipient; other servers' users' messages sent to their
//! servers as durable `m.direct_to_device` EDUs) and their delivery in `/sync`, where a message
//! stays until the device shows it received it by syncing from a later token.

use rhizome_core::{Error, Result};
use rhizome_storage::{
    StreamPos,
    e2ee::{ToDeviceMessage, ToDeviceRecord, ToDeviceTarget},
};
use std::collections::BTreeMap;

use ruma::{
    DeviceId, OwnedServerName, OwnedUserId, ServerName, UserId,
    api::client::to_device::send_event_to_device::v3::Messages, events::AnyToDeviceEvent,
    serde::Raw, to_device::DeviceIdOrAllDevices,
};
use serde_json::{json, value::RawValue};

use crate::{Requester, Services, federation::random_string};

/// The most to-device messages one sync delivers; the rest come in the next one.
pub const TO_DEVICE_LIMIT: usize = 100;

/// The most messages one `sendToDevice` may queue.
const MAX_MESSAGES_PER_REQUEST: usize = 10_000;

pub(crate) fn event(record: &ToDeviceRecord) -> Result<Raw<AnyToDeviceEvent>> {
    let content = RawValue::from_string(record.content.clone())?;
    let event = json!({ "type": record.event_type, "sender": record.sender, "content": content });
    Ok(Raw::from_json(serde_json::value::to_raw_value(&event)?))
}

/// Messages for one server's users: by user, by device ID (or `*`).
type ServerMessages = BTreeMap<OwnedUserId, BTreeMap<String, Box<RawValue>>>;

/// Roughly the most content one `m.direct_to_device` EDU carries; more go in several.
const MAX_EDU_CONTENT_BYTES: usize = 48 * 1024;

impl Services {
    /// `sendToDevice`: queues the messages for local devices and wakes the recipients'
    /// syncs; messages for other servers' users go to their servers as durable
    /// `m.direct_to_device` EDUs. A repeated transaction ID of the same device sends nothing
    /// again.
    pub async fn send_to_device(
        &self,
        requester: &Requester,
        event_type: &str,
        txn_id: &str,
        messages: &Messages,
    ) -> Result<()> {
        let mut queued = Vec::new();
        let mut remote: BTreeMap<OwnedServerName, ServerMessages> = BTreeMap::new();
        let mut count = 0usize;
        for (user_id, devices) in messages {
            for (target, content) in devices {
                let content = content.json();
                if !content.get().trim_start().starts_with('{') {
                    return Err(Error::bad_json("To-device message content must be an object"));
                }
                count += 1;
                if user_id.server_name() != self.server_name() {
                    let device = match target {
                        DeviceIdOrAllDevices::AllDevices => "*".to_owned(),
                        DeviceIdOrAllDevices::DeviceId(device_id) => device_id.to_string(),
                    };
                    remote
                        .entry(user_id.server_name().to_owned())
                        .or_default()
                        .entry(user_id.clone())
                        .or_default()
                        .insert(device, content.to_owned());
                    continue;
                }
                let target = match target {
                    DeviceIdOrAllDevices::AllDevices => ToDeviceTarget::AllDevices,
                    DeviceIdOrAllDevices::DeviceId(device_id) => {
                        ToDeviceTarget::Device(device_id.clone())
                    }
                };
                queued.push(ToDeviceMessage {
                    user_id: user_id.clone(),
                    target,
                    content: content.get().to_owned(),
                });
            }
        }
        if count > MAX_MESSAGES_PER_REQUEST {
            return Err(Error::invalid_param(format!(
                "At most {MAX_MESSAGES_PER_REQUEST} messages may be sent at once"
            )));
        }
        // The transaction is recorded even when every message goes elsewhere, so a retry
        // sends nothing twice.
        let sent = self
            .store
            .queue_to_device(&requester.user_id, &requester.device_id, txn_id, event_type, &queued)
            .await?;
        let Some((_, recipients)) = sent else { return Ok(()) };
        self.notifier.notify(recipients.iter().map(|user| user.as_ref()));
        for (server, messages) in remote {
            self.send_to_device_remote(&requester.user_id, event_type, &server, messages).await?;
        }
        Ok(())
    }

    /// Queues one server's messages as `m.direct_to_device` EDUs, each with its own
    /// `message_id`, split by recipient when they are large.
    async fn send_to_device_remote(
        &self,
        sender: &UserId,
        event_type: &str,
        server: &ServerName,
        messages: ServerMessages,
    ) -> Result<()> {
        let mut batches: Vec<ServerMessages> = vec![ServerMessages::new()];
        let mut size = 0;
        for (user_id, devices) in messages {
            let user_size: usize = devices.values().map(|content| content.get().len()).sum();
            if size > 0 && size + user_size > MAX_EDU_CONTENT_BYTES {
                batches.push(ServerMessages::new());
                size = 0;
            }
            size += user_size;
            if let Some(batch) = batches.last_mut() {
                batch.insert(user_id, devices);
            }
        }
        let destinations = [server.to_owned()];
        for batch in batches.into_iter().filter(|batch| !batch.is_empty()) {
            let content = json!({
                "sender": sender,
                "type": event_type,
                "message_id": random_string(24),
                "messages": batch,
            });
            self.queue_durable_edu(&destinations, "m.direct_to_device", &content).await?;
        }
        Ok(())
    }

    /// The to-device messages a sync delivers: those waiting up to `upper`. Syncing from
    /// `since` shows the device received everything up to it, which is deleted then; a sync
    /// retried from the same `since` gets the same messages again.
    pub(crate) async fn sync_to_device(
        &self,
        requester: &Requester,
        since: Option<StreamPos>,
        upper: StreamPos,
    ) -> Result<Vec<Raw<AnyToDeviceEvent>>> {
        let records =
            self.waiting_to_device(&requester.user_id, &requester.device_id, since, upper).await?;
        records.iter().map(event).collect()
    }

    /// Waiting messages of a device up to `upper`, at most [`TO_DEVICE_LIMIT`], after deleting
    /// those up to `since` (received). Messages beyond the limit move past `upper` so that a
    /// later `since` does not delete them unseen.
    pub(crate) async fn waiting_to_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        since: Option<StreamPos>,
        upper: StreamPos,
    ) -> Result<Vec<ToDeviceRecord>> {
        let limit = i64::try_from(TO_DEVICE_LIMIT + 1).unwrap_or(i64::MAX);
        let fetch = || self.store.to_device_messages(user_id, device_id, upper, limit);
        let mut records = fetch().await?;
        // Only write when there is something to delete (most syncs have nothing).
        if let (Some(since), Some(first)) = (since, records.first())
            && first.stream_pos <= since
        {
            self.store.delete_to_device_messages(user_id, device_id, since).await?;
            records = fetch().await?;
        }
        if records.len() > TO_DEVICE_LIMIT {
            records.truncate(TO_DEVICE_LIMIT);
            if let Some(last) = records.last() {
                self.store.defer_to_device_messages(user_id, device_id, last).await?;
            }
        }
        Ok(records)
    }
}
