//! Loading resources and indexing them for search.
//!
//! Each resource is kept as its JSON text (served as is, never re-serialised)
//! plus the search values extracted once at load time. Indexes: by type, by
//! `Type/id`, and by reference (`Source|param|Target/id`), so patient-scoped
//! searches, `_include` and `_revinclude` are map lookups.
//!
//! Only current versions are [`Entry`]s (and so only they are indexed and
//! searched); superseded versions are kept, bytes only, in the current
//! entry's [`Entry::older`] for vread and history.

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde_json::Value;

use super::params::{self, Kind, ParamDef};

/// A search value extracted from a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SValue {
    /// A literal reference normalised to `Type/id`.
    Ref(String),
    /// A code with its system (Coding, Identifier, ContactPoint, code, boolean, uri).
    Token { system: Option<String>, code: String },
    /// A date, dateTime, instant or Period as an inclusive lexical range
    /// of `YYYY-MM-DDThh:mm:ss` strings (see [`date_range`]).
    Date { lo: String, hi: String },
    /// A string, lower-cased.
    Str(String),
}

/// One stored resource.
#[derive(Debug)]
pub(crate) struct Entry {
    pub rtype: String,
    pub id: String,
    pub version: String,
    pub last_updated: String,
    /// The resource's JSON text, compact, exactly as served.
    pub json: Box<str>,
    /// Extracted search values: (parameter name, value).
    pub values: Vec<(&'static str, SValue)>,
    /// Superseded versions of this resource, newest first (see
    /// [`supersedes`]); empty for a resource loaded in one version.
    pub older: Vec<Version>,
}

/// A superseded version of a resource: only what vread and history serve.
#[derive(Debug)]
pub(crate) struct Version {
    pub version: String,
    pub last_updated: String,
    /// The version's JSON text, exactly as served.
    pub json: Box<str>,
}

/// Whether a newly loaded `new` version supersedes the stored `old` one
/// (they differ): numerically when both are unsigned integers of
/// different value, otherwise the later-loaded one (`new`) wins.
pub(crate) fn supersedes(new: &str, old: &str) -> bool {
    match (new.parse::<u64>(), old.parse::<u64>()) {
        (Ok(n), Ok(o)) if n != o => n > o,
        _ => true,
    }
}

impl Entry {
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.rtype, self.id)
    }

    pub(crate) fn values_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SValue> + 'a {
        self.values.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Build an entry; `raw` is the resource's original JSON text, served
    /// as is unless `meta` had to be completed.
    fn from_value(mut value: Value, raw: Option<&str>) -> anyhow::Result<Entry> {
        let mut completed = false;
        let obj = value.as_object_mut().context("not a JSON object")?;
        let rtype = obj.get("resourceType").and_then(Value::as_str).context("no resourceType")?.to_owned();
        let id = obj.get("id").and_then(Value::as_str).context("no id")?.to_owned();
        if !valid_type(&rtype) {
            bail!("invalid resourceType {rtype:?}");
        }
        if !valid_id(&id) {
            bail!("invalid id {id:?}");
        }
        let meta = obj.entry("meta").or_insert_with(|| Value::Object(Default::default()));
        let meta = meta.as_object_mut().context("meta is not an object")?;
        let version = match meta.get("versionId").and_then(Value::as_str) {
            Some(v) => v.to_owned(),
            None => {
                meta.insert("versionId".into(), Value::String("1".into()));
                completed = true;
                "1".to_owned()
            }
        };
        let last_updated = match meta.get("lastUpdated").and_then(Value::as_str) {
            Some(v) => v.to_owned(),
            None => {
                let now = super::http::now_rfc3339();
                meta.insert("lastUpdated".into(), Value::String(now.clone()));
                completed = true;
                now
            }
        };
        let mut values = Vec::new();
        if let Some(defs) = params::type_params(&rtype) {
            for def in defs.iter().chain(params::COMMON.iter()) {
                extract(&value, def, &mut values);
            }
        }
        let json = match raw {
            Some(raw) if !completed => raw.into(),
            _ => serde_json::to_string(&value)?.into_boxed_str(),
        };
        Ok(Entry { rtype, id, version, last_updated, json, values, older: Vec::new() })
    }

    /// This entry as a superseded version (its search values dropped).
    fn into_version(self) -> Version {
        Version { version: self.version, last_updated: self.last_updated, json: self.json }
    }

    /// Take in another load of the same `Type/id`. The same versionId
    /// replaces that version in place (current or not); a new versionId is
    /// kept: it becomes current when it [`supersedes`] the current one,
    /// otherwise it is filed among the older versions before the first one
    /// it supersedes, so `older` stays newest first.
    fn absorb(&mut self, new: Entry) {
        if new.version == self.version {
            let older = std::mem::take(&mut self.older);
            *self = new;
            self.older = older;
        } else if let Some(v) = self.older.iter_mut().find(|v| v.version == new.version) {
            *v = new.into_version();
        } else if supersedes(&new.version, &self.version) {
            let mut older = std::mem::take(&mut self.older);
            let previous = std::mem::replace(self, new);
            older.insert(0, previous.into_version());
            self.older = older;
        } else {
            let at = self.older.iter().position(|v| supersedes(&new.version, &v.version));
            let at = at.unwrap_or(self.older.len());
            self.older.insert(at, new.into_version());
        }
    }

    /// Every version as (versionId, lastUpdated, JSON), newest first: the
    /// current one, then the superseded ones.
    pub(crate) fn versions(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        std::iter::once((&*self.version, &*self.last_updated, &*self.json))
            .chain(self.older.iter().map(|v| (&*v.version, &*v.last_updated, &*v.json)))
    }

    /// The JSON of version `vid`, current or superseded.
    pub(crate) fn version_json(&self, vid: &str) -> Option<&str> {
        self.versions().find(|(v, _, _)| *v == vid).map(|(_, _, json)| json)
    }
}

