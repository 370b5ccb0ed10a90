//! The comparable form of a person: the provider's `MemberPatient` (with
//! the identifiers of its `CoverageToMatch`) and each candidate member,
//! normalised once.

use fhirwall_plugin_sdk::fhir::{self, Coverage, Patient};

/// A date as (year, month, day).
pub type Date = (u16, u8, u8);

/// Names, birth date, gender, address, phone and e-mail, normalised.
#[derive(Debug, Default, Clone)]
pub struct Person {
    /// Words of the current family name (the official name, else the first
    /// one that is not a former name).
    pub family: Vec<String>,
    /// Words of the given names of that name (first name first).
    pub given: Vec<String>,
    /// Words of former family names (HumanName.use old or maiden, and any
    /// further name with another family name).
    pub former_family: Vec<Vec<String>>,
    /// Generational suffix (`jr`, `sr`, `ii`...).
    pub generation: Option<String>,
    pub birth: Option<Date>,
    pub gender: Option<Gender>,
    /// Street keys (`fhir::street_key`) of the address lines.
    pub streets: Vec<Vec<String>>,
    pub zips: Vec<String>,
    pub cities: Vec<String>,
    pub phones: Vec<String>,
    pub emails: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gender {
    Female,
    Male,
}

impl Person {
    pub fn from_patient(patient: &Patient) -> Person {
        let mut person = Person::default();
        let main = patient
            .name
            .iter()
            .find(|n| n.use_.as_deref() == Some("official"))
            .or_else(|| patient.name.iter().find(|n| !n.is_former()))
            .or_else(|| patient.name.first());
        if let Some(name) = main {
            person.family = name.family.as_deref().map(fhir::name_tokens).unwrap_or_default();
            person.given = name.given.iter().flat_map(|g| fhir::name_tokens(g)).collect();
            person.generation = name.generation();
        }
        for name in &patient.name {
            if main.is_some_and(|m| std::ptr::eq(m, name)) {
                continue;
            }
            let family = name.family.as_deref().map(fhir::name_tokens).unwrap_or_default();
            if !family.is_empty() && family != person.family && !person.former_family.contains(&family) {
                person.former_family.push(family);
            }
        }
        person.birth = patient.birth_date.as_deref().and_then(fhir::parse_date);
        person.gender = match patient.gender.as_deref() {
            Some("female") => Some(Gender::Female),
            Some("male") => Some(Gender::Male),
            _ => None,
        };
        for address in &patient.address {
            if let Some(key) = address.line.first().and_then(|l| fhir::street_key(l)) {
                person.streets.push(key);
            }
            person.zips.extend(address.postal_code.as_deref().and_then(fhir::postal5));
            if let Some(city) = address.city.as_deref().map(fhir::normalize_name).filter(|c| !c.is_empty()) {
                person.cities.push(city);
            }
        }
        for contact in &patient.telecom {
            let Some(value) = contact.value.as_deref() else { continue };
            match contact.system.as_deref() {
                Some("phone" | "sms") | None => person.phones.extend(fhir::normalize_phone(value)),
                Some("email") => person.emails.extend(fhir::normalize_email(value)),
                _ => {}
            }
        }
        person
    }
}

/// An identifier the provider sent, as sent and normalised.
#[derive(Debug, Clone)]
pub struct ProbeId {
    pub raw: String,
    pub norm: String,
}

/// What the provider sent.
#[derive(Debug, Default)]
pub struct Probe {
    pub person: Person,
    pub ids: Vec<ProbeId>,
}

/// Most identifiers of a request taken into account.
const MAX_IDS: usize = 3;

impl Probe {
    pub fn from_json(member_patient: &str, coverage_to_match: &str) -> Result<Probe, String> {
        let patient =
            Patient::parse(member_patient).map_err(|_| "MemberPatient is not a Patient".to_owned())?;
        let coverage =
            Coverage::parse(coverage_to_match).map_err(|_| "CoverageToMatch is not a Coverage".to_owned())?;
        let mut probe = Probe { person: Person::from_patient(&patient), ids: Vec::new() };
        let raw = coverage
            .subscriber_id
            .iter()
            .map(String::as_str)
            .chain(coverage.identifier.iter().filter_map(|i| i.value.as_deref()))
            .chain(patient.identifier.iter().filter_map(|i| i.value.as_deref()));
        for value in raw {
            let value = value.trim();
            let norm = fhir::normalize_identifier(value);
            if norm.len() < 4 || probe.ids.iter().any(|i| i.norm == norm) || probe.ids.len() == MAX_IDS {
                continue;
            }
            probe.ids.push(ProbeId { raw: value.to_owned(), norm });
        }
        if probe.person.family.is_empty() && probe.person.given.is_empty() && probe.ids.is_empty() {
            return Err("no name and no identifier to match on".into());
        }
        Ok(probe)
    }
}

/// A candidate member.
#[derive(Debug)]
pub struct Cand {
    pub id: String,
    pub person: Person,
    /// The member's own identifiers (Patient.identifier, Coverage.identifier).
    pub member_ids: Vec<String>,
    /// Coverage.subscriberId: shared by everyone on the subscriber's policy.
    pub subscriber_ids: Vec<String>,
}

impl Cand {
    pub fn parse(id: String, patient: &str, coverages: &[String]) -> Option<Cand> {
        let patient = Patient::parse(patient).ok()?;
        let mut member_ids: Vec<String> = patient
            .identifier
            .iter()
            .filter_map(|i| i.value.as_deref())
            .map(fhir::normalize_identifier)
            .collect();
        let mut subscriber_ids = Vec::new();
        for c in coverages.iter().filter_map(|c| Coverage::parse(c).ok()) {
            member_ids.extend(
                c.identifier.iter().filter_map(|i| i.value.as_deref()).map(fhir::normalize_identifier),
            );
            subscriber_ids.extend(c.subscriber_id.as_deref().map(fhir::normalize_identifier));
        }
        member_ids.retain(|i| i.len() >= 4);
        member_ids.sort();
        member_ids.dedup();
        subscriber_ids.retain(|i| i.len() >= 4);
        subscriber_ids.sort();
        subscriber_ids.dedup();
        Some(Cand { id, person: Person::from_patient(&patient), member_ids, subscriber_ids })
    }
}

/// The birth date of a Patient read straight from its JSON text, without
/// parsing the rest (to skip candidates a birth date rules out); `None`
/// when it is not found in the plain form.
pub fn quick_birth_date(patient: &str) -> Option<Date> {
    let at = patient.find("\"birthDate\"")? + "\"birthDate\"".len();
    let rest = patient[at..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    fhir::parse_date(rest.get(..10)?)
}
