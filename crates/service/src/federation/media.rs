//! Media across servers (spec: Server-Server API, "Content Repository", v1.11): fetching another
//! server's media and thumbnails for local users through the authenticated federation endpoints
//! (`/_matrix/federation/v1/media/download|thumbnail/{mediaId}`, `multipart/mixed`), falling
//! back to the legacy unauthenticated `/_matrix/media/v3/` paths for servers older than that,
//! and keeping a copy of downloaded media in the media repository.
//!
//! Nothing larger than `media.max_upload_bytes` is read, and nothing malformed is kept. Copies
//! count towards `media.remote_cache_quota_bytes`, charged to [`REMOTE_MEDIA_OWNER`]; past it
//! media is still passed on, not kept.

pub mod multipart;

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, header};
use rhizome_core::{Error, Result, error::MatrixErrorKind};
use ruma::{
    OwnedUserId, ServerName, UInt, UserId,
    api::federation::authenticated_media::{get_content, get_content_thumbnail},
    http_headers::ContentDisposition,
    media::Method,
};

use rhizome_core::clock::now_millis;
use rhizome_storage::media::{MediaContent, MediaInsert, MediaRecord};

use super::{FederationError, RequestLimits};
use crate::{
    Services,
    media::{
        MediaBody, MediaDownload, ThumbnailRequest, clean_content_type, clean_filename,
        imaging::ThumbnailMethod,
    },
};

/// The localpart of the account other servers' cached media is recorded under. Capitals make
/// it a name no one can register.
pub const REMOTE_MEDIA_OWNER: &str = "Remote-Media-Cache";
/// Room for the `multipart/mixed` framing around the media itself.
const MULTIPART_OVERHEAD: usize = 64 * 1024;
/// The longest another server is asked to wait for media still being uploaded.
const MAX_REMOTE_WAIT: Duration = Duration::from_secs(20);
/// The longest media ID asked for.
const MAX_MEDIA_ID: usize = 255;
/// The largest thumbnail read from another server.
const MAX_THUMBNAIL_BYTES: u64 = 16 * 1024 * 1024;

/// Media fetched from another server.
#[derive(Debug)]
pub(crate) struct RemoteMedia {
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Its file name, if any.
    pub filename: Option<String>,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// What was fetched.
#[derive(Clone, Copy, Debug)]
enum Wanted {
    Download,
    Thumbnail(ThumbnailRequest),
}

/// Whether a media ID has the spec's shape (`[A-Za-z0-9_-]+`), so it is safe in a path.
pub(crate) fn valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= MAX_MEDIA_ID
        && media_id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
}

/// A server name as a path segment (IPv6 literals carry brackets).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':') {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

fn too_large(limit: u64) -> Error {
    Error::matrix(
        MatrixErrorKind::TooLarge,
        format!("The remote media is larger than this server's limit of {limit} bytes"),
    )
}

fn invalid_answer(why: impl std::fmt::Display) -> Error {
    tracing::debug!(%why, "another server's media answer was refused");
    Error::matrix(MatrixErrorKind::Unknown, "The remote server sent an invalid media response")
}

/// Whether an error answer means the server does not know the endpoint (a server older than
/// Matrix 1.11), so the legacy path is worth a try.
fn unrecognized(error: &FederationError) -> bool {
    match error {
        FederationError::Remote { status, kind, .. } => {
            let unrecognized_kind = matches!(kind, Some(MatrixErrorKind::Unrecognized));
            match *status {
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                    kind.is_none() || unrecognized_kind
                }
                StatusCode::BAD_REQUEST => unrecognized_kind,
                StatusCode::NOT_IMPLEMENTED => true,
                _ => false,
            }
        }
        _ => false,
    }
}

/// The error a local client gets for a failed fetch.
fn fetch_error(error: FederationError, limit: u64) -> Error {
    match &error {
        FederationError::ResponseTooLarge { .. } => too_large(limit),
        FederationError::Remote { status: StatusCode::NOT_FOUND, .. } => {
            Error::not_found("Media not found")
        }
        FederationError::Remote { kind: Some(MatrixErrorKind::NotYetUploaded), .. } => {
            Error::matrix(MatrixErrorKind::NotYetUploaded, "The media has not been uploaded yet")
        }
        FederationError::Remote { kind: Some(MatrixErrorKind::TooLarge), .. } => too_large(limit),
        _ if error.is_unreachable() => {
            Error::not_found("The media's server could not be reached").with_cause(error)
        }
        _ => error.into(),
    }
}

/// The `Content-Type` and file name of a legacy answer.
fn legacy_media(response: http::Response<Bytes>) -> RemoteMedia {
    let headers = response.headers();
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let filename = headers
        .get(header::CONTENT_DISPOSITION)
        .and_then(|value| ContentDisposition::try_from(value.as_bytes()).ok())
        .and_then(|disposition| disposition.filename);
    RemoteMedia { content_type, filename, bytes: response.into_body().to_vec() }
}

