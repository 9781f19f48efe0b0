//! Where media bytes live: the data directory ([`FileStore`], the default) or an S3-compatible
//! object store shared by every process of a deployment. Either way content is addressed by its
//! SHA-256 (`ab/cd/abcd…`, under the S3 store's prefix), so identical uploads are stored once.

use std::{path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::{
    BackoffConfig, ClientOptions, ObjectStoreExt, PutPayload, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder},
    path::Path as ObjectPath,
};
use rhizome_core::{Config, Error, Result, config::S3Config};
use tokio::io::AsyncWriteExt;

use super::files::{FileStore, is_sha256_hex};

/// The bytes of a stored blob, streamed in chunks.
pub type MediaStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// How long a metadata request (look-up, removal, start of a download) to the object store may
/// take, retries included, before it fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one transfer to or from the object store may take (a large upload or a download
/// read by a slow client).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// The media blob store.
#[derive(Clone, Debug)]
pub(crate) enum BlobStore {
    /// Files under `<data_dir>/media/`.
    Local(FileStore),
    /// Objects in an S3-compatible bucket.
    S3(S3Store),
    /// A store that could not be set up (the server checks this at start-up, see
    /// [`check_store`](super::check_store)): every operation fails with this reason.
    Unusable(Arc<str>),
}

/// A blob's bytes as a local file, for decoders that need to seek: the local store's own file,
/// or a temporary copy of an object (removed when dropped).
pub(crate) enum LocalBlob {
    /// A file of the local store.
    Stored(PathBuf),
    /// A temporary copy.
    Copy(tempfile::TempPath),
}

impl LocalBlob {
    /// The file's path.
    pub(crate) fn path(&self) -> &std::path::Path {
        match self {
            Self::Stored(path) => path,
            Self::Copy(path) => path,
        }
    }
}

impl BlobStore {
    /// The store the configuration asks for; fails when the S3 secret cannot be read or the
    /// store's settings are refused.
    pub(crate) fn from_config(config: &Config) -> Result<Self> {
        if config.media.s3.enabled {
            Ok(Self::S3(S3Store::new(&config.media.s3)?))
        } else {
            Ok(Self::Local(FileStore::new(&config.data_dir)))
        }
    }

    /// The store the configuration asks for, or an unusable one that names the failure.
    pub(crate) fn from_config_or_unusable(config: &Config) -> Self {
        Self::from_config(config).unwrap_or_else(|error| {
            let reason = format!("the media store is not set up: {error:?}");
            Self::Unusable(Arc::from(reason))
        })
    }

    fn unusable(reason: &str) -> Error {
        Error::internal(reason.to_owned())
    }

    /// Writes content under its hash unless it is there already. Call with the hash's content
    /// lock held.
    pub(crate) async fn write(&self, sha256: &str, bytes: Arc<Vec<u8>>) -> Result<()> {
        match self {
            Self::Local(files) => files.write(sha256, bytes).await,
            Self::S3(s3) => s3.write(sha256, bytes).await,
            Self::Unusable(reason) => Err(Self::unusable(reason)),
        }
    }

    /// The content with this hash as a stream, with its length; `None` when it is missing.
    pub(crate) async fn open(&self, sha256: &str) -> Result<Option<(MediaStream, u64)>> {
        match self {
            Self::Local(files) => Ok(files
                .open(sha256)
                .await?
                .map(|(file, size)| (Box::pin(file_stream(file)) as MediaStream, size))),
            Self::S3(s3) => s3.open(sha256).await,
            Self::Unusable(reason) => Err(Self::unusable(reason)),
        }
    }

    /// The content with this hash as a local file; `None` when it is missing.
    pub(crate) async fn local(&self, sha256: &str) -> Result<Option<LocalBlob>> {
        match self {
            Self::Local(files) => {
                let path = files.path(sha256)?;
                Ok(tokio::fs::try_exists(&path)
                    .await
                    .map_err(Error::internal)?
                    .then_some(LocalBlob::Stored(path)))
            }
            Self::S3(s3) => s3.local_copy(sha256).await,
            Self::Unusable(reason) => Err(Self::unusable(reason)),
        }
    }

    /// Removes the content with this hash; `false` when it was not there. Call with the hash's
    /// content lock held, after checking nothing refers to it.
    pub(crate) async fn remove(&self, sha256: &str) -> Result<bool> {
        match self {
            Self::Local(files) => files.remove(sha256).await,
            Self::S3(s3) => s3.remove(sha256).await,
            Self::Unusable(reason) => Err(Self::unusable(reason)),
        }
    }
}

/// A file in 64 KiB chunks.
pub(crate) fn file_stream(
    file: tokio::fs::File,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    use tokio::io::AsyncReadExt;
    futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; 64 * 1024];
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buffer.truncate(read);
        Ok(Some((Bytes::from(buffer), file)))
    })
}

