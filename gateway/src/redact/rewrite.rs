//! Rewriting a resource: partial Part 2 redaction and financial stripping.
//! Only the top-level members that change are parsed into a
//! `serde_json::Value`; every other member is copied as its raw bytes.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value};

use super::policy::{Financial, FinancialType, Link, RedactedLabel, RedactionRule};
use crate::chain::strict;
use crate::chain::tape::{Kind, Node};
use crate::fhir::bundle::RawObject;

/// What Part 2 redaction removes, from the scan's hits.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Array members: the entry indices to remove.
    pub entries: HashMap<String, BTreeSet<usize>>,
    /// Members removed as a whole (a hit in a non-array member).
    pub members: HashSet<String>,
}

/// Why a resource cannot be partially redacted (it is withheld instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unredactable(pub &'static str);

/// The result of a rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub text: String,
    /// Part 2 elements were removed (REDACTED label added).
    pub redacted: bool,
    /// Financial elements were removed.
    pub stripped: bool,
}

/// The parts of the policy a rewrite uses.
pub struct Rewrite<'p> {
    pub part2: Option<(&'p Plan, &'p RedactionRule)>,
    pub financial: Option<(&'p FinancialType, &'p Financial)>,
    pub redacted_label: &'p RedactedLabel,
}

/// Top-level members, raw until touched.
struct Members<'a> {
    object: RawObject<'a>,
    /// Parsed (and possibly changed) members; `None` = removed.
    edited: HashMap<String, Option<Value>>,
    /// Members rewritten as raw JSON text without a tree.
    raw_edits: HashMap<String, String>,
}

impl<'a> Members<'a> {
    fn has(&self, name: &str) -> bool {
        match self.edited.get(name) {
            Some(v) => v.is_some(),
            None => self.object.get(name).is_some(),
        }
    }

    /// The member as a mutable `Value` (parsed on first use).
    fn get(&mut self, name: &str) -> Result<Option<&mut Value>, Unredactable> {
        if !self.edited.contains_key(name) {
            let Some(raw) = self.object.get(name) else { return Ok(None) };
            let value: Value =
                serde_json::from_str(raw.get()).map_err(|_| Unredactable("unreadable member"))?;
            self.edited.insert(name.to_owned(), Some(value));
        }
        Ok(self.edited.get_mut(name).and_then(Option::as_mut))
    }

    fn remove(&mut self, name: &str) -> bool {
        let present = self.has(name);
        if present {
            self.edited.insert(name.to_owned(), None);
        }
        present
    }

    fn write(&self, extra: Option<(&str, &Value)>) -> String {
        let mut out =
            String::with_capacity(self.object.members.iter().map(|(_, v)| v.get().len() + 16).sum());
        out.push('{');
        let mut first = true;
        let mut push = |out: &mut String, key: &str, text: &str| {
            if !first {
                out.push(',');
            }
            first = false;
            crate::fhir::bundle::write_key(out, key);
            out.push(':');
            out.push_str(text);
        };
        let mut extra = extra;
        for (key, raw) in &self.object.members {
            match self.edited.get(key.as_ref()) {
                Some(None) => {}
                Some(Some(value)) => push(&mut out, key, &value.to_string()),
                None => match self.raw_edits.get(key.as_ref()) {
                    Some(text) => push(&mut out, key, text),
                    None => push(&mut out, key, raw.get()),
                },
            }
            // A new member goes right after `id` (where FHIR puts `meta`).
            if key == "id"
                && let Some((name, value)) = extra.take()
            {
                push(&mut out, name, &value.to_string());
            }
        }
        if let Some((name, value)) = extra {
            push(&mut out, name, &value.to_string());
        }
        out.push('}');
        out
    }
}

