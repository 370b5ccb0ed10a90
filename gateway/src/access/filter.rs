//! The response filter (defense in depth): every resource that leaves
//! fhirwall is checked against the caller's visible set, whatever the
//! upstream did with the narrowing parameters.
//!
//! Per resource, only what the decision needs is parsed: `resourceType`,
//! `id`, and the top-level members that hold patient links (the policy
//! table's element paths) plus `contained`. Kept Bundle entries are re-emitted
//! byte for byte; only Groups are rebuilt (members filtered).
//!
//! The rules (see `policies/generate_patient_compartment.py`):
//! - Patient: its id must be visible.
//! - Compartment types: at least one owner link names a visible patient, and
//!   no owner or participant link names a hidden one. An owner link that
//!   cannot be checked (`#contained`, another server, a logical identifier)
//!   drops the resource. Payer-unsafe links are ignored both ways.
//! - `follows` (Provenance.target): a non-Patient target makes the resource
//!   visible only when that target is kept in the same response.
//! - Group: only the caller's own attribution Groups, members filtered to
//!   visible, active entries, narrative and counts removed.
//! - Reference types pass; every other type is dropped.
//! - `contained`: a contained Patient, Group, unlisted type or nested
//!   `contained` drops the container; a contained compartment resource may
//!   not name a hidden patient (it inherits the container's patient
//!   otherwise).
//! - A resource with a duplicated `resourceType` or `id` is dropped (parsers
//!   disagree on which one wins).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::Scope;
use super::attribution::{managing_organization, member_active, member_patient, today_utc};
use super::policy::{Links, Policy, TypeRule};
use super::refs::{RefResolver, Target};
use crate::chain::tape::{Kind, Node};
use crate::fhir::bundle::RawObject;

/// Deepest Bundle-in-Bundle nesting looked into; deeper entries are dropped.
const MAX_NESTING: usize = 3;

pub use crate::chain::disclosure::Reason;

/// The decision on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep as is; the patients it belongs to.
    Keep(Vec<String>),
    Drop(Reason),
    /// Keep this rebuilt text instead (a Group with members filtered).
    Rewrite {
        text: String,
        members_removed: u32,
    },
}

/// The parts of a resource a decision reads.
#[derive(Debug, Default)]
pub struct Probe<'a> {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// Top-level members that hold links (and `contained`), raw.
    pub links: Vec<(String, &'a str)>,
    /// `resourceType` or `id` appeared twice.
    pub duplicated: bool,
}

impl<'a> Probe<'a> {
    pub fn parse(text: &'a str, policy: &Policy) -> Result<Probe<'a>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let probe = ProbeSeed { policy }.deserialize(&mut de)?;
        de.end()?;
        Ok(probe)
    }

    /// The parts of a resource already on the strict reader's tape (no
    /// duplicate members there).
    pub fn from_node(node: Node<'_, 'a>, policy: &Policy) -> Probe<'a> {
        let mut probe = Probe::default();
        for member in node.children() {
            let Some(key) = member.key() else { continue };
            match key.as_ref() {
                "resourceType" => probe.resource_type = member.str().map(Cow::into_owned),
                "id" => probe.id = Some(member.str().map(Cow::into_owned).unwrap_or_default()),
                name if policy.is_link_member(name) => probe.links.push((key.into_owned(), member.raw())),
                _ => {}
            }
        }
        // A resourceType that is not a string is unreadable, as in `parse`.
        if node.get("resourceType").is_some_and(|t| t.kind() != Kind::String) {
            probe.duplicated = true;
        }
        probe
    }

    fn member<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'a str> + 'b {
        self.links.iter().filter(move |(n, _)| n == name).map(|(_, v)| *v)
    }
}

struct ProbeSeed<'p> {
    policy: &'p Policy,
}

enum Key {
    ResourceType,
    Id,
    Link(String),
    Other,
}

struct KeySeed<'p> {
    policy: &'p Policy,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match v {
            "resourceType" => Key::ResourceType,
            "id" => Key::Id,
            name if self.policy.is_link_member(name) => Key::Link(name.to_owned()),
            _ => Key::Other,
        })
    }
}

