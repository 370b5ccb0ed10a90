//! The identifiers of the patients a caller may see, so that a Reference
//! given only by an identifier can be resolved to one of them
//! (`chain::names`). fhirwall learns no one else's: an identifier that is
//! not a visible patient's own withholds the record that carries it.
//!
//! Read from the upstream's Patient resources of the organization's
//! visible patients (one `_id` search per 100), kept per organization for
//! `server::MEMBER_IDS_TTL`; visibility itself is checked on every use, so an
//! opt-out takes effect at once. A patient attributed after the map was
//! read is unknown until it is read again: its identifier-only links are
//! withheld meanwhile (fail closed).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use super::answer::{judged_upstream, search_request, strict_upstream_text};
use super::{FhirHandler, RequestCtx};
use crate::error::GatewayError;
use crate::fhir::bundle::RawObject;

/// Most visible patients whose identifiers are read (beyond: none are, and
/// every identifier-only patient link is withheld).
const MAX_PATIENTS: usize = 20_000;

/// `system|value` (or `|value` without a system) -> patient id; an
/// identifier two patients share maps to "" (ambiguous: resolves to none).
pub type MemberIds = HashMap<String, String>;

pub fn identifier_key(system: Option<&str>, value: &str) -> String {
    format!("{}|{}", system.unwrap_or(""), value.trim())
}

impl FhirHandler {
    /// Make the caller's identifier map available to the chain (`ctx.member_ids`).
    /// Never fails the request: an unreadable map is an empty one.
    pub(super) async fn load_member_ids(&self, ctx: &RequestCtx) -> Result<(), GatewayError> {
        let Some(decision) = &ctx.access else { return Ok(()) };
        if ctx.member_ids.get().is_some() {
            return Ok(());
        }
        let organization = decision.scope.organization().to_owned();
        let map = match self.gw.member_ids.get(&organization).await {
            Some(map) => map,
            None => match self.read_member_ids(ctx).await {
                Ok(map) => {
                    let map = Arc::new(map);
                    self.gw.member_ids.insert(organization, map.clone()).await;
                    map
                }
                // Still fail closed: with no identifier known, every
                // identifier-only patient link withholds its record. Not
                // kept, so the next request tries again.
                Err(e) => {
                    tracing::warn!(request_id = %ctx.request_id, detail = ?e.detail, "visible patients' identifiers could not be read");
                    Arc::new(MemberIds::new())
                }
            },
        };
        let _ = ctx.member_ids.set(map);
        Ok(())
    }

    async fn read_member_ids(&self, ctx: &RequestCtx) -> Result<MemberIds, GatewayError> {
        let Some(decision) = &ctx.access else { return Ok(MemberIds::new()) };
        let Ok(patients) = decision.scope.visible_patients(MAX_PATIENTS) else { return Ok(MemberIds::new()) };
        let mut map = MemberIds::new();
        for chunk in patients.chunks(100) {
            let mut params = crate::fhir::SearchParams::default();
            params.push(crate::fhir::SearchParam::new("_id", None, chunk.to_vec()));
            params.push(crate::fhir::SearchParam::single("_count", chunk.len().to_string()));
            let path = format!("Patient?{}", params.to_query_string());
            let upstream = self.ask(ctx, search_request(&path)).await?;
            judged_upstream(&upstream)?;
            let text = strict_upstream_text(&upstream)?;
            let bundle = RawObject::parse(text).map_err(|e| unusable(format!("Patient search: {e}")))?;
            let entries: Vec<&RawValue> = match bundle.get("entry") {
                Some(raw) => serde_json::from_str(raw.get()).map_err(|_| unusable("Bundle.entry"))?,
                None => Vec::new(),
            };
            for entry in entries {
                let entry: Value = serde_json::from_str(entry.get()).map_err(|_| unusable("Bundle.entry"))?;
                let patient = &entry["resource"];
                let Some(id) = patient["id"].as_str() else { continue };
                // The upstream's search is not trusted: only the patients asked for.
                if patient["resourceType"] != "Patient" || !chunk.iter().any(|p| p == id) {
                    continue;
                }
                for identifier in patient["identifier"].as_array().into_iter().flatten() {
                    let Some(value) = identifier["value"].as_str() else { continue };
                    let key = identifier_key(identifier["system"].as_str(), value);
                    match map.get(&key) {
                        Some(other) if other != id => {
                            map.insert(key, String::new());
                        }
                        Some(_) => {}
                        None => {
                            map.insert(key, id.to_owned());
                        }
                    }
                }
            }
        }
        Ok(map)
    }
}

/// The resolver the chain uses: the caller's map, or none known.
pub fn resolver(map: Option<&Arc<MemberIds>>) -> impl Fn(Option<&str>, &str) -> Option<String> + '_ {
    move |system, value| {
        let id = map?.get(&identifier_key(system, value))?;
        (!id.is_empty()).then(|| id.clone())
    }
}

fn unusable(why: impl Into<String>) -> GatewayError {
    GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer").with_detail(why.into())
}
