//! Media storage: metadata of uploaded files and their thumbnails (the bytes live in files named
//! by their SHA-256, so identical uploads share one file), each user's usage for quotas, and
//! cached URL previews.
//!
//! A media item is keyed by its origin server and media ID (the two parts of its `mxc://` URI).
//! An item made by `POST /_matrix/media/v1/create` is *pending* until its content arrives.

use async_trait::async_trait;
use rhizome_core::Result;
use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};

/// The content of an uploaded media item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaContent {
    /// The `Content-Type` it was uploaded with, if any.
    pub content_type: Option<String>,
    /// The file name it was uploaded with, if any.
    pub filename: Option<String>,
    /// Its size in bytes.
    pub size: u64,
    /// The SHA-256 of the bytes, in lowercase hex: the name of the file holding them.
    pub sha256: String,
    /// When the content arrived (ms since the epoch).
    pub uploaded_ts: i64,
}

/// A media item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaRecord {
    /// The server that owns the item (the authority of its `mxc://` URI).
    pub origin: OwnedServerName,
    /// The media ID (the path of its `mxc://` URI).
    pub media_id: String,
    /// Who uploaded it (or reserved its ID).
    pub uploader: OwnedUserId,
    /// When the item (or its reservation) was made (ms since the epoch).
    pub created_ts: i64,
    /// When it was last downloaded or thumbnailed (ms since the epoch; updated coarsely).
    pub last_access_ts: i64,
    /// The content, or `None` while an asynchronous upload is pending.
    pub content: Option<MediaContent>,
    /// When a pending reservation lapses (ms since the epoch); `None` once uploaded.
    pub expires_ts: Option<i64>,
    /// Whether its size counts towards the uploader's quota (media the server fetched itself,
    /// such as URL preview images, does not).
    pub counts_toward_quota: bool,
}

/// The outcome of storing a new media item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaInsert {
    /// The item is stored.
    Stored,
    /// Storing it would take the uploader past the quota; nothing was stored.
    QuotaExceeded,
    /// An item with that origin and media ID exists; nothing was stored.
    Exists,
}

/// The outcome of giving a pending media item its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingCompletion {
    /// The content is stored.
    Stored,
    /// Storing it would take the uploader past the quota; nothing changed.
    QuotaExceeded,
    /// No such item, or its reservation lapsed.
    NotFound,
    /// The item was reserved by someone else.
    NotUploader,
    /// The item has its content already.
    AlreadyUploaded,
}

/// A stored thumbnail of a media item, keyed by the size and method asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThumbnailRecord {
    /// The media item's origin.
    pub origin: OwnedServerName,
    /// The media item's ID.
    pub media_id: String,
    /// The width asked for.
    pub width: u32,
    /// The height asked for.
    pub height: u32,
    /// `crop` or `scale`.
    pub method: String,
    /// Whether this is an animated thumbnail.
    pub animated: bool,
    /// The thumbnail's `Content-Type`.
    pub content_type: String,
    /// The SHA-256 of the thumbnail's bytes, in lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was made (ms since the epoch).
    pub created_ts: i64,
}

/// What identifies a thumbnail of one media item.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ThumbnailKey {
    /// The width asked for.
    pub width: u32,
    /// The height asked for.
    pub height: u32,
    /// `crop` or `scale`.
    pub method: String,
    /// Whether it is animated.
    pub animated: bool,
}

/// A deleted media item and the content files nothing refers to any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedMedia {
    /// The item as it was.
    pub record: MediaRecord,
    /// SHA-256 hashes (of the item and its thumbnails) that no remaining item or thumbnail
    /// uses: their files may be removed.
    pub unreferenced: Vec<String>,
}

/// Media metadata storage.
#[async_trait]
pub trait MediaStore {
    /// Stores a new, uploaded media item (`record.content` must be set). When it counts towards
    /// the quota, the uploader's usage grows by its size, unless that would pass `quota`
    /// bytes; the check and the growth are one atomic step.
    async fn insert_media(&self, record: &MediaRecord, quota: Option<u64>) -> Result<MediaInsert>;

    /// Reserves a media ID for an asynchronous upload (`record.content` must be `None` and
    /// `record.expires_ts` set), unless the uploader already has `max_pending` reservations
    /// that have not lapsed at `now`. Returns whether it was reserved.
    async fn create_pending_media(
        &self,
        record: &MediaRecord,
        max_pending: u64,
        now: i64,
    ) -> Result<bool>;

    /// Gives a pending media item its content, once, if `uploader` reserved it and the
    /// reservation has not lapsed at `now`; the quota is applied as by
    /// [`insert_media`](Self::insert_media).
    async fn complete_pending_media(
        &self,
        origin: &ServerName,
        media_id: &str,
        uploader: &UserId,
        content: &MediaContent,
        quota: Option<u64>,
        now: i64,
    ) -> Result<PendingCompletion>;

    /// A media item, pending or not.
    async fn get_media(&self, origin: &ServerName, media_id: &str) -> Result<Option<MediaRecord>>;

    /// Records that a media item was used at `ts`.
    async fn touch_media(&self, origin: &ServerName, media_id: &str, ts: i64) -> Result<()>;

    /// The bytes of media counting towards a user's quota.
    async fn media_usage(&self, user_id: &UserId) -> Result<u64>;

    /// Whether any media item or thumbnail has content with this SHA-256.
    async fn content_referenced(&self, sha256: &str) -> Result<bool>;

    /// A stored thumbnail.
    async fn get_thumbnail(
        &self,
        origin: &ServerName,
        media_id: &str,
        key: &ThumbnailKey,
    ) -> Result<Option<ThumbnailRecord>>;

    /// Every stored thumbnail of a media item.
    async fn list_thumbnails(
        &self,
        origin: &ServerName,
        media_id: &str,
    ) -> Result<Vec<ThumbnailRecord>>;

    /// Stores a thumbnail. Returns `false`, storing nothing, when one with that key exists or
    /// the media item is gone.
    async fn insert_thumbnail(&self, thumbnail: &ThumbnailRecord) -> Result<bool>;

    /// Deletes a media item (pending or not) with its thumbnails, giving back its usage.
    /// `None` when there is no such item.
    async fn delete_media(
        &self,
        origin: &ServerName,
        media_id: &str,
    ) -> Result<Option<DeletedMedia>>;

    /// Up to `limit` media IDs of uploaded items of `origin` last used before `before_ts`,
    /// least recently used first.
    async fn media_unused_since(
        &self,
        origin: &ServerName,
        before_ts: i64,
        limit: u32,
    ) -> Result<Vec<String>>;

    /// Deletes pending reservations that lapsed before `now`; returns how many.
    async fn delete_expired_pending_media(&self, now: i64) -> Result<u64>;

    /// A cached URL preview (JSON) fetched at or after `fetched_after_ts`, by the hash of the
    /// URL (URLs themselves are not stored).
    async fn get_url_preview(
        &self,
        url_hash: &str,
        fetched_after_ts: i64,
    ) -> Result<Option<String>>;

    /// Caches a URL preview, replacing an older one.
    async fn set_url_preview(&self, url_hash: &str, json: &str, fetched_ts: i64) -> Result<()>;

    /// Forgets URL previews fetched before `before_ts`; returns how many.
    async fn delete_url_previews_before(&self, before_ts: i64) -> Result<u64>;
}
