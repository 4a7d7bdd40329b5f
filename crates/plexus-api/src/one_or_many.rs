//! `OneOrMany`: a list that may be written as a single item.
//!
//! HCL hands a block written once over as an object and the same block written several times
//! (`services { } services { }`) as a list of objects; Consul's JSON accepts both shapes too.
//!
//! The item is decoded straight from the input's own deserializer (no detour through a
//! `serde_json::Value`), so `deny_unknown_fields`, the input's error positions and
//! `serde_path_to_error` paths (`services[1].prot`) all keep working. A lone item has no index in
//! the path (`services.prot`); callers that want `[0]` there add it themselves.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, SeqAccess};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A list that also accepts a lone item where the list is expected.
///
/// Accepted shapes: a list of items, a single object (one item), or `null` (no items). A lone
/// item must be an object; a lone scalar is rejected with an "invalid type" error.
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

    /// The number of items written.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The items, in the order written.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<T> From<Vec<T>> for OneOrMany<T> {
    fn from(items: Vec<T>) -> Self {
        Self(items)
    }
}

impl<'a, T> IntoIterator for &'a OneOrMany<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T> IntoIterator for OneOrMany<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<T: Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

struct OneOrManyVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> de::Visitor<'de> for OneOrManyVisitor<T> {
    type Value = OneOrMany<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object or a list of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The size hint comes from the input; cap it so a hostile hint cannot allocate much.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(OneOrMany(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(|item| OneOrMany(vec![item]))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(OneOrMany::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(OneOrMany::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: String,
        #[serde(default)]
        port: Option<i64>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Holder {
        #[serde(default)]
        items: OneOrMany<Item>,
    }

    fn item(name: &str) -> Item {
        Item {
            name: name.to_owned(),
            port: None,
        }
    }

    fn json_path_error(text: &str) -> (String, String) {
        let mut de = serde_json::Deserializer::from_str(text);
        let err = serde_path_to_error::deserialize::<_, Holder>(&mut de).unwrap_err();
        (err.path().to_string(), err.inner().to_string())
    }

    #[test]
    fn json_accepts_one_many_null_and_absent() {
        let one: Holder = serde_json::from_str(r#"{"items": {"name": "a"}}"#).unwrap();
        assert_eq!(one.items.0, vec![item("a")]);
        let many: Holder =
            serde_json::from_str(r#"{"items": [{"name": "a"}, {"name": "b"}]}"#).unwrap();
        assert_eq!(many.items.0, vec![item("a"), item("b")]);
        let null: Holder = serde_json::from_str(r#"{"items": null}"#).unwrap();
        assert!(null.items.is_empty());
        let absent: Holder = serde_json::from_str("{}").unwrap();
        assert!(absent.items.is_empty());
    }

    #[test]
    fn json_unknown_field_keeps_path_and_position() {
        let (path, msg) =
            json_path_error("{\"items\": [{\"name\": \"a\"},\n {\"name\": \"b\", \"prot\": 1}]}");
        assert_eq!(path, "items[1].prot");
        assert!(msg.contains("unknown field `prot`"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");

        let (path, msg) = json_path_error(r#"{"items": {"name": "a", "prot": 1}}"#);
        assert_eq!(path, "items.prot");
        assert!(msg.contains("unknown field `prot`"), "{msg}");
    }

    #[test]
    fn json_invalid_type_keeps_path() {
        let (path, msg) = json_path_error(r#"{"items": [{"name": "a", "port": "x"}]}"#);
        assert_eq!(path, "items[0].port");
        assert!(msg.contains("invalid type: string \"x\""), "{msg}");
    }

    #[test]
    fn lone_scalar_is_rejected() {
        let (path, msg) = json_path_error(r#"{"items": "a"}"#);
        assert_eq!(path, "items");
        assert!(
            msg.contains("expected an object or a list of objects"),
            "{msg}"
        );
    }

    #[test]
    fn hcl_single_block_is_one_item_and_repeated_blocks_are_many() {
        let one: Holder = hcl::from_str("items {\n  name = \"a\"\n}\n").unwrap();
        assert_eq!(one.items.0, vec![item("a")]);
        let many: Holder =
            hcl::from_str("items {\n  name = \"a\"\n}\nitems {\n  name = \"b\"\n}\n").unwrap();
        assert_eq!(many.items.0, vec![item("a"), item("b")]);
        // An attribute holding a list of objects works too.
        let list: Holder = hcl::from_str("items = [{ name = \"a\" }, { name = \"b\" }]\n").unwrap();
        assert_eq!(list.items.0, vec![item("a"), item("b")]);
    }

    #[test]
    fn hcl_unknown_field_keeps_path() {
        let text = "items {\n  name = \"a\"\n}\nitems {\n  name = \"b\"\n  prot = 1\n}\n";
        let de = hcl::de::Deserializer::from_str(text).unwrap();
        let err = serde_path_to_error::deserialize::<_, Holder>(de).unwrap_err();
        assert_eq!(err.path().to_string(), "items[1].prot");
        assert!(err.inner().to_string().contains("unknown field `prot`"));
    }

    #[test]
    fn serialises_as_a_list() {
        let v = serde_json::to_value(OneOrMany(vec![1, 2])).unwrap();
        assert_eq!(v, serde_json::json!([1, 2]));
    }
}
