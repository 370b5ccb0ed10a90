//! One streaming pass over a resource's JSON that collects everything the
//! redaction rules decide on, without building a tree: every coding is
//! tested against the Part 2 code sets (and, under `meta.security`, the
//! labels), every reference and identifier against the Part 2 programs,
//! DS4P inline labels are recognised, the service dates and drug-PA markers
//! the policy tables point at are picked up, and the presence of money is
//! noted. Strings are borrowed from the input where JSON allows.
//!
//! Each Part 2 hit remembers where it is: the top-level element and, when
//! that element is an array, the entry index. That is what partial
//! redaction removes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::codes::CodeSets;
use super::policy::{Labels, Marker, Programs};

/// Where a Part 2 hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    /// A coding in a Part 2 code set.
    Code,
    /// A reference to, or NPI of, a Part 2 program.
    Program,
    /// A Part 2 security label on an element (DS4P inline label, or the
    /// `meta.security` of a contained resource).
    Label,
}

/// A Part 2 hit at `member[index]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit<'a> {
    pub member: Cow<'a, str>,
    pub index: Option<usize>,
    pub kind: HitKind,
}

/// What one pass over a resource found.
#[derive(Debug, Default)]
pub struct Scan<'a> {
    pub resource_type: Option<Cow<'a, str>>,
    pub id: Option<Cow<'a, str>>,
    /// `use` (claims: `claim`, `preauthorization`, ...).
    pub use_: Option<Cow<'a, str>>,
    /// A top-level member appears twice (parsers disagree on which wins).
    pub duplicated: bool,
    /// A Part 2 label in the resource's own `meta.security`.
    pub label: bool,
    pub hits: Vec<Hit<'a>>,
    /// (watch id, value) for every string at a watched date path.
    pub dates: Vec<(u32, Cow<'a, str>)>,
    /// A drug-PA marker matched.
    pub drug_marker: bool,
    /// Money may be present (amounts, prices, adjudications).
    pub money: bool,
    /// Every literal reference (for follow-up decisions inside a Bundle).
    pub refs: Vec<Cow<'a, str>>,
    /// Top-level member names, in order.
    pub members: Vec<Cow<'a, str>>,
}

/// A path trie over element names (arrays are walked through): which
/// strings are service dates and which codings are drug markers.
#[derive(Debug, Default)]
pub struct Trie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    children: Vec<(String, u32)>,
    dates: Vec<u32>,
    markers: Vec<u32>,
}

impl Trie {
    pub fn new() -> Trie {
        Trie { nodes: vec![TrieNode::default()] }
    }

    fn node_for(&mut self, path: &[String]) -> usize {
        let mut node = 0usize;
        for segment in path {
            let found =
                self.nodes[node].children.iter().find(|(s, _)| s == segment).map(|(_, n)| *n as usize);
            node = match found {
                Some(next) => next,
                None => {
                    self.nodes.push(TrieNode::default());
                    let next = self.nodes.len() - 1;
                    self.nodes[node].children.push((segment.clone(), next as u32));
                    next
                }
            };
        }
        node
    }

    /// Watch the strings at `path` as date `watch`.
    pub fn add_date(&mut self, path: &[String], watch: u32) {
        let node = self.node_for(path);
        self.nodes[node].dates.push(watch);
    }

    /// Watch the codings of the CodeableConcept at `path` for marker `marker`.
    pub fn add_marker(&mut self, path: &[String], marker: u32) {
        let mut with_coding = path.to_vec();
        with_coding.push("coding".into());
        let node = self.node_for(&with_coding);
        self.nodes[node].markers.push(marker);
    }

    fn child(&self, node: u32, key: &str) -> Option<u32> {
        self.nodes[node as usize].children.iter().find(|(s, _)| s == key).map(|(_, n)| *n)
    }
}

/// What the scanner tests against.
pub struct Rules<'r> {
    pub codes: &'r CodeSets,
    pub labels: &'r Labels,
    pub programs: &'r Programs,
    pub markers: &'r [Marker],
    pub trie: &'r Trie,
}

