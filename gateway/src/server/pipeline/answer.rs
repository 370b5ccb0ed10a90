//! Answers built through the response chain (`crate::chain`): reads,
//! vreads, instance history, searches and their pages. The upstream is
//! asked; every body is read strictly, every resource passes the stages
//! (access, data scope, policy plugins); the Bundle around the survivors is
//! written by fhirwall.

use bytes::Bytes;
use http::header::{CONTENT_LOCATION, CONTENT_TYPE, ETAG, LAST_MODIFIED};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use serde_json::value::RawValue;

use super::{FhirHandler, MAX_GET_QUERY, RequestCtx};
use crate::access::stage::AccessStage;
use crate::chain::disclosure::Disclosure;
use crate::chain::envelope::{self, Envelope};
use crate::chain::names::NamesStage;
use crate::chain::page::{Cursor, PageBuilder, Step};
use crate::chain::stage::{self, Item};
use crate::chain::tape::{Kind, Node, Tape};
use crate::chain::{self, Entry, EntryMode, strict};
use crate::error::GatewayError;
use crate::fhir::bundle::RawObject;
use crate::proxy::{UpstreamRequest, UpstreamResponse};
use crate::redact::stage::{DataScope, Money, Part2References};
use crate::respond::{self, Body};

/// Page size when the caller names none.
pub const DEFAULT_COUNT: usize = 20;
/// Largest page fhirwall assembles (bigger `_count`s are clamped).
pub const MAX_PAGE: usize = 500;
/// Fewest entries asked of the upstream per page: small pages full of
/// withheld entries would spend the per-page bound quickly.
const MIN_UPSTREAM_COUNT: usize = 20;

/// Where a search answer starts.
pub(super) struct SearchStart {
    pub resource_type: String,
    pub cursor: Cursor,
    pub want: usize,
    /// A follow-up page (opened from a token): never a `total`.
    pub from_token: bool,
    /// Where the search has been: a loop across pages is refused.
    pub trail: crate::proxy::Trail,
}

fn unusable(why: impl Into<String>) -> GatewayError {
    GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer").with_detail(why.into())
}

/// The body of an upstream answer, read by the strict reader into its tape.
fn strict_tape(upstream: &UpstreamResponse) -> Result<Tape<'_>, GatewayError> {
    let text = json_text(upstream)?;
    strict::read(text).map_err(|e| unusable(e.to_string()))
}

/// The body of an upstream answer as text that passed the strict reader.
fn strict_text(upstream: &UpstreamResponse) -> Result<&str, GatewayError> {
    let text = json_text(upstream)?;
    strict::check(text).map_err(|e| unusable(e.to_string()))?;
    Ok(text)
}

/// The body of an upstream answer that says it is JSON, as text.
fn json_text(upstream: &UpstreamResponse) -> Result<&str, GatewayError> {
    let content_type = upstream.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().contains("json") {
        return Err(unusable(format!("content type {content_type:?} is not JSON")));
    }
    std::str::from_utf8(&upstream.body).map_err(|_| unusable("body is not UTF-8"))
}

/// The upstream's status, judged: success goes on; a missing resource is
/// fhirwall's own 404; anything else is fhirwall's own refusal, never the
/// upstream's words (they could describe data the caller may not see).
fn judged(upstream: &UpstreamResponse) -> Result<(), GatewayError> {
    let status = upstream.status;
    match status.as_u16() {
        200 => Ok(()),
        404 | 410 => Err(crate::access::decide::not_found()),
        400 | 422 => Err(GatewayError::bad_request("the upstream FHIR server refused the request")
            .with_detail(format!("upstream answered {status}"))),
        _ => Err(GatewayError::bad_gateway("the upstream FHIR server failed")
            .with_detail(format!("upstream answered {status}"))),
    }
}

