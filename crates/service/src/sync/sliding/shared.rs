//! Sliding sync connections when several processes share the database: a client's requests
//! may reach any of them, so each version of a connection's state is kept in the store (as a
//! client session of kind `sliding`) instead of in memory, under a random version number (two
//! processes never hand out the same one). Resuming a version deletes the connection's other
//! versions, as the in-memory connections do; unused ones expire after
//! [`CONNECTION_LIFETIME_MS`].

use std::sync::Arc;

use rand::Rng;
use rhizome_core::{Error, Result, clock::now_millis};

use super::connection::{ConnState, DeviceKey};
use crate::Services;

/// The kind of client session connections are kept as.
const KIND: &str = "sliding";

/// How long an unused version of a connection is kept.
const CONNECTION_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;

/// The prefix of every version of one connection: user, device, and the `conn_id` after its
/// length (so no connection's prefix is also another's).
fn prefix(device: &DeviceKey, conn_id: &str) -> String {
    format!("{}|{}|{}|", device.0, device.1, conn_id.len()) + conn_id + "|"
}

impl Services {
    /// Starts a connection afresh, forgetting its earlier state.
    pub(super) async fn start_connection(
        &self,
        device: &DeviceKey,
        conn_id: &str,
    ) -> Result<Arc<ConnState>> {
        if !self.store.shared_by_processes() {
            return Ok(self.sliding.connections.start(device, conn_id));
        }
        let prefix = prefix(device, conn_id);
        self.store.delete_client_sessions_with_prefix(KIND, &prefix, None).await?;
        self.store.delete_expired_client_sessions(now_millis()).await?;
        Ok(Arc::new(ConnState::default()))
    }

    /// The state of `version` of a connection (dropping its other versions), if known.
    pub(super) async fn resume_connection(
        &self,
        device: &DeviceKey,
        conn_id: &str,
        version: u64,
    ) -> Result<Option<Arc<ConnState>>> {
        if !self.store.shared_by_processes() {
            return Ok(self.sliding.connections.resume(device, conn_id, version));
        }
        let prefix = prefix(device, conn_id);
        let id = format!("{prefix}{version}");
        let Some(data) = self.store.get_client_session(KIND, &id, now_millis()).await? else {
            return Ok(None);
        };
        let Ok(state) = serde_json::from_str::<ConnState>(&data) else {
            // Written by another version of Rhizome: the client starts again.
            return Ok(None);
        };
        self.store.delete_client_sessions_with_prefix(KIND, &prefix, Some(&id)).await?;
        Ok(Some(Arc::new(state)))
    }

    /// Records a new version of a connection's state and returns its number.
    pub(super) async fn record_connection(
        &self,
        device: &DeviceKey,
        conn_id: &str,
        state: ConnState,
    ) -> Result<u64> {
        if !self.store.shared_by_processes() {
            return Ok(self.sliding.connections.record(device, conn_id, state));
        }
        // Below 2^53, so the number survives clients that read it as a JSON number.
        let version = rand::thread_rng().gen_range(1..(1_u64 << 53));
        let id = format!("{}{version}", prefix(device, conn_id));
        let data = serde_json::to_string(&state).map_err(Error::internal)?;
        let expires_ts = now_millis().saturating_add(CONNECTION_LIFETIME_MS);
        self.store.save_client_session(KIND, &id, &data, expires_ts).await?;
        Ok(version)
    }
}
