//! Access control: which patients a provider organization may see, and
//! making sure nothing else leaves (DESIGN "Request pipeline" steps 4 and 6,
//! "Opt-out").
//!
//! - `attribution`: the caller's attribution — active members of the PDex
//!   attribution Groups it manages, read from the upstream (cached with moka,
//!   refreshed every `attribution.refresh_s` and on demand) plus rosters
//!   ingested through the admin API (kept in the store).
//! - `state`: opt-outs and rosters in the store, with change counters every
//!   node polls, so an opt-out holds on the next request (and on every node
//!   within a second).
//! - `policy`: the patient-compartment table from `policies/` (which element
//!   links a resource to a patient, which links are payer-unsafe).
//! - `refs`: exact reference comparison after normalisation.
//! - `decide`: the request decision (404 / 403 / narrowing / 400).
//! - `filter`: the response filter over every resource that leaves, and
//!   `stage`, the chain stage that runs it.
//! - `admin`: `PUT|DELETE|GET /admin/opt-outs`, `POST|GET|DELETE
//!   /admin/attribution`, `POST /admin/attribution/refresh`.
//!
//! The visible set of an organization is (upstream members ∪ roster members)
//! − opt-outs; every check against it is a few hash-set lookups. Whatever
//! cannot be loaded or checked fails closed: the request is refused, never
//! answered unfiltered.

pub mod admin;
pub mod attribution;
pub mod decide;
pub mod filter;
pub mod policy;
pub mod refs;
pub mod stage;
pub mod state;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::Principal;
pub use crate::chain::disclosure::Disclosure;
use crate::config::{AttributionSource, Config};
use crate::error::{GatewayError, Kind};
use crate::fhir::{FhirRequest, Interaction};
use crate::proxy::Upstream;
use crate::store::{Store, StoreError};
use attribution::{OrgMembers, OrgRosters, StoredRoster};
pub use decide::{Local, Mode, NOT_FOUND};
pub use filter::{Reason, Verdict};
use policy::Policy;
use refs::RefResolver;
use state::Snapshot;

/// Most organizations whose upstream attribution is cached at once.
const MAX_CACHED_ORGANIZATIONS: u64 = 10_000;

/// The access layer, built once per gateway.
pub struct Access {
    policy: Arc<Policy>,
    refs: Arc<RefResolver>,
    store: Store,
    upstream: Upstream,
    source: AttributionSource,
    refresh: Duration,
    max_narrowed: usize,
    /// Upstream attribution per organization (`Organization/{id}`).
    upstream_sets: moka::future::Cache<String, Arc<OrgMembers>>,
    snapshot: RwLock<Arc<Snapshot>>,
    reload: tokio::sync::Mutex<()>,
}

/// What one caller may see, fixed for the duration of a request.
#[derive(Debug, Clone)]
pub struct Scope {
    organization: String,
    upstream: Option<Arc<OrgMembers>>,
    rosters: Option<Arc<OrgRosters>>,
    opt_outs: Arc<HashSet<String>>,
    refs: Arc<RefResolver>,
}

impl Scope {
    /// A scope from its parts (tests, tools).
    pub fn new(
        organization: &str,
        upstream: Option<Arc<OrgMembers>>,
        rosters: Option<Arc<OrgRosters>>,
        opt_outs: Arc<HashSet<String>>,
        refs: RefResolver,
    ) -> Scope {
        Scope { organization: organization.to_owned(), upstream, rosters, opt_outs, refs: Arc::new(refs) }
    }

    /// `Organization/{id}` of the caller.
    pub fn organization(&self) -> &str {
        &self.organization
    }

    pub fn refs(&self) -> &RefResolver {
        &self.refs
    }

    pub fn is_opted_out(&self, patient: &str) -> bool {
        self.opt_outs.contains(patient)
    }

