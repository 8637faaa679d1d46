//! bincode 1.3 helpers matching fidius' wire format: little-endian, fixed-width
//! integers, `u64` lengths, trailing bytes allowed (what `bincode::serialize` and
//! `bincode::deserialize` do).
//!
//! Decoding is bounded by the input length: a length prefix claiming more bytes
//! than the input holds fails instead of allocating.

use bincode::Options;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A bincode encode or decode failure, with bincode's explanation.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[error("{0}")]
pub struct WireError(pub String);

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .allow_trailing_bytes()
        .with_limit(limit)
}

/// Encodes `value` exactly as `bincode::serialize` 1.3 does.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, WireError> {
    bincode::serialize(value).map_err(|e| WireError(e.to_string()))
}

/// Appends the encoding of `value` to `out` (no intermediate allocation).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    bincode::serialize_into(out, value).map_err(|e| WireError(e.to_string()))
}

/// Decodes a `T` from untrusted bytes; never allocates more than `bytes` could justify.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    options(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|e| WireError(e.to_string()))
}

/// The payload of a `-3` (PLUGIN_ERROR) status, as fidius encodes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePluginError {
    /// Machine-readable code, e.g. `"NOT_FOUND"`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Optional structured details as JSON text.
    pub details: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_bincode_default_functions() {
        let value = ("world".to_string(), 42i64, vec![1u8, 2, 3]);
        let ours = encode(&value).unwrap();
        assert_eq!(ours, bincode::serialize(&value).unwrap());
        // u64 length prefix, fixed-width little-endian integers.
        assert_eq!(&ours[..8], &5u64.to_le_bytes());
        let back: (String, i64, Vec<u8>) = decode(&ours).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn trailing_bytes_are_allowed() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.extend_from_slice(b"junk");
        assert_eq!(decode::<u32>(&bytes).unwrap(), 7);
    }

    #[test]
    fn lying_length_prefix_fails_without_allocating() {
        // A Vec<u8> claiming u64::MAX / 2 bytes, followed by 3 bytes.
        let mut bytes = (u64::MAX / 2).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode::<Vec<String>>(&bytes).is_err());
    }

    #[test]
    fn plugin_error_round_trip() {
        let e = WirePluginError {
            code: "E".into(),
            message: "m".into(),
            details: Some("{}".into()),
        };
        assert_eq!(decode::<WirePluginError>(&encode(&e).unwrap()).unwrap(), e);
    }
}
