//! SMART scopes for backend services, v1 and v2, and what they allow.
//!
//! Grammar accepted (`system/` context only; `patient/` and `user/` scopes
//! mean nothing to a backend service and are dropped):
//!
//! - v1: `system/{Type|*}.{read|write|*}`;
//! - v2: `system/{Type|*}.{cruds subset, in that order}[?name=value&...]`.
//!
//! v1 `read` is v2 `rs`, `write` is `cud`, `*` is `cruds` (SMART 2 §scopes).
//!
//! **Granting** is an intersection: each requested scope is narrowed by each
//! registered scope (type: the more specific one; permissions: the common
//! letters; constraint: whichever one has it, or both if equal). Writes are
//! never granted unless the operator enabled them. A scope that comes out
//! unchanged keeps the requested spelling, so a v1 request gets v1 scopes back.
//!
//! **Enforcing** a v2 query constraint (`system/Observation.rs?category=laboratory`):
//! - a search on the type must carry the constraint; fhirwall appends the
//!   constraint's parameters to the forwarded search (repeated parameters are
//!   ANDed by FHIR servers, so the result can only shrink to within the
//!   constraint). With several constrained scopes on one type the search must
//!   carry one of them exactly, or they must constrain the same single
//!   parameter (then their values are ORed into one parameter);
//! - reads, vreads and history of a type the caller only holds *constrained*
//!   scopes for are refused (403): fhirwall cannot tell before the answer
//!   whether the resource matches, and a search with `_id` does the same job
//!   with the constraint applied;
//! - `_include`/`_revinclude` may only bring in types the caller holds an
//!   unconstrained read or search scope for (`_include` without a target
//!   type needs an unconstrained `system/*` scope).

use std::fmt;

use crate::fhir::search::Modifier;
use crate::fhir::types::is_resource_type;
use crate::fhir::{FhirRequest, Interaction, Operation, SearchParam, SearchParams};

/// The longest scope token accepted.
const MAX_SCOPE_LEN: usize = 512;
/// Most scope tokens in one request.
const MAX_SCOPES: usize = 100;

/// A set of SMART v2 permission letters (`c r u d s`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    pub const C: Perms = Perms(1);
    pub const R: Perms = Perms(2);
    pub const U: Perms = Perms(4);
    pub const D: Perms = Perms(8);
    pub const S: Perms = Perms(16);
    /// v1 `read`.
    pub const READ: Perms = Perms(2 | 16);
    /// v1 `write`.
    pub const WRITE: Perms = Perms(1 | 4 | 8);
    pub const ALL: Perms = Perms(31);
    pub const NONE: Perms = Perms(0);

    pub fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn intersects(self, other: Perms) -> bool {
        self.0 & other.0 != 0
    }
    pub fn and(self, other: Perms) -> Perms {
        Perms(self.0 & other.0)
    }
    pub fn without(self, other: Perms) -> Perms {
        Perms(self.0 & !other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The v2 letters, in canonical order.
    pub fn letters(self) -> String {
        [(Perms::C, 'c'), (Perms::R, 'r'), (Perms::U, 'u'), (Perms::D, 'd'), (Perms::S, 's')]
            .iter()
            .filter(|(p, _)| self.contains(*p))
            .map(|(_, l)| *l)
            .collect()
    }

    /// Parse v2 letters: a non-empty subset of `cruds`, in that order, no repeats.
    fn parse_v2(text: &str) -> Option<Perms> {
        if text.is_empty() {
            return None;
        }
        let mut perms = Perms::NONE;
        let mut last = None;
        for ch in text.chars() {
            let index = "cruds".find(ch)?;
            if last.is_some_and(|l| index <= l) {
                return None;
            }
            last = Some(index);
            perms = Perms(perms.0 | (1 << index));
        }
        Some(perms)
    }
}

impl fmt::Debug for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Perms({})", self.letters())
    }
}

/// How a scope was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Style {
    V1,
    V2,
}

/// One parsed `system/` scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// `None` for `*`.
    pub resource_type: Option<String>,
    pub perms: Perms,
    /// v2 finer-grained constraint: `(name, value)` pairs, all of which must
    /// hold; a value may hold commas (alternatives). Sorted, so equal
    /// constraints compare equal however they were written.
    pub constraint: Vec<(String, String)>,
    pub style: Style,
}

