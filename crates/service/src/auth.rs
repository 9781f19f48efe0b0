//! Who is asking: access tokens (stored as SHA-256 hashes only) turned into a [`Requester`],
//! with a small cache so the hot path does not hit the database (entries are looked up again
//! after a minute, so the administrator's changes from another process take effect).

use std::num::NonZeroUsize;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use lru::LruCache;
use parking_lot::Mutex;
use rhizome_core::{Error, Result, clock::now_millis};
use ruma::{OwnedDeviceId, OwnedUserId};
use sha2::{Digest, Sha256};

use crate::Services;

/// The authenticated user and device behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the token belongs to.
    pub device_id: OwnedDeviceId,
    /// Whether the user is a server admin.
    pub is_admin: bool,
}

/// The hash under which a token is stored. Tokens themselves are never stored or logged.
pub fn hash_token(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random token with a recognisable prefix.
pub fn generate_token(prefix: &str) -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

struct CachedToken {
    requester: Requester,
    expires_ts: Option<i64>,
    last_touched: i64,
    cached_at: i64,
}

/// Recently used tokens.
pub(crate) struct TokenCache {
    entries: Mutex<LruCache<String, CachedToken>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            entries: Mutex::new(crate::bounded::lru(
                NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

impl TokenCache {
    /// Forgets every cached token (after logouts and device deletions).
    pub(crate) fn clear(&self) {
        self.entries.lock().clear();
    }
}

/// How often a device's "last seen" time is written.
const TOUCH_INTERVAL_MS: i64 = 5 * 60 * 1000;

/// How long a token is trusted from the cache before it is looked up again, so changes made
/// by the administrator's commands (another process) reach a running server.
const CACHE_TTL_MS: i64 = 60 * 1000;

/// Whether a token cached at `cached_at` must be looked up again at `now`.
fn is_stale(cached_at: i64, now: i64) -> bool {
    now - cached_at > CACHE_TTL_MS
}

impl Services {
    /// Forgets every cached token here and in the other processes (after logouts, device
    /// deletions, deactivations and admin flag changes).
    pub(crate) fn forget_cached_tokens(&self) {
        self.token_cache.clear();
        crate::processes::publish(self.store.as_ref(), &crate::processes::Message::ForgetTokens);
    }

    /// Finds who an access token belongs to: `M_UNKNOWN_TOKEN` (soft logout for expired
    /// refreshable tokens) otherwise.
    pub async fn authenticate(&self, token: &str) -> Result<Requester> {
        let hash = hash_token(token);
        let now = now_millis();
        let touch = {
            let mut cache = self.token_cache.entries.lock();
            if cache.peek(&hash).is_some_and(|entry| is_stale(entry.cached_at, now)) {
                cache.pop(&hash);
            }
            if let Some(entry) = cache.get_mut(&hash) {
                if entry.expires_ts.is_some_and(|expires| expires <= now) {
                    return Err(Error::unknown_token(true));
                }
                let touch = now - entry.last_touched > TOUCH_INTERVAL_MS;
                if touch {
                    entry.last_touched = now;
                }
                Some((entry.requester.clone(), touch))
            } else {
                None
            }
        };
        if let Some((requester, touch)) = touch {
            if touch {
                self.store.touch_device(&requester.user_id, &requester.device_id, now).await?;
            }
            return Ok(requester);
        }
        let record = self
            .store
            .find_access_token(&hash)
            .await?
            .ok_or_else(|| Error::unknown_token(false))?;
        if record.expires_ts.is_some_and(|expires| expires <= now) {
            return Err(Error::unknown_token(true));
        }
        let user = self
            .store
            .get_user(&record.user_id)
            .await?
            .filter(|user| !user.deactivated)
            .ok_or_else(|| Error::unknown_token(false))?;
        let requester = Requester {
            user_id: record.user_id,
            device_id: record.device_id,
            is_admin: user.is_admin,
        };
        self.store.touch_device(&requester.user_id, &requester.device_id, now).await?;
        self.token_cache.entries.lock().put(
            hash,
            CachedToken {
                requester: requester.clone(),
                expires_ts: record.expires_ts,
                last_touched: now,
                cached_at: now,
            },
        );
        Ok(requester)
    }
}

impl Services {
    /// Remembers a token just issued, so the client's first request with it (a login's first
    /// sync) needs no lookup: the device was just written, seen now.
    pub(crate) fn remember_new_token(
        &self,
        token: &str,
        requester: Requester,
        expires_ts: Option<i64>,
    ) {
        let now = now_millis();
        let entry = CachedToken { requester, expires_ts, last_touched: now, cached_at: now };
        self.token_cache.entries.lock().put(hash_token(token), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_tokens_unique() {
        assert_eq!(hash_token("abc"), hash_token("abc"));
        assert_ne!(hash_token("abc"), hash_token("abd"));
        let one = generate_token("syt");
        let two = generate_token("syt");
        assert_ne!(one, two);
        assert!(one.starts_with("syt_") && one.len() > 40);
    }

    #[test]
    fn cached_tokens_are_looked_up_again_after_a_minute() {
        assert!(!is_stale(1_000, 1_000));
        assert!(!is_stale(1_000, 1_000 + CACHE_TTL_MS));
        assert!(is_stale(1_000, 1_001 + CACHE_TTL_MS));
    }
}
