//! The chain's one vocabulary: why a resource was withheld or changed
//! ([`Reason`]), what a stage decided on one resource ([`Verdict`]), and what
//! one answer disclosed ([`Disclosure`]) — the record the audit event is
//! written from and the trace `explain` reads.

use std::collections::{BTreeMap, BTreeSet};

/// Why a resource was withheld from (suppressed) or changed in (redacted)
/// an answer. Every stage names its decisions with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Reason {
    /// The patient is not attributed to the caller's organization (or the
    /// record names a patient the caller cannot see).
    Attribution,
    /// The member opted out of Provider Access.
    OptOut,
    /// 42 CFR Part 2 (by label, code, program, or a reference to a Part 2 record).
    Part2,
    /// Financial elements (CARIN BB Non-Financial; DESIGN.md "financial scope").
    Financial,
    /// Service date before `policy.service_date_floor`.
    DateFloor,
    /// A policy plugin's verdict.
    Plugin,
    /// No patient link fhirwall can check, or a type Provider Access does not serve.
    Unlinked,
    /// Group members hidden from the caller (not visible, opted out, inactive, expired).
    GroupMember,
    /// A drug (pharmacy) prior authorization (outside CMS-0057-F).
    DrugPriorAuth,
    /// Not readable as a FHIR resource (malformed, duplicated members,
    /// nested too deep): nothing unreadable leaves.
    Unreadable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Attribution => "attribution",
            Reason::OptOut => "opt-out",
            Reason::Part2 => "part2",
            Reason::Financial => "financial",
            Reason::DateFloor => "date-floor",
            Reason::Plugin => "plugin",
            Reason::Unlinked => "unlinked",
            Reason::GroupMember => "group-member",
            Reason::DrugPriorAuth => "drug-pa",
            Reason::Unreadable => "unreadable",
        }
    }
}

/// A stage's decision on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Leaves as it is.
    Keep,
    /// Withheld.
    Drop(Reason),
    /// Leaves as this text instead (elements removed for `why`).
    Redact { text: String, why: Reason },
}

/// What one stage did to one resource, for the explain trace. Names a
/// resource and a reason, never a value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// The stage (`access`, `names`, `data-scope`, `part2-reference`, `plugins`, …).
    pub stage: &'static str,
    /// `Type/id`, or the entry's position when the resource has neither.
    pub resource: String,
    /// `withheld` or `redacted`.
    pub action: &'static str,
    pub reason: Reason,
    /// What in the resource decided, without its values: `a Part 2 code
    /// in code`, the element paths a rewrite removed, a plugin's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What left in an answer and what was withheld or changed, per reason.
/// Every stage writes its decisions here; the audit event is written from
/// it, so the counts and the answer come from the same decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disclosure {
    /// Bare patient ids (`pat-0001`) whose records left.
    pub patients: BTreeSet<String>,
    pub resource_types: BTreeSet<String>,
    /// Resources withheld, per reason.
    pub suppressed: BTreeMap<Reason, u32>,
    /// Resources (Group members, for [`Reason::GroupMember`]) changed, per reason.
    pub redacted: BTreeMap<Reason, u32>,
    /// A patient-less search was narrowed to this many patients.
    pub narrowed_to: Option<u32>,
    /// Per-resource decisions, kept only when asked for ([`Disclosure::tracing`]).
    pub trace: Option<Vec<Step>>,
}

impl Disclosure {
    /// A record that also keeps the per-resource trace.
    pub fn tracing() -> Disclosure {
        Disclosure { trace: Some(Vec::new()), ..Disclosure::default() }
    }

    /// One resource withheld.
    pub fn withhold(&mut self, reason: Reason) {
        self.withhold_n(reason, 1);
    }

    pub fn withhold_n(&mut self, reason: Reason, n: u32) {
        if n > 0 {
            *self.suppressed.entry(reason).or_default() += n;
        }
    }

    /// One resource changed.
    pub fn redact(&mut self, reason: Reason) {
        self.redact_n(reason, 1);
    }

    pub fn redact_n(&mut self, reason: Reason, n: u32) {
        if n > 0 {
            *self.redacted.entry(reason).or_default() += n;
        }
    }

