//! Typed views of the FHIR R4 JSON fields plugins read, and the
//! normalisation matching needs. Views deserialize only their fields (serde
//! skips the rest), so reading a Patient costs a few microseconds.

use serde::Deserialize;

/// `Identifier` (value, system, type codes).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Identifier {
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<CodeableConcept>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CodeableConcept {
    #[serde(default)]
    pub coding: Vec<Coding>,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Coding {
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

impl CodeableConcept {
    pub fn has_code(&self, code: &str) -> bool {
        self.coding.iter().any(|c| c.code.as_deref() == Some(code))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct HumanName {
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub given: Vec<String>,
    /// `Jr`, `Sr`, `III`, `MD`...
    #[serde(default)]
    pub suffix: Vec<String>,
    #[serde(default)]
    pub text: Option<String>,
}

impl HumanName {
    /// A former name (`use` old or maiden).
    pub fn is_former(&self) -> bool {
        matches!(self.use_.as_deref(), Some("old" | "maiden"))
    }

    /// The generational suffix (`Jr`, `Sr`, `II`..`V`), normalised to
    /// lower case: `jr`, `sr`, `ii`...; other suffixes (`MD`) are ignored.
    pub fn generation(&self) -> Option<String> {
        self.suffix.iter().find_map(|s| {
            let s = normalize_name(s).replace(' ', "");
            match s.as_str() {
                "jr" | "junior" => Some("jr".to_owned()),
                "sr" | "senior" => Some("sr".to_owned()),
                "i" | "ii" | "iii" | "iv" | "v" => Some(s),
                "2nd" | "3rd" => Some(if s == "2nd" { "ii" } else { "iii" }.to_owned()),
                _ => None,
            }
        })
    }
}

/// `ContactPoint` (phone, email...).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContactPoint {
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Address {
    #[serde(default)]
    pub line: Vec<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default, rename = "postalCode")]
    pub postal_code: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Reference {
    #[serde(default)]
    pub reference: Option<String>,
}

/// The Patient fields matching uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Patient {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub identifier: Vec<Identifier>,
    #[serde(default)]
    pub name: Vec<HumanName>,
    #[serde(default)]
    pub gender: Option<String>,
    #[serde(default, rename = "birthDate")]
    pub birth_date: Option<String>,
    #[serde(default)]
    pub address: Vec<Address>,
    #[serde(default)]
    pub telecom: Vec<ContactPoint>,
}

impl Patient {
    pub fn parse(json: &str) -> Result<Patient, String> {
        serde_json::from_str(json).map_err(|e| format!("Patient: {e}"))
    }

    /// The official name, else the first one.
    pub fn main_name(&self) -> Option<&HumanName> {
        self.name.iter().find(|n| n.use_.as_deref() == Some("official")).or_else(|| self.name.first())
    }
}

/// The Coverage fields matching uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Coverage {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub identifier: Vec<Identifier>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, rename = "subscriberId")]
    pub subscriber_id: Option<String>,
    #[serde(default)]
    pub beneficiary: Option<Reference>,
    #[serde(default)]
    pub dependent: Option<String>,
}

impl Coverage {
    pub fn parse(json: &str) -> Result<Coverage, String> {
        serde_json::from_str(json).map_err(|e| format!("Coverage: {e}"))
    }
}

/// The fields every resource has that policy reads: type, id, security labels.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResourceHead {
    #[serde(default, rename = "resourceType")]
    pub resource_type: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub meta: Option<Meta>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub security: Vec<Coding>,
}

impl ResourceHead {
    pub fn parse(json: &str) -> Result<ResourceHead, String> {
        serde_json::from_str(json).map_err(|e| format!("resource: {e}"))
    }

    /// Does `meta.security` carry `code` (any system)?
    pub fn has_security_code(&self, code: &str) -> bool {
        self.meta.as_ref().is_some_and(|m| m.security.iter().any(|c| c.code.as_deref() == Some(code)))
    }
}

/// Upper-case ASCII letters and digits only: `fw 100-0569 01` -> `FW100056901`.
pub fn normalize_identifier(value: &str) -> String {
    value.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect()
}

