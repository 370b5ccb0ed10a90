//! Attribution: who a provider organization may see. The members of the
//! PDex/ATR attribution Groups it manages (`Group.managingEntity` = its
//! Organization), read from the upstream and from rosters ingested through the
//! admin API. A member counts when the Group is not `active: false`, the entry
//! is not `inactive` and its `period` covers today (UTC, day precision).
//!
//! The upstream is never trusted to have applied `managing-entity`: every
//! Group it returns is checked against the organization here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde_json::Value;

use super::refs::{RefResolver, Target};
use crate::error::{GatewayError, IssueCode, Kind};
use crate::fhir::SearchParams;
use crate::fhir::search::{SearchParam, is_fhir_id};
use crate::proxy::{Upstream, UpstreamRequest};

/// Most pages of attribution Groups read for one organization.
const MAX_PAGES: usize = 10_000;
/// The whole load of one organization gets this many upstream deadlines.
/// Each page read has its own deadline, but an upstream whose Group search
/// pages on and on (every `next` a new link, each page fast) would
/// otherwise keep the caller waiting for up to [`MAX_PAGES`] reads.
const LOAD_DEADLINES: u32 = 4;
/// Page size asked of the upstream.
const PAGE_SIZE: &str = "100";

/// The attribution of one organization from one source.
#[derive(Debug, Default)]
pub struct OrgMembers {
    /// Active member patient ids (bare ids).
    pub members: HashSet<String>,
    /// The attribution Groups the organization manages: id -> active members.
    pub groups: HashMap<String, Vec<String>>,
}

/// One attribution Group, checked and reduced to what access needs.
#[derive(Debug, Clone)]
pub struct GroupMembers {
    pub id: String,
    /// `Organization/{id}`.
    pub organization: String,
    /// Active member patient ids.
    pub active: Vec<String>,
    /// Member entries in all (active or not).
    pub entries: usize,
}

pub use crate::clock::today_utc;

/// The date part of a FHIR date/dateTime (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`),
/// or `None` when it is not one.
fn date_part(value: &str) -> Option<&str> {
    let date = value.get(..10.min(value.len()))?;
    let date = date.split('T').next()?;
    let valid = matches!(date.len(), 4 | 7 | 10)
        && date
            .bytes()
            .enumerate()
            .all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    valid.then_some(date)
}

/// Does `period` (a FHIR Period, or absent) cover `today`? A start or end
/// that is not a date makes the entry inactive (fail closed).
pub fn period_covers(period: Option<&Value>, today: &str) -> bool {
    let Some(period) = period else { return true };
    let Some(period) = period.as_object() else { return false };
    let bound = |key: &str| -> Result<Option<&str>, ()> {
        match period.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => date_part(s).map(Some).ok_or(()),
            Some(_) => Err(()),
        }
    };
    let (Ok(start), Ok(end)) = (bound("start"), bound("end")) else { return false };
    let started = start.is_none_or(|s| s <= &today[..s.len()]);
    let not_ended = end.is_none_or(|e| e >= &today[..e.len()]);
    started && not_ended
}

/// Is one `Group.member` entry active today?
pub fn member_active(member: &Value, today: &str) -> bool {
    let inactive = match member.get("inactive") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(_) => true,
    };
    !inactive && period_covers(member.get("period"), today)
}

/// The patient id a `Group.member` names, if it names one we can check.
pub fn member_patient<'a>(member: &'a Value, refs: &RefResolver) -> Option<&'a str> {
    let reference = member.get("entity")?.get("reference")?.as_str()?;
    match refs.resolve(reference) {
        Target::Patient(id) => Some(id),
        _ => None,
    }
}

/// `Organization/{id}` from a `managingEntity` reference.
pub fn managing_organization(group: &Value, refs: &RefResolver) -> Option<String> {
    let reference = group.get("managingEntity")?.get("reference")?.as_str()?;
    match refs.resolve(reference) {
        Target::Other { resource_type: "Organization", id } => Some(format!("Organization/{id}")),
        _ => None,
    }
}

