//! Fuzz the host's side of what a WebAssembly plugin returns: a policy
//! plugin's `replace` text (`plugins::policy::check_replacement`), a
//! matcher's answer (`plugins::matcher::check_answer`), and policy verdicts
//! applied to an answer's resources (`plugins::policy::PluginStage` through
//! `chain::stage::run`).
//!
//! Invariants: never a panic; a replacement that is not a JSON object is an
//! error (the request fails closed); one that is honoured keeps
//! `resourceType` and `id` and only removes (no scalar appears more often
//! than in the original, and it is no longer); a match names a candidate the
//! host offered, with a finite score; an ambiguity lists offered members
//! only; reasons are capped on a character boundary; verdicts that do not
//! fit the resources shown withhold them all.
#![no_main]

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use fhirwall::chain::disclosure::{Disclosure, Reason, Verdict as Chain};
use fhirwall::chain::stage::{self, Item};
use fhirwall::plugins::OfferedCandidate;
use fhirwall::plugins::matcher::{Ambiguity, MatchResult, Matched, check_answer};
use fhirwall::plugins::policy::{PluginStage, Verdict, check_replacement, is_narrowing};
use fhirwall::plugins::{MatchAnswer, PluginError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// One edit of a replacement made from the original: two bytes, the kind
/// (value % 4) and where (the n-th place of a walk of the document).
enum Edit {
    /// Remove a member or item.
    Remove(u8),
    /// Set a scalar to a string.
    Alter(u8),
    /// Add a member to an object.
    Add(u8),
    /// Swap the first and last items of an array.
    Swap(u8),
}

#[derive(Arbitrary, Debug)]
enum Answer<'a> {
    Match { member: &'a str, score: f64, reasons: Vec<&'a str> },
    NoMatch(Vec<&'a str>),
    Ambiguous { members: Vec<&'a str>, reasons: Vec<&'a str> },
}

#[derive(Arbitrary, Debug)]
enum PolicyVerdict<'a> {
    Keep,
    Drop,
    Replace(&'a str),
}

// Input: one byte choosing the case, then its data:
// 0: a policy plugin's `replace(text)`: `original\0replacement`;
// 1: a replacement made by editing the original: `original\0edits`;
// 2: a matcher's answer (the candidates offered and the answer, decoded
//    with `arbitrary`);
// 3: policy verdicts for resources (possibly of the wrong number; decoded
//    with `arbitrary`).
fuzz_target!(|data: &[u8]| {
    let Some((&case, rest)) = data.split_first() else { return };
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let (head, tail) = (&rest[..split], rest.get(split + 1..).unwrap_or(b""));
    match case % 4 {
        0 => {
            let (Ok(original), Ok(replacement)) = (std::str::from_utf8(head), std::str::from_utf8(tail))
            else {
                return;
            };
            replace(original, replacement.to_owned());
        }
        1 => {
            let Ok(original) = std::str::from_utf8(head) else { return };
            let Ok(mut value) = serde_json::from_str::<Value>(original) else { return };
            for pair in tail.chunks_exact(2) {
                let edit = match pair[0] % 4 {
                    0 => Edit::Remove(pair[1]),
                    1 => Edit::Alter(pair[1]),
                    2 => Edit::Add(pair[1]),
                    _ => Edit::Swap(pair[1]),
                };
                apply(&mut value, &edit);
            }
            replace(original, value.to_string());
        }
        2 => {
            let mut u = Unstructured::new(rest);
            let (Ok(offered), Ok(answer)) = (u.arbitrary::<Vec<&str>>(), u.arbitrary::<Answer<'_>>()) else {
                return;
            };
            matched(&offered, answer);
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let (Ok(resources), Ok(verdicts)) =
                (u.arbitrary::<Vec<&str>>(), u.arbitrary::<Vec<PolicyVerdict<'_>>>())
            else {
                return;
            };
            verdicts_applied(&resources, verdicts);
        }
    }
});

fn replace(original: &str, text: String) {
    let too_large = text.len() > original.len() * 2 + 1024;
    let is_object = serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object());
    match check_replacement("fuzz", original, text.clone()) {
        Err(PluginError::Malformed { .. }) => {
            assert!(too_large || !is_object, "a JSON object replacement was called malformed: {text:?}");
        }
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(verdict) => {
            // Invalid output is an error, never a verdict (least of all keep).
            assert!(!too_large && is_object, "malformed replacement {text:?} gave {verdict:?}");
            match verdict {
                Verdict::Keep => panic!("a replacement became keep"),
                Verdict::Drop(_) => {}
                Verdict::Replace(new) => check_narrowing(original, &new),
            }
        }
    }
}

/// An honoured replacement only takes away.
fn check_narrowing(original: &str, new: &str) {
    let old: Value = serde_json::from_str(original).expect("an honoured replacement has a readable original");
    let new: Value = serde_json::from_str(new).expect("the replacement sent on is JSON");
    assert!(new.is_object());
    assert_eq!(new.get("resourceType"), old.get("resourceType"), "resourceType changed");
    assert_eq!(new.get("id"), old.get("id"), "id changed");
    assert!(is_narrowing(&new, &old));
    let (mut have, mut had) = (HashMap::new(), HashMap::new());
    leaves(&new, String::new(), &mut have);
    leaves(&old, String::new(), &mut had);
    for (leaf, count) in &have {
        assert!(had.get(leaf).is_some_and(|n| n >= count), "replacement adds {leaf:?}");
    }
    assert!(new.to_string().len() <= old.to_string().len(), "replacement is longer than the original");
}

/// Scalars by their member path (array positions left out), counted.
fn leaves(value: &Value, path: String, out: &mut HashMap<(String, String), usize>) {
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| leaves(v, format!("{path}.{k}"), out)),
        Value::Array(items) => items.iter().for_each(|v| leaves(v, format!("{path}[]"), out)),
        scalar => *out.entry((path, scalar.to_string())).or_default() += 1,
    }
}

