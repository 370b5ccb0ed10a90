//! The data-scope stages of the chain: Part 2 by label, code and program,
//! drug prior authorizations and the service-date floor ([`DataScope`]);
//! money beyond `financial.toml` ([`Money`]); records that point at a
//! withheld Part 2 record ([`Part2References`]).

use std::collections::{HashMap, HashSet};

use super::{EntryInput, Redactor};
use crate::chain::disclosure::{Disclosure, Reason, Verdict};
use crate::chain::stage::{Item, Stage};
use crate::chain::tape::Kind;
use crate::fhir::bundle::RawObject;

/// Part 2, drug PAs, the date floor and `financial.toml`, judged across
/// the answer (a record pointing at one withheld in the same answer goes too).
pub struct DataScope<'a> {
    pub redactor: &'a Redactor,
}

impl Stage for DataScope<'_> {
    fn name(&self) -> &'static str {
        "data-scope"
    }

    fn judge(&self, items: &[&Item<'_>], disclosure: &mut Disclosure) -> Vec<Verdict> {
        let inputs: Vec<EntryInput<'_>> = items.iter().map(|item| input(item)).collect();
        self.redactor.judge_entries(&inputs, disclosure, 0)
    }

    fn detail(&self, _: usize, item: &Item<'_>, verdict: &Verdict) -> Option<String> {
        match verdict {
            Verdict::Drop(Reason::Part2) => Some(
                item.text()
                    .and_then(|text| self.redactor.part2_basis(text))
                    .unwrap_or_else(|| "points at a record withheld as Part 2".to_owned()),
            ),
            Verdict::Drop(Reason::DateFloor) => {
                Some(format!("service date before the floor {}", self.redactor.service_date_floor()))
            }
            Verdict::Drop(Reason::DrugPriorAuth) => {
                Some("a drug prior authorization (outside CMS-0057-F)".to_owned())
            }
            Verdict::Redact { text, .. } => crate::chain::elements::changed(item.text()?, text),
            _ => None,
        }
    }
}

/// What the data-scope rules read of an item. An entry whose `fullUrl` or
/// `search` has the wrong shape is unreadable (no resource).
fn input<'a>(item: &'a Item<'_>) -> EntryInput<'a> {
    let resource = item.text();
    let node = item.untouched();
    let Some(entry) = item.entry else { return EntryInput { resource, node, ..EntryInput::default() } };
    let full_url = match entry.get("fullUrl") {
        None => None,
        Some(url) => match url.str() {
            Some(url) => Some(url),
            None => return EntryInput::default(),
        },
    };
    let mode = match entry.get("search") {
        None => None,
        Some(search) if search.kind() == Kind::Object => match search.get("mode") {
            None => None,
            Some(mode) if mode.kind() == Kind::Null => None,
            Some(mode) => match mode.str() {
                Some(mode) => Some(mode),
                None => return EntryInput::default(),
            },
        },
        Some(_) => return EntryInput::default(),
    };
    EntryInput { full_url, mode, resource, node }
}

/// Money values and claims free text anywhere (`redact::money`), when
/// `financial = "strip"`.
pub struct Money<'a> {
    pub redactor: &'a Redactor,
}

impl Stage for Money<'_> {
    fn name(&self) -> &'static str {
        "financial"
    }

    fn judge(&self, items: &[&Item<'_>], disclosure: &mut Disclosure) -> Vec<Verdict> {
        items
            .iter()
            .map(|item| {
                let Some(text) = item.text() else { return Verdict::Keep };
                let object = match item.untouched() {
                    Some(node) => node.object(),
                    None => RawObject::parse(text).ok(),
                };
                let Some(resource_type) = object.as_ref().and_then(|o| o.get_str("resourceType")) else {
                    disclosure.withhold(Reason::Unreadable);
                    return Verdict::Drop(Reason::Unreadable);
                };
                let object = object.expect("read above");
                match self.redactor.strip_money_object(&resource_type, text, &object, disclosure) {
                    Ok(None) => Verdict::Keep,
                    Ok(Some(text)) => Verdict::Redact { text, why: Reason::Financial },
                    // Nothing unreadable leaves.
                    Err(_) => {
                        disclosure.withhold(Reason::Unreadable);
                        Verdict::Drop(Reason::Unreadable)
                    }
                }
            })
            .collect()
    }
}

/// Withheld by reference (DESIGN.md "Part 2 programs"): a record that
/// references a record withheld as Part 2 or as a drug PA — in this answer
/// or not — is withheld too, or (`part2 = "redact"`) leaves without those
/// references. The targets are classified beforehand (they may have to be
/// read from the upstream); this stage only applies what was found.
pub struct Part2References<'a> {
    pub redactor: &'a Redactor,
    /// Per item, in the order the stage is shown them: the references to
    /// records outside the answer that may be Part 2.
    pub references: Vec<Vec<String>>,
    /// `Type/id` -> withheld, for every one of those references.
    pub withheld: &'a HashMap<String, bool>,
}

impl Stage for Part2References<'_> {
    fn name(&self) -> &'static str {
        "part2-reference"
    }

    fn detail(&self, shown: usize, item: &Item<'_>, verdict: &Verdict) -> Option<String> {
        match verdict {
            Verdict::Drop(_) => {
                let n = self.references.get(shown).map_or(0, Vec::len);
                Some(format!("references a record withheld as Part 2 or a drug PA ({n} checked)"))
            }
            Verdict::Redact { text, .. } => crate::chain::elements::changed(item.text()?, text),
            Verdict::Keep => None,
        }
    }

    fn judge(&self, items: &[&Item<'_>], disclosure: &mut Disclosure) -> Vec<Verdict> {
        // Classified for another set of items: nothing is known, nothing leaves.
        if self.references.len() != items.len() {
            items.iter().for_each(|_| disclosure.withhold(Reason::Part2));
            return vec![Verdict::Drop(Reason::Part2); items.len()];
        }
        items
            .iter()
            .zip(&self.references)
            .map(|(item, references)| {
                // A target not classified is treated as withheld.
                let gone: HashSet<String> = references
                    .iter()
                    .filter(|r| self.withheld.get(*r).copied().unwrap_or(true))
                    .cloned()
                    .collect();
                if gone.is_empty() {
                    return Verdict::Keep;
                }
                match item.text().and_then(|text| self.redactor.redact_references(text, &gone)) {
                    Some(text) => {
                        disclosure.redact(Reason::Part2);
                        Verdict::Redact { text, why: Reason::Part2 }
                    }
                    None => {
                        disclosure.withhold(Reason::Part2);
                        Verdict::Drop(Reason::Part2)
                    }
                }
            })
            .collect()
    }
}
