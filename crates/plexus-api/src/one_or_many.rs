//! `OneOrMany`: a list that may be written as a single item.
//!
//! HCL writes repeated blocks (`services { } services { }`) and single blocks the same way, and HCL
//! decoders hand a single block over as an object, not a one-element list; Consul accepts both.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A list that also accepts a lone item where the list is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    /// True when no item was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `untagged` would hide the inner error ("did not match any variant"), so decode the
        // shape first and then each item, naming its index in the error.
        let value = serde_json::Value::deserialize(d)?;
        let raw = match value {
            serde_json::Value::Array(items) => items,
            serde_json::Value::Null => Vec::new(),
            other => vec![other],
        };
        raw.into_iter()
            .enumerate()
            .map(|(i, v)| {
                T::deserialize(v).map_err(|e| serde::de::Error::custom(format!("[{i}]: {e}")))
            })
            .collect::<Result<Vec<T>, _>>()
            .map(OneOrMany)
    }
}