/// Apply one edit at the n-th place of a pre-order walk.
fn apply(value: &mut Value, edit: &Edit) {
    let n = match edit {
        Edit::Remove(n) | Edit::Alter(n) | Edit::Add(n) | Edit::Swap(n) => usize::from(*n),
    };
    let mut seen = 0;
    walk(value, &mut |v: &mut Value| {
        let here = seen == n;
        seen += 1;
        if !here {
            return false;
        }
        match (edit, v) {
            (Edit::Remove(_), Value::Object(map)) => {
                if let Some(key) = map.keys().next().cloned() {
                    map.remove(&key);
                }
            }
            (Edit::Remove(_), Value::Array(items)) if !items.is_empty() => {
                items.remove(items.len() / 2);
            }
            (Edit::Alter(_), v @ (Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null)) => {
                *v = Value::String("altered".to_owned());
            }
            (Edit::Add(_), Value::Object(map)) => {
                map.insert("added".to_owned(), Value::Bool(true));
            }
            (Edit::Swap(_), Value::Array(items)) if items.len() > 1 => {
                let last = items.len() - 1;
                items.swap(0, last);
            }
            _ => {}
        }
        true
    });
}

/// Pre-order walk until `visit` says done.
fn walk(value: &mut Value, visit: &mut dyn FnMut(&mut Value) -> bool) -> bool {
    if visit(value) {
        return true;
    }
    match value {
        Value::Object(map) => map.values_mut().any(|v| walk(v, visit)),
        Value::Array(items) => items.iter_mut().any(|v| walk(v, visit)),
        _ => false,
    }
}