pub(crate) fn valid_type(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// All resources, indexed.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub entries: Vec<Entry>,
    pub by_type: HashMap<String, Vec<usize>>,
    pub by_id: HashMap<String, usize>,
    /// `Source|param|Target/id` -> entries (ascending).
    pub by_ref: HashMap<String, Vec<usize>>,
}

pub(crate) fn ref_key(source: &str, param: &str, target: &str) -> String {
    let mut k = String::with_capacity(source.len() + param.len() + target.len() + 2);
    k.push_str(source);
    k.push('|');
    k.push_str(param);
    k.push('|');
    k.push_str(target);
    k
}

impl Store {
    /// Load NDJSON: one resource per line (blank lines skipped). A Bundle
    /// line of type collection/transaction/batch/searchset contributes its
    /// entries' resources. A later resource with the same `Type/id` and
    /// the same `meta.versionId` replaces the earlier one; with another
    /// versionId both are kept as versions (see [`Entry::absorb`]). Call
    /// [`Store::reindex`] afterwards.
    pub(crate) fn add_ndjson(&mut self, text: &str) -> anyhow::Result<()> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let value: Value =
                serde_json::from_str(line).with_context(|| format!("line {}: not valid JSON", n + 1))?;
            self.add_value(value, Some(line)).with_context(|| format!("line {}", n + 1))?;
        }
        Ok(())
    }

    pub(crate) fn add_value(&mut self, value: Value, raw: Option<&str>) -> anyhow::Result<()> {
        let is_bundle = value.get("resourceType").and_then(Value::as_str) == Some("Bundle")
            && matches!(
                value.get("type").and_then(Value::as_str),
                Some("collection" | "transaction" | "batch" | "searchset")
            );
        if is_bundle {
            let entries = value.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
            for (i, e) in entries.into_iter().enumerate() {
                if let Some(resource) = e.get("resource") {
                    self.add_value(resource.clone(), None).with_context(|| format!("Bundle entry {i}"))?;
                }
            }
            return Ok(());
        }
        let entry = Entry::from_value(value, raw)?;
        match self.by_id.get(&entry.key()) {
            Some(&i) => self.entries[i].absorb(entry),
            None => {
                self.by_id.insert(entry.key(), self.entries.len());
                self.entries.push(entry);
            }
        }
        Ok(())
    }

    /// Rebuild the type and reference indexes (after loading) from the
    /// current versions, so a superseded version's references, like its
    /// other search values, are gone.
    pub(crate) fn reindex(&mut self) {
        self.by_type.clear();
        self.by_ref.clear();
        for (i, e) in self.entries.iter().enumerate() {
            self.by_type.entry(e.rtype.clone()).or_default().push(i);
            for (name, v) in &e.values {
                if let SValue::Ref(target) = v {
                    let list = self.by_ref.entry(ref_key(&e.rtype, name, target)).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
        }
    }

    pub(crate) fn get(&self, rtype: &str, id: &str) -> Option<&Entry> {
        self.by_id.get(&format!("{rtype}/{id}")).map(|&i| &self.entries[i])
    }
}

/// Collect the values at `path` (dotted element names; arrays flattened).
fn walk<'a>(v: &'a Value, path: &[&str], out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| walk(i, path, out)),
        _ if path.is_empty() => out.push(v),
        Value::Object(map) => {
            if let Some(next) = map.get(path[0]) {
                walk(next, &path[1..], out);
            }
        }
        _ => {}
    }
}

