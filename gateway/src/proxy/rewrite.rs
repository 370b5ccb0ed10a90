//! Upstream URLs must never reach a caller. Every upstream base spelling
//! (the configured URL and its aliases, plain and JSON-escaped) is replaced by
//! fhirwall's public base in bodies and headers, in one pass over the bytes.

use std::borrow::Cow;

use memchr::memmem;

/// Rewrites upstream base URLs to the public FHIR base.
#[derive(Debug, Clone)]
pub struct UrlRewriter {
    /// (pattern, replacement) pairs: each upstream base, plain and with
    /// JSON-escaped slashes, without a trailing slash.
    patterns: Vec<(String, String)>,
    public_base: String,
}

impl UrlRewriter {
    /// `upstream_bases`: the upstream base URL(s); `public_base`: fhirwall's.
    pub fn new(upstream_bases: &[String], public_base: &str) -> Self {
        let public_base = public_base.trim_end_matches('/').to_owned();
        let mut patterns = Vec::new();
        for base in upstream_bases {
            let base = base.trim_end_matches('/');
            if base.is_empty() {
                continue;
            }
            patterns.push((base.to_owned(), public_base.clone()));
            let escaped = base.replace('/', "\\/");
            if escaped != base {
                patterns.push((escaped, public_base.replace('/', "\\/")));
            }
        }
        // Longest first, so a base that extends another wins.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        UrlRewriter { patterns, public_base }
    }

    pub fn public_base(&self) -> &str {
        &self.public_base
    }

    /// Replace every upstream base in `text` that ends at a URL boundary
    /// (`/`, `?`, `#`, `"`, `\`, or the end), so `.../fhir2` is left alone.
    pub fn rewrite<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut current: Cow<'t, str> = Cow::Borrowed(text);
        for (pattern, replacement) in &self.patterns {
            if let Some(replaced) = replace_at_boundaries(&current, pattern, replacement) {
                current = Cow::Owned(replaced);
            }
        }
        current
    }

    /// The path below the upstream base if `url` is on it (`Patient?x=1`),
    /// else `None`. Only unescaped spellings are considered.
    pub fn strip_upstream_base<'u>(&self, url: &'u str) -> Option<&'u str> {
        self.patterns.iter().filter(|(p, _)| !p.contains("\\/")).find_map(|(base, _)| {
            let rest = url.strip_prefix(base.as_str())?;
            match rest.as_bytes().first() {
                None => Some(""),
                Some(b'/') => Some(&rest[1..]),
                Some(b'?') => Some(rest),
                _ => None,
            }
        })
    }

    /// Does `text` still contain any upstream base spelling?
    pub fn mentions_upstream(&self, text: &str) -> bool {
        self.patterns.iter().any(|(p, _)| memmem::find(text.as_bytes(), p.as_bytes()).is_some())
    }
}

fn replace_at_boundaries(text: &str, pattern: &str, replacement: &str) -> Option<String> {
    let finder = memmem::Finder::new(pattern.as_bytes());
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    for at in finder.find_iter(bytes) {
        let end = at + pattern.len();
        let boundary = matches!(bytes.get(end), None | Some(b'/' | b'?' | b'#' | b'"' | b'\\'));
        if !boundary {
            continue;
        }
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(&text[copied..at]);
        buf.push_str(replacement);
        copied = end;
    }
    let mut buf = out?;
    buf.push_str(&text[copied..]);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewriter() -> UrlRewriter {
        UrlRewriter::new(
            &["http://up:9000/fhir/".into(), "https://public.payer.example/r4".into()],
            "https://gw.example/fhir",
        )
    }

    #[test]
    fn rewrites_every_spelling_at_boundaries() {
        let r = rewriter();
        let cases = [
            ("http://up:9000/fhir/Patient/1", "https://gw.example/fhir/Patient/1"),
            ("\"http://up:9000/fhir\"", "\"https://gw.example/fhir\""),
            ("http://up:9000/fhir?x", "https://gw.example/fhir?x"),
            ("http:\\/\\/up:9000\\/fhir\\/Patient", "https:\\/\\/gw.example\\/fhir\\/Patient"),
            ("https://public.payer.example/r4/Coverage/9", "https://gw.example/fhir/Coverage/9"),
            ("http://up:9000/fhir2/Patient/1", "http://up:9000/fhir2/Patient/1"),
            ("no urls here", "no urls here"),
            (
                "a http://up:9000/fhir/A b http://up:9000/fhir/B",
                "a https://gw.example/fhir/A b https://gw.example/fhir/B",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(r.rewrite(input), want, "{input}");
        }
    }

    #[test]
    fn strips_the_upstream_base() {
        let r = rewriter();
        assert_eq!(
            r.strip_upstream_base("http://up:9000/fhir/Patient?_offset=20"),
            Some("Patient?_offset=20")
        );
        assert_eq!(r.strip_upstream_base("http://up:9000/fhir?_getpages=x"), Some("?_getpages=x"));
        assert_eq!(r.strip_upstream_base("http://up:9000/fhirX/Patient"), None);
        assert_eq!(r.strip_upstream_base("http://evil.example/fhir/Patient"), None);
    }

    #[test]
    fn detects_leftovers() {
        let r = rewriter();
        assert!(r.mentions_upstream("see http://up:9000/fhir2"));
        assert!(!r.mentions_upstream("https://gw.example/fhir/Patient"));
    }
}
