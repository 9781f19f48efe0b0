//! Configuration of the media repository.

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
    /// Media uploaded before this time (milliseconds since the Unix epoch) is still served by
    /// the legacy unauthenticated `/_matrix/media/v3/{download,thumbnail}` endpoints. Unset
    /// means no media is served there.
    pub legacy_freeze_ts: Option<i64>,
    /// The largest image, in pixels (width × height), that thumbnails are made from.
    pub max_image_pixels: u64,
    /// URL previews.
    pub url_preview: UrlPreviewConfig,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 50 * 1024 * 1024,
            quota_bytes_per_user: 0,
            legacy_freeze_ts: None,
            max_image_pixels: 32_000_000,
            url_preview: UrlPreviewConfig::default(),
        }
    }
}

/// URL previews: off by default, because fetching a URL tells its site that someone here
/// shared it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UrlPreviewConfig {
    /// Whether `/_matrix/client/v1/media/preview_url` fetches pages at all.
    pub enabled: bool,
    /// The most bytes read from a previewed page.
    pub max_page_bytes: u64,
    /// How long a preview fetch may take, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for UrlPreviewConfig {
    fn default() -> Self {
        Self { enabled: false, max_page_bytes: 1024 * 1024, timeout_ms: 10_000 }
    }
}
