//! Typed FHIR search parameters.
//!
//! A query string (or an `application/x-www-form-urlencoded` POST `_search`
//! body) is decoded exactly once, here, into [`SearchParams`]; every later
//! stage reads the typed form and the proxy sends [`SearchParams::to_query_string`]
//! upstream, so no raw request byte reaches the upstream un-normalised.
//!
//! Parsing happens in two steps:
//! 1. syntax, the same for every request: strict percent-decoding, `+` as a
//!    space, names `[A-Za-z_][A-Za-z0-9_-]*`, a known modifier, values split on
//!    unescaped commas with only the FHIR escapes (`\,` `\$` `\|` `\\`), limits,
//!    and refusal of the syntax that lets a caller infer data it may not see
//!    (`_has`, chaining, `_filter`, `_query`, `_total`, `_contained`, `_method`);
//! 2. a per-interaction allow-list ([`ParamContext`]): which parameters an
//!    interaction accepts and the value syntax of the result/control
//!    parameters (`_count`, `_summary`, `_include`, `_format`, ...).
//!
//! Decisions worth knowing:
//! - `_count` above [`MAX_COUNT`] is clamped to it (the caller simply gets more
//!   pages); `_count=0` is refused because it asks for a count only.
//! - Single-valued control parameters (`_count`, `_summary`, `_format`, ...)
//!   may appear once: servers disagree on whether the first or the last wins,
//!   and the gateway must see what the upstream will act on.
//! - An empty value (`patient=`, `code=a,,b`) is refused rather than ignored,
//!   so no constraint the access layer saw can silently vanish upstream.
//! - `_include`/`_revinclude` wildcards (`*`) are refused.
//! - `_format` is validated and removed: fhirwall always asks the upstream for
//!   JSON, and XML is answered with 406.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::types::is_resource_type;
use crate::error::{GatewayError, IssueCode, Kind};

/// Budget for the decoded bytes of all parameter names and values of one
/// request (query and form body together). The budget is on decoded bytes so
/// the canonical re-encoding (at most three bytes per decoded byte) stays
/// below [`MAX_RAW_QUERY_BYTES`] and re-parses: the round trip always holds.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Hard cap on the raw (encoded) length of a query or form body.
pub const MAX_RAW_QUERY_BYTES: usize = 4 * MAX_QUERY_BYTES;
/// Most parameters one request may carry (query and form body together).
pub const MAX_PARAMS: usize = 100;
/// Most comma-separated values one parameter may carry.
pub const MAX_VALUES_PER_PARAM: usize = 200;
/// Largest page size fhirwall asks of the upstream; bigger `_count`s are clamped.
pub const MAX_COUNT: u32 = 1000;
/// Longest parameter name (without the modifier) accepted.
const MAX_NAME_LEN: usize = 100;

/// Parameters refused wherever they appear, because they let a caller probe
/// data outside its compartment or bypass the typed model.
const REFUSED_NAMES: &[(&str, &str)] = &[
    ("_has", "reverse chaining (_has) is not supported"),
    ("_filter", "_filter is not supported"),
    ("_query", "named queries (_query) are not supported"),
    ("_total", "_total is not supported: totals of filtered data are never revealed"),
    ("_method", "the _method parameter is not supported"),
    ("_contained", "_contained is not supported"),
    ("_containedType", "_containedType is not supported"),
];

/// Everything outside RFC 3986 "unreserved" is percent-encoded on the way out.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A FHIR search modifier (`name:modifier=value`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Modifier {
    Missing,
    Exact,
    Contains,
    Text,
    Not,
    Above,
    Below,
    In,
    NotIn,
    OfType,
    Identifier,
    /// Only on `_include` / `_revinclude`.
    Iterate,
    /// A reference parameter restricted to one target type: `subject:Patient`.
    Type(String),
}

impl Modifier {
    /// Parse the text after the `:`; `None` for anything FHIR R4 does not define.
    pub fn parse(text: &str) -> Option<Modifier> {
        let modifier = match text {
            "missing" => Modifier::Missing,
            "exact" => Modifier::Exact,
            "contains" => Modifier::Contains,
            "text" => Modifier::Text,
            "not" => Modifier::Not,
            "above" => Modifier::Above,
            "below" => Modifier::Below,
            "in" => Modifier::In,
            "not-in" => Modifier::NotIn,
            "of-type" => Modifier::OfType,
            "identifier" => Modifier::Identifier,
            "iterate" => Modifier::Iterate,
            other if is_resource_type(other) => Modifier::Type(other.to_owned()),
            _ => return None,
        };
        Some(modifier)
    }

    /// The modifier as written after the `:`.
    pub fn as_str(&self) -> &str {
        match self {
            Modifier::Missing => "missing",
            Modifier::Exact => "exact",
            Modifier::Contains => "contains",
            Modifier::Text => "text",
            Modifier::Not => "not",
            Modifier::Above => "above",
            Modifier::Below => "below",
            Modifier::In => "in",
            Modifier::NotIn => "not-in",
            Modifier::OfType => "of-type",
            Modifier::Identifier => "identifier",
            Modifier::Iterate => "iterate",
            Modifier::Type(resource_type) => resource_type,
        }
    }
}

