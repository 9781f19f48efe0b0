//! Other servers' users in `/keys/query` and `/keys/claim`: their servers are asked
//! concurrently, each within a time limit, and a server that fails or does not answer in time
//! is reported in `failures` (with whatever is cached of its users) instead of failing the
//! request. Users sharing a room with a local user are answered from their tracked device
//! lists when fresh (fetched whole and tracked otherwise); others are asked through
//! `POST /user/keys/query`. Keys are claimed through `POST /user/keys/claim`.

use std::{collections::BTreeMap, time::Duration};

use futures_util::{StreamExt, stream};
use rhizome_core::{Error, Result};
use rhizome_storage::{
    device_lists::RemoteDeviceList,
    e2ee::{CrossSigningKeyRecord, CrossSigningKeyType, CrossSigningKeys},
};
use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId,
    api::{
        client::keys::{claim_keys, get_keys},
        federation::keys::{claim_keys as federation_claim, get_keys as federation_query},
    },
};
use serde_json::{Value, json};

use crate::{
    Requester, Services,
    e2ee::cross_signing::check_key,
    e2ee::keys::{ClaimedKeys, RemoteClaim, RemoteQuery, UserKeys, merge_signatures, raw_json},
    federation::RequestLimits,
};

/// How long one server may take to answer a query or claim.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers asked at once.
const CONCURRENT_SERVERS: usize = 8;
/// Users of one server whose device lists are fetched at once.
const CONCURRENT_USERS: usize = 4;

/// What one server's users came to.
#[derive(Default)]
struct ServerAnswer {
    users: BTreeMap<OwnedUserId, UserKeys>,
    failure: Option<Value>,
}

/// A failure as `failures` reports it.
fn failure_of(error: &Error) -> Value {
    json!({ "status": 503, "message": error.message() })
}

fn timed_out() -> Value {
    json!({ "status": 504, "message": "The server did not answer in time" })
}

/// A master key from another server in its stored form, if it is well formed and the user's.
fn checked_master_key(
    raw: &ruma::serde::Raw<ruma::encryption::CrossSigningKey>,
    user_id: &UserId,
) -> Option<String> {
    check_key(raw, user_id, CrossSigningKeyType::Master).ok().map(|key| key.record.json)
}

/// The keys of a cached list, the requested devices only (all when none are named).
fn keys_from_list(list: &RemoteDeviceList, device_ids: &[OwnedDeviceId]) -> Result<UserKeys> {
    let mut keys = UserKeys::default();
    for device in &list.devices {
        if !device_ids.is_empty() && !device_ids.contains(&device.device_id) {
            continue;
        }
        let Some(json) = &device.keys else { continue };
        let mut object: Value = serde_json::from_str(json)?;
        if let (Some(name), Some(map)) = (&device.display_name, object.as_object_mut()) {
            map.insert("unsigned".into(), json!({ "device_display_name": name }));
        }
        keys.devices.insert(device.device_id.clone(), raw_json(&object)?);
    }
    if let Some(master) = &list.master_key {
        keys.master = Some(raw_json(&serde_json::from_str::<Value>(master)?)?);
    }
    if let Some(self_signing) = &list.self_signing_key {
        keys.self_signing = Some(raw_json(&serde_json::from_str::<Value>(self_signing)?)?);
    }
    Ok(keys)
}

impl Services {
    /// Answers `/keys/query` for other servers' users, into `response`.
    pub(crate) async fn query_remote_keys(
        &self,
        requester: &Requester,
        remote: RemoteQuery,
        response: &mut get_keys::v3::Response,
    ) -> Result<()> {
        let answers: Vec<(OwnedServerName, ServerAnswer)> = stream::iter(remote)
            .map(|(server, users)| async move {
                let answer =
                    match tokio::time::timeout(REMOTE_TIMEOUT, self.query_server(&server, &users))
                        .await
                    {
                        Ok(answer) => answer,
                        Err(_) => {
                            let mut answer = self.cached_keys(&users).await;
                            answer.failure = Some(timed_out());
                            answer
                        }
                    };
                (server, answer)
            })
            .buffer_unordered(CONCURRENT_SERVERS)
            .collect()
            .await;
        for (server, answer) in answers {
            if let Some(failure) = answer.failure {
                response.failures.insert(server.to_string(), failure);
            }
            for (user_id, mut keys) in answer.users {
                keys.user_signing = None;
                self.add_viewer_signatures(&requester.user_id, &user_id, &mut keys).await?;
                keys.insert_into(&user_id, response);
            }
        }
        Ok(())
    }

