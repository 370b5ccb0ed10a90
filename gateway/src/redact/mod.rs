//! Redaction and data scope (DESIGN.md "Data-scope and redaction rules"):
//! what of a resource the Provider Access API may disclose, decided on every
//! resource that leaves fhirwall — a read body, every Bundle entry
//! (`_include` results too), contained resources — after the access filter.
//!
//! Rules, in the order they apply (the first that withholds a resource is
//! the reason counted):
//! 1. **42 CFR Part 2.** A resource is Part 2 when its `meta.security`
//!    carries a Part 2 label (`policies/part2/labels.toml`), when it names a
//!    Part 2 program anywhere — provider, performer, facility, care team,
//!    organization — by reference or NPI (`part2/programs.toml` plus
//!    `policy.part2_programs`), or when one of its codings is in a Part 2
//!    code set (`part2/codesets.toml`). `policy.part2 = "exclude"` withholds
//!    it. `"redact"` removes the Part 2 entries where that is safe
//!    (`part2/redaction.toml`: e.g. EOB diagnosis, procedure, item and care
//!    team entries, and the sequence references pointing at them), drops the
//!    narrative and adds the `REDACTED` security label; a resource-level
//!    label, a hit in a required element, in `contained`, or in a type
//!    without redaction rules withholds it.
//! 2. **Drug prior authorizations** (`prior-auth.toml`): withheld. Other
//!    prior authorizations leave with their decision and denial reason.
//! 3. **Service-date floor** (`service-dates.toml`): a resource whose
//!    service date is before `policy.service_date_floor` is withheld.
//! 4. **Financial stripping** (`financial.toml`): claims data leaves as the
//!    CARIN BB Non-Financial basis (no payment, totals, benefit balances,
//!    payee, prices or adjudication amounts).
//!
//! Inside a Bundle, a resource that points at one withheld for Part 2 or as
//! a drug PA is withheld too, and so is a Provenance whose target was
//! withheld for any reason: nothing left in the answer names what is gone.
//! A withheld resource simply is not there (a read answers 404); nothing
//! says what kind of record was withheld or for whom — the counts go only to
//! the audit record ([`Disclosure`]).
//!
//! Hot path: every resource is read once by a streaming scanner that
//! borrows from the body ([`scan`]); an untouched resource is re-emitted as
//! its original bytes; only the top-level members a rewrite changes are
//! parsed into a `serde_json::Value`.

pub mod codes;
pub mod dates;
pub mod money;
pub mod policy;
pub mod resolve;
pub mod rewrite;
pub mod scan;
pub mod stage;
pub mod subset;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::config::{FinancialMode, Part2Mode, PolicyConfig};
use crate::fhir::bundle::RawObject;
pub use policy::{Policies, PolicyError};
use rewrite::{Plan, Rewrite};
use scan::{HitKind, Rules, Scan, Trie};
pub use subset::Subset;

/// Deepest Bundle-in-Bundle nesting looked into; deeper is withheld.
const MAX_NESTING: usize = 3;

pub use crate::chain::disclosure::{Disclosure, Reason, Verdict};
pub use crate::fhir::normalize_reference;

/// The redaction chain, built once at startup.
pub struct Redactor {
    policies: Arc<Policies>,
    /// `part2/programs.toml` plus `policy.part2_programs`, and what the
    /// upstream says each of them is also known as ([`resolve`]).
    programs: std::sync::RwLock<Arc<policy::Programs>>,
    /// The configured programs have been looked up on the upstream (or
    /// there are none): until then answers fail closed.
    programs_resolved: std::sync::atomic::AtomicBool,
    trie: Trie,
    /// Date watch id -> (type, tier).
    watches: Vec<(String, usize)>,
    mode: Part2Mode,
    floor: String,
    financial: bool,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("mode", &self.mode)
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

/// The result for one resource, with what a Bundle pass needs.
struct Outcome<'a> {
    verdict: Verdict,
    scan: Option<Scan<'a>>,
    /// Counted as redacted / stripped (undone if a Bundle pass withholds it).
    redacted: bool,
    stripped: bool,
}

