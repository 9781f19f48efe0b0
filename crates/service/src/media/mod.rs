//! The media repository: uploads (direct and asynchronous), downloads, thumbnails, quotas,
//! URL previews and the administration of stored media.
//!
//! Bytes live in a [blob store](blobs): files under `<data_dir>/media/` or objects in an
//! S3-compatible bucket, named by their SHA-256 (identical uploads share one blob); the database
//! holds the metadata. Other servers' media is fetched over
//! federation for authenticated downloads and kept as a copy
//! ([`federation::media`](crate::federation::media)); the legacy unauthenticated endpoints
//! serve this server's media only.

mod blobs;
mod fetch;
mod files;
pub mod imaging;
mod preview;
mod thumbnail;

use std::{
    hash::{Hash, Hasher},
    num::NonZeroUsize,
    sync::Arc,
    time::Duration,
};

use lru::LruCache;
use parking_lot::Mutex as SyncMutex;
use rhizome_core::{Error, Result, clock::now_millis, error::MatrixErrorKind};
use rhizome_storage::media::{MediaContent, MediaInsert, MediaRecord, PendingCompletion};
use ruma::{OwnedMxcUri, ServerName, UserId};
use tokio::sync::{Mutex, Semaphore, watch};

pub use thumbnail::ThumbnailRequest;

use crate::{Requester, Services};
use blobs::BlobStore;
pub use blobs::MediaStream;

/// How a download was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaAccess {
    /// Through the authenticated `/_matrix/client/v1/media/` endpoints.
    Authenticated,
    /// Through the legacy unauthenticated `/_matrix/media/v3/` endpoints: only media made
    /// before `media.legacy_freeze_ts` is served there.
    Legacy,
}

/// The body of a download.
pub enum MediaBody {
    /// Bytes in memory (thumbnails).
    Bytes(Vec<u8>),
    /// A stream of the stored bytes and their length (original media and stored thumbnails,
    /// from a file or the object store).
    Stream {
        /// The bytes.
        stream: MediaStream,
        /// Their length in bytes.
        size: u64,
    },
}

impl std::fmt::Debug for MediaBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(bytes) => f.debug_tuple("Bytes").field(&bytes.len()).finish(),
            Self::Stream { size, .. } => f.debug_struct("Stream").field("size", size).finish(),
        }
    }
}

/// Media ready to be served.
#[derive(Debug)]
pub struct MediaDownload {
    /// The `Content-Type` it was uploaded with (or of the thumbnail), if any.
    pub content_type: Option<String>,
    /// The file name it was uploaded with, if any.
    pub filename: Option<String>,
    /// The bytes.
    pub body: MediaBody,
}

/// What a purge removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Media items deleted.
    pub media: u64,
    /// Blobs removed from the media store.
    pub files: u64,
    /// Lapsed asynchronous-upload reservations removed.
    pub pending: u64,
    /// Cached URL previews forgotten.
    pub previews: u64,
}

/// How many independent locks guard content files and thumbnail generation.
const LOCK_STRIPES: usize = 64;
/// How often, at most, a media item's last-access time is written.
const TOUCH_INTERVAL_MS: i64 = 3_600_000;
/// The longest a download waits for an asynchronous upload to arrive.
const MAX_WAIT: Duration = Duration::from_secs(120);

/// The media repository's in-memory state.
pub(crate) struct MediaRuntime {
    files: BlobStore,
    /// Held while a content file is written or removed together with its database rows.
    content_locks: Vec<Mutex<()>>,
    /// Held while thumbnails of one media item are made.
    thumbnail_locks: Vec<Mutex<()>>,
    /// Held while another server's media item is fetched, so it is fetched once.
    remote_locks: Vec<Mutex<()>>,
    /// Bounds the thumbnails made at once (each holds a decoded image in memory).
    thumbnail_permits: Semaphore,
    /// Bumped whenever an asynchronous upload receives its content.
    uploads: watch::Sender<u64>,
    /// Media found not to be thumbnailable, so it is not decoded again and again.
    unthumbnailable: SyncMutex<LruCache<(String, String), ThumbnailFailure>>,
}

