//! The PDex Provider Treatment Attestation (`provider-treatment-
//! relationship-consent`) each MemberBundle carries: the provider attests a
//! treatment relationship with the member. fhirwall honours it only when
//! it is an active `permit` Consent about the bundle's MemberPatient whose
//! information recipient (`provision.actor`, role v3-ParticipationType
//! `IRCP`) is the caller's registered NPI and whose `provision.period`
//! covers today. Anything else — no attestation, another NPI, a period
//! that is over or not yet begun, no period — puts the member in
//! NonMatchedMembers (PDex §pdex-257: "attestation not verified"), with a
//! categorical reason for the audit log only (PDEX-28: no detail in the
//! answer).

use serde_json::Value;

const NPI_SYSTEM: &str = "http://hl7.org/fhir/sid/us-npi";
const RECIPIENT_ROLE: (&str, &str) = ("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP");

/// Why an attestation is not honoured (safe to log: no PHI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unverified {
    Missing,
    NotActive,
    NotPermit,
    OtherPatient,
    NoRecipientNpi,
    OtherRecipient,
    NoPeriod,
    PeriodNotCurrent,
}

impl Unverified {
    pub fn as_str(self) -> &'static str {
        match self {
            Unverified::Missing => "no attestation",
            Unverified::NotActive => "attestation not active",
            Unverified::NotPermit => "attestation is not a permit",
            Unverified::OtherPatient => "attestation is about another patient",
            Unverified::NoRecipientNpi => "caller has no registered NPI",
            Unverified::OtherRecipient => "attestation recipient is not the caller's NPI",
            Unverified::NoPeriod => "attestation has no period",
            Unverified::PeriodNotCurrent => "attestation period does not cover today",
        }
    }
}

/// Check one attestation. `provider_ref` is the bundle's MemberPatient
/// (`Patient/{id}`), `npi` the caller's registered NPI, `today` `YYYY-MM-DD`.
pub fn verify(
    attestation: Option<&Value>,
    provider_ref: &str,
    npi: Option<&str>,
    today: &str,
) -> Result<(), Unverified> {
    let consent = attestation.ok_or(Unverified::Missing)?;
    if consent["status"] != "active" {
        return Err(Unverified::NotActive);
    }
    let provision = &consent["provision"];
    if provision["type"] != "permit" {
        return Err(Unverified::NotPermit);
    }
    // The attestation must be about the bundle's own MemberPatient.
    let about = consent["patient"]["reference"].as_str();
    let same_patient = match provider_ref.strip_prefix("Patient/") {
        Some(_) => about == Some(provider_ref),
        None => about.is_some(),
    };
    if !same_patient {
        return Err(Unverified::OtherPatient);
    }
    let npi = npi.filter(|n| !n.is_empty()).ok_or(Unverified::NoRecipientNpi)?;
    let recipients: Vec<&Value> = provision["actor"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| has_coding(&a["role"], RECIPIENT_ROLE))
        .collect();
    let names_caller = |actor: &&Value| {
        let id = &actor["reference"]["identifier"];
        id["system"] == NPI_SYSTEM && id["value"].as_str().map(str::trim) == Some(npi)
    };
    if !recipients.iter().any(names_caller) {
        return Err(Unverified::OtherRecipient);
    }
    let period = provision["period"].as_object().ok_or(Unverified::NoPeriod)?;
    let day = |key: &str| -> Result<Option<&str>, Unverified> {
        match period.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if is_date_like(s) => Ok(Some(&s[..s.len().min(10)])),
            Some(_) => Err(Unverified::PeriodNotCurrent),
        }
    };
    let (start, end) = (day("start")?, day("end")?);
    if start.is_none() && end.is_none() {
        return Err(Unverified::NoPeriod);
    }
    // A partial date (`2024`, `2024-03`) compares on its own precision.
    let started = start.is_none_or(|s| s <= &today[..s.len()]);
    let not_over = end.is_none_or(|e| e >= &today[..e.len()]);
    if started && not_over { Ok(()) } else { Err(Unverified::PeriodNotCurrent) }
}