/// Check one attribution Group and list its active members.
pub fn parse_group(group: &Value, refs: &RefResolver, today: &str) -> Result<GroupMembers, String> {
    if group.get("resourceType").and_then(Value::as_str) != Some("Group") {
        return Err("not a Group".into());
    }
    let id = group
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| is_fhir_id(id))
        .ok_or("Group without a valid id")?;
    let organization = managing_organization(group, refs)
        .ok_or_else(|| format!("Group/{id}: managingEntity must reference an Organization"))?;
    let group_active = !matches!(group.get("active"), Some(Value::Bool(false)));
    let members = match group.get("member") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(members)) => members.as_slice(),
        Some(_) => return Err(format!("Group/{id}: member is not an array")),
    };
    let mut active = Vec::new();
    if group_active {
        for member in members {
            if member_active(member, today)
                && let Some(patient) = member_patient(member, refs)
            {
                active.push(patient.to_owned());
            }
        }
    }
    Ok(GroupMembers { id: id.to_owned(), organization, active, entries: members.len() })
}

/// Read every attribution Group `organization` manages from the upstream,
/// following `next` links, within [`LOAD_DEADLINES`] upstream deadlines.
/// Any failure fails the whole load (the caller then refuses the request
/// rather than use a partial set).
pub async fn load_from_upstream(
    upstream: &Upstream,
    refs: &RefResolver,
    organization: &str,
) -> Result<OrgMembers, GatewayError> {
    let budget = upstream.timeout().saturating_mul(LOAD_DEADLINES);
    match tokio::time::timeout(budget, load_pages(upstream, refs, organization)).await {
        Ok(result) => result,
        Err(_) => Err(GatewayError::gateway_timeout(LOAD_FAILED)
            .with_code(IssueCode::Timeout)
            .with_detail(format!("attribution Groups for {organization}: not all read within {budget:?}"))),
    }
}

async fn load_pages(
    upstream: &Upstream,
    refs: &RefResolver,
    organization: &str,
) -> Result<OrgMembers, GatewayError> {
    let mut params = SearchParams::new();
    params.push(SearchParam::single("managing-entity", organization));
    params.push(SearchParam::single("_count", PAGE_SIZE));
    let mut path = format!("Group?{}", params.to_query_string());
    let mut seen_paths = HashSet::new();
    let mut out = OrgMembers::default();
    let today = today_utc();
    for _ in 0..MAX_PAGES {
        if !seen_paths.insert(path.clone()) {
            return Err(load_failure("the upstream's Group paging loops"));
        }
        let response = upstream
            .send(UpstreamRequest {
                method: Method::GET,
                path_and_query: path.clone(),
                body: None,
                headers: vec![(
                    HeaderName::from_static("prefer"),
                    HeaderValue::from_static("handling=strict"),
                )],
                request_id: "attribution".into(),
            })
            .await
            .map_err(|e| {
                let kind = match e.kind {
                    Kind::UpstreamTimeout => Kind::UpstreamTimeout,
                    _ => Kind::UpstreamFailed,
                };
                GatewayError::of(kind, LOAD_FAILED).with_code(IssueCode::Transient).with_detail(format!(
                    "attribution Groups for {organization}: {} {:?}",
                    e.message, e.detail
                ))
            })?;
        if response.status != StatusCode::OK {
            return Err(load_failure(&format!("Group search answered {}", response.status)));
        }
        let bundle: Value = serde_json::from_slice(&response.body)
            .map_err(|e| load_failure(&format!("Group search body: {e}")))?;
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(load_failure("Group search did not answer a Bundle"));
        }
        for entry in bundle.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let Some(resource) = entry.get("resource") else { continue };
            if resource.get("resourceType").and_then(Value::as_str) != Some("Group") {
                continue;
            }
            // Never trust the upstream to have applied managing-entity.
            let Ok(group) = parse_group(resource, refs, &today) else { continue };
            if group.organization != organization {
                continue;
            }
            out.members.extend(group.active.iter().cloned());
            out.groups.entry(group.id).or_default().extend(group.active);
        }
        let next = bundle
            .get("link")
            .and_then(Value::as_array)
            .and_then(|links| {
                links.iter().find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
            })
            .and_then(|l| l.get("url"))
            .and_then(Value::as_str);
        match next {
            None => return Ok(out),
            Some(url) => {
                let Some(rest) = upstream.rewriter().strip_upstream_base(url) else {
                    return Err(load_failure("a Group page link is not on the upstream base"));
                };
                path = rest.to_owned();
            }
        }
    }
    Err(load_failure("too many pages of attribution Groups"))
}

const LOAD_FAILED: &str = "the attribution lists could not be loaded; the request was refused";

fn load_failure(detail: &str) -> GatewayError {
    GatewayError::of(crate::error::Kind::UpstreamFailed, LOAD_FAILED).with_detail(detail.to_owned())
}

/// A roster ingested through the admin API, kept in the store.
#[derive(Debug, Clone)]
pub struct StoredRoster {
    pub group: GroupMembers,
    /// The Group as posted (JSON text).
    pub body: Arc<str>,
}