/// A US phone number as its 10 digits (`(401) 555-0134`, `+1 401 555 0134`
/// -> `4015550134`); `None` when it is not 10 digits (or 11 with a leading 1).
pub fn normalize_phone(value: &str) -> Option<String> {
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    match digits.len() {
        10 => Some(digits),
        11 if digits.starts_with('1') => Some(digits[1..].to_owned()),
        _ => None,
    }
}

/// An e-mail address trimmed and lower-cased; `None` unless it has the
/// shape `local@domain`.
pub fn normalize_email(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches("mailto:").to_ascii_lowercase();
    let (local, domain) = v.split_once('@')?;
    (!local.is_empty() && domain.contains('.') && !v.contains(char::is_whitespace)).then_some(v)
}

/// The first five digits of a US postal code (`02903-1234` -> `02903`);
/// `None` otherwise.
pub fn postal5(value: &str) -> Option<String> {
    let digits: String = value.chars().filter(char::is_ascii_digit).take(5).collect();
    (digits.len() == 5).then_some(digits)
}

/// The street part of an address line as comparable words: house number
/// first, street words lower-case with diacritics folded, the usual
/// abbreviations expanded to one form (`St`/`Street` -> `st`, `N` ->
/// `north`...), and the unit (`Apt 4`, `#4`, `Unit 4`) dropped:
/// `"2030 NARRAGANSETT BOULEVARD, #4"` -> `["2030", "narragansett", "blvd"]`.
/// `None` without a house number and a street word.
pub fn street_key(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let cut = line.find([',', '#']).unwrap_or(line.len());
    for raw in line[..cut].split(|c: char| c.is_whitespace() || c == '.') {
        if raw.is_empty() {
            continue;
        }
        let w: String = if raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && raw.chars().any(|c| c.is_ascii_digit())
        {
            raw.to_ascii_lowercase()
        } else {
            normalize_name(raw).replace(' ', "")
        };
        if w.is_empty() {
            continue;
        }
        if matches!(
            w.as_str(),
            "apt" | "apartment" | "unit" | "ste" | "suite" | "fl" | "floor" | "rm" | "room"
        ) {
            break;
        }
        let w = match w.as_str() {
            "street" | "str" => "st",
            "avenue" | "av" => "ave",
            "road" => "rd",
            "lane" => "ln",
            "drive" => "dr",
            "court" => "ct",
            "place" => "pl",
            "boulevard" => "blvd",
            "terrace" => "ter",
            "circle" => "cir",
            "highway" => "hwy",
            "parkway" => "pkwy",
            "square" => "sq",
            "n" => "north",
            "s" => "south",
            "e" => "east",
            "w" => "west",
            other => other,
        };
        words.push(w.to_owned());
    }
    let numbered = words.first().is_some_and(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()));
    (numbered && words.len() >= 2).then_some(words)
}

/// Lower-case, diacritics folded, letters only, words separated by one
/// space: `  Núñez-O'Brien ` -> `nunez obrien`.
pub fn normalize_name(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut pending_space = false;
    for c in value.chars() {
        if c == '\'' || c == '’' || c == '.' {
            continue;
        }
        let folded = fold(c);
        if folded.is_empty() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push_str(folded);
    }
    out
}

