//! Exact reference comparison. A reference is reduced to `(type, id)` after
//! removing a known base (the upstream's URL and aliases, fhirwall's public
//! base); anything else (another server's URL, `urn:`, `#contained`, a
//! logical identifier) is `Unknown` and never matches a patient. Ids are
//! compared as whole strings, so `Patient/12` is never `Patient/123`.

use crate::fhir::search::is_fhir_id;
use crate::fhir::types::is_resource_type;

/// What a reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Patient(&'a str),
    Other { resource_type: &'a str, id: &'a str },
    Unknown,
}

/// Reduces references to `(type, id)`.
#[derive(Debug, Clone)]
pub struct RefResolver {
    /// Known bases, no trailing slash, longest first.
    bases: Vec<String>,
}

impl RefResolver {
    /// `bases`: the upstream base, its aliases and the public base.
    pub fn new<I, S>(bases: I) -> RefResolver
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut bases: Vec<String> = bases
            .into_iter()
            .map(|b| b.as_ref().trim_end_matches('/').to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        bases.sort_by_key(|b| std::cmp::Reverse(b.len()));
        bases.dedup();
        RefResolver { bases }
    }

    /// A reference as found in a resource (`Reference.reference`):
    /// `Type/id`, `Type/id/_history/v`, or either on a known base.
    pub fn resolve<'a>(&self, reference: &'a str) -> Target<'a> {
        let relative = self.strip_base(reference).unwrap_or(reference);
        relative_target(relative)
    }

    /// A reference search value: like [`RefResolver::resolve`], plus a bare
    /// id, which names a Patient (fhirwall treats it so whatever the
    /// parameter's other targets: fail closed).
    pub fn resolve_search_value<'a>(&self, value: &'a str) -> Target<'a> {
        if is_fhir_id(value) {
            return Target::Patient(value);
        }
        self.resolve(value)
    }

    fn strip_base<'a>(&self, reference: &'a str) -> Option<&'a str> {
        if !reference.contains("://") {
            return None;
        }
        self.bases.iter().find_map(|base| reference.strip_prefix(base.as_str())?.strip_prefix('/'))
    }
}

/// `Type/id` or `Type/id/_history/vid`, all parts checked.
fn relative_target(text: &str) -> Target<'_> {
    let mut parts = text.split('/');
    let (Some(resource_type), Some(id)) = (parts.next(), parts.next()) else {
        return Target::Unknown;
    };
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => {}
        (Some("_history"), Some(version), None) if is_fhir_id(version) => {}
        _ => return Target::Unknown,
    }
    if !is_resource_type(resource_type) || !is_fhir_id(id) {
        return Target::Unknown;
    }
    if resource_type == "Patient" { Target::Patient(id) } else { Target::Other { resource_type, id } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_compare_exactly_after_normalisation() {
        let r =
            RefResolver::new(["http://up:9000/fhir/", "https://gw.example/fhir", "https://alias.example/r4"]);
        let cases: &[(&str, Target)] = &[
            ("Patient/12", Target::Patient("12")),
            ("Patient/123", Target::Patient("123")),
            ("http://up:9000/fhir/Patient/12", Target::Patient("12")),
            ("https://gw.example/fhir/Patient/12", Target::Patient("12")),
            ("https://alias.example/r4/Patient/12", Target::Patient("12")),
            ("Patient/12/_history/3", Target::Patient("12")),
            ("Organization/o1", Target::Other { resource_type: "Organization", id: "o1" }),
            (
                "ExplanationOfBenefit/e-1.2",
                Target::Other { resource_type: "ExplanationOfBenefit", id: "e-1.2" },
            ),
            // everything that cannot be checked is Unknown
            ("https://evil.example/fhir/Patient/12", Target::Unknown),
            ("http://up:9000/fhir2/Patient/12", Target::Unknown),
            ("http://up:9000/fhirPatient/12", Target::Unknown),
            ("patient/12", Target::Unknown),
            ("PATIENT/12", Target::Unknown),
            ("Patient/12/", Target::Unknown),
            ("Patient//12", Target::Unknown),
            ("Patient/12/_history", Target::Unknown),
            ("Patient/12/Observation", Target::Unknown),
            ("Patient/1 2", Target::Unknown),
            ("Patient/12%2F3", Target::Unknown),
            ("Patient/../Patient/12", Target::Unknown),
            ("#p1", Target::Unknown),
            ("urn:uuid:1b6e0b4e-9b2c-4bd5-9b2a-2a1c3c8d3e1f", Target::Unknown),
            ("12", Target::Unknown),
            ("", Target::Unknown),
            ("Patient/", Target::Unknown),
        ];
        for (reference, want) in cases {
            assert_eq!(r.resolve(reference), *want, "{reference}");
        }
        assert_eq!(r.resolve_search_value("12"), Target::Patient("12"));
        assert_eq!(r.resolve_search_value("Patient/12"), Target::Patient("12"));
        assert_eq!(r.resolve_search_value("a,b"), Target::Unknown);
        assert_eq!(r.resolve_search_value("x\\,y"), Target::Unknown);
    }
}