/// Why a scope string is not one fhirwall grants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {scope:?}: {reason}")]
pub struct ScopeError {
    pub scope: String,
    pub reason: &'static str,
}

impl Scope {
    /// Parse one scope token.
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let err = |reason| ScopeError { scope: text.chars().take(80).collect(), reason };
        if text.len() > MAX_SCOPE_LEN {
            return Err(err("too long"));
        }
        let rest = text
            .strip_prefix("system/")
            .ok_or_else(|| err("only system/ scopes are granted to backend services"))?;
        let (head, query) = match rest.split_once('?') {
            Some((head, query)) => (head, Some(query)),
            None => (rest, None),
        };
        let (resource_type, perms) =
            head.rsplit_once('.').ok_or_else(|| err("expected {type}.{permissions}"))?;
        let resource_type = match resource_type {
            "*" => None,
            t if is_resource_type(t) => Some(t.to_owned()),
            _ => return Err(err("unknown resource type")),
        };
        let (perms, style) = match perms {
            "read" => (Perms::READ, Style::V1),
            "write" => (Perms::WRITE, Style::V1),
            "*" => (Perms::ALL, Style::V1),
            letters => (
                Perms::parse_v2(letters)
                    .ok_or_else(|| err("permissions must be v1 read/write/* or v2 cruds letters in order"))?,
                Style::V2,
            ),
        };
        let mut constraint = Vec::new();
        if let Some(query) = query {
            if style == Style::V1 {
                return Err(err("query constraints need v2 permissions"));
            }
            if query.is_empty() {
                return Err(err("empty query constraint"));
            }
            for pair in query.split('&') {
                let (name, value) =
                    pair.split_once('=').ok_or_else(|| err("constraint must be name=value"))?;
                let value = percent_encoding::percent_decode_str(value)
                    .decode_utf8()
                    .map_err(|_| err("constraint value is not UTF-8"))?
                    .into_owned();
                let name_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !name_ok {
                    return Err(err(
                        "constraint names must be plain search parameters (no modifiers, chaining or _ parameters)",
                    ));
                }
                if value.is_empty() || value.split(',').any(str::is_empty) || value.contains('\\') {
                    return Err(err("constraint values must be non-empty"));
                }
                if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(err("constraint values must not hold whitespace"));
                }
                constraint.push((name.to_owned(), value));
            }
            constraint.sort();
            constraint.dedup();
        }
        Ok(Scope { resource_type, perms, constraint, style })
    }

    fn type_str(&self) -> &str {
        self.resource_type.as_deref().unwrap_or("*")
    }

    /// Does this scope apply to `resource_type`?
    pub fn covers_type(&self, resource_type: &str) -> bool {
        self.resource_type.as_deref().is_none_or(|t| t == resource_type)
    }

    /// The narrowing of a requested scope (`self`) by a registered one.
    /// `grantable` is the permission set the operator allows at all.
    pub fn intersect(&self, registered: &Scope, grantable: Perms) -> Option<Scope> {
        let resource_type = match (&self.resource_type, &registered.resource_type) {
            (None, t) => t.clone(),
            (Some(t), None) => Some(t.clone()),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            _ => return None,
        };
        let perms = self.perms.and(registered.perms).and(grantable);
        if perms.is_empty() {
            return None;
        }
        let constraint = match (self.constraint.is_empty(), registered.constraint.is_empty()) {
            (true, true) => Vec::new(),
            (false, true) => self.constraint.clone(),
            (true, false) => registered.constraint.clone(),
            (false, false) if self.constraint == registered.constraint => self.constraint.clone(),
            (false, false) => return None,
        };
        // Keep the requested spelling where it can express the result.
        let v1_expressible =
            constraint.is_empty() && [Perms::READ, Perms::WRITE, Perms::ALL].contains(&perms);
        let style = if self.style == Style::V1 && v1_expressible { Style::V1 } else { Style::V2 };
        Some(Scope { resource_type, perms, constraint, style })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "system/{}.", self.type_str())?;
        match self.style {
            Style::V1 if self.perms == Perms::READ => f.write_str("read")?,
            Style::V1 if self.perms == Perms::WRITE => f.write_str("write")?,
            Style::V1 if self.perms == Perms::ALL => f.write_str("*")?,
            _ => f.write_str(&self.perms.letters())?,
        }
        for (i, (name, value)) in self.constraint.iter().enumerate() {
            let value = percent_encoding::utf8_percent_encode(value, CONSTRAINT_VALUE);
            write!(f, "{}{name}={value}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// Characters escaped in a printed constraint value (keeps the scope one
/// space-free token and the query unambiguous).
const CONSTRAINT_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'%').add(b'&').add(b'=').add(b'?').add(b'#');

/// The scopes a token carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    scopes: Vec<Scope>,
}

