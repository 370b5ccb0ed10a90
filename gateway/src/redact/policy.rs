//! The redaction policy as data, loaded once at startup from `policies/`:
//! the copy compiled into fhirwall, with any file present in `policy.dir`
//! taking the place of its built-in twin. Anything missing or malformed is a
//! startup error naming the file: fhirwall never runs with half a policy.
//!
//! Files (paths relative to the policy directory):
//! - `part2/codesets.toml` and the code lists it names (`part2/*.txt`)
//! - `part2/labels.toml`, `part2/programs.toml`, `part2/redaction.toml`
//! - `service-dates.toml`, `prior-auth.toml`, `financial.toml`

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::codes::{CodeList, CodeSet, CodeSets, FastMap, FastSet, Normalize};

/// The files compiled into fhirwall (`policies/` of the source tree).
const BUILTIN: &[(&str, &str)] = &[
    ("part2/codesets.toml", include_str!("../../../policies/part2/codesets.toml")),
    ("part2/icd10cm.txt", include_str!("../../../policies/part2/icd10cm.txt")),
    ("part2/icd10pcs.txt", include_str!("../../../policies/part2/icd10pcs.txt")),
    ("part2/icd9cm.txt", include_str!("../../../policies/part2/icd9cm.txt")),
    ("part2/snomed.txt", include_str!("../../../policies/part2/snomed.txt")),
    ("part2/procedures.txt", include_str!("../../../policies/part2/procedures.txt")),
    ("part2/revenue.txt", include_str!("../../../policies/part2/revenue.txt")),
    ("part2/msdrg.txt", include_str!("../../../policies/part2/msdrg.txt")),
    ("part2/rxnorm.txt", include_str!("../../../policies/part2/rxnorm.txt")),
    ("part2/ndc.txt", include_str!("../../../policies/part2/ndc.txt")),
    ("part2/labels.toml", include_str!("../../../policies/part2/labels.toml")),
    ("part2/programs.toml", include_str!("../../../policies/part2/programs.toml")),
    ("part2/redaction.toml", include_str!("../../../policies/part2/redaction.toml")),
    ("service-dates.toml", include_str!("../../../policies/service-dates.toml")),
    ("prior-auth.toml", include_str!("../../../policies/prior-auth.toml")),
    ("financial.toml", include_str!("../../../policies/financial.toml")),
];

/// A policy file that cannot be used. fhirwall does not start.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy.dir {0}: not a directory")]
    NoDir(PathBuf),
    #[error("policy file {file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("policy file {file}: missing (not in policy.dir and not built in)")]
    Missing { file: String },
    #[error("policy file {file}: {message}")]
    Invalid { file: String, message: String },
    #[error("policy.part2_programs: {0}")]
    Programs(String),
}

/// Required (min cardinality 1) top-level elements per type (FHIR R4), and
/// elements that are never removable: redaction must leave valid resources.
const REQUIRED: &[(&str, &[&str])] = &[
    (
        "ExplanationOfBenefit",
        &["status", "type", "use", "patient", "created", "insurer", "provider", "outcome", "insurance"],
    ),
    ("Claim", &["status", "type", "use", "patient", "created", "provider", "priority", "insurance"]),
    ("ClaimResponse", &["status", "type", "use", "patient", "created", "insurer", "outcome"]),
    ("Encounter", &["status", "class"]),
    ("Procedure", &["status", "subject"]),
    (
        "MedicationRequest",
        &["status", "intent", "subject", "medicationCodeableConcept", "medicationReference"],
    ),
    ("ServiceRequest", &["status", "intent", "subject"]),
    ("Condition", &["subject"]),
    ("Observation", &["status", "code"]),
    ("MedicationDispense", &["status", "medicationCodeableConcept", "medicationReference"]),
    ("Coverage", &["status", "beneficiary", "payor"]),
    ("Patient", &[]),
];
const NEVER_REMOVABLE: &[&str] =
    &["resourceType", "id", "meta", "implicitRules", "language", "text", "contained", "modifierExtension"];

