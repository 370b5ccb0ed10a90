//! Which elements a rewrite removed or changed, by path
//! (`ExplanationOfBenefit.item[0].adjudication`), for `explain`. Names
//! element paths only, never a value. Off the serving path: only a traced
//! run (explain) asks.

use serde_json::Value;

/// At most this many paths are named; the rest are counted.
const MAX_PATHS: usize = 24;

/// The element paths of `before` that `after` no longer has or has changed,
/// and those `after` adds (a redaction label in `meta.security`), as one
/// line: `payment, item[0].adjudication, total`. `None` when either side
/// is not a JSON object or nothing differs.
pub fn changed(before: &str, after: &str) -> Option<String> {
    let before: Value = serde_json::from_str(before).ok()?;
    let after: Value = serde_json::from_str(after).ok()?;
    let root = before.get("resourceType").and_then(Value::as_str).unwrap_or("").to_owned();
    let mut paths = Vec::new();
    walk(&root, &before, &after, &mut paths);
    if paths.is_empty() {
        return None;
    }
    // In a stable order whatever order the parser keeps members in.
    paths.sort();
    let more = paths.len().saturating_sub(MAX_PATHS);
    paths.truncate(MAX_PATHS);
    let mut line = paths.join(", ");
    if more > 0 {
        line.push_str(&format!(" and {more} more"));
    }
    Some(format!("elements removed or changed: {line}"))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn walk(path: &str, before: &Value, after: &Value, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (key, bv) in b {
                match a.get(key) {
                    None => out.push(join(path, key)),
                    Some(av) if av != bv => walk(&join(path, key), bv, av, out),
                    Some(_) => {}
                }
            }
            for key in a.keys().filter(|k| !b.contains_key(*k)) {
                out.push(join(path, key));
            }
        }
        // Items compared in place while the lengths agree; otherwise the
        // array as a whole changed (an item removed shifts the rest).
        (Value::Array(b), Value::Array(a)) if a.len() == b.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                if bv != av {
                    walk(&format!("{path}[{i}]"), bv, av, out);
                }
            }
        }
        _ => out.push(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_never_values() {
        let before = r#"{"resourceType":"ExplanationOfBenefit","id":"e1","payment":{"amount":{"value":12.5}},
            "item":[{"sequence":1,"adjudication":[{"amount":{"value":3}}]},{"sequence":2}],"status":"active",
            "meta":{"security":[{"code":"X"}]}}"#;
        let after = r#"{"resourceType":"ExplanationOfBenefit","id":"e1",
            "item":[{"sequence":1},{"sequence":2}],"status":"active",
            "meta":{"security":[{"code":"X"},{"code":"REDACTED"}]}}"#;
        let line = changed(before, after).unwrap();
        assert_eq!(
            line,
            "elements removed or changed: ExplanationOfBenefit.item[0].adjudication, \
             ExplanationOfBenefit.meta.security, ExplanationOfBenefit.payment"
        );
        assert!(!line.contains("12.5") && !line.contains("REDACTED"));
        assert_eq!(changed(before, before), None);
        assert_eq!(changed("not json", before), None);
    }

    #[test]
    fn long_lists_are_cut_and_counted() {
        let keys: Vec<String> = (0..30).map(|i| format!("\"k{i:02}\":1")).collect();
        let before = format!("{{\"resourceType\":\"Basic\",{}}}", keys.join(","));
        let line = changed(&before, r#"{"resourceType":"Basic"}"#).unwrap();
        assert!(line.ends_with(" and 6 more"), "{line}");
    }
}
