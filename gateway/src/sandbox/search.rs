//! Type-level search: parameter parsing, matching, sorting, paging,
//! `_include` / `_revinclude`, and the searchset Bundle.

use std::collections::HashSet;

use super::params::{self, Kind, ParamDef};
use super::store::{Entry, SValue, Store, date_range, normalize_reference, ref_key, valid_id};

pub(crate) const DEFAULT_COUNT: usize = 20;
pub(crate) const MAX_COUNT: usize = 500;
/// `_include:iterate` rounds, so a cycle cannot run forever.
const MAX_ITERATE: usize = 4;

/// A refusal: HTTP status, OperationOutcome issue code, message.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal { status: 400, code: "invalid", message: message.into() }
}

fn unsupported(message: impl Into<String>) -> Refusal {
    Refusal { status: 400, code: "not-supported", message: message.into() }
}

/// One parsed search parameter occurrence (`name:modifier=v1,v2`).
struct Criterion {
    def: &'static ParamDef,
    modifier: Option<String>,
    values: Vec<String>,
    /// Reference parameters: the `Type/id` keys the values stand for
    /// (see [`reference_keys`]), all values together (they are OR'ed).
    ref_keys: Vec<(Option<String>, String)>,
}

struct IncludeSpec {
    source: String,
    /// None for `*`.
    param: Option<String>,
    target: Option<String>,
    iterate: bool,
}

