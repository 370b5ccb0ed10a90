//! Calling `policy` plugins for one request and applying their verdicts.
//!
//! Each request gets one fresh instance per policy plugin (created on first
//! use, dropped with the request): `on-request` and every `on-resource` of
//! that request share it, nothing is shared with another request.
//!
//! Verdicts only ever take away:
//! - `deny(reason)` -> 403 OperationOutcome with the reason;
//! - `drop(reason)` -> the resource is withheld (a read becomes 404, a
//!   Bundle entry is removed and `total` is removed);
//! - `replace(resource)` is honoured only when the replacement is a
//!   narrowing of the original: a JSON object with the same `resourceType`
//!   and `id`, every element of which is present, unchanged, in the original
//!   (elements may be removed, never added or altered), and which passes the
//!   built-in filters again. Any other replacement is treated as `drop`.
//!   Text that is not a JSON object is output outside the contract: the
//!   request fails closed.

use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use super::bindings::policy::fhirwall::plugin::policy_types as wit;
use super::bindings::policy::{Policy, PolicyPre};
use super::sandbox::{self, HostState};
use super::{Host, PluginError, PluginSpec};
use crate::chain::disclosure::{Disclosure, Reason};
use crate::fhir::bundle::RawObject;

/// Largest reason kept from a plugin (bytes).
const MAX_REASON_BYTES: usize = 512;

pub struct PolicyPlugin {
    pub spec: PluginSpec,
    engine: wasmtime::Engine,
    pre: PolicyPre<HostState>,
}

/// Who asks and for what (the WIT `request-context`).
#[derive(Debug, Clone, Default)]
pub struct PolicyContext {
    pub request_id: String,
    pub client_id: String,
    pub organization: String,
    pub npi: Option<String>,
    pub scopes: Vec<String>,
    pub interaction: String,
    pub resource_type: Option<String>,
    pub patients: Vec<String>,
}

impl PolicyContext {
    fn to_wit(&self) -> wit::RequestContext {
        wit::RequestContext {
            request_id: self.request_id.clone(),
            client_id: self.client_id.clone(),
            organization: self.organization.clone(),
            npi: self.npi.clone(),
            scopes: self.scopes.clone(),
            interaction: self.interaction.clone(),
            resource_type: self.resource_type.clone(),
            patients: self.patients.clone(),
        }
    }
}

/// A request decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// A resource verdict, after the host's check of `replace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Drop(String),
    Replace(String),
}

impl wit::Host for HostState {}
impl super::bindings::policy::fhirwall::plugin::types::Host for HostState {}

impl PolicyPlugin {
    pub(super) fn new(
        host: &Host,
        spec: PluginSpec,
        component: &Component,
    ) -> Result<PolicyPlugin, PluginError> {
        let engine = host.engine().clone();
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| spec.error_load(format!("{e:#}")))?;
        let pre = linker.instantiate_pre(component).map_err(|e| {
            spec.error_load(format!(
                "not a fhirwall:plugin policy, or imports what the host does not offer: {e:#}"
            ))
        })?;
        let pre = PolicyPre::new(pre).map_err(|e| {
            spec.error_load(format!("does not export the fhirwall:plugin/policy world: {e:#}"))
        })?;
        Ok(PolicyPlugin { spec, engine, pre })
    }

    pub fn name(&self) -> &str {
        &self.spec.config.name
    }

    /// A fresh instance for one request (blocking).
    pub fn instantiate(self: &Arc<Self>) -> Result<PolicyInstance, PluginError> {
        let mut store = sandbox::new_store(&self.engine, &self.spec)?;
        sandbox::start_call(&mut store);
        match self.pre.instantiate(&mut store) {
            Ok(instance) => Ok(PolicyInstance { plugin: self.clone(), store, instance }),
            Err(e) => {
                let text = format!("{e:#}");
                if text.contains("maximum concurrent") || text.contains("pooling allocator") {
                    return Err(PluginError::Busy { plugin: self.name().to_owned() });
                }
                Err(sandbox::classify(&self.spec, &store, e))
            }
        }
    }
}

/// One policy plugin's instance for one request.
pub struct PolicyInstance {
    plugin: Arc<PolicyPlugin>,
    store: Store<HostState>,
    instance: Policy,
}

impl PolicyInstance {
    pub fn on_request(&mut self, ctx: &wit::RequestContext) -> Result<Decision, PluginError> {
        sandbox::start_call(&mut self.store);
        let result = self.instance.call_on_request(&mut self.store, ctx);
        let decision = result.map_err(|e| sandbox::classify(&self.plugin.spec, &self.store, e))?;
        Ok(match decision {
            wit::Decision::Allow => Decision::Allow,
            wit::Decision::Deny(reason) => Decision::Deny(short(&reason)),
        })
    }

