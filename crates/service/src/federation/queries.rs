//! Queries between servers about users and aliases (spec: Server-Server API, "Querying for
//! information"): a remote user's profile asked of their server (`/query/profile`) and kept a
//! short while, this server's users' profiles for others (one field or all), and aliases of
//! either side resolved with the servers that know their room.
//!
//! The in-memory caches of answers from other servers (profiles here, space hierarchies in
//! [`hierarchy`](super::hierarchy)) live in [`QueryCaches`].

use std::{
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use http::StatusCode;
use lru::LruCache;
use parking_lot::Mutex;
use rhizome_core::{Error, Result};
use ruma::{
    OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, UserId,
    api::federation::{query::get_profile_information, space::get_hierarchy},
    profile::ProfileFieldName,
};
use serde_json::Value;

use super::{FederationError, RequestLimits};
use crate::{Services, users::profile::Profile};

/// How long a remote profile (or its absence) is reused.
const PROFILE_TTL: Duration = Duration::from_secs(60);
/// How many remote profiles are remembered.
const PROFILE_CACHE_SIZE: usize = 4096;
/// How long another server's answer about a space is reused.
pub(crate) const HIERARCHY_TTL: Duration = Duration::from_secs(120);
/// How many answers about spaces are remembered.
const HIERARCHY_CACHE_SIZE: usize = 1024;
/// The largest profile answer read from another server.
const MAX_PROFILE_RESPONSE: usize = 64 * 1024;
/// The longest display name or avatar URL kept from another server.
const MAX_PROFILE_FIELD: usize = 1024;
/// How long a query of another server's profile may take.
const PROFILE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one entry of a cache holds: when it was fetched and the answer.
type Timed<T> = (Instant, T);

/// Another server's answer about a space, if one answered.
pub(crate) type RemoteHierarchy = Option<Arc<get_hierarchy::v1::Response>>;

/// Answers of other servers, kept a short while.
pub(crate) struct QueryCaches {
    /// Remote profiles by user; `None` when their server said there is no such user.
    profiles: Mutex<LruCache<OwnedUserId, Timed<Option<Profile>>>>,
    /// Other servers' answers to `/hierarchy`, by room and `suggested_only`; `None` when no
    /// server answered.
    pub(crate) hierarchies: Mutex<LruCache<(OwnedRoomId, bool), Timed<RemoteHierarchy>>>,
}

impl Default for QueryCaches {
    fn default() -> Self {
        let size = |size: usize| NonZeroUsize::new(size).unwrap_or(NonZeroUsize::MIN);
        Self {
            profiles: Mutex::new(crate::bounded::lru(size(PROFILE_CACHE_SIZE))),
            hierarchies: Mutex::new(crate::bounded::lru(size(HIERARCHY_CACHE_SIZE))),
        }
    }
}

/// A cached answer, if it is still fresh.
pub(crate) fn fresh<K, T>(cache: &Mutex<LruCache<K, Timed<T>>>, key: &K, ttl: Duration) -> Option<T>
where
    K: std::hash::Hash + Eq,
    T: Clone,
{
    let mut cache = cache.lock();
    match cache.get(key) {
        Some((fetched, value)) if fetched.elapsed() < ttl => Some(value.clone()),
        Some(_) => {
            cache.pop(key);
            None
        }
        None => None,
    }
}

/// A profile field of another server's answer, if it is a string of a sane length.
fn profile_text(response: &get_profile_information::v1::Response, field: &str) -> Option<String> {
    response
        .get(field)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty() && text.len() <= MAX_PROFILE_FIELD)
        .map(str::to_owned)
}