impl<'a> Outcome<'a> {
    fn keep(scan: Scan<'a>) -> Outcome<'a> {
        Outcome { verdict: Verdict::Keep, scan: Some(scan), redacted: false, stripped: false }
    }

    /// Withheld: nothing fhirwall cannot read leaves.
    fn unreadable(report: &mut Disclosure) -> Outcome<'a> {
        report.withhold(Reason::Unreadable);
        Outcome { verdict: Verdict::Drop(Reason::Unreadable), scan: None, redacted: false, stripped: false }
    }
}

impl Redactor {
    /// Load the policies (`policy.dir` over the built-in files) and build
    /// the chain. Invalid policy data is an error: fhirwall does not start.
    pub fn new(config: &PolicyConfig) -> Result<Redactor, PolicyError> {
        let policies = Arc::new(Policies::load(config.dir.as_deref())?);
        Redactor::with_policies(config, policies)
    }

    /// The chain over already-loaded policies.
    pub fn with_policies(config: &PolicyConfig, policies: Arc<Policies>) -> Result<Redactor, PolicyError> {
        let mut programs = policies.programs.clone();
        for entry in &config.part2_programs {
            programs.add(entry).map_err(PolicyError::Programs)?;
        }
        if !crate::config::is_iso_date(&config.service_date_floor) {
            return Err(PolicyError::Invalid {
                file: "config".into(),
                message: "policy.service_date_floor must be YYYY-MM-DD".into(),
            });
        }
        let mut trie = Trie::new();
        let mut watches = Vec::new();
        let mut types: Vec<&String> = policies.dates.keys().collect();
        types.sort();
        for resource_type in types {
            for (tier, paths) in policies.dates[resource_type].iter().enumerate() {
                let watch = watches.len() as u32;
                watches.push((resource_type.clone(), tier));
                for path in paths {
                    trie.add_date(path, watch);
                }
            }
        }
        for (index, marker) in policies.prior_auth.markers.iter().enumerate() {
            trie.add_marker(&marker.element, index as u32);
        }
        Ok(Redactor {
            programs_resolved: std::sync::atomic::AtomicBool::new(programs.is_empty()),
            programs: std::sync::RwLock::new(Arc::new(programs)),
            trie,
            watches,
            mode: config.part2,
            floor: config.service_date_floor.clone(),
            financial: config.financial == FinancialMode::Strip,
            policies,
        })
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Is `financial = "strip"` on (the [`stage::Money`] stage runs)?
    pub fn strips_money(&self) -> bool {
        self.financial
    }

    /// The financial scope beyond `financial.toml` ([`money`]): the
    /// resource without any Money value or claims free text, or `None` when
    /// nothing changes (or `financial` is not `strip`). `Err`: unreadable.
    pub fn strip_money(
        &self,
        resource: &str,
        report: &mut Disclosure,
    ) -> Result<Option<String>, &'static str> {
        if !self.financial {
            return Ok(None);
        }
        let Some(resource_type) = crate::fhir::bundle::resource_type(resource) else { return Ok(None) };
        let out = money::strip(&resource_type, resource)?;
        if out.is_some() {
            report.redact(Reason::Financial);
        }
        Ok(out)
    }

