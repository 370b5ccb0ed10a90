//! Fuzz the search-parameter parser and canonicaliser
//! (`fhir::search::SearchParams`): it must never panic, and whatever it
//! accepts must hold what the gateway relies on downstream — the context's
//! allow-list, no probing syntax, limits, a normalised `_count`, no
//! `_format` — and its canonical query (what goes upstream) must re-parse
//! to exactly the same parameters and re-encode to the same bytes.
#![no_main]

use fhirwall::fhir::search::{
    MAX_COUNT, MAX_PARAMS, MAX_RAW_QUERY_BYTES, MAX_VALUES_PER_PARAM, Modifier, ParamContext, SearchParam,
    SearchParams, escape, unescape,
};
use libfuzzer_sys::fuzz_target;

const CONTEXTS: [ParamContext; 8] = [
    ParamContext::Search,
    ParamContext::Read,
    ParamContext::History,
    ParamContext::Capabilities,
    ParamContext::Page,
    ParamContext::Export,
    ParamContext::Operation,
    ParamContext::Write,
];

/// Refused wherever they appear (they let a caller probe data it may not see).
const REFUSED: [&str; 7] = ["_has", "_filter", "_query", "_total", "_method", "_contained", "_containedType"];

/// Control parameters that may appear once only (`mode` too, in `metadata`:
/// elsewhere it is an ordinary search parameter; `_type` may repeat on an
/// export kick-off, BULK-11).
const SINGLE: [&str; 8] =
    ["_count", "_summary", "_sort", "_elements", "_pretty", "_since", "_until", "_outputFormat"];

// Input: one byte choosing the context, then `query[\0form[\0literal]]`:
// the query string (without `?`), a POST `_search` form body parsed after
// it as one list, and a literal for the escape / unescape round trip.
fuzz_target!(|data: &[u8]| {
    let Some((&context, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let context = CONTEXTS[usize::from(context) % CONTEXTS.len()];
    let mut parts = text.splitn(3, '\0');
    let (query, form, literal) = (parts.next().unwrap_or(""), parts.next(), parts.next().unwrap_or(""));
    let sources: Vec<&str> = std::iter::once(query).chain(form).collect();
    match SearchParams::parse_sources(&sources, context) {
        Ok(params) => check_accepted(&params, context),
        Err(error) => {
            let status = error.status.as_u16();
            assert!(matches!(status, 400 | 406 | 414), "unexpected status {status} for {sources:?}");
        }
    }
    check_escape(literal);
});

fn check_accepted(params: &SearchParams, context: ParamContext) {
    assert!(params.len() <= MAX_PARAMS, "{} parameters", params.len());
    for param in params {
        check_param(param, context);
    }
    for name in SINGLE {
        assert!(params.get(name).count() <= 1, "{name} more than once");
    }
    if context == ParamContext::Capabilities {
        assert!(params.get("mode").count() <= 1, "mode more than once");
    }
    // The canonical query: only unreserved bytes, escapes and structure.
    let canonical = params.to_query_string();
    assert!(
        canonical.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%&=:,".contains(&b)),
        "non-canonical byte in {canonical:?}"
    );
    assert!(canonical.len() <= MAX_RAW_QUERY_BYTES, "canonical query of {} bytes", canonical.len());
    // What goes upstream means exactly what the gateway judged.
    let again = SearchParams::parse_query(&canonical, context)
        .unwrap_or_else(|e| panic!("canonical {canonical:?} refused: {}", e.message));
    assert_eq!(&again, params, "round trip of {canonical:?}");
    assert_eq!(again.to_query_string(), canonical, "canonical form is not a fixed point");
}

fn check_param(param: &SearchParam, context: ParamContext) {
    let name = param.name.as_str();
    assert!(is_name(name), "bad name {name:?}");
    assert!(!REFUSED.contains(&name), "refused parameter {name} accepted");
    assert_ne!(name, "_format", "_format must be dropped");
    assert!(
        !param.values.is_empty() && param.values.len() <= MAX_VALUES_PER_PARAM,
        "{name}: {} values",
        param.values.len()
    );
    for value in &param.values {
        assert!(!value.is_empty(), "{name}: empty value");
        assert!(escapes_ok(value), "{name}: stray backslash in {value:?}");
    }
    let iterate = param.modifier == Some(Modifier::Iterate);
    assert!(!iterate || matches!(name, "_include" | "_revinclude"), ":iterate on {name}");
    if name.starts_with('_') && !matches!(name, "_include" | "_revinclude") {
        // Control parameters take no modifier, except the search-only
        // underscore filters (`_tag:not=...`).
        let filter =
            matches!(name, "_tag" | "_profile" | "_security" | "_source" | "_text" | "_content" | "_list");
        assert!(param.modifier.is_none() || filter, "modifier on {name}");
    }
    if name == "_count" {
        assert_eq!(param.values.len(), 1);
        let value = &param.values[0];
        let count: u32 = value.parse().unwrap_or_else(|_| panic!("_count {value:?} not a number"));
        assert!((1..=MAX_COUNT).contains(&count) && *value == count.to_string(), "_count {value:?}");
    }
    if name == "_summary" {
        assert!(
            matches!(param.values[0].as_str(), "true" | "text" | "data" | "false"),
            "_summary {:?}",
            param.values
        );
    }
    if matches!(name, "_include" | "_revinclude") {
        assert!(param.values.len() == 1 && !param.values[0].contains('*'), "{name} {:?}", param.values);
    }
    let allowed = match context {
        ParamContext::Search => {
            !name.starts_with('_')
                || matches!(
                    name,
                    "_pretty"
                        | "_count"
                        | "_sort"
                        | "_include"
                        | "_revinclude"
                        | "_elements"
                        | "_summary"
                        | "_lastUpdated"
                        | "_id"
                        | "_tag"
                        | "_profile"
                        | "_security"
                        | "_source"
                        | "_text"
                        | "_content"
                        | "_list"
                )
        }
        ParamContext::Read => matches!(name, "_pretty" | "_elements" | "_summary"),
        ParamContext::History => matches!(name, "_pretty" | "_count" | "_since" | "_at"),
        ParamContext::Capabilities => matches!(name, "_pretty" | "mode"),
        ParamContext::Export => matches!(
            name,
            "_pretty"
                | "_since"
                | "_until"
                | "_type"
                | "_outputFormat"
                | "_typeFilter"
                | "patient"
                | "exportType"
                | "includeAssociatedData"
        ),
        ParamContext::Page | ParamContext::Operation | ParamContext::Write => name == "_pretty",
    };
    assert!(allowed, "{name} accepted in {context:?}");
}

/// `[A-Za-z_][A-Za-z0-9_-]*`, at most 100 bytes.
fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 100
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every backslash starts one of the four FHIR escapes.
fn escapes_ok(value: &str) -> bool {
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some(',' | '$' | '|' | '\\')) {
            return false;
        }
    }
    true
}

/// `escape` makes any literal one search value that survives the canonical
/// round trip, and `unescape` gives the literal back.
fn check_escape(literal: &str) {
    let escaped = escape(literal);
    assert_eq!(unescape(&escaped), literal);
    if literal.is_empty() || literal.len() > 1024 {
        return;
    }
    let params = SearchParams { params: vec![SearchParam::single("name", escaped.clone())] };
    let parsed = SearchParams::parse_query(&params.to_query_string(), ParamContext::Search)
        .unwrap_or_else(|e| panic!("escaped literal {literal:?} refused: {}", e.message));
    assert_eq!(parsed.params.len(), 1);
    assert_eq!(parsed.params[0].values, vec![escaped], "escaped literal {literal:?} split or changed");
}
