//! Fuzz the strict JSON reader every upstream body passes first
//! (`chain::strict::read` and the tape it leaves), differentially against
//! serde_json and a duplicate-detecting serde reader.
//!
//! Invariants: never a panic; a body is accepted exactly when it is one
//! JSON value without a member name twice in any object (names compared
//! after decoding escapes), except where serde_json's own limits differ
//! (its recursion limit, numbers beyond f64); a refused duplicate really is
//! one; the tape describes the value serde_json reads (kinds, spans, decoded
//! strings and names, children), and the shallow `RawObject` reader and its
//! writer agree with it.
#![no_main]

use std::collections::HashSet;
use std::fmt;

use fhirwall::chain::strict::{self, MAX_DEPTH, StrictError};
use fhirwall::chain::tape::{Kind, Node};
use fhirwall::fhir::bundle::RawObject;
use libfuzzer_sys::fuzz_target;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let reference = serde_json::from_str::<Value>(text);
    // Only serde_json's own limits may set it apart from the strict reader.
    let serde_limit = |e: &serde_json::Error| {
        let m = e.to_string();
        m.contains("recursion limit") || m.contains("number out of range")
    };
    let no_dups = {
        let mut de = serde_json::Deserializer::from_str(text);
        NoDuplicates.deserialize(&mut de).and_then(|()| de.end())
    };
    match strict::read(text) {
        Ok(tape) => {
            match &no_dups {
                Ok(()) => {}
                Err(e) => assert!(serde_limit(e), "strict accepted what serde refuses ({e}): {text:?}"),
            }
            let root = tape.root();
            check_node(root, text, 0);
            if let Ok(reference) = &reference {
                assert_eq!(&rebuild(root), reference, "the tape reads another value than serde_json");
            }
            if root.kind() == Kind::Object {
                check_raw_object(root, text);
            }
        }
        Err(StrictError::DuplicateKey { name, at }) => {
            assert!(no_dups.is_err(), "duplicate {name:?} at {at} not found by serde: {text:?}");
            assert_eq!(text.as_bytes().get(at), Some(&b'"'), "duplicate reported off a name");
        }
        Err(error) => {
            // Refused as invalid or too deep: serde_json refuses it too,
            // unless the nesting is what strict refuses and serde allows.
            if let Ok(value) = &reference {
                assert!(
                    matches!(error, StrictError::TooDeep) && depth(value) > MAX_DEPTH,
                    "strict refused ({error}) what serde_json reads: {text:?}"
                );
            }
        }
    }
});

/// Nesting depth of containers (a scalar at the top is depth 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Every node: its span is valid JSON of its kind, strings and names decode,
/// children tile the container.
fn check_node(node: Node<'_, '_>, text: &str, level: usize) {
    assert!(level <= MAX_DEPTH + 1, "tape deeper than the limit");
    let raw = node.raw();
    let first = raw.as_bytes().first().copied();
    let expected = match node.kind() {
        Kind::Object => b'{',
        Kind::Array => b'[',
        Kind::String => b'"',
        Kind::True => b't',
        Kind::False => b'f',
        Kind::Null => b'n',
        Kind::Number => first.filter(|b| *b == b'-' || b.is_ascii_digit()).unwrap_or(b'?'),
    };
    assert_eq!(first, Some(expected), "{:?} node spans {raw:?}", node.kind());
    // The span lies inside the text (raw() is a slice of it).
    let start = raw.as_ptr() as usize - text.as_ptr() as usize;
    assert!(start + raw.len() <= text.len());
    if node.kind() == Kind::String {
        let decoded = node.str().expect("a string node decodes");
        assert_eq!(serde_json::from_str::<String>(raw).ok().as_deref(), Some(&*decoded), "string {raw:?}");
    } else {
        assert!(node.str().is_none());
        assert!(serde_json::from_str::<IgnoredAny>(raw).is_ok(), "span {raw:?} is not one JSON value");
    }
    let mut names = HashSet::new();
    for child in node.children() {
        let key = child.key();
        match node.kind() {
            Kind::Object => {
                let key = key.expect("an object member has a name").into_owned();
                assert!(child.key_is(&key), "key_is disagrees with key for {key:?}");
                assert_eq!(node.get(&key).map(|n| n.raw()), Some(child.raw()), "get({key:?})");
                assert!(names.insert(key.clone()), "duplicate name {key:?} on the tape");
            }
            Kind::Array => assert!(key.is_none(), "an array item with a name"),
            _ => panic!("a scalar with children"),
        }
        // Children lie inside their container, in order.
        let child_start = child.raw().as_ptr() as usize - text.as_ptr() as usize;
        assert!(child_start > start && child_start + child.raw().len() < start + raw.len());
        check_node(child, text, level + 1);
    }
}

/// The value the tape describes.
fn rebuild(node: Node<'_, '_>) -> Value {
    match node.kind() {
        Kind::Object => {
            let mut map = Map::new();
            for child in node.children() {
                map.insert(child.key().expect("named").into_owned(), rebuild(child));
            }
            Value::Object(map)
        }
        Kind::Array => Value::Array(node.children().map(rebuild).collect()),
        Kind::String => Value::String(node.str().expect("decodes").into_owned()),
        Kind::True => Value::Bool(true),
        Kind::False => Value::Bool(false),
        Kind::Null => Value::Null,
        Kind::Number => serde_json::from_str(node.raw()).expect("a number serde reads"),
    }
}

/// The shallow reader sees the members the tape has, and writing the
/// object back gives strict JSON of the same value.
fn check_raw_object(root: Node<'_, '_>, text: &str) {
    let Ok(object) = RawObject::parse(text) else {
        // serde's limits only (see above).
        return;
    };
    let from_tape = root.object().expect("an object node");
    fn pairs(o: &RawObject<'_>) -> Vec<(String, String)> {
        o.members.iter().map(|(k, v)| (k.to_string(), v.get().to_owned())).collect()
    }
    assert_eq!(pairs(&object), pairs(&from_tape), "RawObject and the tape disagree");
    let mut out = String::new();
    object.write_with(&mut out, |_, _| None);
    strict::check(&out).unwrap_or_else(|e| panic!("RawObject wrote {out:?}: {e}"));
    if let (Ok(a), Ok(b)) = (serde_json::from_str::<Value>(&out), serde_json::from_str::<Value>(text)) {
        assert_eq!(a, b, "RawObject changed the value");
    }
}

/// Reads any JSON value, refusing a member name that appears twice in one
/// object (compared decoded, as serde hands names over).
struct NoDuplicates;

impl<'de> DeserializeSeed<'de> for NoDuplicates {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicates)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate member {key:?}")));
            }
            map.next_value_seed(NoDuplicates)?;
        }
        Ok(())
    }
}