/// The stored rosters of one organization.
#[derive(Debug, Default)]
pub struct OrgRosters {
    pub members: HashSet<String>,
    pub groups: HashMap<String, StoredRoster>,
}

/// Group the stored rosters by organization, re-evaluating membership today.
pub fn index_rosters(rows: Vec<(String, String)>, refs: &RefResolver) -> HashMap<String, Arc<OrgRosters>> {
    let today = today_utc();
    let mut by_org: HashMap<String, OrgRosters> = HashMap::new();
    for (group_id, body) in rows {
        let parsed = serde_json::from_str::<Value>(&body)
            .map_err(|e| e.to_string())
            .and_then(|v| parse_group(&v, refs, &today));
        match parsed {
            Ok(group) if group.id == group_id => {
                let org = by_org.entry(group.organization.clone()).or_default();
                org.members.extend(group.active.iter().cloned());
                org.groups.insert(group.id.clone(), StoredRoster { group, body: Arc::from(body) });
            }
            Ok(_) | Err(_) => {
                tracing::error!(group = %group_id, "stored roster is unreadable; it grants nothing");
            }
        }
    }
    by_org.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

/// The Groups in an admin upload: one Group, a Bundle of Groups, or NDJSON
/// (one Group or Bundle per line). Every Group must parse; the upload is all
/// or nothing.
pub fn parse_roster_upload(body: &Bytes, refs: &RefResolver) -> Result<Vec<(GroupMembers, String)>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let documents: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(value) => vec![value],
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1)))
            .collect::<Result<_, _>>()?,
    };
    let today = today_utc();
    let mut groups = Vec::new();
    for document in documents {
        match document.get("resourceType").and_then(Value::as_str) {
            Some("Group") => groups.push(document),
            Some("Bundle") => {
                for entry in
                    document.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
                {
                    match entry.get("resource") {
                        Some(r) if r.get("resourceType").and_then(Value::as_str) == Some("Group") => {
                            groups.push(r.clone())
                        }
                        _ => return Err("a Bundle entry is not a Group".into()),
                    }
                }
            }
            _ => return Err("expected a Group, a Bundle of Groups, or NDJSON of Groups".into()),
        }
    }
    if groups.is_empty() {
        return Err("no Group in the body".into());
    }
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for group in groups {
        let parsed = parse_group(&group, refs, &today)?;
        if !ids.insert(parsed.id.clone()) {
            return Err(format!("Group/{} appears twice", parsed.id));
        }
        let text = serde_json::to_string(&group).map_err(|e| e.to_string())?;
        out.push((parsed, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn periods_cover_today_at_day_precision() {
        let today = "2025-06-30";
        let rows: &[(Value, bool)] = &[
            (json!({}), true),
            (json!({"start": "2019-01-01"}), true),
            (json!({"start": "2025-06-30"}), true),
            (json!({"start": "2025-07-01"}), false),
            (json!({"start": "2099-01-01"}), false),
            (json!({"end": "2025-06-30"}), true),
            (json!({"end": "2025-06-29"}), false),
            (json!({"end": "2024-06-30T23:59:59Z"}), false),
            (json!({"start": "2025", "end": "2025-06"}), true),
            (json!({"end": "2025-05"}), false),
            (json!({"start": "2026"}), false),
            (json!({"start": "yesterday"}), false),
            (json!({"start": 2020}), false),
            (json!("2020"), false),
        ];
        for (period, want) in rows {
            assert_eq!(period_covers(Some(period), today), *want, "{period}");
        }
        assert!(period_covers(None, today));
    }

    fn refs() -> RefResolver {
        RefResolver::new(["http://up/fhir", "http://gw/fhir"])
    }

    #[test]
    fn groups_list_active_members_only() {
        let group = json!({
            "resourceType": "Group", "id": "g1", "type": "person", "actual": true,
            "managingEntity": {"reference": "http://up/fhir/Organization/org-a"},
            "member": [
                {"entity": {"reference": "Patient/p1"}},
                {"entity": {"reference": "Patient/p2"}, "inactive": true},
                {"entity": {"reference": "Patient/p3"}, "period": {"end": "2020-01-01"}},
                {"entity": {"reference": "Patient/p4"}, "period": {"start": "2099-01-01"}},
                {"entity": {"reference": "http://up/fhir/Patient/p5"}, "period": {"start": "2019-01-01"}},
                {"entity": {"reference": "https://elsewhere/Patient/p6"}},
                {"entity": {"reference": "Group/g2"}},
                {"entity": {"identifier": {"value": "p7"}}},
                {"entity": {"reference": "Patient/p8"}, "inactive": false},
            ]
        });
        let parsed = parse_group(&group, &refs(), "2025-06-30").unwrap();
        assert_eq!(parsed.organization, "Organization/org-a");
        assert_eq!(parsed.active, vec!["p1", "p5", "p8"]);
        assert_eq!(parsed.entries, 9);
        let mut inactive = group.clone();
        inactive["active"] = json!(false);
        assert!(parse_group(&inactive, &refs(), "2025-06-30").unwrap().active.is_empty());
        for bad in [
            json!({"resourceType": "Group", "id": "g1"}),
            json!({"resourceType": "Group", "id": "g1", "managingEntity": {"reference": "Practitioner/x"}}),
            json!({"resourceType": "Group", "managingEntity": {"reference": "Organization/x"}}),
            json!({"resourceType": "Patient", "id": "g1", "managingEntity": {"reference": "Organization/x"}}),
            json!({"resourceType": "Group", "id": "g 1", "managingEntity": {"reference": "Organization/x"}}),
        ] {
            assert!(parse_group(&bad, &refs(), "2025-06-30").is_err(), "{bad}");
        }
    }

    /// A Group search that never ends: every page is answered at once and
    /// links a new page. The load must give up within its budget, long
    /// before MAX_PAGES reads.
    #[tokio::test]
    async fn group_paging_that_never_ends_is_cut_off_by_the_load_budget() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/fhir", listener.local_addr().unwrap());
        let pages = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, link_base) = (pages.clone(), base.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let link_base = link_base.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => head.extend_from_slice(&buf[..k]),
                        }
                    }
                    let body = json!({"resourceType": "Bundle", "type": "searchset",
                        "link": [{"relation": "next", "url": format!("{link_base}/Group?page={}", n + 1)}],
                        "entry": [{"resource": {"resourceType": "Group", "id": format!("g{n}"),
                            "managingEntity": {"reference": "Organization/o"},
                            "member": [{"entity": {"reference": "Patient/p"}}]}}]})
                    .to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        let config: crate::config::UpstreamConfig =
            toml::from_str(&format!("url = {base:?}\ntimeout_ms = 100")).unwrap();
        let upstream = Upstream::new(&config, &base, "http://gw/fhir").unwrap();
        let refs = RefResolver::new([base.as_str(), "http://gw/fhir"]);
        let started = std::time::Instant::now();
        let err = load_from_upstream(&upstream, &refs, "Organization/o").await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.kind, Kind::UpstreamTimeout, "{err:?}");
        assert!(took < std::time::Duration::from_millis(1500), "the load ran {took:?}");
        assert!(pages.load(std::sync::atomic::Ordering::SeqCst) < MAX_PAGES);
    }

    #[test]
    fn roster_uploads_take_a_group_a_bundle_or_ndjson() {
        let g = |id: &str, p: &str| {
            json!({"resourceType": "Group", "id": id, "managingEntity": {"reference": "Organization/o"},
                   "member": [{"entity": {"reference": format!("Patient/{p}")}}]})
        };
        let one = Bytes::from(g("r1", "a").to_string());
        assert_eq!(parse_roster_upload(&one, &refs()).unwrap().len(), 1);
        let bundle = json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": g("r1", "a")}, {"resource": g("r2", "b")}]});
        let parsed = parse_roster_upload(&Bytes::from(bundle.to_string()), &refs()).unwrap();
        assert_eq!(parsed.iter().map(|(g, _)| g.id.as_str()).collect::<Vec<_>>(), vec!["r1", "r2"]);
        let ndjson = format!("{}\n\n{}\n", g("r1", "a"), g("r3", "c"));
        let parsed = parse_roster_upload(&Bytes::from(ndjson), &refs()).unwrap();
        assert_eq!(parsed[1].0.active, vec!["c"]);
        for bad in [
            "not json".to_owned(),
            json!({"resourceType": "Patient", "id": "x"}).to_string(),
            json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "x"}}]})
                .to_string(),
            format!("{}\n{}", g("r1", "a"), g("r1", "b")),
            format!("{}\n{{", g("r1", "a")),
            json!({"resourceType": "Bundle", "entry": []}).to_string(),
        ] {
            assert!(parse_roster_upload(&Bytes::from(bad.clone()), &refs()).is_err(), "{bad}");
        }
    }
}