impl Services {
    /// A user's profile, of this server or (asked of their server, cached for a minute) of
    /// another. `M_NOT_FOUND` for unknown users and servers that cannot be reached; an invalid
    /// answer is `M_UNKNOWN`; neither is remembered.
    pub async fn user_profile(&self, user_id: &UserId) -> Result<Profile> {
        if user_id.server_name() == self.server_name() {
            return self.profile(user_id).await;
        }
        let not_found = || Error::not_found("No such user");
        let cache = &self.federation.queries.profiles;
        if let Some(cached) = fresh(cache, &user_id.to_owned(), PROFILE_TTL) {
            return cached.ok_or_else(not_found);
        }
        let client = self.federation_client()?;
        let limits = RequestLimits::small()
            .with_max_body_bytes(MAX_PROFILE_RESPONSE)
            .with_timeout(PROFILE_TIMEOUT);
        let request = get_profile_information::v1::Request::new(user_id.to_owned());
        let profile = match client.send_with_limits(user_id.server_name(), request, limits).await {
            Ok(response) => {
                let avatar_url =
                    profile_text(&response, "avatar_url").filter(|url| url.starts_with("mxc://"));
                Some(Profile { displayname: profile_text(&response, "displayname"), avatar_url })
            }
            Err(FederationError::Remote { status: StatusCode::NOT_FOUND, .. }) => None,
            Err(error) if error.is_unreachable() => {
                tracing::debug!(%error, "a remote profile could not be fetched");
                return Err(
                    Error::not_found("The user's server could not be reached").with_cause(error)
                );
            }
            Err(error) => {
                tracing::debug!(%error, "a remote profile could not be fetched");
                return Err(error.into());
            }
        };
        cache.lock().put(user_id.to_owned(), (Instant::now(), profile.clone()));
        profile.ok_or_else(not_found)
    }

    /// What this server tells another of one of its users' profile: every field, or only
    /// `field` (`displayname`, `avatar_url`). `M_NOT_FOUND` for users of other servers, unknown
    /// or deactivated users, and fields this server does not keep.
    pub async fn profile_for_server(
        &self,
        user_id: &UserId,
        field: Option<&ProfileFieldName>,
    ) -> Result<Vec<(&'static str, String)>> {
        if user_id.server_name() != self.server_name() {
            return Err(Error::not_found("That user is not of this server"));
        }
        let profile = self.profile(user_id).await?;
        let fields = [("displayname", profile.displayname), ("avatar_url", profile.avatar_url)];
        let wanted = |name: &str| field.is_none_or(|field| field.as_str() == name);
        if field.is_some_and(|field| !fields.iter().any(|(name, _)| *name == field.as_str())) {
            return Err(Error::not_found("This server keeps no such profile field"));
        }
        Ok(fields
            .into_iter()
            .filter(|(name, _)| wanted(name))
            .filter_map(|(name, value)| value.map(|value| (name, value)))
            .collect())
    }

    /// An alias of this server or another, resolved to its room and the servers that know
    /// it (this one first when the alias is local). `M_NOT_FOUND` for unknown aliases and
    /// servers that cannot be reached.
    pub async fn lookup_alias(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name() == self.server_name() {
            let room_id = self.resolve_alias(alias).await?;
            let mut servers = vec![self.owned_server_name()];
            servers.extend(self.room_servers(&room_id).await.unwrap_or_default());
            return Ok((room_id, servers));
        }
        self.resolve_remote_alias(alias).await.map_err(|error| {
            let unreachable = error
                .cause()
                .and_then(|cause| cause.downcast_ref::<FederationError>())
                .is_some_and(FederationError::is_unreachable);
            if unreachable {
                Error::not_found("The alias's server could not be reached")
            } else {
                error
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_profile_fields_are_bounded_strings() {
        let mut response = get_profile_information::v1::Response::new();
        response.set("displayname".to_owned(), Value::String("Ada".to_owned()));
        response.set("avatar_url".to_owned(), Value::from(7));
        assert_eq!(profile_text(&response, "displayname").as_deref(), Some("Ada"));
        assert_eq!(profile_text(&response, "avatar_url"), None);
        response.set("displayname".to_owned(), Value::String("x".repeat(MAX_PROFILE_FIELD + 1)));
        assert_eq!(profile_text(&response, "displayname"), None);
    }

    #[test]
    fn stale_cache_entries_are_dropped() {
        let cache = Mutex::new(crate::bounded::lru(NonZeroUsize::MIN));
        cache.lock().put(1, (Instant::now(), "fresh"));
        assert_eq!(fresh(&cache, &1, Duration::from_secs(60)), Some("fresh"));
        assert_eq!(fresh(&cache, &1, Duration::ZERO), None);
        assert!(cache.lock().is_empty());
    }
}
