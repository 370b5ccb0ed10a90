//! Code lists as data: the entry syntax shared by the Part 2 code sets
//! (`policies/part2/*.txt`) and the drug markers of `policies/prior-auth.toml`
//! — `CODE`, `PREFIX*`, `LOW..HIGH`, `!ENTRY` — with per-system
//! normalisation (ICD dots, NDC formats).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a: the code-set maps are looked up once per coding on the hot path
/// with short keys (system URIs, codes); their keys come from policy data,
/// so a keyed (DoS-resistant) hash buys nothing here.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;
pub type FastSet<K> = HashSet<K, BuildHasherDefault<Fnv>>;

/// How codes of a set are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Upper case, dots removed (`F11.23` = `F1123`).
    Icd,
    /// Upper case, surrounding spaces trimmed.
    Upper,
    /// NDC in 11 digits (5-4-2), so every NDC spelling compares equal.
    Ndc,
    /// As written.
    None,
}

impl Normalize {
    pub fn parse(s: &str) -> Option<Normalize> {
        Some(match s {
            "icd" => Normalize::Icd,
            "upper" => Normalize::Upper,
            "ndc" => Normalize::Ndc,
            "none" => Normalize::None,
            _ => return None,
        })
    }

    /// Call `f` with the code in its comparable form, without allocating
    /// for the usual short codes; `None` when it cannot be read.
    pub fn with<R>(self, code: &str, f: impl FnOnce(&str) -> R) -> Option<R> {
        if self == Normalize::Icd {
            let trimmed = code.trim();
            if trimmed.len() <= 32 {
                let mut buf = [0u8; 32];
                let mut n = 0;
                for b in trimmed.bytes().filter(|b| *b != b'.') {
                    buf[n] = b.to_ascii_uppercase();
                    n += 1;
                }
                // Only ASCII bytes changed: still UTF-8.
                return std::str::from_utf8(&buf[..n]).ok().map(f);
            }
        }
        self.code(code).map(|c| f(&c))
    }

    /// A code in its comparable form; `None` when it cannot be read (an NDC
    /// that is not one).
    pub fn code<'a>(self, code: &'a str) -> Option<Cow<'a, str>> {
        match self {
            Normalize::None => Some(Cow::Borrowed(code)),
            Normalize::Upper => {
                let trimmed = code.trim();
                if trimmed.bytes().any(|b| b.is_ascii_lowercase()) {
                    Some(Cow::Owned(trimmed.to_ascii_uppercase()))
                } else {
                    Some(Cow::Borrowed(trimmed))
                }
            }
            Normalize::Icd => {
                let trimmed = code.trim();
                if trimmed.bytes().any(|b| b == b'.' || b.is_ascii_lowercase()) {
                    Some(Cow::Owned(
                        trimmed.chars().filter(|c| *c != '.').map(|c| c.to_ascii_uppercase()).collect(),
                    ))
                } else {
                    Some(Cow::Borrowed(trimmed))
                }
            }
            Normalize::Ndc => ndc11(code).map(Cow::Owned),
        }
    }
}

/// An NDC as 11 digits (5-4-2). Dashed 10-digit forms (4-4-2, 5-3-2, 5-4-1)
/// are padded where their segment is short; 11 digits are taken as they are.
/// A bare 10-digit code is ambiguous and is `None` (the caller tries every
/// reading, see [`ndc_readings`]).
pub fn ndc11(code: &str) -> Option<String> {
    let code = code.trim();
    let parts: Vec<&str> = code.split('-').collect();
    if parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    match parts.as_slice() {
        [all] if all.len() == 11 => Some((*all).to_owned()),
        [l, p, k] => {
            let (l, p, k) = match (l.len(), p.len(), k.len()) {
                (5, 4, 2) => (l.to_string(), p.to_string(), k.to_string()),
                (4, 4, 2) => (format!("0{l}"), p.to_string(), k.to_string()),
                (5, 3, 2) => (l.to_string(), format!("0{p}"), k.to_string()),
                (5, 4, 1) => (l.to_string(), p.to_string(), format!("0{k}")),
                _ => return None,
            };
            Some(format!("{l}{p}{k}"))
        }
        _ => None,
    }
}

/// Every 11-digit reading of a bare 10-digit NDC (4-4-2, 5-3-2, 5-4-1).
pub fn ndc_readings(code: &str) -> Vec<String> {
    let code = code.trim();
    if code.len() != 10 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Vec::new();
    }
    vec![
        format!("0{code}"),
        format!("{}0{}", &code[..5], &code[5..]),
        format!("{}0{}", &code[..9], &code[9..]),
    ]
}

