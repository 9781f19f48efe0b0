//! End-to-end encryption on the server side: keys ([`keys`]), cross-signing
//! ([`cross_signing`]), to-device messages ([`to_device`]), key backups ([`backup`]),
//! dehydrated devices ([`dehydrated`]), and what `/sync` and `/keys/changes` carry for
//! encryption (device-list changes, one-time key counts, unused fallback key types).
//!
//! The server never sees a key it could decrypt with: it stores and relays what clients sign
//! and encrypt, checking signatures where the spec asks it to.

pub mod backup;
pub mod cross_signing;
pub mod dehydrated;
pub mod keys;
pub mod publish;
mod remote;
pub mod serve;
mod signed;
pub mod to_device;

use std::collections::{BTreeSet, HashSet};

use rhizome_core::Result;
use rhizome_storage::StreamPos;
use ruma::{
    OneTimeKeyAlgorithm, OwnedRoomId, OwnedUserId, UserId, api::client::sync::sync_events::v3,
};

use crate::{Requester, Services, sync::SyncToken};

impl Services {
    /// Records that a user's devices changed (a login, logout, rename, deletion or
    /// deactivation), forgets the encryption data of devices that no longer exist (and all of
    /// it for a deactivated account), and wakes the syncs of the user and of everyone who
    /// shares a room with them.
    pub async fn on_device_list_change(&self, user_id: &UserId) -> Result<()> {
        self.store.remove_deleted_devices_e2ee(user_id).await?;
        if self.store.get_user(user_id).await?.is_some_and(|user| user.deactivated) {
            self.store.delete_user_e2ee(user_id).await?;
        }
        self.store.record_device_list_change(user_id).await?;
        self.notify_device_list_watchers(user_id).await
    }

    /// Wakes the syncs of the user and of everyone who shares a room with them; for a local
    /// user, first sends other servers what changed.
    pub(crate) async fn notify_device_list_watchers(&self, user_id: &UserId) -> Result<()> {
        self.publish_device_list_after_change(user_id).await;
        let mut woken = vec![user_id.to_owned()];
        for room in self.store.rooms_of_user(user_id, &["join", "invite"]).await? {
            woken.extend(self.room_members_cached(&room.room_id, true).await?);
        }
        woken.sort();
        woken.dedup();
        self.notifier.notify(woken.iter().map(|user| user.as_ref()));
        Ok(())
    }

    /// Users whose devices the user should re-fetch (`changed`: a device or key change of
    /// someone sharing a room, or someone newly sharing one) and users who no longer share any
    /// room with them (`left`), for changes after `since` up to `until`.
    pub async fn device_list_changes(
        &self,
        user_id: &UserId,
        since: StreamPos,
        until: StreamPos,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        if until <= since {
            return Ok((Vec::new(), Vec::new()));
        }
        self.resume_device_list_worker();
        let device_changes = self.store.device_list_changes(user_id, since, until).await?;
        let mut own_memberships = self.store.membership_changes_since(user_id, since).await?;
        own_memberships.retain(|membership| membership.stream_pos <= until);
        // From the memberships cache: every sync comes here, and a user's rooms rarely change.
        let my_rooms: Vec<OwnedRoomId> = self
            .user_memberships_cached(user_id)
            .await?
            .iter()
            .filter(|membership| membership.membership == "join")
            .map(|membership| membership.room_id.clone())
            .collect();
        let others = self.store.memberships_changed_between(&my_rooms, since, until).await?;
        if device_changes.is_empty() && own_memberships.is_empty() && others.is_empty() {
            // Most syncs: nothing to look at, so the members of every room are not gathered.
            return Ok((Vec::new(), Vec::new()));
        }
        let mut shared: HashSet<OwnedUserId> = HashSet::new();
        for room_id in &my_rooms {
            shared.extend(self.room_members_cached(room_id, true).await?);
        }
        let mut changed: BTreeSet<OwnedUserId> = device_changes
            .into_iter()
            .filter(|other| other == user_id || shared.contains(other))
            .collect();
        let mut gone = BTreeSet::new();
        // Rooms the user joined or left: their members newly share, or may no longer share, a
        // room with the user.
        for membership in own_memberships {
            let target = match membership.membership.as_str() {
                "join" => &mut changed,
                "leave" | "ban" => &mut gone,
                _ => continue,
            };
            for member in self.room_members_cached(&membership.room_id, true).await? {
                if member != user_id {
                    target.insert(member);
                }
            }
        }
        // Others joining or leaving the user's rooms.
        for membership in others {
            if membership.user_id == user_id {
                continue;
            }
            match membership.membership.as_str() {
                "join" | "invite" => changed.insert(membership.user_id),
                "leave" | "ban" => gone.insert(membership.user_id),
                _ => false,
            };
        }
        let left: Vec<OwnedUserId> =
            gone.into_iter().filter(|other| !shared.contains(other)).collect();
        let changed = changed.into_iter().filter(|other| !left.contains(other)).collect();
        self.forget_left_device_lists(&left);
        Ok((changed, left))
    }

    /// Stops tracking, in the background, those other servers' users who left the last room
    /// they shared with a local user.
    fn forget_left_device_lists(&self, left: &[OwnedUserId]) {
        let remote: Vec<OwnedUserId> =
            left.iter().filter(|user| user.server_name() != self.server_name()).cloned().collect();
        if remote.is_empty() {
            return;
        }
        let Some(services) = self.arc() else { return };
        tokio::spawn(async move {
            if let Err(error) = services.forget_unshared_device_lists(&remote).await {
                tracing::warn!(%error, "could not stop tracking device lists");
            }
        });
    }

    /// `/keys/changes`: the device-list changes between two sync tokens.
    pub async fn key_changes(
        &self,
        requester: &Requester,
        from: &str,
        to: &str,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        let from = SyncToken::parse(from)?;
        let to = SyncToken::parse(to)?;
        let until = to.pos.min(self.store.current_stream_pos());
        self.device_list_changes(&requester.user_id, from.pos, until).await
    }

    /// Fills the encryption parts of a `/sync` response for changes after `since` up to
    /// `upper`: to-device messages, device lists, one-time key counts and unused fallback key
    /// types.
    pub(crate) async fn sync_e2ee(
        &self,
        requester: &Requester,
        since: Option<StreamPos>,
        upper: StreamPos,
        response: &mut v3::Response,
    ) -> Result<()> {
        let (user_id, device_id) = (&requester.user_id, &requester.device_id);
        response.to_device.events = self.sync_to_device(requester, since, upper).await?;
        if let Some(since) = since {
            let (changed, left) = self.device_list_changes(user_id, since, upper).await?;
            response.device_lists.changed = changed;
            response.device_lists.left = left;
        }
        response.device_one_time_keys_count = self.one_time_key_counts(user_id, device_id).await?;
        response.device_unused_fallback_key_types = Some(
            self.store
                .unused_fallback_key_algorithms(user_id, device_id)
                .await?
                .iter()
                .map(|algorithm| OneTimeKeyAlgorithm::from(algorithm.as_str()))
                .collect(),
        );
        Ok(())
    }
}
