//! `rhizome admin backup <dir>`: a copy of everything a server needs to start again, made
//! while it runs. The copy is laid out as a data directory (`rhizome.db`, `signing.key`,
//! `media/`), so restoring is starting Rhizome with the copy as its data directory.
//!
//! Media files are named by their content, so they are copied only when missing: backing up
//! into the same directory again copies only what is new. They are copied before and after the
//! database snapshot, so every file the snapshot refers to is in the copy.
//!
//! Media kept in an S3-compatible bucket (`media.s3.enabled`) is not copied: it stays in the
//! bucket, which is backed up (or versioned) with the object store's own tools, and the report
//! says so.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use rhizome_storage_sql::{Backend, SqlStore};

/// What one backup copied.
#[derive(Debug, Default)]
pub struct BackupReport {
    /// Media files copied (those already in the destination are left).
    pub media_files: u64,
    /// Their bytes.
    pub media_bytes: u64,
    /// Whether the database was copied (SQLite only).
    pub database: bool,
    /// The bucket media stays in, when it is in an object store (then no media is copied).
    pub media_bucket: Option<String>,
}

impl BackupReport {
    /// What to tell the organiser.
    pub fn lines(&self, destination: &Path) -> Vec<String> {
        let media = match &self.media_bucket {
            Some(_) => "no media (it is in the object store)".to_owned(),
            None => format!("{} new media files ({} bytes)", self.media_files, self.media_bytes),
        };
        let mut lines = vec![format!(
            "backed up to {}: signing key, {media}{}",
            destination.display(),
            if self.database { ", database" } else { "" }
        )];
        if let Some(bucket) = &self.media_bucket {
            lines.push(format!(
                "media stays in the S3 bucket {bucket} (media.s3): back the bucket up with the \
                 object store's tools (this copy does not hold it)"
            ));
        }
        if !self.database {
            lines.push(
                "the database is PostgreSQL: back it up with pg_dump (it is not in this copy)"
                    .to_owned(),
            );
        }
        lines
    }
}

/// Copies the signing key, the media (unless it is in a bucket, named by `media_bucket`) and
/// (on SQLite) the database of `data_dir` into `destination`.
pub async fn backup(
    store: &SqlStore,
    data_dir: &Path,
    media_bucket: Option<&str>,
    destination: &Path,
) -> Result<BackupReport> {
    let data_dir = fs::canonicalize(data_dir)
        .with_context(|| format!("reading the data directory {}", data_dir.display()))?;
    fs::create_dir_all(destination)
        .with_context(|| format!("creating {}", destination.display()))?;
    let destination = fs::canonicalize(destination)?;
    if destination == data_dir || destination.starts_with(&data_dir) {
        bail!("the backup must go outside the data directory");
    }
    let mut report =
        BackupReport { media_bucket: media_bucket.map(str::to_owned), ..BackupReport::default() };
    let copies_media = media_bucket.is_none();

    copy_file(&data_dir.join("signing.key"), &destination.join("signing.key"))?;
    if copies_media {
        copy_media(&data_dir.join("media"), &destination.join("media"), &mut report)?;
    }
    if store.backend() == Backend::Sqlite {
        let partial = destination.join("rhizome.db.partial");
        if partial.exists() {
            fs::remove_file(&partial)?;
        }
        store.backup_into(&partial).await.context("copying the database")?;
        fs::rename(&partial, destination.join("rhizome.db"))?;
        report.database = true;
    }
    if copies_media {
        // Media uploaded while the database was copied.
        copy_media(&data_dir.join("media"), &destination.join("media"), &mut report)?;
    }
    Ok(report)
}

/// Copies a file through a temporary name, keeping its permissions (the key is private).
fn copy_file(from: &Path, to: &Path) -> Result<u64> {
    let partial = partial_name(to);
    let bytes = fs::copy(from, &partial)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::rename(&partial, to)?;
    Ok(bytes)
}

fn partial_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Copies the media files missing from `to` (the temporary upload directory left out).
fn copy_media(from: &Path, to: &Path, report: &mut BackupReport) -> Result<()> {
    let Ok(entries) = fs::read_dir(from) else { return Ok(()) };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let source = entry.path();
        let target = to.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name == "tmp" {
                continue;
            }
            fs::create_dir_all(&target)?;
            copy_media(&source, &target, report)?;
        } else if kind.is_file() {
            let size = entry.metadata()?.len();
            if target.metadata().is_ok_and(|existing| existing.len() == size) {
                continue;
            }
            report.media_bytes += copy_file(&source, &target)?;
            report.media_files += 1;
        }
    }
    Ok(())
}
