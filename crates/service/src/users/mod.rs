//! Accounts: registration (invite tokens, open, or closed), login, sessions and refresh tokens,
//! devices, password changes, deactivation and registration-token administration.

pub mod admin;
pub mod directory;
pub mod openid;
pub mod password;
pub mod profile;
pub mod shared_secret;
pub mod uia;

use std::{collections::HashMap, time::Duration};

use parking_lot::Mutex;
use rhizome_core::{
    Error, Result, clock::now_millis, config::RegistrationMode, error::MatrixErrorKind,
};
use rhizome_storage::{NewAccessToken, RegistrationTokenRecord, UserRecord};
use ruma::{
    DeviceId, OwnedDeviceId, OwnedUserId, UserId,
    api::client::uiaa::{AuthData, AuthFlow, AuthType},
};

use crate::{
    Requester, Services,
    auth::{generate_token, hash_token},
    rate_limit::Action,
    users::{password::hash_password, uia::UiaPurpose},
};

/// A session handed to a client after login or registration.
#[derive(Clone, Debug)]
pub struct Session {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// The access token.
    pub access_token: String,
    /// The refresh token, if the client asked for one.
    pub refresh_token: Option<String>,
    /// How long the access token lives, if it expires.
    pub expires_in: Option<Duration>,
}

/// What a registration request asks for.
#[derive(Clone, Debug, Default)]
pub struct RegisterRequest {
    /// The wanted localpart; generated if `None`.
    pub username: Option<String>,
    /// The password.
    pub password: Option<String>,
    /// The device ID to use.
    pub device_id: Option<OwnedDeviceId>,
    /// The new device's name.
    pub initial_device_display_name: Option<String>,
    /// Create the account without logging in.
    pub inhibit_login: bool,
    /// Whether the client wants a refresh token.
    pub refresh_token: bool,
    /// The UIA stage data.
    pub auth: Option<AuthData>,
}

/// A registration request's own parameters, as its UIA session keeps them: the password only
/// as the hash the account will get, since the session is stored between requests.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct RegisterParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<OwnedDeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initial_device_display_name: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    inhibit_login: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    refresh_token: bool,
}

impl RegisterParams {
    /// The request's parameters, its password given as `password_hash`.
    fn new(request: &RegisterRequest, password_hash: Option<String>) -> Self {
        Self {
            username: request.username.clone(),
            password_hash,
            device_id: request.device_id.clone(),
            initial_device_display_name: request.initial_device_display_name.clone(),
            inhibit_login: request.inhibit_login,
            refresh_token: request.refresh_token,
        }
    }
}

/// The outcome of registration.
#[derive(Clone, Debug)]
pub struct Registered {
    /// The new user.
    pub user_id: OwnedUserId,
    /// The session, unless login was inhibited.
    pub session: Option<Session>,
}

/// Short-lived tokens for `m.login.token`.
#[derive(Default)]
pub(crate) struct LoginTokens {
    tokens: Mutex<HashMap<String, (OwnedUserId, i64)>>,
}

/// The kind of client session login tokens are kept as when processes share the store.
const LOGIN_TOKEN_KIND: &str = "login_token";

/// How long an `m.login.token` token is valid.
pub const LOGIN_TOKEN_LIFETIME_MS: i64 = 120_000;