impl Services {
    /// The account other servers' cached media is recorded under.
    pub(crate) fn remote_media_owner(&self) -> Result<OwnedUserId> {
        UserId::parse_with_server_name(REMOTE_MEDIA_OWNER, self.server_name())
            .map_err(|_| Error::bug("the remote media account has an invalid user ID"))
    }

    /// Fetches another server's media, at most `max_bytes` of it.
    pub(crate) async fn fetch_remote_media(
        &self,
        origin: &ServerName,
        media_id: &str,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<RemoteMedia> {
        self.fetch_remote(origin, media_id, Wanted::Download, timeout, max_bytes).await
    }

    /// Fetches a thumbnail of another server's media, at most `max_bytes` of it.
    pub(crate) async fn fetch_remote_thumbnail(
        &self,
        origin: &ServerName,
        media_id: &str,
        request: ThumbnailRequest,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<RemoteMedia> {
        self.fetch_remote(origin, media_id, Wanted::Thumbnail(request), timeout, max_bytes).await
    }

    async fn fetch_remote(
        &self,
        origin: &ServerName,
        media_id: &str,
        wanted: Wanted,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<RemoteMedia> {
        if origin == self.server_name() || !valid_media_id(media_id) {
            return Err(Error::not_found("Media not found"));
        }
        let client = self.federation_client()?;
        let max_body = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let wait = timeout.min(MAX_REMOTE_WAIT);
        let limits = RequestLimits::default()
            .with_max_body_bytes(max_body.saturating_add(MULTIPART_OVERHEAD))
            .with_timeout(
                Duration::from_secs(self.config.federation.request_timeout_secs.max(1)) + wait,
            );
        let answer = match wanted {
            Wanted::Download => {
                let mut request = get_content::v1::Request::new(media_id.to_owned());
                request.timeout_ms = wait;
                client.send_for_response(origin, request, limits).await
            }
            Wanted::Thumbnail(thumbnail) => {
                let mut request = get_content_thumbnail::v1::Request::new(
                    media_id.to_owned(),
                    UInt::from(thumbnail.width),
                    UInt::from(thumbnail.height),
                );
                request.method = Some(match thumbnail.method {
                    ThumbnailMethod::Crop => Method::Crop,
                    ThumbnailMethod::Scale => Method::Scale,
                });
                request.animated = Some(thumbnail.animated);
                request.timeout_ms = wait;
                client.send_for_response(origin, request, limits).await
            }
        };
        let media = match answer {
            Ok(response) => {
                let content_type = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default();
                let part =
                    multipart::parse(content_type, response.body()).map_err(invalid_answer)?;
                RemoteMedia {
                    content_type: part.content_type,
                    filename: part.filename,
                    bytes: part.bytes,
                }
            }
            Err(error) if unrecognized(&error) => {
                tracing::debug!(%origin, "falling back to the legacy media path");
                let path = self.legacy_media_path(origin, media_id, wanted, wait);
                let limits = limits.with_max_body_bytes(max_body);
                let response = client
                    .get_unsigned(origin, &path, limits)
                    .await
                    .map_err(|error| fetch_error(error, max_bytes))?;
                legacy_media(response)
            }
            Err(error) => return Err(fetch_error(error, max_bytes)),
        };
        if media.bytes.len() as u64 > max_bytes {
            return Err(too_large(max_bytes));
        }
        Ok(media)
    }

    /// The legacy (Matrix before 1.11) path of a download or thumbnail, never redirected and
    /// never fetched further by the other server.
    fn legacy_media_path(
        &self,
        origin: &ServerName,
        media_id: &str,
        wanted: Wanted,
        wait: Duration,
    ) -> String {
        let origin = path_segment(origin.as_str());
        let wait = wait.as_millis();
        match wanted {
            Wanted::Download => format!(
                "/_matrix/media/v3/download/{origin}/{media_id}\
                 ?allow_remote=false&allow_redirect=false&timeout_ms={wait}"
            ),
            Wanted::Thumbnail(thumbnail) => format!(
                "/_matrix/media/v3/thumbnail/{origin}/{media_id}?width={}&height={}&method={}\
                 &animated={}&allow_remote=false&allow_redirect=false&timeout_ms={wait}",
                thumbnail.width,
                thumbnail.height,
                thumbnail.method.as_str(),
                thumbnail.animated,
            ),
        }
    }
}

impl Services {
    /// Makes sure a copy of another server's media is here, fetching and keeping it if need
    /// be. Returns the media itself when it was fetched but could not be kept (the cache quota
    /// is full); `None` when the copy here is to be served.
    pub(crate) async fn cache_remote_media(
        &self,
        origin: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<Option<MediaDownload>> {
        let _guard = self.media.remote_lock(origin, media_id).lock().await;
        if self
            .store
            .get_media(origin, media_id)
            .await?
            .is_some_and(|record| record.content.is_some())
        {
            return Ok(None);
        }
        let max_bytes = self.config.media.max_upload_bytes;
        let fetched = self.fetch_remote_media(origin, media_id, timeout, max_bytes).await?;
        let now = now_millis();
        let quota = self.config.media.remote_cache_quota_bytes;
        let size = fetched.bytes.len() as u64;
        let content_type = clean_content_type(fetched.content_type.as_deref());
        let filename = clean_filename(fetched.filename.as_deref());
        let owner = self.remote_media_owner()?;
        let record = |sha256: String| MediaRecord {
            origin: origin.to_owned(),
            media_id: media_id.to_owned(),
            uploader: owner.clone(),
            created_ts: now,
            last_access_ts: now,
            content: Some(MediaContent {
                content_type: content_type.clone(),
                filename: filename.clone(),
                size,
                sha256,
                uploaded_ts: now,
            }),
            expires_ts: None,
            counts_toward_quota: quota > 0,
        };
        let bytes = std::sync::Arc::new(fetched.bytes);
        let outcome = self
            .store_content(bytes.clone(), async |sha256| {
                self.store.insert_media(&record(sha256), (quota > 0).then_some(quota)).await
            })
            .await?;
        match outcome {
            MediaInsert::Stored | MediaInsert::Exists => Ok(None),
            MediaInsert::QuotaExceeded => {
                tracing::debug!("the remote media cache is full: passing media on uncached");
                let bytes =
                    std::sync::Arc::try_unwrap(bytes).unwrap_or_else(|shared| (*shared).clone());
                Ok(Some(MediaDownload { content_type, filename, body: MediaBody::Bytes(bytes) }))
            }
        }
    }

    /// A thumbnail of another server's media this server holds no copy of, asked of that
    /// server (not kept).
    pub(crate) async fn remote_thumbnail(
        &self,
        origin: &ServerName,
        media_id: &str,
        request: ThumbnailRequest,
        timeout: Duration,
    ) -> Result<MediaDownload> {
        let max_bytes = self.config.media.max_upload_bytes.min(MAX_THUMBNAIL_BYTES);
        let fetched =
            self.fetch_remote_thumbnail(origin, media_id, request, timeout, max_bytes).await?;
        Ok(MediaDownload {
            content_type: clean_content_type(fetched.content_type.as_deref()),
            filename: None,
            body: MediaBody::Bytes(fetched.bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_and_server_names_are_safe_in_paths() {
        assert!(valid_media_id("abcXYZ_09-"));
        for bad in ["", "a/b", "..", "a b", "é", &"a".repeat(256)] {
            assert!(!valid_media_id(bad), "{bad}");
        }
        assert_eq!(path_segment("[::1]:8448"), "%5B::1%5D:8448");
        assert_eq!(path_segment("example.org:8448"), "example.org:8448");
    }

    #[test]
    fn the_cache_account_is_a_valid_user_no_one_can_register() {
        let server = ruma::server_name!("example.org");
        assert!(UserId::parse_with_server_name(REMOTE_MEDIA_OWNER, server).is_ok());
        assert!(REMOTE_MEDIA_OWNER.bytes().any(|byte| byte.is_ascii_uppercase()));
    }

    #[test]
    fn only_unknown_endpoints_fall_back_to_the_legacy_path() {
        let remote = |status: u16, kind: Option<MatrixErrorKind>| FederationError::Remote {
            status: StatusCode::from_u16(status).unwrap(),
            kind,
            message: None,
        };
        assert!(unrecognized(&remote(404, Some(MatrixErrorKind::Unrecognized))));
        assert!(unrecognized(&remote(404, None)));
        assert!(unrecognized(&remote(405, None)));
        assert!(unrecognized(&remote(400, Some(MatrixErrorKind::Unrecognized))));
        assert!(!unrecognized(&remote(404, Some(MatrixErrorKind::NotFound))));
        assert!(!unrecognized(&remote(403, Some(MatrixErrorKind::Forbidden))));
        assert!(!unrecognized(&FederationError::Timeout));
    }

    #[test]
    fn failed_fetches_become_clear_errors() {
        let error = fetch_error(FederationError::ResponseTooLarge { limit: 10 }, 10);
        assert_eq!(error.matrix_kind(), Some(&MatrixErrorKind::TooLarge));
        let error = fetch_error(
            FederationError::Remote {
                status: StatusCode::NOT_FOUND,
                kind: Some(MatrixErrorKind::NotFound),
                message: None,
            },
            10,
        );
        assert_eq!(error.matrix_kind(), Some(&MatrixErrorKind::NotFound));
        let error = fetch_error(FederationError::Timeout, 10);
        assert_eq!(error.matrix_kind(), Some(&MatrixErrorKind::NotFound));
        assert!(error.message().contains("could not be reached"));
        let error =
            fetch_error(FederationError::Malformed(FederationError::message_cause("x")), 10);
        assert_eq!(error.matrix_kind(), Some(&MatrixErrorKind::Unknown));
    }
}