/// Apply a rewrite to a resource's text.
/// `node`: the same resource on the strict reader's tape, when it is there.
pub fn rewrite(text: &str, node: Option<Node<'_, '_>>, rw: &Rewrite<'_>) -> Result<Rewritten, Unredactable> {
    let object = match node {
        Some(node) => node.object(),
        None => RawObject::parse(text).ok(),
    };
    let object = object.ok_or(Unredactable("not a JSON object"))?;
    let mut m = Members { object, edited: HashMap::new(), raw_edits: HashMap::new() };
    let mut redacted = false;
    if let Some((plan, rule)) = rw.part2 {
        redact(&mut m, plan, rule)?;
        redacted = true;
    }
    let mut stripped = false;
    if let Some((ft, fin)) = rw.financial {
        stripped = strip(&mut m, ft, fin)?;
    }
    if !redacted && !stripped {
        return Ok(Rewritten { text: text.to_owned(), redacted, stripped });
    }
    let mut new_meta = None;
    if redacted {
        // The narrative may describe what was removed.
        m.remove("text");
        match m.get("meta")? {
            Some(Value::Object(meta)) => add_label(meta, rw.redacted_label),
            Some(_) => return Err(Unredactable("meta is not an object")),
            None => {
                let mut meta = Map::new();
                add_label(&mut meta, rw.redacted_label);
                new_meta = Some(Value::Object(meta));
            }
        }
    }
    if stripped
        && let Some((_, fin)) = rw.financial
        && let Some(Value::Object(meta)) = m.get("meta")?
        && let Some(Value::Array(profiles)) = meta.get_mut("profile")
    {
        for profile in profiles.iter_mut() {
            if let Some(p) = profile.as_str() {
                let (base, version) = p.split_once('|').map_or((p, None), |(b, v)| (b, Some(v)));
                if let Some(basis) = fin.profiles.get(base) {
                    *profile = Value::String(match version {
                        Some(v) => format!("{basis}|{v}"),
                        None => basis.clone(),
                    });
                }
            }
        }
    }
    let text = m.write(new_meta.as_ref().map(|v| ("meta", v)));
    Ok(Rewritten { text, redacted, stripped })
}

/// `part2 = "redact"` for a record that references withheld Part 2
/// records: every Reference to one of `targets` (`Type/id`) is removed with
/// its display — an array element goes whole, a list or object left empty
/// goes — the narrative and notes go, and the `REDACTED` label is added. `None` when
/// a top-level element would go entirely (the record's own link to it, such
/// as `medicationReference`, cannot be removed safely: withhold it instead).
pub fn remove_references(
    resource: &str,
    targets: &std::collections::HashSet<String>,
    label: &RedactedLabel,
) -> Option<String> {
    fn names_target(value: &Value, targets: &std::collections::HashSet<String>) -> bool {
        value
            .get("reference")
            .and_then(Value::as_str)
            .and_then(super::normalize_reference)
            .is_some_and(|key| targets.contains(key))
    }
    /// Remove what names a target below `value`; `true` when `value` itself goes.
    fn prune(value: &mut Value, targets: &std::collections::HashSet<String>) -> bool {
        if names_target(value, targets) {
            return true;
        }
        match value {
            Value::Object(map) => {
                let before = map.len();
                map.retain(|_, member| !prune(member, targets));
                before > 0 && map.is_empty()
            }
            Value::Array(items) => {
                let before = items.len();
                items.retain_mut(|item| !prune(item, targets));
                before > 0 && items.is_empty()
            }
            _ => false,
        }
    }
    let mut value: Value = serde_json::from_str(resource).ok()?;
    let map = value.as_object_mut()?;
    let mut emptied = Vec::new();
    for (key, member) in map.iter_mut() {
        if key == "meta" || key == "contained" {
            continue;
        }
        // The member is itself the link (e.g. `medicationReference`).
        if names_target(member, targets) {
            return None;
        }
        if prune(member, targets) {
            emptied.push(key.clone());
        }
    }
    for key in emptied {
        map.remove(&key);
    }
    // Free text may describe what was withheld.
    map.remove("text");
    map.remove("note");
    let meta = map.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else { return None };
    add_label(meta, label);
    serde_json::to_string(&value).ok()
}

