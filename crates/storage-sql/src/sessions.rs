//! Client sessions kept between requests (user-interactive authentication, sliding sync).

use async_trait::async_trait;
use rhizome_core::Result;
use rhizome_storage::SessionStore;

use crate::{SqlStore, db_error};

#[async_trait]
impl SessionStore for SqlStore {
    async fn save_client_session(
        &self,
        kind: &str,
        session_id: &str,
        data: &str,
        expires_ts: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO client_sessions (kind, session_id, data, expires_ts) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (kind, session_id) \
             DO UPDATE SET data = excluded.data, expires_ts = excluded.expires_ts",
        )
        .bind(kind)
        .bind(session_id)
        .bind(data)
        .bind(expires_ts)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn get_client_session(
        &self,
        kind: &str,
        session_id: &str,
        now: i64,
    ) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT data FROM client_sessions \
             WHERE kind = $1 AND session_id = $2 AND expires_ts > $3",
        )
        .bind(kind)
        .bind(session_id)
        .bind(now)
        .fetch_optional(&self.write)
        .await
        .map_err(db_error)
    }

    async fn delete_client_session(&self, kind: &str, session_id: &str) -> Result<bool> {
        let result = sqlx::query("DELETE FROM client_sessions WHERE kind = $1 AND session_id = $2")
            .bind(kind)
            .bind(session_id)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }

    async fn delete_client_sessions_with_prefix(
        &self,
        kind: &str,
        prefix: &str,
        keep: Option<&str>,
    ) -> Result<u64> {
        // `substr`, not `LIKE`: IDs may hold `_` and `%`.
        let result = sqlx::query(
            "DELETE FROM client_sessions WHERE kind = $1 \
             AND substr(session_id, 1, length($2)) = $2 AND session_id <> $3",
        )
        .bind(kind)
        .bind(prefix)
        .bind(keep.unwrap_or_default())
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(result.rows_affected())
    }

    async fn delete_expired_client_sessions(&self, now: i64) -> Result<u64> {
        let result = sqlx::query("DELETE FROM client_sessions WHERE expires_ts <= $1")
            .bind(now)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }
}