fn is_date_like(text: &str) -> bool {
    // `get`: byte 10 may fall inside a character (`2024-01-0é`).
    let Some(date) = text.get(..text.len().min(10)) else { return false };
    matches!(date.len(), 4 | 7 | 10)
        && date
            .bytes()
            .enumerate()
            .all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() })
}

fn has_coding(concept: &Value, (system, code): (&str, &str)) -> bool {
    concept["coding"].as_array().into_iter().flatten().any(|c| c["system"] == system && c["code"] == code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attestation(npi: &str, period: Value) -> Value {
        json!({
            "resourceType": "Consent", "status": "active",
            "patient": { "reference": "Patient/prov-1" },
            "provision": { "type": "permit", "period": period, "actor": [{
                "role": { "coding": [{ "system": RECIPIENT_ROLE.0, "code": "IRCP" }] },
                "reference": { "identifier": { "system": NPI_SYSTEM, "value": npi } } }] }
        })
    }

    #[test]
    fn honours_only_the_callers_current_attestation() {
        let today = "2026-12-05";
        let ok = attestation("1417987256", json!({ "start": "2024-01-15" }));
        let check = |a: &Value| verify(Some(a), "Patient/prov-1", Some("1417987256"), today);
        assert_eq!(check(&ok), Ok(()));
        assert_eq!(
            check(&attestation("1417987256", json!({ "start": "2026-12-05", "end": "2026-12-05" }))),
            Ok(())
        );
        assert_eq!(check(&attestation("1417987256", json!({ "start": "2026" }))), Ok(()));
        assert_eq!(
            check(&attestation("1526347814", json!({ "start": "2024-01-15" }))),
            Err(Unverified::OtherRecipient)
        );
        assert_eq!(
            check(&attestation("1417987256", json!({ "start": "2024-01-01", "end": "2026-12-04" }))),
            Err(Unverified::PeriodNotCurrent)
        );
        assert_eq!(
            check(&attestation("1417987256", json!({ "start": "2026-12-06" }))),
            Err(Unverified::PeriodNotCurrent)
        );
        assert_eq!(
            check(&attestation("1417987256", json!({ "start": "yesterday" }))),
            Err(Unverified::PeriodNotCurrent)
        );
        // A character across byte 10 is not a date (and no panic).
        assert_eq!(
            check(&attestation("1417987256", json!({ "start": "2024-01-0\u{e9}" }))),
            Err(Unverified::PeriodNotCurrent)
        );
        assert_eq!(check(&attestation("1417987256", json!({}))), Err(Unverified::NoPeriod));
        let mut no_period = ok.clone();
        no_period["provision"].as_object_mut().unwrap().remove("period");
        assert_eq!(check(&no_period), Err(Unverified::NoPeriod));
        let mut denied = ok.clone();
        denied["provision"]["type"] = json!("deny");
        assert_eq!(check(&denied), Err(Unverified::NotPermit));
        let mut inactive = ok.clone();
        inactive["status"] = json!("inactive");
        assert_eq!(check(&inactive), Err(Unverified::NotActive));
        let mut other = ok.clone();
        other["patient"]["reference"] = json!("Patient/prov-2");
        assert_eq!(check(&other), Err(Unverified::OtherPatient));
        let mut not_recipient = ok.clone();
        not_recipient["provision"]["actor"][0]["role"]["coding"][0]["code"] = json!("PRCP");
        assert_eq!(check(&not_recipient), Err(Unverified::OtherRecipient));
        assert_eq!(verify(None, "Patient/prov-1", Some("1"), today), Err(Unverified::Missing));
        assert_eq!(verify(Some(&ok), "Patient/prov-1", None, today), Err(Unverified::NoRecipientNpi));
    }
}
