//! Thumbnails of stored media: made once per size, method and animation, then served from the
//! cache. The configured sizes are made right after an image is uploaded; other sizes are made
//! when asked for, up to a number per media item, past which the nearest configured size is
//! served instead (so clients cannot fill the disk with thumbnails).
//!
//! Decoding runs on blocking threads, a few at a time, within the configured pixel and memory
//! limits: a hostile image costs at most one bounded decode, and a damaged or oversized one is
//! remembered so it is not decoded again.

use std::{fs::File, io::BufReader, sync::Arc, time::Duration};

use rhizome_core::{
    Error, Result, clock::now_millis, config::ThumbnailSize, error::MatrixErrorKind,
};
use rhizome_storage::media::{ThumbnailKey, ThumbnailRecord};
use ruma::ServerName;

use super::{
    MediaAccess, MediaBody, MediaDownload, ThumbnailFailure,
    imaging::{self, DecodeLimits, Thumbnail, ThumbnailError, ThumbnailMethod, ThumbnailSpec},
};
use crate::Services;

/// A thumbnail a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThumbnailRequest {
    /// The desired width.
    pub width: u32,
    /// The desired height.
    pub height: u32,
    /// How to fit the image.
    pub method: ThumbnailMethod,
    /// Whether an animated thumbnail is wanted (given when the image is animated).
    pub animated: bool,
}

fn parse_method(method: &str) -> ThumbnailMethod {
    if method == ThumbnailMethod::Crop.as_str() {
        ThumbnailMethod::Crop
    } else {
        ThumbnailMethod::Scale
    }
}

fn spec_of(key: &ThumbnailKey) -> ThumbnailSpec {
    ThumbnailSpec { width: key.width, height: key.height, method: parse_method(&key.method) }
}

fn failure_error(failure: ThumbnailFailure) -> Error {
    match failure {
        ThumbnailFailure::NotAnImage => {
            Error::not_found("No thumbnail can be made of this media: it is not a readable image")
        }
        ThumbnailFailure::TooLarge => {
            Error::matrix(MatrixErrorKind::TooLarge, "The image is too large to thumbnail")
        }
    }
}