    /// `resource` is FHIR JSON the built-in filters already let through.
    pub fn on_resource(&mut self, ctx: &wit::RequestContext, resource: &str) -> Result<Verdict, PluginError> {
        sandbox::start_call(&mut self.store);
        let resource_owned = resource.to_owned();
        let result = self.instance.call_on_resource(&mut self.store, ctx, &resource_owned);
        let verdict = result.map_err(|e| sandbox::classify(&self.plugin.spec, &self.store, e))?;
        Ok(match verdict {
            wit::Verdict::Keep => Verdict::Keep,
            wit::Verdict::Drop(reason) => Verdict::Drop(short(&reason)),
            wit::Verdict::Replace(replacement) => self.check_replace(resource, replacement)?,
        })
    }

    fn check_replace(&self, original: &str, replacement: String) -> Result<Verdict, PluginError> {
        check_replacement(self.plugin.name(), original, replacement)
    }
}

/// The host's check of a `replace` verdict from `plugin` on `original`:
/// honoured only as a narrowing with the same `resourceType` and `id`
/// (else a drop); text that is not a JSON object is malformed output.
/// Public for the fuzz target (`fuzz/fuzz_targets/plugin_output.rs`).
pub fn check_replacement(plugin: &str, original: &str, replacement: String) -> Result<Verdict, PluginError> {
    let malformed =
        |message: &str| PluginError::Malformed { plugin: plugin.to_owned(), message: message.to_owned() };
    if replacement.len() > original.len() * 2 + 1024 {
        return Err(malformed("replace: larger than the original resource"));
    }
    let new: Value = serde_json::from_str(&replacement).map_err(|_| malformed("replace: not JSON"))?;
    if !new.is_object() {
        return Err(malformed("replace: not a JSON object"));
    }
    let Ok(old) = serde_json::from_str::<Value>(original) else {
        return Ok(Verdict::Drop("replace of an unreadable resource".into()));
    };
    let same_identity = new.get("resourceType") == old.get("resourceType") && new.get("id") == old.get("id");
    if !same_identity {
        tracing::warn!(plugin = %plugin, "policy replace changed resourceType or id: dropped instead");
        return Ok(Verdict::Drop("replace changed resourceType or id".into()));
    }
    if !is_narrowing(&new, &old) {
        tracing::warn!(plugin = %plugin, "policy replace adds or alters content: dropped instead");
        return Ok(Verdict::Drop("replace adds or alters content".into()));
    }
    Ok(Verdict::Replace(new.to_string()))
}

/// Is `new` `old` with elements removed (nothing added or changed)?
/// Objects: every key of `new` is in `old`, recursively narrowing. Arrays:
/// `new`'s items narrow distinct items of `old`, in order. Scalars: equal.
pub fn is_narrowing(new: &Value, old: &Value) -> bool {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => {
            n.iter().all(|(k, v)| o.get(k).is_some_and(|ov| is_narrowing(v, ov)))
        }
        (Value::Array(n), Value::Array(o)) => {
            let mut rest = o.iter();
            n.iter().all(|item| rest.by_ref().any(|candidate| is_narrowing(item, candidate)))
        }
        _ => new == old,
    }
}

