//! Password hashing with argon2id, on the blocking pool (it is slow on purpose), at most a
//! few at a time: each hash takes its memory cost in RAM, and a burst of sign-ups or logins
//! must not take the server's memory with it.

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use rhizome_core::{Error, Result};

/// How many password hashes may run at once.
pub const CONCURRENT_HASHES: usize = 2;

/// argon2id with 7 MiB of memory and 5 passes: one of the settings OWASP's password storage
/// guidance lists as equally strong as 19 MiB with 2 passes (the library's default, which
/// Rhizome used before), at about the same CPU. A small server's memory is what it is short
/// of: each hash's buffer stays with its thread of the blocking pool for a while after, and a
/// burst of 40 sign-ups held 65 MiB with the default. Hashes made with other settings still
/// verify: a hash names its own.
fn argon2() -> Argon2<'static> {
    let params = Params::new(7 * 1024, 5, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string, waiting for one of `permits`.
pub async fn hash_password(permits: &tokio::sync::Semaphore, password: String) -> Result<String> {
    let _permit = permits.acquire().await.map_err(Error::internal)?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
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
        Ok(argon2().verify_password(password.as_bytes(), &parsed).is_ok())
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

    #[tokio::test]
    async fn hashes_name_their_settings_and_older_ones_still_verify() {
        let permits = tokio::sync::Semaphore::new(CONCURRENT_HASHES);
        let hash = hash_password(&permits, "pw".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{hash}");
        // Made with the library's default settings (19 MiB, 2 passes), as Rhizome did before.
        let salt = SaltString::generate(&mut OsRng);
        let old = Argon2::default().hash_password(b"pw", &salt).unwrap().to_string();
        assert!(old.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{old}");
        assert!(verify_password(&permits, "pw".into(), old.clone()).await.unwrap());
        assert!(!verify_password(&permits, "other".into(), old).await.unwrap());
    }
}