fn validate_localpart(localpart: &str) -> Result<()> {
    let valid = !localpart.is_empty()
        && localpart.bytes().all(|byte| matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'));
    if valid {
        Ok(())
    } else {
        Err(Error::matrix(
            MatrixErrorKind::InvalidUsername,
            "User names may contain only a-z, 0-9, and . _ = - / +",
        ))
    }
}

fn random_device_id() -> OwnedDeviceId {
    use rand::Rng;
    let id: String =
        (0..10).map(|_| char::from(rand::thread_rng().gen_range(b'A'..=b'Z'))).collect();
    id.into()
}

impl Services {
    /// The registration flows offered by this server's configuration.
    pub fn registration_flows(&self) -> Vec<AuthFlow> {
        match self.config.registration.mode {
            RegistrationMode::Token => vec![AuthFlow::new(vec![AuthType::RegistrationToken])],
            RegistrationMode::Open => vec![AuthFlow::new(vec![AuthType::Dummy])],
            RegistrationMode::Disabled => Vec::new(),
        }
    }

    /// Parses a user identifier given at login: a full user ID or a local localpart.
    pub fn parse_user_identifier(&self, user: &str) -> Result<OwnedUserId> {
        let user_id = UserId::parse_with_server_name(user.to_lowercase(), self.server_name())
            .map_err(|_| Error::invalid_param("Invalid user identifier"))?;
        if user_id.server_name() != self.server_name() {
            return Err(Error::forbidden("That user is not on this server"));
        }
        Ok(user_id)
    }

    /// Checks that a localpart is valid and free.
    pub async fn check_username_available(&self, localpart: &str) -> Result<OwnedUserId> {
        validate_localpart(localpart)?;
        if localpart == admin::NOTICES_LOCALPART {
            return Err(Error::matrix(MatrixErrorKind::UserInUse, "That user name is reserved"));
        }
        let user_id = UserId::parse_with_server_name(localpart, self.server_name())
            .map_err(|_| Error::matrix(MatrixErrorKind::InvalidUsername, "Invalid user name"))?;
        if self.store.get_user(&user_id).await?.is_some() {
            return Err(Error::matrix(MatrixErrorKind::UserInUse, "That user name is taken"));
        }
        Ok(user_id)
    }

    pub(crate) fn check_password_strength(&self, password: &str) -> Result<()> {
        if password.chars().count() < self.config.registration.min_password_length {
            return Err(Error::matrix(
                MatrixErrorKind::WeakPassword,
                format!(
                    "Passwords need at least {} characters",
                    self.config.registration.min_password_length
                ),
            ));
        }
        Ok(())
    }

    /// Registers an account after user-interactive authentication. `client_key` identifies the
    /// client for rate limiting only. A later stage may leave out the first request's
    /// parameters; a completed registration repeated gets the same account (a new session).
    pub async fn register(&self, request: RegisterRequest, client_key: &str) -> Result<Registered> {
        // Asking for the flows is free; every attempt that carries authentication counts.
        if request.auth.is_some() {
            self.rate_limiter.check(Action::Registration, client_key)?;
        } else {
            self.rate_limiter.check_without_taking(Action::Registration, client_key)?;
        }
        if self.config.registration.mode == RegistrationMode::Disabled {
            return Err(Error::forbidden("Registration is disabled on this server"));
        }
        if let Some(session_id) = request.auth.as_ref().and_then(AuthData::session)
            && let Some(user_id) = self.uia_registered_user(session_id).await?
        {
            return self.registered_again(user_id, &request).await;
        }
        // What the request itself gives is checked before authentication.
        if let Some(username) = &request.username {
            self.check_username_available(&username.to_lowercase()).await?;
        }
        // Hashed as soon as it is given: the session keeps only the hash, which the account
        // then gets as it is.
        let password_hash = match request.password.clone() {
            Some(password) => {
                self.check_password_strength(&password)?;
                Some(hash_password(&self.password_permits, password).await?)
            }
            None => None,
        };
        // Authentication comes before the password is required: clients (Element among them)
        // learn the flows from a first request that carries neither.
        let outcome = self
            .check_uia_with_params(
                request.auth.as_ref(),
                self.registration_flows(),
                UiaPurpose::Register,
                serde_json::to_value(RegisterParams::new(&request, password_hash))?,
            )
            .await?;
        let params: RegisterParams = serde_json::from_value(outcome.params.clone())
            .map_err(|_| Error::bug("stored registration parameters"))?;
        let user_id = match &params.username {
            Some(username) => self.check_username_available(&username.to_lowercase()).await?,
            None => self.free_generated_user_id().await,
        };
        let password_hash = params.password_hash.clone().ok_or_else(|| {
            Error::matrix(MatrixErrorKind::MissingParam, "A password is required")
        })?;
        if self.config.registration.mode == RegistrationMode::Token {
            let token = outcome
                .registration_token
                .ok_or_else(|| Error::forbidden("A registration token is required"))?;
            if !self.store.use_registration_token(&token, now_millis()).await? {
                return Err(Error::forbidden("The registration token is no longer valid"));
            }
        }
        self.store
            .create_user(&UserRecord {
                user_id: user_id.clone(),
                password_hash: Some(password_hash),
                displayname: Some(user_id.localpart().to_owned()),
                avatar_url: None,
                is_admin: false,
                deactivated: false,
                created_ts: now_millis(),
            })
            .await?;
        self.record_uia_registration(&outcome.session_id, &user_id).await?;
        tracing::info!("registered a new account");
        let session = if params.inhibit_login {
            None
        } else {
            Some(
                self.create_session(
                    &user_id,
                    params.device_id.clone(),
                    params.initial_device_display_name.as_deref(),
                    params.refresh_token,
                )
                .await?,
            )
        };
        Ok(Registered { user_id, session })
    }

    /// A free user ID with a generated localpart.
    async fn free_generated_user_id(&self) -> OwnedUserId {
        loop {
            let localpart = generate_token("u")
                .to_lowercase()
                .replace('_', "")
                .chars()
                .take(12)
                .collect::<String>();
            if let Ok(user_id) = self.check_username_available(&localpart).await {
                return user_id;
            }
        }
    }

    /// The answer to a completed registration repeated: the same account, a new session.
    async fn registered_again(
        &self,
        user_id: OwnedUserId,
        request: &RegisterRequest,
    ) -> Result<Registered> {
        let session = if request.inhibit_login {
            None
        } else {
            Some(
                self.create_session(
                    &user_id,
                    None,
                    request.initial_device_display_name.as_deref(),
                    request.refresh_token,
                )
                .await?,
            )
        };
        Ok(Registered { user_id, session })
    }

    /// Creates a device (or reuses one, invalidating its old tokens) and a session on it.
    pub async fn create_session(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<&str>,
        refreshable: bool,
    ) -> Result<Session> {
        let device_id = device_id.unwrap_or_else(random_device_id);
        let now = now_millis();
        if self.store.get_device(user_id, &device_id).await?.is_some() {
            self.store.delete_device(user_id, &device_id).await?;
            self.forget_cached_tokens();
        }
        self.store.upsert_device(user_id, &device_id, display_name, now).await?;
        let access_token = generate_token("syt");
        let refresh_token = refreshable.then(|| generate_token("syr"));
        let lifetime =
            Duration::from_secs(self.config.sessions.refreshable_access_token_lifetime_secs);
        let expires_ts =
            refreshable.then(|| now + i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX));
        self.store
            .create_access_token(&NewAccessToken {
                token_hash: hash_token(&access_token),
                refresh_token_hash: refresh_token.as_deref().map(hash_token),
                user_id: user_id.to_owned(),
                device_id: device_id.clone(),
                expires_ts,
            })
            .await?;
        self.on_device_list_change(user_id).await?;
        if let Some(user) = self.store.get_user(user_id).await?.filter(|user| !user.deactivated) {
            let requester = Requester {
                user_id: user_id.to_owned(),
                device_id: device_id.clone(),
                is_admin: user.is_admin,
            };
            self.remember_new_token(&access_token, requester, expires_ts);
        }
        Ok(Session {
            user_id: user_id.to_owned(),
            device_id,
            access_token,
            refresh_token,
            expires_in: refreshable.then_some(lifetime),
        })
    }

    /// Logs in with a password. `client_key` identifies the client for rate limiting only.
    pub async fn login_with_password(
        &self,
        user: &str,
        password: &str,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<&str>,
        refreshable: bool,
        client_key: &str,
    ) -> Result<Session> {
        self.rate_limiter.check(Action::Login, client_key)?;
        let user_id = self.parse_user_identifier(user)?;
        self.rate_limiter.check(Action::Login, user_id.as_str())?;
        let record = self.store.get_user(&user_id).await?;
        if record.as_ref().is_some_and(|user| user.deactivated) {
            return Err(Error::matrix(
                MatrixErrorKind::UserDeactivated,
                "This account has been deactivated",
            ));
        }
        if !self.check_password(&user_id, password).await? {
            return Err(Error::forbidden("Invalid user name or password"));
        }
        self.create_session(&user_id, device_id, display_name, refreshable).await
    }

    /// Makes a short-lived token for `m.login.token` (used to sign in another device).
    pub async fn create_login_token(&self, user_id: &UserId) -> Result<String> {
        let token = generate_token("syl");
        let now = now_millis();
        let expires = now + LOGIN_TOKEN_LIFETIME_MS;
        if self.store.shared_by_processes() {
            // The login may reach another process: the token is kept in the store.
            self.store.delete_expired_client_sessions(now).await?;
            let hash = hash_token(&token);
            self.store
                .save_client_session(LOGIN_TOKEN_KIND, &hash, user_id.as_str(), expires)
                .await?;
            return Ok(token);
        }
        let mut tokens = self.login_tokens().tokens.lock();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(hash_token(&token), (user_id.to_owned(), expires));
        Ok(token)
    }

    /// Logs in with an `m.login.token` token (single use).
    pub async fn login_with_token(
        &self,
        token: &str,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<&str>,
        refreshable: bool,
        client_key: &str,
    ) -> Result<Session> {
        self.rate_limiter.check(Action::Login, client_key)?;
        let entry = self.take_login_token(token).await?;
        match entry {
            Some((user_id, expires)) if expires > now_millis() => {
                self.rate_limiter.check(Action::Login, user_id.as_str())?;
                self.create_session(&user_id, device_id, display_name, refreshable).await
            }
            _ => Err(Error::forbidden("Invalid or expired login token")),
        }
    }

    /// Removes a login token: its user and expiry, if it was there (only one taker gets it).
    async fn take_login_token(&self, token: &str) -> Result<Option<(OwnedUserId, i64)>> {
        let hash = hash_token(token);
        if !self.store.shared_by_processes() {
            return Ok(self.login_tokens().tokens.lock().remove(&hash));
        }
        let now = now_millis();
        let Some(user) = self.store.get_client_session(LOGIN_TOKEN_KIND, &hash, now).await? else {
            return Ok(None);
        };
        if !self.store.delete_client_session(LOGIN_TOKEN_KIND, &hash).await? {
            return Ok(None);
        }
        // It had not expired when read; its exact expiry no longer matters.
        Ok(UserId::parse(user).ok().map(|user_id| (user_id, i64::MAX)))
    }

    fn login_tokens(&self) -> &LoginTokens {
        &self.caches.login_tokens
    }

    /// Swaps a refresh token for a new access and refresh token.
    pub async fn refresh_session(&self, refresh_token: &str) -> Result<Session> {
        let access_token = generate_token("syt");
        let new_refresh = generate_token("syr");
        let lifetime =
            Duration::from_secs(self.config.sessions.refreshable_access_token_lifetime_secs);
        let expires_ts = now_millis() + i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
        let (owner, device_id) = self
            .store
            .rotate_refresh_token(
                &hash_token(refresh_token),
                &hash_token(&access_token),
                &hash_token(&new_refresh),
                Some(expires_ts),
            )
            .await?
            .ok_or_else(|| Error::unknown_token(false))?;
        self.forget_cached_tokens();
        Ok(Session {
            user_id: owner,
            device_id,
            access_token,
            refresh_token: Some(new_refresh),
            expires_in: Some(lifetime),
        })
    }

    /// Ends the requester's session (deleting the device, as the spec says).
    pub async fn logout(&self, requester: &Requester) -> Result<()> {
        self.delete_device(&requester.user_id, &requester.device_id).await
    }

    /// Ends every session of the user.
    pub async fn logout_all(&self, user_id: &UserId) -> Result<()> {
        for device in self.store.list_devices(user_id).await? {
            self.store.delete_device(user_id, &device.device_id).await?;
        }
        self.forget_cached_tokens();
        self.on_device_list_change(user_id).await
    }

    /// Deletes a device and its tokens.
    pub async fn delete_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<()> {
        self.store.delete_device(user_id, device_id).await?;
        self.forget_cached_tokens();
        self.on_device_list_change(user_id).await
    }

    /// Deletes devices after user-interactive authentication with the password.
    pub async fn delete_devices_with_uia(
        &self,
        requester: &Requester,
        device_ids: &[OwnedDeviceId],
        auth: Option<&AuthData>,
    ) -> Result<()> {
        self.check_uia(
            auth,
            vec![AuthFlow::new(vec![AuthType::Password])],
            UiaPurpose::Account(requester.user_id.clone()),
        )
        .await?;
        for device_id in device_ids {
            self.delete_device(&requester.user_id, device_id).await?;
        }
        Ok(())
    }

    /// Changes the password after user-interactive authentication; optionally logs out the
    /// user's other devices.
    pub async fn change_password(
        &self,
        requester: &Requester,
        new_password: &str,
        logout_devices: bool,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        self.check_password_strength(new_password)?;
        self.check_uia(
            auth,
            vec![AuthFlow::new(vec![AuthType::Password])],
            UiaPurpose::Account(requester.user_id.clone()),
        )
        .await?;
        let hash = hash_password(&self.password_permits, new_password.to_owned()).await?;
        self.store.set_password_hash(&requester.user_id, &hash).await?;
        if logout_devices {
            for device in self.store.list_devices(&requester.user_id).await? {
                if device.device_id != requester.device_id {
                    self.store.delete_device(&requester.user_id, &device.device_id).await?;
                }
            }
            self.forget_cached_tokens();
            self.on_device_list_change(&requester.user_id).await?;
        }
        Ok(())
    }

    /// Deactivates the account after user-interactive authentication: leaves every room,
    /// ends every session, and keeps the ID reserved forever.
    pub async fn deactivate_account(
        &self,
        requester: &Requester,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        self.check_uia(
            auth,
            vec![AuthFlow::new(vec![AuthType::Password])],
            UiaPurpose::Account(requester.user_id.clone()),
        )
        .await?;
        self.deactivate_user(&requester.user_id).await
    }

    /// Deactivates an account (without asking the user: the administrator's way): cancels its
    /// delayed events, leaves every room, ends every session, and keeps the ID reserved
    /// forever.
    pub async fn deactivate_user(&self, user_id: &UserId) -> Result<()> {
        // Before leaving: a delayed join sent after it would bring the account back. Those
        // scheduled while leaving go with the account in the store's deactivation.
        self.cancel_all_delayed_events(user_id).await?;
        for membership in self.store.rooms_of_user(user_id, &["join", "invite", "knock"]).await? {
            if let Err(error) = self.leave_room(user_id, &membership.room_id, None).await {
                tracing::warn!(%error, "could not leave a room while deactivating an account");
            }
        }
        self.store.deactivate_user(user_id).await?;
        self.forget_cached_tokens();
        self.on_device_list_change(user_id).await
    }

    /// Creates a registration token; a random one when `token` is `None`.
    pub async fn create_registration_token(
        &self,
        token: Option<String>,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<RegistrationTokenRecord> {
        let token = token.unwrap_or_else(|| {
            generate_token("inv").chars().filter(char::is_ascii_alphanumeric).take(16).collect()
        });
        if token.is_empty()
            || token.len() > 64
            || !token.chars().all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c))
        {
            return Err(Error::invalid_param(
                "Tokens are 1 to 64 characters of A-Z, a-z, 0-9, . _ ~ -",
            ));
        }
        if uses_allowed.is_some_and(|uses| uses < 0) {
            return Err(Error::invalid_param("uses_allowed must be a non-negative integer"));
        }
        let record = RegistrationTokenRecord {
            token,
            uses_allowed,
            completed: 0,
            expiry_ts,
            created_ts: now_millis(),
        };
        self.store.create_registration_token(&record).await?;
        Ok(record)
    }

    /// Whether a registration token can be used now (for `/register/…/validity`).
    pub async fn registration_token_is_valid(&self, token: &str) -> Result<bool> {
        Ok(self
            .store
            .get_registration_token(token)
            .await?
            .is_some_and(|record| record.is_valid_at(now_millis())))
    }
}