/// Media in an S3-compatible bucket.
#[derive(Clone)]
pub(crate) struct S3Store {
    store: Arc<AmazonS3>,
    prefix: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// The object store's failure, without credentials (its messages name the bucket and key
/// at most).
fn store_error(error: object_store::Error) -> Error {
    Error::internal(format!("the media object store failed: {error}"))
}

fn store_timeout(_: tokio::time::error::Elapsed) -> Error {
    Error::internal("the media object store did not answer in time")
}

impl S3Store {
    /// A client for the configured bucket (no request is made yet).
    pub(crate) fn new(config: &S3Config) -> Result<Self> {
        let secret = match (&config.secret_access_key, &config.secret_access_key_file) {
            (Some(secret), _) => secret.trim().to_owned(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|error| {
                    Error::internal(format!(
                        "reading media.s3.secret_access_key_file {}: {error}",
                        file.display()
                    ))
                })?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(Error::internal("media.s3 has no secret access key"));
            }
        };
        if secret.is_empty() {
            return Err(Error::internal("media.s3's secret access key is empty"));
        }
        let options = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(TRANSFER_TIMEOUT);
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: REQUEST_TIMEOUT,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(config.bucket.trim())
            .with_region(config.region.trim())
            .with_access_key_id(config.access_key_id.trim())
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_allow_http(config.allow_http)
            .with_client_options(options)
            .with_retry(retry);
        if !config.endpoint.is_empty() {
            builder = builder.with_endpoint(config.endpoint.trim_end_matches('/'));
        }
        let store = builder.build().map_err(|error| {
            Error::internal(format!("media.s3 is not a usable object store: {error}"))
        })?;
        let prefix = config.prefix.trim_matches('/').to_owned();
        Ok(Self { store: Arc::new(store), prefix })
    }

    /// The object key of the content with this hash.
    fn key(&self, sha256: &str) -> Result<ObjectPath> {
        if !is_sha256_hex(sha256) {
            return Err(Error::bug("a media content hash is malformed"));
        }
        let relative = format!("{}/{}/{sha256}", &sha256[0..2], &sha256[2..4]);
        let key =
            if self.prefix.is_empty() { relative } else { format!("{}/{relative}", self.prefix) };
        ObjectPath::parse(key).map_err(|_| Error::bug("a media object key is malformed"))
    }

    /// The size of the object, or `None` when it is missing.
    async fn size(&self, key: &ObjectPath) -> Result<Option<u64>> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.store.head(key))
            .await
            .map_err(store_timeout)?
        {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(store_error(error)),
        }
    }

    async fn write(&self, sha256: &str, bytes: Arc<Vec<u8>>) -> Result<()> {
        let key = self.key(sha256)?;
        if self.size(&key).await? == Some(bytes.len() as u64) {
            return Ok(());
        }
        let payload = PutPayload::from(Bytes::from_owner(ArcBytes(bytes)));
        self.store.put(&key, payload).await.map_err(store_error)?;
        Ok(())
    }

    async fn open(&self, sha256: &str) -> Result<Option<(MediaStream, u64)>> {
        let key = self.key(sha256)?;
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, self.store.get(&key))
            .await
            .map_err(store_timeout)?
        {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(store_error(error)),
        };
        let size = result.meta.size;
        let stream = result.into_stream().map_err(|error| {
            tracing::warn!(%error, "reading media from the object store failed");
            std::io::Error::other("the media object store failed")
        });
        Ok(Some((Box::pin(stream), size)))
    }

    async fn local_copy(&self, sha256: &str) -> Result<Option<LocalBlob>> {
        let Some((mut stream, _)) = self.open(sha256).await? else { return Ok(None) };
        let temp = tempfile::NamedTempFile::new().map_err(Error::internal)?;
        let (file, path) = temp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.map_err(Error::internal)?).await.map_err(Error::internal)?;
        }
        file.flush().await.map_err(Error::internal)?;
        Ok(Some(LocalBlob::Copy(path)))
    }

    async fn remove(&self, sha256: &str) -> Result<bool> {
        let key = self.key(sha256)?;
        if self.size(&key).await?.is_none() {
            return Ok(false);
        }
        tokio::time::timeout(REQUEST_TIMEOUT, self.store.delete(&key))
            .await
            .map_err(store_timeout)?
            .map_err(store_error)?;
        Ok(true)
    }
}

/// Shared bytes handed to the object store without a copy.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_config() -> S3Config {
        S3Config {
            enabled: true,
            endpoint: "http://127.0.0.1:9".to_owned(),
            bucket: "media".to_owned(),
            access_key_id: "AKID".to_owned(),
            secret_access_key: Some("secret".to_owned()),
            prefix: "/rhizome/".to_owned(),
            path_style: true,
            allow_http: true,
            ..S3Config::default()
        }
    }

    #[test]
    fn object_keys_are_content_addressed_under_the_prefix() {
        let store = S3Store::new(&s3_config()).unwrap();
        let hash = "ab".repeat(32);
        assert_eq!(store.key(&hash).unwrap().as_ref(), format!("rhizome/ab/ab/{hash}"));
        assert!(store.key("../../etc").is_err());
        assert!(!format!("{store:?}").contains("secret"));
        let mut unprefixed = s3_config();
        unprefixed.prefix = String::new();
        let store = S3Store::new(&unprefixed).unwrap();
        assert_eq!(store.key(&hash).unwrap().as_ref(), format!("ab/ab/{hash}"));
    }

    #[test]
    fn a_missing_or_empty_secret_is_refused() {
        let mut config = s3_config();
        config.secret_access_key = None;
        assert!(S3Store::new(&config).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "  \n").unwrap();
        config.secret_access_key_file = Some(file.clone());
        assert!(S3Store::new(&config).is_err());
        std::fs::write(&file, "from-file\n").unwrap();
        assert!(S3Store::new(&config).is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_store_fails_quickly_and_cleanly() {
        let store = S3Store::new(&s3_config()).unwrap();
        let hash = "cd".repeat(32);
        let started = std::time::Instant::now();
        assert!(store.open(&hash).await.is_err());
        assert!(store.write(&hash, Arc::new(b"x".to_vec())).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    }
}
