//! Bundles fhirwall writes itself: the upstream's envelope is never copied.
//! Only the resources (which passed every stage) come from the upstream;
//! everything around them is written here from what fhirwall knows.

use serde_json::value::RawValue;

use super::tape::{Kind, Node};
use super::{Entry, EntryMode, VersionFacts};
use crate::error::GatewayError;
use crate::fhir::bundle::{RawObject, RawText};

/// A Bundle to write.
pub struct Envelope<'a> {
    /// `searchset` or `history`.
    pub bundle_type: &'static str,
    pub total: Option<usize>,
    pub self_url: &'a str,
    pub next_url: Option<&'a str>,
    /// fhirwall's public FHIR base (for `fullUrl`).
    pub public_base: &'a str,
}

impl Envelope<'_> {
    pub fn write(&self, matches: &[Entry], includes: &[Entry]) -> String {
        let size: usize = matches.iter().chain(includes).map(|e| e.resource.len() + 96).sum();
        let mut out = String::with_capacity(size + 256);
        out.push_str(r#"{"resourceType":"Bundle","type":"#);
        push_str(&mut out, self.bundle_type);
        if let Some(total) = self.total {
            out.push_str(r#","total":"#);
            out.push_str(&total.to_string());
        }
        out.push_str(r#","link":[{"relation":"self","url":"#);
        push_str(&mut out, self.self_url);
        out.push('}');
        if let Some(next) = self.next_url {
            out.push_str(r#",{"relation":"next","url":"#);
            push_str(&mut out, next);
            out.push('}');
        }
        out.push(']');
        if !matches.is_empty() || !includes.is_empty() {
            out.push_str(r#","entry":["#);
            for (n, entry) in matches.iter().chain(includes).enumerate() {
                if n > 0 {
                    out.push(',');
                }
                self.write_entry(&mut out, entry);
            }
            out.push(']');
        }
        out.push('}');
        out
    }

    fn write_entry(&self, out: &mut String, entry: &Entry) {
        out.push_str(r#"{"fullUrl":"#);
        push_str(out, &format!("{}/{}", self.public_base, entry.key));
        out.push_str(r#","resource":"#);
        out.push_str(&entry.resource);
        match &entry.version {
            Some(version) => write_version(out, &entry.key, version),
            None => {
                out.push_str(r#","search":{"mode":"#);
                push_str(out, if entry.mode == EntryMode::Include { "include" } else { "match" });
                out.push('}');
            }
        }
        out.push('}');
    }
}

fn write_version(out: &mut String, key: &str, version: &VersionFacts) {
    if let Some(method) = &version.method {
        out.push_str(r#","request":{"method":"#);
        push_str(out, method);
        out.push_str(r#","url":"#);
        push_str(out, key);
        out.push('}');
    }
    out.push_str(r#","response":{"status":"#);
    push_str(out, version.status.as_deref().unwrap_or("200 OK"));
    if let Some(etag) = &version.etag {
        out.push_str(r#","etag":"#);
        push_str(out, etag);
    }
    if let Some(last_modified) = &version.last_modified {
        out.push_str(r#","lastModified":"#);
        push_str(out, last_modified);
    }
    out.push('}');
}

fn push_str(out: &mut String, text: &str) {
    crate::fhir::bundle::write_key(out, text);
}

/// One upstream Bundle entry, read through the allow-list: its resource and
/// how it came into the answer. `None` for entries that carry no resource
/// or only say something about the search (`search.mode = outcome`).
pub struct UpstreamEntry<'a> {
    pub resource: RawText<'a>,
    pub mode: EntryMode,
    pub version: Option<VersionFacts>,
}

/// Read one upstream entry. `history`: keep the version facts fhirwall
/// copies (request method, response status / etag / lastModified, each only
/// when it is a short plain string).
pub fn read_entry<'a>(entry: &'a RawValue, history: bool) -> Result<Option<UpstreamEntry<'a>>, GatewayError> {
    let object = RawObject::parse(entry.get()).map_err(|_| {
        GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer")
            .with_detail("a Bundle entry is not an object".to_owned())
    })?;
    read_entry_object(&object, history)
}

/// [`read_entry`] on an entry already read as its members.
pub fn read_entry_object<'a>(
    object: &RawObject<'a>,
    history: bool,
) -> Result<Option<UpstreamEntry<'a>>, GatewayError> {
    let unusable = || {
        GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer")
            .with_detail("a Bundle entry is not an object".to_owned())
    };
    let Some(resource) = object.get("resource") else { return Ok(None) };
    #[derive(serde::Deserialize, Default)]
    struct Search {
        mode: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    struct Request {
        method: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Response {
        status: Option<String>,
        etag: Option<String>,
        last_modified: Option<String>,
    }
    let member = |name: &str| object.get(name).map(|v| v.get());
    let mode = match member("search").map(serde_json::from_str::<Search>) {
        None => EntryMode::Match,
        Some(Ok(search)) => match search.mode.as_deref() {
            None | Some("match") => EntryMode::Match,
            Some("include") => EntryMode::Include,
            Some(_) => return Ok(None),
        },
        Some(Err(_)) => return Err(unusable()),
    };
    let version = if history {
        let request: Request =
            member("request").and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
        let response: Response =
            member("response").and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
        let plain = |v: Option<String>| {
            v.filter(|s| s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        };
        Some(VersionFacts {
            method: plain(request.method).filter(|m| matches!(m.as_str(), "POST" | "PUT" | "PATCH")),
            status: plain(response.status).filter(|s| s.starts_with("20")),
            etag: plain(response.etag),
            last_modified: plain(response.last_modified),
        })
    } else {
        None
    };
    Ok(Some(UpstreamEntry { resource, mode, version }))
}

/// [`read_entry_object`] on an entry on the strict reader's tape: how the
/// entry came into the answer and (history) its version facts; `None` for
/// an entry without a resource or with another `search.mode`.
pub fn read_entry_node(
    entry: Node<'_, '_>,
    history: bool,
) -> Result<Option<(EntryMode, Option<VersionFacts>)>, GatewayError> {
    let unusable = |what: &str| {
        GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer")
            .with_detail(format!("a Bundle entry's {what} is malformed"))
    };
    if entry.kind() != Kind::Object {
        return Err(unusable("JSON"));
    }
    if entry.get("resource").is_none() {
        return Ok(None);
    }
    // A string member of an object member; null counts as absent.
    let string_at = |member: &str, name: &str| -> Result<Option<String>, ()> {
        let Some(object) = entry.get(member) else { return Ok(None) };
        if object.kind() != Kind::Object {
            return Err(());
        }
        match object.get(name) {
            None => Ok(None),
            Some(value) if value.kind() == Kind::Null => Ok(None),
            Some(value) => value.str().map(|v| Some(v.into_owned())).ok_or(()),
        }
    };
    let mode = match string_at("search", "mode").map_err(|_| unusable("search"))?.as_deref() {
        None | Some("match") => EntryMode::Match,
        Some("include") => EntryMode::Include,
        Some(_) => return Ok(None),
    };
    if !history {
        return Ok(Some((mode, None)));
    }
    let plain = |v: Result<Option<String>, ()>| {
        v.ok().flatten().filter(|s| s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
    };
    let version = VersionFacts {
        method: plain(string_at("request", "method"))
            .filter(|m| matches!(m.as_str(), "POST" | "PUT" | "PATCH")),
        status: plain(string_at("response", "status")).filter(|s| s.starts_with("20")),
        etag: plain(string_at("response", "etag")),
        last_modified: plain(string_at("response", "lastModified")),
    };
    Ok(Some((mode, Some(version))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, mode: EntryMode) -> Entry {
        Entry { key: key.into(), mode, resource: format!(r#"{{"id":"{key}"}}"#), version: None }
    }

    #[test]
    fn writes_only_what_fhirwall_knows() {
        let env = Envelope {
            bundle_type: "searchset",
            total: Some(1),
            self_url: "https://gw/fhir/Observation?patient=p",
            next_url: Some("https://gw/fhir/_page/t"),
            public_base: "https://gw/fhir",
        };
        let text =
            env.write(&[entry("Observation/1", EntryMode::Match)], &[entry("Patient/p", EntryMode::Include)]);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["total"], 1);
        assert_eq!(value["link"][1]["url"], "https://gw/fhir/_page/t");
        assert_eq!(value["entry"][0]["fullUrl"], "https://gw/fhir/Observation/1");
        assert_eq!(value["entry"][1]["search"]["mode"], "include");
        let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["entry", "link", "resourceType", "total", "type"]);
    }

    #[test]
    fn reads_entries_through_the_allow_list() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"fullUrl":"x","resource":{"id":"1"},"search":{"mode":"match","score":1,"extension":[{"url":"u","valueString":"secret"}]},"response":{"status":"200 OK","outcome":{"resourceType":"OperationOutcome"}},"link":[{"relation":"alternate","url":"secret"}]}"#,
        )
        .unwrap();
        let read = read_entry(&raw, false).unwrap().unwrap();
        assert_eq!(read.resource.get(), r#"{"id":"1"}"#);
        assert_eq!(read.mode, EntryMode::Match);
        assert!(read.version.is_none());
        let outcome: Box<RawValue> = serde_json::from_str(
            r#"{"resource":{"resourceType":"OperationOutcome"},"search":{"mode":"outcome"}}"#,
        )
        .unwrap();
        assert!(read_entry(&outcome, false).unwrap().is_none());
        let history: Box<RawValue> = serde_json::from_str(
            r#"{"resource":{"id":"1"},"request":{"method":"PUT","url":"elsewhere"},"response":{"status":"200 OK","etag":"W/\"2\"","lastModified":"2024-01-01T00:00:00Z","outcome":{}}}"#,
        )
        .unwrap();
        let version = read_entry(&history, true).unwrap().unwrap().version.unwrap();
        assert_eq!(version.method.as_deref(), Some("PUT"));
        assert_eq!(version.etag.as_deref(), Some("W/\"2\""));
    }
}