/// Scan one resource. `Err` when the text is not one JSON object.
pub fn scan<'a>(text: &'a str, rules: &Rules<'_>) -> Result<Scan<'a>, serde_json::Error> {
    let mut walker = Walker { rules, scan: Scan::default(), top: None };
    let mut de = serde_json::Deserializer::from_str(text);
    let root = Ctx { depth: 0, node: Some(0), meta: false, security: false };
    let out = NodeSeed { w: &mut walker, ctx: root }.deserialize(&mut de)?;
    de.end()?;
    if !matches!(out, Out::Object) {
        return Err(serde::de::Error::custom("a resource is a JSON object"));
    }
    Ok(walker.scan)
}

/// One Bundle entry read in one pass: its `fullUrl`, `search.mode` and the
/// scan of its `resource` (without first cutting the resource out as raw
/// text: that happens only for entries that are rewritten).
#[derive(Debug, Default)]
pub struct EntryScan<'a> {
    pub full_url: Option<Cow<'a, str>>,
    pub mode: Option<Cow<'a, str>>,
    pub resource: Option<Scan<'a>>,
    /// `resource`, `fullUrl` or `search` appears twice.
    pub duplicated: bool,
}

/// Scan one Bundle entry. `Err` when it is not a JSON object or its
/// resource is not one.
pub fn scan_entry<'a>(text: &'a str, rules: &Rules<'_>) -> Result<EntryScan<'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let entry = EntrySeed { rules }.deserialize(&mut de)?;
    de.end()?;
    Ok(entry)
}

struct EntrySeed<'r> {
    rules: &'r Rules<'r>,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = EntryScan<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<EntryScan<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = EntryScan<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Bundle entry")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EntryScan<'de>, A::Error> {
        #[derive(serde::Deserialize)]
        struct Search<'a> {
            #[serde(borrow, default)]
            mode: Option<Cow<'a, str>>,
        }
        let mut entry = EntryScan::default();
        let mut seen_search = false;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key.as_ref() {
                "resource" => {
                    let mut walker = Walker { rules: self.rules, scan: Scan::default(), top: None };
                    let root = Ctx { depth: 0, node: Some(0), meta: false, security: false };
                    let out = map.next_value_seed(NodeSeed { w: &mut walker, ctx: root })?;
                    if !matches!(out, Out::Object) {
                        return Err(serde::de::Error::custom("a resource is a JSON object"));
                    }
                    entry.duplicated |= entry.resource.replace(walker.scan).is_some();
                }
                "fullUrl" => {
                    let url = map.next_value_seed(KeySeed)?;
                    entry.duplicated |= entry.full_url.replace(url).is_some();
                }
                "search" => {
                    entry.duplicated |= std::mem::replace(&mut seen_search, true);
                    entry.mode = map.next_value::<Search<'de>>()?.mode;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(entry)
    }
}

struct Walker<'r, 'a> {
    rules: &'r Rules<'r>,
    scan: Scan<'a>,
    /// The top-level member being walked and its array index.
    top: Option<(Cow<'a, str>, Option<usize>)>,
}

impl<'a> Walker<'_, 'a> {
    fn hit(&mut self, kind: HitKind) {
        match &self.top {
            Some((member, index)) => self.scan.hits.push(Hit { member: member.clone(), index: *index, kind }),
            // Not inside any member: the resource as a whole.
            None => self.scan.label = true,
        }
    }

    /// A Part 2 label under some `meta.security`: the resource's own, or a
    /// contained resource's (a hit in `contained`).
    fn label(&mut self) {
        if self.top.as_ref().is_some_and(|(member, _)| member == "meta") {
            self.scan.label = true;
        } else {
            self.hit(HitKind::Label);
        }
    }
}

#[derive(Clone, Copy)]
struct Ctx {
    /// 0 for the resource, +1 per object member.
    depth: u32,
    node: Option<u32>,
    /// Directly under a `meta` member.
    meta: bool,
    /// Under a `meta.security`.
    security: bool,
}

enum Out<'a> {
    Str(Cow<'a, str>),
    /// A coding that is a Part 2 label.
    Label,
    Object,
    Other,
}

struct NodeSeed<'w, 'r, 'a> {
    w: &'w mut Walker<'r, 'a>,
    ctx: Ctx,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = Out<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Out<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> NodeSeed<'_, '_, 'de> {
    fn string(self, s: Cow<'de, str>) -> Out<'de> {
        if let Some(node) = self.ctx.node {
            for watch in &self.w.rules.trie.nodes[node as usize].dates {
                self.w.scan.dates.push((*watch, s.clone()));
            }
        }
        Out::Str(s)
    }
}