fn extract(resource: &Value, def: &'static ParamDef, out: &mut Vec<(&'static str, SValue)>) {
    let mut found = Vec::new();
    for path in def.paths {
        let segments: Vec<&str> = path.split('.').collect();
        walk(resource, &segments, &mut found);
    }
    for v in found {
        match def.kind {
            Kind::Reference => {
                let Some(reference) = v.get("reference").and_then(Value::as_str) else { continue };
                let Some(norm) = normalize_reference(reference) else { continue };
                let ty = norm.split('/').next().unwrap_or_default();
                if def.targets.is_empty() || def.targets.contains(&ty) {
                    out.push((def.name, SValue::Ref(norm)));
                }
            }
            Kind::Token => tokens(v, &mut |system, code| {
                out.push((def.name, SValue::Token { system, code }));
            }),
            Kind::Date => {
                let range = match v {
                    Value::String(s) => date_range(s),
                    Value::Object(p) => {
                        let lo = p.get("start").and_then(Value::as_str).and_then(date_range).map(|r| r.0);
                        let hi = p.get("end").and_then(Value::as_str).and_then(date_range).map(|r| r.1);
                        match (lo, hi) {
                            (None, None) => None,
                            (lo, hi) => Some((
                                lo.unwrap_or_else(|| "0000-01-01T00:00:00".into()),
                                hi.unwrap_or_else(|| "9999-12-31T23:59:59".into()),
                            )),
                        }
                    }
                    _ => None,
                };
                if let Some((lo, hi)) = range {
                    out.push((def.name, SValue::Date { lo, hi }));
                }
            }
            Kind::String => strings(v, &mut |s| out.push((def.name, SValue::Str(s.to_lowercase())))),
        }
    }
}

fn tokens(v: &Value, f: &mut dyn FnMut(Option<String>, String)) {
    match v {
        Value::String(s) => f(None, s.clone()),
        Value::Bool(b) => f(None, b.to_string()),
        Value::Object(map) => {
            if let Some(codings) = map.get("coding").and_then(Value::as_array) {
                codings.iter().for_each(|c| tokens(c, f));
                return;
            }
            let system = map.get("system").and_then(Value::as_str).map(str::to_owned);
            let code = map.get("code").or_else(|| map.get("value")).and_then(Value::as_str);
            if let Some(code) = code {
                f(system, code.to_owned());
            }
        }
        _ => {}
    }
}

