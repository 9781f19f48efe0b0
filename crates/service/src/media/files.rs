//! Media bytes in the data directory (the default [`BlobStore`](super::blobs::BlobStore)): one file per distinct content under `<data_dir>/media/`, named by its
//! SHA-256 (`ab/cd/abcd…`), so identical uploads are stored once. Files are written to a
//! temporary name and renamed into place, so a reader never sees a partial file.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use rhizome_core::{Error, Result};
use sha2::{Digest, Sha256};

/// The media directory.
#[derive(Clone, Debug)]
pub(crate) struct FileStore {
    root: PathBuf,
}

/// Whether a string is a SHA-256 in lowercase hex (so it is safe as a file name).
pub(crate) fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// The SHA-256 of some bytes, in lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

fn io_error(error: std::io::Error) -> Error {
    Error::internal(error)
}

impl FileStore {
    /// The store under `<data_dir>/media`.
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self { root: data_dir.join("media") }
    }

    /// Where the content with this hash lives.
    pub(crate) fn path(&self, sha256: &str) -> Result<PathBuf> {
        if !is_sha256_hex(sha256) {
            return Err(Error::bug("a media content hash is malformed"));
        }
        Ok(self.root.join(&sha256[0..2]).join(&sha256[2..4]).join(sha256))
    }

    /// Writes content under its hash unless a file of that size is there already. Call with
    /// the hash's content lock held.
    pub(crate) async fn write(&self, sha256: &str, bytes: std::sync::Arc<Vec<u8>>) -> Result<()> {
        let path = self.path(sha256)?;
        let temp_dir = self.root.join("tmp");
        tokio::task::spawn_blocking(move || write_file(&path, &temp_dir, &bytes))
            .await
            .map_err(Error::internal)?
    }

    /// Opens the content with this hash, with its length; `None` when the file is missing.
    pub(crate) async fn open(&self, sha256: &str) -> Result<Option<(tokio::fs::File, u64)>> {
        let path = self.path(sha256)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let size = file.metadata().await.map_err(io_error)?.len();
                Ok(Some((file, size)))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(error)),
        }
    }

    /// Removes the content with this hash (a missing file is fine). Call with the hash's
    /// content lock held, after checking nothing refers to it.
    pub(crate) async fn remove(&self, sha256: &str) -> Result<bool> {
        let path = self.path(sha256)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(io_error(error)),
        }
    }
}

fn write_file(path: &Path, temp_dir: &Path, bytes: &[u8]) -> Result<()> {
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.len() == bytes.len() as u64
    {
        return Ok(());
    }
    let parent = path.parent().ok_or_else(|| Error::bug("a media path has no parent"))?;
    std::fs::create_dir_all(parent).map_err(io_error)?;
    std::fs::create_dir_all(temp_dir).map_err(io_error)?;
    let mut temp = tempfile::NamedTempFile::new_in(temp_dir).map_err(io_error)?;
    temp.write_all(bytes).map_err(io_error)?;
    temp.as_file().sync_all().map_err(io_error)?;
    temp.persist(path).map_err(|error| io_error(error.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn content_is_written_once_opened_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let bytes = b"hello media".to_vec();
        let hash = sha256_hex(&bytes);
        assert_eq!(hash.len(), 64);
        store.write(&hash, std::sync::Arc::new(bytes.clone())).await.unwrap();
        store.write(&hash, std::sync::Arc::new(bytes.clone())).await.unwrap();
        let path = store.path(&hash).unwrap();
        assert!(path.starts_with(dir.path().join("media").join(&hash[0..2]).join(&hash[2..4])));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let (_, size) = store.open(&hash).await.unwrap().unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert!(store.remove(&hash).await.unwrap());
        assert!(!store.remove(&hash).await.unwrap());
        assert!(store.open(&hash).await.unwrap().is_none());
        assert!(store.path("../etc/passwd").is_err());
        assert!(store.path(&hash.to_uppercase()).is_err());
    }
}