/// Money keys: their presence means a financial rewrite may be needed.
const MONEY_KEYS: [&str; 5] = ["amount", "net", "unitPrice", "factor", "adjudication"];

impl<'de> Visitor<'de> for NodeSeed<'_, '_, 'de> {
    type Value = Out<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Out<'de>, E> {
        Ok(self.string(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Out<'de>, E> {
        Ok(self.string(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Out<'de>, E> {
        Ok(self.string(Cow::Owned(v)))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Out<'de>, E> {
        Ok(Out::Other)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Out<'de>, E> {
        Ok(Out::Other)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Out<'de>, E> {
        Ok(Out::Other)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Out<'de>, E> {
        Ok(Out::Other)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Out<'de>, E> {
        Ok(Out::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Out<'de>, A::Error> {
        let NodeSeed { w, ctx } = self;
        let mut index = 0usize;
        loop {
            if ctx.depth == 1
                && let Some(top) = w.top.as_mut()
            {
                top.1 = Some(index);
            }
            match seq.next_element_seed(NodeSeed { w: &mut *w, ctx })? {
                Some(_) => index += 1,
                None => break,
            }
        }
        Ok(Out::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Out<'de>, A::Error> {
        let NodeSeed { w, ctx } = self;
        let mut system: Option<Cow<'de, str>> = None;
        let mut code: Option<Cow<'de, str>> = None;
        let mut value: Option<Cow<'de, str>> = None;
        let mut reference: Option<Cow<'de, str>> = None;
        let mut url: Option<Cow<'de, str>> = None;
        let mut label_value = false;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if ctx.depth == 0 {
                if w.scan.members.contains(&key) {
                    w.scan.duplicated = true;
                }
                w.scan.members.push(key.clone());
                w.top = Some((key.clone(), None));
            } else if MONEY_KEYS.contains(&key.as_ref()) {
                w.scan.money = true;
            }
            let child = Ctx {
                depth: ctx.depth + 1,
                node: ctx.node.and_then(|n| w.rules.trie.child(n, &key)),
                meta: key == "meta",
                security: ctx.security || (ctx.meta && key == "security"),
            };
            let out = map.next_value_seed(NodeSeed { w: &mut *w, ctx: child })?;
            match out {
                Out::Str(s) => match (ctx.depth, key.as_ref()) {
                    (0, "resourceType") => w.scan.resource_type = Some(s),
                    (0, "id") => w.scan.id = Some(s),
                    (0, "use") => w.scan.use_ = Some(s),
                    (_, "system") => system = Some(s),
                    (_, "code") => code = Some(s),
                    (_, "value") => value = Some(s),
                    (_, "reference") => reference = Some(s),
                    (_, "url") => url = Some(s),
                    _ => {}
                },
                Out::Label if key == "valueCoding" => label_value = true,
                _ => {}
            }
        }
        let mut out = Out::Object;
        if let Some(code) = code.as_deref() {
            let system = system.as_deref();
            let is_label = w.rules.labels.matches(system, code);
            if ctx.security {
                if is_label {
                    w.label();
                }
            } else {
                if w.rules.codes.matches(system, code) {
                    w.hit(HitKind::Code);
                }
                if let Some(node) = ctx.node {
                    let markers = &w.rules.trie.nodes[node as usize].markers;
                    if markers.iter().any(|m| w.rules.markers[*m as usize].matches(system, code)) {
                        w.scan.drug_marker = true;
                    }
                }
            }
            if is_label {
                out = Out::Label;
            }
        } else if let Some(value) = value.as_deref()
            && w.rules.programs.matches_identifier(system.as_deref(), value)
        {
            w.hit(HitKind::Program);
        }
        if label_value && url.as_deref() == Some(w.rules.labels.inline_extension.as_str()) {
            if ctx.security {
                w.label();
            } else {
                w.hit(HitKind::Label);
            }
        }
        if let Some(reference) = reference {
            if w.rules.programs.matches_reference(&reference) {
                w.hit(HitKind::Program);
            }
            w.scan.refs.push(reference);
        }
        Ok(out)
    }
}

/// Object keys, borrowed when they have no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}