fn add_label(meta: &mut Map<String, Value>, label: &RedactedLabel) {
    let security = meta.entry("security").or_insert_with(|| Value::Array(Vec::new()));
    if !security.is_array() {
        *security = Value::Array(Vec::new());
    }
    let Value::Array(codings) = security else { return };
    let present = codings.iter().any(|c| {
        c.get("system").and_then(Value::as_str) == Some(label.system.as_str())
            && c.get("code").and_then(Value::as_str) == Some(label.code.as_str())
    });
    if !present {
        let mut coding = Map::new();
        coding.insert("system".into(), Value::String(label.system.clone()));
        coding.insert("code".into(), Value::String(label.code.clone()));
        if let Some(display) = &label.display {
            coding.insert("display".into(), Value::String(display.clone()));
        }
        codings.push(Value::Object(coding));
    }
}

// ---------------------------------------------------------------- Part 2

/// Integer keys referenced by a link field: an integer or a list of them.
fn numbers(value: Option<&Value>) -> Result<Vec<i64>, Unredactable> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Number(n)) => {
            n.as_i64().map(|n| vec![n]).ok_or(Unredactable("a sequence is not an integer"))
        }
        Some(Value::Array(items)) => {
            items.iter().map(|i| i.as_i64().ok_or(Unredactable("a sequence is not an integer"))).collect()
        }
        Some(_) => Err(Unredactable("a sequence is not an integer")),
    }
}

fn entries(m: &mut Members<'_>, member: &str) -> Result<usize, Unredactable> {
    match m.get(member)? {
        None => Ok(0),
        Some(Value::Array(items)) => Ok(items.len()),
        Some(_) => Err(Unredactable("a removable element is not a list")),
    }
}

fn redact(m: &mut Members<'_>, plan: &Plan, rule: &RedactionRule) -> Result<(), Unredactable> {
    let mut removed: HashMap<String, BTreeSet<usize>> = plan.entries.clone();
    for (member, indices) in &removed {
        let len = entries(m, member)?;
        if indices.iter().any(|i| *i >= len) {
            return Err(Unredactable("hit outside its list"));
        }
    }
    follow_links(m, rule, &mut removed)?;
    for member in &rule.nonempty {
        let len = entries(m, member)?;
        if len > 0 && removed.get(member).is_some_and(|gone| gone.len() >= len) {
            return Err(Unredactable("every entry of a required list is Part 2"));
        }
    }
    let gone_keys = removed_numbers(m, rule, &removed)?;
    remove_entries(m, &removed)?;
    for member in &plan.members {
        m.remove(member);
    }
    unlink(m, rule, &gone_keys)
}

/// Entries removed, per member.
type Removed = HashMap<String, BTreeSet<usize>>;
/// The sequence numbers of removed entries, per (member, field) a link points at.
type GoneKeys = HashMap<(String, String), HashSet<i64>>;

/// Follow the sequence links until nothing more goes: an entry that points
/// at a removed one goes (`remove`), and what a removed entry owns goes (`owns`).
fn follow_links(
    m: &mut Members<'_>,
    rule: &RedactionRule,
    removed: &mut Removed,
) -> Result<(), Unredactable> {
    loop {
        let mut changed = false;
        for link in &rule.links {
            changed |= follow_link(m, link, removed)?;
        }
        if !changed {
            return Ok(());
        }
    }
}

