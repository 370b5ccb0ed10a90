//! Shallow JSON handling for FHIR bodies: a Bundle is read as its top-level
//! members with each `entry` kept as raw JSON text, so policy stages look only
//! at what they need and untouched entries are re-emitted byte for byte.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object read as its members in document order, values left raw.
#[derive(Debug, Default)]
pub struct RawObject<'a> {
    pub members: Vec<(std::borrow::Cow<'a, str>, RawText<'a>)>,
}

/// A member's value as its JSON text (valid JSON: it was read by serde or
/// the strict reader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawText<'a>(&'a str);

impl<'a> RawText<'a> {
    pub fn get(&self) -> &'a str {
        self.0
    }

    /// Text a validating reader already read as one JSON value (the strict
    /// reader's tape).
    pub(crate) fn read_by_reader(text: &'a str) -> RawText<'a> {
        RawText(text)
    }
}

impl<'a> RawObject<'a> {
    /// Parse `text` as one JSON object; anything else is an error.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn get(&self, key: &str) -> Option<RawText<'a>> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A member that is a JSON string, decoded.
    pub fn get_str(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    }

    /// Write the object back, replacing members by `replace` (which returns
    /// `Some(new raw JSON)` to substitute, `Some("")` to drop, `None` to keep).
    pub fn write_with(
        &self,
        out: &mut String,
        mut replace: impl FnMut(&str, &RawText<'a>) -> Option<String>,
    ) {
        out.push('{');
        let mut first = true;
        for (key, value) in &self.members {
            let replaced = replace(key, value);
            let text = match &replaced {
                Some(s) if s.is_empty() => continue,
                Some(s) => s.as_str(),
                None => value.get(),
            };
            if !first {
                out.push(',');
            }
            first = false;
            write_key(out, key);
            out.push(':');
            out.push_str(text);
        }
        out.push('}');
    }
}

/// Add a member at the end of an object just written (by
/// [`RawObject::write_with`]) that the source did not have.
pub fn push_member(out: &mut String, key: &str, raw: &str) {
    debug_assert!(out.ends_with('}'), "push_member after a written object");
    out.pop();
    if !out.ends_with('{') {
        out.push(',');
    }
    write_key(out, key);
    out.push(':');
    out.push_str(raw);
    out.push('}');
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ObjectVisitor<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                // Keys are borrowed from the text unless they hold escapes.
                while let Some(key) = map.next_key_seed(BorrowedKey)? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, RawText(value.get())));
                }
                Ok(RawObject { members })
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// Write a member name as a JSON string. Keys come from valid JSON; one
/// that needs escaping is re-encoded, the usual plain one is copied.
pub fn write_key(out: &mut String, key: &str) {
    if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(key);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(key).unwrap_or_else(|_| "\"\"".into()));
    }
}

/// A member name, borrowed from the input when it has no escapes (serde's
/// own `Cow<str>` always allocates).
struct BorrowedKey;

impl<'de> serde::de::DeserializeSeed<'de> for BorrowedKey {
    type Value = std::borrow::Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for BorrowedKey {
    type Value = std::borrow::Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }
}

/// The `resourceType` of a raw resource, without parsing the rest of it.
pub fn resource_type(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
    }
    serde_json::from_str::<Probe>(raw).ok().and_then(|p| p.resource_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_member_order_and_raw_values() {
        let text = r#"{"resourceType":"Bundle","entry":[{"resource":{"id":"a"}}],"total":3}"#;
        let obj = RawObject::parse(text).unwrap();
        assert_eq!(obj.members.len(), 3);
        assert_eq!(obj.get("entry").unwrap().get(), r#"[{"resource":{"id":"a"}}]"#);
        assert_eq!(obj.get_str("resourceType").as_deref(), Some("Bundle"));
        let mut out = String::new();
        obj.write_with(&mut out, |k, _| (k == "total").then(String::new));
        assert_eq!(out, r#"{"resourceType":"Bundle","entry":[{"resource":{"id":"a"}}]}"#);
    }

    #[test]
    fn escaped_keys_survive() {
        let text = r#"{"a\"b":1}"#;
        let obj = RawObject::parse(text).unwrap();
        let mut out = String::new();
        obj.write_with(&mut out, |_, _| None);
        assert_eq!(out, text);
    }

    #[test]
    fn non_objects_are_refused() {
        assert!(RawObject::parse("[]").is_err());
        assert!(RawObject::parse("{\"a\":").is_err());
        assert!(RawObject::parse("{} trailing").is_err());
    }

    #[test]
    fn probes_resource_type() {
        assert_eq!(resource_type(r#"{"id":"1","resourceType":"Patient"}"#).as_deref(), Some("Patient"));
        assert_eq!(resource_type(r#"{"id":"1"}"#), None);
    }
}