/// A type's service-date tiers: each tier a list of element paths, each
/// path a list of member names (`service-dates.toml`).
pub type DateTiers = Vec<Vec<Vec<String>>>;

/// Everything the redactor reads from `policies/`.
#[derive(Debug)]
pub struct Policies {
    pub codes: CodeSets,
    pub labels: Labels,
    pub programs: Programs,
    pub redaction: HashMap<String, RedactionRule>,
    /// Per type: tiers of element paths (see `service-dates.toml`).
    pub dates: HashMap<String, DateTiers>,
    pub prior_auth: PriorAuth,
    pub financial: Financial,
    /// Where each file came from (`built-in` or a path), for the startup log.
    pub sources: Vec<(String, String)>,
}

/// Part 2 security labels.
#[derive(Debug, Default)]
pub struct Labels {
    /// Few systems: a list beats hashing a long URI per coding.
    by_system: Vec<(String, HashSet<String>)>,
    pub basis_extension: String,
    pub inline_extension: String,
    pub redacted: RedactedLabel,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactedLabel {
    pub system: String,
    pub code: String,
    #[serde(default)]
    pub display: Option<String>,
}

impl Labels {
    pub fn matches(&self, system: Option<&str>, code: &str) -> bool {
        let Some(system) = system else { return false };
        self.by_system.iter().any(|(s, codes)| s == system && codes.contains(code))
    }

