//! The hook every stage of the chain implements, and the runner that
//! applies stages in order. A stage sees the resources still on their way
//! out, answers one [`Verdict`] per resource, and writes its counts to the
//! answer's [`Disclosure`]; the runner applies the verdicts (a withheld
//! resource is seen by no later stage; a redacted one is seen as redacted)
//! and records each decision in the trace.

use super::disclosure::{Disclosure, Verdict};
use super::tape::{Kind, Node};

/// One resource on its way through the stages.
#[derive(Debug, Clone)]
pub struct Item<'t> {
    /// Its upstream Bundle entry on the page's tape (`None`: a resource read
    /// on its own, or one fhirwall adds, such as a stored roster Group).
    pub entry: Option<Node<'t, 't>>,
    /// The resource as the upstream sent it, on the tape.
    pub node: Option<Node<'t, 't>>,
    /// The resource's JSON as the upstream sent it.
    pub original: Option<&'t str>,
    /// Its JSON as a stage rewrote it.
    pub rewritten: Option<String>,
    /// Withheld by a stage: no later stage sees it, and it does not leave.
    pub withheld: bool,
}

impl<'t> Item<'t> {
    /// A Bundle entry: its resource, when the entry has one that is an object.
    pub fn entry(entry: Node<'t, 't>) -> Item<'t> {
        let node = entry.get("resource").filter(|r| r.kind() == Kind::Object);
        Item { entry: Some(entry), node, original: node.map(|n| n.raw()), rewritten: None, withheld: false }
    }

    /// A resource on its own (a read, a version, an operation's output).
    pub fn alone(text: &'t str) -> Item<'t> {
        Item { entry: None, node: None, original: Some(text), rewritten: None, withheld: false }
    }

    /// A resource fhirwall adds to an answer (already judged by access).
    pub fn added(text: String) -> Item<'t> {
        Item { entry: None, node: None, original: None, rewritten: Some(text), withheld: false }
    }

    /// The resource as it stands now (`None`: the entry has none).
    pub fn text(&self) -> Option<&str> {
        self.rewritten.as_deref().or(self.original)
    }

    /// The resource on the tape while no stage has rewritten it.
    pub fn untouched(&self) -> Option<Node<'t, 't>> {
        if self.rewritten.is_some() { None } else { self.node }
    }

    /// `Type/id` for the trace (no values of the resource beyond those).
    fn label(&self, position: usize) -> String {
        let from_node = self.untouched().and_then(|n| Some((n.get_str("resourceType")?, n.get_str("id")?)));
        let head = from_node.map(|(t, id)| (t.into_owned(), id.into_owned())).or_else(|| {
            let object = crate::fhir::bundle::RawObject::parse(self.text()?).ok()?;
            Some((object.get_str("resourceType")?, object.get_str("id")?))
        });
        match head {
            Some((resource_type, id)) => format!("{resource_type}/{id}"),
            None => format!("entry[{position}]"),
        }
    }
}

/// One stage of the chain.
pub trait Stage {
    /// Its name in the trace (`access`, `data-scope`, …).
    fn name(&self) -> &'static str;

