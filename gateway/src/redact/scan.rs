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

use crate::chain::tape::{Kind, Node};

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

/// Scan one resource. `Err` when the text is not one strict JSON object
/// (the strict reader's rules: no duplicated member names at any depth).
pub fn scan<'a>(text: &'a str, rules: &Rules<'_>) -> Result<Scan<'a>, ScanError> {
    let tape = crate::chain::strict::read(text).map_err(|_| ScanError)?;
    scan_node(tape.root(), rules)
}

/// [`scan`] on a resource already on the strict reader's tape.
pub fn scan_node<'a>(node: Node<'_, 'a>, rules: &Rules<'_>) -> Result<Scan<'a>, ScanError> {
    if node.kind() != Kind::Object {
        return Err(ScanError);
    }
    let mut walker = Walker { rules, scan: Scan::default(), top: None };
    let root = Ctx { depth: 0, node: Some(0), meta: false, security: false };
    walker.walk(node, root);
    Ok(walker.scan)
}

/// A resource that is not one strict JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a resource is one strict JSON object")]
pub struct ScanError;

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

/// Money keys: their presence means a financial rewrite may be needed.
const MONEY_KEYS: [&str; 5] = ["amount", "net", "unitPrice", "factor", "adjudication"];

impl<'a> Walker<'_, 'a> {
    fn walk(&mut self, node: Node<'_, 'a>, ctx: Ctx) -> Out<'a> {
        match node.kind() {
            Kind::String => {
                let s = node.str().unwrap_or_default();
                if let Some(trie_node) = ctx.node {
                    for watch in &self.rules.trie.nodes[trie_node as usize].dates {
                        self.scan.dates.push((*watch, s.clone()));
                    }
                }
                Out::Str(s)
            }
            Kind::Array => {
                for (index, item) in node.children().enumerate() {
                    if ctx.depth == 1
                        && let Some(top) = self.top.as_mut()
                    {
                        top.1 = Some(index);
                    }
                    self.walk(item, ctx);
                }
                Out::Other
            }
            Kind::Object => self.object(node, ctx),
            Kind::Number | Kind::True | Kind::False | Kind::Null => Out::Other,
        }
    }

    /// An object: its members walked, then what they make it (a coding, an
    /// identifier, an inline label, a reference).
    fn object(&mut self, node: Node<'_, 'a>, ctx: Ctx) -> Out<'a> {
        let mut system: Option<Cow<'a, str>> = None;
        let mut code: Option<Cow<'a, str>> = None;
        let mut value: Option<Cow<'a, str>> = None;
        let mut reference: Option<Cow<'a, str>> = None;
        let mut url: Option<Cow<'a, str>> = None;
        let mut label_value = false;
        for member in node.children() {
            let key = member.key().unwrap_or_default();
            if ctx.depth == 0 {
                self.scan.members.push(key.clone());
                self.top = Some((key.clone(), None));
            } else if MONEY_KEYS.contains(&key.as_ref()) {
                self.scan.money = true;
            }
            let child = Ctx {
                depth: ctx.depth + 1,
                node: ctx.node.and_then(|n| self.rules.trie.child(n, &key)),
                meta: key == "meta",
                security: ctx.security || (ctx.meta && key == "security"),
            };
            match self.walk(member, child) {
                Out::Str(s) => match (ctx.depth, key.as_ref()) {
                    (0, "resourceType") => self.scan.resource_type = Some(s),
                    (0, "id") => self.scan.id = Some(s),
                    (0, "use") => self.scan.use_ = Some(s),
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
            let is_label = self.rules.labels.matches(system, code);
            if ctx.security {
                if is_label {
                    self.label();
                }
            } else {
                if self.rules.codes.matches(system, code) {
                    self.hit(HitKind::Code);
                }
                if let Some(trie_node) = ctx.node {
                    let markers = &self.rules.trie.nodes[trie_node as usize].markers;
                    if markers.iter().any(|m| self.rules.markers[*m as usize].matches(system, code)) {
                        self.scan.drug_marker = true;
                    }
                }
            }
            if is_label {
                out = Out::Label;
            }
        } else if let Some(value) = value.as_deref()
            && self.rules.programs.matches_identifier(system.as_deref(), value)
        {
            self.hit(HitKind::Program);
        }
        if label_value && url.as_deref() == Some(self.rules.labels.inline_extension.as_str()) {
            if ctx.security {
                self.label();
            } else {
                self.hit(HitKind::Label);
            }
        }
        if let Some(reference) = reference {
            if self.rules.programs.matches_reference(&reference) {
                self.hit(HitKind::Program);
            }
            self.scan.refs.push(reference);
        }
        out
    }
}
