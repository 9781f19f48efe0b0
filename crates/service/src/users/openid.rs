//! OpenID tokens: short-lived tokens a client hands to a third party (a widget such as a
//! Jitsi call) so it can check who the user is through the federation API. They live in
//! memory, stored by hash, for an hour (in the store when several processes share it).

use std::{collections::HashMap, time::Duration};

use parking_lot::Mutex;
use rhizome_core::{Error, Result, clock::now_millis};
use ruma::{OwnedUserId, UserId};

use crate::{
    Requester, Services,
    auth::{generate_token, hash_token},
};

/// How long an OpenID token is valid.
pub const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The kind of client session OpenID tokens are kept as when processes share the store.
const KIND: &str = "openid";

/// The most live OpenID tokens one user may hold; the oldest goes first.
const MAX_TOKENS_PER_USER: usize = 20;

/// Live OpenID tokens by hash: their user and expiry (ms since the epoch).
#[derive(Default)]
pub(crate) struct OpenIdTokens {
    tokens: Mutex<HashMap<String, (OwnedUserId, i64)>>,
}

impl Services {
    /// Makes an OpenID token for the requester (who may ask only for themselves).
    pub async fn create_openid_token(
        &self,
        requester: &Requester,
        user_id: &UserId,
    ) -> Result<String> {
        if requester.user_id != user_id {
            return Err(Error::forbidden("You can only request OpenID tokens for yourself"));
        }
        let token = generate_token("oid");
        let now = now_millis();
        let lifetime = i64::try_from(OPENID_TOKEN_LIFETIME.as_millis()).unwrap_or(i64::MAX / 2);
        if self.store.shared_by_processes() {
            // The third party's check may reach another process: the token is kept in the
            // store (without the per-user cap, which bounds memory only).
            self.store.delete_expired_client_sessions(now).await?;
            let hash = hash_token(&token);
            self.store.save_client_session(KIND, &hash, user_id.as_str(), now + lifetime).await?;
            return Ok(token);
        }
        let mut tokens = self.openid_tokens.tokens.lock();
        tokens.retain(|_, (_, expires)| *expires > now);
        let mut own: Vec<(String, i64)> = tokens
            .iter()
            .filter(|(_, (owner, _))| owner == user_id)
            .map(|(hash, (_, expires))| (hash.clone(), *expires))
            .collect();
        if own.len() >= MAX_TOKENS_PER_USER {
            own.sort_by_key(|(_, expires)| *expires);
            for (hash, _) in own.iter().take(own.len() + 1 - MAX_TOKENS_PER_USER) {
                tokens.remove(hash);
            }
        }
        tokens.insert(hash_token(&token), (user_id.to_owned(), now + lifetime));
        Ok(token)
    }

    /// The user an OpenID token was made for; `M_UNKNOWN_TOKEN` if it is unknown, expired or
    /// its user was deactivated since.
    pub async fn openid_userinfo(&self, token: &str) -> Result<OwnedUserId> {
        let hash = hash_token(token);
        let entry = if self.store.shared_by_processes() {
            let now = now_millis();
            let stored = self.store.get_client_session(KIND, &hash, now).await?;
            stored.and_then(|user| UserId::parse(user).ok()).map(|user_id| (user_id, i64::MAX))
        } else {
            self.openid_tokens.tokens.lock().get(&hash).cloned()
        };
        let user_id = match entry {
            Some((user_id, expires)) if expires > now_millis() => user_id,
            _ => return Err(Error::unknown_token(false)),
        };
        if self.store.get_user(&user_id).await?.is_none_or(|user| user.deactivated) {
            return Err(Error::unknown_token(false));
        }
        Ok(user_id)
    }
}
