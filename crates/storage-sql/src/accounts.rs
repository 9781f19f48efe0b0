//! Accounts, devices, access tokens and registration tokens in SQL.

use async_trait::async_trait;
use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_storage::{
    AccessTokenRecord, AccountStore, DeviceRecord, DirectoryUser, NewAccessToken,
    RegistrationTokenRecord, UserRecord,
};
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, ServerName, UserId};
use sqlx::{AssertSqlSafe, Row, any::AnyRow};

use crate::{SqlStore, db_error, flag, is_unique_violation, parse_id};

fn user_from_row(row: &AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
        password_hash: row.try_get("password_hash").map_err(db_error)?,
        displayname: row.try_get("displayname").map_err(db_error)?,
        avatar_url: row
            .try_get::<Option<String>, _>("avatar_url")
            .map_err(db_error)?
            .map(Into::into),
        is_admin: row.try_get::<i64, _>("is_admin").map_err(db_error)? != 0,
        deactivated: row.try_get::<i64, _>("deactivated").map_err(db_error)? != 0,
        created_ts: row.try_get("created_ts").map_err(db_error)?,
    })
}

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord> {
    Ok(DeviceRecord {
        user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
        device_id: row.try_get::<String, _>("device_id").map_err(db_error)?.into(),
        display_name: row.try_get("display_name").map_err(db_error)?,
        last_seen_ts: row.try_get("last_seen_ts").map_err(db_error)?,
        created_ts: row.try_get("created_ts").map_err(db_error)?,
    })
}

fn registration_token_from_row(row: &AnyRow) -> Result<RegistrationTokenRecord> {
    Ok(RegistrationTokenRecord {
        token: row.try_get("token").map_err(db_error)?,
        uses_allowed: row.try_get("uses_allowed").map_err(db_error)?,
        completed: row.try_get("completed").map_err(db_error)?,
        expiry_ts: row.try_get("expiry_ts").map_err(db_error)?,
        created_ts: row.try_get("created_ts").map_err(db_error)?,
    })
}

const USER_COLUMNS: &str =
    "user_id, password_hash, displayname, avatar_url, is_admin, deactivated, created_ts";
