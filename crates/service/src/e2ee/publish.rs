//! Local users' device lists as other servers see them (Server-Server API, "Device
//! Management"): after every change of a user's devices, keys or cross-signing keys, the
//! difference from what was last published goes to every server sharing a room with the user,
//! as `m.device_list_update` EDUs numbered in the user's own sequence (`stream_id`, `prev_id`)
//! and an `m.signing_key_update` EDU, through the durable queue. `GET /user/devices` serves
//! the published list with its latest `stream_id`, so a server that fetched it can apply the
//! updates that follow.
//!
//! Device display names stay on this server: other servers see device IDs and keys only.

use std::collections::{BTreeMap, BTreeSet};

use rhizome_core::Result;
use rhizome_storage::device_lists::{PublishedDevice, PublishedDeviceChange, PublishedDeviceList};
use ruma::{OwnedServerName, UserId};
use serde_json::{Value, json};

use crate::{Services, e2ee::keys::merge_signatures};

/// The form of a key object published: the stored JSON with the owner's signatures merged.
fn with_signatures<'a>(
    json: &str,
    signatures: impl IntoIterator<Item = &'a rhizome_storage::e2ee::SignatureRecord>,
) -> Result<String> {
    let mut object: Value = serde_json::from_str(json)?;
    merge_signatures(&mut object, signatures);
    Ok(object.to_string())
}

/// The device changes that turn `published` into `current`, by device ID.
pub(crate) fn device_changes(
    published: &[PublishedDevice],
    current: &[PublishedDevice],
) -> Vec<PublishedDeviceChange> {
    let before: BTreeMap<_, _> =
        published.iter().map(|device| (&device.device_id, device)).collect();
    let now: BTreeMap<_, _> = current.iter().map(|device| (&device.device_id, device)).collect();
    let mut changes = Vec::new();
    for (device_id, device) in &now {
        if before.get(device_id).is_none_or(|old| old.keys != device.keys) {
            changes.push(PublishedDeviceChange {
                device_id: (*device_id).clone(),
                keys: device.keys.clone(),
                deleted: false,
            });
        }
    }
    for device_id in before.keys().filter(|device_id| !now.contains_key(*device_id)) {
        changes.push(PublishedDeviceChange {
            device_id: (*device_id).clone(),
            keys: None,
            deleted: true,
        });
    }
    changes.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    changes
}

impl Services {
    /// A local user's devices, keys and cross-signing keys as they would be published now
    /// (`stream_id` left at 0).
    pub(crate) async fn publishable_device_list(
        &self,
        user_id: &UserId,
    ) -> Result<PublishedDeviceList> {
        let signatures = self.store.signatures_on(user_id, &[user_id]).await?;
        let keys: BTreeMap<_, _> = self
            .store
            .device_keys(user_id, &[])
            .await?
            .into_iter()
            .map(|record| (record.device_id, record.json))
            .collect();
        let mut list = PublishedDeviceList::default();
        for device in self.store.list_devices(user_id).await? {
            let keys = match keys.get(&device.device_id) {
                Some(json) => Some(with_signatures(
                    json,
                    signatures.iter().filter(|s| s.target_key_id == device.device_id.as_str()),
                )?),
                None => None,
            };
            list.devices.push(PublishedDevice { device_id: device.device_id, keys });
        }
        list.devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        let cross = self.store.cross_signing_keys(user_id).await?;
        if let Some(master) = &cross.master {
            list.master_key = Some(with_signatures(
                &master.json,
                signatures.iter().filter(|s| s.target_key_id == master.public_key),
            )?);
        }
        list.self_signing_key = cross.self_signing.map(|key| key.json);
        Ok(list)
    }

    /// The other servers with members joined to a room the user is joined to.
    pub(crate) async fn servers_sharing_rooms_with(
        &self,
        user_id: &UserId,
    ) -> Result<Vec<OwnedServerName>> {
        let mut servers = BTreeSet::new();
        for membership in self.user_memberships_cached(user_id).await?.iter() {
            if membership.membership == "join" {
                servers.extend(self.room_servers(&membership.room_id).await?);
            }
        }
        Ok(servers.into_iter().collect())
    }

    /// Sends other servers what changed of a local user's devices since it was last
    /// published, and records it as published. Returns the published list.
    pub(crate) async fn publish_device_list(
        &self,
        user_id: &UserId,
    ) -> Result<PublishedDeviceList> {
        let lock = self.federation.devices.publish_lock(user_id);
        let _guard = lock.lock().await;
        let current = self.publishable_device_list(user_id).await?;
        let mut published = self.store.published_device_list(user_id).await?;
        let changes = device_changes(&published.devices, &current.devices);
        let signing_changed = published.master_key != current.master_key
            || published.self_signing_key != current.self_signing_key;
        if changes.is_empty() && !signing_changed {
            return Ok(published);
        }
        let destinations = self.servers_sharing_rooms_with(user_id).await?;
        if !changes.is_empty() {
            let (mut previous, stream_ids) =
                self.store.publish_device_changes(user_id, &changes).await?;
            for (change, stream_id) in changes.iter().zip(stream_ids) {
                let mut content = json!({
                    "user_id": user_id,
                    "device_id": change.device_id,
                    "stream_id": stream_id,
                    "prev_id": if previous == 0 { json!([]) } else { json!([previous]) },
                });
                if change.deleted {
                    content["deleted"] = json!(true);
                } else if let Some(keys) = &change.keys {
                    content["keys"] = serde_json::from_str(keys)?;
                }
                self.queue_durable_edu(&destinations, "m.device_list_update", &content).await?;
                previous = stream_id;
            }
            published.stream_id = previous;
        }
        if signing_changed {
            self.store
                .publish_signing_keys(
                    user_id,
                    current.master_key.as_deref(),
                    current.self_signing_key.as_deref(),
                )
                .await?;
            let mut content = json!({ "user_id": user_id });
            if let Some(master) = &current.master_key {
                content["master_key"] = serde_json::from_str(master)?;
            }
            if let Some(self_signing) = &current.self_signing_key {
                content["self_signing_key"] = serde_json::from_str(self_signing)?;
            }
            self.queue_durable_edu(&destinations, "m.signing_key_update", &content).await?;
        }
        Ok(PublishedDeviceList { stream_id: published.stream_id, ..current })
    }

    /// Publishes a local user's device list after a change, logging (not returning) a
    /// failure: the change itself is done, and the next one publishes the difference again.
    pub(crate) async fn publish_device_list_after_change(&self, user_id: &UserId) {
        if !self.config.federation.enabled || user_id.server_name() != self.server_name() {
            return;
        }
        if let Err(error) = self.publish_device_list(user_id).await {
            tracing::warn!(%error, "could not send a device-list change to other servers");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, keys: Option<&str>) -> PublishedDevice {
        PublishedDevice { device_id: id.into(), keys: keys.map(str::to_owned) }
    }

    #[test]
    fn changes_are_new_changed_and_deleted_devices() {
        let published = [device("A", None), device("B", Some("1")), device("C", Some("2"))];
        let current = [device("A", Some("0")), device("C", Some("2")), device("D", None)];
        let changes = device_changes(&published, &current);
        let summary: Vec<(&str, Option<&str>, bool)> = changes
            .iter()
            .map(|change| (change.device_id.as_str(), change.keys.as_deref(), change.deleted))
            .collect();
        assert_eq!(summary, [("A", Some("0"), false), ("B", None, true), ("D", None, false)]);
        assert!(device_changes(&current, &current).is_empty());
    }
}
