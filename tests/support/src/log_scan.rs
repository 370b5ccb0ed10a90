//! Secrets and member data must never reach fhirwall's log. Every gateway a
//! test starts has its log scanned when it is dropped (`Gateway`'s `Drop`):
//! no JWT (an access token or a client assertion: `eyJ…`), no admin token,
//! no member's name or member id from the synthetic dataset. A hit fails
//! the test that started the gateway.

use std::sync::OnceLock;

/// What the log must not hold besides the admin token: a JWT's first
/// bytes, and the dataset's family names and member ids.
fn forbidden() -> &'static [String] {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut list = vec!["eyJ".to_owned()];
        let facts = crate::paths::repo_root().join("examples/dataset/facts.json");
        if let Ok(text) = std::fs::read_to_string(facts)
            && let Ok(facts) = serde_json::from_str::<serde_json::Value>(&text)
        {
            for patient in facts["patients"].as_object().into_iter().flatten().map(|(_, p)| p) {
                for value in [&patient["name"]["family"], &patient["member_id"], &patient["subscriber_id"]] {
                    if let Some(v) = value.as_str().filter(|v| v.len() >= 5) {
                        list.push(v.to_owned());
                    }
                }
            }
        }
        list.sort();
        list.dedup();
        list
    })
}

/// The first forbidden string in `log` and the line it is on (cut short),
/// if any.
pub fn find_secret(log: &str, admin_token: &str) -> Option<(String, String)> {
    let needles = forbidden().iter().map(String::as_str).chain(Some(admin_token).filter(|t| t.len() >= 8));
    for needle in needles {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            let shown: String = line.chars().take(300).collect();
            return Some((needle.to_owned(), shown));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens_names_and_the_admin_token() {
        let clean = "{\"message\":\"request\",\"path\":\"/fhir/Patient/pat-0001\",\"status\":200}";
        assert_eq!(find_secret(clean, "admin-secret-1"), None);
        assert!(find_secret("Authorization: Bearer eyJhbGciOiJFUzM4NCJ9.x.y", "t").is_some());
        assert!(find_secret("matched Grantham", "admin-secret-1").is_some());
        assert!(find_secret("token admin-secret-1 refused", "admin-secret-1").is_some());
    }
}