    /// The requester's own signatures on a remote user's master key (made here, seen by the
    /// requester alone).
    async fn add_viewer_signatures(
        &self,
        viewer: &UserId,
        user_id: &UserId,
        keys: &mut UserKeys,
    ) -> Result<()> {
        let Some(master) = &keys.master else { return Ok(()) };
        let signatures = self.store.signatures_on(user_id, &[viewer]).await?;
        if signatures.is_empty() {
            return Ok(());
        }
        let mut object: Value = serde_json::from_str(master.json().get())?;
        let key_ids: Vec<String> = object["keys"]
            .as_object()
            .map(|keys| keys.values().filter_map(|key| key.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        merge_signatures(
            &mut object,
            signatures.iter().filter(|signature| key_ids.contains(&signature.target_key_id)),
        );
        keys.master = Some(raw_json(&object)?);
        Ok(())
    }

    /// Whatever is cached of users (for a server that did not answer in time).
    async fn cached_keys(&self, users: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>) -> ServerAnswer {
        let mut answer = ServerAnswer::default();
        for (user_id, device_ids) in users {
            if let Ok(Some(list)) = self.store.remote_device_list(user_id).await
                && let Ok(keys) = keys_from_list(&list, device_ids)
            {
                answer.users.insert(user_id.clone(), keys);
            }
        }
        answer
    }

    /// One server's users: tracked lists (fetched when not fresh), the rest asked directly.
    async fn query_server(
        &self,
        server: &ServerName,
        users: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> ServerAnswer {
        let mut answer = ServerAnswer::default();
        let mut untracked = BTreeMap::new();
        let mut tracked = Vec::new();
        for (user_id, device_ids) in users {
            match self.shares_room_with_local_user(user_id).await {
                Ok(true) => tracked.push((user_id.clone(), device_ids.clone())),
                Ok(false) => {
                    untracked.insert(user_id.clone(), device_ids.clone());
                }
                Err(error) => answer.failure = Some(failure_of(&error)),
            }
        }
        let results: Vec<_> = stream::iter(tracked)
            .map(|(user_id, device_ids)| async move {
                let result = self.tracked_device_list(&user_id).await;
                (user_id, device_ids, result)
            })
            .buffer_unordered(CONCURRENT_USERS)
            .collect()
            .await;
        for (user_id, device_ids, result) in results {
            let (list, error) = result;
            if let Some(error) = error {
                answer.failure = Some(failure_of(&error));
            }
            if let Some(list) = list {
                match keys_from_list(&list, &device_ids) {
                    Ok(keys) => {
                        answer.users.insert(user_id, keys);
                    }
                    Err(error) => answer.failure = Some(failure_of(&error)),
                }
            }
        }
        if !untracked.is_empty() {
            match self.ask_server_for_keys(server, untracked).await {
                Ok(users) => answer.users.extend(users),
                Err(error) => answer.failure = Some(failure_of(&error)),
            }
        }
        answer
    }

    /// A tracked user's list: the cache when fresh (not stale, and the user has shared a
    /// room with a local user since it was fetched, so no update can have been missed), else
    /// fetched whole (a stale cache as a fallback when that fails, with the error).
    async fn tracked_device_list(
        &self,
        user_id: &UserId,
    ) -> (Option<RemoteDeviceList>, Option<Error>) {
        let cached = match self.store.remote_device_list(user_id).await {
            Ok(cached) => cached,
            Err(error) => return (None, Some(error)),
        };
        if let Some(list) = &cached
            && !list.stale
        {
            match self.shared_continuously_since(user_id, list.fetched_pos).await {
                Ok(true) => return (Some(list.clone()), None),
                Ok(false) => {}
                Err(error) => return (cached, Some(error)),
            }
        }
        match self.resync_device_list(user_id, false).await {
            Ok(Some(list)) => (Some(list), None),
            Ok(None) => (cached, None),
            Err(error) => (cached, Some(error)),
        }
    }

    /// `POST /user/keys/query` on a server, for users not tracked; keeps only what was asked.
    async fn ask_server_for_keys(
        &self,
        server: &ServerName,
        users: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<BTreeMap<OwnedUserId, UserKeys>> {
        let request = federation_query::v1::Request::new(users.clone());
        let limits = RequestLimits::small().with_timeout(REMOTE_TIMEOUT);
        let mut response =
            self.federation_client()?.send_with_limits(server, request, limits).await?;
        let mut answer = BTreeMap::new();
        for (user_id, device_ids) in users {
            let mut keys = UserKeys::default();
            if let Some(devices) = response.device_keys.remove(&user_id) {
                keys.devices = devices
                    .into_iter()
                    .filter(|(device_id, _)| {
                        device_ids.is_empty() || device_ids.contains(device_id)
                    })
                    .collect();
            }
            keys.master = response.master_keys.remove(&user_id);
            keys.self_signing = response.self_signing_keys.remove(&user_id);
            answer.insert(user_id, keys);
        }
        Ok(answer)
    }

    /// Another server's user's master key (for a local user signing it): from the tracked
    /// list, or asked of their server.
    pub(crate) async fn remote_cross_signing_keys(
        &self,
        user_id: &UserId,
    ) -> Result<CrossSigningKeys> {
        let master = if self.shares_room_with_local_user(user_id).await? {
            let (list, error) = self.tracked_device_list(user_id).await;
            match (list, error) {
                (Some(list), _) => list.master_key,
                (None, Some(error)) => return Err(error),
                (None, None) => None,
            }
        } else {
            let server = user_id.server_name();
            let users = BTreeMap::from([(user_id.to_owned(), Vec::new())]);
            let mut answer = self.ask_server_for_keys(server, users).await?;
            match answer.remove(user_id).and_then(|keys| keys.master) {
                Some(raw) => checked_master_key(&raw, user_id),
                None => None,
            }
        };
        let master = master.and_then(|json| {
            let object: Value = serde_json::from_str(&json).ok()?;
            let public_key = object["keys"].as_object()?.values().next()?.as_str()?.to_owned();
            Some(CrossSigningKeyRecord { key_type: CrossSigningKeyType::Master, public_key, json })
        });
        Ok(CrossSigningKeys { master, ..CrossSigningKeys::default() })
    }

    /// Claims other servers' users' keys from their servers, into `response`.
    pub(crate) async fn claim_remote_keys(
        &self,
        remote: RemoteClaim,
        response: &mut claim_keys::v3::Response,
    ) {
        let answers: Vec<_> = stream::iter(remote)
            .map(|(server, users)| async move {
                let claimed =
                    tokio::time::timeout(REMOTE_TIMEOUT, self.claim_from_server(&server, users))
                        .await;
                (server, claimed)
            })
            .buffer_unordered(CONCURRENT_SERVERS)
            .collect()
            .await;
        for (server, claimed) in answers {
            match claimed {
                Ok(Ok(users)) => response.one_time_keys.extend(users),
                Ok(Err(error)) => {
                    response.failures.insert(server.to_string(), failure_of(&error));
                }
                Err(_) => {
                    response.failures.insert(server.to_string(), timed_out());
                }
            }
        }
    }

    /// `POST /user/keys/claim` on a server; keeps only the devices asked for.
    async fn claim_from_server(
        &self,
        server: &ServerName,
        users: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, ruma::OneTimeKeyAlgorithm>>,
    ) -> Result<BTreeMap<OwnedUserId, ClaimedKeys>> {
        let request = federation_claim::v1::Request::new(users.clone());
        let limits = RequestLimits::small().with_timeout(REMOTE_TIMEOUT);
        let response = self.federation_client()?.send_with_limits(server, request, limits).await?;
        let mut claimed = BTreeMap::new();
        for (user_id, devices) in response.one_time_keys {
            let Some(asked) = users.get(&user_id) else { continue };
            let devices: ClaimedKeys = devices
                .into_iter()
                .filter(|(device_id, keys)| asked.contains_key(device_id) && keys.len() <= 1)
                .collect();
            if !devices.is_empty() {
                claimed.insert(user_id, devices);
            }
        }
        Ok(claimed)
    }
}