fn strings(v: &Value, f: &mut dyn FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|i| strings(i, f)),
        Value::Object(map) => {
            // HumanName and Address: every part is searchable.
            for key in [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                if let Some(part) = map.get(key) {
                    strings(part, f);
                }
            }
        }
        _ => {}
    }
}

/// Normalise a literal reference to `Type/id`: relative references as they
/// are, absolute URLs by their last `Type/id` segments (a `/_history/n`
/// suffix dropped). Contained (`#x`) and unparseable references: None.
pub(crate) fn normalize_reference(reference: &str) -> Option<String> {
    if reference.starts_with('#') || reference.is_empty() {
        return None;
    }
    let mut segs: Vec<&str> =
        reference.split(['?', '#']).next()?.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() >= 4 && segs[segs.len() - 2] == "_history" {
        segs.truncate(segs.len() - 2);
    }
    if segs.len() < 2 {
        return None;
    }
    let (ty, id) = (segs[segs.len() - 2], segs[segs.len() - 1]);
    (valid_type(ty) && valid_id(id)).then(|| format!("{ty}/{id}"))
}

/// A FHIR date/dateTime/instant as the inclusive range it denotes, written
/// as `YYYY-MM-DDThh:mm:ss` strings that compare lexically: `2020-03`
/// is `2020-03-01T00:00:00` ..= `2020-03-31T23:59:59` (the upper bound uses
/// day 31 for every month, which is harmless for ordering). Time zones are
/// ignored (the local time as written is compared). None if malformed.
pub(crate) fn date_range(s: &str) -> Option<(String, String)> {
    let s = s.trim();
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [y] if digits(y, 4) => {}
        [y, m] if digits(y, 4) && digits(m, 2) => {}
        [y, m, d] if digits(y, 4) && digits(m, 2) && digits(d, 2) => {}
        _ => return None,
    }
    const LO: &str = "0000-01-01T00:00:00";
    const HI: &str = "9999-12-31T23:59:59";
    match time {
        None => Some((format!("{date}{}", &LO[date.len()..]), format!("{date}{}", &HI[date.len()..]))),
        Some(t) => {
            if parts.len() != 3 {
                return None;
            }
            // Drop the zone (Z, +hh:mm, -hh:mm) and fractional seconds.
            let t = t.trim_end_matches('Z');
            let t = match t.find(['+', '-']) {
                Some(i) => &t[..i],
                None => t,
            };
            let t = t.split('.').next().unwrap_or_default();
            let hms: Vec<&str> = t.split(':').collect();
            if !(2..=3).contains(&hms.len()) || !hms.iter().all(|p| digits(p, 2)) {
                return None;
            }
            let full = format!("{date}T{t}");
            if hms.len() == 3 {
                Some((full.clone(), full))
            } else {
                Some((format!("{full}:00"), format!("{full}:59")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise() {
        assert_eq!(normalize_reference("Patient/pat-1").as_deref(), Some("Patient/pat-1"));
        assert_eq!(normalize_reference("http://x.org/fhir/Patient/pat-1").as_deref(), Some("Patient/pat-1"));
        assert_eq!(
            normalize_reference("http://x.org/fhir/Patient/p/_history/2").as_deref(),
            Some("Patient/p")
        );
        assert_eq!(normalize_reference("#contained"), None);
        assert_eq!(normalize_reference("pat-1"), None);
    }

    #[test]
    fn date_ranges() {
        assert_eq!(
            date_range("2020").unwrap(),
            ("2020-01-01T00:00:00".to_owned(), "2020-12-31T23:59:59".to_owned())
        );
        assert_eq!(date_range("2020-03").unwrap().1, "2020-03-31T23:59:59");
        assert_eq!(date_range("2020-03-04T10:11:12.5+02:00").unwrap().0, "2020-03-04T10:11:12");
        assert_eq!(date_range("2020-03-04T10:11Z").unwrap().1, "2020-03-04T10:11:59");
        assert!(date_range("20-03").is_none());
        assert!(date_range("2020-3-1").is_none());
        assert!(date_range("yesterday").is_none());
    }
}
