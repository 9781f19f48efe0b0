//! Configuration of the media repository.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The media repository: uploads, downloads, thumbnails and URL previews.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// The largest upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// The most bytes of media one user may have stored; 0 means no quota.
    pub quota_bytes_per_user: u64,
    /// The most bytes of other servers' media kept here as cached copies (fetched when a local
    /// user asks for it, each copy at most `max_upload_bytes`); 0 means no limit. Past it,
    /// other servers' media is still passed on to users, but not kept.
    pub remote_cache_quota_bytes: u64,
    /// Media uploaded before this time (milliseconds since the Unix epoch) is still served by
    /// the legacy unauthenticated `/_matrix/media/v3/{download,thumbnail}` endpoints. Unset
    /// means no media is served there.
    pub legacy_freeze_ts: Option<i64>,
    /// The largest image, in pixels (width × height), that thumbnails are made from.
    pub max_image_pixels: u64,
    /// The most memory one image decoder may allocate, in bytes. Images needing more get no
    /// thumbnail.
    pub max_decode_bytes: u64,
    /// How many thumbnails may be generated at once (each holds one decoded image in memory).
    pub thumbnail_concurrency: usize,
    /// The largest thumbnail width or height made; larger requests are reduced to it.
    pub max_thumbnail_dimension: u32,
    /// How many thumbnails of other sizes than `thumbnail_sizes` are kept per media item.
    /// Beyond that, requests get the nearest configured size.
    pub max_dynamic_thumbnails: u32,
    /// Thumbnail sizes made as soon as an image is uploaded, and served when a media item has
    /// reached `max_dynamic_thumbnails`.
    pub thumbnail_sizes: Vec<ThumbnailSize>,
    /// How many asynchronous uploads (`POST /_matrix/media/v1/create`) one user may have
    /// waiting for their content at once.
    pub max_pending_uploads: u64,
    /// How long a media ID made for an asynchronous upload waits for its content, in seconds.
    pub pending_upload_lifetime_secs: u64,
    /// URL previews.
    pub url_preview: UrlPreviewConfig,
    /// Where media bytes live: the data directory (`<data_dir>/media/`, the default), or an
    /// S3-compatible object store that every Rhizome process of a deployment shares.
    pub s3: S3Config,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 50 * 1024 * 1024,
            quota_bytes_per_user: 0,
            remote_cache_quota_bytes: 4 * 1024 * 1024 * 1024,
            legacy_freeze_ts: None,
            max_image_pixels: 32_000_000,
            max_decode_bytes: 256 * 1024 * 1024,
            thumbnail_concurrency: 2,
            max_thumbnail_dimension: 1600,
            max_dynamic_thumbnails: 16,
            thumbnail_sizes: vec![
                ThumbnailSize { width: 32, height: 32, method: ThumbnailMethod::Crop },
                ThumbnailSize { width: 96, height: 96, method: ThumbnailMethod::Crop },
                ThumbnailSize { width: 320, height: 240, method: ThumbnailMethod::Scale },
                ThumbnailSize { width: 640, height: 480, method: ThumbnailMethod::Scale },
                ThumbnailSize { width: 800, height: 600, method: ThumbnailMethod::Scale },
            ],
            max_pending_uploads: 10,
            pending_upload_lifetime_secs: 24 * 3600,
            url_preview: UrlPreviewConfig::default(),
            s3: S3Config::default(),
        }
    }
}

/// How a thumbnail is fitted to its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ThumbnailMethod {
    /// Cut the image to the size's aspect ratio, then shrink it to the size.
    Crop,
    /// Shrink the image to fit within the size, keeping its aspect ratio.
    Scale,
}

impl ThumbnailMethod {
    /// The method's name in the Matrix API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

/// A thumbnail size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailSize {
    /// The width in pixels.
    pub width: u32,
    /// The height in pixels.
    pub height: u32,
    /// `crop` or `scale`.
    pub method: ThumbnailMethod,
}