impl fmt::Display for Modifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `name[:modifier]=value[,value]` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParam {
    /// The parameter name without the modifier.
    pub name: String,
    pub modifier: Option<Modifier>,
    /// The comma-separated alternatives (OR), percent-decoded, with the FHIR
    /// escapes (`\,` `\$` `\|` `\\`) kept as written. Never empty, and no value
    /// is empty, when produced by the parser. Use [`unescape`] for the literal.
    pub values: Vec<String>,
}

impl SearchParam {
    pub fn new(name: impl Into<String>, modifier: Option<Modifier>, values: Vec<String>) -> Self {
        SearchParam { name: name.into(), modifier, values }
    }

    /// `name=value`, no modifier, one value (escape it with [`escape`] first
    /// if it may hold `,` `$` `|` or `\`).
    pub fn single(name: impl Into<String>, value: impl Into<String>) -> Self {
        SearchParam { name: name.into(), modifier: None, values: vec![value.into()] }
    }

    /// `name` or `name:modifier`, as written in a query.
    pub fn key(&self) -> String {
        match &self.modifier {
            Some(modifier) => format!("{}:{}", self.name, modifier),
            None => self.name.clone(),
        }
    }
}

/// Which interaction the parameters belong to: decides which parameters are
/// accepted at all. Anything not listed for a context is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamContext {
    /// Type and compartment searches: any non-underscore parameter plus the
    /// known result/control parameters.
    Search,
    /// read / vread: `_elements`, `_summary`.
    Read,
    /// Instance history: `_count`, `_since`, `_at`.
    History,
    /// `metadata`: `mode`.
    Capabilities,
    /// `_page/{token}`: nothing but `_format` / `_pretty`.
    Page,
    /// Bulk export kick-off: `_since`, `_until`, `_type`, `_typeFilter`,
    /// `_outputFormat`, `patient`, `exportType`, `includeAssociatedData`.
    /// `_typeFilter`, `patient` and `exportType` are checked by the ops layer
    /// (a `_typeFilter` query must be parsed again with `ParamContext::Search`).
    Export,
    /// `$member-match`, `$provider-member-match`: parameters go in the body.
    Operation,
    /// create / update / patch / delete / batch.
    Write,
}

/// All parameters of a request, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchParams {
    pub params: Vec<SearchParam>,
}

impl SearchParams {
    pub fn new() -> Self {
        SearchParams::default()
    }

    /// Parse one raw query string (without `?`) for `context`.
    pub fn parse_query(raw: &str, context: ParamContext) -> Result<SearchParams, GatewayError> {
        SearchParams::parse_sources(&[raw], context)
    }

    /// Parse several raw sources as one parameter list, in order (the query
    /// string, then a POST `_search` form body). Limits apply to the total.
    pub fn parse_sources(sources: &[&str], context: ParamContext) -> Result<SearchParams, GatewayError> {
        let mut budget = Budget::default();
        let mut params = SearchParams::new();
        for raw in sources {
            parse_raw(raw, &mut budget, &mut params)?;
        }
        validate(&mut params, context)?;
        Ok(params)
    }

    /// Every parameter called `name` (any modifier), in order.
    pub fn get<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SearchParam> + 'a {
        self.params.iter().filter(move |param| param.name == name)
    }

    /// The first parameter called `name`, if any.
    pub fn first(&self, name: &str) -> Option<&SearchParam> {
        self.params.iter().find(|param| param.name == name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.params.iter().any(|param| param.name == name)
    }

    /// Remove every parameter called `name` (any modifier) and return them in order.
    pub fn remove(&mut self, name: &str) -> Vec<SearchParam> {
        let (removed, kept) =
            std::mem::take(&mut self.params).into_iter().partition(|param| param.name == name);
        self.params = kept;
        removed
    }

    /// Append a parameter (after the caller's: repeated parameters AND together).
    pub fn push(&mut self, param: SearchParam) {
        self.params.push(param);
    }

    /// The distinct parameter names, in order of first appearance.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for param in &self.params {
            if !names.contains(&param.name.as_str()) {
                names.push(&param.name);
            }
        }
        names
    }

    pub fn iter(&self) -> std::slice::Iter<'_, SearchParam> {
        self.params.iter()
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Re-encode as a query string (without `?`) to send upstream.
    ///
    /// Canonical: names, modifiers and values are percent-encoded except for
    /// RFC 3986 unreserved characters; only the structural `&`, `=`, the
    /// modifier `:` and the value-separating `,` are literal. A value's FHIR
    /// escapes travel encoded (`\,` becomes `%5C%2C`), which every server
    /// decodes before splitting, so the meaning is kept and, for parsed input,
    /// `parse(to_query_string(x)) == x`.
    pub fn to_query_string(&self) -> String {
        let mut out = String::new();
        for (index, param) in self.params.iter().enumerate() {
            if index > 0 {
                out.push('&');
            }
            out.extend(utf8_percent_encode(&param.name, COMPONENT));
            if let Some(modifier) = &param.modifier {
                out.push(':');
                out.extend(utf8_percent_encode(modifier.as_str(), COMPONENT));
            }
            out.push('=');
            for (index, value) in param.values.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.extend(utf8_percent_encode(value, COMPONENT));
            }
        }
        out
    }
}

impl<'a> IntoIterator for &'a SearchParams {
    type Item = &'a SearchParam;
    type IntoIter = std::slice::Iter<'a, SearchParam>;

    fn into_iter(self) -> Self::IntoIter {
        self.params.iter()
    }
}

