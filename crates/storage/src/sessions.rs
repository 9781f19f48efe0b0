//! What a server keeps for a client between two requests, which may reach different processes
//! sharing the database: user-interactive authentication sessions, sliding sync connections.
//! Each is a small document the service encodes, kept until it expires.

use async_trait::async_trait;
use rhizome_core::Result;

/// Client sessions kept between requests.
#[async_trait]
pub trait SessionStore {
    /// Creates or replaces a session of a kind (`uia`, `sliding`, …), kept until
    /// `expires_ts` (ms since the epoch).
    async fn save_client_session(
        &self,
        kind: &str,
        session_id: &str,
        data: &str,
        expires_ts: i64,
    ) -> Result<()>;

    /// A session that has not expired at `now`.
    async fn get_client_session(
        &self,
        kind: &str,
        session_id: &str,
        now: i64,
    ) -> Result<Option<String>>;

    /// Deletes a session; `false` if there was none.
    async fn delete_client_session(&self, kind: &str, session_id: &str) -> Result<bool>;

    /// Deletes the sessions of a kind whose ID starts with `prefix`, except `keep`; how many.
    async fn delete_client_sessions_with_prefix(
        &self,
        kind: &str,
        prefix: &str,
        keep: Option<&str>,
    ) -> Result<u64>;

    /// Deletes every session expired at `now`; how many.
    async fn delete_expired_client_sessions(&self, now: i64) -> Result<u64>;
}