/// `Type/id` of a resource, read from its own members.
fn key_of(resource: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
        id: Option<String>,
    }
    let head: Head = serde_json::from_str(resource).ok()?;
    Some(format!("{}/{}", head.resource_type?, head.id?))
}

impl FhirHandler {
    pub(super) async fn ask(
        &self,
        ctx: &RequestCtx,
        request: UpstreamRequest,
    ) -> Result<UpstreamResponse, GatewayError> {
        let request = UpstreamRequest { request_id: ctx.request_id.clone(), ..request };
        if let Some(limiter) = &ctx.limiter {
            limiter.acquire().await;
        }
        let started = std::time::Instant::now();
        let result = self.gw.upstream.send(request).await;
        self.gw.metrics.record_upstream(started.elapsed(), result.is_ok());
        result
    }

    /// The stages on one resource outside a Bundle; `None` when withheld.
    /// `count`: its decisions go to the audit record (not for the current
    /// version a vread or history checks).
    fn chain_resource(
        &self,
        ctx: &RequestCtx,
        text: &str,
        count: bool,
    ) -> Result<Option<String>, GatewayError> {
        let mut items = vec![Item::alone(text)];
        self.judge_items(ctx, &mut items, false, count)?;
        Ok(self.entries_of(items, false)?.pop().map(|entry| entry.resource))
    }

    /// The stages that read the upstream's bytes, in order: access (then,
    /// when `rosters`, the caller's stored roster Groups join the answer),
    /// data scope, records naming hidden patients, financial.
    fn judge_items(
        &self,
        ctx: &RequestCtx,
        items: &mut Vec<Item<'_>>,
        rosters: bool,
        count: bool,
    ) -> Result<(), GatewayError> {
        self.programs_resolved()?;
        let mut scratch = Disclosure::default();
        let mut guard;
        let disclosure = if count {
            guard = ctx.disclosure();
            &mut *guard
        } else {
            &mut scratch
        };
        if let Some(decision) = &ctx.access {
            stage::run(&AccessStage { access: &self.gw.access, decision }, items, disclosure);
            if rosters {
                items.extend(self.gw.access.roster_groups(decision, disclosure).into_iter().map(Item::added));
            }
        }
        let redactor = &*self.gw.redactor;
        stage::run(&DataScope { redactor }, items, disclosure);
        if let Some(decision) = &ctx.access {
            let visible = |id: &str| decision.scope.is_visible(id);
            let resolve = super::identifiers::resolver(ctx.member_ids.get());
            stage::run(&NamesStage { visible: &visible, resolve: &resolve }, items, disclosure);
        }
        if redactor.strips_money() {
            stage::run(&Money { redactor }, items, disclosure);
        }
        Ok(())
    }

    /// The entries that leave, written from the items no stage withheld:
    /// how each came into the answer, its `Type/id`, its JSON with every URL
    /// on fhirwall's base.
    fn entries_of(&self, items: Vec<Item<'_>>, history: bool) -> Result<Vec<Entry>, GatewayError> {
        let rewriter = self.gw.upstream.rewriter();
        let mut out = Vec::with_capacity(items.len());
        for item in items.into_iter().filter(|item| !item.withheld) {
            let (mode, version) = match item.entry {
                Some(entry) => match envelope::read_entry_node(entry, history)? {
                    Some(read) => read,
                    None => continue,
                },
                None => (EntryMode::Match, None),
            };
            // The upstream's resource on the tape names it even when a stage
            // rewrote it: redaction never touches `resourceType` or `id`, and
            // a plugin's replacement that changes either is dropped.
            let key = match item.node {
                Some(node) => match (node.get_str("resourceType"), node.get_str("id")) {
                    (Some(resource_type), Some(id)) => Some(format!("{resource_type}/{id}")),
                    _ => None,
                },
                None => item.text().and_then(key_of),
            };
            let (Some(key), Some(text)) = (key, item.text()) else { continue };
            out.push(Entry { key, mode, resource: rewriter.rewrite(text).into_owned(), version });
        }
        Ok(out)
    }