fn follow_link(m: &mut Members<'_>, link: &Link, removed: &mut Removed) -> Result<bool, Unredactable> {
    let mut changed = false;
    let gone_targets: HashSet<i64> = match removed.get(&link.to_member) {
        Some(gone) if !gone.is_empty() => {
            let Some(Value::Array(targets)) = m.get(&link.to_member)? else { return Ok(false) };
            let mut keys = HashSet::new();
            for i in gone {
                keys.extend(numbers(targets[*i].get(&link.to_field))?);
            }
            keys
        }
        _ => HashSet::new(),
    };
    let from_len = entries(m, &link.from_member)?;
    let Some(Value::Array(from)) = m.get(&link.from_member)? else { return Ok(false) };
    let mut remove_from = Vec::new();
    let mut owned = HashSet::new();
    let from_removed = removed.get(&link.from_member).cloned().unwrap_or_default();
    for (j, entry) in from.iter().enumerate().take(from_len) {
        let refs = numbers(entry.get(&link.from_field))?;
        if from_removed.contains(&j) {
            if link.owns {
                owned.extend(refs);
            }
        } else if link.remove && refs.iter().any(|r| gone_targets.contains(r)) {
            remove_from.push(j);
        }
    }
    for j in remove_from {
        changed |= removed.entry(link.from_member.clone()).or_default().insert(j);
    }
    if !owned.is_empty()
        && let Some(Value::Array(targets)) = m.get(&link.to_member)?
    {
        let mut hit = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            if numbers(target.get(&link.to_field))?.iter().any(|k| owned.contains(k)) {
                hit.push(i);
            }
        }
        for i in hit {
            changed |= removed.entry(link.to_member.clone()).or_default().insert(i);
        }
    }
    Ok(changed)
}

/// Numbers of removed targets, per link target, read before anything is removed.
fn removed_numbers(
    m: &mut Members<'_>,
    rule: &RedactionRule,
    removed: &Removed,
) -> Result<GoneKeys, Unredactable> {
    let mut gone_keys = GoneKeys::new();
    for link in &rule.links {
        let key = (link.to_member.clone(), link.to_field.clone());
        if gone_keys.contains_key(&key) {
            continue;
        }
        let mut keys = HashSet::new();
        if let Some(gone) = removed.get(&link.to_member)
            && let Some(Value::Array(targets)) = m.get(&link.to_member)?
        {
            for i in gone {
                keys.extend(numbers(targets[*i].get(&link.to_field))?);
            }
        }
        gone_keys.insert(key, keys);
    }
    Ok(gone_keys)
}

/// Remove the entries; a list left empty goes as a whole.
fn remove_entries(m: &mut Members<'_>, removed: &Removed) -> Result<(), Unredactable> {
    for (member, gone) in removed {
        if gone.is_empty() {
            continue;
        }
        let Some(Value::Array(items)) = m.get(member)? else { continue };
        let mut index = 0;
        items.retain(|_| {
            let keep = !gone.contains(&index);
            index += 1;
            keep
        });
        if items.is_empty() {
            m.remove(member);
        }
    }
    Ok(())
}

