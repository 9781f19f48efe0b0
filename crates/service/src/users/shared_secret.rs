//! Registration with the server's shared secret, as Synapse's `/_synapse/admin/v1/register`
//! does it (the protocol of `register_new_matrix_user` and of test harnesses): a nonce valid
//! for a minute and used once, then the account's details with an HMAC-SHA1 over them keyed
//! with the secret.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rhizome_core::{Error, Result, error::MatrixErrorKind};
use sha1::Sha1;

use crate::{Services, auth::generate_token, rate_limit::Action, users::Session};

/// How long a nonce may be used.
const NONCE_LIFETIME: Duration = Duration::from_secs(60);

/// An account to create, as the tool sends it.
#[derive(Clone, Debug)]
pub struct SharedSecretRegistration {
    /// The nonce handed out before.
    pub nonce: String,
    /// The wanted localpart (lowercased on creation).
    pub username: String,
    /// The password.
    pub password: String,
    /// Whether the account administers the server.
    pub admin: bool,
    /// The display name (the localpart when none).
    pub displayname: Option<String>,
    /// Synapse's user type, covered by the MAC when given (no other effect here).
    pub user_type: Option<String>,
    /// The hex HMAC-SHA1 of `nonce NUL username NUL password NUL admin|notadmin [NUL type]`.
    pub mac: String,
}

impl Services {
    /// The shared secret, if one is configured (`registration.shared_secret_file` is read
    /// each time, so a changed file needs no restart).
    async fn registration_shared_secret(&self) -> Result<String> {
        let registration = &self.config.registration;
        let secret = match (&registration.shared_secret, &registration.shared_secret_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(file)) => tokio::fs::read_to_string(file)
                .await
                .map_err(|error| {
                    Error::internal(format!("reading registration.shared_secret_file: {error}"))
                })?
                .trim()
                .to_owned(),
            (None, None) => String::new(),
        };
        if secret.is_empty() {
            return Err(Error::matrix(
                MatrixErrorKind::Unknown,
                "Shared secret registration is not enabled",
            ));
        }
        Ok(secret)
    }

    /// A fresh nonce for one shared-secret registration.
    pub async fn shared_secret_nonce(&self) -> Result<String> {
        self.registration_shared_secret().await?;
        let nonce = generate_token("nonce");
        let mut nonces = self.uia.shared_secret_nonces.lock();
        nonces.retain(|_, issued| issued.elapsed() < NONCE_LIFETIME);
        nonces.insert(nonce.clone(), Instant::now());
        Ok(nonce)
    }

    /// Creates an account for a tool that holds the shared secret, and logs it in.
    pub async fn register_with_shared_secret(
        &self,
        request: SharedSecretRegistration,
        client_key: &str,
    ) -> Result<Session> {
        self.rate_limiter.check(Action::Registration, client_key)?;
        let secret = self.registration_shared_secret().await?;
        // The nonce is used up whatever happens next.
        let issued = self.uia.shared_secret_nonces.lock().remove(&request.nonce);
        if issued.is_none_or(|issued| issued.elapsed() >= NONCE_LIFETIME) {
            return Err(Error::matrix(MatrixErrorKind::Unknown, "Unrecognised nonce"));
        }
        for (field, value) in [("username", &request.username), ("password", &request.password)] {
            if value.is_empty() || value.len() > 512 || value.contains('\0') {
                return Err(Error::invalid_param(format!("Invalid {field}")));
            }
        }
        if !mac_matches(&secret, &request) {
            tracing::debug!("shared-secret registration refused: wrong MAC");
            return Err(Error::forbidden("HMAC incorrect"));
        }
        let localpart = request.username.to_lowercase();
        let user_id = self.check_username_available(&localpart).await?;
        let user_id =
            self.create_account(user_id.as_str(), &request.password, request.admin).await?;
        if let Some(name) = request.displayname.as_deref().filter(|name| !name.is_empty()) {
            self.store.set_displayname(&user_id, Some(name)).await?;
        }
        self.create_session(&user_id, None, None, false).await
    }
}

/// Whether the request's MAC is the HMAC-SHA1 of its fields keyed with the secret (compared
/// in constant time).
fn mac_matches(secret: &str, request: &SharedSecretRegistration) -> bool {
    let Ok(given) = hex_decode(&request.mac) else { return false };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(request.nonce.as_bytes());
    mac.update(b"\0");
    mac.update(request.username.as_bytes());
    mac.update(b"\0");
    mac.update(request.password.as_bytes());
    mac.update(b"\0");
    mac.update(if request.admin { b"admin".as_slice() } else { b"notadmin".as_slice() });
    if let Some(user_type) = &request.user_type {
        mac.update(b"\0");
        mac.update(user_type.as_bytes());
    }
    mac.verify_slice(&given).is_ok()
}

fn hex_decode(text: &str) -> Result<Vec<u8>, ()> {
    if !text.len().is_multiple_of(2) {
        return Err(());
    }
    (0..text.len())
        .step_by(2)
        .map(|index| {
            text.get(index..index + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()).ok_or(())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(mac: &str) -> SharedSecretRegistration {
        SharedSecretRegistration {
            nonce: "abc".into(),
            username: "alice".into(),
            password: "pw".into(),
            admin: true,
            displayname: None,
            user_type: None,
            mac: mac.into(),
        }
    }

    #[test]
    fn the_mac_is_hmac_sha1_over_the_fields_with_nul_between() {
        // printf 'abc\0alice\0pw\0admin' | openssl dgst -sha1 -hmac secret
        let expected = "dc5ed98b283077684552e3f72d67f26b3366bf58";
        assert!(mac_matches("secret", &request(expected)));
        assert!(mac_matches("secret", &request(&expected.to_uppercase())));
        assert!(!mac_matches("other", &request(expected)));
        let mut not_admin = request(expected);
        not_admin.admin = false;
        assert!(!mac_matches("secret", &not_admin));
        assert!(!mac_matches("secret", &request("zz")));
        assert!(!mac_matches("secret", &request("abc")));
    }
}