    /// Fail closed while the Part 2 programs are not yet looked up upstream.
    fn programs_resolved(&self) -> Result<(), GatewayError> {
        if self.gw.redactor.programs_resolved() {
            return Ok(());
        }
        Err(GatewayError::of(
            crate::error::Kind::Unavailable,
            "the Part 2 program list is not resolved yet; try again shortly",
        ))
    }

    /// The stages on one upstream Bundle page: the entries that may leave
    /// (Part 2 by reference and plugins not yet applied) and the upstream's
    /// next link.
    fn chain_page(
        &self,
        ctx: &RequestCtx,
        tape: &Tape<'_>,
        history: bool,
    ) -> Result<(Vec<Entry>, Option<String>), GatewayError> {
        let root = tape.root();
        if root.get_str("resourceType").as_deref() != Some("Bundle") {
            return Err(unusable("a search answer that is not a Bundle"));
        }
        let upstream_next = self.upstream_next(root)?;
        let mut items: Vec<Item<'_>> = match root.get("entry") {
            None => Vec::new(),
            Some(entry) if entry.kind() == Kind::Array => entry.children().map(Item::entry).collect(),
            Some(_) => return Err(unusable("Bundle.entry is not an array")),
        };
        self.judge_items(ctx, &mut items, !history, true)?;
        Ok((self.entries_of(items, history)?, upstream_next))
    }

    /// One upstream search page, judged and read through the stages
    /// before Part 2 by reference and the plugins: its entries and the
    /// upstream's next link.
    pub(super) fn search_page(
        &self,
        ctx: &RequestCtx,
        upstream: &UpstreamResponse,
    ) -> Result<(Vec<Entry>, Option<String>), GatewayError> {
        judged(upstream)?;
        let tape = strict_tape(upstream)?;
        self.chain_page(ctx, &tape, false)
    }

    /// The upstream's `next` link, below its base. A link elsewhere, or one
    /// that is not a string, is the upstream's fault.
    fn upstream_next(&self, bundle: Node<'_, '_>) -> Result<Option<String>, GatewayError> {
        let Some(links) = bundle.get("link") else { return Ok(None) };
        if links.kind() != Kind::Array {
            return Err(unusable("Bundle.link is not an array"));
        }
        let mut next = None;
        for link in links.children() {
            if link.kind() != Kind::Object {
                return Err(unusable("Bundle.link holds a non-object"));
            }
            let text = |name: &str| match link.get(name) {
                None => Ok(None),
                Some(value) if value.kind() == Kind::Null => Ok(None),
                Some(value) => value.str().map(Some).ok_or_else(|| unusable(format!("Bundle.link.{name}"))),
            };
            let (relation, url) = (text("relation")?, text("url")?);
            if relation.as_deref() == Some("next") && next.is_none() {
                next = Some(url);
            }
        }
        let Some(Some(url)) = next else { return Ok(None) };
        match self.gw.upstream.rewriter().strip_upstream_base(&url) {
            Some(path) => Ok(Some(path.to_owned())),
            None => Err(unusable("a paging link outside the upstream's base")),
        }
    }

    /// Withheld by reference (DESIGN.md "Part 2 programs"): an entry that
    /// references a resource withheld as Part 2 or as a drug prior
    /// authorization is withheld too, whether or not that resource is in the
    /// same answer — so the outcome never depends on how the upstream cut its
    /// pages. Targets that are not in `entries` are read from the upstream
    /// (one `_id` search per type) and classified by the data-scope stage.
    /// One hop: a target's own references are not followed.
    pub(super) async fn withhold_part2_referrers(
        &self,
        ctx: &RequestCtx,
        entries: Vec<Entry>,
    ) -> Result<Vec<Entry>, GatewayError> {
        let here: std::collections::HashSet<String> = entries.iter().map(|e| e.key.clone()).collect();
        let refs: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                chain::references(&e.resource)
                    .into_iter()
                    .filter(|r| !here.contains(r) && may_be_part2(r))
                    .collect()
            })
            .collect();
        let mut unknown: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
        {
            let mut known = ctx.part2_targets.lock().unwrap_or_else(|e| e.into_inner());
            for target in refs.iter().flatten() {
                if known.contains_key(target) {
                    continue;
                }
                if let Some(withheld) = self.gw.part2_targets.get(target) {
                    known.insert(target.clone(), withheld);
                    continue;
                }
                let (resource_type, id) = target.split_once('/').expect("normalised references are Type/id");
                let ids = unknown.entry(resource_type.to_owned()).or_default();
                if !ids.iter().any(|i| i == id) {
                    ids.push(id.to_owned());
                }
            }
        }
        for (resource_type, ids) in unknown {
            for chunk in ids.chunks(50) {
                let found = self.classify_targets(ctx, &resource_type, chunk).await?;
                let mut known = ctx.part2_targets.lock().unwrap_or_else(|e| e.into_inner());
                for id in chunk {
                    let key = format!("{resource_type}/{id}");
                    let withheld = found.get(&key).copied().unwrap_or(false);
                    self.gw.part2_targets.insert(key.clone(), withheld);
                    known.insert(key, withheld);
                }
            }
        }
        let known = ctx.part2_targets.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let stage = Part2References { redactor: &self.gw.redactor, references: refs, withheld: &known };
        Ok(stage::run_on_entries(&stage, entries, &mut ctx.disclosure()))
    }

    /// Read `resource_type` resources by id and say which are withheld as
    /// Part 2 or drug PA (by `Type/id`). An upstream that cannot answer fails
    /// the request closed.
    async fn classify_targets(
        &self,
        ctx: &RequestCtx,
        resource_type: &str,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, bool>, GatewayError> {
        let mut out = std::collections::HashMap::new();
        for (id, resource) in self.read_by_ids(ctx, resource_type, ids).await? {
            let mut scratch = Disclosure::default();
            let withheld = matches!(
                self.gw.redactor.apply(&resource, &mut scratch),
                crate::redact::Verdict::Drop(
                    crate::redact::Reason::Part2 | crate::redact::Reason::DrugPriorAuth
                )
            );
            out.insert(format!("{resource_type}/{id}"), withheld);
        }
        Ok(out)
    }

    /// The resources `resource_type/{id}` for `ids` that exist upstream, as
    /// (id, JSON): one `_id` search, or one read each where the upstream
    /// refuses that search. Only what was asked for is taken (the upstream is
    /// not trusted to filter); any other failure fails the request closed.
    pub(super) async fn read_by_ids(
        &self,
        ctx: &RequestCtx,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<(String, String)>, GatewayError> {
        let mut params = crate::fhir::SearchParams::default();
        params.push(crate::fhir::SearchParam::new("_id", None, ids.to_vec()));
        params.push(crate::fhir::SearchParam::single("_count", ids.len().max(1).to_string()));
        let path = format!("{resource_type}?{}", params.to_query_string());
        let upstream = self.ask(ctx, search_request(&path)).await?;
        let mut out = Vec::with_capacity(ids.len());
        if upstream.status == StatusCode::BAD_REQUEST || upstream.status == StatusCode::NOT_FOUND {
            for id in ids {
                let upstream =
                    self.ask(ctx, super::get(format!("{resource_type}/{}", super::enc(id)))).await?;
                match judged(&upstream) {
                    Ok(()) => {}
                    // A record that does not exist: nothing to take.
                    Err(e) if e.status == StatusCode::NOT_FOUND => continue,
                    Err(e) => return Err(e),
                }
                let resource = strict_text(&upstream)?;
                if key_of(resource).as_deref() == Some(&format!("{resource_type}/{id}")) {
                    out.push((id.clone(), resource.to_owned()));
                }
            }
            return Ok(out);
        }
        judged(&upstream)?;
        let text = strict_text(&upstream)?;
        let object = RawObject::parse(text).map_err(|e| unusable(format!("body: {e}")))?;
        let entries: Vec<&RawValue> = match object.get("entry") {
            Some(raw) => serde_json::from_str(raw.get()).map_err(|_| unusable("Bundle.entry"))?,
            None => Vec::new(),
        };
        for entry in entries {
            let Some(read) = envelope::read_entry(entry, false)? else { continue };
            let resource = read.resource.get();
            let Some(key) = key_of(resource) else { continue };
            let Some(id) = key.strip_prefix(resource_type).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            if ids.iter().any(|i| i == id) {
                out.push((id.to_owned(), resource.to_owned()));
            }
        }
        Ok(out)
    }

    /// The caller's `_elements` / `_summary`, cut from the matches (never
    /// from includes), after every stage has judged the whole resource.
    fn subset_matches(&self, ctx: &RequestCtx, mut entries: Vec<Entry>) -> Vec<Entry> {
        let Some(subset) = &ctx.subset else { return entries };
        for entry in entries.iter_mut().filter(|e| e.mode == EntryMode::Match) {
            if let Some(cut) = subset.apply(&entry.resource) {
                entry.resource = cut;
            }
        }
        entries
    }

    /// Policy plugins over the entries of one page: every plugin's verdict
    /// on each resource, reached on a blocking thread, then applied as a stage.
    pub(super) async fn plugin_entries(
        &self,
        ctx: &RequestCtx,
        entries: Vec<Entry>,
    ) -> Result<Vec<Entry>, GatewayError> {
        if entries.is_empty() {
            return Ok(entries);
        }
        let Some(mut run) = ctx.policy.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(entries);
        };
        let access = self.gw.access.clone();
        let scope = ctx.access.as_ref().map(|d| d.scope.clone());
        let resources: Vec<String> = entries.iter().map(|e| e.resource.clone()).collect();
        let (run, verdicts) = tokio::task::spawn_blocking(move || {
            // A replacement narrows what the built-in stages let out; it is
            // checked by access again all the same.
            let recheck = |text: &str| match &scope {
                Some(scope) => matches!(access.check_resource(scope, text), crate::access::Verdict::Keep(_)),
                None => RawObject::parse(text).is_ok(),
            };
            let verdicts = run.judge_all(&resources, &recheck);
            (run, verdicts)
        })
        .await
        .map_err(|e| GatewayError::internal(format!("policy plugin task: {e}")))?;
        *ctx.policy.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
        let stage = crate::plugins::policy::PluginStage::new(verdicts?);
        Ok(stage::run_on_entries(&stage, entries, &mut ctx.disclosure()))
    }

    /// Read or vread: the resource leaves only when it passes every stage;
    /// a version only when the current version does too (a resource that
    /// moved to a hidden patient shows none of its past).
    pub(super) async fn answer_read(
        &self,
        ctx: &RequestCtx,
        resource_type: &str,
        id: &str,
        version: Option<&str>,
    ) -> Result<Response<Body>, GatewayError> {
        self.load_member_ids(ctx).await?;
        let current_path = format!("{resource_type}/{}", super::enc(id));
        let path = match version {
            Some(v) => format!("{current_path}/_history/{}", super::enc(v)),
            None => current_path.clone(),
        };
        let (upstream, entry) = self.read_through_chain(ctx, path, resource_type, id, true).await?;
        if version.is_some() {
            self.require_current_visible(ctx, &current_path, resource_type, id).await?;
        }
        let before = entry.resource.clone();
        let entries = self.plugin_entries(ctx, vec![entry]).await?;
        let replaced = entries.first().is_some_and(|e| e.resource != before);
        let Some(entry) = self.subset_matches(ctx, entries).pop() else {
            return Err(crate::access::decide::not_found());
        };
        let mut response = respond::fhir_json(StatusCode::OK, Bytes::from(entry.resource));
        // Weak validators name the version; a plugin's replacement is another text.
        if !replaced {
            for name in [ETAG, LAST_MODIFIED] {
                if let Some(value) = upstream.headers.get(&name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
        }
        // A location on fhirwall's base only (relative, or rewritten from the upstream's).
        let rewriter = self.gw.upstream.rewriter();
        if let Some(value) = upstream.headers.get(CONTENT_LOCATION).and_then(|v| v.to_str().ok()) {
            let rewritten = rewriter.rewrite(value);
            let safe = !rewritten.contains("://") || rewritten.starts_with(rewriter.public_base());
            if safe && let Ok(v) = HeaderValue::from_str(&rewritten) {
                response.headers_mut().insert(CONTENT_LOCATION, v);
            }
        }
        Ok(response)
    }

    /// One resource read from `path` through the stages before the plugins
    /// (access, hidden patients, data scope, Part 2 by reference); a 404
    /// when it may not leave. `count`: its withholdings go to the audit
    /// record (not for the current version a vread or history checks).
    async fn read_through_chain(
        &self,
        ctx: &RequestCtx,
        path: String,
        resource_type: &str,
        id: &str,
        count: bool,
    ) -> Result<(UpstreamResponse, Entry), GatewayError> {
        let upstream = self.ask(ctx, super::get(path)).await?;
        judged(&upstream)?;
        let key = format!("{resource_type}/{id}");
        let text = strict_text(&upstream)?;
        if key_of(text).as_deref() != Some(&key) {
            return Err(unusable("the upstream answered with another resource"));
        }
        let Some(out) = self.chain_resource(ctx, text, count)? else {
            return Err(crate::access::decide::not_found());
        };
        let entry = Entry { key, mode: EntryMode::Match, resource: out, version: None };
        match self.withhold_part2_referrers(ctx, vec![entry]).await?.pop() {
            Some(entry) => Ok((upstream, entry)),
            None => Err(crate::access::decide::not_found()),
        }
    }

    /// 404 unless the current version of the resource passes every stage.
    async fn require_current_visible(
        &self,
        ctx: &RequestCtx,
        current_path: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<(), GatewayError> {
        let (_, entry) =
            self.read_through_chain(ctx, current_path.to_owned(), resource_type, id, false).await?;
        if self.plugin_entries(ctx, vec![entry]).await?.is_empty() {
            return Err(crate::access::decide::not_found());
        }
        Ok(())
    }

    /// Instance history: the versions that pass every stage, and only
    /// while the current version does.
    pub(super) async fn answer_history(
        &self,
        ctx: &RequestCtx,
        resource_type: &str,
        id: &str,
        query: String,
    ) -> Result<Response<Body>, GatewayError> {
        self.load_member_ids(ctx).await?;
        let current_path = format!("{resource_type}/{}", super::enc(id));
        self.require_current_visible(ctx, &current_path, resource_type, id).await?;
        let key = format!("{resource_type}/{id}");
        let mut path = format!("{current_path}/_history");
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let mut versions: Vec<Entry> = Vec::new();
        let mut visited = std::collections::HashSet::new();
        loop {
            if !visited.insert(path.clone()) || visited.len() > chain::page::MAX_UPSTREAM_PAGES {
                return Err(unusable("the upstream's history paging does not end"));
            }
            let upstream = self.ask(ctx, super::get(path.clone())).await?;
            judged(&upstream)?;
            let tape = strict_tape(&upstream)?;
            let (entries, next) = self.chain_page(ctx, &tape, true)?;
            let entries: Vec<Entry> = entries.into_iter().filter(|e| e.key == key).collect();
            let entries = self.withhold_part2_referrers(ctx, entries).await?;
            versions.extend(self.plugin_entries(ctx, entries).await?);
            match next {
                Some(next) => path = next,
                None => break,
            }
        }
        if versions.is_empty() {
            return Err(crate::access::decide::not_found());
        }
        let envelope = Envelope {
            bundle_type: "history",
            total: Some(versions.len()),
            self_url: &ctx.self_url,
            next_url: None,
            public_base: &self.gw.public_base,
        };
        Ok(respond::fhir_json(StatusCode::OK, Bytes::from(envelope.write(&versions, &[]))))
    }

    /// A write (only where `server.allow_writes` lets one through): the
    /// upstream's answer is judged like any other — its status mapped by
    /// fhirwall, a returned resource through the stages (withheld: the status
    /// alone), `Location` only on fhirwall's base.
    pub(super) async fn answer_write(
        &self,
        ctx: &RequestCtx,
        request: UpstreamRequest,
    ) -> Result<Response<Body>, GatewayError> {
        self.load_member_ids(ctx).await?;
        let upstream = self.ask(ctx, request).await?;
        let status = upstream.status;
        if !status.is_success() {
            return Err(match status.as_u16() {
                404 | 410 => crate::access::decide::not_found(),
                400..=499 => GatewayError::of(
                    crate::error::Kind::refused_by_upstream(status),
                    "the upstream FHIR server refused the request",
                )
                .with_code(crate::error::IssueCode::Processing),
                _ => GatewayError::bad_gateway("the upstream FHIR server failed")
                    .with_detail(format!("upstream answered {status}")),
            });
        }
        let body = if upstream.body.is_empty() {
            None
        } else {
            let text = strict_text(&upstream)?;
            self.chain_resource(ctx, text, true)?
        };
        let mut response = match body {
            Some(body) => respond::fhir_json(status, Bytes::from(body)),
            None => respond::empty(status),
        };
        let rewriter = self.gw.upstream.rewriter();
        for name in [http::header::LOCATION, CONTENT_LOCATION] {
            let Some(value) = upstream.headers.get(&name).and_then(|v| v.to_str().ok()) else { continue };
            let rewritten = rewriter.rewrite(value);
            let safe = !rewritten.contains("://") || rewritten.starts_with(rewriter.public_base());
            if safe && let Ok(v) = HeaderValue::from_str(&rewritten) {
                response.headers_mut().insert(name, v);
            }
        }
        Ok(response)
    }

    /// `metadata`: fhirwall's own CapabilityStatement, written from the
    /// upstream's (public: no token needed, nothing of the upstream's copied
    /// but the types and search parameters fhirwall serves).
    pub(super) async fn answer_capabilities(&self, ctx: &RequestCtx) -> Result<Response<Body>, GatewayError> {
        let upstream = self.ask(ctx, super::get("metadata".into())).await?;
        if upstream.status != StatusCode::OK {
            return Err(GatewayError::bad_gateway("the upstream FHIR server failed")
                .with_detail(format!("metadata: upstream answered {}", upstream.status)));
        }
        let text = strict_text(&upstream)?;
        let policy = self.gw.access.policy();
        let serves = |t: &str| !matches!(policy.rule(t), crate::access::policy::TypeRule::Unlisted);
        let matcher = self.gw.plugins.current().matcher.is_some();
        let offers = |op: &str| match op {
            "member-match" | "provider-member-match" => matcher,
            "export" | "davinci-data-export" => true,
            _ => false,
        };
        let served =
            chain::capability::Served { serves: &serves, offers: &offers, public_base: &self.gw.public_base };
        let statement =
            chain::capability::build(text, &served).map_err(|why| unusable(format!("metadata: {why}")))?;
        let statement = self
            .gw
            .auth
            .add_security(&statement)
            .map_err(|e| GatewayError::internal(format!("CapabilityStatement: {e}")))?;
        Ok(respond::fhir_json(StatusCode::OK, Bytes::from(statement)))
    }

    /// A search page: filled from as many upstream pages as it takes.
    pub(super) async fn answer_search(
        &self,
        ctx: &RequestCtx,
        start: SearchStart,
    ) -> Result<Response<Body>, GatewayError> {
        self.load_member_ids(ctx).await?;
        let mut builder = PageBuilder::new(start.want);
        let mut cursor = start.cursor;
        let mut visited = std::collections::HashSet::new();
        loop {
            if !visited.insert(cursor.path.clone()) {
                return Err(unusable("the upstream's paging links loop"));
            }
            let upstream = self.ask(ctx, search_request(&cursor.path)).await?;
            judged(&upstream)?;
            let tape = strict_tape(&upstream)?;
            let (entries, next) = self.chain_page(ctx, &tape, false)?;
            let entries = self.withhold_part2_referrers(ctx, entries).await?;
            let entries = self.plugin_entries(ctx, entries).await?;
            let entries = self.subset_matches(ctx, entries);
            match builder.feed(&cursor, entries, next) {
                Step::Fetch(next) => cursor = next,
                Step::Done => break,
            }
        }
        let page = builder.finish(&|entry: &Entry| chain::references(&entry.resource));
        let next_url = match &page.next {
            Some(next) => {
                let trail = start
                    .trail
                    .advance(&next.path, next.skip)
                    .map_err(|_| unusable("the upstream's paging links loop across pages"))?;
                let token = self.gw.pages.seal_at(
                    &ctx.caller.binding,
                    &start.resource_type,
                    &next.path,
                    next.skip,
                    start.want,
                    trail,
                )?;
                Some(format!("{}/_page/{token}", self.gw.public_base))
            }
            None => None,
        };
        let envelope = Envelope {
            bundle_type: "searchset",
            total: (!start.from_token && page.complete).then_some(page.matches.len()),
            self_url: &ctx.self_url,
            next_url: next_url.as_deref(),
            public_base: &self.gw.public_base,
        };
        Ok(respond::fhir_json(StatusCode::OK, Bytes::from(envelope.write(&page.matches, &page.includes))))
    }
}

/// Types whose resources are never Part 2 by themselves here: the patient,
/// and directory data (a Part 2 program's Organization is found by the
/// program rule on the referrer).
fn may_be_part2(reference: &str) -> bool {
    let resource_type = reference.split('/').next().unwrap_or("");
    !matches!(
        resource_type,
        "Patient" | "Practitioner" | "PractitionerRole" | "Organization" | "Location" | "Group" | "Coverage"
    )
}

/// The upstream request for a search cursor: GET, or POST `_search` when
/// the query is long. `handling=strict` asks the upstream to refuse
/// parameters it would otherwise ignore.
pub(super) fn search_request(path: &str) -> UpstreamRequest {
    let strict = (HeaderName::from_static("prefer"), HeaderValue::from_static("handling=strict"));
    match path.split_once('?') {
        Some((resource_type, query)) if path.len() > MAX_GET_QUERY && !resource_type.contains('/') => {
            UpstreamRequest {
                method: Method::POST,
                path_and_query: format!("{resource_type}/_search"),
                body: Some((
                    Bytes::from(query.to_owned()),
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )),
                headers: vec![strict],
                request_id: String::new(),
            }
        }
        _ => {
            let mut request = super::get(path.to_owned());
            request.headers.push(strict);
            request
        }
    }
}

/// The page size a search asks for, and the `_count` sent upstream.
pub(super) fn page_sizes(params: &crate::fhir::SearchParams) -> (usize, usize) {
    let want = params
        .first("_count")
        .and_then(|p| p.values.first())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_COUNT)
        .clamp(1, MAX_PAGE);
    // Half a page more than asked, so that one upstream page usually fills a
    // page (and shows whether a further visible match exists) even when some
    // of its entries are withheld.
    (want, (want + want / 2 + 1).max(MIN_UPSTREAM_COUNT))
}