/// The words of a normalised name.
pub fn name_tokens(value: &str) -> Vec<String> {
    normalize_name(value).split(' ').filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// A letter as lower-case ASCII with diacritics removed ("" for non-letters).
fn fold(c: char) -> &'static str {
    const ASCII: [&str; 26] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t",
        "u", "v", "w", "x", "y", "z",
    ];
    if c.is_ascii_alphabetic() {
        return ASCII[(c.to_ascii_lowercase() as u8 - b'a') as usize];
    }
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' | 'Ā'
        | 'Ă' | 'Ą' => "a",
        'æ' | 'Æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' | 'Ç' | 'Ć' | 'Ĉ' | 'Ċ' | 'Č' => "c",
        'ď' | 'đ' | 'Ď' | 'Đ' | 'ð' | 'Ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' | 'È' | 'É' | 'Ê' | 'Ë' | 'Ē' | 'Ĕ' | 'Ė'
        | 'Ę' | 'Ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' | 'Ĝ' | 'Ğ' | 'Ġ' | 'Ģ' => "g",
        'ĥ' | 'ħ' | 'Ĥ' | 'Ħ' => "h",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' | 'Ì' | 'Í' | 'Î' | 'Ï' | 'Ĩ' | 'Ī' | 'Ĭ'
        | 'Į' | 'İ' => "i",
        'ĵ' | 'Ĵ' => "j",
        'ķ' | 'Ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' | 'Ĺ' | 'Ļ' | 'Ľ' | 'Ŀ' | 'Ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' | 'Ñ' | 'Ń' | 'Ņ' | 'Ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' | 'Ō'
        | 'Ŏ' | 'Ő' => "o",
        'œ' | 'Œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' | 'Ŕ' | 'Ŗ' | 'Ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' | 'Ś' | 'Ŝ' | 'Ş' | 'Š' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' | 'Ţ' | 'Ť' | 'Ŧ' => "t",
        'þ' | 'Þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' | 'Ù' | 'Ú' | 'Û' | 'Ü' | 'Ũ' | 'Ū'
        | 'Ŭ' | 'Ů' | 'Ű' | 'Ų' => "u",
        'ŵ' | 'Ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' | 'Ý' | 'Ÿ' | 'Ŷ' => "y",
        'ź' | 'ż' | 'ž' | 'Ź' | 'Ż' | 'Ž' => "z",
        _ => "",
    }
}

/// A FHIR date `YYYY-MM-DD` as (year, month, day).
pub fn parse_date(value: &str) -> Option<(u16, u8, u8)> {
    let b = value.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year: u16 = value.get(0..4)?.parse().ok()?;
    let month: u8 = value.get(5..7)?.parse().ok()?;
    let day: u8 = value.get(8..10)?.parse().ok()?;
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some((year, month, day))
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(year: u16, month: u8, day: u8) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Levenshtein distance, stopping early once it exceeds `max`.
pub fn edit_distance(a: &str, b: &str, max: usize) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > max {
        return max + 1;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        let mut row_min = cur[0];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            // Transposition (Damerau): "jonh" vs "john" is one typo.
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev[j - 1].saturating_sub(cost) + 1).min(cur[j]);
            }
            row_min = row_min.min(cur[j]);
        }
        if row_min > max {
            return max + 1;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_and_split() {
        assert_eq!(normalize_name("  Núñez-O'Brien "), "nunez obrien");
        assert_eq!(normalize_name("José  María"), "jose maria");
        assert_eq!(normalize_name("Ørsted"), "orsted");
        assert_eq!(name_tokens("García-López"), vec!["garcia", "lopez"]);
    }

    #[test]
    fn contacts_normalise() {
        assert_eq!(normalize_phone("(401) 555-0134").as_deref(), Some("4015550134"));
        assert_eq!(normalize_phone("+1 401 555 0134").as_deref(), Some("4015550134"));
        assert_eq!(normalize_phone("555-0134"), None);
        assert_eq!(normalize_email(" Ann.Lee@Example.ORG ").as_deref(), Some("ann.lee@example.org"));
        assert_eq!(normalize_email("not an email"), None);
        assert_eq!(postal5("02903-1234").as_deref(), Some("02903"));
        assert_eq!(postal5("029"), None);
        assert_eq!(street_key("2030 NARRAGANSETT BOULEVARD, #4"), street_key("2030 Narragansett Blvd"));
        assert_eq!(street_key("12 N. Main Street Apt 3").unwrap(), vec!["12", "north", "main", "st"]);
        assert_eq!(street_key("PO Box"), None);
        let name = HumanName { suffix: vec!["Jr.".into()], ..HumanName::default() };
        assert_eq!(name.generation().as_deref(), Some("jr"));
    }

    #[test]
    fn identifiers_normalise() {
        assert_eq!(normalize_identifier("fw 100-0569 01"), "FW100056901");
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1998-03-31"), Some((1998, 3, 31)));
        assert_eq!(parse_date("1998-13-01"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28), 2);
    }

    #[test]
    fn edits() {
        assert_eq!(edit_distance("smith", "smyth", 2), 1);
        assert_eq!(edit_distance("john", "jonh", 2), 1);
        assert_eq!(edit_distance("anna", "anna", 2), 0);
        assert!(edit_distance("smith", "jones", 2) > 2);
    }
}
