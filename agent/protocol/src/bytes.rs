//! Binary payloads inside JSON frames, carried as base64 strings.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes that serialize as a base64 string (a JSON array of numbers would
/// be four times larger).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("invalid base64 payload: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trips_through_json() {
        let original = Bytes((0..=255u8).collect());
        let json = serde_json::to_string(&original).unwrap();
        assert!(json.starts_with('"'), "{json}");
        let back: Bytes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn invalid_base64_is_an_error() {
        let err = serde_json::from_str::<Bytes>("\"not base64!\"").unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }
}
