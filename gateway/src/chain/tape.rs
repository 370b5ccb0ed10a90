//! The tape the strict reader leaves: every JSON value of a body as a slot
//! (its kind, where it lies, and — for a member — where its name lies), in
//! document order, each container followed by its contents. The stages use
//! it to find a Bundle's entries, an entry's resource and a resource's
//! members without reading the bytes again; only the strings they compare
//! are looked at.
//!
//! A tape only comes from [`super::strict::read`], so everything on it is
//! strict JSON without duplicate member names.

use std::borrow::Cow;

use crate::fhir::bundle::{RawObject, RawText};

/// What a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    True,
    False,
    Null,
}

/// One value on the tape.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// Byte span of the value (strings with their quotes).
    pub(super) start: u32,
    pub(super) end: u32,
    /// Byte span of the member name inside its quotes (0..0 in arrays and
    /// at the top).
    pub(super) key_start: u32,
    pub(super) key_end: u32,
    /// Index of the first slot after this value's contents.
    pub(super) after: u32,
    pub(super) kind: Kind,
    /// The member name holds escapes.
    pub(super) key_escaped: bool,
    /// A string value holds escapes.
    pub(super) escaped: bool,
}

/// A validated body and its values.
pub struct Tape<'a> {
    text: &'a str,
    slots: Vec<Slot>,
}

impl<'a> Tape<'a> {
    pub(super) fn new(text: &'a str, slots: Vec<Slot>) -> Tape<'a> {
        Tape { text, slots }
    }

    /// The top-level value.
    pub fn root(&self) -> Node<'_, 'a> {
        Node { text: self.text, slots: &self.slots, index: 0 }
    }
}

/// One value of a [`Tape`]; cheap to copy. `'t` is the tape's borrow, `'a`
/// the text's: what a node hands out borrows the text, not the tape.
#[derive(Clone, Copy)]
pub struct Node<'t, 'a> {
    text: &'a str,
    slots: &'t [Slot],
    index: usize,
}

impl std::fmt::Debug for Node<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({:?})", self.raw())
    }
}

impl<'t, 'a> Node<'t, 'a> {
    fn slot(&self) -> &'t Slot {
        &self.slots[self.index]
    }

    pub fn kind(&self) -> Kind {
        self.slot().kind
    }

    /// The value's JSON text, exactly as the upstream wrote it.
    pub fn raw(&self) -> &'a str {
        let slot = self.slot();
        &self.text[slot.start as usize..slot.end as usize]
    }

    /// The value, when it is a string, decoded.
    pub fn str(&self) -> Option<Cow<'a, str>> {
        let slot = self.slot();
        if slot.kind != Kind::String {
            return None;
        }
        let raw = self.raw();
        if slot.escaped {
            serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&raw[1..raw.len() - 1]))
        }
    }

    /// The member name this value is held under (`None` in arrays and at
    /// the top), decoded.
    pub fn key(&self) -> Option<Cow<'a, str>> {
        let slot = self.slot();
        if slot.key_start == 0 {
            return None;
        }
        let raw = &self.text[slot.key_start as usize..slot.key_end as usize];
        if slot.key_escaped {
            let quoted = &self.text[slot.key_start as usize - 1..slot.key_end as usize + 1];
            serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(raw))
        }
    }

    /// Whether the member name is `name` (without decoding when it has no
    /// escapes).
    pub fn key_is(&self, name: &str) -> bool {
        let slot = self.slot();
        if slot.key_escaped {
            self.key().as_deref() == Some(name)
        } else {
            slot.key_start != 0 && &self.text[slot.key_start as usize..slot.key_end as usize] == name
        }
    }

    /// The values an object or array holds, in order (none for scalars).
    pub fn children(&self) -> Children<'t, 'a> {
        let slot = self.slot();
        let next = match slot.kind {
            Kind::Object | Kind::Array => self.index + 1,
            _ => slot.after as usize,
        };
        Children { text: self.text, slots: self.slots, next, end: slot.after as usize }
    }

    /// An object's member named `name`.
    pub fn get(&self, name: &str) -> Option<Node<'t, 'a>> {
        if self.kind() != Kind::Object {
            return None;
        }
        self.children().find(|child| child.key_is(name))
    }

    /// An object's member that is a string, decoded.
    pub fn get_str(&self, name: &str) -> Option<Cow<'a, str>> {
        self.get(name)?.str()
    }

    /// An object as its members with their raw values, without reading it
    /// again. `None` when the node is not an object.
    pub fn object(&self) -> Option<RawObject<'a>> {
        if self.kind() != Kind::Object {
            return None;
        }
        let members = self
            .children()
            .map(|m| (m.key().unwrap_or_default(), RawText::read_by_reader(m.raw())))
            .collect();
        Some(RawObject { members })
    }
}

/// The values inside an object or array.
pub struct Children<'t, 'a> {
    text: &'a str,
    slots: &'t [Slot],
    next: usize,
    end: usize,
}

impl<'t, 'a> Iterator for Children<'t, 'a> {
    type Item = Node<'t, 'a>;

    fn next(&mut self) -> Option<Node<'t, 'a>> {
        if self.next >= self.end {
            return None;
        }
        let node = Node { text: self.text, slots: self.slots, index: self.next };
        self.next = self.slots[self.next].after as usize;
        Some(node)
    }
}

#[cfg(test)]
mod tests {
    use super::super::strict::read;
    use super::*;

    #[test]
    fn finds_members_entries_and_spans() {
        let text = r#" {"resourceType":"Bundle","entry":[{"fullUrl":"u1","resource":{"id":"a","n":[1,2]}},{"resource":{"id":"b\u0021"}}],"total":2} "#;
        let tape = read(text).unwrap();
        let root = tape.root();
        assert_eq!(root.kind(), Kind::Object);
        assert_eq!(root.get_str("resourceType").as_deref(), Some("Bundle"));
        assert_eq!(root.get("total").map(|n| n.raw()), Some("2"));
        let entries: Vec<Node<'_, '_>> = root.get("entry").unwrap().children().collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].get_str("fullUrl").as_deref(), Some("u1"));
        assert_eq!(entries[0].get("resource").unwrap().raw(), r#"{"id":"a","n":[1,2]}"#);
        assert_eq!(entries[1].get("resource").unwrap().get_str("id").as_deref(), Some("b!"));
        let keys: Vec<String> = root.children().map(|c| c.key().unwrap().into_owned()).collect();
        assert_eq!(keys, ["resourceType", "entry", "total"]);
        assert!(root.get("missing").is_none());
        assert!(entries[0].get("fullUrl").unwrap().children().next().is_none());
    }

    #[test]
    fn escaped_names_are_compared_decoded() {
        let tape = read(r#"{"a\u0062":{"c":[]},"x":"\"q\""}"#).unwrap();
        let root = tape.root();
        assert_eq!(root.get("ab").unwrap().raw(), r#"{"c":[]}"#);
        assert_eq!(root.get("ab").unwrap().get("c").unwrap().kind(), Kind::Array);
        assert_eq!(root.get_str("x").as_deref(), Some("\"q\""));
    }

    #[test]
    fn scalars_and_empty_containers() {
        for (text, kind) in [
            ("1", Kind::Number),
            ("\"s\"", Kind::String),
            ("null", Kind::Null),
            ("[]", Kind::Array),
            ("{}", Kind::Object),
        ] {
            let tape = read(text).unwrap();
            assert_eq!(tape.root().kind(), kind);
            assert_eq!(tape.root().raw(), text);
            assert_eq!(tape.root().children().count(), 0);
        }
    }
}
