//! Other servers' users' device lists (Server-Server API, "Device Management" and "End-to-End
//! Encryption"): tracked (cached) while they share a room with a local user and forgotten
//! after; kept current by their servers' `m.device_list_update` EDUs, applied when their
//! `prev_id` chain is complete, and by `m.signing_key_update`; fetched whole again through
//! `GET /user/devices/{userId}` at first contact, after a gap or an unknown `prev_id`. A list
//! that could not be fetched stays stale and is retried in the background, with backoff per
//! server. Every change applied is a device-list change of the remote user that local users
//! sharing a room with them see in `/sync` and `/keys/changes`.
//!
//! Also what this server answers other servers about its own users: `GET /user/devices`,
//! `POST /user/keys/query` and `POST /user/keys/claim`, local users only, bounded in size.

use std::{
    collections::{BTreeMap, HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rhizome_core::{Error, Result, clock::now_millis};
use rhizome_storage::{
    StreamPos,
    device_lists::{RemoteDevice, RemoteDeviceList},
    e2ee::CrossSigningKeyType,
};
use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UInt, UserId,
    api::federation::device::get_devices,
    encryption::{CrossSigningKey, DeviceKeys},
    serde::Raw,
};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;
use tokio::sync::Mutex as AsyncMutex;

use super::RequestLimits;
use crate::{
    Services,
    e2ee::{cross_signing::check_key, keys::validate_device_keys},
};

/// Lock stripes per purpose: a user's lock is one of these, by hash.
const STRIPES: usize = 64;
/// How long fetching one user's device list may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The most devices of one user taken from, or given to, another server.
pub const MAX_DEVICES_PER_USER: usize = 1_000;
/// The longest device display name kept from another server.
const MAX_DISPLAY_NAME_BYTES: usize = 256;
/// How often a list keeps being fetched again while updates arrive during the fetch.
const RESYNC_ROUNDS: usize = 3;

/// Device-list tracking state of this process.
pub(crate) struct DeviceListState {
    /// Serialises the publishing of one local user's changes.
    publish: Vec<AsyncMutex<()>>,
    /// Serialises changes to one remote user's cached list.
    apply: Vec<AsyncMutex<()>>,
    /// Serialises fetches of one remote user's list.
    resync: Vec<AsyncMutex<()>>,
    /// Users being fetched again in the background, with the greatest update `stream_id` that
    /// arrived meanwhile.
    resyncing: Mutex<HashMap<OwnedUserId, i64>>,
    /// Whether the retry worker runs.
    worker: AtomicBool,
    /// Whether this process looked for lists left stale by an earlier one.
    resumed: AtomicBool,
}

impl Default for DeviceListState {
    fn default() -> Self {
        let stripes = || (0..STRIPES).map(|_| AsyncMutex::new(())).collect();
        Self {
            publish: stripes(),
            apply: stripes(),
            resync: stripes(),
            resyncing: Mutex::new(HashMap::new()),
            worker: AtomicBool::new(false),
            resumed: AtomicBool::new(false),
        }
    }
}

fn stripe(user_id: &UserId) -> usize {
    let mut hasher = DefaultHasher::new();
    user_id.hash(&mut hasher);
    usize::try_from(hasher.finish() % STRIPES as u64).unwrap_or(0)
}

impl DeviceListState {
    pub(crate) fn publish_lock(&self, user_id: &UserId) -> &AsyncMutex<()> {
        &self.publish[stripe(user_id)]
    }

    fn apply_lock(&self, user_id: &UserId) -> &AsyncMutex<()> {
        &self.apply[stripe(user_id)]
    }

    fn resync_lock(&self, user_id: &UserId) -> &AsyncMutex<()> {
        &self.resync[stripe(user_id)]
    }
}

/// `m.device_list_update`'s content.
#[derive(Deserialize)]
struct DeviceListUpdate {
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    stream_id: UInt,
    #[serde(default)]
    prev_id: Vec<UInt>,
    #[serde(default)]
    deleted: Option<bool>,
    #[serde(default)]
    device_display_name: Option<String>,
    #[serde(default)]
    keys: Option<Raw<DeviceKeys>>,
}

/// `m.signing_key_update`'s content.
#[derive(Deserialize)]
struct SigningKeyUpdate {
    user_id: OwnedUserId,
    #[serde(default)]
    master_key: Option<Raw<CrossSigningKey>>,
    #[serde(default)]
    self_signing_key: Option<Raw<CrossSigningKey>>,
}

/// What to do with an update.
enum Decision {
    /// Nothing: already applied.
    Known,
    /// Applied (a change of the user's list).
    Applied,
    /// The list must be fetched whole.
    Resync,
}

fn stream_id(value: UInt) -> i64 {
    i64::from(value)
}

/// A device display name from another server, unless it is too long.
fn display_name(name: Option<&str>) -> Option<String> {
    name.filter(|name| name.len() <= MAX_DISPLAY_NAME_BYTES).map(str::to_owned)
}

/// A device's keys from another server, in their stored form, if they are well formed and
/// for that user and device (signatures are for the clients to verify).
fn checked_device_keys(
    raw: &Raw<DeviceKeys>,
    user_id: &UserId,
    device_id: &ruma::DeviceId,
) -> Option<String> {
    match validate_device_keys(raw, user_id, device_id) {
        Ok(json) => Some(json),
        Err(error) => {
            tracing::debug!(%error, "ignored invalid device keys from another server");
            None
        }
    }
}

/// A cross-signing key from another server, in its stored form, if it is well formed and
/// the user's.
fn checked_signing_key(
    raw: Option<&Raw<CrossSigningKey>>,
    user_id: &UserId,
    key_type: CrossSigningKeyType,
) -> Option<String> {
    match check_key(raw?, user_id, key_type) {
        Ok(key) => Some(key.record.json),
        Err(error) => {
            tracing::debug!(%error, "ignored an invalid cross-signing key from another server");
            None
        }
    }
}

/// The cached list made of a `GET /user/devices` answer.
fn remote_list_from(
    user_id: &UserId,
    response: get_devices::v1::Response,
    fetched_pos: StreamPos,
) -> Result<RemoteDeviceList> {
    if response.user_id != user_id {
        return Err(Error::bad_json("The device list is another user's"));
    }
    let mut devices: Vec<RemoteDevice> = response
        .devices
        .iter()
        .take(MAX_DEVICES_PER_USER)
        .map(|device| RemoteDevice {
            device_id: device.device_id.clone(),
            keys: checked_device_keys(&device.keys, user_id, &device.device_id),
            display_name: display_name(device.device_display_name.as_deref()),
        })
        .collect();
    devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    devices.dedup_by(|a, b| a.device_id == b.device_id);
    Ok(RemoteDeviceList {
        user_id: user_id.to_owned(),
        stream_id: stream_id(response.stream_id),
        stale: false,
        fetched_ts: now_millis(),
        fetched_pos,
        devices,
        master_key: checked_signing_key(
            response.master_key.as_ref(),
            user_id,
            CrossSigningKeyType::Master,
        ),
        self_signing_key: checked_signing_key(
            response.self_signing_key.as_ref(),
            user_id,
            CrossSigningKeyType::SelfSigning,
        ),
    })
}

/// Whether two cached lists say the same (ignoring when they were fetched).
fn same_contents(a: &RemoteDeviceList, b: &RemoteDeviceList) -> bool {
    a.devices == b.devices
        && a.master_key == b.master_key
        && a.self_signing_key == b.self_signing_key
}

impl Services {
    /// Whether a user (of any server) is joined to a room a local user is joined to.
    pub(crate) async fn shares_room_with_local_user(&self, user_id: &UserId) -> Result<bool> {
        for membership in self.user_memberships_cached(user_id).await?.iter() {
            if membership.membership != "join" {
                continue;
            }
            let members = self.room_members_cached(&membership.room_id, false).await?;
            if members.iter().any(|member| member.server_name() == self.server_name()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a user has shared a room with a local user ever since stream position `pos`:
    /// both joined to one room, neither membership changed after `pos`. (Conservative: a
    /// profile change counts as a change.) A cached list is current only then, as its
    /// server sends updates only while they share a room.
    pub(crate) async fn shared_continuously_since(
        &self,
        user_id: &UserId,
        pos: StreamPos,
    ) -> Result<bool> {
        for membership in self.user_memberships_cached(user_id).await?.iter() {
            if membership.membership != "join" || membership.stream_pos > pos {
                continue;
            }
            let members = self.room_memberships_cached(&membership.room_id).await?;
            if members.iter().any(|member| {
                member.membership == "join"
                    && member.stream_pos <= pos
                    && member.user_id.server_name() == self.server_name()
            }) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `m.device_list_update`: applies the update when its chain is complete, fetches the
    /// list whole otherwise (first contact, a gap, a restarted sequence).
    pub(crate) async fn handle_device_list_update_edu(
        &self,
        origin: &ServerName,
        content: &RawJsonValue,
    ) -> Result<()> {
        let update: DeviceListUpdate = serde_json::from_str(content.get())?;
        let user_id = &update.user_id;
        self.check_sender_origin(origin, user_id)?;
        if !self.shares_room_with_local_user(user_id).await? {
            self.store.forget_remote_device_list(user_id).await?;
            return Ok(());
        }
        let update_id = stream_id(update.stream_id);
        let decision = {
            let _guard = self.federation.devices.apply_lock(user_id).lock().await;
            let resyncing = self.federation.devices.resyncing.lock().contains_key(user_id);
            match self.store.remote_device_list(user_id).await? {
                None => Decision::Resync,
                Some(list) if list.stale || resyncing => Decision::Resync,
                Some(list) if update_id <= list.stream_id => Decision::Known,
                Some(list) => {
                    let restarted = update.prev_id.is_empty() && list.stream_id != 0;
                    let gap = update.prev_id.iter().any(|prev| stream_id(*prev) > list.stream_id);
                    if restarted || gap {
                        tracing::debug!("a device-list update was missed; fetching the list");
                        self.store.mark_remote_device_list_stale(user_id).await?;
                        Decision::Resync
                    } else {
                        let device = (!update.deleted.unwrap_or(false)).then(|| RemoteDevice {
                            device_id: update.device_id.clone(),
                            keys: update.keys.as_ref().and_then(|keys| {
                                checked_device_keys(keys, user_id, &update.device_id)
                            }),
                            display_name: display_name(update.device_display_name.as_deref()),
                        });
                        match self
                            .store
                            .update_remote_device(
                                user_id,
                                update_id,
                                &update.device_id,
                                device.as_ref(),
                            )
                            .await?
                        {
                            Some(_) => Decision::Applied,
                            None => Decision::Resync,
                        }
                    }
                }
            }
        };
        match decision {
            Decision::Known => {}
            Decision::Applied => self.notify_device_list_watchers(user_id).await?,
            Decision::Resync => self.resync_in_background(user_id, update_id),
        }
        Ok(())
    }

    /// `m.signing_key_update`: a tracked user's new cross-signing keys.
    pub(crate) async fn handle_signing_key_update_edu(
        &self,
        origin: &ServerName,
        content: &RawJsonValue,
    ) -> Result<()> {
        let update: SigningKeyUpdate = serde_json::from_str(content.get())?;
        let user_id = &update.user_id;
        self.check_sender_origin(origin, user_id)?;
        if !self.shares_room_with_local_user(user_id).await? {
            self.store.forget_remote_device_list(user_id).await?;
            return Ok(());
        }
        let master =
            checked_signing_key(update.master_key.as_ref(), user_id, CrossSigningKeyType::Master);
        let self_signing = checked_signing_key(
            update.self_signing_key.as_ref(),
            user_id,
            CrossSigningKeyType::SelfSigning,
        );
        if master.is_none() && self_signing.is_none() {
            return Ok(());
        }
        let changed = {
            let _guard = self.federation.devices.apply_lock(user_id).lock().await;
            self.store
                .update_remote_signing_keys(user_id, master.as_deref(), self_signing.as_deref())
                .await?
        };
        // An untracked user's keys are fetched with the rest when first needed.
        if changed.is_some() {
            self.notify_device_list_watchers(user_id).await?;
        }
        Ok(())
    }

    /// Fetches a user's list whole in the background (once at a time per user); an update
    /// with a greater `stream_id` arriving meanwhile makes it fetch again.
    fn resync_in_background(&self, user_id: &UserId, seen: i64) {
        {
            let mut resyncing = self.federation.devices.resyncing.lock();
            if let Some(greatest) = resyncing.get_mut(user_id) {
                *greatest = (*greatest).max(seen);
                return;
            }
            resyncing.insert(user_id.to_owned(), seen);
        }
        let Some(services) = self.arc() else { return };
        let user_id = user_id.to_owned();
        tokio::spawn(async move {
            for _ in 0..RESYNC_ROUNDS {
                let fetched = services.resync_device_list(&user_id, true).await;
                let mut resyncing = services.federation.devices.resyncing.lock();
                let seen = resyncing.get(&user_id).copied().unwrap_or(0);
                match fetched {
                    Ok(Some(list)) if seen > list.stream_id => {
                        resyncing.insert(user_id.clone(), 0);
                    }
                    Ok(_) => {
                        resyncing.remove(&user_id);
                        return;
                    }
                    Err(error) => {
                        resyncing.remove(&user_id);
                        tracing::debug!(%error, "could not fetch a remote device list");
                        return;
                    }
                }
            }
            services.federation.devices.resyncing.lock().remove(&user_id);
        });
    }

    /// Fetches a remote user's device list whole (`GET /user/devices`) and caches it, unless
    /// it was fetched since this call began or the user shares no room with a local user any
    /// more (`None` then). A change from the cached list (or, with `announce_first`, a first
    /// list) is a device-list change local users see. A failure leaves a cached list stale,
    /// to be retried in the background.
    pub async fn resync_device_list(
        &self,
        user_id: &UserId,
        announce_first: bool,
    ) -> Result<Option<RemoteDeviceList>> {
        let requested = now_millis();
        let _resync = self.federation.devices.resync_lock(user_id).lock().await;
        if let Some(list) = self.store.remote_device_list(user_id).await?
            && !list.stale
            && list.fetched_ts >= requested
        {
            return Ok(Some(list));
        }
        let fetched_pos = self.store.current_stream_pos();
        let request = get_devices::v1::Request::new(user_id.to_owned());
        let limits = RequestLimits::small().with_timeout(FETCH_TIMEOUT);
        let fetched = match self
            .federation_client()?
            .send_with_limits(user_id.server_name(), request, limits)
            .await
            .map_err(Error::from)
            .and_then(|response| remote_list_from(user_id, response, fetched_pos))
        {
            Ok(list) => list,
            Err(error) => {
                if self.store.mark_remote_device_list_stale(user_id).await? {
                    self.start_device_list_worker();
                }
                return Err(error);
            }
        };
        let announced = {
            let _apply = self.federation.devices.apply_lock(user_id).lock().await;
            if !self.shares_room_with_local_user(user_id).await? {
                self.store.forget_remote_device_list(user_id).await?;
                return Ok(None);
            }
            let record = match self.store.remote_device_list(user_id).await? {
                Some(cached) => !same_contents(&cached, &fetched),
                None => announce_first,
            };
            self.store.replace_remote_device_list(&fetched, record).await?
        };
        if announced.is_some() {
            self.notify_device_list_watchers(user_id).await?;
        }
        Ok(Some(fetched))
    }

    /// Stops tracking those of `users` (of other servers) who share no room with a local
    /// user any more.
    pub async fn forget_unshared_device_lists(&self, users: &[OwnedUserId]) -> Result<()> {
        for user_id in users {
            if user_id.server_name() == self.server_name() {
                continue;
            }
            let _guard = self.federation.devices.apply_lock(user_id).lock().await;
            if !self.shares_room_with_local_user(user_id).await? {
                self.store.forget_remote_device_list(user_id).await?;
            }
        }
        Ok(())
    }

    /// Whether a remote user's device list is tracked (cached) now.
    pub async fn device_list_tracked(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.store.remote_device_list(user_id).await?.is_some())
    }

    /// A remote user's tracked (cached) device list.
    pub async fn cached_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>> {
        self.store.remote_device_list(user_id).await
    }

    /// Once per process (at the first sync), starts the retry worker for lists an earlier
    /// process left stale.
    pub(crate) fn resume_device_list_worker(&self) {
        if self.config.federation.enabled
            && !self.federation.devices.resumed.swap(true, Ordering::SeqCst)
        {
            self.start_device_list_worker();
        }
    }

    /// Starts the worker that fetches stale lists again, if it does not run: each server's
    /// users are retried with backoff (`federation.min_retry_interval_secs` doubling up to
    /// `max_retry_interval_secs`); the worker ends when no list is stale.
    pub(crate) fn start_device_list_worker(&self) {
        if self.federation.devices.worker.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.me.clone();
        tokio::spawn(async move {
            let mut backoff: HashMap<OwnedServerName, (Instant, Duration)> = HashMap::new();
            loop {
                let Some(services) = me.upgrade() else { return };
                let stale = services.store.tracked_remote_users(true).await.unwrap_or_default();
                if stale.is_empty() {
                    let worker = &services.federation.devices.worker;
                    worker.store(false, Ordering::SeqCst);
                    // A list marked stale just now, whose marker saw the worker running.
                    let again = services.store.tracked_remote_users(true).await;
                    if again.is_ok_and(|users| !users.is_empty())
                        && !worker.swap(true, Ordering::SeqCst)
                    {
                        continue;
                    }
                    return;
                }
                services.retry_stale_device_lists(stale, &mut backoff).await;
                let pause =
                    Duration::from_secs(services.config.federation.min_retry_interval_secs.max(1));
                drop(services);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// One round of the retry worker.
    async fn retry_stale_device_lists(
        &self,
        stale: Vec<OwnedUserId>,
        backoff: &mut HashMap<OwnedServerName, (Instant, Duration)>,
    ) {
        let federation = &self.config.federation;
        let min = Duration::from_secs(federation.min_retry_interval_secs.max(1));
        let max = Duration::from_secs(federation.max_retry_interval_secs.max(1)).max(min);
        let mut by_server: BTreeMap<OwnedServerName, Vec<OwnedUserId>> = BTreeMap::new();
        for user_id in stale {
            by_server.entry(user_id.server_name().to_owned()).or_default().push(user_id);
        }
        for (server, users) in by_server {
            if backoff.get(&server).is_some_and(|(next, _)| Instant::now() < *next) {
                continue;
            }
            for user_id in users {
                if let Err(error) = self.resync_device_list(&user_id, true).await {
                    tracing::debug!(%error, "a stale device list could not be fetched yet");
                    let interval =
                        backoff.get(&server).map_or(min, |(_, last)| (*last * 2).min(max));
                    backoff.insert(server.clone(), (Instant::now() + interval, interval));
                    break;
                }
                backoff.remove(&server);
            }
        }
    }
}
