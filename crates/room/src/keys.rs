//! The server's ed25519 signing key: generation, encoding on disk and publication.

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::signatures::{Ed25519KeyPair, KeyPair, Signature};

/// The server's signing key and its key ID (`ed25519:<version>`).
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret half.
        f.debug_struct("SigningKey").field("key_id", &self.key_id()).finish_non_exhaustive()
    }
}

/// A signing key file did not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid signing key file: {0}")]
pub struct KeyFileError(String);

impl SigningKey {
    /// Generates a new key with a random version.
    pub fn generate() -> Self {
        let document = Ed25519KeyPair::generate();
        let version = random_version(&document);
        let pair = Ed25519KeyPair::from_der(&document, version)
            .expect("invariant: a freshly generated key parses");
        Self { pair }
    }

    /// Parses the on-disk form: `ed25519 <version> <base64 PKCS#8 document>`.
    pub fn from_file_text(text: &str) -> Result<Self, KeyFileError> {
        let mut parts = text.split_whitespace();
        let (Some("ed25519"), Some(version), Some(document), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KeyFileError("expected `ed25519 <version> <base64 key>`".to_owned()));
        };
        let document = STANDARD_NO_PAD
            .decode(document.trim_end_matches('='))
            .map_err(|error| KeyFileError(error.to_string()))?;
        let pair = Ed25519KeyPair::from_der(&document, version.to_owned())
            .map_err(|error| KeyFileError(error.to_string()))?;
        Ok(Self { pair })
    }

    /// Generates a new key and returns it with its on-disk form.
    pub fn generate_with_file_text() -> (Self, String) {
        let document = Ed25519KeyPair::generate();
        let version = random_version(&document);
        let text = format!("ed25519 {version} {}\n", STANDARD_NO_PAD.encode(&*document));
        let pair = Ed25519KeyPair::from_der(&document, version)
            .expect("invariant: a freshly generated key parses");
        (Self { pair }, text)
    }

    /// The key ID, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    /// The public key, unpadded standard base64 as Matrix publishes it.
    pub fn public_key_base64(&self) -> String {
        STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    /// The key pair, for ruma's signing functions.
    pub fn pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// Signs raw bytes.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.pair.sign(message)
    }
}

/// A key version derived from the public half of the key: `a_` and four URL-safe characters.
fn random_version(document: &[u8]) -> String {
    let public_key = Ed25519KeyPair::from_der(document, String::new())
        .map(|pair| pair.public_key())
        .unwrap_or_default();
    let tail: String = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(&public_key[..6])
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(4)
        .collect();
    format!("a_{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_text_round_trips() {
        let (key, text) = SigningKey::generate_with_file_text();
        let again = SigningKey::from_file_text(&text).unwrap();
        assert_eq!(key.key_id(), again.key_id());
        assert_eq!(key.public_key_base64(), again.public_key_base64());
        assert!(key.key_id().starts_with("ed25519:a_"));
        assert!(!format!("{key:?}").contains(&text.split_whitespace().last().unwrap()[..10]));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(SigningKey::from_file_text("rsa 1 abc").is_err());
        assert!(SigningKey::from_file_text("ed25519 a_x !!!").is_err());
        assert!(SigningKey::from_file_text("").is_err());
    }
}
