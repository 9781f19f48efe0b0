//! Rate limits: token buckets per action and key (a user ID or a client address). Addresses
//! live only in memory, only as long as their bucket is not full, and are never logged.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rhizome_core::{
    Error, Result,
    config::{RateLimit, RateLimitsConfig},
};

/// What is being limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A login attempt.
    Login,
    /// A completed registration.
    Registration,
    /// A check of a registration token's validity.
    RegistrationTokenValidity,
    /// Sending an event, per user.
    Message,
    /// Sending an event, per client address.
    MessagePerAddress,
    /// Restarting, sending or cancelling a delayed event with an access token, per user.
    DelayedEventManagement,
    /// Restarting, sending or cancelling a delayed event by its ID alone, per client address.
    DelayedEventManagementPerAddress,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets for every action and key.
pub struct RateLimiter {
    config: RateLimitsConfig,
    buckets: Mutex<HashMap<(Action, String), Bucket>>,
}

impl RateLimiter {
    /// Limits as configured.
    pub fn new(config: RateLimitsConfig) -> Self {
        Self { config, buckets: Mutex::new(HashMap::new()) }
    }

    fn limit(&self, action: Action) -> RateLimit {
        match action {
            Action::Login => self.config.login,
            Action::Registration => self.config.registration,
            Action::RegistrationTokenValidity => self.config.registration_token_validity,
            Action::Message => self.config.message,
            Action::MessagePerAddress => self.config.message_per_address,
            Action::DelayedEventManagement => self.config.delayed_event_management,
            Action::DelayedEventManagementPerAddress => {
                self.config.delayed_event_management_per_address
            }
        }
    }

    /// Takes one token for `key`, or fails with `M_LIMIT_EXCEEDED` and when to retry.
    pub fn check(&self, action: Action, key: &str) -> Result<()> {
        self.take(&[(action, key)], true)
    }

    /// Fails with `M_LIMIT_EXCEEDED` if `key` has no token left, without taking one (for the
    /// steps before an action that is only counted once it is done).
    pub fn check_without_taking(&self, action: Action, key: &str) -> Result<()> {
        self.take(&[(action, key)], false)
    }

    /// Sending an event: limited per user and per client address. A refusal by either takes
    /// nothing from the other.
    pub fn check_sending(&self, user_id: &str, client_key: &str) -> Result<()> {
        self.take(&[(Action::Message, user_id), (Action::MessagePerAddress, client_key)], true)
    }

    /// Checks every bucket; takes a token from each (if `take`) only when all have one.
    fn take(&self, keys: &[(Action, &str)], take: bool) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 100_000 {
            // Drop buckets that have refilled: they carry no information.
            buckets.retain(|(action, _), bucket| {
                let limit = self.limit(*action);
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * limit.per_second
                    < f64::from(limit.burst)
            });
        }
        for (action, key) in keys {
            let limit = self.limit(*action);
            let bucket = buckets
                .entry((*action, (*key).to_owned()))
                .or_insert(Bucket { tokens: f64::from(limit.burst), updated: now });
            let refilled =
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * limit.per_second;
            bucket.tokens = refilled.min(f64::from(limit.burst));
            bucket.updated = now;
            if bucket.tokens < 1.0 {
                let wait = if limit.per_second > 0.0 {
                    (1.0 - bucket.tokens) / limit.per_second
                } else {
                    3600.0
                };
                return Err(Error::limit_exceeded(Duration::from_secs_f64(wait.max(0.001))));
            }
        }
        if take {
            for (action, key) in keys {
                if let Some(bucket) = buckets.get_mut(&(*action, (*key).to_owned())) {
                    bucket.tokens -= 1.0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_retry_time() {
        let limiter = RateLimiter::new(RateLimitsConfig {
            enabled: true,
            login: RateLimit { per_second: 0.5, burst: 3 },
            ..RateLimitsConfig::default()
        });
        for _ in 0..3 {
            limiter.check(Action::Login, "1.2.3.4").unwrap();
        }
        let error = limiter.check(Action::Login, "1.2.3.4").unwrap_err();
        assert_eq!(error.matrix_kind().unwrap().errcode().to_string(), "M_LIMIT_EXCEEDED");
        // Another key has its own bucket.
        limiter.check(Action::Login, "5.6.7.8").unwrap();
    }

    #[test]
    fn looking_takes_nothing_and_sending_is_limited_per_address_too() {
        let limiter = RateLimiter::new(RateLimitsConfig {
            enabled: true,
            registration: RateLimit { per_second: 0.001, burst: 1 },
            message: RateLimit { per_second: 0.001, burst: 10 },
            message_per_address: RateLimit { per_second: 0.001, burst: 3 },
            ..RateLimitsConfig::default()
        });
        for _ in 0..5 {
            limiter.check_without_taking(Action::Registration, "1.2.3.4").unwrap();
        }
        limiter.check(Action::Registration, "1.2.3.4").unwrap();
        limiter.check_without_taking(Action::Registration, "1.2.3.4").unwrap_err();

        // Three users behind one address share its bucket; each still has their own.
        limiter.check_sending("@a:x", "10.0.0.1").unwrap();
        limiter.check_sending("@b:x", "10.0.0.1").unwrap();
        limiter.check_sending("@c:x", "10.0.0.1").unwrap();
        let error = limiter.check_sending("@d:x", "10.0.0.1").unwrap_err();
        assert_eq!(error.matrix_kind().unwrap().errcode().to_string(), "M_LIMIT_EXCEEDED");
        // The refusal took nothing from @d's own bucket: all ten are still there, sent from
        // fresh addresses (three each).
        for index in 0..10 {
            limiter.check_sending("@d:x", &format!("10.0.1.{}", index / 3)).unwrap();
        }
        limiter.check_sending("@d:x", "10.0.2.1").unwrap_err();
    }

    #[test]
    fn disabled_limits_allow_everything() {
        let limiter =
            RateLimiter::new(RateLimitsConfig { enabled: false, ..RateLimitsConfig::default() });
        for _ in 0..1000 {
            limiter.check(Action::Message, "@a:x").unwrap();
        }
    }
}