/// Kept entries no longer point at removed ones.
fn unlink(m: &mut Members<'_>, rule: &RedactionRule, gone_keys: &GoneKeys) -> Result<(), Unredactable> {
    for link in &rule.links {
        let Some(keys) = gone_keys.get(&(link.to_member.clone(), link.to_field.clone())) else { continue };
        if keys.is_empty() {
            continue;
        }
        let Some(Value::Array(from)) = m.get(&link.from_member)? else { continue };
        for entry in from.iter_mut() {
            let Value::Object(entry) = entry else { continue };
            match entry.get_mut(&link.from_field) {
                Some(Value::Array(refs)) => {
                    refs.retain(|r| r.as_i64().is_none_or(|k| !keys.contains(&k)));
                    if refs.is_empty() {
                        entry.remove(&link.from_field);
                    }
                }
                Some(Value::Number(n)) if n.as_i64().is_some_and(|k| keys.contains(&k)) => {
                    entry.remove(&link.from_field);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- financial

fn strip(m: &mut Members<'_>, ft: &FinancialType, fin: &Financial) -> Result<bool, Unredactable> {
    let mut changed = false;
    for member in &ft.remove {
        changed |= m.remove(member);
    }
    for member in &ft.walk {
        if !m.edited.contains_key(member.as_str()) {
            // Untouched so far: strip its raw text, no tree.
            let Some(raw) = m.object.get(member) else { continue };
            let edit = if member == "adjudication" {
                clean_adjudications_raw(raw.get(), fin)?
            } else {
                strip_lines_raw(raw.get(), fin)?
            };
            match edit {
                None => {}
                Some(text) if text.is_empty() || text == "[]" => {
                    m.remove(member);
                    changed = true;
                }
                Some(text) => {
                    m.raw_edits.insert(member.clone(), text);
                    changed = true;
                }
            }
            continue;
        }
        let Some(value) = m.get(member)? else { continue };
        let member_changed = if member == "adjudication" {
            match value {
                Value::Array(adjudications) => clean_adjudications(adjudications, fin),
                _ => return Err(Unredactable("adjudication is not a list")),
            }
        } else {
            strip_lines(value, fin)
        };
        let empty = matches!(value, Value::Array(items) if items.is_empty());
        if empty {
            m.remove(member);
        }
        changed |= member_changed;
    }
    // Contained claims data is stripped the same way.
    if let Some(Value::Array(contained)) = m.get("contained")? {
        for resource in contained.iter_mut() {
            changed |= strip_value(resource, fin);
        }
    }
    Ok(changed)
}

/// Strip a whole resource held as a `Value` (contained resources).
pub fn strip_value(resource: &mut Value, fin: &Financial) -> bool {
    let Some(ft) = resource.get("resourceType").and_then(Value::as_str).and_then(|t| fin.types.get(t)) else {
        return false;
    };
    let Value::Object(map) = resource else { return false };
    let mut changed = false;
    for member in &ft.remove {
        changed |= map.remove(member).is_some();
    }
    for member in &ft.walk {
        let Some(value) = map.get_mut(member) else { continue };
        changed |= if member == "adjudication" {
            match value {
                Value::Array(adjudications) => clean_adjudications(adjudications, fin),
                _ => false,
            }
        } else {
            strip_lines(value, fin)
        };
        if matches!(value, Value::Array(items) if items.is_empty()) {
            map.remove(member);
        }
    }
    changed
}

/// Items (and their detail/subDetail levels): prices go, adjudications are cleaned.
fn strip_lines(value: &mut Value, fin: &Financial) -> bool {
    match value {
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| strip_lines(item, fin) | changed),
        Value::Object(map) => {
            let mut changed = false;
            for element in &fin.line_elements {
                changed |= map.remove(element).is_some();
            }
            if let Some(Value::Array(adjudications)) = map.get_mut("adjudication") {
                changed |= clean_adjudications(adjudications, fin);
                if adjudications.is_empty() {
                    map.remove("adjudication");
                }
            }
            for level in ["detail", "subDetail"] {
                if let Some(inner) = map.get_mut(level) {
                    changed |= strip_lines(inner, fin);
                }
            }
            changed
        }
        _ => false,
    }
}

/// Remove amounts (and values of monetary categories); drop entries left
/// with nothing but their category.
fn clean_adjudications(adjudications: &mut Vec<Value>, fin: &Financial) -> bool {
    let mut changed = false;
    for adjudication in adjudications.iter_mut() {
        let Value::Object(map) = adjudication else { continue };
        changed |= map.remove("amount").is_some();
        let monetary =
            map.get("category").and_then(|c| c.get("coding")).and_then(Value::as_array).is_some_and(
                |codings| {
                    codings.iter().any(|c| {
                        c.get("code").and_then(Value::as_str).is_some_and(|code| {
                            fin.is_monetary(c.get("system").and_then(Value::as_str), code)
                        })
                    })
                },
            );
        if monetary {
            changed |= map.remove("value").is_some();
        }
    }
    let before = adjudications.len();
    adjudications.retain(|a| match a {
        Value::Object(map) => map.keys().any(|k| k != "category" && k != "id"),
        _ => true,
    });
    changed || adjudications.len() != before
}

// ---------------------------------------------------------------- financial, raw

const UNREADABLE: Unredactable = Unredactable("unreadable claims data");

/// Items (a list or one item, with their detail/subDetail levels) without
/// prices and money; `None` when nothing changes. Works on the raw text,
/// read once onto a tape: kept parts are copied, never parsed into a tree.
fn strip_lines_raw(raw: &str, fin: &Financial) -> Result<Option<String>, Unredactable> {
    let tape = strict::read(raw).map_err(|_| UNREADABLE)?;
    let mut out = String::with_capacity(raw.len());
    Ok(write_lines(tape.root(), fin, &mut out)?.then_some(out))
}

/// Write an item list or item stripped into `out`; whether anything changed.
fn write_lines(node: Node<'_, '_>, fin: &Financial, out: &mut String) -> Result<bool, Unredactable> {
    match node.kind() {
        Kind::Array => {
            out.push('[');
            let mut changed = false;
            for (i, item) in node.children().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                changed |= write_lines(item, fin, out)?;
            }
            out.push(']');
            Ok(changed)
        }
        Kind::Object => {
            let mut changed = false;
            out.push('{');
            let mut first = true;
            for member in node.children() {
                let key = member.key().unwrap_or_default();
                if fin.line_elements.iter().any(|e| *e == key) {
                    changed = true;
                    continue;
                }
                let mark = out.len();
                if !first {
                    out.push(',');
                }
                crate::fhir::bundle::write_key(out, &key);
                out.push(':');
                let member_changed = match key.as_ref() {
                    "adjudication" => write_adjudications(member, fin, out)?,
                    "detail" | "subDetail" => write_lines(member, fin, out)?,
                    _ => {
                        out.push_str(member.raw());
                        false
                    }
                };
                // An emptied list goes with its member.
                if member_changed && out.ends_with("[]") {
                    out.truncate(mark);
                    changed = true;
                    continue;
                }
                changed |= member_changed;
                first = false;
            }
            out.push('}');
            Ok(changed)
        }
        _ => {
            out.push_str(node.raw());
            Ok(false)
        }
    }
}

/// An adjudication list without amounts (and values of monetary
/// categories); entries left with only their category go. `Some("")` when
/// nothing is left, `None` when nothing changes.
fn clean_adjudications_raw(raw: &str, fin: &Financial) -> Result<Option<String>, Unredactable> {
    let tape = strict::read(raw).map_err(|_| UNREADABLE)?;
    let mut out = String::with_capacity(raw.len());
    let changed = write_adjudications(tape.root(), fin, &mut out)?;
    Ok(match (changed, out.as_str()) {
        (false, _) => None,
        (true, "[]") => Some(String::new()),
        (true, _) => Some(out),
    })
}

/// Write the cleaned adjudication list into `out`; whether anything changed.
fn write_adjudications(list: Node<'_, '_>, fin: &Financial, out: &mut String) -> Result<bool, Unredactable> {
    if list.kind() != Kind::Array {
        return Err(UNREADABLE);
    }
    out.push('[');
    let (mut changed, mut written) = (false, 0);
    for entry in list.children() {
        if entry.kind() != Kind::Object {
            if written > 0 {
                out.push(',');
            }
            out.push_str(entry.raw());
            written += 1;
            continue;
        }
        let monetary =
            entry.get("value").is_some() && entry.get("category").is_some_and(|c| is_monetary(c, fin));
        let drop_key = |k: &str| k == "amount" || (monetary && k == "value");
        let keys: Vec<_> = entry.children().map(|m| m.key().unwrap_or_default()).collect();
        let keeps = keys.iter().any(|k| k != "category" && k != "id" && !drop_key(k));
        if !keeps {
            changed = true;
            continue;
        }
        if written > 0 {
            out.push(',');
        }
        written += 1;
        if keys.iter().any(|k| drop_key(k)) {
            changed = true;
            out.push('{');
            let mut first = true;
            for (key, member) in keys.iter().zip(entry.children()) {
                if drop_key(key) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                crate::fhir::bundle::write_key(out, key);
                out.push(':');
                out.push_str(member.raw());
            }
            out.push('}');
        } else {
            out.push_str(entry.raw());
        }
    }
    out.push(']');
    Ok(changed)
}

/// Whether an adjudication category (a CodeableConcept) names a monetary
/// category. A category of another shape is not one.
fn is_monetary(category: Node<'_, '_>, fin: &Financial) -> bool {
    /// A string member (`Some(None)`: absent or null; `None`: not a string).
    fn string<'a>(node: Option<Node<'_, 'a>>) -> Option<Option<std::borrow::Cow<'a, str>>> {
        match node {
            None => Some(None),
            Some(n) if n.kind() == Kind::Null => Some(None),
            Some(n) => n.str().map(Some),
        }
    }
    let codings = match category.get("coding") {
        _ if category.kind() != Kind::Object => return false,
        None => return false,
        Some(c) if c.kind() == Kind::Array => c,
        Some(_) => return false,
    };
    let mut found = false;
    for coding in codings.children() {
        if coding.kind() != Kind::Object {
            return false;
        }
        let (Some(system), Some(code)) = (string(coding.get("system")), string(coding.get("code"))) else {
            return false;
        };
        found |= code.as_deref().is_some_and(|code| fin.is_monetary(system.as_deref(), code));
    }
    found
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    #[test]
    fn references_to_withheld_records_go_with_their_display() {
        let label = RedactedLabel { system: "s".into(), code: "REDACTED".into(), display: None };
        let targets: std::collections::HashSet<String> = ["Condition/sud".to_owned()].into();
        let text = r#"{"resourceType":"Encounter","id":"e","text":{"div":"for SUD"},"subject":{"reference":"Patient/p"},"reasonReference":[{"reference":"Condition/sud","display":"Opioid use disorder"},{"reference":"Condition/flu"}],"diagnosis":[{"condition":{"reference":"http://x/fhir/Condition/sud/_history/2","display":"OUD"}}]}"#;
        let out = remove_references(text, &targets, &label).unwrap();
        assert!(!out.contains("sud") && !out.contains("Opioid") && !out.contains("OUD"), "{out}");
        assert!(out.contains("Condition/flu") && out.contains("REDACTED"), "{out}");
        // The record's own top-level link cannot go: withheld instead.
        let dispense = r#"{"resourceType":"MedicationDispense","id":"d","medicationReference":{"reference":"Condition/sud"}}"#;
        assert_eq!(remove_references(dispense, &targets, &label), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw stripper and the tree stripper agree on every claim of the dataset.
    #[test]
    fn raw_and_tree_stripping_agree() {
        let policies = super::super::policy::Policies::builtin().unwrap();
        let fin = &policies.financial;
        let dataset = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dataset/payer.ndjson"),
        )
        .unwrap();
        let mut compared = 0;
        for line in dataset.lines() {
            let mut tree: Value = serde_json::from_str(line).unwrap();
            let Some(ft) = tree["resourceType"].as_str().and_then(|t| fin.types.get(t)).cloned() else {
                continue;
            };
            let rw = Rewrite {
                part2: None,
                financial: Some((&ft, fin)),
                redacted_label: &policies.labels.redacted,
            };
            let from_text = rewrite(line, None, &rw).unwrap();
            // Read from the strict reader's tape, the rewrite is the same.
            let tape = crate::chain::strict::read(line).unwrap();
            assert_eq!(rewrite(line, Some(tape.root()), &rw).unwrap(), from_text);
            let raw: Value = serde_json::from_str(&from_text.text).unwrap();
            strip_value(&mut tree, fin);
            // The profile rewrite is the rewrite's, not strip_value's.
            let mut raw = raw;
            raw["meta"]["profile"] = tree["meta"]["profile"].clone();
            assert_eq!(raw, tree, "{line}");
            compared += 1;
        }
        assert!(compared > 1000);
    }
}
