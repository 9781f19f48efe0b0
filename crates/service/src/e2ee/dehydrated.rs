//! Dehydrated devices (MSC3814): a device kept on the server while none of the user's
//! clients runs, holding an encrypted pickle only the user can open, receiving to-device
//! messages (room keys) that a new client collects when it rehydrates the device.

use rhizome_core::{Error, Result, clock::now_millis};
use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde_json::{Map, Value, value::RawValue};

use crate::{
    Requester, Services,
    e2ee::keys::{KeyUpload, validate_device_keys},
};

/// A dehydrated device as a client uploads it.
pub struct DehydratedDeviceUpload<'a> {
    /// The new device's ID.
    pub device_id: &'a DeviceId,
    /// Its display name.
    pub display_name: Option<&'a str>,
    /// The encrypted pickle, `{"algorithm": …, …}`.
    pub device_data: &'a RawValue,
    /// Its keys.
    pub keys: KeyUpload<'a>,
}

/// To-device messages for a dehydrated device, with the token to continue from.
#[derive(Debug)]
pub struct DehydratedEvents {
    /// The messages, as to-device events.
    pub events: Vec<ruma::serde::Raw<ruma::events::AnyToDeviceEvent>>,
    /// The token for the next request.
    pub next_batch: String,
}

impl Services {
    /// Stores the user's dehydrated device: a device with its keys and pickle, replacing (and
    /// deleting) the previous dehydrated device.
    pub async fn put_dehydrated_device(
        &self,
        requester: &Requester,
        upload: DehydratedDeviceUpload<'_>,
    ) -> Result<OwnedDeviceId> {
        let user_id = &requester.user_id;
        let data: Map<String, Value> = serde_json::from_str(upload.device_data.get())
            .map_err(|_| Error::bad_json("device_data must be a JSON object"))?;
        if !data.get("algorithm").is_some_and(Value::is_string) {
            return Err(Error::bad_json("device_data needs an algorithm"));
        }
        let Some(device_keys) = upload.keys.device_keys else {
            return Err(Error::bad_json("A dehydrated device needs its device keys"));
        };
        validate_device_keys(device_keys, user_id, upload.device_id)?;
        let previous = self.store.dehydrated_device(user_id).await?;
        let is_previous = previous.as_ref().is_some_and(|(id, _)| id == upload.device_id);
        if !is_previous && self.store.get_device(user_id, upload.device_id).await?.is_some() {
            return Err(Error::invalid_param("A device with that ID exists already"));
        }
        self.store
            .upsert_device(user_id, upload.device_id, upload.display_name, now_millis())
            .await?;
        let as_device = Requester {
            user_id: user_id.clone(),
            device_id: upload.device_id.to_owned(),
            is_admin: false,
        };
        if let Err(error) = self.upload_keys(&as_device, upload.keys).await {
            self.delete_device(user_id, upload.device_id).await?;
            return Err(error);
        }
        let replaced = self
            .store
            .set_dehydrated_device(user_id, upload.device_id, upload.device_data.get())
            .await?;
        if let Some(replaced) = replaced {
            self.delete_device(user_id, &replaced).await?;
        } else {
            self.on_device_list_change(user_id).await?;
        }
        Ok(upload.device_id.to_owned())
    }

    /// The user's dehydrated device and its pickle; `M_NOT_FOUND` when there is none.
    pub async fn dehydrated_device(&self, user_id: &UserId) -> Result<(OwnedDeviceId, String)> {
        self.store
            .dehydrated_device(user_id)
            .await?
            .ok_or_else(|| Error::not_found("No dehydrated device"))
    }

    /// Deletes the user's dehydrated device; returns its ID.
    pub async fn delete_dehydrated_device(&self, user_id: &UserId) -> Result<OwnedDeviceId> {
        let device_id = self
            .store
            .delete_dehydrated_device(user_id)
            .await?
            .ok_or_else(|| Error::not_found("No dehydrated device"))?;
        self.delete_device(user_id, &device_id).await?;
        Ok(device_id)
    }

    /// The to-device messages waiting for the user's dehydrated device. `next_batch` (from the
    /// previous answer) shows which were received; those are deleted.
    pub async fn dehydrated_device_events(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        next_batch: Option<&str>,
    ) -> Result<DehydratedEvents> {
        let current = self.store.dehydrated_device(user_id).await?;
        if current.is_none_or(|(id, _)| id != device_id) {
            return Err(Error::forbidden("That is not your dehydrated device"));
        }
        let since = next_batch
            .map(|token| {
                token.parse::<i64>().map_err(|_| Error::invalid_param("Invalid next_batch token"))
            })
            .transpose()?;
        let upper = self.store.current_stream_pos();
        let records = self.waiting_to_device(user_id, device_id, since, upper).await?;
        let events = records.iter().map(super::to_device::event).collect::<Result<_>>()?;
        Ok(DehydratedEvents { events, next_batch: upper.to_string() })
    }
}