impl Services {
    fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_pixels: self.config.media.max_image_pixels,
            max_alloc: self.config.media.max_decode_bytes,
        }
    }

    fn is_configured_size(&self, key: &ThumbnailKey) -> bool {
        self.config.media.thumbnail_sizes.iter().any(|size| {
            size.width == key.width
                && size.height == key.height
                && size.method.as_str() == key.method
        })
    }

    /// The configured size to serve instead of `key`: the smallest of the same method that
    /// covers it, else the largest of that method (or of any method).
    fn nearest_configured_size(&self, key: &ThumbnailKey) -> Option<ThumbnailKey> {
        let sizes = &self.config.media.thumbnail_sizes;
        let same_method: Vec<&ThumbnailSize> =
            sizes.iter().filter(|size| size.method.as_str() == key.method).collect();
        let candidates: Vec<&ThumbnailSize> =
            if same_method.is_empty() { sizes.iter().collect() } else { same_method };
        let area = |size: &&ThumbnailSize| u64::from(size.width) * u64::from(size.height);
        let chosen = candidates
            .iter()
            .copied()
            .filter(|size| size.width >= key.width && size.height >= key.height)
            .min_by_key(area)
            .or_else(|| candidates.iter().copied().max_by_key(area))?;
        Some(ThumbnailKey {
            width: chosen.width,
            height: chosen.height,
            method: chosen.method.as_str().to_owned(),
            animated: key.animated,
        })
    }

    fn known_failure(&self, server_name: &ServerName, media_id: &str) -> Option<ThumbnailFailure> {
        self.media
            .unthumbnailable
            .lock()
            .get(&(server_name.to_string(), media_id.to_owned()))
            .copied()
    }

    fn remember_failure(&self, server_name: &ServerName, media_id: &str, error: &ThumbnailError) {
        let failure = match error {
            ThumbnailError::TooLarge => ThumbnailFailure::TooLarge,
            ThumbnailError::NotAnImage | ThumbnailError::Corrupt(_) => ThumbnailFailure::NotAnImage,
            ThumbnailError::Failed(_) => return,
        };
        self.media
            .unthumbnailable
            .lock()
            .put((server_name.to_string(), media_id.to_owned()), failure);
    }

    async fn cached_thumbnail(
        &self,
        server_name: &ServerName,
        media_id: &str,
        key: &ThumbnailKey,
    ) -> Result<Option<MediaDownload>> {
        let Some(record) = self.store.get_thumbnail(server_name, media_id, key).await? else {
            return Ok(None);
        };
        let Some((stream, size)) = self.media.files.open(&record.sha256).await? else {
            return Ok(None);
        };
        Ok(Some(MediaDownload {
            content_type: Some(record.content_type),
            filename: None,
            body: MediaBody::Stream { stream, size },
        }))
    }

    /// Makes thumbnails from the content with this hash, on a blocking thread, holding a
    /// thumbnailing permit.
    async fn render_thumbnails(
        &self,
        sha256: &str,
        specs: Vec<ThumbnailSpec>,
        animated: bool,
    ) -> Result<Result<Vec<Thumbnail>, ThumbnailError>> {
        // The content as a local file (a temporary copy of an object, removed after use).
        let blob = self.media.files.local(sha256).await?.ok_or_else(|| {
            Error::internal("a media blob to make thumbnails from is missing from the media store")
        })?;
        let limits = self.decode_limits();
        let _permit = self.media.thumbnail_permits.acquire().await.map_err(Error::internal)?;
        // A panic inside a decoder ends this blocking task only: it becomes an internal error.
        tokio::task::spawn_blocking(move || {
            let path = blob.path();
            if animated && let Some(spec) = specs.first() {
                let file = BufReader::new(File::open(path)?);
                if let Some(thumbnail) = imaging::make_animated_thumbnail(file, *spec, limits)? {
                    return Ok(vec![thumbnail]);
                }
            }
            let file = BufReader::new(File::open(path)?);
            imaging::make_thumbnails(file, &specs, limits)
        })
        .await
        .map_err(Error::internal)
    }

    async fn save_thumbnail(
        &self,
        server_name: &ServerName,
        media_id: &str,
        key: &ThumbnailKey,
        thumbnail: &Thumbnail,
    ) -> Result<()> {
        let record = |sha256: String| ThumbnailRecord {
            origin: server_name.to_owned(),
            media_id: media_id.to_owned(),
            width: key.width,
            height: key.height,
            method: key.method.clone(),
            animated: key.animated,
            content_type: thumbnail.content_type.to_owned(),
            sha256,
            size: thumbnail.bytes.len() as u64,
            created_ts: now_millis(),
        };
        self.store_content(Arc::new(thumbnail.bytes.clone()), async |sha256| {
            self.store.insert_thumbnail(&record(sha256)).await
        })
        .await?;
        Ok(())
    }

    /// A thumbnail of a media item, made on first request from the copy here (of this server's
    /// media, or another's once downloaded), else asked of the media's server.
    pub async fn media_thumbnail(
        &self,
        server_name: &ServerName,
        media_id: &str,
        request: ThumbnailRequest,
        timeout: Duration,
        access: MediaAccess,
    ) -> Result<MediaDownload> {
        if request.width == 0 || request.height == 0 {
            return Err(Error::invalid_param("Thumbnail width and height must be positive"));
        }
        let largest = self.config.media.max_thumbnail_dimension.max(1);
        let mut key = ThumbnailKey {
            width: request.width.min(largest),
            height: request.height.min(largest),
            method: request.method.as_str().to_owned(),
            animated: request.animated,
        };
        if server_name != self.server_name()
            && access == MediaAccess::Authenticated
            && self
                .store
                .get_media(server_name, media_id)
                .await?
                .is_none_or(|m| m.content.is_none())
        {
            // No copy here: the other server makes the thumbnail.
            return self.remote_thumbnail(server_name, media_id, request, timeout).await;
        }
        let (_, content) = self.media_to_serve(server_name, media_id, timeout, access).await?;
        if let Some(failure) = self.known_failure(server_name, media_id) {
            return Err(failure_error(failure));
        }
        if let Some(found) = self.cached_thumbnail(server_name, media_id, &key).await? {
            return Ok(found);
        }
        let mut keep = true;
        if !self.is_configured_size(&key) {
            let existing = self.store.list_thumbnails(server_name, media_id).await?;
            let dynamic = existing
                .iter()
                .filter(|thumbnail| {
                    !self.is_configured_size(&ThumbnailKey {
                        width: thumbnail.width,
                        height: thumbnail.height,
                        method: thumbnail.method.clone(),
                        animated: thumbnail.animated,
                    })
                })
                .count();
            if dynamic
                >= usize::try_from(self.config.media.max_dynamic_thumbnails).unwrap_or(usize::MAX)
            {
                match self.nearest_configured_size(&key) {
                    Some(configured) => {
                        key = configured;
                        if let Some(found) =
                            self.cached_thumbnail(server_name, media_id, &key).await?
                        {
                            return Ok(found);
                        }
                    }
                    // No configured sizes to fall back to: make this one, but do not keep it.
                    None => keep = false,
                }
            }
        }

        let _guard = self.media.thumbnail_lock(server_name, media_id).lock().await;
        if let Some(found) = self.cached_thumbnail(server_name, media_id, &key).await? {
            return Ok(found);
        }
        let rendered =
            self.render_thumbnails(&content.sha256, vec![spec_of(&key)], key.animated).await?;
        let thumbnail = match rendered {
            Ok(mut thumbnails) if !thumbnails.is_empty() => thumbnails.swap_remove(0),
            Ok(_) => return Err(Error::bug("no thumbnail was made")),
            Err(ThumbnailError::Failed(message)) => return Err(Error::internal(message)),
            Err(error) => {
                self.remember_failure(server_name, media_id, &error);
                return Err(failure_error(match error {
                    ThumbnailError::TooLarge => ThumbnailFailure::TooLarge,
                    _ => ThumbnailFailure::NotAnImage,
                }));
            }
        };
        if keep {
            self.save_thumbnail(server_name, media_id, &key, &thumbnail).await?;
        }
        Ok(MediaDownload {
            content_type: Some(thumbnail.content_type.to_owned()),
            filename: None,
            body: MediaBody::Bytes(thumbnail.bytes),
        })
    }

    /// Starts making the configured thumbnail sizes of a newly uploaded image.
    pub(crate) fn spawn_configured_thumbnails(self: &Arc<Self>, media_id: String) {
        if self.config.media.thumbnail_sizes.is_empty() {
            return;
        }
        let services = self.clone();
        tokio::spawn(async move {
            if let Err(error) = services.make_configured_thumbnails(&media_id).await {
                tracing::warn!(%error, "could not make the configured thumbnails of an upload");
            }
        });
    }

    async fn make_configured_thumbnails(&self, media_id: &str) -> Result<()> {
        let origin = self.owned_server_name();
        let _guard = self.media.thumbnail_lock(&origin, media_id).lock().await;
        let Some(content) =
            self.store.get_media(&origin, media_id).await?.and_then(|record| record.content)
        else {
            return Ok(());
        };
        let existing = self.store.list_thumbnails(&origin, media_id).await?;
        let keys: Vec<ThumbnailKey> = self
            .config
            .media
            .thumbnail_sizes
            .iter()
            .map(|size| ThumbnailKey {
                width: size.width,
                height: size.height,
                method: size.method.as_str().to_owned(),
                animated: false,
            })
            .filter(|key| {
                !existing.iter().any(|thumbnail| {
                    thumbnail.width == key.width
                        && thumbnail.height == key.height
                        && thumbnail.method == key.method
                        && !thumbnail.animated
                })
            })
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let specs = keys.iter().map(spec_of).collect();
        match self.render_thumbnails(&content.sha256, specs, false).await? {
            Ok(thumbnails) => {
                for (key, thumbnail) in keys.iter().zip(&thumbnails) {
                    self.save_thumbnail(&origin, media_id, key, thumbnail).await?;
                }
            }
            Err(ThumbnailError::Failed(message)) => return Err(Error::internal(message)),
            Err(error) => self.remember_failure(&origin, media_id, &error),
        }
        Ok(())
    }
}