enum SortKey {
    Id,
    LastUpdated,
    Param(&'static str),
}

/// A parsed type-level search.
pub(crate) struct Search {
    rtype: String,
    ids: Vec<Vec<String>>,
    criteria: Vec<Criterion>,
    count: usize,
    offset: usize,
    includes: Vec<IncludeSpec>,
    revincludes: Vec<IncludeSpec>,
    sort: Vec<(SortKey, bool)>,
    /// The query as received minus paging parameters, for the links.
    link_params: Vec<(String, String)>,
}

/// Split a parameter value on unescaped commas (`\,` is a literal comma).
fn split_values(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                if let Some(last) = out.last_mut() {
                    last.push(',');
                }
                chars.next();
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn parse_usize(name: &str, v: &str) -> Result<usize, Refusal> {
    v.trim().parse::<usize>().map_err(|_| bad(format!("{name}: expected a non-negative integer, got {v:?}")))
}

fn parse_include(
    rtype: &str,
    key: &str,
    v: &str,
    rev: bool,
    lenient: bool,
) -> Result<Option<IncludeSpec>, Refusal> {
    let iterate = match key.split_once(':') {
        None => false,
        Some((_, "iterate" | "recurse")) => true,
        Some((_, m)) => {
            return if lenient {
                Ok(None)
            } else {
                Err(unsupported(format!("unsupported modifier {key}:{m}")))
            };
        }
    };
    let v = v.trim();
    if v == "*" {
        if rev {
            return if lenient { Ok(None) } else { Err(unsupported("_revinclude=* is not supported")) };
        }
        return Ok(Some(IncludeSpec { source: rtype.to_owned(), param: None, target: None, iterate }));
    }
    let mut parts = v.split(':');
    let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
        return Err(bad(format!("{key}: expected Type:parameter[:TargetType], got {v:?}")));
    };
    let target = parts.next().map(str::to_owned);
    if param != "*" {
        match params::param(source, param) {
            Some(def) if def.kind == Kind::Reference => {}
            _ if lenient => return Ok(None),
            _ => return Err(bad(format!("{key}: {source}:{param} is not a supported reference parameter"))),
        }
    } else if params::type_params(source).is_none() && !lenient {
        return Err(bad(format!("{key}: unknown resource type {source}")));
    }
    Ok(Some(IncludeSpec {
        source: source.to_owned(),
        param: (param != "*").then(|| param.to_owned()),
        target,
        iterate,
    }))
}

/// `_sort=a,-b`: by `_id`, `_lastUpdated` or a date parameter.
fn parse_sort(rtype: &str, value: &str, lenient: bool) -> Result<Vec<(SortKey, bool)>, Refusal> {
    let mut sort = Vec::new();
    for field in split_values(value) {
        let (desc, field) = match field.strip_prefix('-') {
            Some(f) => (true, f.to_owned()),
            None => (false, field),
        };
        let sort_key = match field.as_str() {
            "_id" => SortKey::Id,
            "_lastUpdated" => SortKey::LastUpdated,
            f => match params::param(rtype, f) {
                Some(def) if def.kind == Kind::Date => SortKey::Param(def.name),
                _ if lenient => continue,
                _ => return Err(unsupported(format!("_sort by {f} is not supported"))),
            },
        };
        sort.push((sort_key, desc));
    }
    Ok(sort)
}

/// One criterion of a known parameter; `None` when an unsupported modifier
/// is ignored (`lenient`).
fn parse_criterion(
    def: &'static ParamDef,
    name: &str,
    modifier: Option<&str>,
    value: &str,
    lenient: bool,
) -> Result<Option<Criterion>, Refusal> {
    if let Some(m) = modifier
        && !modifier_ok(def, m)
    {
        if lenient {
            return Ok(None);
        }
        return Err(unsupported(format!("modifier {name}:{m} is not supported")));
    }
    let values = split_values(value);
    for v in &values {
        validate_value(def, modifier, v)?;
    }
    let ref_keys = match def.kind {
        Kind::Reference => values.iter().flat_map(|v| reference_keys(def, modifier, v)).collect(),
        _ => Vec::new(),
    };
    Ok(Some(Criterion { def, modifier: modifier.map(str::to_owned), values, ref_keys }))
}

impl Search {
    /// Parse `pairs` (decoded query/form parameters) for a search of `rtype`.
    /// Unknown parameters are refused unless `lenient`, then ignored.
    pub(crate) fn parse(rtype: &str, pairs: &[(String, String)], lenient: bool) -> Result<Search, Refusal> {
        let mut search = Search {
            rtype: rtype.to_owned(),
            ids: Vec::new(),
            criteria: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
            includes: Vec::new(),
            revincludes: Vec::new(),
            sort: Vec::new(),
            link_params: Vec::new(),
        };
        for (key, value) in pairs {
            let (name, modifier) = match key.split_once(':') {
                Some((n, m)) => (n, Some(m)),
                None => (key.as_str(), None),
            };
            match name {
                "_count" => search.count = parse_usize("_count", value)?.min(MAX_COUNT),
                "_offset" => search.offset = parse_usize("_offset", value)?,
                "_format" => {
                    if !matches!(value.as_str(), "json" | "application/json" | "application/fhir+json") {
                        return Err(Refusal {
                            status: 406,
                            code: "not-supported",
                            message: format!("_format={value}: this server speaks JSON only"),
                        });
                    }
                    search.link_params.push((key.clone(), value.clone()));
                }
                "_pretty" | "_total" => search.link_params.push((key.clone(), value.clone())),
                "_include" | "_revinclude" => {
                    if let Some(spec) = parse_include(rtype, key, value, name == "_revinclude", lenient)? {
                        if name == "_include" {
                            search.includes.push(spec);
                        } else {
                            search.revincludes.push(spec);
                        }
                    }
                    search.link_params.push((key.clone(), value.clone()));
                }
                "_sort" => {
                    search.sort.extend(parse_sort(rtype, value, lenient)?);
                    search.link_params.push((key.clone(), value.clone()));
                }
                _ if value.is_empty() => {} // empty parameters are ignored (FHIR search rules)
                "_id" => {
                    if let Some(m) = modifier {
                        if !lenient {
                            return Err(unsupported(format!("modifier _id:{m} is not supported")));
                        }
                        continue;
                    }
                    search.ids.push(split_values(value));
                    search.link_params.push((key.clone(), value.clone()));
                }
                _ => match params::param(rtype, name) {
                    Some(def) => {
                        let Some(criterion) = parse_criterion(def, name, modifier, value, lenient)? else {
                            continue;
                        };
                        search.criteria.push(criterion);
                        search.link_params.push((key.clone(), value.clone()));
                    }
                    None if lenient => {}
                    None => {
                        return Err(bad(format!(
                            "unknown search parameter {name:?} for resource type {rtype}"
                        )));
                    }
                },
            }
        }
        Ok(search)
    }
}

fn modifier_ok(def: &ParamDef, m: &str) -> bool {
    if m == "missing" {
        return true;
    }
    match def.kind {
        Kind::Reference => valid_type_name(m),
        Kind::Token => m == "not",
        Kind::String => matches!(m, "exact" | "contains"),
        Kind::Date => false,
    }
}

fn valid_type_name(t: &str) -> bool {
    super::store::valid_type(t)
}

const PREFIXES: [&str; 9] = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];

fn split_prefix(v: &str) -> (&str, &str) {
    if v.len() > 2 && v.is_char_boundary(2) && PREFIXES.contains(&&v[..2]) {
        (&v[..2], &v[2..])
    } else {
        ("eq", v)
    }
}

fn validate_value(def: &ParamDef, modifier: Option<&str>, v: &str) -> Result<(), Refusal> {
    if modifier == Some("missing") {
        return match v {
            "true" | "false" => Ok(()),
            _ => Err(bad(format!("{}:missing expects true or false", def.name))),
        };
    }
    if def.kind == Kind::Date {
        let (_, date) = split_prefix(v);
        if date_range(date).is_none() {
            return Err(bad(format!("{}: {v:?} is not a valid date search value", def.name)));
        }
    }
    Ok(())
}