    /// Take back one redaction (the resource was withheld after all).
    pub fn unredact(&mut self, reason: Reason) {
        if let Some(n) = self.redacted.get_mut(&reason) {
            *n -= 1;
            if *n == 0 {
                self.redacted.remove(&reason);
            }
        }
    }

    /// Resources withheld for `reason`.
    pub fn withheld(&self, reason: Reason) -> u32 {
        self.suppressed.get(&reason).copied().unwrap_or(0)
    }

    /// Resources changed for `reason`.
    pub fn redactions(&self, reason: Reason) -> u32 {
        self.redacted.get(&reason).copied().unwrap_or(0)
    }

    /// Resources withheld for any reason.
    pub fn withheld_total(&self) -> u32 {
        self.suppressed.values().sum()
    }

    /// Nothing withheld or changed.
    pub fn is_clean(&self) -> bool {
        self.suppressed.is_empty() && self.redacted.is_empty()
    }

    /// Whether the per-resource trace is kept (explain).
    pub fn is_tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// Record a stage's decision in the trace (when tracing); `detail` is
    /// asked only then.
    pub fn trace(
        &mut self,
        stage: &'static str,
        resource: impl FnOnce() -> String,
        verdict: &Verdict,
        detail: impl FnOnce() -> Option<String>,
    ) {
        let Some(trace) = &mut self.trace else { return };
        let (action, reason) = match verdict {
            Verdict::Keep => return,
            Verdict::Drop(reason) => ("withheld", *reason),
            Verdict::Redact { why, .. } => ("redacted", *why),
        };
        trace.push(Step { stage, resource: resource(), action, reason, detail: detail() });
    }

    /// Fold another record into this one.
    pub fn merge(&mut self, other: Disclosure) {
        self.patients.extend(other.patients);
        self.resource_types.extend(other.resource_types);
        for (reason, n) in other.suppressed {
            self.withhold_n(reason, n);
        }
        for (reason, n) in other.redacted {
            self.redact_n(reason, n);
        }
        self.narrowed_to = self.narrowed_to.or(other.narrowed_to);
        if let (Some(mine), Some(theirs)) = (&mut self.trace, other.trace) {
            mine.extend(theirs);
        }
    }

    /// The trace as lines a reviewer reads: `Observation/o1: withheld by data-scope (part2)`.
    pub fn trace_lines(&self) -> Vec<String> {
        self.trace
            .iter()
            .flatten()
            .map(|s| {
                let line = format!("{}: {} by {} ({})", s.resource, s.action, s.stage, s.reason.as_str());
                match &s.detail {
                    Some(detail) => format!("{line}: {detail}"),
                    None => line,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_take_back() {
        let mut d = Disclosure::default();
        d.withhold(Reason::Part2);
        d.withhold(Reason::Part2);
        d.redact(Reason::Financial);
        d.unredact(Reason::Financial);
        d.unredact(Reason::Financial);
        assert_eq!(d.withheld(Reason::Part2), 2);
        assert!(d.redacted.is_empty());
        let mut other = Disclosure::default();
        other.withhold(Reason::OptOut);
        other.patients.insert("p1".into());
        other.narrowed_to = Some(3);
        d.merge(other);
        assert_eq!(d.withheld_total(), 3);
        assert_eq!(d.narrowed_to, Some(3));
        assert!(d.patients.contains("p1"));
    }

    #[test]
    fn the_trace_is_kept_only_when_asked_for_and_names_no_values() {
        let mut quiet = Disclosure::default();
        quiet.trace("data-scope", || "Observation/o1".into(), &Verdict::Drop(Reason::Part2), || None);
        assert!(quiet.trace_lines().is_empty());
        let mut d = Disclosure::tracing();
        d.trace("access", || "Observation/o1".into(), &Verdict::Keep, || None);
        d.trace(
            "data-scope",
            || "Observation/o1".into(),
            &Verdict::Drop(Reason::Part2),
            || Some("a Part 2 code in code".into()),
        );
        let redacted = Verdict::Redact { text: "{\"secret\":1}".into(), why: Reason::Financial };
        d.trace("data-scope", || "ExplanationOfBenefit/e1".into(), &redacted, || None);
        assert_eq!(
            d.trace_lines(),
            vec![
                "Observation/o1: withheld by data-scope (part2): a Part 2 code in code",
                "ExplanationOfBenefit/e1: redacted by data-scope (financial)"
            ]
        );
    }
}