/// Why a media item has no thumbnails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ThumbnailFailure {
    NotAnImage,
    TooLarge,
}

impl MediaRuntime {
    pub(crate) fn new(config: &rhizome_core::Config) -> Self {
        Self {
            files: BlobStore::from_config_or_unusable(config),
            content_locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            thumbnail_locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            remote_locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            thumbnail_permits: Semaphore::new(config.media.thumbnail_concurrency.max(1)),
            uploads: watch::channel(0).0,
            unthumbnailable: SyncMutex::new(crate::bounded::lru(
                NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    fn stripe<'a>(locks: &'a [Mutex<()>], key: &impl Hash) -> &'a Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let index = usize::try_from(hasher.finish() % LOCK_STRIPES as u64).unwrap_or(0);
        &locks[index % locks.len()]
    }

    fn content_lock(&self, sha256: &str) -> &Mutex<()> {
        Self::stripe(&self.content_locks, &sha256)
    }

    fn thumbnail_lock(&self, origin: &ServerName, media_id: &str) -> &Mutex<()> {
        Self::stripe(&self.thumbnail_locks, &(origin.as_str(), media_id))
    }

    pub(crate) fn remote_lock(&self, origin: &ServerName, media_id: &str) -> &Mutex<()> {
        Self::stripe(&self.remote_locks, &(origin.as_str(), media_id))
    }
}

/// Sets up the configured media store, so a server refuses to start on settings it cannot use
/// (an unreadable secret file, an endpoint the client refuses).
pub fn check_store(config: &rhizome_core::Config) -> Result<()> {
    BlobStore::from_config(config).map(drop)
}

/// A fresh media ID: 24 random letters and digits.
fn new_media_id() -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect()
}

/// A `Content-Type` worth keeping: printable ASCII of the form `type/subtype[; params]`.
pub(crate) fn clean_content_type(content_type: Option<&str>) -> Option<String> {
    let value = content_type?.trim();
    let essence = value.split(';').next()?.trim();
    let valid = !value.is_empty()
        && value.len() <= 255
        && value.bytes().all(|byte| byte == b' ' || byte == b'\t' || byte.is_ascii_graphic())
        && essence.split_once('/').is_some_and(|(kind, sub)| !kind.is_empty() && !sub.is_empty());
    valid.then(|| value.to_owned())
}

/// A file name worth keeping: without control characters or path separators, at most 255
/// characters.
pub(crate) fn clean_filename(filename: Option<&str>) -> Option<String> {
    let cleaned: String = filename?
        .chars()
        .filter(|c| !c.is_control() && *c != '/' && *c != '\\')
        .take(255)
        .collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| cleaned.to_owned())
}

fn quota_exceeded() -> Error {
    Error::forbidden("This upload would exceed your media storage quota")
}

fn media_not_found() -> Error {
    Error::not_found("Media not found")
}

impl Services {
    /// The largest upload accepted, in bytes.
    pub fn media_upload_limit(&self) -> u64 {
        self.config.media.max_upload_bytes
    }

    fn media_quota(&self) -> Option<u64> {
        let quota = self.config.media.quota_bytes_per_user;
        (quota > 0).then_some(quota)
    }

