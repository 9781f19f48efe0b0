//! Accounts, devices, access tokens and registration tokens.

use async_trait::async_trait;
use rhizome_core::Result;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, ServerName, UserId};

use crate::{
    AccessTokenRecord, DeviceRecord, DirectoryUser, NewAccessToken, RegistrationTokenRecord,
    UserRecord,
};

/// Accounts, devices, access tokens and registration tokens.
#[async_trait]
pub trait AccountStore {
    /// Creates an account; `M_USER_IN_USE` if the ID is taken (deactivated accounts included).
    async fn create_user(&self, user: &UserRecord) -> Result<()>;

    /// Looks an account up.
    async fn get_user(&self, user_id: &UserId) -> Result<Option<UserRecord>>;

    /// Replaces the password hash.
    async fn set_password_hash(&self, user_id: &UserId, password_hash: &str) -> Result<()>;

    /// Marks the account deactivated, drops its password, profile, devices, tokens, pushers
    /// and delayed events.
    async fn deactivate_user(&self, user_id: &UserId) -> Result<()>;

    /// Sets the display name (`None` removes it).
    async fn set_displayname(&self, user_id: &UserId, displayname: Option<&str>) -> Result<()>;

    /// Sets the avatar URL (`None` removes it).
    async fn set_avatar_url(&self, user_id: &UserId, avatar_url: Option<&str>) -> Result<()>;

    /// Counts the local accounts.
    async fn count_users(&self) -> Result<i64>;

    /// Every local account, deactivated ones included, by user ID.
    async fn list_users(&self) -> Result<Vec<UserRecord>>;

    /// Grants or withdraws server administration; `false` if the account does not exist.
    async fn set_admin(&self, user_id: &UserId, is_admin: bool) -> Result<bool>;

    /// Active users of `server_name` whose localpart or display name contains `term` (case
    /// insensitive; the server name itself never matches), by user ID, at most `limit`. Who
    /// may find whom is the service's to decide.
    async fn user_directory_candidates(
        &self,
        server_name: &ServerName,
        term: &str,
        limit: i64,
    ) -> Result<Vec<DirectoryUser>>;

    /// Creates or updates a device (the display name is kept when `None`).
    async fn upsert_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
        now: i64,
    ) -> Result<()>;

    /// Looks a device up.
    async fn get_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<DeviceRecord>>;

    /// The user's devices.
    async fn list_devices(&self, user_id: &UserId) -> Result<Vec<DeviceRecord>>;

    /// Renames a device; `false` if it does not exist.
    async fn rename_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> Result<bool>;

    /// Deletes a device and its tokens.
    async fn delete_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()>;

    /// Records the time a device was last used (coarsely, to limit writes).
    async fn touch_device(&self, user_id: &UserId, device_id: &DeviceId, now: i64) -> Result<()>;

    /// Stores a new access token (by hash).
    async fn create_access_token(&self, token: &NewAccessToken) -> Result<()>;

    /// Finds what an access token (by hash) stands for.
    async fn find_access_token(&self, token_hash: &str) -> Result<Option<AccessTokenRecord>>;

    /// Deletes one access token (by hash).
    async fn delete_access_token(&self, token_hash: &str) -> Result<()>;

    /// Deletes all the user's tokens, except those of `keep_device`.
    async fn delete_user_tokens(
        &self,
        user_id: &UserId,
        keep_device: Option<&DeviceId>,
    ) -> Result<()>;

    /// Swaps a refresh token (by hash) for a new access and refresh token on the same device,
    /// in one step; returns the user and device, or `None` if the refresh token is unknown (or
    /// already used).
    async fn rotate_refresh_token(
        &self,
        refresh_token_hash: &str,
        new_token_hash: &str,
        new_refresh_token_hash: &str,
        expires_ts: Option<i64>,
    ) -> Result<Option<(OwnedUserId, OwnedDeviceId)>>;

    /// Stores a new registration token; `M_INVALID_PARAM` if it exists.
    async fn create_registration_token(&self, token: &RegistrationTokenRecord) -> Result<()>;

    /// All registration tokens.
    async fn list_registration_tokens(&self) -> Result<Vec<RegistrationTokenRecord>>;

    /// Looks a registration token up.
    async fn get_registration_token(&self, token: &str) -> Result<Option<RegistrationTokenRecord>>;

    /// Sets a registration token's allowed uses and expiry (`None` is unlimited, never);
    /// `false` if it does not exist.
    async fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<bool>;

    /// Deletes a registration token; `false` if it did not exist.
    async fn delete_registration_token(&self, token: &str) -> Result<bool>;

    /// Uses up one sign-up of a token if it is valid at `now`; `false` if it is not.
    /// Concurrent callers never use more than `uses_allowed` in all.
    async fn use_registration_token(&self, token: &str, now: i64) -> Result<bool>;
}