/// How a scope set covers one resource type and permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage<'a> {
    /// No scope covers it.
    None,
    /// An unconstrained scope covers it.
    Full,
    /// Only constrained scopes cover it: one of their constraints must hold.
    Constrained(Vec<&'a [(String, String)]>),
}

/// Why an interaction is refused (403 insufficient_scope).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl ScopeSet {
    pub fn new(scopes: Vec<Scope>) -> ScopeSet {
        ScopeSet { scopes }
    }

    /// Parse a space-separated scope string, every token valid.
    pub fn parse_strict(text: &str) -> Result<ScopeSet, ScopeError> {
        let scopes = text.split_ascii_whitespace().map(Scope::parse).collect::<Result<Vec<_>, _>>()?;
        Ok(ScopeSet { scopes })
    }

    /// Grant: requested ∩ registered, minus what the operator never grants.
    /// Requested tokens fhirwall does not understand are dropped (SMART lets
    /// a server ignore them). The result may be empty.
    pub fn grant(requested: &str, registered: &ScopeSet, allow_writes: bool) -> ScopeSet {
        let grantable = if allow_writes { Perms::ALL } else { Perms::READ };
        let mut granted: Vec<Scope> = Vec::new();
        for token in requested.split_ascii_whitespace().take(MAX_SCOPES) {
            let Ok(wanted) = Scope::parse(token) else { continue };
            for allowed in &registered.scopes {
                if let Some(scope) = wanted.intersect(allowed, grantable)
                    && !granted.contains(&scope)
                {
                    granted.push(scope);
                }
            }
        }
        // Drop what another granted scope already gives.
        let subsumed = |a: &Scope, b: &Scope| {
            a != b
                && b.resource_type.as_ref().is_none_or(|t| a.resource_type.as_ref() == Some(t))
                && b.perms.contains(a.perms)
                && (b.constraint.is_empty() || b.constraint == a.constraint)
        };
        let kept = granted.iter().filter(|a| !granted.iter().any(|b| subsumed(a, b))).cloned().collect();
        ScopeSet { scopes: kept }
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Scope> {
        self.scopes.iter()
    }

    /// Does any scope grant a write permission?
    pub fn has_writes(&self) -> bool {
        self.scopes.iter().any(|s| s.perms.intersects(Perms::WRITE))
    }

    /// How the set covers `perm` on `resource_type`.
    pub fn coverage(&self, resource_type: &str, perm: Perms) -> Coverage<'_> {
        let mut constrained = Vec::new();
        for scope in &self.scopes {
            if scope.covers_type(resource_type) && scope.perms.contains(perm) {
                if scope.constraint.is_empty() {
                    return Coverage::Full;
                }
                constrained.push(scope.constraint.as_slice());
            }
        }
        if constrained.is_empty() { Coverage::None } else { Coverage::Constrained(constrained) }
    }

    /// Unconstrained `perm` on `resource_type` (what reads and operations need).
    pub fn allows(&self, resource_type: &str, perm: Perms) -> bool {
        self.coverage(resource_type, perm) == Coverage::Full
    }

    /// Check the interaction against the scopes; for searches under a
    /// constrained scope, add the constraint to the parameters.
    pub fn authorize(&self, request: &mut FhirRequest) -> Result<(), Denied> {
        let need = |t: &str, perm: Perms, what: &str| -> Result<(), Denied> {
            match self.coverage(t, perm) {
                Coverage::Full => Ok(()),
                Coverage::None => Err(Denied(format!("the token's scopes do not allow {what} of {t}"))),
                Coverage::Constrained(_) => Err(Denied(format!(
                    "the token's scopes allow {t} only under a query constraint: {what} is not available, \
                     use a search (e.g. with _id) instead"
                ))),
            }
        };
        match &request.interaction {
            Interaction::Capabilities | Interaction::Page { .. } => Ok(()),
            Interaction::Read { resource_type, .. } => need(resource_type, Perms::R, "read"),
            Interaction::Vread { resource_type, .. } => need(resource_type, Perms::R, "vread"),
            Interaction::HistoryInstance { resource_type, .. } => need(resource_type, Perms::R, "history"),
            Interaction::SearchType { resource_type }
            | Interaction::SearchCompartment { resource_type, .. } => {
                let resource_type = resource_type.clone();
                self.authorize_search(&resource_type, &mut request.params)
            }
            Interaction::Operation(Operation::MemberMatch) => {
                need("Patient", Perms::R, "$member-match (read)")
            }
            Interaction::Operation(Operation::ProviderMemberMatch) => {
                need("Group", Perms::R, "$provider-member-match (read)")
            }
            // Exports: read on every exported type is checked against the
            // token at the kick-off, read on Group against the client's
            // registration (bulk clients ask only for the types they export).
            Interaction::Operation(Operation::DavinciDataExport { .. } | Operation::GroupExport { .. }) => {
                Ok(())
            }
            Interaction::Operation(Operation::SystemExport) => {
                Err(Denied("system-level $export is not offered".into()))
            }
            Interaction::Operation(Operation::PatientExport) => {
                Err(Denied("Patient-level $export is not offered: Provider Access exports a Group".into()))
            }
            Interaction::Create { resource_type } => need(resource_type, Perms::C, "create"),
            Interaction::Update { resource_type, .. } | Interaction::Patch { resource_type, .. } => {
                need(resource_type, Perms::U, "update")
            }
            Interaction::Delete { resource_type, .. } => need(resource_type, Perms::D, "delete"),
            // The entries of a batch are not inspected here: only a token that
            // may do everything to every type may send one.
            Interaction::Batch => {
                if self
                    .scopes
                    .iter()
                    .any(|s| s.resource_type.is_none() && s.perms == Perms::ALL && s.constraint.is_empty())
                {
                    Ok(())
                } else {
                    Err(Denied("batch/transaction needs system/*.cruds".into()))
                }
            }
        }
    }

    fn authorize_search(&self, resource_type: &str, params: &mut SearchParams) -> Result<(), Denied> {
        match self.coverage(resource_type, Perms::S) {
            Coverage::Full => {}
            Coverage::None => {
                return Err(Denied(format!("the token's scopes do not allow search of {resource_type}")));
            }
            Coverage::Constrained(constraints) => apply_constraint(resource_type, &constraints, params)?,
        }
        self.authorize_includes(params)
    }

    fn authorize_includes(&self, params: &SearchParams) -> Result<(), Denied> {
        let readable = |t: &str| self.allows(t, Perms::S) || self.allows(t, Perms::R);
        for param in params.iter() {
            let reverse = match param.name.as_str() {
                "_include" => false,
                "_revinclude" => true,
                _ => continue,
            };
            for value in &param.values {
                let parts: Vec<&str> = value.split(':').collect();
                let included = if reverse { parts.first().copied() } else { parts.get(2).copied() };
                let ok = match included {
                    Some(t) => readable(t),
                    // Target unknown: only a token that reads every type unconstrained.
                    None => self.scopes.iter().any(|s| {
                        s.resource_type.is_none()
                            && s.constraint.is_empty()
                            && s.perms.intersects(Perms::READ)
                    }),
                };
                if !ok {
                    return Err(Denied(format!(
                        "{}={value}: the token's scopes do not cover the included resources{}",
                        param.key(),
                        if included.is_none() { " (name the target type: Source:param:Target)" } else { "" }
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Make a search satisfy one of the constraints (see the module docs).
fn apply_constraint(
    resource_type: &str,
    constraints: &[&[(String, String)]],
    params: &mut SearchParams,
) -> Result<(), Denied> {
    let carried = |c: &[(String, String)]| {
        c.iter().all(|(name, value)| {
            let wanted = split_values(value);
            params.iter().any(|p| p.name == *name && p.modifier.is_none() && p.values == wanted)
        })
    };
    if constraints.iter().any(|c| carried(c)) {
        return Ok(());
    }
    let to_add: Vec<(String, Vec<String>)> = if let [only] = constraints {
        only.iter().map(|(n, v)| (n.clone(), split_values(v))).collect()
    } else {
        // Several constraints: mergeable only when each is one and the same parameter.
        let name = constraints.first().and_then(|c| c.first()).map(|(n, _)| n.clone());
        let mergeable = constraints.iter().all(|c| c.len() == 1 && Some(&c[0].0) == name.as_ref());
        match (mergeable, name) {
            (true, Some(name)) => {
                let mut values: Vec<String> = Vec::new();
                for c in constraints {
                    for v in split_values(&c[0].1) {
                        if !values.contains(&v) {
                            values.push(v);
                        }
                    }
                }
                vec![(name, values)]
            }
            _ => {
                return Err(Denied(format!(
                    "the token's scopes allow {resource_type} only under query constraints: \
                     the search must carry one of them exactly"
                )));
            }
        }
    };
    for (name, values) in to_add {
        params.push(SearchParam::new(name, None::<Modifier>, values));
    }
    Ok(())
}

fn split_values(value: &str) -> Vec<String> {
    value.split(',').map(str::to_owned).collect()
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{scope}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search::ParamContext;

    fn set(text: &str) -> ScopeSet {
        ScopeSet::parse_strict(text).unwrap()
    }

    #[test]
    fn parses_v1_and_v2() {
        for (text, ty, perms, style) in [
            ("system/Patient.read", Some("Patient"), Perms::READ, Style::V1),
            ("system/*.read", None, Perms::READ, Style::V1),
            ("system/*.write", None, Perms::WRITE, Style::V1),
            ("system/*.*", None, Perms::ALL, Style::V1),
            ("system/Patient.rs", Some("Patient"), Perms::READ, Style::V2),
            ("system/*.cruds", None, Perms::ALL, Style::V2),
            ("system/Observation.r", Some("Observation"), Perms::R, Style::V2),
            ("system/Observation.s", Some("Observation"), Perms::S, Style::V2),
        ] {
            let s = Scope::parse(text).unwrap();
            assert_eq!((s.resource_type.as_deref(), s.perms, s.style), (ty, perms, style), "{text}");
            assert_eq!(s.to_string(), text);
        }
        let c = Scope::parse("system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")
            .unwrap();
        assert_eq!(
            c.constraint,
            vec![(
                "category".into(),
                "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".into()
            )]
        );
        assert_eq!(Scope::parse(&c.to_string()).unwrap(), c);
    }

    #[test]
    fn refuses_malformed_scopes() {
        for bad in [
            "patient/Patient.read",
            "user/*.read",
            "openid",
            "system/Patient",
            "system/Bogus.read",
            "system/patient.read",
            "system/Patient.dus",
            "system/Patient.dr",
            "system/Patient.sr",
            "system/Patient.rr",
            "system/Patient.",
            "system/Patient.x",
            "system/Observation.read?category=lab",
            "system/Observation.rs?",
            "system/Observation.rs?category",
            "system/Observation.rs?category=",
            "system/Observation.rs?code:not=x",
            "system/Observation.rs?subject.name=x",
            "system/Observation.rs?_filter=x",
            "system/Observation.rs?code=a,,b",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        assert!(Scope::parse(&format!("system/Patient.rs?code={}", "x".repeat(600))).is_err());
    }

    #[test]
    fn grant_is_requested_intersect_registered() {
        for (requested, registered, allow_writes, expected) in [
            ("system/*.read", "system/*.read", false, "system/*.read"),
            ("system/Patient.read", "system/*.read", false, "system/Patient.read"),
            ("system/*.read", "system/Patient.read", false, "system/Patient.read"),
            ("system/*.rs", "system/*.read", false, "system/*.rs"),
            ("system/*.read", "system/*.rs", false, "system/*.read"),
            ("system/*.cruds", "system/*.read", false, "system/*.rs"),
            ("system/*.*", "system/*.*", false, "system/*.read"),
            ("system/*.*", "system/*.*", true, "system/*.*"),
            ("system/*.write", "system/*.*", false, ""),
            ("system/*.write", "system/*.*", true, "system/*.write"),
            ("system/Patient.cud", "system/*.cruds", false, ""),
            ("system/Patient.r", "system/*.read", false, "system/Patient.r"),
            ("system/Observation.read", "system/Patient.read", false, ""),
            (
                "system/Patient.read system/Observation.read",
                "system/Patient.read",
                false,
                "system/Patient.read",
            ),
            ("system/*.read system/Patient.read", "system/*.read", false, "system/*.read"),
            (
                "system/*.read",
                "system/*.read system/Observation.rs?category=laboratory",
                false,
                "system/*.read",
            ),
            (
                "system/Observation.rs?category=laboratory",
                "system/*.read",
                false,
                "system/Observation.rs?category=laboratory",
            ),
            (
                "system/Observation.rs",
                "system/Observation.rs?category=laboratory",
                false,
                "system/Observation.rs?category=laboratory",
            ),
            (
                "system/*.read",
                "system/Observation.rs?category=laboratory",
                false,
                "system/Observation.rs?category=laboratory",
            ),
            (
                "system/Observation.rs?category=vital-signs",
                "system/Observation.rs?category=laboratory",
                false,
                "",
            ),
            ("openid fhirUser system/*.read", "system/*.read", false, "system/*.read"),
            ("system/Bogus.read", "system/*.read", false, ""),
            ("", "system/*.read", false, ""),
        ] {
            let granted = ScopeSet::grant(requested, &set(registered), allow_writes);
            assert_eq!(granted.to_string(), expected, "{requested} ∩ {registered}");
        }
    }

    fn request(interaction: Interaction, query: &str) -> FhirRequest {
        FhirRequest {
            interaction,
            params: SearchParams::parse_query(query, ParamContext::Search).unwrap(),
            head: false,
        }
    }

    fn search(t: &str, query: &str) -> FhirRequest {
        request(Interaction::SearchType { resource_type: t.into() }, query)
    }

    fn read(t: &str) -> FhirRequest {
        FhirRequest {
            interaction: Interaction::Read { resource_type: t.into(), id: "1".into() },
            params: SearchParams::default(),
            head: false,
        }
    }

    #[test]
    fn interactions_need_the_right_permission() {
        let op = |o: Operation| FhirRequest {
            interaction: Interaction::Operation(o),
            params: SearchParams::default(),
            head: false,
        };
        let cases: Vec<(&str, FhirRequest, bool)> = vec![
            ("system/*.read", read("Patient"), true),
            ("system/Patient.read", read("Patient"), true),
            ("system/Patient.read", read("Observation"), false),
            ("system/Patient.s", read("Patient"), false),
            ("system/Patient.r", read("Patient"), true),
            ("system/Patient.r", search("Patient", "name=x"), false),
            ("system/Patient.s", search("Patient", "name=x"), true),
            ("system/Observation.rs", search("Patient", ""), false),
            ("system/Patient.rs", op(Operation::MemberMatch), true),
            ("system/Group.rs", op(Operation::MemberMatch), false),
            ("system/Group.read", op(Operation::ProviderMemberMatch), true),
            ("system/Patient.read", op(Operation::ProviderMemberMatch), false),
            ("system/Group.read", op(Operation::GroupExport { group: "g".into() }), true),
            ("system/Group.read", op(Operation::DavinciDataExport { group: "g".into() }), true),
            // The kick-off checks the types (token) and Group (registration).
            ("system/Patient.read", op(Operation::DavinciDataExport { group: "g".into() }), true),
            ("system/*.*", op(Operation::PatientExport), false),
            ("system/*.*", op(Operation::SystemExport), false),
            ("system/*.read", request(Interaction::Create { resource_type: "Patient".into() }, ""), false),
            ("system/*.cruds", request(Interaction::Create { resource_type: "Patient".into() }, ""), true),
            (
                "system/*.rs",
                request(Interaction::Delete { resource_type: "Patient".into(), id: "1".into() }, ""),
                false,
            ),
            ("system/*.read", request(Interaction::Batch, ""), false),
            ("system/*.cruds", request(Interaction::Batch, ""), true),
            ("system/Patient.read", request(Interaction::Page { token: "t".into() }, ""), true),
            ("system/*.read", search("Observation", "_include=Observation:patient"), true),
            ("system/Observation.rs", search("Observation", "_include=Observation:patient"), false),
            (
                "system/Observation.rs system/Patient.rs",
                search("Observation", "_include=Observation:patient:Patient"),
                true,
            ),
            ("system/Observation.rs", search("Observation", "_include=Observation:patient:Patient"), false),
            ("system/Observation.rs", search("Observation", "_revinclude=Provenance:target"), false),
            (
                "system/Observation.rs system/Provenance.rs",
                search("Observation", "_revinclude=Provenance:target"),
                true,
            ),
            (
                "system/Observation.rs system/Patient.rs?gender=female",
                search("Observation", "_include=Observation:patient:Patient"),
                false,
            ),
        ];
        for (scopes, mut req, allowed) in cases {
            let what = format!("{scopes} / {:?}", req.interaction);
            assert_eq!(set(scopes).authorize(&mut req).is_ok(), allowed, "{what}");
        }
    }

    #[test]
    fn constrained_scopes_are_enforced() {
        let lab = set("system/Observation.rs?category=laboratory");
        // A read of a constrained-only type is refused.
        assert!(lab.authorize(&mut read("Observation")).is_err());
        // A search without the constraint gets it added.
        let mut req = search("Observation", "patient=Patient/1");
        lab.authorize(&mut req).unwrap();
        assert_eq!(req.params.to_query_string(), "patient=Patient%2F1&category=laboratory");
        // Carrying it already: unchanged.
        let mut req = search("Observation", "category=laboratory&patient=Patient/1");
        lab.authorize(&mut req).unwrap();
        assert_eq!(req.params.to_query_string(), "category=laboratory&patient=Patient%2F1");
        // Asking for another category: both apply (AND), so nothing outside leaks.
        let mut req = search("Observation", "category=vital-signs");
        lab.authorize(&mut req).unwrap();
        assert_eq!(req.params.to_query_string(), "category=vital-signs&category=laboratory");
        // A modifier does not count as carrying it.
        let mut req = search("Observation", "category:not=laboratory");
        lab.authorize(&mut req).unwrap();
        assert!(req.params.to_query_string().ends_with("&category=laboratory"));
        // Compartment searches too.
        let mut req = request(
            Interaction::SearchCompartment { patient_id: "1".into(), resource_type: "Observation".into() },
            "",
        );
        lab.authorize(&mut req).unwrap();
        assert_eq!(req.params.to_query_string(), "category=laboratory");
        // Other types are not covered at all.
        assert!(lab.authorize(&mut search("Condition", "")).is_err());
        // An unconstrained scope on the type lifts the constraint.
        let both = set("system/Observation.rs?category=laboratory system/Observation.rs");
        let mut req = search("Observation", "");
        both.authorize(&mut req).unwrap();
        assert!(req.params.is_empty());
        // Two constraints on one parameter are ORed.
        let two = set("system/Observation.rs?category=laboratory system/Observation.rs?category=vital-signs");
        let mut req = search("Observation", "");
        two.authorize(&mut req).unwrap();
        assert_eq!(req.params.to_query_string(), "category=laboratory,vital-signs");
        let mut req = search("Observation", "category=vital-signs");
        two.authorize(&mut req).unwrap();
        assert_eq!(req.params.to_query_string(), "category=vital-signs");
        // Two constraints on different parameters cannot be merged.
        let mixed = set("system/Observation.rs?category=laboratory system/Observation.rs?code=1234-5");
        assert!(mixed.authorize(&mut search("Observation", "")).is_err());
        let mut req = search("Observation", "code=1234-5");
        mixed.authorize(&mut req).unwrap();
        // Multi-parameter constraint: all of them added.
        let multi = set("system/Observation.rs?category=laboratory&status=final");
        let mut req = search("Observation", "");
        multi.authorize(&mut req).unwrap();
        assert_eq!(req.params.to_query_string(), "category=laboratory&status=final");
        // A system|code value survives the round trip.
        let coded = set(
            "system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        );
        let mut req = search("Observation", "");
        coded.authorize(&mut req).unwrap();
        let reparsed =
            SearchParams::parse_query(&req.params.to_query_string(), ParamContext::Search).unwrap();
        assert_eq!(
            reparsed.first("category").unwrap().values,
            vec!["http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_string()]
        );
    }
}