    /// One verdict per resource of `items` (the ones still on their way
    /// out, in answer order), counting what it withholds or changes in
    /// `disclosure`. Verdicts may depend on each other (a Provenance on its
    /// target in the same answer); the answer must never depend on
    /// resources the caller may not see.
    fn judge(&self, items: &[&Item<'_>], disclosure: &mut Disclosure) -> Vec<Verdict>;

    /// For the explain trace only (never on the serving path): what in
    /// `item`, the `shown`-th resource of the last `judge`, decided
    /// `verdict` — names and paths, never values. By default the element
    /// paths a rewrite removed or changed.
    fn detail(&self, shown: usize, item: &Item<'_>, verdict: &Verdict) -> Option<String> {
        let _ = shown;
        match verdict {
            Verdict::Redact { text, .. } => super::elements::changed(item.text()?, text),
            _ => None,
        }
    }
}

/// Run `stage` over the items not yet withheld and apply its verdicts. A
/// stage that answers with the wrong number of verdicts withholds
/// everything it was shown (fail closed).
pub fn run(stage: &dyn Stage, items: &mut [Item<'_>], disclosure: &mut Disclosure) {
    let live: Vec<usize> = (0..items.len()).filter(|&i| !items[i].withheld).collect();
    if live.is_empty() {
        return;
    }
    let verdicts = {
        let shown: Vec<&Item<'_>> = live.iter().map(|&i| &items[i]).collect();
        stage.judge(&shown, disclosure)
    };
    if verdicts.len() != live.len() {
        tracing::error!(stage = stage.name(), "a stage answered for the wrong number of resources");
        for &i in &live {
            items[i].withheld = true;
        }
        return;
    }
    for (shown, (&i, verdict)) in live.iter().zip(verdicts).enumerate() {
        let item = &mut items[i];
        disclosure.trace(stage.name(), || item.label(i), &verdict, || stage.detail(shown, item, &verdict));
        match verdict {
            Verdict::Keep => {}
            Verdict::Drop(_) => item.withheld = true,
            Verdict::Redact { text, .. } => item.rewritten = Some(text),
        }
    }
}

/// Run `stage` over entries already written for the answer (the stages
/// that come after the upstream's bytes are gone: Part 2 by reference,
/// policy plugins); the survivors, in order.
pub fn run_on_entries(
    stage: &dyn Stage,
    entries: Vec<super::Entry>,
    disclosure: &mut Disclosure,
) -> Vec<super::Entry> {
    let mut heads = Vec::with_capacity(entries.len());
    let mut items = Vec::with_capacity(entries.len());
    for entry in entries {
        let super::Entry { key, mode, resource, version } = entry;
        heads.push((key, mode, version));
        items.push(Item::added(resource));
    }
    run(stage, &mut items, disclosure);
    heads
        .into_iter()
        .zip(items)
        .filter(|(_, item)| !item.withheld)
        .filter_map(|((key, mode, version), item)| {
            Some(super::Entry { key, mode, resource: item.rewritten?, version })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::disclosure::Reason;

    /// Withholds resources whose text holds `needle`; counts each.
    struct Withhold(&'static str, &'static str);

    impl Stage for Withhold {
        fn name(&self) -> &'static str {
            self.0
        }
        fn judge(&self, items: &[&Item<'_>], disclosure: &mut Disclosure) -> Vec<Verdict> {
            items
                .iter()
                .map(|item| {
                    if item.text().is_some_and(|t| t.contains(self.1)) {
                        disclosure.withhold(Reason::Part2);
                        Verdict::Drop(Reason::Part2)
                    } else {
                        Verdict::Keep
                    }
                })
                .collect()
        }
    }

    /// Replaces `secret` with `gone` and records who it saw.
    struct Rewrite(std::cell::RefCell<Vec<String>>);

    impl Stage for Rewrite {
        fn name(&self) -> &'static str {
            "rewrite"
        }
        fn judge(&self, items: &[&Item<'_>], _: &mut Disclosure) -> Vec<Verdict> {
            items
                .iter()
                .map(|item| {
                    let text = item.text().unwrap_or_default();
                    self.0.borrow_mut().push(text.to_owned());
                    match text.contains("secret") {
                        true => {
                            Verdict::Redact { text: text.replace("secret", "gone"), why: Reason::Financial }
                        }
                        false => Verdict::Keep,
                    }
                })
                .collect()
        }
    }

    #[test]
    fn later_stages_see_only_survivors_as_rewritten_and_the_trace_says_who_decided() {
        let texts = [
            r#"{"resourceType":"Observation","id":"a","note":"secret"}"#,
            r#"{"resourceType":"Observation","id":"b","code":"F11.20"}"#,
            r#"{"resourceType":"Observation","id":"c"}"#,
        ];
        let mut items: Vec<Item<'_>> = texts.iter().map(|t| Item::alone(t)).collect();
        let mut d = Disclosure::tracing();
        let rewrite = Rewrite(Default::default());
        run(&rewrite, &mut items, &mut d);
        run(&Withhold("part2", "F11"), &mut items, &mut d);
        let seen_later = Rewrite(Default::default());
        run(&seen_later, &mut items, &mut d);
        assert_eq!(
            *seen_later.0.borrow(),
            vec![r#"{"resourceType":"Observation","id":"a","note":"gone"}"#, texts[2]]
        );
        assert!(items[1].withheld);
        assert_eq!(d.withheld(Reason::Part2), 1);
        assert_eq!(
            d.trace_lines(),
            vec![
                "Observation/a: redacted by rewrite (financial): elements removed or changed: Observation.note",
                "Observation/b: withheld by part2 (part2)"
            ]
        );
    }

    #[test]
    fn a_stage_that_miscounts_withholds_everything_it_saw() {
        struct Short;
        impl Stage for Short {
            fn name(&self) -> &'static str {
                "short"
            }
            fn judge(&self, _: &[&Item<'_>], _: &mut Disclosure) -> Vec<Verdict> {
                vec![Verdict::Keep]
            }
        }
        let mut items = vec![Item::alone("{}"), Item::alone("{}")];
        run(&Short, &mut items, &mut Disclosure::default());
        assert!(items.iter().all(|i| i.withheld));
    }
}
