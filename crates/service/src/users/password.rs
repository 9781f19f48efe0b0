//! Password hashing with argon2id, on the blocking pool (it is slow on purpose), at most a
//! few at a time: each hash takes 19 MiB, and a burst of sign-ups or logins must not take the
//! server's memory with it.

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use rhizome_core::{Error, Result};

/// How many password hashes may run at once.
pub const CONCURRENT_HASHES: usize = 2;

/// Hashes a password into a PHC string, waiting for one of `permits`.
pub async fn hash_password(permits: &tokio::sync::Semaphore, password: String) -> Result<String> {
    let _permit = permits.acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| Error::bug(format!("password hashing failed: {error}")))
    })
    .await
    .map_err(Error::internal)?
}

/// Checks a password against a PHC string, waiting for one of `permits`.
pub async fn verify_password(
    permits: &tokio::sync::Semaphore,
    password: String,
    hash: String,
) -> Result<bool> {
    let _permit = permits.acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash)
            .map_err(|error| Error::bug(format!("stored password hash is malformed: {error}")))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(Error::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_only_the_right_password() {
        let permits = tokio::sync::Semaphore::new(CONCURRENT_HASHES);
        let hash = hash_password(&permits, "correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&permits, "correct horse".into(), hash.clone()).await.unwrap());
        assert!(!verify_password(&permits, "wrong horse".into(), hash).await.unwrap());
    }
}