fn matched(offered: &[&str], answer: Answer<'_>) {
    let candidates: HashMap<String, OfferedCandidate> = offered
        .iter()
        .map(|id| {
            let candidate = OfferedCandidate {
                id: (*id).to_owned(),
                patient: format!(r#"{{"resourceType":"Patient","id":{}}}"#, Value::from(*id)),
                coverages: Vec::new(),
            };
            ((*id).to_owned(), candidate)
        })
        .collect();
    let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let (result, given_reasons) = match &answer {
        Answer::Match { member, score, reasons } => (
            MatchResult::Match(Matched {
                member: (*member).to_owned(),
                score: *score,
                reasons: owned(reasons),
            }),
            owned(reasons),
        ),
        Answer::NoMatch(reasons) => (MatchResult::NoMatch(owned(reasons)), owned(reasons)),
        Answer::Ambiguous { members, reasons } => (
            MatchResult::Ambiguous(Ambiguity { members: owned(members), reasons: owned(reasons) }),
            owned(reasons),
        ),
    };
    let checked = check_answer("fuzz", result, &candidates);
    let reasons = match (&answer, checked) {
        (Answer::Match { member, score, .. }, Ok(MatchAnswer::Match { member: got, score: s, reasons })) => {
            assert!(candidates.contains_key(*member) && got == *member, "matched {got:?}, not offered");
            assert!(score.is_finite() && s == *score, "score {s}");
            reasons
        }
        (Answer::Match { member, score, .. }, Err(PluginError::Malformed { .. })) => {
            assert!(!candidates.contains_key(*member) || !score.is_finite(), "a valid match refused");
            return;
        }
        (Answer::NoMatch(_), Ok(MatchAnswer::NoMatch { reasons })) => reasons,
        (Answer::Ambiguous { members, .. }, Ok(MatchAnswer::Ambiguous { members: got, reasons })) => {
            assert!(got.len() <= 16, "{} members", got.len());
            assert!(
                got.iter().all(|m| candidates.contains_key(m)),
                "an ambiguity lists a member not offered"
            );
            let kept: Vec<&String> = members
                .iter()
                .filter(|m| candidates.contains_key(**m))
                .map(|m| &candidates[*m].id)
                .take(16)
                .collect();
            assert_eq!(got.iter().collect::<Vec<_>>(), kept);
            reasons
        }
        (answer, checked) => panic!("{answer:?} became {checked:?}"),
    };
    assert!(reasons.len() <= 16 && reasons.len() == given_reasons.len().min(16));
    for (kept, given) in reasons.iter().zip(&given_reasons) {
        assert!(kept.len() <= 512 && given.starts_with(kept.as_str()), "reason {kept:?} from {given:?}");
        assert!(kept.len() == given.len() || given.len() > 512, "a short reason was cut");
    }
}

fn verdicts_applied(resources: &[&str], verdicts: Vec<PolicyVerdict<'_>>) {
    let judged: Vec<(Chain, Option<String>)> = verdicts
        .iter()
        .map(|v| match v {
            PolicyVerdict::Keep => (Chain::Keep, None),
            PolicyVerdict::Drop => (Chain::Drop(Reason::Plugin), Some("policy: no".to_owned())),
            PolicyVerdict::Replace(text) => {
                (Chain::Redact { text: (*text).to_owned(), why: Reason::Plugin }, None)
            }
        })
        .collect();
    let mut items: Vec<Item<'_>> = resources.iter().map(|r| Item::alone(r)).collect();
    let mut disclosure = Disclosure::tracing();
    stage::run(&PluginStage::new(judged), &mut items, &mut disclosure);
    let fits = verdicts.len() == resources.len();
    for (i, item) in items.iter().enumerate() {
        match verdicts.get(i).filter(|_| fits) {
            // Verdicts that do not fit withhold everything.
            None => assert!(item.withheld || resources.is_empty(), "kept without a fitting verdict"),
            Some(PolicyVerdict::Keep) => assert!(!item.withheld && item.text() == Some(resources[i])),
            Some(PolicyVerdict::Drop) => assert!(item.withheld),
            Some(PolicyVerdict::Replace(text)) => assert!(!item.withheld && item.text() == Some(*text)),
        }
    }
}
