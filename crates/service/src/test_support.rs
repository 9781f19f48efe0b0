//! Helpers for the crate's unit tests: the services over a real SQLite database.

use std::{path::Path, sync::Arc};

use rhizome_storage_sql::SqlStore;

use crate::Services;

/// The configuration of a test server, `example.org`, defaults otherwise.
pub(crate) fn config() -> rhizome_core::config::Config {
    rhizome_core::config::Config {
        server_name: ruma::owned_server_name!("example.org"),
        ..Default::default()
    }
}

/// Opens (or creates) the SQLite database in `dir`.
pub(crate) async fn sqlite_store(dir: &Path) -> Arc<SqlStore> {
    let url = format!("sqlite://{}", dir.join("db.sqlite").display());
    Arc::new(SqlStore::connect(&url, 2).await.expect("the test database opens"))
}

/// The services of a test server over `store`, with a new signing key.
pub(crate) fn services(store: Arc<SqlStore>) -> Arc<Services> {
    Services::new(config(), store, rhizome_room::SigningKey::generate())
}
