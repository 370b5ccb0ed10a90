//! Secrets and member data must never reach fhirwall's log. Every gateway a
//! test starts has its log scanned when it is dropped (`Gateway`'s `Drop`):
//! no JWT (an access token or a client assertion: `eyJ…`), no admin token,
//! no member's name or member id from the synthetic dataset. A hit fails
//! the test that started the gateway.

use std::sync::OnceLock;

/// What the log must not hold besides a JWT and the admin token: the
/// dataset's family names and member ids.
fn forbidden() -> &'static [String] {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut list = Vec::new();
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

/// Whether `line` holds a compact JWS: `eyJ…` (base64url of `{"`) starting
/// a word, then two more dot-separated base64url segments. (Page and export
/// tokens are base64url too and may hold `eyJ` inside; that is no JWT.)
fn has_jwt(line: &str) -> bool {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(at) = line[from..].find("eyJ").map(|i| i + from) {
        from = at + 3;
        if at > 0 && b64(bytes[at - 1]) {
            continue;
        }
        let run = bytes[at..].iter().take_while(|c| b64(**c) || **c == b'.').count();
        let token = &line[at..at + run];
        if token.split('.').filter(|part| !part.is_empty()).count() >= 3 {
            return true;
        }
    }
    false
}

/// The first forbidden string in `log` and the line it is on (cut short),
/// if any.
pub fn find_secret(log: &str, admin_token: &str) -> Option<(String, String)> {
    if let Some(line) = log.lines().find(|l| has_jwt(l)) {
        return Some(("eyJ".to_owned(), line.chars().take(300).collect()));
    }
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
        assert!(
            find_secret("Authorization: Bearer eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJ4In0.c2ln", "t").is_some()
        );
        assert!(find_secret("assertion=eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJ4In0.c2ln&x=1", "t").is_some());
        // A page token that happens to hold the letters: no JWT.
        assert_eq!(
            find_secret("\"path\":\"/fhir/_page/H5h6Jo9S36eyJ2KLoLY_RmtwWG1n9\"", "admin-secret-1"),
            None
        );
        assert!(find_secret("matched Grantham", "admin-secret-1").is_some());
        assert!(find_secret("token admin-secret-1 refused", "admin-secret-1").is_some());
    }
}