const DEVICE_COLUMNS: &str = "user_id, device_id, display_name, last_seen_ts, created_ts";

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_user(&self, user: &UserRecord) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO users (user_id, password_hash, displayname, avatar_url, is_admin, \
             deactivated, created_ts) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(user.user_id.as_str())
        .bind(user.password_hash.as_deref())
        .bind(user.displayname.as_deref())
        .bind(user.avatar_url.as_ref().map(|url| url.as_str()))
        .bind(flag(user.is_admin))
        .bind(flag(user.deactivated))
        .bind(user.created_ts)
        .execute(&self.write)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_unique_violation(&error) => {
                Err(Error::matrix(MatrixErrorKind::UserInUse, "User ID already taken"))
            }
            Err(error) => Err(db_error(error)),
        }
    }

    async fn get_user(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"
        )))
        .bind(user_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn set_password_hash(&self, user_id: &UserId, password_hash: &str) -> Result<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE user_id = $2")
            .bind(password_hash)
            .bind(user_id.as_str())
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn deactivate_user(&self, user_id: &UserId) -> Result<()> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        sqlx::query(
            "UPDATE users SET deactivated = 1, password_hash = NULL, displayname = NULL, \
             avatar_url = NULL WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        for table in ["access_tokens", "devices", "pushers", "delayed_events"] {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE user_id = $1")))
                .bind(user_id.as_str())
                .execute(&mut *transaction)
                .await
                .map_err(db_error)?;
        }
        transaction.commit().await.map_err(db_error)
    }

    async fn set_displayname(&self, user_id: &UserId, displayname: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE users SET displayname = $1 WHERE user_id = $2")
            .bind(displayname)
            .bind(user_id.as_str())
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn set_avatar_url(&self, user_id: &UserId, avatar_url: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE users SET avatar_url = $1 WHERE user_id = $2")
            .bind(avatar_url)
            .bind(user_id.as_str())
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn count_users(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE deactivated = 0")
            .fetch_one(&self.read)
            .await
            .map_err(db_error)
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY user_id"
        )))
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn set_admin(&self, user_id: &UserId, is_admin: bool) -> Result<bool> {
        let result = sqlx::query("UPDATE users SET is_admin = $1 WHERE user_id = $2")
            .bind(flag(is_admin))
            .bind(user_id.as_str())
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }

    async fn user_directory_candidates(
        &self,
        server_name: &ServerName,
        term: &str,
        limit: i64,
    ) -> Result<Vec<DirectoryUser>> {
        let term = escape_like(&term.to_lowercase());
        let in_localpart =
            format!("@%{term}%:{}", escape_like(&server_name.as_str().to_lowercase()));
        let in_name = format!("%{term}%");
        let rows = sqlx::query(
            "SELECT u.user_id, u.displayname, u.avatar_url FROM users u \
             WHERE u.deactivated = 0 \
               AND (LOWER(u.user_id) LIKE $1 ESCAPE '\\' OR LOWER(u.displayname) LIKE $2 ESCAPE '\\') \
             ORDER BY u.user_id LIMIT $3",
        )
        .bind(in_localpart)
        .bind(in_name)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(DirectoryUser {
                    user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
                    displayname: row.try_get("displayname").map_err(db_error)?,
                    avatar_url: row.try_get("avatar_url").map_err(db_error)?,
                })
            })
            .collect()
    }

    async fn upsert_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts, created_ts) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET \
               display_name = COALESCE(excluded.display_name, devices.display_name), \
               last_seen_ts = excluded.last_seen_ts",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(display_name)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn get_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<DeviceRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 AND device_id = $2"
        )))
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn list_devices(&self, user_id: &UserId) -> Result<Vec<DeviceRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 ORDER BY device_id"
        )))
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(device_from_row).collect()
    }

    async fn rename_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3",
        )
        .bind(display_name)
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }

    async fn delete_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        // The device's pushers end with it: no notification reaches a device signed out.
        for table in ["access_tokens", "pushers", "devices"] {
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"
            )))
            .bind(user_id.as_str())
            .bind(device_id.as_str())
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        }
        transaction.commit().await.map_err(db_error)
    }

    async fn touch_device(&self, user_id: &UserId, device_id: &DeviceId, now: i64) -> Result<()> {
        sqlx::query("UPDATE devices SET last_seen_ts = $1 WHERE user_id = $2 AND device_id = $3")
            .bind(now)
            .bind(user_id.as_str())
            .bind(device_id.as_str())
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn create_access_token(&self, token: &NewAccessToken) -> Result<()> {
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, refresh_token_hash, user_id, device_id, \
             expires_ts) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.token_hash)
        .bind(token.refresh_token_hash.as_deref())
        .bind(token.user_id.as_str())
        .bind(token.device_id.as_str())
        .bind(token.expires_ts)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn find_access_token(&self, token_hash: &str) -> Result<Option<AccessTokenRecord>> {
        let row = sqlx::query(
            "SELECT user_id, device_id, expires_ts FROM access_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.map(|row| {
            Ok(AccessTokenRecord {
                user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
                device_id: row.try_get::<String, _>("device_id").map_err(db_error)?.into(),
                expires_ts: row.try_get("expires_ts").map_err(db_error)?,
            })
        })
        .transpose()
    }

    async fn delete_access_token(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM access_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn delete_user_tokens(
        &self,
        user_id: &UserId,
        keep_device: Option<&DeviceId>,
    ) -> Result<()> {
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id <> $2")
            .bind(user_id.as_str())
            .bind(keep_device.map_or("", |device| device.as_str()))
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        refresh_token_hash: &str,
        new_token_hash: &str,
        new_refresh_token_hash: &str,
        expires_ts: Option<i64>,
    ) -> Result<Option<(OwnedUserId, OwnedDeviceId)>> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        let row = sqlx::query(
            "DELETE FROM access_tokens WHERE refresh_token_hash = $1 RETURNING user_id, device_id",
        )
        .bind(refresh_token_hash)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(db_error)?;
        let Some(row) = row else { return Ok(None) };
        let user_id: OwnedUserId = parse_id(row.try_get("user_id").map_err(db_error)?)?;
        let device_id: OwnedDeviceId =
            row.try_get::<String, _>("device_id").map_err(db_error)?.into();
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, refresh_token_hash, user_id, device_id, \
             expires_ts) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new_token_hash)
        .bind(new_refresh_token_hash)
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(expires_ts)
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)?;
        Ok(Some((user_id, device_id)))
    }

    async fn create_registration_token(&self, token: &RegistrationTokenRecord) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_ts, \
             created_ts) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.token)
        .bind(token.uses_allowed)
        .bind(token.completed)
        .bind(token.expiry_ts)
        .bind(token.created_ts)
        .execute(&self.write)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_unique_violation(&error) => {
                Err(Error::invalid_param("A registration token with that value exists"))
            }
            Err(error) => Err(db_error(error)),
        }
    }

    async fn list_registration_tokens(&self) -> Result<Vec<RegistrationTokenRecord>> {
        let rows = sqlx::query(
            "SELECT token, uses_allowed, completed, expiry_ts, created_ts \
             FROM registration_tokens ORDER BY created_ts, token",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(registration_token_from_row).collect()
    }

    async fn get_registration_token(&self, token: &str) -> Result<Option<RegistrationTokenRecord>> {
        let row = sqlx::query(
            "SELECT token, uses_allowed, completed, expiry_ts, created_ts \
             FROM registration_tokens WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(registration_token_from_row).transpose()
    }

    async fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE registration_tokens SET uses_allowed = $2, expiry_ts = $3 WHERE token = $1",
        )
        .bind(token)
        .bind(uses_allowed)
        .bind(expiry_ts)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }

    async fn delete_registration_token(&self, token: &str) -> Result<bool> {
        let result = sqlx::query("DELETE FROM registration_tokens WHERE token = $1")
            .bind(token)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }

    async fn use_registration_token(&self, token: &str, now: i64) -> Result<bool> {
        // One conditional UPDATE: concurrent sign-ups cannot overrun `uses_allowed`.
        let result = sqlx::query(
            "UPDATE registration_tokens SET completed = completed + 1 \
             WHERE token = $1 \
               AND (expiry_ts IS NULL OR expiry_ts > $2) \
               AND (uses_allowed IS NULL OR completed < uses_allowed)",
        )
        .bind(token)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(result.rows_affected() == 1)
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub(crate) fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}