    /// Attributed (upstream or roster), opt-outs not considered.
    pub fn is_attributed(&self, patient: &str) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.members.contains(patient))
            || self.rosters.as_ref().is_some_and(|r| r.members.contains(patient))
    }

    /// May the caller see this patient (bare id)? O(1).
    pub fn is_visible(&self, patient: &str) -> bool {
        !self.is_opted_out(patient) && self.is_attributed(patient)
    }

    /// Is `group_id` one of the caller's attribution Groups (upstream or roster)?
    pub fn owns_group(&self, group_id: &str) -> bool {
        self.owns_upstream_group(group_id) || self.roster(group_id).is_some()
    }

    pub fn owns_upstream_group(&self, group_id: &str) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.groups.contains_key(group_id))
    }

    /// A stored roster Group of the caller's organization.
    pub fn roster(&self, group_id: &str) -> Option<&StoredRoster> {
        self.rosters.as_ref()?.groups.get(group_id)
    }

    /// The caller's stored roster Group ids, sorted.
    pub fn roster_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = self.rosters.iter().flat_map(|r| r.groups.keys().cloned()).collect();
        out.sort();
        out
    }

    /// The caller's Group ids, sorted.
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = self.upstream.iter().flat_map(|u| u.groups.keys().cloned()).collect();
        out.extend(self.rosters.iter().flat_map(|r| r.groups.keys().cloned()));
        out.sort();
        out.dedup();
        out
    }

    /// The caller's Groups (upstream attribution, stored rosters and
    /// MatchedMembers Groups) in which `patient` is an active member:
    /// why it is attributed (opt-outs not considered).
    pub fn groups_of(&self, patient: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(u) = &self.upstream {
            out.extend(
                u.groups
                    .iter()
                    .filter(|(_, active)| active.iter().any(|p| p == patient))
                    .map(|(id, _)| id.clone()),
            );
        }
        if let Some(r) = &self.rosters {
            out.extend(
                r.groups
                    .iter()
                    .filter(|(_, g)| g.group.active.iter().any(|p| p == patient))
                    .map(|(id, _)| id.clone()),
            );
        }
        out.sort();
        out.dedup();
        out
    }

    /// The visible patients, sorted; `Err(limit)` as soon as there are more
    /// than `limit`.
    pub fn visible_patients(&self, limit: usize) -> Result<Vec<String>, usize> {
        let mut out: Vec<String> = Vec::new();
        let sources = self.upstream.iter().map(|u| &u.members).chain(self.rosters.iter().map(|r| &r.members));
        let mut seen: HashSet<&str> = HashSet::new();
        for set in sources {
            for patient in set {
                if !self.opt_outs.contains(patient) && seen.insert(patient) {
                    if out.len() == limit {
                        return Err(limit);
                    }
                    out.push(patient.clone());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The visible active members of one of the caller's Groups (exports),
    /// sorted; `None` when the Group is not the caller's.
    pub fn group_members(&self, group_id: &str) -> Option<Vec<String>> {
        let mut members: Vec<String> = Vec::new();
        let mut owned = false;
        if let Some(active) = self.upstream.as_ref().and_then(|u| u.groups.get(group_id)) {
            owned = true;
            members.extend(active.iter().filter(|p| self.is_visible(p)).cloned());
        }
        if let Some(roster) = self.roster(group_id) {
            owned = true;
            members.extend(roster.group.active.iter().filter(|p| self.is_visible(p)).cloned());
        }
        members.sort();
        members.dedup();
        owned.then_some(members)
    }
}

/// The access decision for one request, carried to the response filter.
#[derive(Debug, Clone)]
pub struct Decision {
    pub scope: Arc<Scope>,
    pub mode: Mode,
    pub local: Option<Local>,
    pub narrowed_to: Option<u32>,
    /// Group searches: matching stored roster Groups to list (see decide).
    pub rosters: Vec<(String, Arc<str>)>,
}

impl Decision {
    /// A fresh report for this request's answer (carries the narrowing).
    pub fn report(&self) -> Disclosure {
        Disclosure { narrowed_to: self.narrowed_to, ..Disclosure::default() }
    }
}

impl Access {
    /// Build the access layer. Nothing is loaded yet: attribution is read on
    /// the first request of each organization.
    pub fn new(
        config: &Config,
        store: Store,
        upstream: Upstream,
        public_base: &str,
    ) -> anyhow::Result<Arc<Access>> {
        let policy = Policy::load(config.policy.dir.as_deref())?;
        let mut bases = vec![upstream.base().to_owned(), public_base.to_owned()];
        bases.extend(config.upstream.base_aliases.iter().cloned());
        let refresh = Duration::from_secs(config.attribution.refresh_s.max(1));
        let upstream_sets = moka::future::Cache::builder()
            .max_capacity(MAX_CACHED_ORGANIZATIONS)
            // The refresher re-loads every `refresh`; an entry it could not
            // refresh twice expires, and requests then fail closed.
            .time_to_live(refresh * 2)
            .build();
        Ok(Arc::new(Access {
            policy,
            refs: Arc::new(RefResolver::new(bases)),
            store,
            upstream,
            source: config.attribution.source,
            refresh,
            max_narrowed: config.policy.max_narrowed_patients,
            upstream_sets,
            snapshot: RwLock::new(Arc::new(Snapshot::empty())),
            reload: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn refs(&self) -> &RefResolver {
        &self.refs
    }

    /// Re-load the cached organizations' upstream attribution every
    /// `refresh_s` in the background (stops when the layer is dropped).
    pub fn spawn_refresher(self: &Arc<Self>) {
        if self.source != AttributionSource::Upstream {
            return;
        }
        let weak = Arc::downgrade(self);
        let period = self.refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(access) = weak.upgrade() else { break };
                access.refresh_cached().await;
            }
        });
    }

    async fn refresh_cached(&self) -> Vec<(String, Result<usize, GatewayError>)> {
        let organizations: Vec<String> = self.upstream_sets.iter().map(|(k, _)| (*k).clone()).collect();
        let mut out = Vec::new();
        for organization in organizations {
            match attribution::load_from_upstream(&self.upstream, &self.refs, &organization).await {
                Ok(members) => {
                    let count = members.members.len();
                    self.upstream_sets.insert(organization.clone(), Arc::new(members)).await;
                    out.push((organization, Ok(count)));
                }
                Err(e) => {
                    tracing::warn!(
                        organization = %organization,
                        detail = e.detail.as_deref().unwrap_or(""),
                        "attribution refresh failed; the cached set expires unless a later refresh works"
                    );
                    out.push((organization, Err(e)));
                }
            }
        }
        out
    }

    /// The current store-backed state, re-read when another node may have
    /// changed it (counters polled at most [`state::POLL_INTERVAL`] apart).
    async fn snapshot(&self) -> Result<Arc<Snapshot>, GatewayError> {
        let fresh = |s: &Snapshot| {
            s.checked_at.is_some_and(|at| at.elapsed() < state::POLL_INTERVAL)
                && s.rosters_at.elapsed() < self.refresh
        };
        let current = self.current_snapshot();
        if fresh(&current) {
            return Ok(current);
        }
        let _guard = self.reload.lock().await;
        let current = self.current_snapshot();
        if fresh(&current) {
            return Ok(current);
        }
        let versions = state::versions(&self.store).await.map_err(state_unavailable)?;
        let opt_outs = if versions.opt_outs != current.versions.opt_outs {
            Arc::new(state::opt_out_ids(&self.store).await.map_err(state_unavailable)?)
        } else {
            current.opt_outs.clone()
        };
        let (rosters, rosters_at) =
            if versions.rosters != current.versions.rosters || current.rosters_at.elapsed() >= self.refresh {
                let rows = state::roster_rows(&self.store).await.map_err(state_unavailable)?;
                (Arc::new(attribution::index_rosters(rows, &self.refs)), Instant::now())
            } else {
                (current.rosters.clone(), current.rosters_at)
            };
        if versions.attribution != current.versions.attribution && current.versions.attribution >= 0 {
            self.upstream_sets.invalidate_all();
        }
        let next =
            Arc::new(Snapshot { versions, opt_outs, rosters, checked_at: Some(Instant::now()), rosters_at });
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        Ok(next)
    }

    fn current_snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Make the next request re-read the store (after a local write).
    pub(crate) async fn invalidate_snapshot(&self) -> Result<(), GatewayError> {
        {
            let mut guard = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
            let current = guard.clone();
            *guard = Arc::new(Snapshot {
                versions: current.versions,
                opt_outs: current.opt_outs.clone(),
                rosters: current.rosters.clone(),
                checked_at: None,
                rosters_at: current.rosters_at,
            });
        }
        self.snapshot().await.map(|_| ())
    }

    /// What `organization` (`Organization/{id}`) may see now.
    pub async fn scope(&self, organization: &str) -> Result<Arc<Scope>, GatewayError> {
        let snapshot = self.snapshot().await?;
        let upstream = match self.source {
            AttributionSource::Store => None,
            AttributionSource::Upstream => {
                let load = attribution::load_from_upstream(&self.upstream, &self.refs, organization);
                let members = self
                    .upstream_sets
                    .try_get_with(organization.to_owned(), async move { load.await.map(Arc::new) })
                    .await
                    .map_err(|e: Arc<GatewayError>| {
                        GatewayError::of(e.kind, e.message.clone())
                            .with_code(e.code)
                            .with_detail(e.detail.clone().unwrap_or_default())
                    })?;
                Some(members)
            }
        };
        Ok(Arc::new(Scope {
            organization: organization.to_owned(),
            upstream,
            rosters: snapshot.rosters.get(organization).cloned(),
            opt_outs: snapshot.opt_outs.clone(),
            refs: self.refs.clone(),
        }))
    }

    /// Is the member opted out, as of now (no cache staleness on this node)?
    pub async fn is_opted_out(&self, patient: &str) -> Result<bool, GatewayError> {
        Ok(self.snapshot().await?.opt_outs.contains(patient))
    }

    /// Step 4 of the pipeline: decide on a parsed, scope-authorized request,
    /// narrowing its parameters where needed. `None` for the public
    /// CapabilityStatement (nothing to check).
    pub async fn decide(
        &self,
        principal: Option<&Principal>,
        fhir: &mut FhirRequest,
    ) -> Result<Option<Decision>, GatewayError> {
        if fhir.interaction == Interaction::Capabilities {
            return Ok(None);
        }
        let Some(principal) = principal else {
            return Err(GatewayError::forbidden("an access token is required"));
        };
        let organization = organization_of(&principal.organization)?;
        let scope = self.scope(&organization).await?;
        let plan = decide::plan(&scope, &self.policy, &self.refs, fhir, self.max_narrowed)?;
        Ok(Some(Decision {
            scope,
            mode: plan.mode,
            local: plan.local,
            narrowed_to: plan.narrowed_to,
            rosters: plan.rosters,
        }))
    }

    /// Check one resource for a scope (bulk export lines, operations).
    pub fn check_resource(&self, scope: &Scope, text: &str) -> Verdict {
        filter::Checker::new(scope, &self.policy, &self.refs).resource(text)
    }

    /// Filter a non-Bundle answer. `Ok(None)`: send as is; `Ok(Some(text))`:
    /// send this instead; `Err`: the resource may not leave (404).
    pub fn filter_resource(
        &self,
        decision: &Decision,
        text: &str,
        report: &mut Disclosure,
    ) -> Result<Option<String>, GatewayError> {
        let checker = filter::Checker::new(&decision.scope, &self.policy, &self.refs);
        let resource_type = crate::fhir::bundle::resource_type(text);
        match checker.resource(text) {
            Verdict::Keep(patients) => {
                report.patients.extend(patients);
                report.resource_types.extend(resource_type);
                Ok(None)
            }
            Verdict::Rewrite { text, members_removed } => {
                report.redact_n(Reason::GroupMember, members_removed);
                report.resource_types.extend(resource_type);
                Ok(Some(text))
            }
            Verdict::Drop(reason) => {
                report.withhold(reason);
                Err(decide::not_found())
            }
        }
    }

    /// The stored roster Groups a Group search's first page lists besides
    /// the upstream's, each filtered like any Group that leaves (visible
    /// active members only; one the filter withholds is not listed).
    pub fn roster_groups(&self, decision: &Decision, report: &mut Disclosure) -> Vec<String> {
        if decision.mode != Mode::Search {
            return Vec::new();
        }
        decision
            .rosters
            .iter()
            .filter_map(|(_, body)| {
                let filtered = self.filter_resource(decision, body, report).ok()?;
                Some(filtered.unwrap_or_else(|| body.to_string()))
            })
            .collect()
    }

    /// The body of an answer fhirwall gives itself (see [`Local`]); `Err`
    /// when a roster Group may not leave.
    pub fn local_body(
        &self,
        decision: &Decision,
        self_url: &str,
        report: &mut Disclosure,
    ) -> Result<Option<Bytes>, GatewayError> {
        match &decision.local {
            None => Ok(None),
            Some(Local::EmptySearchset) => {
                let bundle = serde_json::json!({
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "total": 0,
                    "link": [{"relation": "self", "url": self_url}],
                });
                Ok(Some(Bytes::from(bundle.to_string())))
            }
            Some(Local::Resource(text)) => {
                let body = self.filter_resource(decision, text, report)?.unwrap_or_else(|| text.clone());
                Ok(Some(Bytes::from(body)))
            }
        }
    }
}

/// `Organization/{id}` of a principal; a token without one sees nothing
/// (pitfall 2: a missing claim never means "unrestricted").
fn organization_of(organization: &str) -> Result<String, GatewayError> {
    match organization.strip_prefix("Organization/") {
        Some(id) if crate::fhir::search::is_fhir_id(id) => Ok(organization.to_owned()),
        _ => Err(GatewayError::forbidden("the client is not bound to a provider organization")),
    }
}

fn state_unavailable(e: StoreError) -> GatewayError {
    GatewayError::of(Kind::Unavailable, "access control state is unavailable; the request was refused")
        .with_detail(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_without_an_organization_sees_nothing() {
        assert_eq!(organization_of("Organization/org-a").unwrap(), "Organization/org-a");
        for bad in ["", "Organization/", "org-a", "Practitioner/p1", "Organization/a/b", "Organization/a b"] {
            assert_eq!(organization_of(bad).unwrap_err().status, 403, "{bad:?}");
        }
    }
}