/// Reference search values as the `Type/id` keys they may match. A bare
/// id stands for every target type of the parameter; `None` in the second
/// position means "any type with this id" (parameters without targets).
fn reference_keys(def: &ParamDef, modifier: Option<&str>, v: &str) -> Vec<(Option<String>, String)> {
    let v = v.trim();
    if v.contains('/') {
        return match normalize_reference(v) {
            Some(k) => vec![(None, k)],
            None => Vec::new(),
        };
    }
    if !valid_id(v) {
        return Vec::new();
    }
    if let Some(ty) = modifier.filter(|m| *m != "missing") {
        return vec![(None, format!("{ty}/{v}"))];
    }
    if def.targets.is_empty() {
        return vec![(Some(v.to_owned()), String::new())];
    }
    def.targets.iter().map(|t| (None, format!("{t}/{v}"))).collect()
}

fn reference_matches(entry: &Entry, c: &Criterion) -> bool {
    entry.values_of(c.def.name).any(|sv| match sv {
        SValue::Ref(r) => c.ref_keys.iter().any(|(any_type_id, key)| match any_type_id {
            Some(id) => r.rsplit('/').next() == Some(id.as_str()),
            None => r == key,
        }),
        _ => false,
    })
}

fn token_matches(entry: &Entry, name: &str, v: &str) -> bool {
    let (system, code) = match v.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, v),
    };
    entry.values_of(name).any(|sv| match sv {
        SValue::Token { system: s, code: c } => {
            let system_ok = match system {
                None => true,
                Some("") => s.is_none(),
                Some(want) => s.as_deref() == Some(want),
            };
            system_ok && (code.is_empty() || c == code)
        }
        _ => false,
    })
}

fn date_matches(entry: &Entry, name: &str, v: &str) -> bool {
    let (prefix, date) = split_prefix(v);
    let Some((plo, phi)) = date_range(date) else { return false };
    entry.values_of(name).any(|sv| match sv {
        SValue::Date { lo, hi } => match prefix {
            "eq" | "ap" => plo <= *lo && hi <= &phi,
            "ne" => !(plo <= *lo && hi <= &phi),
            "gt" => hi > &phi,
            "lt" => lo < &plo,
            "ge" => hi >= &plo,
            "le" => lo <= &phi,
            "sa" => lo > &phi,
            "eb" => hi < &plo,
            _ => false,
        },
        _ => false,
    })
}

fn string_matches(entry: &Entry, name: &str, modifier: Option<&str>, v: &str) -> bool {
    let want = v.to_lowercase();
    entry.values_of(name).any(|sv| match sv {
        SValue::Str(s) => match modifier {
            // Values are stored lower-cased, so :exact is case-insensitive here.
            Some("exact") => *s == want,
            Some("contains") => s.contains(&want),
            _ => s.starts_with(&want),
        },
        _ => false,
    })
}

fn criterion_matches(entry: &Entry, c: &Criterion) -> bool {
    if c.modifier.as_deref() == Some("missing") {
        let missing = entry.values_of(c.def.name).next().is_none();
        return c.values.iter().any(|v| (v == "true") == missing);
    }
    if c.def.kind == Kind::Token && c.modifier.as_deref() == Some("not") {
        return !c.values.iter().any(|v| token_matches(entry, c.def.name, v));
    }
    if c.def.kind == Kind::Reference {
        return reference_matches(entry, c);
    }
    c.values.iter().any(|v| match c.def.kind {
        Kind::Reference => false,
        Kind::Token => token_matches(entry, c.def.name, v),
        Kind::Date => date_matches(entry, c.def.name, v),
        Kind::String => string_matches(entry, c.def.name, c.modifier.as_deref(), v),
    })
}

/// The result of a search: matches (all pages) and the current page's
/// included resources.
pub(crate) struct Outcome<'a> {
    pub total: usize,
    pub page: Vec<&'a Entry>,
    pub included: Vec<&'a Entry>,
    pub count: usize,
    pub offset: usize,
    pub link_params: Vec<(String, String)>,
}

impl Search {
    fn candidates(&self, store: &Store) -> Vec<usize> {
        // Narrow with an index when the search names ids or a reference.
        if let Some(ids) = self.ids.first() {
            let mut v: Vec<usize> = ids
                .iter()
                .filter_map(|id| store.by_id.get(&format!("{}/{id}", self.rtype)).copied())
                .collect();
            v.sort_unstable();
            v.dedup();
            return v;
        }
        for c in &self.criteria {
            if c.def.kind != Kind::Reference || c.modifier.as_deref() == Some("missing") {
                continue;
            }
            if c.ref_keys.iter().any(|(any_type, _)| any_type.is_some()) {
                continue; // a bare id on an any-type parameter: no index key, scan
            }
            let mut v: Vec<usize> = c
                .ref_keys
                .iter()
                .filter_map(|(_, k)| store.by_ref.get(&ref_key(&self.rtype, c.def.name, k)))
                .flatten()
                .copied()
                .collect();
            v.sort_unstable();
            v.dedup();
            return v;
        }
        store.by_type.get(&self.rtype).cloned().unwrap_or_default()
    }