impl<'de, 'p> DeserializeSeed<'de> for ProbeSeed<'p> {
    type Value = Probe<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Probe<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ProbeSeed<'_> {
    type Value = Probe<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a FHIR resource")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Probe<'de>, M::Error> {
        let mut probe = Probe::default();
        while let Some(key) = map.next_key_seed(KeySeed { policy: self.policy })? {
            match key {
                Key::ResourceType => {
                    let value: String = map.next_value()?;
                    probe.duplicated |= probe.resource_type.replace(value).is_some();
                }
                Key::Id => {
                    let value: Value = map.next_value()?;
                    let id = value.as_str().map(str::to_owned).unwrap_or_default();
                    probe.duplicated |= probe.id.replace(id).is_some();
                }
                Key::Link(name) => {
                    let value: &'de RawValue = map.next_value()?;
                    probe.links.push((name, value.get()));
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(probe)
    }
}

/// One Bundle entry: the probed resource, its search mode, and duplicate
/// checks, read in one pass (the resource is probed where it stands).
#[derive(Default)]
struct EntryProbe<'a> {
    resource: Option<Probe<'a>>,
    mode: Option<String>,
    duplicated: bool,
}

struct EntrySeed<'p> {
    policy: &'p Policy,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = EntryProbe<'de>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<EntryProbe<'de>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = EntryProbe<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Bundle entry")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<EntryProbe<'de>, M::Error> {
        let mut out = EntryProbe::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "resource" => {
                    let probe = map.next_value_seed(ProbeSeed { policy: self.policy })?;
                    out.duplicated |= out.resource.replace(probe).is_some();
                }
                "search" => {
                    #[derive(serde::Deserialize)]
                    struct Search {
                        mode: Option<String>,
                    }
                    let search: Search = map.next_value()?;
                    out.mode = search.mode;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// The raw `resource` of an entry (only Groups and nested Bundles need it).
fn entry_resource_text(entry: &str) -> Option<&str> {
    RawObject::parse(entry).ok()?.get("resource").map(|v| v.get())
}

/// Checks resources against one caller's scope.
pub struct Checker<'s> {
    pub scope: &'s Scope,
    pub policy: &'s Policy,
    pub refs: &'s RefResolver,
    today: String,
}

impl<'s> Checker<'s> {
    pub fn new(scope: &'s Scope, policy: &'s Policy, refs: &'s RefResolver) -> Checker<'s> {
        Checker { scope, policy, refs, today: today_utc() }
    }

    fn hidden(&self, patient: &str) -> Option<Reason> {
        if self.scope.is_opted_out(patient) {
            Some(Reason::OptOut)
        } else if !self.scope.is_visible(patient) {
            Some(Reason::Attribution)
        } else {
            None
        }
    }

    /// One standalone resource (a read, a history version outside a Bundle).
    pub fn resource(&self, text: &str) -> Verdict {
        match Probe::parse(text, self.policy) {
            Ok(probe) => self.verdict(text, &probe, None, 0),
            Err(_) => Verdict::Drop(Reason::Unlinked),
        }
    }

    /// The verdict on a probed resource. `kept`: `Type/id` of the resources
    /// kept so far in the same response (for `follows` links).
    fn verdict(
        &self,
        text: &str,
        probe: &Probe<'_>,
        kept: Option<&HashSet<String>>,
        depth: usize,
    ) -> Verdict {
        if probe.duplicated {
            return Verdict::Drop(Reason::Unlinked);
        }
        let Some(resource_type) = probe.resource_type.as_deref() else {
            return Verdict::Drop(Reason::Unlinked);
        };
        let verdict = match self.policy.rule(resource_type) {
            TypeRule::Patient => match probe.id.as_deref() {
                Some(id) => match self.hidden(id) {
                    Some(reason) => Verdict::Drop(reason),
                    None => Verdict::Keep(vec![id.to_owned()]),
                },
                None => Verdict::Drop(Reason::Unlinked),
            },
            TypeRule::Group => return self.group(text),
            TypeRule::Reference => Verdict::Keep(Vec::new()),
            TypeRule::Compartment(links) => self.compartment(probe, links, kept),
            TypeRule::Unlisted if resource_type == "Bundle" => return self.nested_bundle(text, depth),
            TypeRule::Unlisted => Verdict::Drop(Reason::Unlinked),
        };
        if let Verdict::Keep(_) = verdict
            && let Err(reason) = self.contained(probe)
        {
            return Verdict::Drop(reason);
        }
        verdict
    }

    fn compartment(&self, probe: &Probe<'_>, links: &Links, kept: Option<&HashSet<String>>) -> Verdict {
        let mut patients: Vec<String> = Vec::new();
        let mut followed = false;
        for path in &links.owner {
            let Some(references) = self.references(probe, path) else {
                return Verdict::Drop(Reason::Unlinked);
            };
            let follows = links.follows.contains(path);
            for reference in &references {
                match self.refs.resolve(reference) {
                    Target::Patient(id) => {
                        if let Some(reason) = self.hidden(id) {
                            return Verdict::Drop(reason);
                        }
                        if !patients.iter().any(|p| p == id) {
                            patients.push(id.to_owned());
                        }
                    }
                    Target::Other { resource_type, id } if follows => {
                        let key = format!("{resource_type}/{id}");
                        if !kept.is_some_and(|k| k.contains(&key)) {
                            return Verdict::Drop(Reason::Unlinked);
                        }
                        followed = true;
                    }
                    // Not a patient (Group, Device, Location subject): grants nothing.
                    Target::Other { .. } => {}
                    Target::Unknown => return Verdict::Drop(Reason::Unlinked),
                }
            }
        }
        for path in &links.participant {
            let Some(references) = self.references(probe, path) else {
                return Verdict::Drop(Reason::Unlinked);
            };
            for reference in &references {
                if let Target::Patient(id) = self.refs.resolve(reference)
                    && let Some(reason) = self.hidden(id)
                {
                    return Verdict::Drop(reason);
                }
            }
        }
        if patients.is_empty() && !followed {
            return Verdict::Drop(Reason::Unlinked);
        }
        Verdict::Keep(patients)
    }

    /// The `reference` strings at an element path; `None` when the element
    /// is not valid JSON of the expected shape (fail closed).
    fn references(&self, probe: &Probe<'_>, path: &[String]) -> Option<Vec<String>> {
        let (first, rest) = path.split_first()?;
        let mut out = Vec::new();
        for raw in probe.member(first) {
            let value: Value = serde_json::from_str(raw).ok()?;
            if !collect_references(&value, rest, &mut out) {
                return None;
            }
        }
        Some(out)
    }

    /// Check `contained`: `Err` drops the container.
    fn contained(&self, probe: &Probe<'_>) -> Result<(), Reason> {
        for raw in probe.member("contained") {
            let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(|_| Reason::Unlinked)?;
            for item in items {
                let inner = Probe::parse(item.get(), self.policy).map_err(|_| Reason::Unlinked)?;
                if inner.duplicated || inner.member("contained").next().is_some() {
                    return Err(Reason::Unlinked);
                }
                match self.policy.rule(inner.resource_type.as_deref().unwrap_or("")) {
                    TypeRule::Reference => {}
                    TypeRule::Compartment(links) => {
                        for path in links.owner.iter().chain(&links.participant) {
                            let references = self.references(&inner, path).ok_or(Reason::Unlinked)?;
                            for reference in &references {
                                match self.refs.resolve(reference) {
                                    Target::Patient(id) => {
                                        if let Some(reason) = self.hidden(id) {
                                            return Err(reason);
                                        }
                                    }
                                    Target::Other { .. } => {}
                                    // `#id` of the container, or unknown: the
                                    // contained resource inherits the container's patient;
                                    // an outside reference cannot be checked.
                                    Target::Unknown if reference.starts_with('#') => {}
                                    Target::Unknown => return Err(Reason::Unlinked),
                                }
                            }
                        }
                    }
                    TypeRule::Patient | TypeRule::Group | TypeRule::Unlisted => return Err(Reason::Unlinked),
                }
            }
        }
        Ok(())
    }

    /// A Group: the caller's own, rebuilt with only visible active members.
    fn group(&self, text: &str) -> Verdict {
        let Ok(mut group) = serde_json::from_str::<Value>(text) else {
            return Verdict::Drop(Reason::Unlinked);
        };
        let owned = group.get("id").and_then(Value::as_str).is_some_and(|id| self.scope.owns_group(id))
            && managing_organization(&group, self.refs).as_deref() == Some(self.scope.organization());
        if !owned {
            return Verdict::Drop(Reason::Attribution);
        }
        let Some(object) = group.as_object_mut() else { return Verdict::Drop(Reason::Unlinked) };
        if object.contains_key("contained") {
            return Verdict::Drop(Reason::Unlinked);
        }
        let group_active = !matches!(object.get("active"), Some(Value::Bool(false)));
        // The narrative may list every member; counts would reveal hidden ones.
        object.remove("text");
        let mut removed = 0u32;
        if let Some(Value::Array(members)) = object.get_mut("member") {
            let before = members.len();
            members.retain(|member| {
                group_active
                    && member_active(member, &self.today)
                    && member_patient(member, self.refs).is_some_and(|p| self.hidden(p).is_none())
            });
            removed = (before - members.len()) as u32;
            let kept = members.len();
            if kept == 0 {
                object.remove("member");
            }
            if object.contains_key("quantity") {
                object.insert("quantity".into(), Value::from(kept));
            }
        } else if object.contains_key("member") {
            return Verdict::Drop(Reason::Unlinked);
        } else if object.contains_key("quantity") {
            object.insert("quantity".into(), Value::from(0));
        }
        match serde_json::to_string(&group) {
            Ok(text) => Verdict::Rewrite { text, members_removed: removed },
            Err(_) => Verdict::Drop(Reason::Unlinked),
        }
    }

    /// A Bundle inside a Bundle: kept only when nothing in it had to change.
    fn nested_bundle(&self, text: &str, depth: usize) -> Verdict {
        if depth >= MAX_NESTING {
            return Verdict::Drop(Reason::Unlinked);
        }
        let entries = RawObject::parse(text).ok().and_then(|object| match object.get("entry") {
            None => Some(Vec::new()),
            Some(entries) => self.entry_verdicts(entries.get(), depth + 1).ok(),
        });
        let Some(verdicts) = entries else { return Verdict::Drop(Reason::Unlinked) };
        let mut patients = Vec::new();
        for verdict in verdicts {
            match verdict {
                Verdict::Keep(some) => patients.extend(some),
                _ => return Verdict::Drop(Reason::Unlinked),
            }
        }
        Verdict::Keep(patients)
    }

    /// The verdicts on one Bundle's resources, in order: first everything
    /// that does not follow other resources, then Provenance and friends
    /// against what was kept. `resources[i]`: the probe and (for Groups and
    /// nested Bundles, which are judged on their text) the raw resource;
    /// `None` for an entry without a readable resource (a history delete, a
    /// batch response), which is withheld: nothing fhirwall cannot check
    /// leaves.
    pub fn verdicts(&self, resources: Vec<Option<(Probe<'_>, &str)>>, depth: usize) -> Vec<Verdict> {
        let mut verdicts: Vec<Verdict> = vec![Verdict::Drop(Reason::Unlinked); resources.len()];
        let mut kept = HashSet::new();
        let mut deferred = Vec::new();
        for (index, resource) in resources.iter().enumerate() {
            let Some((probe, text)) = resource else { continue };
            let follows = match probe.resource_type.as_deref().map(|t| self.policy.rule(t)) {
                Some(TypeRule::Compartment(links)) => !links.follows.is_empty(),
                _ => false,
            };
            if follows {
                deferred.push(index);
                continue;
            }
            let verdict = self.verdict(text, probe, None, depth);
            if !matches!(verdict, Verdict::Drop(_))
                && let (Some(t), Some(id)) = (&probe.resource_type, &probe.id)
            {
                kept.insert(format!("{t}/{id}"));
            }
            verdicts[index] = verdict;
        }
        for index in deferred {
            if let Some((probe, _)) = &resources[index] {
                verdicts[index] = self.verdict("", probe, Some(&kept), depth);
            }
        }
        verdicts
    }

    /// The verdicts on a Bundle's entries (its raw `entry` array), in
    /// order. `Err` when the array or an entry is malformed; an entry with a
    /// resource member twice is withheld.
    pub fn entry_verdicts(&self, entries: &str, depth: usize) -> Result<Vec<Verdict>, &'static str> {
        let entries: Vec<&RawValue> =
            serde_json::from_str(entries).map_err(|_| "Bundle.entry is malformed")?;
        let mut probes: Vec<EntryProbe<'_>> = entries
            .iter()
            .map(|e| {
                let mut de = serde_json::Deserializer::from_str(e.get());
                let probe = EntrySeed { policy: self.policy }.deserialize(&mut de)?;
                de.end().map(|_| probe)
            })
            .collect::<Result<_, _>>()
            .map_err(|_| "a Bundle entry is malformed")?;
        let resources = probes
            .iter_mut()
            .zip(&entries)
            .map(|(probe, entry)| {
                let parsed = if probe.duplicated { None } else { probe.resource.take() }?;
                let text = match parsed.resource_type.as_deref() {
                    Some("Group" | "Bundle") => entry_resource_text(entry.get()).unwrap_or(""),
                    _ => "",
                };
                Some((parsed, text))
            })
            .collect();
        Ok(self.verdicts(resources, depth))
    }
}

/// Walk `rest` from `value`, collecting `reference` strings of the Reference
/// objects at the end. `false` when a Reference holds a non-string reference.
fn collect_references(value: &Value, rest: &[String], out: &mut Vec<String>) -> bool {
    match value {
        Value::Array(items) => items.iter().all(|item| collect_references(item, rest, out)),
        Value::Object(map) => match rest.split_first() {
            None => match map.get("reference") {
                None => true,
                Some(Value::String(reference)) => {
                    out.push(reference.clone());
                    true
                }
                Some(_) => false,
            },
            Some((first, tail)) => map.get(first).is_none_or(|inner| collect_references(inner, tail, out)),
        },
        Value::Null => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
