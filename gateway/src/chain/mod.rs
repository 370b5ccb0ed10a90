//! The response chain: everything that leaves toward a provider passes
//! here, and what leaves depends only on data the caller may see
//! (DESIGN.md "Contract details", non-interference).
//!
//! Order, for every upstream body:
//! 1. [`strict`]: one validating pass; invalid JSON or a member name twice
//!    in one object, at any depth, is the upstream's fault (502). It leaves
//!    a [`tape`]: the stages find a page's entries, each resource and its
//!    members there instead of parsing the body again.
//! 2. The stages, each an implementation of [`stage::Stage`] run by
//!    [`stage::run`], in this order: access (`access::stage`: attribution,
//!    opt-outs, Groups rebuilt), data scope (`redact::stage::DataScope`: Part
//!    2 by label, code and program; drug PAs; service-date floor;
//!    `financial.toml`; a record pointing at one withheld in the same answer),
//!    [`names`] (a record naming a hidden patient anywhere, or a patient by
//!    identifier only), financial (`redact::stage::Money`, money beyond
//!    `financial.toml`), Part 2 by reference (`redact::stage::Part2References`,
//!    targets looked up upstream when they are not in the answer), policy
//!    plugins (`plugins::policy::PluginStage`), and last the caller's
//!    `_elements`/`_summary`. Each answers one [`disclosure::Verdict`] per
//!    resource in one [`disclosure::Reason`] vocabulary and counts it in the
//!    answer's [`disclosure::Disclosure`], which the audit event is written
//!    from (and which keeps a per-resource trace for explain). A resource
//!    one stage withholds is seen by no later stage.
//!    `server::pipeline::answer` drives them; [`capability`] writes `metadata`.
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
pub mod disclosure;
pub mod elements;
pub mod envelope;
pub mod names;
pub mod page;
pub mod stage;
pub mod strict;
pub mod tape;

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
    let mut out: Vec<String> = match raw_reference_values(resource) {
        Some(values) => {
            values.into_iter().filter_map(crate::fhir::normalize_reference).map(str::to_owned).collect()
        }
        None => {
            let mut out = Vec::new();
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(resource) {
                walk_references(&value, &mut out);
            }
            out
        }
    };
    out.sort();
    out.dedup();
    out
}

fn walk_references(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, member) in map {
                if key == "reference"
                    && let Some(text) = member.as_str()
                    && let Some(normal) = crate::fhir::normalize_reference(text)
                {
                    out.push(normal.to_owned());
                } else {
                    walk_references(member, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| walk_references(item, out)),
        _ => {}
    }
}

/// The string values of every `"reference"` member, read from raw JSON
/// that passed the strict reader, without building a tree. `None` when the
/// text holds a `\u` escape (a member name could then be spelled with
/// escapes) or a reference value holds an escape: callers then parse fully.
pub fn raw_reference_values(text: &str) -> Option<Vec<&str>> {
    if text.contains("\\u") {
        return None;
    }
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(REFERENCE_KEY));
    const REFERENCE_KEY: &str = "\"reference\"";
    let mut out = Vec::new();
    for start in KEY.find_iter(text.as_bytes()) {
        let from = start + REFERENCE_KEY.len();
        // A member name follows `{` or `,`; the same word as a value follows `:`.
        if !text[..start].trim_end().ends_with(['{', ',']) {
            continue;
        }
        let Some(rest) = text[from..].trim_start().strip_prefix(':') else { continue };
        let Some(value) = rest.trim_start().strip_prefix('"') else { continue };
        let end = value.find('"')?;
        let value = &value[..end];
        if value.contains('\\') {
            return None;
        }
        out.push(value);
    }
    Some(out)
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
        // The raw reader and the tree agree; escapes send it to the tree.
        let escaped =
            r#"{"subject":{"refer\u0065nce":"Patient/p2"},"note":[{"text":"\"reference\":\"Patient/p3\""}]}"#;
        assert_eq!(raw_reference_values(escaped), None);
        assert_eq!(references(escaped), vec!["Patient/p2"]);
        let tricky = r#"{"type":"reference","note":[{"text":"a \"reference\": \"Patient/p3\""}],"a" : { "reference" : "Patient/p4" }}"#;
        assert_eq!(raw_reference_values(tricky), Some(vec!["Patient/p4"]));
    }
}
