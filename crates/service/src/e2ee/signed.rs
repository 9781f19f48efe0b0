//! Signed JSON as encryption keys use it: parsing into canonical JSON, the stored form, and
//! checking one ed25519 signature with ruma's signature functions.

use base64::{
    Engine,
    alphabet::STANDARD,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use rhizome_core::{Error, Result};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, SigningKeyAlgorithm,
    signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes},
};
use serde_json::value::RawValue;

/// Unpadded (or padded) standard base64, as keys and signatures are written.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Parses a JSON object into canonical JSON; `M_BAD_JSON` naming `what` otherwise.
pub(crate) fn canonical_object(raw: &RawValue, what: &str) -> Result<CanonicalJsonObject> {
    match serde_json::from_str::<CanonicalJsonValue>(raw.get()) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        _ => Err(Error::bad_json(format!("{what} must be a JSON object in canonical form"))),
    }
}

/// The stored form of a signed object: canonical JSON without `unsigned`.
pub(crate) fn stored_form(mut object: CanonicalJsonObject) -> String {
    object.remove("unsigned");
    CanonicalJsonValue::Object(object).to_string()
}

/// The signature `signer` made with `key_id` on the object, if present.
pub(crate) fn signature_of<'a>(
    object: &'a CanonicalJsonObject,
    signer: &str,
    key_id: &str,
) -> Option<&'a str> {
    match object.get("signatures")? {
        CanonicalJsonValue::Object(signatures) => match signatures.get(signer)? {
            CanonicalJsonValue::Object(by_key) => match by_key.get(key_id)? {
                CanonicalJsonValue::String(signature) => Some(signature),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The signatures `signer` made on the object, by key ID.
pub(crate) fn signatures_by(object: &CanonicalJsonObject, signer: &str) -> Vec<(String, String)> {
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Vec::new();
    };
    let Some(CanonicalJsonValue::Object(by_key)) = signatures.get(signer) else {
        return Vec::new();
    };
    by_key
        .iter()
        .filter_map(|(key_id, signature)| match signature {
            CanonicalJsonValue::String(signature) => Some((key_id.clone(), signature.clone())),
            _ => None,
        })
        .collect()
}

/// Whether `signature` is a valid ed25519 signature of the object (its signed part: without
/// `signatures` and `unsigned`) by the unpadded base64 `public_key`.
pub(crate) fn verify(object: &CanonicalJsonObject, public_key: &str, signature: &str) -> bool {
    let (Ok(public_key), Ok(signature)) = (BASE64.decode(public_key), BASE64.decode(signature))
    else {
        return false;
    };
    let Ok(canonical) = to_canonical_json_string_for_signing(object) else { return false };
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &public_key,
        &signature,
        canonical.as_bytes(),
    )
    .is_ok()
}

/// Whether the object carries a valid signature by `signer` with the ed25519 key `public_key`
/// under the key ID `ed25519:<key_name>`.
pub(crate) fn is_signed_by(
    object: &CanonicalJsonObject,
    signer: &str,
    key_name: &str,
    public_key: &str,
) -> bool {
    signature_of(object, signer, &format!("ed25519:{key_name}"))
        .is_some_and(|signature| verify(object, public_key, signature))
}

/// Whether a string is an ed25519 public key in base64.
pub(crate) fn is_ed25519_key(key: &str) -> bool {
    BASE64.decode(key).is_ok_and(|bytes| bytes.len() == 32)
}

#[cfg(test)]
mod tests {
    use ruma::signatures::Ed25519KeyPair;
    use serde_json::json;

    use super::*;

    fn signed(pair: &Ed25519KeyPair, value: serde_json::Value) -> CanonicalJsonObject {
        let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
        ruma::signatures::sign_json("@a:x", pair, &mut object).unwrap();
        object
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let pair = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "DEV".into()).unwrap();
        let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(pair.public_key());
        let mut object = signed(&pair, json!({ "a": 1, "unsigned": { "x": 1 } }));
        assert!(is_ed25519_key(&public));
        assert!(is_signed_by(&object, "@a:x", "DEV", &public));
        assert!(!is_signed_by(&object, "@a:x", "OTHER", &public));
        assert!(!is_signed_by(&object, "@b:x", "DEV", &public));
        // `unsigned` is not covered; the rest is.
        object.insert("unsigned".into(), CanonicalJsonValue::Bool(true));
        assert!(is_signed_by(&object, "@a:x", "DEV", &public));
        object.insert("a".into(), CanonicalJsonValue::Bool(true));
        assert!(!is_signed_by(&object, "@a:x", "DEV", &public));
        assert!(!verify(&object, "not base64!", "sig"));
    }

    #[test]
    fn only_canonical_objects_parse() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        assert!(canonical_object(&raw("{\"b\":1,\"a\":[true]}"), "x").is_ok());
        for bad in ["[1]", "\"text\"", "{\"a\":1.5}"] {
            assert!(canonical_object(&raw(bad), "x").is_err(), "{bad}");
        }
        let object = canonical_object(&raw("{\"b\":1,\"a\":2,\"unsigned\":{}}"), "x").unwrap();
        assert_eq!(stored_form(object), "{\"a\":2,\"b\":1}");
    }
}