    /// [`Redactor::strip_money`] on a resource already read as its members.
    pub fn strip_money_object(
        &self,
        resource_type: &str,
        resource: &str,
        object: &RawObject<'_>,
        report: &mut Disclosure,
    ) -> Result<Option<String>, &'static str> {
        if !self.financial || !money::applies_to(resource_type) {
            return Ok(None);
        }
        let out = money::strip_object(resource_type, resource, object)?;
        if out.is_some() {
            report.redact(Reason::Financial);
        }
        Ok(out)
    }

    /// `part2 = "redact"`: `resource` without its references to the withheld
    /// Part 2 records `targets` (see [`rewrite::remove_references`]); `None`
    /// when it must be withheld instead (also in `exclude` mode).
    pub fn redact_references(&self, resource: &str, targets: &HashSet<String>) -> Option<String> {
        if self.mode != Part2Mode::Redact {
            return None;
        }
        rewrite::remove_references(resource, targets, &self.policies.labels.redacted)
    }

    /// Is any Part 2 program named (policy data or config)?
    pub fn has_programs(&self) -> bool {
        !self.programs().is_empty()
    }

    pub fn mode(&self) -> Part2Mode {
        self.mode
    }

    /// The Part 2 programs in force.
    pub fn programs(&self) -> Arc<policy::Programs> {
        self.programs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Add what the upstream says the programs are also known as, and mark
    /// the programs resolved.
    pub fn add_resolved_programs(&self, found: &policy::Programs) {
        let mut guard = self.programs.write().unwrap_or_else(|e| e.into_inner());
        let mut merged = (**guard).clone();
        merged.organizations.extend(found.organizations.iter().cloned());
        merged.npis.extend(found.npis.iter().cloned());
        *guard = Arc::new(merged);
        self.programs_resolved.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Have the configured programs been looked up on the upstream?
    pub fn programs_resolved(&self) -> bool {
        self.programs_resolved.load(std::sync::atomic::Ordering::Acquire)
    }

    fn rules<'a>(&'a self, programs: &'a policy::Programs) -> Rules<'a> {
        Rules {
            codes: &self.policies.codes,
            labels: &self.policies.labels,
            programs,
            markers: &self.policies.prior_auth.markers,
            trie: &self.trie,
        }
    }

    /// The service-date floor (`policy.service_date_floor`).
    pub fn service_date_floor(&self) -> &str {
        &self.floor
    }

    /// Why a resource counts as Part 2, for explain: the kind of evidence
    /// and the element it is in (`a Part 2 code in code`), never a value.
    /// `None`: nothing in the resource itself (it may point at one).
    pub fn part2_basis(&self, text: &str) -> Option<String> {
        let programs = self.programs();
        let scan = scan::scan(text, &self.rules(&programs)).ok()?;
        if scan.label {
            return Some("a Part 2 security label on the resource (meta.security)".to_owned());
        }
        if scan.resource_type.as_deref() == Some("Organization")
            && scan.id.as_deref().is_some_and(|id| programs.organizations.contains(id))
        {
            return Some("the organization is a Part 2 program (policy.part2_programs)".to_owned());
        }
        let mut found = std::collections::BTreeSet::new();
        for hit in &scan.hits {
            let kind = match hit.kind {
                HitKind::Code => "a Part 2 code",
                HitKind::Program => "a Part 2 program",
                HitKind::Label => "a Part 2 label",
            };
            let at = match hit.index {
                Some(i) => format!("{}[{i}]", hit.member),
                None => hit.member.to_string(),
            };
            found.insert(format!("{kind} in {at}"));
        }
        let mut line = found.into_iter().collect::<Vec<_>>().join(", ");
        if self.mode == Part2Mode::Redact && !line.is_empty() {
            line.push_str(", in an element redaction may not remove");
        }
        (!line.is_empty()).then_some(line)
    }

    /// Decide on one resource (a read body, a bulk export line, an
    /// operation's output) and count the decision in `report`.
    pub fn apply(&self, resource: &str, report: &mut Disclosure) -> Verdict {
        self.outcome(resource, report, 0).verdict
    }

    fn outcome<'a>(&self, text: &'a str, report: &mut Disclosure, depth: usize) -> Outcome<'a> {
        let programs = self.programs();
        match scan::scan(text, &self.rules(&programs)) {
            Ok(scan) => self.decide(scan, text, None, report, depth),
            Err(_) => Outcome::unreadable(report),
        }
    }

    /// The decision on a scanned resource: `text` is its JSON, `node` the
    /// same on the strict reader's tape when it is there (a rewrite then
    /// reads its members from the tape).
    fn decide<'a>(
        &self,
        scan: Scan<'a>,
        text: &'a str,
        node: Option<crate::chain::tape::Node<'_, 'a>>,
        report: &mut Disclosure,
        depth: usize,
    ) -> Outcome<'a> {
        let dropped = |reason: Reason, report: &mut Disclosure, scan: Option<Scan<'a>>| {
            report.withhold(reason);
            Outcome { verdict: Verdict::Drop(reason), scan, redacted: false, stripped: false }
        };
        if scan.duplicated {
            return dropped(Reason::Unreadable, report, Some(scan));
        }
        let Some(resource_type) = scan.resource_type.as_deref() else {
            return dropped(Reason::Unreadable, report, Some(scan));
        };
        if resource_type == "Bundle" {
            let verdict = self.nested_bundle(text, report, depth);
            return Outcome { verdict, scan: Some(scan), redacted: false, stripped: false };
        }

        // 1. Part 2.
        let plan = match self.part2(resource_type, &scan) {
            Ok(plan) => plan,
            Err(()) => return dropped(Reason::Part2, report, Some(scan)),
        };

        // 2. Drug prior authorizations.
        let prior_auth = &self.policies.prior_auth;
        if scan.drug_marker
            && scan.use_.as_deref() == Some("preauthorization")
            && prior_auth.types.contains(resource_type)
        {
            return dropped(Reason::DrugPriorAuth, report, Some(scan));
        }

        // 3. Service-date floor.
        if let Some(tiers) = self.policies.dates.get(resource_type) {
            match dates::service_date(&scan.dates, resource_type, &self.watches, tiers.len()) {
                dates::ServiceDate::None => {}
                dates::ServiceDate::Date(date) if date.as_str() >= self.floor.as_str() => {}
                _ => return dropped(Reason::DateFloor, report, Some(scan)),
            }
        }

        // 4. Rewrites: Part 2 redaction, financial stripping.
        let financial = self.financial_rule(resource_type, &scan);
        if plan.is_none() && financial.is_none() {
            return Outcome::keep(scan);
        }
        let rule = self.policies.redaction.get(resource_type);
        let rw = Rewrite {
            part2: plan.as_ref().zip(rule),
            financial: financial.map(|ft| (ft, &self.policies.financial)),
            redacted_label: &self.policies.labels.redacted,
        };
        match rewrite::rewrite(text, node, &rw) {
            Ok(out) if out.redacted || out.stripped => {
                if out.redacted {
                    report.redact(Reason::Part2);
                }
                if out.stripped {
                    report.redact(Reason::Financial);
                }
                let why = if out.redacted { Reason::Part2 } else { Reason::Financial };
                Outcome {
                    verdict: Verdict::Redact { text: out.text, why },
                    scan: Some(scan),
                    redacted: out.redacted,
                    stripped: out.stripped,
                }
            }
            Ok(_) => Outcome::keep(scan),
            // A Part 2 resource that cannot be redacted safely is withheld;
            // anything else that cannot be rewritten is unreadable.
            Err(_) if plan.is_some() => dropped(Reason::Part2, report, Some(scan)),
            Err(_) => dropped(Reason::Unreadable, report, Some(scan)),
        }
    }

    /// Part 2 by label, program or code: `Ok(None)` not Part 2, `Ok(Some)`
    /// what `redact` mode removes, `Err` withheld (`exclude` mode, a
    /// resource-level label, the program itself, or a hit nothing may remove).
    fn part2(&self, resource_type: &str, scan: &Scan<'_>) -> Result<Option<Plan>, ()> {
        let program_itself = resource_type == "Organization"
            && scan.id.as_deref().is_some_and(|id| self.programs().organizations.contains(id));
        if !(scan.label || program_itself || !scan.hits.is_empty()) {
            return Ok(None);
        }
        match (self.mode, scan.label || program_itself) {
            (Part2Mode::Redact, false) => self.plan(resource_type, scan).map(Some).ok_or(()),
            _ => Err(()),
        }
    }

    /// The `financial.toml` rule to apply, when `financial = "strip"` and
    /// the resource holds something it removes.
    fn financial_rule(&self, resource_type: &str, scan: &Scan<'_>) -> Option<&policy::FinancialType> {
        static NO_TOP_LEVEL: policy::FinancialType =
            policy::FinancialType { remove: Vec::new(), walk: Vec::new() };
        if !self.financial {
            None
        } else if let Some(ft) = self.policies.financial.types.get(resource_type) {
            let present = scan.money || ft.remove.iter().any(|m| scan.members.iter().any(|k| k == m));
            present.then_some(ft)
        } else {
            // Contained claims data in any resource.
            (scan.money && scan.members.iter().any(|k| k == "contained")).then_some(&NO_TOP_LEVEL)
        }
    }

    /// The redaction plan for a Part 2 resource in `redact` mode; `None`
    /// when a hit is where nothing may be removed.
    fn plan(&self, resource_type: &str, scan: &Scan<'_>) -> Option<Plan> {
        let rule = self.policies.redaction.get(resource_type)?;
        let mut plan = Plan::default();
        for hit in &scan.hits {
            if !rule.removable.contains(hit.member.as_ref()) {
                return None;
            }
            // A label on an element is honoured like a code; a label on a
            // contained resource never reaches here (`contained` is never removable).
            debug_assert!(matches!(hit.kind, HitKind::Code | HitKind::Program | HitKind::Label));
            match hit.index {
                Some(index) => {
                    plan.entries.entry(hit.member.to_string()).or_default().insert(index);
                }
                None => {
                    plan.members.insert(hit.member.to_string());
                }
            }
        }
        Some(plan)
    }

    /// A Bundle inside a Bundle (or read directly): kept only when nothing
    /// in it has to change (its entries are judged as a page's are).
    fn nested_bundle(&self, text: &str, report: &mut Disclosure, depth: usize) -> Verdict {
        if depth >= MAX_NESTING {
            report.withhold(Reason::Unreadable);
            return Verdict::Drop(Reason::Unreadable);
        }
        let entries: Option<Vec<&RawValue>> =
            RawObject::parse(text).ok().and_then(|object| match object.get("entry") {
                None => Some(Vec::new()),
                Some(entries) => serde_json::from_str(entries.get()).ok(),
            });
        let Some(entries) = entries else {
            report.withhold(Reason::Unreadable);
            return Verdict::Drop(Reason::Unreadable);
        };
        let inputs: Vec<EntryInput<'_>> = entries.iter().map(|raw| EntryInput::read(raw.get())).collect();
        // The inner decisions are not counted: the Bundle is one resource.
        let verdicts = self.judge_entries(&inputs, &mut Disclosure::default(), depth + 1);
        let reason = verdicts.iter().find_map(|verdict| match verdict {
            Verdict::Keep => None,
            Verdict::Drop(reason) => Some(*reason),
            // A Bundle whose members would have to change is not rewritten.
            Verdict::Redact { why, .. } => Some(*why),
        });
        match reason {
            None => Verdict::Keep,
            Some(reason) => {
                report.withhold(reason);
                Verdict::Drop(reason)
            }
        }
    }

    /// The verdict on each entry of one Bundle: each resource's own, then
    /// the follow-up across entries. Until nothing changes (chains of
    /// references):
    /// - nothing kept may point at a Part 2 / drug-PA resource that was
    ///   withheld, and a Provenance goes with its target whatever the reason;
    /// - an `_include`d resource is there for a match that names it (or, for
    ///   `_revinclude`, that it names): when those were all withheld, it goes
    ///   too (a Part 2 program's practitioner must not stay behind).
    pub fn judge_entries(
        &self,
        inputs: &[EntryInput<'_>],
        report: &mut Disclosure,
        depth: usize,
    ) -> Vec<Verdict> {
        let programs = self.programs();
        let rules = self.rules(&programs);
        let mut outcomes: Vec<Outcome<'_>> = inputs
            .iter()
            .map(|input| {
                let scan = input.resource.map(|text| match input.node {
                    Some(node) => (text, scan::scan_node(node, &rules)),
                    None => (text, scan::scan(text, &rules)),
                });
                match scan {
                    Some((text, Ok(scan))) if !scan.duplicated => {
                        self.decide(scan, text, input.node, report, depth)
                    }
                    // No resource (a history delete) or an unreadable entry:
                    // nothing fhirwall cannot check leaves.
                    _ => Outcome::unreadable(report),
                }
            })
            .collect();
        // What is withheld, by `Type/id` and by fullUrl, and why.
        let mut gone: HashMap<String, Reason> = HashMap::new();
        for (input, outcome) in inputs.iter().zip(&outcomes) {
            if let Verdict::Drop(reason) = outcome.verdict {
                remember(&mut gone, input.full_url.as_deref(), outcome.scan.as_ref(), reason);
            }
        }
        if !gone.is_empty() {
            self.follow_up(inputs, &mut outcomes, gone, report);
        }
        outcomes.into_iter().map(|o| o.verdict).collect()
    }

    fn follow_up(
        &self,
        inputs: &[EntryInput<'_>],
        outcomes: &mut [Outcome<'_>],
        mut gone: HashMap<String, Reason>,
        report: &mut Disclosure,
    ) {
        // Which entry names which: only included entries need it (an include
        // whose includer was dropped goes too).
        let includes = inputs.iter().any(|input| input.mode.as_deref() == Some("include"));
        let linked = if includes { inputs.len() } else { 0 };
        let (keys, refs) = entry_links(&inputs[..linked], &outcomes[..linked]);
        let names = |from: usize, to: usize| from != to && keys[to].iter().any(|k| refs[from].contains(k));
        let dropped_reason = |outcome: &Outcome<'_>| match outcome.verdict {
            Verdict::Keep | Verdict::Redact { .. } => None,
            Verdict::Drop(reason) => Some(reason),
        };
        loop {
            let mut more = Vec::new();
            for (index, (input, outcome)) in inputs.iter().zip(outcomes.iter()).enumerate() {
                if dropped_reason(outcome).is_some() {
                    continue;
                }
                let Some(scan) = outcome.scan.as_ref() else { continue };
                let provenance = scan.resource_type.as_deref() == Some("Provenance");
                let hit = scan.refs.iter().find_map(|r| {
                    let reason = gone.get(r.as_ref()).or_else(|| gone.get(normalize_reference(r)?))?;
                    (provenance || matches!(reason, Reason::Part2 | Reason::DrugPriorAuth)).then_some(*reason)
                });
                if let Some(reason) = hit {
                    more.push((index, reason));
                    continue;
                }
                if input.mode.as_deref() == Some("include") {
                    let still_wanted =
                        inputs.iter().zip(outcomes.iter()).enumerate().any(|(other, (i, o))| {
                            dropped_reason(o).is_none()
                                && (names(other, index) || (i.is_match() && names(index, other)))
                        });
                    if !still_wanted {
                        let cause = outcomes.iter().enumerate().find_map(|(other, o)| {
                            let reason = dropped_reason(o)?;
                            (names(other, index) || names(index, other)).then_some(reason)
                        });
                        if let Some(reason) = cause {
                            more.push((index, reason));
                        }
                    }
                }
            }
            if more.is_empty() {
                return;
            }
            for (index, reason) in more {
                let outcome = &mut outcomes[index];
                // It no longer leaves redacted or stripped.
                if outcome.redacted {
                    report.unredact(Reason::Part2);
                }
                if outcome.stripped {
                    report.unredact(Reason::Financial);
                }
                outcome.verdict = Verdict::Drop(reason);
                report.withhold(reason);
                remember(&mut gone, inputs[index].full_url.as_deref(), outcome.scan.as_ref(), reason);
            }
        }
    }
}

/// For each entry, the keys it is known by (`fullUrl`, `Type/id`) and the
/// references it holds, in both spellings (as written and normalised).
fn entry_links(
    inputs: &[EntryInput<'_>],
    outcomes: &[Outcome<'_>],
) -> (Vec<HashSet<String>>, Vec<HashSet<String>>) {
    let keys: Vec<HashSet<String>> = inputs
        .iter()
        .zip(outcomes.iter())
        .map(|(input, outcome)| {
            let mut keys = HashSet::new();
            if let Some(url) = input.full_url.as_deref() {
                keys.insert(url.to_owned());
                keys.extend(normalize_reference(url).map(str::to_owned));
            }
            if let Some(scan) = outcome.scan.as_ref()
                && let (Some(t), Some(id)) = (scan.resource_type.as_deref(), scan.id.as_deref())
            {
                keys.insert(format!("{t}/{id}"));
            }
            keys
        })
        .collect();
    let refs: Vec<HashSet<String>> = outcomes
        .iter()
        .map(|outcome| {
            let mut refs = HashSet::new();
            for r in outcome.scan.as_ref().map(|s| &s.refs).into_iter().flatten() {
                refs.insert(r.to_string());
                refs.extend(normalize_reference(r).map(str::to_owned));
            }
            refs
        })
        .collect();
    (keys, refs)
}

fn remember(
    gone: &mut HashMap<String, Reason>,
    full_url: Option<&str>,
    scan: Option<&Scan<'_>>,
    reason: Reason,
) {
    if let Some(full_url) = full_url {
        gone.entry(full_url.to_owned()).or_insert(reason);
        if let Some(key) = normalize_reference(full_url) {
            gone.entry(key.to_owned()).or_insert(reason);
        }
    }
    if let Some(scan) = scan
        && let (Some(t), Some(id)) = (scan.resource_type.as_deref(), scan.id.as_deref())
    {
        gone.entry(format!("{t}/{id}")).or_insert(reason);
    }
}

/// One Bundle entry as a Bundle pass sees it.
#[derive(Debug, Default)]
pub struct EntryInput<'a> {
    pub full_url: Option<std::borrow::Cow<'a, str>>,
    pub mode: Option<std::borrow::Cow<'a, str>>,
    /// The resource's JSON; `None`: none, or an unreadable entry.
    pub resource: Option<&'a str>,
    /// The same resource on the strict reader's tape, when it is there (it
    /// is then scanned without being read again).
    pub node: Option<crate::chain::tape::Node<'a, 'a>>,
}

impl<'a> EntryInput<'a> {
    /// Read an entry's raw JSON (`resource: None` when it is unreadable).
    fn read(entry: &'a str) -> EntryInput<'a> {
        let Ok(object) = RawObject::parse(entry) else { return EntryInput::default() };
        // Parsers disagree on which of two equal members wins.
        let twice = |name: &str| object.members.iter().filter(|(k, _)| k == name).count() > 1;
        if ["resource", "fullUrl", "search"].into_iter().any(twice) {
            return EntryInput::default();
        }
        #[derive(serde::Deserialize)]
        struct Search<'a> {
            #[serde(borrow, default)]
            mode: Option<std::borrow::Cow<'a, str>>,
        }
        // A member of the wrong shape makes the entry unreadable.
        let full_url = match object.get("fullUrl").map(|v| serde_json::from_str(v.get())) {
            None => None,
            Some(Ok(url)) => Some(url),
            Some(Err(_)) => return EntryInput::default(),
        };
        let mode = match object.get("search").map(|v| serde_json::from_str::<Search<'a>>(v.get())) {
            None => None,
            Some(Ok(search)) => search.mode,
            Some(Err(_)) => return EntryInput::default(),
        };
        EntryInput { full_url, mode, resource: object.get("resource").map(|v| v.get()), node: None }
    }

    pub fn is_match(&self) -> bool {
        matches!(self.mode.as_deref(), None | Some("match"))
    }
}

#[cfg(test)]
mod tests;
