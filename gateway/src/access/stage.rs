//! The access stage of the chain: attribution, opt-outs and owner links
//! ([`super::filter`]); Groups leave rebuilt with the caller's visible,
//! active members only.

use super::filter::{self, Checker, Probe};
use super::{Access, Decision};
use crate::chain::disclosure::{Disclosure, Reason, Verdict};
use crate::chain::stage::{Item, Stage};

/// Access for one request's decision.
pub struct AccessStage<'a> {
    pub access: &'a Access,
    pub decision: &'a Decision,
}

impl Stage for AccessStage<'_> {
    fn name(&self) -> &'static str {
        "access"
    }

    /// Judged together: a Provenance follows its target in the same answer.
    fn judge(&self, items: &[&Item<'_>], disclosure: &mut Disclosure) -> Vec<Verdict> {
        let policy = &self.access.policy;
        let checker = Checker::new(&self.decision.scope, policy, &self.access.refs);
        let probes = items
            .iter()
            .map(|item| match (item.untouched(), item.text()) {
                (Some(node), _) => Some((Probe::from_node(node, policy), node.raw())),
                (None, Some(text)) => Probe::parse(text, policy).ok().map(|probe| (probe, text)),
                (None, None) => None,
            })
            .collect();
        let resource_type = |item: &Item<'_>| match item.untouched() {
            Some(node) => node.get_str("resourceType").map(Into::into),
            None => item.text().and_then(crate::fhir::bundle::resource_type),
        };
        checker
            .verdicts(probes, 0)
            .into_iter()
            .zip(items)
            .map(|(verdict, item)| match verdict {
                filter::Verdict::Drop(reason) => {
                    disclosure.withhold(reason);
                    Verdict::Drop(reason)
                }
                filter::Verdict::Keep(patients) => {
                    disclosure.patients.extend(patients);
                    disclosure.resource_types.extend(resource_type(item));
                    Verdict::Keep
                }
                filter::Verdict::Rewrite { text, members_removed } => {
                    disclosure.redact_n(Reason::GroupMember, members_removed);
                    disclosure.resource_types.extend(resource_type(item));
                    Verdict::Redact { text, why: Reason::GroupMember }
                }
            })
            .collect()
    }
}