/// One list of entries (inclusions and exclusions) after normalisation.
#[derive(Debug, Clone, Default)]
pub struct CodeList {
    include: Entries,
    exclude: Entries,
}

#[derive(Debug, Clone, Default)]
struct Entries {
    exact: FastSet<String>,
    prefixes: Vec<String>,
    ranges: Vec<(String, String)>,
}

impl Entries {
    fn matches(&self, code: &str) -> bool {
        self.exact.contains(code)
            || self.prefixes.iter().any(|p| code.starts_with(p.as_str()))
            || self
                .ranges
                .iter()
                .any(|(low, high)| code.len() == low.len() && code >= low.as_str() && code <= high.as_str())
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty() && self.ranges.is_empty()
    }
}

impl CodeList {
    /// Parse list text (one entry per line, `#` comments) or a list of
    /// entries. Errors name the line.
    pub fn parse<'l>(
        lines: impl IntoIterator<Item = &'l str>,
        normalize: Normalize,
    ) -> Result<CodeList, String> {
        let mut list = CodeList::default();
        for (number, line) in lines.into_iter().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (target, entry) = match line.strip_prefix('!') {
                Some(rest) => (&mut list.exclude, rest.trim()),
                None => (&mut list.include, line),
            };
            if entry.split_whitespace().count() != 1 {
                return Err(format!("line {}: one entry per line, got {line:?}", number + 1));
            }
            let norm = |code: &str| -> Result<String, String> {
                let normalized = match normalize {
                    // An NDC entry is a product (5-4, every package) or a
                    // package (5-4-2 or 11 digits).
                    Normalize::Ndc => match code.split('-').collect::<Vec<_>>().as_slice() {
                        [l, p]
                            if l.len() == 5
                                && p.len() == 4
                                && (l.to_string() + p).bytes().all(|b| b.is_ascii_digit()) =>
                        {
                            return Ok(format!("{l}{p}"));
                        }
                        _ => ndc11(code),
                    },
                    other => other.code(code).map(Cow::into_owned),
                };
                normalized
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| format!("line {}: {code:?} is not a valid code", number + 1))
            };
            if let Some(prefix) = entry.strip_suffix('*') {
                target.prefixes.push(norm(prefix)?);
            } else if let Some((low, high)) = entry.split_once("..") {
                let (low, high) = (norm(low)?, norm(high)?);
                if low.len() != high.len() || low > high {
                    return Err(format!(
                        "line {}: range {entry} must run low..high over codes of one length",
                        number + 1
                    ));
                }
                target.ranges.push((low, high));
            } else if normalize == Normalize::Ndc && entry.split('-').count() == 2 {
                // labeler-product: every package of the product.
                target.prefixes.push(norm(entry)?);
            } else {
                target.exact.insert(norm(entry)?);
            }
        }
        if list.include.is_empty() {
            return Err("no entries".into());
        }
        Ok(list)
    }

    /// Does the (already normalised) code match?
    pub fn matches(&self, code: &str) -> bool {
        self.include.matches(code) && !self.exclude.matches(code)
    }
}

/// One named code set: its normalisation and list.
#[derive(Debug, Clone)]
pub struct CodeSet {
    pub name: String,
    pub normalize: Normalize,
    pub list: CodeList,
}

impl CodeSet {
    pub fn matches(&self, code: &str) -> bool {
        if self.normalize == Normalize::Ndc && !code.contains('-') && code.trim().len() == 10 {
            return ndc_readings(code).iter().any(|c| self.list.matches(c));
        }
        self.normalize.with(code, |c| self.list.matches(c)).unwrap_or(false)
    }
}

/// Code sets indexed by code system.
#[derive(Debug, Clone, Default)]
pub struct CodeSets {
    sets: Vec<CodeSet>,
    by_system: FastMap<String, Vec<usize>>,
    /// Lengths of the listed systems (bit per length below 256): most
    /// codings name a system of another length and need no hash at all.
    lengths: [u64; 4],
}

impl CodeSets {
    pub fn add(&mut self, set: CodeSet, systems: &[String]) {
        let index = self.sets.len();
        self.sets.push(set);
        for system in systems {
            self.by_system.entry(system.clone()).or_default().push(index);
            if system.len() < 256 {
                self.lengths[system.len() / 64] |= 1 << (system.len() % 64);
            } else {
                self.lengths = [u64::MAX; 4];
            }
        }
    }

