//! The response chain: everything that leaves toward a provider passes
//! here, and what leaves depends only on data the caller may see
//! (DESIGN.md "Contract details", non-interference).
//!
//! Order, for every upstream body:
//! 1. [`strict`]: one validating pass; invalid JSON or a member name twice
//!    in one object, at any depth, is the upstream's fault (502).
//! 2. The stages, per resource: access (attribution, opt-outs), data scope
//!    (Part 2 by label, code and program; drug PAs; service-date floor;
//!    financial), then policy plugins. The server runs them and hands the
//!    survivors here as [`Entry`] values.
//! 3. Follow-up across entries ([`page::PageBuilder`]): pages are filled
//!    from further upstream pages until `_count` visible matches exist,
//!    `_include`/`_revinclude` results leave only when they are linked to a
//!    match that leaves, and `next` appears only when a further visible match
//!    was seen.
//! 4. [`envelope`]: the Bundle is written anew from an allow-list — `type`,
//!    a `total` only when it counts visible matches of a complete answer,
//!    `self`/`next` links, and per entry `fullUrl`, `resource`, `search.mode`
//!    (history: `request`/`response` status, etag, lastModified). Nothing
//!    else of the upstream's Bundle (signature, extensions, `issues`,
//!    `entry.response.outcome`, scores, other links) is copied.

pub mod capability;
pub mod envelope;
pub mod names;
pub mod page;
pub mod strict;

/// How an entry came into an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// A search match (or a history version).
    Match,
    /// An `_include` / `_revinclude` result.
    Include,
}

/// The history facts of a version entry that may be copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionFacts {
    pub method: Option<String>,
    pub status: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// A resource that passed every stage, ready to leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `Type/id` of the resource.
    pub key: String,
    pub mode: EntryMode,
    /// The resource's JSON as it leaves (URLs already on fhirwall's base).
    pub resource: String,
    /// History entries only.
    pub version: Option<VersionFacts>,
}

/// Every literal reference in a resource, as `Type/id` (relative, absolute
/// and versioned spellings alike). `reference` members at any depth count;
/// `#contained` and logical-only references do not.
pub fn references(resource: &str) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, member) in map {
                    if key == "reference"
                        && let Some(text) = member.as_str()
                        && let Some(normal) = crate::redact::normalize_reference(text)
                    {
                        out.push(normal);
                    } else {
                        walk(member, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(resource) {
        walk(&value, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_at_any_depth_and_normalised() {
        let text = r##"{"resourceType":"Provenance","id":"p","target":[{"reference":"http://x/fhir/Encounter/e1/_history/2"}],
            "agent":[{"who":{"reference":"Patient/p9"},"onBehalfOf":{"identifier":{"value":"1"}}}],
            "entity":[{"what":{"reference":"#c1"}},{"what":{"reference":"Observation/o1"}}]}"##;
        assert_eq!(references(text), vec!["Encounter/e1", "Observation/o1", "Patient/p9"]);
        assert!(references("not json").is_empty());
    }
}