    pub(crate) fn run<'a>(self, store: &'a Store) -> Outcome<'a> {
        let mut matches: Vec<&Entry> = self
            .candidates(store)
            .into_iter()
            .map(|i| &store.entries[i])
            .filter(|e| e.rtype == self.rtype)
            .filter(|e| self.ids.iter().all(|ids| ids.contains(&e.id)))
            .filter(|e| self.criteria.iter().all(|c| criterion_matches(e, c)))
            .collect();
        if !self.sort.is_empty() {
            matches.sort_by(|a, b| {
                for (key, desc) in &self.sort {
                    let ord = match key {
                        SortKey::Id => a.id.cmp(&b.id),
                        SortKey::LastUpdated => a.last_updated.cmp(&b.last_updated),
                        SortKey::Param(name) => first_date(a, name).cmp(&first_date(b, name)),
                    };
                    let ord = if *desc { ord.reverse() } else { ord };
                    if ord.is_ne() {
                        return ord;
                    }
                }
                std::cmp::Ordering::Equal
            });
        }
        let total = matches.len();
        let start = self.offset.min(total);
        let end = (start + self.count).min(total);
        let page: Vec<&Entry> = matches[start..end].to_vec();
        let included = self.included(store, &page);
        Outcome {
            total,
            page,
            included,
            count: self.count,
            offset: self.offset,
            link_params: self.link_params,
        }
    }

    fn included<'a>(&self, store: &'a Store, page: &[&'a Entry]) -> Vec<&'a Entry> {
        if self.includes.is_empty() && self.revincludes.is_empty() {
            return Vec::new();
        }
        let mut seen: HashSet<(&str, &str)> =
            page.iter().map(|e| (e.rtype.as_str(), e.id.as_str())).collect();
        let mut out: Vec<&'a Entry> = Vec::new();
        let mut frontier: Vec<&'a Entry> = page.to_vec();
        for round in 0..=MAX_ITERATE {
            let mut next: Vec<&'a Entry> = Vec::new();
            for spec in &self.includes {
                if round > 0 && !spec.iterate {
                    continue;
                }
                for e in frontier.iter().filter(|e| e.rtype == spec.source) {
                    for (name, v) in &e.values {
                        let SValue::Ref(target) = v else { continue };
                        if spec.param.as_deref().is_some_and(|p| p != *name) {
                            continue;
                        }
                        if let Some(t) = &spec.target
                            && !target.starts_with(&format!("{t}/"))
                        {
                            continue;
                        }
                        if let Some(&i) = store.by_id.get(target) {
                            let inc = &store.entries[i];
                            if seen.insert((inc.rtype.as_str(), inc.id.as_str())) {
                                next.push(inc);
                            }
                        }
                    }
                }
            }
            for spec in &self.revincludes {
                if round > 0 && !spec.iterate {
                    continue;
                }
                let names: Vec<&str> = match &spec.param {
                    Some(p) => vec![p.as_str()],
                    None => params::type_params(&spec.source)
                        .unwrap_or_default()
                        .iter()
                        .filter(|d| d.kind == Kind::Reference)
                        .map(|d| d.name)
                        .collect(),
                };
                for e in &frontier {
                    if spec.target.as_deref().is_some_and(|t| t != e.rtype) {
                        continue;
                    }
                    let key = e.key();
                    for name in &names {
                        let Some(list) = store.by_ref.get(&ref_key(&spec.source, name, &key)) else {
                            continue;
                        };
                        for &i in list {
                            let inc = &store.entries[i];
                            if seen.insert((inc.rtype.as_str(), inc.id.as_str())) {
                                next.push(inc);
                            }
                        }
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            out.extend(next.iter().copied());
            frontier = next;
        }
        out
    }
}

fn first_date<'a>(e: &'a Entry, name: &'a str) -> Option<&'a str> {
    e.values_of(name).find_map(|v| match v {
        SValue::Date { lo, .. } => Some(lo.as_str()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_split_and_escape() {
        assert_eq!(split_values("a,b"), vec!["a", "b"]);
        assert_eq!(split_values(r"a\,b,c"), vec!["a,b", "c"]);
        assert_eq!(split_values(""), Vec::<String>::new());
    }

    #[test]
    fn date_prefixes() {
        assert_eq!(split_prefix("ge2020-01-01"), ("ge", "2020-01-01"));
        assert_eq!(split_prefix("2020"), ("eq", "2020"));
    }
}