/// Escape a literal for use as one FHIR search value (`\` `,` `$` `|`).
pub fn escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        if matches!(c, '\\' | ',' | '$' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Undo the FHIR escapes of a parsed value: `a\,b` -> `a,b`. Note that for
/// token and reference values `|` and `$` keep their meaning only unescaped,
/// so compare escaped forms where that matters.
pub fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`. An id of only dots is refused too: as
/// a path segment it is a dot segment, and no real server issues one.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !id.bytes().all(|b| b == b'.')
}

/// What a media type (from `_format`, `Accept` or `Content-Type`) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MediaKind {
    Json,
    Xml,
    Other,
}

/// Classify a media type or `_format` shorthand, ignoring case, parameters
/// and a `+` that form decoding turned into a space (`application/fhir json`).
pub(crate) fn media_kind(media_type: &str) -> MediaKind {
    let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase().replace(' ', "+");
    match essence.as_str() {
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => MediaKind::Json,
        "xml" | "text/xml" | "application/xml" | "application/fhir+xml" | "application/xml+fhir" => {
            MediaKind::Xml
        }
        other if other.ends_with("+xml") || other.ends_with("/xml") => MediaKind::Xml,
        _ => MediaKind::Other,
    }
}

/// Strict percent-decoding into UTF-8. Lenient decoders pass `%zz` through
/// untouched, which lets a second decoder (the upstream's) see something else
/// than we did; here anything malformed or not UTF-8 is a 400.
/// `plus_is_space` for query strings and form bodies.
pub(crate) fn percent_decode_strict(raw: &str, plus_is_space: bool) -> Result<String, GatewayError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'%' => {
                let high = bytes.get(index + 1).and_then(|b| hex_value(*b));
                let low = bytes.get(index + 2).and_then(|b| hex_value(*b));
                match (high, low) {
                    (Some(high), Some(low)) => out.push(high << 4 | low),
                    _ => return Err(GatewayError::bad_request("malformed percent-encoding")),
                }
                index += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                index += 1;
            }
            other => {
                out.push(other);
                index += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| GatewayError::bad_request("request text is not valid UTF-8"))
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Running totals checked against the limits while parsing.
#[derive(Default)]
struct Budget {
    decoded_bytes: usize,
}

/// A 400 for limit violations, with the FHIR `too-costly` issue code.
fn too_costly(message: &str) -> GatewayError {
    GatewayError::bad_request(message).with_code(IssueCode::TooCostly)
}

/// Append the pairs of one raw source to `params`.
fn parse_raw(raw: &str, budget: &mut Budget, params: &mut SearchParams) -> Result<(), GatewayError> {
    if raw.len() > MAX_RAW_QUERY_BYTES {
        return Err(GatewayError::of(Kind::UriTooLong, "the query is too long"));
    }
    for pair in raw.split('&').filter(|pair| !pair.is_empty()) {
        if params.len() >= MAX_PARAMS {
            return Err(too_costly("too many search parameters"));
        }
        params.push(parse_pair(pair, budget)?);
    }
    Ok(())
}

/// One `key=value` pair: decode, split the key, split the values.
fn parse_pair(pair: &str, budget: &mut Budget) -> Result<SearchParam, GatewayError> {
    let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
    let key = percent_decode_strict(raw_key, true)?;
    let value = percent_decode_strict(raw_value, true)?;
    budget.decoded_bytes += key.len() + value.len();
    if budget.decoded_bytes > MAX_QUERY_BYTES {
        return Err(too_costly("the search parameters are too long"));
    }
    let (name, modifier) = parse_key(&key)?;
    let values = split_values(&value)?;
    Ok(SearchParam { name, modifier, values })
}

/// `name[:modifier]`, refusing probing syntax before anything else.
fn parse_key(key: &str) -> Result<(String, Option<Modifier>), GatewayError> {
    if key.is_empty() {
        return Err(GatewayError::bad_request("a search parameter has no name"));
    }
    let (name, modifier) = match key.split_once(':') {
        Some((name, modifier)) => (name, Some(modifier)),
        None => (key, None),
    };
    if let Some((_, message)) = REFUSED_NAMES.iter().find(|(refused, _)| *refused == name) {
        return Err(GatewayError::not_supported(*message));
    }
    if key.contains('.') {
        return Err(GatewayError::not_supported("chained search parameters are not supported"));
    }
    if !is_param_name(name) {
        return Err(GatewayError::bad_request("invalid search parameter name"));
    }
    let modifier = match modifier {
        None => None,
        Some(text) => Some(
            Modifier::parse(text)
                .ok_or_else(|| GatewayError::bad_request(format!("unknown modifier on parameter {name}")))?,
        ),
    };
    Ok((name.to_owned(), modifier))
}

/// `[A-Za-z_][A-Za-z0-9_-]*`, at most [`MAX_NAME_LEN`] bytes.
fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && name.len() <= MAX_NAME_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Split on unescaped commas, keeping escapes as written. A backslash that
/// does not start one of the four FHIR escapes is refused (its meaning differs
/// between servers), and so is an empty value.
fn split_values(value: &str) -> Result<Vec<String>, GatewayError> {
    let mut values = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ (',' | '$' | '|' | '\\')) => {
                    current.push('\\');
                    current.push(escaped);
                }
                _ => return Err(GatewayError::bad_request("invalid escape in a search value")),
            },
            ',' => {
                values.push(std::mem::take(&mut current));
                if values.len() >= MAX_VALUES_PER_PARAM {
                    return Err(too_costly("too many values in one search parameter"));
                }
            }
            other => current.push(other),
        }
    }
    values.push(current);
    if values.iter().any(String::is_empty) {
        return Err(GatewayError::bad_request("a search parameter has an empty value"));
    }
    Ok(values)
}

/// How a parameter's value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// An ordinary search parameter: any modifier but `iterate`, any value.
    Filter,
    Count,
    Sort,
    Include,
    Elements,
    Summary,
    /// Optional prefix + FHIR date/dateTime.
    Date,
    Id,
    /// A full FHIR instant.
    Instant,
    Format,
    Pretty,
    Types,
    Mode,
    OutputFormat,
    /// Accepted here, checked by the layer that uses it.
    Opaque,
}

impl Rule {
    /// Rules whose parameter may appear once only.
    fn single_occurrence(self) -> bool {
        // `_type` may repeat on an export kick-off: Bulk Data 2.0 treats
        // `_type=A&_type=B` as `_type=A,B` (BULK-11).
        !matches!(self, Rule::Filter | Rule::Include | Rule::Date | Rule::Id | Rule::Opaque | Rule::Types)
    }

    /// Rules that take exactly one value (no comma list).
    fn one_value(self) -> bool {
        matches!(
            self,
            Rule::Count
                | Rule::Include
                | Rule::Summary
                | Rule::Instant
                | Rule::Format
                | Rule::Pretty
                | Rule::Mode
                | Rule::OutputFormat
        )
    }
}

/// The allow-list: which rule applies to `name` in `context`, if any.
fn rule_for(name: &str, context: ParamContext) -> Option<Rule> {
    use ParamContext as C;
    let rule = match (context, name) {
        (_, "_format") => Rule::Format,
        (_, "_pretty") => Rule::Pretty,
        (C::Search | C::History, "_count") => Rule::Count,
        (C::Search, "_sort") => Rule::Sort,
        (C::Search, "_include" | "_revinclude") => Rule::Include,
        (C::Search | C::Read, "_elements") => Rule::Elements,
        (C::Search | C::Read, "_summary") => Rule::Summary,
        (C::Search, "_lastUpdated") | (C::History, "_at") => Rule::Date,
        (C::Search, "_id") => Rule::Id,
        (C::Search, "_tag" | "_profile" | "_security" | "_source" | "_text" | "_content" | "_list") => {
            Rule::Filter
        }
        (C::Search, other) if !other.starts_with('_') => Rule::Filter,
        (C::History, "_since") | (C::Export, "_since" | "_until") => Rule::Instant,
        (C::Capabilities, "mode") => Rule::Mode,
        (C::Export, "_type") => Rule::Types,
        (C::Export, "_outputFormat") => Rule::OutputFormat,
        (C::Export, "_typeFilter" | "patient" | "exportType" | "includeAssociatedData") => Rule::Opaque,
        _ => return None,
    };
    Some(rule)
}

/// Apply the context's allow-list and value rules, then drop `_format`.
fn validate(params: &mut SearchParams, context: ParamContext) -> Result<(), GatewayError> {
    let mut seen_single: Vec<&str> = Vec::new();
    for param in &mut params.params {
        let rule = rule_for(&param.name, context).ok_or_else(|| {
            GatewayError::not_supported(format!(
                "parameter {} is not supported on this interaction",
                param.name
            ))
        })?;
        check_param(param, rule)?;
        if rule.single_occurrence() {
            if seen_single.contains(&param.name.as_str()) {
                return Err(GatewayError::bad_request(format!(
                    "parameter {} may appear only once",
                    param.name
                )));
            }
            seen_single.push(&param.name);
        }
    }
    params.remove("_format");
    Ok(())
}

/// Check one parameter against its rule; normalises `_count`.
fn check_param(param: &mut SearchParam, rule: Rule) -> Result<(), GatewayError> {
    check_modifier(param, rule)?;
    if rule.one_value() && param.values.len() != 1 {
        return Err(GatewayError::bad_request(format!("parameter {} takes one value", param.name)));
    }
    match rule {
        Rule::Count => normalise_count(param)?,
        Rule::Format => check_format(param)?,
        Rule::Filter if param.modifier == Some(Modifier::Missing) => check_all(param, is_bool)?,
        Rule::Filter | Rule::Opaque => {}
        Rule::Sort => check_all(param, is_sort_key)?,
        Rule::Include => check_include(param)?,
        Rule::Elements => check_all(param, is_element_name)?,
        Rule::Summary => check_summary(param)?,
        Rule::Date => check_all(param, is_search_date)?,
        Rule::Id => check_all(param, is_fhir_id)?,
        Rule::Instant => check_all(param, |v| is_datetime(v, true))?,
        Rule::Pretty => check_all(param, is_bool)?,
        Rule::Types => check_all(param, is_resource_type)?,
        Rule::Mode => check_all(param, |v| matches!(v, "full" | "normative" | "terminology"))?,
        Rule::OutputFormat => check_all(param, is_ndjson)?,
    }
    Ok(())
}

/// Ordinary parameters take any modifier but `iterate`; `_include` and
/// `_revinclude` only `iterate`; control parameters none.
fn check_modifier(param: &SearchParam, rule: Rule) -> Result<(), GatewayError> {
    let allowed = match (&param.modifier, rule) {
        (None, _) => true,
        (Some(Modifier::Iterate), Rule::Include) => true,
        (Some(Modifier::Iterate), _) => false,
        (Some(_), Rule::Filter) => true,
        (Some(_), _) => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(GatewayError::bad_request(format!("modifier not allowed on parameter {}", param.name)))
    }
}

fn check_all(param: &SearchParam, valid: impl Fn(&str) -> bool) -> Result<(), GatewayError> {
    if param.values.iter().all(|value| valid(value)) {
        Ok(())
    } else {
        Err(GatewayError::bad_request(format!("invalid value for parameter {}", param.name)))
    }
}

/// A positive integer, leading zeros dropped, clamped to [`MAX_COUNT`].
/// `_count=0` is refused: it asks for a count only (like `_summary=count`).
fn normalise_count(param: &mut SearchParam) -> Result<(), GatewayError> {
    let value = param.values.first().map(String::as_str).unwrap_or("");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GatewayError::bad_request("_count must be a positive integer"));
    }
    let digits = value.trim_start_matches('0');
    if digits.is_empty() {
        return Err(GatewayError::not_supported("_count=0 is not supported: it reveals counts only"));
    }
    let count = match digits.parse::<u32>() {
        Ok(count) => count.min(MAX_COUNT),
        Err(_) => MAX_COUNT,
    };
    param.values = vec![count.to_string()];
    Ok(())
}

/// `_format` may only ask for JSON; XML (or anything else) is 406.
fn check_format(param: &SearchParam) -> Result<(), GatewayError> {
    match param.values.first().map(|value| media_kind(value)) {
        Some(MediaKind::Json) => Ok(()),
        Some(MediaKind::Xml) => Err(GatewayError::not_acceptable("XML is not supported; use JSON")),
        _ => Err(GatewayError::not_acceptable("unsupported _format; use JSON")),
    }
}

/// `_summary`: true, text, data or false. `count` reveals totals: refused.
fn check_summary(param: &SearchParam) -> Result<(), GatewayError> {
    match param.values.first().map(String::as_str) {
        Some("true" | "text" | "data" | "false") => Ok(()),
        Some("count") => Err(GatewayError::not_supported("_summary=count is not supported")),
        _ => Err(GatewayError::bad_request("invalid _summary value")),
    }
}

/// `Source:param[:Target]`; wildcards refused.
fn check_include(param: &SearchParam) -> Result<(), GatewayError> {
    let value = param.values.first().map(String::as_str).unwrap_or("");
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or("");
    let search_param = parts.next().unwrap_or("");
    let target = parts.next();
    let valid = is_resource_type(source)
        && is_param_name(search_param)
        && target.is_none_or(is_resource_type)
        && parts.next().is_none();
    if valid {
        Ok(())
    } else {
        Err(GatewayError::bad_request(format!(
            "invalid {} value: expected Type:parameter[:TargetType] (no wildcards)",
            param.name
        )))
    }
}

fn is_bool(value: &str) -> bool {
    matches!(value, "true" | "false")
}

/// `_sort` key: optional `-` then a parameter name.
fn is_sort_key(value: &str) -> bool {
    is_param_name(value.strip_prefix('-').unwrap_or(value))
}

/// `_elements` entry: `element` or `Type.element`.
fn is_element_name(value: &str) -> bool {
    let element = match value.split_once('.') {
        Some((resource_type, element)) if is_resource_type(resource_type) => element,
        Some(_) => return false,
        None => value,
    };
    let mut bytes = element.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Bulk `_outputFormat`: NDJSON only.
pub fn is_ndjson(value: &str) -> bool {
    let essence = value.trim().to_ascii_lowercase().replace(' ', "+");
    matches!(essence.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson")
}

/// A date search value: optional comparison prefix, then a date/dateTime.
fn is_search_date(value: &str) -> bool {
    const PREFIXES: [&str; 9] = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    let unprefixed = PREFIXES.iter().find_map(|prefix| value.strip_prefix(prefix)).unwrap_or(value);
    is_datetime(unprefixed, false)
}

/// `YYYY(-MM(-DD(Thh:mm(:ss(.f+)?)?(Z|±hh:mm)?)?)?)?`. With `instant`, the
/// full `YYYY-MM-DDThh:mm:ss(.f+)?(Z|±hh:mm)` is required (FHIR `instant`).
fn is_datetime(value: &str, instant: bool) -> bool {
    let mut c = Cursor { bytes: value.as_bytes(), at: 0 };
    if !c.number(4, 0, 9999) {
        return false;
    }
    for (min, max) in [(1, 12), (1, 31)] {
        if c.done() {
            return !instant;
        }
        if !(c.eat(b'-') && c.number(2, min, max)) {
            return false;
        }
    }
    if c.done() {
        return !instant;
    }
    if !(c.eat(b'T') && c.number(2, 0, 23) && c.eat(b':') && c.number(2, 0, 59)) {
        return false;
    }
    let has_seconds = c.eat(b':');
    if has_seconds && !(c.number(2, 0, 60) && c.fraction()) {
        return false;
    }
    if instant && !has_seconds {
        return false;
    }
    if c.done() {
        return !instant;
    }
    c.zone() && c.done()
}

/// A tiny byte cursor for the date grammar.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn eat(&mut self, expected: u8) -> bool {
        let found = self.bytes.get(self.at) == Some(&expected);
        if found {
            self.at += 1;
        }
        found
    }

    /// Exactly `width` digits whose value lies in `min..=max`.
    fn number(&mut self, width: usize, min: u32, max: u32) -> bool {
        let Some(digits) = self.bytes.get(self.at..self.at + width) else {
            return false;
        };
        if !digits.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let value = digits.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        self.at += width;
        (min..=max).contains(&value)
    }

    /// Optional `.` followed by 1 to 9 digits.
    fn fraction(&mut self) -> bool {
        if !self.eat(b'.') {
            return true;
        }
        let digits =
            self.bytes.get(self.at..).unwrap_or(&[]).iter().take_while(|b| b.is_ascii_digit()).count();
        self.at += digits;
        (1..=9).contains(&digits)
    }

    /// `Z` or `+hh:mm` / `-hh:mm`.
    fn zone(&mut self) -> bool {
        if self.eat(b'Z') {
            return true;
        }
        (self.eat(b'+') || self.eat(b'-')) && self.number(2, 0, 14) && self.eat(b':') && self.number(2, 0, 59)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn search(raw: &str) -> Result<SearchParams, GatewayError> {
        SearchParams::parse_query(raw, ParamContext::Search)
    }

    fn status(raw: &str, context: ParamContext) -> u16 {
        match SearchParams::parse_query(raw, context) {
            Ok(_) => 200,
            Err(error) => error.status.as_u16(),
        }
    }

    fn param(name: &str, modifier: Option<Modifier>, values: &[&str]) -> SearchParam {
        SearchParam::new(name, modifier, values.iter().map(|v| v.to_string()).collect())
    }

    /// One row per syntax rule: (query, expected status) in a type search.
    #[test]
    fn search_syntax_table() {
        let rows: &[(&str, u16)] = &[
            ("", 200),
            ("&&", 200),
            ("patient=Patient/123", 200),
            ("patient=123&patient=456", 200),
            ("code=http://loinc.org|1234-5,http://loinc.org|9999-9", 200),
            ("code:not=abc", 200),
            ("code:missing=true", 200),
            ("code:missing=maybe", 400),
            ("code:above=abc", 200),
            ("code:below=abc", 200),
            ("code:in=http://vs", 200),
            ("code:not-in=http://vs", 200),
            ("code:text=abc", 200),
            ("identifier:of-type=a|b|c", 200),
            ("subject:identifier=sys|123", 200),
            ("subject:Patient=123", 200),
            ("name:exact=Smith", 200),
            ("name:contains=mi", 200),
            ("subject:patient=123", 400),
            ("code:bogus=1", 400),
            ("code:iterate=1", 400),
            // refused probing syntax
            ("_has:Observation:patient:code=1", 400),
            ("_has=1", 400),
            ("_filter=name eq x", 400),
            ("_query=everything", 400),
            ("_total=accurate", 400),
            ("_total=none", 400),
            ("_method=DELETE", 400),
            ("_contained=true", 400),
            ("_containedType=contained", 400),
            ("subject.name=x", 400),
            ("subject:Patient.name=x", 400),
            ("subject%2Ename=x", 400),
            ("_h%61s:Observation:patient:code=1", 400),
            ("_summary=count", 400),
            ("_summary=true", 200),
            ("_summary=text", 200),
            ("_summary=data", 200),
            ("_summary=false", 200),
            ("_summary=yes", 400),
            ("_summary=true&_summary=false", 400),
            ("_elements=id", 200),
            ("_elements=id,meta,Patient.name", 200),
            ("_elements=id.x.y", 400),
            ("_elements=1abc", 400),
            ("_count=10", 200),
            ("_count=0", 400),
            ("_count=-1", 400),
            ("_count=abc", 400),
            ("_count=10&_count=20", 400),
            ("_count=1,2", 400),
            ("_count:exact=1", 400),
            ("_sort=-date,code", 200),
            ("_sort=date;drop", 400),
            ("_include=ExplanationOfBenefit:patient", 200),
            ("_include=ExplanationOfBenefit:provider:Organization", 200),
            ("_include:iterate=Encounter:patient", 200),
            ("_revinclude=Provenance:target", 200),
            ("_revinclude:iterate=Provenance:target", 200),
            ("_include=*", 400),
            ("_include=Observation:*", 400),
            ("_include=observation:patient", 400),
            ("_include=A:b,C:d", 400),
            ("_include:not=Observation:patient", 400),
            ("_lastUpdated=gt2020-01-01", 200),
            ("_lastUpdated=ge2020-01-01T10:00:00Z,lt2021", 200),
            ("_lastUpdated=2020-13-01", 400),
            ("_lastUpdated=yesterday", 400),
            ("_id=123,456", 200),
            ("_id=12/3", 400),
            ("_id=..", 400),
            ("_id:not=1", 400),
            ("_format=json", 200),
            ("_format=application/fhir+json", 200),
            ("_format=application%2Ffhir%2Bjson", 200),
            ("_format=xml", 406),
            ("_format=XML", 406),
            ("_format=text/xml", 406),
            ("_format=application/xml", 406),
            ("_format=application/fhir+xml", 406),
            ("_format=html", 406),
            ("_pretty=true", 200),
            ("_pretty=1", 400),
            ("_since=2020-01-01T00:00:00Z", 400),
            ("_type=Patient", 400),
            ("_at=2020", 400),
            ("_tag=a|b", 200),
            ("_unknown=1", 400),
            ("_TOTAL=accurate", 400),
            // syntax
            ("=1", 400),
            ("1abc=1", 400),
            ("na%20me=1", 400),
            ("name", 400),
            ("name=", 400),
            ("name=a,,b", 400),
            ("name=a,", 400),
            ("name=a%2", 400),
            ("name=a%zz", 400),
            ("name=%FF", 400),
            ("name=a\\,b", 200),
            ("name=a\\x", 400),
            ("name=a\\", 400),
            ("url=http%3A%2F%2Fexample.org%2Fx", 200),
        ];
        for (query, expected) in rows {
            assert_eq!(status(query, ParamContext::Search), *expected, "query {query:?}");
        }
    }

    #[test]
    fn context_allow_lists() {
        use ParamContext as C;
        let rows: &[(&str, ParamContext, u16)] = &[
            ("_elements=id", C::Read, 200),
            ("_summary=true", C::Read, 200),
            ("_count=1", C::Read, 400),
            ("patient=1", C::Read, 400),
            ("_count=5&_since=2020-01-01T00:00:00Z&_at=ge2020", C::History, 200),
            ("_since=2020-01-01", C::History, 400),
            ("mode=full", C::Capabilities, 200),
            ("mode=everything", C::Capabilities, 400),
            ("_pretty=true", C::Page, 200),
            ("_count=1", C::Page, 400),
            ("_type=Patient,Coverage&_since=2020-01-01T00:00:00.123%2B05:00", C::Export, 200),
            ("_type=patient", C::Export, 400),
            ("_type=Patient&_type=Coverage", C::Export, 200),
            ("_outputFormat=application/fhir%2Bndjson", C::Export, 200),
            ("_outputFormat=application/fhir+ndjson", C::Export, 200),
            ("_outputFormat=text/csv", C::Export, 400),
            ("_typeFilter=Observation%3Fcode%3D1&patient=Patient/1&exportType=x", C::Export, 200),
            ("_until=2020-01-01T00:00", C::Export, 400),
            ("_elements=id", C::Export, 400),
            ("anything=1", C::Operation, 400),
            ("_format=json", C::Operation, 200),
            ("_format=xml", C::Write, 406),
            ("name=1", C::Write, 400),
        ];
        for (query, context, expected) in rows {
            assert_eq!(status(query, *context), *expected, "query {query:?} in {context:?}");
        }
    }

    #[test]
    fn duplicates_preserved_in_order() {
        let params = search("patient=A&subject=B&patient=C").expect("parses");
        let patients: Vec<&SearchParam> = params.get("patient").collect();
        assert_eq!(patients, vec![&param("patient", None, &["A"]), &param("patient", None, &["C"])]);
        assert_eq!(params.names(), vec!["patient", "subject"]);
    }

    #[test]
    fn comma_lists_split_on_unescaped_commas_only() {
        let params = search("code=a,b\\,c,d\\\\,e").expect("parses");
        assert_eq!(params.params, vec![param("code", None, &["a", "b\\,c", "d\\\\", "e"])]);
        assert_eq!(unescape("b\\,c"), "b,c");
        assert_eq!(escape("a,b|c$d\\"), "a\\,b\\|c\\$d\\\\");
    }

    #[test]
    fn modifiers_are_typed() {
        let params = search("code:missing=false&subject:Patient=1&code:not-in=x").expect("parses");
        let modifiers: Vec<Option<Modifier>> = params.iter().map(|p| p.modifier.clone()).collect();
        assert_eq!(
            modifiers,
            vec![Some(Modifier::Missing), Some(Modifier::Type("Patient".into())), Some(Modifier::NotIn)]
        );
    }

    #[test]
    fn plus_is_space_and_percent_plus_is_plus() {
        let params = search("name=John+Smith&_lastUpdated=gt2020-01-01T00:00:00%2B05:00").expect("parses");
        assert_eq!(params.params[0].values, vec!["John Smith"]);
        assert_eq!(params.params[1].values, vec!["gt2020-01-01T00:00:00+05:00"]);
        // an unencoded '+' becomes a space, which is not a valid date
        assert!(search("_lastUpdated=gt2020-01-01T00:00:00+05:00").is_err());
    }

    #[test]
    fn format_is_dropped_and_count_clamped() {
        let params = search("_format=json&_count=000050000&code=1").expect("parses");
        assert!(!params.contains("_format"));
        assert_eq!(params.first("_count").map(|p| p.values.clone()), Some(vec![MAX_COUNT.to_string()]));
        let params = search("_count=99999999999999999999999").expect("parses");
        assert_eq!(params.params[0].values, vec![MAX_COUNT.to_string()]);
        let params = search("_count=007").expect("parses");
        assert_eq!(params.params[0].values, vec!["7"]);
    }

    #[test]
    fn helpers_remove_push_names() {
        let mut params = search("patient=A&code=x&patient=B").expect("parses");
        let removed = params.remove("patient");
        assert_eq!(removed.len(), 2);
        assert_eq!(params.names(), vec!["code"]);
        params.push(SearchParam::single("patient", "Patient/12"));
        assert_eq!(params.to_query_string(), "code=x&patient=Patient%2F12");
        assert!(params.contains("patient"));
        assert_eq!(params.first("patient").map(SearchParam::key), Some("patient".to_string()));
    }

    #[test]
    fn to_query_string_is_canonical() {
        let params = search("name=a%26b%3Dc&code:not=x|y&note=%3B%23&s=%2F..%2F").expect("parses");
        assert_eq!(params.to_query_string(), "name=a%26b%3Dc&code:not=x%7Cy&note=%3B%23&s=%2F..%2F");
        let params = search("v=a\\,b,c").expect("parses");
        assert_eq!(params.to_query_string(), "v=a%5C%2Cb,c");
    }

    #[test]
    fn limits() {
        let many = vec!["a=1"; MAX_PARAMS + 1].join("&");
        assert_eq!(status(&many, ParamContext::Search), 400);
        let ok = vec!["a=1"; MAX_PARAMS].join("&");
        assert_eq!(status(&ok, ParamContext::Search), 200);
        let values = format!("a={}", vec!["x"; MAX_VALUES_PER_PARAM + 1].join(","));
        assert_eq!(status(&values, ParamContext::Search), 400);
        let values = format!("a={}", vec!["x"; MAX_VALUES_PER_PARAM].join(","));
        assert_eq!(status(&values, ParamContext::Search), 200);
        let long = format!("a={}", "x".repeat(MAX_QUERY_BYTES));
        assert_eq!(status(&long, ParamContext::Search), 400);
        let raw = format!("a={}", "%41".repeat(MAX_RAW_QUERY_BYTES / 3 + 1));
        assert_eq!(status(&raw, ParamContext::Search), 414);
        // the budget covers query and form together
        let half = format!("a={}", "x".repeat(MAX_QUERY_BYTES / 2 + 10));
        assert!(SearchParams::parse_sources(&[&half, &half], ParamContext::Search).is_err());
    }

    #[test]
    fn dates() {
        for valid in [
            "2020",
            "2020-01",
            "2020-01-31",
            "2020-01-31T10:00",
            "2020-01-31T10:00:59.123Z",
            "2020-01-31T10:00:00-05:00",
        ] {
            assert!(is_datetime(valid, false), "{valid}");
        }
        for invalid in [
            "20",
            "2020-1",
            "2020-00",
            "2020-01-32",
            "2020-01-01T",
            "2020-01-01T25:00",
            "2020-01-01T10:00:00.",
            "2020-01-01Z",
            "2020-01-01T10:00:00+5",
        ] {
            assert!(!is_datetime(invalid, false), "{invalid}");
        }
        assert!(is_datetime("2020-01-01T00:00:00Z", true));
        assert!(!is_datetime("2020-01-01T00:00:00", true));
        assert!(!is_datetime("2020-01-01", true));
    }

    #[test]
    fn media_kinds() {
        assert_eq!(media_kind("application/fhir+json; charset=utf-8"), MediaKind::Json);
        assert_eq!(media_kind("application/fhir json"), MediaKind::Json);
        assert_eq!(media_kind("Application/FHIR+XML"), MediaKind::Xml);
        assert_eq!(media_kind("application/atom+xml"), MediaKind::Xml);
        assert_eq!(media_kind("text/html"), MediaKind::Other);
    }

    /// Values drawn from characters that matter to the parser.
    fn value_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("\\,".to_string()),
                Just("\\\\".to_string()),
                Just("\\|".to_string()),
                Just("\\$".to_string()),
                "[a-zA-Z0-9|:/ .&=+%#;?~é\u{1F600}-]{1,4}",
            ],
            1..4,
        )
        .prop_map(|parts| parts.concat())
    }

    fn param_strategy() -> impl Strategy<Value = SearchParam> {
        let modifier = prop_oneof![
            Just(None),
            Just(Some(Modifier::Not)),
            Just(Some(Modifier::Exact)),
            Just(Some(Modifier::Type("Patient".to_string()))),
            Just(Some(Modifier::Identifier)),
        ];
        ("[a-z][a-z0-9_-]{0,8}", modifier, proptest::collection::vec(value_strategy(), 1..4))
            .prop_map(|(name, modifier, values)| SearchParam { name, modifier, values })
    }

    proptest! {
        #[test]
        fn structured_round_trip(params in proptest::collection::vec(param_strategy(), 0..6)) {
            let params = SearchParams { params };
            let encoded = params.to_query_string();
            let reparsed = SearchParams::parse_query(&encoded, ParamContext::Search);
            prop_assert_eq!(reparsed.ok(), Some(params));
        }

        #[test]
        fn parsed_input_round_trips(raw in "[a-z_:=&,%0-9A-F+\\\\.|x-]{0,60}") {
            for context in [ParamContext::Search, ParamContext::Export, ParamContext::History] {
                if let Ok(params) = SearchParams::parse_query(&raw, context) {
                    let again = SearchParams::parse_query(&params.to_query_string(), context);
                    prop_assert_eq!(again.ok(), Some(params));
                }
            }
        }

        #[test]
        fn never_panics_on_arbitrary_text(raw in ".{0,200}") {
            let _ = SearchParams::parse_query(&raw, ParamContext::Search);
            let _ = SearchParams::parse_query(&raw, ParamContext::Export);
        }
    }
}
