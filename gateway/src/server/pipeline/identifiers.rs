//! The identifiers of the patients a caller may see, so that a Reference
//! given only by an identifier can be resolved to one of them
//! (`chain::names`). fhirwall learns no one else's: an identifier that is
//! not a visible patient's own withholds the record that carries it.
//!
//! Read from the upstream's Patient resources of the organization's
//! visible patients (`read_by_ids`, 100 at a time), kept per organization for
//! `gateway::MEMBER_IDS_TTL`; visibility itself is checked on every use, so an
//! opt-out takes effect at once. A patient attributed after the map was
//! read is unknown until it is read again: its identifier-only links are
//! withheld meanwhile (fail closed).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{FhirHandler, RequestCtx};
use crate::error::GatewayError;

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
        // One read per organization however many requests miss at once
        // (concurrent export searches, a burst after the entry expired):
        // the others wait for it.
        let read = async { self.read_member_ids(ctx).await.map(Arc::new) };
        let map = match self.gw.member_ids.try_get_with(organization, read).await {
            Ok(map) => map,
            // Still fail closed: with no identifier known, every
            // identifier-only patient link withholds its record. Not
            // kept, so the next request tries again.
            Err(e) => {
                tracing::warn!(request_id = %ctx.request_id, detail = ?e.detail, "visible patients' identifiers could not be read");
                Arc::new(MemberIds::new())
            }
        };
        let _ = ctx.member_ids.set(map);
        Ok(())
    }

    async fn read_member_ids(&self, ctx: &RequestCtx) -> Result<MemberIds, GatewayError> {
        let Some(decision) = &ctx.access else { return Ok(MemberIds::new()) };
        let Ok(patients) = decision.scope.visible_patients(MAX_PATIENTS) else { return Ok(MemberIds::new()) };
        let mut map = MemberIds::new();
        for chunk in patients.chunks(100) {
            for (id, text) in self.read_by_ids(ctx, "Patient", chunk).await? {
                let patient: Value = serde_json::from_str(&text).map_err(|e| {
                    GatewayError::bad_gateway("the upstream FHIR server sent an unusable answer")
                        .with_detail(format!("Patient/{id}: {e}"))
                })?;
                for identifier in patient["identifier"].as_array().into_iter().flatten() {
                    let Some(value) = identifier["value"].as_str() else { continue };
                    let key = identifier_key(identifier["system"].as_str(), value);
                    match map.get(&key) {
                        Some(other) if *other != id => {
                            map.insert(key, String::new());
                        }
                        Some(_) => {}
                        None => {
                            map.insert(key, id.clone());
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