    fn mxc_uri(&self, media_id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name()))
    }

    /// Refuses an upload over the size limit or (by a first, cheap check) the quota.
    async fn check_upload(&self, user_id: &UserId, size: u64) -> Result<()> {
        if size > self.config.media.max_upload_bytes {
            return Err(Error::matrix(
                MatrixErrorKind::TooLarge,
                format!(
                    "The upload is larger than this server's limit of {} bytes",
                    self.config.media.max_upload_bytes
                ),
            ));
        }
        if let Some(quota) = self.media_quota()
            && self.store.media_usage(user_id).await?.saturating_add(size) > quota
        {
            return Err(quota_exceeded());
        }
        Ok(())
    }

    /// Writes content to disk, then runs `record` (which stores the rows pointing at it)
    /// under the content lock; removes the file again if `record` leaves it unreferenced.
    pub(crate) async fn store_content<T, F>(&self, bytes: Arc<Vec<u8>>, record: F) -> Result<T>
    where
        F: AsyncFnOnce(String) -> Result<T>,
    {
        let hashed = bytes.clone();
        let sha256 = tokio::task::spawn_blocking(move || files::sha256_hex(&hashed))
            .await
            .map_err(Error::internal)?;
        let _guard = self.media.content_lock(&sha256).lock().await;
        self.media.files.write(&sha256, bytes).await?;
        let result = record(sha256.clone()).await;
        if !self.store.content_referenced(&sha256).await? {
            self.media.files.remove(&sha256).await?;
        }
        result
    }

    /// Stores an upload and returns its `mxc://` URI.
    pub async fn upload_media(
        self: &Arc<Self>,
        requester: &Requester,
        content_type: Option<&str>,
        filename: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<OwnedMxcUri> {
        let size = bytes.len() as u64;
        self.check_upload(&requester.user_id, size).await?;
        let media_id =
            self.store_new_media(&requester.user_id, content_type, filename, bytes, true).await?;
        Ok(self.mxc_uri(&media_id))
    }

    /// Stores new media of this server under a fresh ID, and starts making its thumbnails.
    pub(crate) async fn store_new_media(
        self: &Arc<Self>,
        uploader: &UserId,
        content_type: Option<&str>,
        filename: Option<&str>,
        bytes: Vec<u8>,
        counts_toward_quota: bool,
    ) -> Result<String> {
        let now = now_millis();
        let media_id = new_media_id();
        let is_image = imaging::supported_format(&bytes).is_some();
        let size = bytes.len() as u64;
        let quota = self.media_quota();
        let record = |sha256: String| MediaRecord {
            origin: self.owned_server_name(),
            media_id: media_id.clone(),
            uploader: uploader.to_owned(),
            created_ts: now,
            last_access_ts: now,
            content: Some(MediaContent {
                content_type: clean_content_type(content_type),
                filename: clean_filename(filename),
                size,
                sha256,
                uploaded_ts: now,
            }),
            expires_ts: None,
            counts_toward_quota,
        };
        let outcome = self
            .store_content(Arc::new(bytes), async |sha256| {
                self.store.insert_media(&record(sha256), quota).await
            })
            .await?;
        match outcome {
            MediaInsert::Stored => {}
            MediaInsert::QuotaExceeded => return Err(quota_exceeded()),
            MediaInsert::Exists => return Err(Error::bug("media ID collision")),
        }
        if is_image {
            self.spawn_configured_thumbnails(media_id.clone());
        }
        Ok(media_id)
    }

    /// Reserves a media ID for an asynchronous upload; returns its URI and when the
    /// reservation lapses (ms since the epoch).
    pub async fn create_media_id(&self, requester: &Requester) -> Result<(OwnedMxcUri, i64)> {
        let now = now_millis();
        let lifetime = i64::try_from(self.config.media.pending_upload_lifetime_secs)
            .unwrap_or(i64::MAX / 2_000)
            .saturating_mul(1000);
        let expires_ts = now.saturating_add(lifetime);
        let media_id = new_media_id();
        let record = MediaRecord {
            origin: self.owned_server_name(),
            media_id: media_id.clone(),
            uploader: requester.user_id.clone(),
            created_ts: now,
            last_access_ts: now,
            content: None,
            expires_ts: Some(expires_ts),
            counts_toward_quota: true,
        };
        let max_pending = self.config.media.max_pending_uploads;
        if !self.store.create_pending_media(&record, max_pending, now).await? {
            return Err(Error::limit_exceeded(Duration::from_secs(60)));
        }
        Ok((self.mxc_uri(&media_id), expires_ts))
    }

    /// Gives content to a media ID reserved by [`create_media_id`](Self::create_media_id).
    pub async fn upload_pending_media(
        self: &Arc<Self>,
        requester: &Requester,
        server_name: &ServerName,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<()> {
        if server_name != self.server_name() {
            return Err(media_not_found());
        }
        let now = now_millis();
        let existing =
            self.store.get_media(server_name, media_id).await?.ok_or_else(media_not_found)?;
        if existing.uploader != requester.user_id {
            return Err(Error::forbidden("This media ID was made for someone else"));
        }
        if existing.content.is_some() {
            return Err(Error::conflict(
                MatrixErrorKind::CannotOverwriteMedia,
                "This media ID has its content already",
            ));
        }
        if existing.expires_ts.is_some_and(|expires| expires <= now) {
            return Err(media_not_found());
        }
        let size = bytes.len() as u64;
        self.check_upload(&requester.user_id, size).await?;
        let is_image = imaging::supported_format(&bytes).is_some();
        let quota = self.media_quota();
        let content = |sha256: String| MediaContent {
            content_type: clean_content_type(content_type),
            filename: clean_filename(filename),
            size,
            sha256,
            uploaded_ts: now,
        };
        let outcome = self
            .store_content(Arc::new(bytes), async |sha256| {
                self.store
                    .complete_pending_media(
                        server_name,
                        media_id,
                        &requester.user_id,
                        &content(sha256),
                        quota,
                        now,
                    )
                    .await
            })
            .await?;
        match outcome {
            PendingCompletion::Stored => {
                self.media_uploaded();
                // Downloads waiting for it on other processes look again.
                let message = crate::processes::Message::MediaUploaded;
                crate::processes::publish(self.store.as_ref(), &message);
                if is_image {
                    self.spawn_configured_thumbnails(media_id.to_owned());
                }
                Ok(())
            }
            PendingCompletion::QuotaExceeded => Err(quota_exceeded()),
            PendingCompletion::NotFound => Err(media_not_found()),
            PendingCompletion::NotUploader => {
                Err(Error::forbidden("This media ID was made for someone else"))
            }
            PendingCompletion::AlreadyUploaded => Err(Error::conflict(
                MatrixErrorKind::CannotOverwriteMedia,
                "This media ID has its content already",
            )),
        }
    }

    /// Wakes the downloads waiting here for pending uploads, to look again.
    pub(crate) fn media_uploaded(&self) {
        self.media.uploads.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Finds uploaded media to serve, waiting up to `timeout` for a pending upload.
    pub(crate) async fn media_to_serve(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
        access: MediaAccess,
    ) -> Result<(MediaRecord, MediaContent)> {
        if server_name != self.server_name() {
            return self.cached_remote_media(server_name, media_id, access).await;
        }
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
        let mut uploads = self.media.uploads.subscribe();
        loop {
            uploads.mark_unchanged();
            let record =
                self.store.get_media(server_name, media_id).await?.ok_or_else(media_not_found)?;
            if access == MediaAccess::Legacy
                && self
                    .config
                    .media
                    .legacy_freeze_ts
                    .is_none_or(|freeze| record.created_ts >= freeze)
            {
                // New media is never served without authentication.
                return Err(media_not_found());
            }
            if let Some(content) = record.content.clone() {
                let now = now_millis();
                if record.last_access_ts < now - TOUCH_INTERVAL_MS {
                    self.store.touch_media(server_name, media_id, now).await?;
                }
                return Ok((record, content));
            }
            if record.expires_ts.is_some_and(|expires| expires <= now_millis()) {
                return Err(media_not_found());
            }
            let waited = tokio::time::timeout_at(deadline, uploads.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return Err(Error::matrix(
                    MatrixErrorKind::NotYetUploaded,
                    "The media has not been uploaded yet",
                ));
            }
        }
    }

    /// The copy of another server's media held here, for authenticated access.
    async fn cached_remote_media(
        &self,
        server_name: &ServerName,
        media_id: &str,
        access: MediaAccess,
    ) -> Result<(MediaRecord, MediaContent)> {
        if access == MediaAccess::Legacy {
            return Err(Error::not_found("Media of other servers is not available here"));
        }
        let record =
            self.store.get_media(server_name, media_id).await?.ok_or_else(media_not_found)?;
        let content = record.content.clone().ok_or_else(media_not_found)?;
        let now = now_millis();
        if record.last_access_ts < now - TOUCH_INTERVAL_MS {
            self.store.touch_media(server_name, media_id, now).await?;
        }
        Ok((record, content))
    }

    /// The original bytes of a media item; another server's is fetched (and kept) first.
    pub async fn download_media(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
        access: MediaAccess,
    ) -> Result<MediaDownload> {
        if server_name != self.server_name()
            && access == MediaAccess::Authenticated
            && let Some(uncached) = self.cache_remote_media(server_name, media_id, timeout).await?
        {
            return Ok(uncached);
        }
        let (_, content) = self.media_to_serve(server_name, media_id, timeout, access).await?;
        let Some((stream, size)) = self.media.files.open(&content.sha256).await? else {
            tracing::error!("a media blob is missing from the media store");
            return Err(media_not_found());
        };
        Ok(MediaDownload {
            content_type: content.content_type,
            filename: content.filename,
            body: MediaBody::Stream { stream, size },
        })
    }

    /// Removes the files of content hashes that nothing refers to any more.
    async fn remove_unreferenced(&self, hashes: &[String]) -> Result<u64> {
        let mut removed = 0;
        for sha256 in hashes {
            let _guard = self.media.content_lock(sha256).lock().await;
            if !self.store.content_referenced(sha256).await?
                && self.media.files.remove(sha256).await?
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes a media item of this server, its thumbnails and (when nothing else uses them)
    /// their files. Returns `false` when there was no such item.
    pub async fn delete_media(&self, server_name: &ServerName, media_id: &str) -> Result<bool> {
        let Some(deleted) = self.store.delete_media(server_name, media_id).await? else {
            return Ok(false);
        };
        self.media.unthumbnailable.lock().pop(&(server_name.to_string(), media_id.to_owned()));
        self.remove_unreferenced(&deleted.unreferenced).await?;
        Ok(true)
    }

    /// Deletes a media item of this server given its `mxc://` URI; `false` when there is no
    /// such item.
    pub async fn delete_media_by_uri(&self, mxc_uri: &str) -> Result<bool> {
        let uri = OwnedMxcUri::from(mxc_uri.trim());
        let (server_name, media_id) =
            uri.parts().map_err(|_| Error::invalid_param("Not an mxc:// URI"))?;
        if server_name != self.server_name() {
            return Err(Error::invalid_param("Not media of this server"));
        }
        self.delete_media(server_name, media_id).await
    }

    /// Deletes media of this server not used for `unused_for`, lapsed upload reservations and
    /// URL previews older than that.
    pub async fn purge_media(&self, unused_for: Duration) -> Result<PurgeReport> {
        let now = now_millis();
        let cutoff = now.saturating_sub(i64::try_from(unused_for.as_millis()).unwrap_or(i64::MAX));
        let mut report = PurgeReport::default();
        let origin = self.owned_server_name();
        loop {
            let batch = self.store.media_unused_since(&origin, cutoff, 500).await?;
            if batch.is_empty() {
                break;
            }
            for media_id in batch {
                if let Some(deleted) = self.store.delete_media(&origin, &media_id).await? {
                    report.media += 1;
                    report.files += self.remove_unreferenced(&deleted.unreferenced).await?;
                }
            }
        }
        report.pending = self.store.delete_expired_pending_media(now).await?;
        report.previews = self.store.delete_url_previews_before(cutoff).await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_and_filenames_are_cleaned() {
        assert_eq!(clean_content_type(Some("image/png")).as_deref(), Some("image/png"));
        assert_eq!(
            clean_content_type(Some(" text/plain; charset=utf-8 ")).as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(clean_content_type(Some("text/html\r\nX-Evil: 1")), None);
        assert_eq!(clean_content_type(Some("nonsense")), None);
        assert_eq!(clean_content_type(Some("/png")), None);
        assert_eq!(clean_content_type(None), None);
        assert_eq!(clean_filename(Some("../../etc/passwd")).as_deref(), Some("....etcpasswd"));
        assert_eq!(clean_filename(Some("cat\u{0}.png\n")).as_deref(), Some("cat.png"));
        assert_eq!(clean_filename(Some("   ")), None);
        assert_eq!(clean_filename(Some(&"x".repeat(400))).map(|name| name.len()), Some(255));
    }

    #[test]
    fn media_ids_are_random_and_url_safe() {
        let first = new_media_id();
        assert_eq!(first.len(), 24);
        assert!(first.bytes().all(|byte| byte.is_ascii_alphanumeric()));
        assert_ne!(first, new_media_id());
    }
}
