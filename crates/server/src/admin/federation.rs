//! Federation administration: the signing key's rotation (`admin key rotate`), the
//! destinations this server sends to with their state (`admin federation destinations`), and
//! ending a destination's backoff (`admin federation retry`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use rhizome_core::clock::now_millis;
use rhizome_room::SigningKey;
use rhizome_service::Services;
use ruma::OwnedServerName;

use super::format_ts;

/// Replaces the server's signing key with a new one. The old key is published as an old
/// verify key from now on, so what it signed stays verifiable. Needs the server stopped (it
/// holds the key in memory). Returns the new key ID.
pub async fn rotate_key(services: &Services, data_dir: &Path) -> Result<String> {
    let old = &services.signing_key;
    services
        .store
        .add_local_old_key(&old.key_id(), &old.public_key_base64(), now_millis())
        .await
        .context("recording the old key")?;
    let (new, text) = SigningKey::generate_with_file_text();
    let path = data_dir.join("signing.key");
    let temporary = data_dir.join("signing.key.new");
    write_private(&temporary, &text)?;
    std::fs::rename(&temporary, &path).with_context(|| format!("replacing {}", path.display()))?;
    tracing::info!(old = %old.key_id(), new = %new.key_id(), "rotated the server signing key");
    Ok(format!(
        "new signing key {} (the old key {} stays published as old)",
        new.key_id(),
        old.key_id()
    ))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("creating {}", path.display()))
}

/// Every destination: name, last success, failures in a row, backoff, queue lengths.
pub async fn destinations(services: &Services) -> Result<Vec<String>> {
    let now = now_millis();
    let records = services.store.list_destinations().await?;
    let mut lines = vec![
        "destination\tlast success\tfailures\tbackoff until\tqueued PDUs\tqueued EDUs".to_owned(),
    ];
    for record in records {
        let success = record.last_success_ts.map_or_else(|| "never".to_owned(), format_ts);
        let backoff =
            if record.retry_at > now { format_ts(record.retry_at) } else { "-".to_owned() };
        lines.push(format!(
            "{}\t{success}\t{}\t{backoff}\t{}\t{}",
            record.destination, record.failures, record.queued_pdus, record.queued_edus
        ));
    }
    Ok(lines)
}

/// Ends a destination's backoff; a running server tries it again within a minute.
pub async fn retry(services: &Services, destination: &str) -> Result<String> {
    let destination = OwnedServerName::try_from(destination)
        .map_err(|_| anyhow::anyhow!("`{destination}` is not a server name"))?;
    if services.store.get_destination(&destination).await?.is_none() {
        bail!("this server has never sent anything to {destination}");
    }
    services.store.reset_destination_backoff(&destination).await?;
    Ok(format!("{destination} will be tried again within a minute"))
}
