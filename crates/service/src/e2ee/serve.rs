//! What other servers may ask of this one about its users' encryption keys: `GET
//! /user/devices/{userId}` (the published device list with its latest `stream_id`), `POST
//! /user/keys/query` and `POST /user/keys/claim`. Local users only, bounded in size; other
//! servers see the owner's signatures and no device display names.

use std::collections::BTreeMap;

use rhizome_core::{Error, Result};
use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedUserId, UInt, UserId,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
    encryption::DeviceKeys,
    serde::Raw,
};
use serde_json::Value;

use crate::{Services, e2ee::keys::raw_json, federation::devices::MAX_DEVICES_PER_USER};

/// The most users one query or claim may name.
pub const MAX_USERS_PER_REQUEST: usize = 1_000;
/// The most devices one query or claim may name in all.
pub const MAX_DEVICES_PER_REQUEST: usize = 10_000;

impl Services {
    /// Refuses a user of another server, and one that does not exist here.
    async fn local_user_for_federation(&self, user_id: &UserId) -> Result<()> {
        if user_id.server_name() != self.server_name() {
            return Err(Error::invalid_param("That user is not of this server"));
        }
        if self.store.get_user(user_id).await?.is_none() {
            return Err(Error::not_found("No such user"));
        }
        Ok(())
    }

    /// `GET /user/devices/{userId}`: the user's devices with keys and the
    /// cross-signing keys, as published (publishing first whatever changed).
    pub async fn federation_user_devices(
        &self,
        user_id: &UserId,
    ) -> Result<get_devices::v1::Response> {
        self.local_user_for_federation(user_id).await?;
        let published = self.publish_device_list(user_id).await?;
        let stream_id = UInt::try_from(published.stream_id.max(0))
            .map_err(|_| Error::bug("a device-list stream ID out of range"))?;
        let mut response = get_devices::v1::Response::new(user_id.to_owned(), stream_id);
        for device in published.devices.iter().take(MAX_DEVICES_PER_USER) {
            let Some(keys) = &device.keys else { continue };
            let keys: Raw<DeviceKeys> = raw_json(&serde_json::from_str::<Value>(keys)?)?;
            response.devices.push(get_devices::v1::UserDevice::new(device.device_id.clone(), keys));
        }
        if let Some(master) = &published.master_key {
            response.master_key = Some(raw_json(&serde_json::from_str::<Value>(master)?)?);
        }
        if let Some(self_signing) = &published.self_signing_key {
            response.self_signing_key =
                Some(raw_json(&serde_json::from_str::<Value>(self_signing)?)?);
        }
        Ok(response)
    }

    /// `POST /user/keys/query` for another server: local users' device and cross-signing keys.
    pub async fn federation_query_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<get_keys::v1::Response> {
        check_size(wanted.len(), wanted.values().map(Vec::len).sum())?;
        let mut response = get_keys::v1::Response::default();
        for (user_id, device_ids) in wanted {
            if user_id.server_name() != self.server_name() {
                continue;
            }
            let keys = self.local_user_keys(user_id, device_ids, None).await?;
            response.device_keys.insert(user_id.clone(), keys.devices);
            if let Some(key) = keys.master {
                response.master_keys.insert(user_id.clone(), key);
            }
            if let Some(key) = keys.self_signing {
                response.self_signing_keys.insert(user_id.clone(), key);
            }
        }
        Ok(response)
    }

    /// `POST /user/keys/claim` for another server: one key per device of local users.
    pub async fn federation_claim_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    ) -> Result<claim_keys::v1::Response> {
        check_size(wanted.len(), wanted.values().map(BTreeMap::len).sum())?;
        let mut claimed = BTreeMap::new();
        for (user_id, devices) in wanted {
            if user_id.server_name() != self.server_name() {
                continue;
            }
            let keys = self.claim_local_keys(user_id, devices).await?;
            if !keys.is_empty() {
                claimed.insert(user_id.clone(), keys);
            }
        }
        Ok(claim_keys::v1::Response::new(claimed))
    }
}

/// Refuses a query or claim naming too many users or devices.
fn check_size(users: usize, devices: usize) -> Result<()> {
    if users > MAX_USERS_PER_REQUEST || devices > MAX_DEVICES_PER_REQUEST {
        return Err(Error::invalid_param(format!(
            "At most {MAX_USERS_PER_REQUEST} users and {MAX_DEVICES_PER_REQUEST} devices at once"
        )));
    }
    Ok(())
}