/// URL previews: off by default, because fetching a URL tells its site that someone here
/// shared it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UrlPreviewConfig {
    /// Whether `/_matrix/client/v1/media/preview_url` fetches pages at all.
    pub enabled: bool,
    /// The most bytes read from a previewed page (and from its preview image).
    pub max_page_bytes: u64,
    /// How long a preview fetch may take, in milliseconds.
    pub timeout_ms: u64,
    /// How long a fetched preview is reused, in seconds.
    pub cache_secs: u64,
    /// Addresses previews may be fetched from although they are not public (a site on the
    /// collective's own network, say). Every other loopback, private, link-local or reserved
    /// address stays refused, at every redirect.
    pub allowed_addresses: Vec<IpAddr>,
}

impl Default for UrlPreviewConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_page_bytes: 1024 * 1024,
            timeout_ms: 10_000,
            cache_secs: 3600,
            allowed_addresses: Vec::new(),
        }
    }
}

/// Media in an S3-compatible object store (AWS S3, MinIO, Garage, Ceph, …) instead of the data
/// directory: every process that shares the database must use the same bucket and prefix.
/// The credentials are never logged; prefer `secret_access_key_file` (or the environment
/// variable `RHIZOME_MEDIA__S3__SECRET_ACCESS_KEY`) to writing the secret here.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Whether media is stored in the bucket below rather than in the data directory.
    pub enabled: bool,
    /// The store's URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://minio:9000`.
    /// Empty means AWS S3 in `region`.
    pub endpoint: String,
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region; most stores other than AWS accept any value.
    pub region: String,
    /// The access key ID.
    pub access_key_id: String,
    /// The secret access key. Prefer `secret_access_key_file`.
    pub secret_access_key: Option<String>,
    /// A file holding the secret access key (its surrounding whitespace ignored).
    pub secret_access_key_file: Option<std::path::PathBuf>,
    /// A prefix of every object's key (`rhizome/` puts media under `rhizome/ab/cd/abcd…`).
    pub prefix: String,
    /// Whether the bucket is addressed in the path (`endpoint/bucket/key`, what MinIO and most
    /// self-hosted stores want) rather than as a sub-domain (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Whether a plain `http://` endpoint is allowed (a store on the local network).
    pub allow_http: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: String::new(),
            bucket: String::new(),
            region: "us-east-1".to_owned(),
            access_key_id: String::new(),
            secret_access_key: None,
            secret_access_key_file: None,
            prefix: String::new(),
            path_style: false,
            allow_http: false,
        }
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("enabled", &self.enabled)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Checks an enabled store's settings (the secret file is read at start-up).
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.bucket.trim().is_empty() {
            return Err("media.s3.enabled needs media.s3.bucket".to_owned());
        }
        if self.access_key_id.trim().is_empty() {
            return Err("media.s3.enabled needs media.s3.access_key_id".to_owned());
        }
        if self.secret_access_key.is_none() && self.secret_access_key_file.is_none() {
            return Err("media.s3.enabled needs media.s3.secret_access_key_file (or \
                        media.s3.secret_access_key)"
                .to_owned());
        }
        if self.secret_access_key.is_some() && self.secret_access_key_file.is_some() {
            return Err("set only one of media.s3.secret_access_key and \
                        media.s3.secret_access_key_file"
                .to_owned());
        }
        if self.endpoint.is_empty() && self.region.trim().is_empty() {
            return Err("media.s3.enabled needs media.s3.endpoint or media.s3.region".to_owned());
        }
        if !self.endpoint.is_empty() {
            let scheme_ok = self.endpoint.starts_with("https://")
                || (self.allow_http && self.endpoint.starts_with("http://"));
            if !scheme_ok {
                return Err(format!(
                    "media.s3.endpoint must be an https:// URL (or http:// with \
                     media.s3.allow_http = true), not {:?}",
                    self.endpoint
                ));
            }
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|part| part == "..") {
            return Err("media.s3.prefix must not start with / nor contain ..".to_owned());
        }
        Ok(())
    }
}