    fn add(&mut self, system: String, codes: Vec<String>) {
        match self.by_system.iter_mut().find(|(s, _)| *s == system) {
            Some((_, existing)) => existing.extend(codes),
            None => self.by_system.push((system, codes.into_iter().collect())),
        }
    }
}

/// Part 2 programs: `Organization/{id}` references and NPIs.
#[derive(Debug, Default, Clone)]
pub struct Programs {
    /// Bare Organization ids.
    pub organizations: FastSet<String>,
    pub npis: FastSet<String>,
}

pub const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";

impl Programs {
    /// Add `Organization/{id}` or a 10-digit NPI.
    pub fn add(&mut self, entry: &str) -> Result<(), String> {
        let entry = entry.trim();
        if let Some(id) = entry.strip_prefix("Organization/") {
            if !crate::fhir::search::is_fhir_id(id) {
                return Err(format!("{entry:?}: not Organization/{{id}}"));
            }
            self.organizations.insert(id.to_owned());
        } else if entry.len() == 10 && entry.bytes().all(|b| b.is_ascii_digit()) {
            self.npis.insert(entry.to_owned());
        } else {
            return Err(format!("{entry:?}: neither Organization/{{id}} nor a 10-digit NPI"));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.organizations.is_empty() && self.npis.is_empty()
    }

    /// Does a literal reference name a program? Relative, absolute (any
    /// server: fail closed) and versioned forms all count.
    pub fn matches_reference(&self, reference: &str) -> bool {
        if self.organizations.is_empty() {
            return false;
        }
        let reference = reference.split(['?', '#']).next().unwrap_or("");
        let reference = match crate::fhir::history_at(reference) {
            Some(at) => &reference[..at],
            None => reference,
        };
        let mut segments = reference.rsplit('/');
        let id = segments.next().unwrap_or("");
        segments.next() == Some("Organization") && self.organizations.contains(id)
    }

    /// Does an identifier (system, value) carry a program NPI? An identifier
    /// without a system counts (fail closed).
    pub fn matches_identifier(&self, system: Option<&str>, value: &str) -> bool {
        matches!(system, None | Some(NPI_SYSTEM) | Some("urn:oid:2.16.840.1.113883.4.6"))
            && self.npis.contains(value.trim())
    }
}

/// Partial redaction rules of one type (`part2/redaction.toml`).
#[derive(Debug, Default, Clone)]
pub struct RedactionRule {
    pub removable: HashSet<String>,
    pub nonempty: Vec<String>,
    pub links: Vec<Link>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub from_member: String,
    pub from_field: String,
    pub to_member: String,
    pub to_field: String,
    /// Remove the referring entry (true) or only the number (false).
    pub remove: bool,
    /// Removing a referring entry removes the targets it names.
    pub owns: bool,
}

/// Prior authorization rules (`prior-auth.toml`).
#[derive(Debug, Default)]
pub struct PriorAuth {
    pub types: HashSet<String>,
    pub markers: Vec<Marker>,
}

/// A drug-PA marker: a CodeableConcept element and the codings that mark it.
#[derive(Debug)]
pub struct Marker {
    pub element: Vec<String>,
    pub systems: FastSet<String>,
    pub codes: Option<CodeList>,
}

impl Marker {
    pub fn matches(&self, system: Option<&str>, code: &str) -> bool {
        system.is_some_and(|s| self.systems.contains(s))
            && self.codes.as_ref().is_none_or(|l| Normalize::Upper.code(code).is_some_and(|c| l.matches(&c)))
    }
}

/// Financial stripping rules (`financial.toml`).
#[derive(Debug, Default)]
pub struct Financial {
    pub line_elements: Vec<String>,
    pub types: HashMap<String, FinancialType>,
    monetary: FastMap<String, HashSet<String>>,
    pub profiles: HashMap<String, String>,
}

#[derive(Debug, Default, Clone)]
pub struct FinancialType {
    pub remove: Vec<String>,
    pub walk: Vec<String>,
}

impl Financial {
    pub fn is_monetary(&self, system: Option<&str>, code: &str) -> bool {
        system.and_then(|s| self.monetary.get(s)).is_some_and(|codes| codes.contains(code))
    }
}

// ---------------------------------------------------------------- file formats

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeSetsFile {
    set: Vec<CodeSetEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeSetEntry {
    name: String,
    file: String,
    normalize: String,
    systems: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsFile {
    label: Vec<LabelEntry>,
    extensions: LabelExtensions,
    redacted: RedactedLabel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelEntry {
    system: String,
    codes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelExtensions {
    basis: String,
    inline: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgramsFile {
    #[serde(default)]
    organizations: Vec<String>,
    #[serde(default)]
    npis: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactionEntry {
    removable: Vec<String>,
    #[serde(default)]
    nonempty: Vec<String>,
    #[serde(default)]
    link: Vec<LinkEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    from: String,
    to: String,
    on_removed: String,
    #[serde(default)]
    owns: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DatesEntry {
    tiers: Vec<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriorAuthFile {
    types: Vec<String>,
    drug: Vec<MarkerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkerEntry {
    element: String,
    systems: Vec<String>,
    #[serde(default)]
    codes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinancialFile {
    line_elements: Vec<String>,
    types: HashMap<String, FinancialTypeEntry>,
    monetary: Vec<LabelEntry>,
    #[serde(default)]
    profiles: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinancialTypeEntry {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    walk: Vec<String>,
}

/// Where policy files are read from.
struct Source<'d> {
    dir: Option<&'d Path>,
    sources: Vec<(String, String)>,
}

impl Source<'_> {
    fn read(&mut self, file: &str) -> Result<Cow<'static, str>, PolicyError> {
        if file.contains("..") || file.starts_with('/') {
            return Err(PolicyError::Invalid {
                file: file.into(),
                message: "paths stay inside the policy dir".into(),
            });
        }
        if let Some(dir) = self.dir {
            let path = dir.join(file);
            if path.is_file() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| PolicyError::Read { file: path.display().to_string(), source })?;
                self.sources.push((file.to_owned(), path.display().to_string()));
                return Ok(Cow::Owned(text));
            }
        }
        let text = BUILTIN
            .iter()
            .find(|(name, _)| *name == file)
            .map(|(_, text)| *text)
            .ok_or_else(|| PolicyError::Missing { file: file.to_owned() })?;
        self.sources.push((file.to_owned(), "built-in".to_owned()));
        Ok(Cow::Borrowed(text))
    }

    fn toml<T: serde::de::DeserializeOwned>(&mut self, file: &str) -> Result<T, PolicyError> {
        let text = self.read(file)?;
        toml::from_str(&text).map_err(|e| invalid(file, e.to_string()))
    }
}

fn invalid(file: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid { file: file.to_owned(), message: message.into() }
}

fn split_path(path: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
    (!parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')))
        .then_some(parts)
}

impl Policies {
    /// The policies compiled into fhirwall.
    pub fn builtin() -> Result<Policies, PolicyError> {
        Policies::load(None)
    }

    /// Load the policies: `dir` (if any) overrides built-in files one by one.
    pub fn load(dir: Option<&Path>) -> Result<Policies, PolicyError> {
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            return Err(PolicyError::NoDir(dir.to_owned()));
        }
        let mut src = Source { dir, sources: Vec::new() };

        let codes = load_codes(&mut src)?;
        let labels = load_labels(&mut src)?;
        let programs = load_programs(&mut src)?;
        let redaction = load_redaction(&mut src)?;

        let dates = load_dates(&mut src)?;
        let prior_auth = load_prior_auth(&mut src)?;
        let financial = load_financial(&mut src)?;
        Ok(Policies {
            codes,
            labels,
            programs,
            redaction,
            dates,
            prior_auth,
            financial,
            sources: src.sources,
        })
    }
}

fn load_codes(src: &mut Source<'_>) -> Result<CodeSets, PolicyError> {
    let mut codes = CodeSets::default();
    let manifest: CodeSetsFile = src.toml("part2/codesets.toml")?;
    for set in manifest.set {
        let normalize = Normalize::parse(&set.normalize).ok_or_else(|| {
            invalid("part2/codesets.toml", format!("{}: unknown normalize {:?}", set.name, set.normalize))
        })?;
        if set.systems.is_empty() {
            return Err(invalid("part2/codesets.toml", format!("{}: no systems", set.name)));
        }
        if set.file.contains('/') {
            return Err(invalid("part2/codesets.toml", format!("{}: file names a path", set.name)));
        }
        let file = format!("part2/{}", set.file);
        let text = src.read(&file)?;
        let list = CodeList::parse(text.lines(), normalize).map_err(|e| invalid(&file, e))?;
        codes.add(CodeSet { name: set.name, normalize, list }, &set.systems);
    }
    Ok(codes)
}

fn load_labels(src: &mut Source<'_>) -> Result<Labels, PolicyError> {
    let labels_file: LabelsFile = src.toml("part2/labels.toml")?;
    let mut labels = Labels {
        by_system: Vec::new(),
        basis_extension: labels_file.extensions.basis,
        inline_extension: labels_file.extensions.inline,
        redacted: labels_file.redacted,
    };
    for entry in labels_file.label {
        if entry.codes.is_empty() {
            return Err(invalid("part2/labels.toml", format!("{}: no codes", entry.system)));
        }
        labels.add(entry.system, entry.codes);
    }
    if labels.matches(Some(&labels.redacted.system), &labels.redacted.code) {
        return Err(invalid("part2/labels.toml", "the REDACTED label must not itself be a Part 2 label"));
    }
    Ok(labels)
}

fn load_programs(src: &mut Source<'_>) -> Result<Programs, PolicyError> {
    let programs_file: ProgramsFile = src.toml("part2/programs.toml")?;
    let mut programs = Programs::default();
    for entry in &programs_file.organizations {
        if !entry.starts_with("Organization/") {
            return Err(invalid(
                "part2/programs.toml",
                format!("organizations: {entry:?} is not Organization/{{id}}"),
            ));
        }
        programs.add(entry).map_err(|e| invalid("part2/programs.toml", e))?;
    }
    for entry in &programs_file.npis {
        if entry.starts_with("Organization/") {
            return Err(invalid("part2/programs.toml", format!("npis: {entry:?} is not an NPI")));
        }
        programs.add(entry).map_err(|e| invalid("part2/programs.toml", e))?;
    }
    Ok(programs)
}

fn load_dates(src: &mut Source<'_>) -> Result<HashMap<String, DateTiers>, PolicyError> {
    let dates_file: HashMap<String, DatesEntry> = src.toml("service-dates.toml")?;
    let mut dates = HashMap::new();
    for (resource_type, entry) in dates_file {
        let mut tiers = Vec::new();
        for tier in entry.tiers {
            let mut paths = Vec::new();
            for path in tier {
                paths.push(split_path(&path).ok_or_else(|| {
                    invalid("service-dates.toml", format!("{resource_type}: bad path {path:?}"))
                })?);
            }
            if paths.is_empty() {
                return Err(invalid("service-dates.toml", format!("{resource_type}: empty tier")));
            }
            tiers.push(paths);
        }
        if tiers.is_empty() {
            return Err(invalid("service-dates.toml", format!("{resource_type}: no tiers")));
        }
        dates.insert(resource_type, tiers);
    }
    Ok(dates)
}

fn load_prior_auth(src: &mut Source<'_>) -> Result<PriorAuth, PolicyError> {
    let pa_file: PriorAuthFile = src.toml("prior-auth.toml")?;
    let mut prior_auth = PriorAuth { types: pa_file.types.into_iter().collect(), markers: Vec::new() };
    for marker in pa_file.drug {
        let element = split_path(&marker.element)
            .ok_or_else(|| invalid("prior-auth.toml", format!("bad element {:?}", marker.element)))?;
        if marker.systems.is_empty() {
            return Err(invalid("prior-auth.toml", format!("{}: no systems", marker.element)));
        }
        let codes = match marker.codes {
            None => None,
            Some(codes) => Some(
                CodeList::parse(codes.iter().map(String::as_str), Normalize::Upper)
                    .map_err(|e| invalid("prior-auth.toml", format!("{}: {e}", marker.element)))?,
            ),
        };
        prior_auth.markers.push(Marker { element, systems: marker.systems.into_iter().collect(), codes });
    }
    Ok(prior_auth)
}

fn load_financial(src: &mut Source<'_>) -> Result<Financial, PolicyError> {
    let fin_file: FinancialFile = src.toml("financial.toml")?;
    let mut financial = Financial {
        line_elements: fin_file.line_elements,
        types: HashMap::new(),
        monetary: FastMap::default(),
        profiles: fin_file.profiles,
    };
    for (resource_type, entry) in fin_file.types {
        for member in entry.remove.iter().chain(&entry.walk) {
            if NEVER_REMOVABLE.contains(&member.as_str())
                || required(&resource_type).contains(&member.as_str())
            {
                return Err(invalid(
                    "financial.toml",
                    format!("{resource_type}.{member} cannot be stripped"),
                ));
            }
        }
        financial.types.insert(resource_type, FinancialType { remove: entry.remove, walk: entry.walk });
    }
    for entry in fin_file.monetary {
        financial.monetary.entry(entry.system).or_default().extend(entry.codes);
    }
    Ok(financial)
}

fn required(resource_type: &str) -> &'static [&'static str] {
    REQUIRED.iter().find(|(t, _)| *t == resource_type).map(|(_, r)| *r).unwrap_or(&[])
}

fn load_redaction(src: &mut Source<'_>) -> Result<HashMap<String, RedactionRule>, PolicyError> {
    const FILE: &str = "part2/redaction.toml";
    let table: HashMap<String, RedactionEntry> = src.toml(FILE)?;
    let mut out = HashMap::new();
    for (resource_type, entry) in table {
        let required = required(&resource_type);
        for member in &entry.removable {
            if NEVER_REMOVABLE.contains(&member.as_str()) || required.contains(&member.as_str()) {
                return Err(invalid(
                    FILE,
                    format!("{resource_type}.{member} is required or structural: not removable"),
                ));
            }
        }
        for member in &entry.nonempty {
            if !entry.removable.contains(member) {
                return Err(invalid(FILE, format!("{resource_type}: nonempty {member} is not removable")));
            }
        }
        let mut links = Vec::new();
        for link in entry.link {
            let parse = |s: &str| -> Result<(String, String), PolicyError> {
                match split_path(s).as_deref() {
                    Some([member, field]) => Ok((member.clone(), field.clone())),
                    _ => Err(invalid(FILE, format!("{resource_type}: link end {s:?} is not element.field"))),
                }
            };
            let (from_member, from_field) = parse(&link.from)?;
            let (to_member, to_field) = parse(&link.to)?;
            let remove = match link.on_removed.as_str() {
                "unlink" => false,
                "remove" => true,
                other => return Err(invalid(FILE, format!("{resource_type}: on_removed {other:?}"))),
            };
            if !entry.removable.contains(&to_member) {
                return Err(invalid(
                    FILE,
                    format!("{resource_type}: link target {to_member} is not removable"),
                ));
            }
            if (remove || link.owns) && !entry.removable.contains(&from_member) {
                return Err(invalid(
                    FILE,
                    format!("{resource_type}: link source {from_member} is not removable"),
                ));
            }
            links.push(Link { from_member, from_field, to_member, to_field, remove, owns: link.owns });
        }
        out.insert(
            resource_type,
            RedactionRule {
                removable: entry.removable.into_iter().collect(),
                nonempty: entry.nonempty,
                links,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policies_load() {
        let p = Policies::builtin().unwrap();
        assert_eq!(p.codes.len(), 9);
        let icd = Some("http://hl7.org/fhir/sid/icd-10-cm");
        for sud in [
            "F10.20", "F11.23", "F12.20", "F13.20", "F14.20", "F15.20", "F16.20", "F18.20", "F19.20",
            "O99.320",
        ] {
            assert!(p.codes.matches(icd, sud), "{sud}");
        }
        for not in ["F17.210", "F17.220", "F32.A", "E11.9", "Z71.6", "F20.9"] {
            assert!(!p.codes.matches(icd, not), "{not}");
        }
        let hcpcs = Some("https://bluebutton.cms.gov/resources/codesystem/hcpcs");
        assert!(p.codes.matches(hcpcs, "H0004"));
        assert!(p.codes.matches(Some("http://www.ama-assn.org/go/cpt"), "H0001"));
        assert!(p.codes.matches(hcpcs, "G2067"));
        assert!(!p.codes.matches(Some("http://www.ama-assn.org/go/cpt"), "99406"), "tobacco counseling");
        assert!(!p.codes.matches(Some("http://www.ama-assn.org/go/cpt"), "90832"), "psychotherapy alone");
        let ndc = Some("http://hl7.org/fhir/sid/ndc");
        assert!(p.codes.matches(ndc, "12496-1208-03"));
        assert!(p.codes.matches(ndc, "00054-4538-44"));
        assert!(!p.codes.matches(ndc, "00093-7214-01"), "metformin");
        assert!(p.codes.matches(Some("http://www.nlm.nih.gov/research/umls/rxnorm"), "1010604"));
        assert!(p.codes.matches(Some("http://hl7.org/fhir/sid/icd-9-cm"), "304.00"));
        assert!(!p.codes.matches(Some("http://hl7.org/fhir/sid/icd-9-cm"), "305.1"), "tobacco (ICD-9)");
        assert!(!p.codes.matches(Some("http://hl7.org/fhir/sid/icd-9-cm"), "3051"), "tobacco (ICD-9)");
        assert!(!p.codes.matches(Some("http://hl7.org/fhir/sid/icd-9-cm"), "946.1"), "burns are not 94.61");
        assert!(p.labels.matches(Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"), "42CFRPart2"));
        assert!(
            p.labels.matches(Some("http://terminology.hl7.org/CodeSystem/v3-ActUSPrivacyLaw"), "42CFRPart2")
        );
        assert!(!p.labels.matches(Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality"), "R"));
        assert_eq!(p.dates["ExplanationOfBenefit"].len(), 2);
        assert!(p.prior_auth.types.contains("Claim"));
        assert!(
            p.financial.is_monetary(Some("http://terminology.hl7.org/CodeSystem/adjudication"), "submitted")
        );
        assert!(!p.financial.is_monetary(
            Some("http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator"),
            "denialreason"
        ));
        assert!(p.sources.iter().all(|(_, from)| from == "built-in"));
    }

    #[test]
    fn programs_match_every_reference_form() {
        let mut p = Programs::default();
        p.add("Organization/org-recovery").unwrap();
        p.add("1234567893").unwrap();
        for yes in [
            "Organization/org-recovery",
            "http://up.example/fhir/Organization/org-recovery",
            "Organization/org-recovery/_history/3",
        ] {
            assert!(p.matches_reference(yes), "{yes}");
        }
        for no in ["Organization/org-recovery2", "Organization/org", "Location/org-recovery", "org-recovery"]
        {
            assert!(!p.matches_reference(no), "{no}");
        }
        assert!(p.matches_identifier(Some(NPI_SYSTEM), "1234567893"));
        assert!(p.matches_identifier(None, "1234567893"));
        assert!(!p.matches_identifier(Some("http://example.org/other"), "1234567893"));
        assert!(!p.matches_identifier(Some(NPI_SYSTEM), "1234567890"));
        assert!(p.add("12345").is_err());
        assert!(p.add("Organization/a/b").is_err());
        assert!(p.add("Practitioner/x").is_err());
    }

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn a_dir_overrides_file_by_file() {
        let dir = dir_with(&[("part2/icd10cm.txt", "# only opioids\nF11*\n")]);
        let p = Policies::load(Some(dir.path())).unwrap();
        let icd = Some("http://hl7.org/fhir/sid/icd-10-cm");
        assert!(p.codes.matches(icd, "F11.20"));
        assert!(!p.codes.matches(icd, "F10.20"));
        assert!(p.sources.iter().any(|(f, from)| f == "part2/icd10cm.txt" && from != "built-in"));
        assert!(p.sources.iter().any(|(f, from)| f == "part2/snomed.txt" && from == "built-in"));
    }

    #[test]
    fn invalid_data_is_a_startup_error_naming_the_file() {
        for (file, text, says) in [
            ("part2/icd10cm.txt", "F1 1\n", "part2/icd10cm.txt"),
            ("part2/icd10cm.txt", "# nothing\n", "no entries"),
            ("part2/labels.toml", "bogus = 1\n", "part2/labels.toml"),
            ("part2/programs.toml", "npis = [\"12\"]\n", "part2/programs.toml"),
            ("part2/redaction.toml", "[ExplanationOfBenefit]\nremovable = [\"provider\"]\n", "not removable"),
            ("part2/redaction.toml", "[Claim]\nremovable = [\"contained\"]\n", "not removable"),
            (
                "part2/redaction.toml",
                "[Claim]\nremovable = [\"item\"]\nlink = [{ from = \"item.x\", to = \"diagnosis.sequence\", on_removed = \"unlink\" }]\n",
                "not removable",
            ),
            ("service-dates.toml", "[Encounter]\ntiers = [[\"period..start\"]]\n", "bad path"),
            ("prior-auth.toml", "types = []\n[[drug]]\nelement = \"type\"\nsystems = []\n", "no systems"),
            (
                "financial.toml",
                "line_elements = []\nmonetary = []\n[types.Claim]\nremove = [\"patient\"]\n",
                "cannot be stripped",
            ),
            (
                "part2/codesets.toml",
                "[[set]]\nname = \"x\"\nfile = \"missing.txt\"\nnormalize = \"upper\"\nsystems = [\"s\"]\n",
                "missing",
            ),
            (
                "part2/codesets.toml",
                "[[set]]\nname = \"x\"\nfile = \"icd10cm.txt\"\nnormalize = \"weird\"\nsystems = [\"s\"]\n",
                "normalize",
            ),
        ] {
            let dir = dir_with(&[(file, text)]);
            let err = Policies::load(Some(dir.path())).unwrap_err().to_string();
            assert!(err.contains(says), "{file}: {err}");
        }
        let err = Policies::load(Some(Path::new("/nonexistent/policies"))).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