fn short(text: &str) -> String {
    let mut end = text.len().min(MAX_REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The policy plugins of one request.
pub struct PolicyRun {
    ctx: wit::RequestContext,
    plugins: Vec<Arc<PolicyPlugin>>,
    instances: Vec<PolicyInstance>,
    _permits: Vec<tokio::sync::OwnedSemaphorePermit>,
}

/// How a whole response fared.
pub enum BodyOutcome {
    /// Send this body (unchanged when nothing was dropped or replaced).
    Body(bytes::Bytes),
    /// The single resource was dropped: answer as if it did not exist.
    Withheld(String),
}

impl PolicyRun {
    pub fn new(ctx: &PolicyContext, plugins: Vec<Arc<PolicyPlugin>>) -> PolicyRun {
        PolicyRun { ctx: ctx.to_wit(), plugins, instances: Vec::new(), _permits: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Take instance slots for this request (one per plugin).
    pub async fn acquire(&mut self, host: &Host) -> Result<(), PluginError> {
        for plugin in &self.plugins[self._permits.len()..] {
            self._permits.push(host.permit(plugin.name()).await?);
        }
        Ok(())
    }

    fn ensure_instances(&mut self) -> Result<(), PluginError> {
        while self.instances.len() < self.plugins.len() {
            let plugin = &self.plugins[self.instances.len()];
            self.instances.push(plugin.instantiate()?);
        }
        Ok(())
    }

    /// Every plugin's `on-request`; the first deny wins (blocking).
    pub fn on_request(&mut self) -> Result<Decision, PluginError> {
        self.ensure_instances()?;
        for instance in &mut self.instances {
            if let Decision::Deny(reason) = instance.on_request(&self.ctx)? {
                return Ok(Decision::Deny(reason));
            }
        }
        Ok(Decision::Allow)
    }

    /// One resource through every plugin in order (blocking).
    pub fn on_resource(&mut self, resource: &str) -> Result<Verdict, PluginError> {
        self.ensure_instances()?;
        let mut current: Option<String> = None;
        for instance in &mut self.instances {
            let text = current.as_deref().unwrap_or(resource);
            match instance.on_resource(&self.ctx, text)? {
                Verdict::Keep => {}
                // Which plugin withheld it, for explain and the logs.
                Verdict::Drop(reason) => {
                    return Ok(Verdict::Drop(format!("{}: {reason}", instance.plugin.name())));
                }
                Verdict::Replace(new) => current = Some(new),
            }
        }
        Ok(current.map_or(Verdict::Keep, Verdict::Replace))
    }

    /// Apply the plugins to a response body that already passed the built-in
    /// filters: each entry of a Bundle, or the single resource. `recheck`
    /// runs the built-in filters on a replacement (false: drop it).
    /// Blocking.
    pub fn filter_body(
        &mut self,
        body: &bytes::Bytes,
        recheck: &dyn Fn(&str) -> bool,
    ) -> Result<(BodyOutcome, Disclosure), PluginError> {
        let mut report = Disclosure::default();
        let Ok(text) = std::str::from_utf8(body) else {
            return Ok((BodyOutcome::Body(body.clone()), report));
        };
        let Ok(object) = RawObject::parse(text) else { return Ok((BodyOutcome::Body(body.clone()), report)) };
        let resource_type = object.get_str("resourceType").unwrap_or_default();
        match resource_type.as_str() {
            // Errors and the server's own statements are not member data.
            "" | "OperationOutcome" | "CapabilityStatement" => Ok((BodyOutcome::Body(body.clone()), report)),
            "Bundle" => {
                let Some(entries) = object.get("entry") else {
                    return Ok((BodyOutcome::Body(body.clone()), report));
                };
                let entries: Vec<&RawValue> = serde_json::from_str(entries.get()).map_err(|e| {
                    PluginError::Malformed { plugin: "(host)".into(), message: format!("Bundle.entry: {e}") }
                })?;
                let mut out_entries: Vec<String> = Vec::with_capacity(entries.len());
                for entry in entries {
                    let Ok(entry_obj) = RawObject::parse(entry.get()) else {
                        out_entries.push(entry.get().to_owned());
                        continue;
                    };
                    let Some(resource) = entry_obj.get("resource") else {
                        out_entries.push(entry.get().to_owned());
                        continue;
                    };
                    match self.verdict(resource.get(), recheck)? {
                        Verdict::Keep => out_entries.push(entry.get().to_owned()),
                        Verdict::Drop(_) => report.withhold(Reason::Plugin),
                        Verdict::Replace(new) => {
                            report.redact(Reason::Plugin);
                            let mut rebuilt = String::with_capacity(entry.get().len());
                            entry_obj
                                .write_with(&mut rebuilt, |key, _| (key == "resource").then(|| new.clone()));
                            out_entries.push(rebuilt);
                        }
                    }
                }
                if report.is_clean() {
                    return Ok((BodyOutcome::Body(body.clone()), report));
                }
                let entries_json = format!("[{}]", out_entries.join(","));
                let mut out = String::with_capacity(text.len());
                let dropped = report.withheld(Reason::Plugin) > 0;
                object.write_with(&mut out, |key, _| match key {
                    "entry" => Some(entries_json.clone()),
                    // Entries were withheld: a total would reveal how many.
                    "total" if dropped => Some(String::new()),
                    _ => None,
                });
                Ok((BodyOutcome::Body(bytes::Bytes::from(out)), report))
            }
            _ => match self.verdict(text, recheck)? {
                Verdict::Keep => Ok((BodyOutcome::Body(body.clone()), report)),
                Verdict::Drop(reason) => {
                    report.withhold(Reason::Plugin);
                    Ok((BodyOutcome::Withheld(reason), report))
                }
                Verdict::Replace(new) => {
                    report.redact(Reason::Plugin);
                    Ok((BodyOutcome::Body(bytes::Bytes::from(new)), report))
                }
            },
        }
    }

    /// Every plugin's verdict on one resource; a replacement the built-in
    /// filters refuse (`recheck` false) is a drop. Blocking.
    pub fn verdict_on(
        &mut self,
        resource: &str,
        recheck: &dyn Fn(&str) -> bool,
    ) -> Result<Verdict, PluginError> {
        self.verdict(resource, recheck)
    }

    fn verdict(&mut self, resource: &str, recheck: &dyn Fn(&str) -> bool) -> Result<Verdict, PluginError> {
        Ok(match self.on_resource(resource)? {
            Verdict::Replace(new) if !recheck(&new) => {
                Verdict::Drop("replacement refused by the built-in filters".into())
            }
            other => other,
        })
    }
}

impl PolicyRun {
    /// Every plugin's verdict on each of an answer's resources, in the
    /// chain's vocabulary (blocking), with the plugin's reason for a drop.
    /// A replacement the built-in filters refuse (`recheck` false) is a drop.
    pub fn judge_all(
        &mut self,
        resources: &[String],
        recheck: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<(crate::chain::disclosure::Verdict, Option<String>)>, PluginError> {
        use crate::chain::disclosure::Verdict as Chain;
        resources
            .iter()
            .map(|resource| {
                Ok(match self.verdict(resource, recheck)? {
                    Verdict::Keep => (Chain::Keep, None),
                    Verdict::Drop(reason) => (Chain::Drop(Reason::Plugin), Some(reason)),
                    Verdict::Replace(text) => (Chain::Redact { text, why: Reason::Plugin }, None),
                })
            })
            .collect()
    }
}

/// The policy plugins as a chain stage. Plugin calls may take their
/// `timeout_ms` each, so the verdicts are reached on a blocking thread
/// first ([`PolicyRun::judge_all`]) and the stage hands them out.
pub struct PluginStage {
    verdicts: std::cell::Cell<Option<Vec<crate::chain::disclosure::Verdict>>>,
    /// The plugin's reason for each drop (`policy: confidential-communication`).
    reasons: Vec<Option<String>>,
}

impl PluginStage {
    pub fn new(judged: Vec<(crate::chain::disclosure::Verdict, Option<String>)>) -> PluginStage {
        let (verdicts, reasons) = judged.into_iter().unzip();
        PluginStage { verdicts: std::cell::Cell::new(Some(verdicts)), reasons }
    }
}

impl crate::chain::stage::Stage for PluginStage {
    fn name(&self) -> &'static str {
        "plugins"
    }

    fn detail(
        &self,
        shown: usize,
        item: &crate::chain::stage::Item<'_>,
        verdict: &crate::chain::disclosure::Verdict,
    ) -> Option<String> {
        use crate::chain::disclosure::Verdict as Chain;
        match verdict {
            Chain::Drop(_) => self.reasons.get(shown).cloned().flatten(),
            Chain::Redact { text, .. } => crate::chain::elements::changed(item.text()?, text),
            Chain::Keep => None,
        }
    }

    /// Shown other resources than were judged (or twice): withhold them all.
    fn judge(
        &self,
        items: &[&crate::chain::stage::Item<'_>],
        disclosure: &mut Disclosure,
    ) -> Vec<crate::chain::disclosure::Verdict> {
        use crate::chain::disclosure::Verdict as Chain;
        let verdicts = self.verdicts.take().filter(|v| v.len() == items.len());
        let verdicts = verdicts.unwrap_or_else(|| vec![Chain::Drop(Reason::Plugin); items.len()]);
        for verdict in &verdicts {
            match verdict {
                Chain::Keep => {}
                Chain::Drop(reason) => disclosure.withhold(*reason),
                Chain::Redact { why, .. } => disclosure.redact(*why),
            }
        }
        verdicts
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn narrowing_only_removes() {
        let old = json!({"resourceType":"Patient","id":"p","name":[{"family":"A","given":["B","C"]}],"address":[{"city":"X"}]});
        assert!(is_narrowing(&json!({"resourceType":"Patient","id":"p"}), &old));
        assert!(is_narrowing(&json!({"resourceType":"Patient","id":"p","name":[{"given":["C"]}]}), &old));
        assert!(!is_narrowing(&json!({"resourceType":"Patient","id":"p","gender":"male"}), &old));
        assert!(!is_narrowing(&json!({"resourceType":"Patient","id":"p","name":[{"family":"Z"}]}), &old));
        assert!(!is_narrowing(
            &json!({"resourceType":"Patient","id":"p","name":[{"given":["C","B"]}]}),
            &old
        ));
    }
}
