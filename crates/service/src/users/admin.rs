//! Account administration for the server's administrator (`rhizome admin user …`): list,
//! create, deactivate, reset passwords and grant administration, and the server's own
//! notices account that speaks for the administrator.

use rhizome_core::{Error, Result, clock::now_millis, error::MatrixErrorKind};
use rhizome_storage::UserRecord;
use ruma::{OwnedUserId, UserId};

use crate::{Services, users::password::hash_password};

/// The localpart of the account that sends the administrator's notices. Nobody can register
/// it; it has no password, so nobody can log in as it.
pub const NOTICES_LOCALPART: &str = "server-notices";

/// The display name of the notices account.
const NOTICES_DISPLAYNAME: &str = "Server notices";

/// A random registration token of `length` letters and digits.
pub fn random_registration_token(length: usize) -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(length).map(char::from).collect()
}

/// A random password of 24 letters and digits (about 142 bits), for the administrator to
/// hand on.
pub fn generate_password() -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect()
}

impl Services {
    /// Every account, deactivated ones included, by user ID.
    pub async fn list_accounts(&self) -> Result<Vec<UserRecord>> {
        self.store.list_users().await
    }

    /// Creates an account with a password, optionally a server administrator. The name is a
    /// localpart or a user ID of this server.
    pub async fn create_account(
        &self,
        name: &str,
        password: &str,
        is_admin: bool,
    ) -> Result<OwnedUserId> {
        let localpart = self.parse_user_identifier(name)?.localpart().to_owned();
        let user_id = self.check_username_available(&localpart).await?;
        self.check_password_strength(password)?;
        let password_hash = hash_password(&self.password_permits, password.to_owned()).await?;
        self.store
            .create_user(&UserRecord {
                user_id: user_id.clone(),
                password_hash: Some(password_hash),
                displayname: Some(user_id.localpart().to_owned()),
                avatar_url: None,
                is_admin,
                deactivated: false,
                created_ts: now_millis(),
            })
            .await?;
        tracing::info!(is_admin, "the administrator created an account");
        Ok(user_id)
    }

    /// An active local account, or `M_NOT_FOUND`.
    pub async fn active_account(&self, user_id: &UserId) -> Result<UserRecord> {
        self.store
            .get_user(user_id)
            .await?
            .filter(|user| !user.deactivated)
            .ok_or_else(|| Error::not_found("No such active account"))
    }

    /// Sets a new password for an account and ends all its sessions.
    pub async fn reset_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let user = self.active_account(user_id).await?;
        if user.password_hash.is_none() {
            return Err(Error::forbidden("This account cannot log in with a password"));
        }
        self.check_password_strength(password)?;
        let hash = hash_password(&self.password_permits, password.to_owned()).await?;
        self.store.set_password_hash(user_id, &hash).await?;
        self.logout_all(user_id).await
    }

    /// Grants or withdraws server administration.
    pub async fn set_server_admin(&self, user_id: &UserId, is_admin: bool) -> Result<()> {
        self.active_account(user_id).await?;
        self.store.set_admin(user_id, is_admin).await?;
        // Cached requesters carry the flag.
        self.forget_cached_tokens();
        Ok(())
    }

    /// The account that sends the administrator's notices, made on first use.
    pub async fn notices_account(&self) -> Result<OwnedUserId> {
        let user_id = UserId::parse_with_server_name(NOTICES_LOCALPART, self.server_name())
            .map_err(|_| Error::bug("the notices account's ID is invalid"))?;
        match self.store.get_user(&user_id).await? {
            Some(user) if !user.deactivated && user.password_hash.is_none() => return Ok(user_id),
            Some(_) => {
                return Err(Error::matrix(
                    MatrixErrorKind::UserInUse,
                    "The notices account's name belongs to an ordinary account",
                ));
            }
            None => {}
        }
        let record = UserRecord {
            user_id: user_id.clone(),
            password_hash: None,
            displayname: Some(NOTICES_DISPLAYNAME.to_owned()),
            avatar_url: None,
            is_admin: false,
            deactivated: false,
            created_ts: now_millis(),
        };
        match self.store.create_user(&record).await {
            Ok(()) => Ok(user_id),
            // Made concurrently.
            Err(error) if matches!(error.matrix_kind(), Some(MatrixErrorKind::UserInUse)) => {
                Ok(user_id)
            }
            Err(error) => Err(error),
        }
    }

    /// Changes a registration token's allowed uses and expiry (`None`: unlimited, never).
    pub async fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<rhizome_storage::RegistrationTokenRecord> {
        if uses_allowed.is_some_and(|uses| uses < 0) {
            return Err(Error::invalid_param("uses_allowed must be a non-negative integer"));
        }
        if !self.store.update_registration_token(token, uses_allowed, expiry_ts).await? {
            return Err(Error::not_found("No such registration token"));
        }
        self.store
            .get_registration_token(token)
            .await?
            .ok_or_else(|| Error::not_found("No such registration token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_and_different() {
        let (one, two) = (generate_password(), generate_password());
        assert_eq!(one.len(), 24);
        assert!(one.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(one, two);
    }
}