    /// Does the coding match a set? A coding without a system is tried
    /// against every set (fail closed); an unknown system matches nothing.
    pub fn matches(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            Some(system)
                if system.len() < 256
                    && self.lengths[system.len() / 64] & (1 << (system.len() % 64)) == 0 =>
            {
                false
            }
            Some(system) => self
                .by_system
                .get(system)
                .is_some_and(|sets| sets.iter().any(|i| self.sets[*i].matches(code))),
            None => self.sets.iter().any(|s| s.matches(code)),
        }
    }

    /// The name of the first set that matches (tests, explanations).
    pub fn which(&self, system: Option<&str>, code: &str) -> Option<&str> {
        let candidates: Vec<usize> = match system {
            Some(system) => self.by_system.get(system).cloned().unwrap_or_default(),
            None => (0..self.sets.len()).collect(),
        };
        candidates.into_iter().map(|i| &self.sets[i]).find(|s| s.matches(code)).map(|s| s.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str, n: Normalize) -> CodeList {
        CodeList::parse(text.lines(), n).unwrap()
    }

    #[test]
    fn entry_forms() {
        let l = list("F10*\nZ71.41 # counseling\nH0001..H0050\n!F10.9*\n", Normalize::Icd);
        for yes in ["F1020", "F10", "Z7141", "H0001", "H0050", "H0020"] {
            assert!(l.matches(yes), "{yes}");
        }
        for no in ["F17210", "F109", "F1090", "Z714", "H0051", "H00011", "G0001"] {
            assert!(!l.matches(no), "{no}");
        }
    }

    #[test]
    fn icd_normalisation() {
        assert_eq!(Normalize::Icd.code("f11.23").as_deref(), Some("F1123"));
        assert_eq!(Normalize::Icd.code("F1123").as_deref(), Some("F1123"));
        assert!(matches!(Normalize::Icd.code("F1123"), Some(Cow::Borrowed(_))));
    }

    #[test]
    fn ndc_forms() {
        assert_eq!(ndc11("12496-1208-03").as_deref(), Some("12496120803"));
        assert_eq!(ndc11("0054-4538-44").as_deref(), Some("00054453844"));
        assert_eq!(ndc11("12496-208-03").as_deref(), Some("12496020803"));
        assert_eq!(ndc11("12496-1208-3").as_deref(), Some("12496120803"));
        assert_eq!(ndc11("12496120803").as_deref(), Some("12496120803"));
        assert_eq!(ndc11("1249612080"), None);
        assert_eq!(ndc11("12a96-1208-03"), None);
        let set = CodeSet {
            name: "ndc".into(),
            normalize: Normalize::Ndc,
            list: list("12496-1208\n00054-4538-44\n", Normalize::Ndc),
        };
        for yes in ["12496-1208-03", "12496-1208-99", "12496120803", "0054-4538-44", "00054453844"] {
            assert!(set.matches(yes), "{yes}");
        }
        assert!(set.matches("0054453844"), "bare 10 digits, 4-4-2 reading");
        assert!(!set.matches("00054-4538-45"));
        assert!(!set.matches("12496-1209-03"));
        assert!(!set.matches("not an ndc"));
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(CodeList::parse("".lines(), Normalize::Upper).is_err());
        assert!(CodeList::parse("A B\n".lines(), Normalize::Upper).is_err());
        assert!(CodeList::parse("H0050..H0001\n".lines(), Normalize::Upper).is_err());
        assert!(CodeList::parse("H001..H0050\n".lines(), Normalize::Upper).is_err());
        assert!(CodeList::parse("1234-5\n".lines(), Normalize::Ndc).is_err());
    }

    #[test]
    fn sets_by_system() {
        let mut sets = CodeSets::default();
        sets.add(
            CodeSet { name: "icd".into(), normalize: Normalize::Icd, list: list("F11*\n", Normalize::Icd) },
            &["http://hl7.org/fhir/sid/icd-10-cm".into()],
        );
        assert!(sets.matches(Some("http://hl7.org/fhir/sid/icd-10-cm"), "F11.20"));
        assert!(!sets.matches(Some("http://snomed.info/sct"), "F11.20"));
        assert!(sets.matches(None, "F11.20"), "no system: every set");
        assert_eq!(sets.which(None, "F11.20"), Some("icd"));
    }
}
