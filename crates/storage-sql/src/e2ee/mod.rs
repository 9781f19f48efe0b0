//! End-to-end encryption storage in SQL: keys and signatures ([`keys`]), device-list changes,
//! to-device messages and dehydrated devices ([`messages`]), and key backups ([`backup`]).

mod backup;
mod device_lists;
mod keys;
mod messages;

use async_trait::async_trait;
use rhizome_core::Result;
use rhizome_storage::{
    E2eeStore, MembershipRecord, StreamPos,
    e2ee::{
        BackupCounts, BackupKeyRecord, BackupVersionRecord, CrossSigningKeyRecord,
        CrossSigningKeys, DeviceKeysRecord, OneTimeKeyRecord, SignatureRecord, ToDeviceMessage,
        ToDeviceRecord,
    },
};
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::SqlStore;

#[async_trait]
impl E2eeStore for SqlStore {
    async fn set_device_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        json: &str,
    ) -> Result<Option<StreamPos>> {
        keys::set_device_keys(self, user_id, device_id, json).await
    }

    async fn device_keys(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<Vec<DeviceKeysRecord>> {
        keys::device_keys(self, user_id, device_ids).await
    }

    async fn add_one_time_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: &[OneTimeKeyRecord],
    ) -> Result<()> {
        let result = keys::add_one_time_keys(self, user_id, device_id, keys).await;
        self.recent.values_changed(user_id);
        result
    }

    async fn set_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: &[OneTimeKeyRecord],
    ) -> Result<()> {
        let result = keys::set_fallback_keys(self, user_id, device_id, keys).await;
        self.recent.values_changed(user_id);
        result
    }

    async fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<(String, i64)>> {
        if let Some(counts) = self.recent.one_time_key_counts(user_id, device_id) {
            return Ok(counts);
        }
        if !self.recent.enabled() {
            return keys::one_time_key_counts(self, user_id, device_id).await;
        }
        // The fallback keys come with them: the sync that asks for one asks for the other.
        let generation = self.recent.generation(user_id);
        let (counts, fallback) = keys::key_values(self, user_id, device_id).await?;
        self.recent.remember_keys(
            user_id,
            device_id,
            generation,
            Some(counts.clone()),
            Some(fallback),
        );
        Ok(counts)
    }

    async fn unused_fallback_key_algorithms(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Vec<String>> {
        if let Some(algorithms) = self.recent.fallback_keys(user_id, device_id) {
            return Ok(algorithms);
        }
        let generation = self.recent.generation(user_id);
        let algorithms = keys::unused_fallback_key_algorithms(self, user_id, device_id).await?;
        self.recent.remember_keys(user_id, device_id, generation, None, Some(algorithms.clone()));
        Ok(algorithms)
    }

    async fn claim_key(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<OneTimeKeyRecord>> {
        let result = keys::claim_key(self, user_id, device_id, algorithm).await;
        self.recent.values_changed(user_id);
        result
    }

    async fn cross_signing_keys(&self, user_id: &UserId) -> Result<CrossSigningKeys> {
        keys::cross_signing_keys(self, user_id).await
    }

    async fn set_cross_signing_keys(
        &self,
        user_id: &UserId,
        keys: &[CrossSigningKeyRecord],
    ) -> Result<StreamPos> {
        keys::set_cross_signing_keys(self, user_id, keys).await
    }

    async fn add_signatures(
        &self,
        signer: &UserId,
        signatures: &[SignatureRecord],
    ) -> Result<StreamPos> {
        keys::add_signatures(self, signer, signatures).await
    }

    async fn signatures_on(
        &self,
        target_user_id: &UserId,
        signers: &[&UserId],
    ) -> Result<Vec<SignatureRecord>> {
        keys::signatures_on(self, target_user_id, signers).await
    }

    async fn record_device_list_change(&self, user_id: &UserId) -> Result<StreamPos> {
        messages::record_device_list_change(self, user_id).await
    }

    async fn device_list_changes(
        &self,
        viewer: &UserId,
        since: StreamPos,
        until: StreamPos,
    ) -> Result<Vec<OwnedUserId>> {
        if self.recent.no_device_lists_since(since) {
            return Ok(Vec::new());
        }
        messages::device_list_changes(self, viewer, since, until).await
    }

    async fn memberships_changed_between(
        &self,
        room_ids: &[OwnedRoomId],
        since: StreamPos,
        until: StreamPos,
    ) -> Result<Vec<MembershipRecord>> {
        let room_ids = self.recent.rooms_maybe_with_memberships(room_ids, since);
        messages::memberships_changed_between(self, &room_ids, since, until).await
    }

    async fn remove_deleted_devices_e2ee(&self, user_id: &UserId) -> Result<u64> {
        // Run at every login: the user's remembered values stay unless something went.
        let result = messages::remove_deleted_devices_e2ee(self, user_id).await;
        if !matches!(result, Ok((_, 0))) {
            self.recent.values_changed(user_id);
        }
        result.map(|(removed, _)| removed)
    }

    async fn delete_user_e2ee(&self, user_id: &UserId) -> Result<()> {
        let result = messages::delete_user_e2ee(self, user_id).await;
        self.recent.values_changed(user_id);
        result
    }

    async fn queue_to_device(
        &self,
        sender: &UserId,
        sender_device: &DeviceId,
        txn_id: &str,
        event_type: &str,
        messages: &[ToDeviceMessage],
    ) -> Result<Option<(StreamPos, Vec<OwnedUserId>)>> {
        messages::queue_to_device(self, sender, sender_device, txn_id, event_type, messages).await
    }

    async fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        until: StreamPos,
        limit: i64,
    ) -> Result<Vec<ToDeviceRecord>> {
        if self.recent.no_to_device_waiting(user_id, device_id) {
            return Ok(Vec::new());
        }
        let records = messages::to_device_messages(self, user_id, device_id, until, limit).await?;
        if records.is_empty() {
            self.recent.to_device_found_empty(user_id, device_id, until);
        }
        Ok(records)
    }

    async fn delete_to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        until: StreamPos,
    ) -> Result<u64> {
        messages::delete_to_device_messages(self, user_id, device_id, until).await
    }

    async fn defer_to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        after: &ToDeviceRecord,
    ) -> Result<StreamPos> {
        messages::defer_to_device_messages(self, user_id, device_id, after).await
    }

    async fn create_backup_version(&self, user_id: &UserId, algorithm: &str) -> Result<String> {
        backup::create_backup_version(self, user_id, algorithm).await
    }

    async fn backup_version(
        &self,
        user_id: &UserId,
        version: Option<&str>,
    ) -> Result<Option<BackupVersionRecord>> {
        backup::backup_version(self, user_id, version).await
    }

    async fn update_backup_version(
        &self,
        user_id: &UserId,
        version: &str,
        algorithm: &str,
    ) -> Result<bool> {
        backup::update_backup_version(self, user_id, version, algorithm).await
    }

    async fn delete_backup_version(&self, user_id: &UserId, version: &str) -> Result<bool> {
        backup::delete_backup_version(self, user_id, version).await
    }

    async fn put_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        keys: &[BackupKeyRecord],
    ) -> Result<BackupCounts> {
        backup::put_backup_keys(self, user_id, version, keys).await
    }

    async fn backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&RoomId>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKeyRecord>> {
        backup::backup_keys(self, user_id, version, room_id, session_id).await
    }

    async fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&RoomId>,
        session_id: Option<&str>,
    ) -> Result<BackupCounts> {
        backup::delete_backup_keys(self, user_id, version, room_id, session_id).await
    }

    async fn set_dehydrated_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        device_data: &str,
    ) -> Result<Option<OwnedDeviceId>> {
        messages::set_dehydrated_device(self, user_id, device_id, device_data).await
    }

    async fn dehydrated_device(&self, user_id: &UserId) -> Result<Option<(OwnedDeviceId, String)>> {
        messages::dehydrated_device(self, user_id).await
    }

    async fn delete_dehydrated_device(&self, user_id: &UserId) -> Result<Option<OwnedDeviceId>> {
        messages::delete_dehydrated_device(self, user_id).await
    }
}
