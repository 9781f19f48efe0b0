//! Voice and video calls: time-limited TURN credentials made from the secret shared with the
//! TURN server (the TURN REST API that coturn implements with `use-auth-secret`).

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rhizome_core::{Error, Result, clock::now_millis};
use ruma::UserId;
use sha1::Sha1;

use crate::Services;

/// Credentials for the TURN server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `<expiry in seconds since the epoch>:<user ID>`.
    pub username: String,
    /// Base64 of HMAC-SHA1 of the username under the shared secret.
    pub password: String,
    /// The TURN server's URIs.
    pub uris: Vec<String>,
    /// How long the credentials are valid.
    pub ttl: Duration,
}

/// The TURN REST API's credentials for `user_id` valid until `expiry_secs`.
pub fn turn_credentials_for(secret: &str, user_id: &UserId, expiry_secs: i64) -> (String, String) {
    let username = format!("{expiry_secs}:{user_id}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes())
        .expect("invariant: HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    let password = STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

impl Services {
    /// TURN credentials for the user, or `None` when no TURN server is configured.
    pub async fn turn_credentials(&self, user_id: &UserId) -> Result<Option<TurnCredentials>> {
        let voip = &self.config.voip;
        let Some(secret_file) = &voip.turn_shared_secret_file else { return Ok(None) };
        if voip.turn_uris.is_empty() {
            return Ok(None);
        }
        // Read on each request, so the secret can be rotated without a restart.
        let secret = tokio::fs::read_to_string(secret_file).await.map_err(|error| {
            Error::internal(format!("reading voip.turn_shared_secret_file: {error}"))
        })?;
        let secret = secret.trim();
        if secret.is_empty() {
            return Err(Error::internal("voip.turn_shared_secret_file is empty"));
        }
        let ttl = Duration::from_secs(voip.turn_user_lifetime_secs);
        let expiry = now_millis() / 1000 + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let (username, password) = turn_credentials_for(secret, user_id, expiry);
        Ok(Some(TurnCredentials { username, password, uris: voip.turn_uris.clone(), ttl }))
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_api() {
        // HMAC-SHA1 of "1700000000:@alice:example.org" under "secret", as coturn computes it
        // (checked with `printf %s "$user" | openssl dgst -sha1 -hmac secret -binary | base64`).
        let (username, password) =
            turn_credentials_for("secret", user_id!("@alice:example.org"), 1_700_000_000);
        assert_eq!(username, "1700000000:@alice:example.org");
        assert_eq!(password, "g/l/t/tR2Emj7Ax0fkxwtp3GUrQ=");
        let (_, other) = turn_credentials_for("other", user_id!("@alice:example.org"), 1);
        assert_ne!(other, password);
    }
}
