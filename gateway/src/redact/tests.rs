//! Unit tests of the redaction chain on realistic resources: the synthetic
//! payer dataset (checked against its `facts.json`), CARIN BB, PDex, PAS and
//! DS4P examples (tests/fixtures/redact), each rule and their combinations,
//! Bundles, and property tests that a redacted EOB stays valid FHIR.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

use super::*;
use crate::config::{Part2Mode, PolicyConfig};

const PROGRAM_ORG: &str = "Organization/org-recovery";
const PROGRAM_NPI: &str = "1234567893";
const ICD10: &str = "http://hl7.org/fhir/sid/icd-10-cm";
const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

fn config(mode: Part2Mode) -> PolicyConfig {
    PolicyConfig {
        part2: mode,
        part2_programs: vec![PROGRAM_ORG.into(), PROGRAM_NPI.into()],
        ..PolicyConfig::default()
    }
}

fn redactor(mode: Part2Mode) -> Redactor {
    static POLICIES: std::sync::OnceLock<Arc<Policies>> = std::sync::OnceLock::new();
    let policies = POLICIES.get_or_init(|| Arc::new(Policies::builtin().unwrap())).clone();
    Redactor::with_policies(&config(mode), policies).unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> Value {
    let path = repo().join("tests/fixtures/redact").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn run(r: &Redactor, resource: &Value) -> (Verdict, Disclosure) {
    let mut report = Disclosure::default();
    let verdict = r.apply(&resource.to_string(), &mut report);
    (verdict, report)
}

/// The resource after redaction (`None` when withheld).
fn after(r: &Redactor, resource: &Value) -> Option<Value> {
    match run(r, resource).0 {
        Verdict::Keep => Some(resource.clone()),
        Verdict::Redact { text, .. } => Some(serde_json::from_str(&text).expect("a rewrite is JSON")),
        Verdict::Drop(_) => None,
    }
}

fn dropped(r: &Redactor, resource: &Value) -> Option<Reason> {
    match run(r, resource).0 {
        Verdict::Drop(reason) => Some(reason),
        _ => None,
    }
}

fn has_label(resource: &Value, code: &str) -> bool {
    resource["meta"]["security"].as_array().is_some_and(|s| s.iter().any(|c| c["code"] == code))
}

/// Every string anywhere in a JSON value.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}

fn contains_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|i| contains_key(i, key)),
        Value::Object(map) => map.contains_key(key) || map.values().any(|v| contains_key(v, key)),
        _ => false,
    }
}

/// A minimal valid EOB (professional, 2021) with the given diagnoses and items.
fn eob(diagnoses: &[&str], items: Value) -> Value {
    let diagnosis: Vec<Value> = diagnoses
        .iter()
        .enumerate()
        .map(|(i, code)| {
            json!({"sequence": i + 1, "diagnosisCodeableConcept": {"coding": [{"system": ICD10, "code": code}]}})
        })
        .collect();
    json!({
        "resourceType": "ExplanationOfBenefit", "id": "t1",
        "meta": {"profile": ["http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-ExplanationOfBenefit-Professional-NonClinician"]},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Opioid dependence</div>"},
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "claim", "patient": {"reference": "Patient/pat-0003"},
        "billablePeriod": {"start": "2021-03-01"}, "created": "2021-03-05T00:00:00Z",
        "insurer": {"reference": "Organization/org-payer"}, "provider": {"reference": "Organization/org-grace"},
        "outcome": "complete",
        "diagnosis": diagnosis,
        "insurance": [{"focal": true, "coverage": {"reference": "Coverage/cov-0003"}}],
        "item": items,
    })
}

fn cpt(code: &str) -> Value {
    json!({"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": code}]})
}

// ---------------------------------------------------------------- the dataset

struct Dataset {
    resources: Vec<(String, String)>,
    facts: Value,
}

fn dataset() -> &'static Dataset {
    static DATA: std::sync::OnceLock<Dataset> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let dir = repo().join("examples/dataset");
        let text = std::fs::read_to_string(dir.join("payer.ndjson")).unwrap();
        let resources = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap();
                (
                    format!("{}/{}", v["resourceType"].as_str().unwrap(), v["id"].as_str().unwrap()),
                    line.to_owned(),
                )
            })
            .collect();
        let facts = serde_json::from_str(&std::fs::read_to_string(dir.join("facts.json")).unwrap()).unwrap();
        Dataset { resources, facts }
    })
}

fn fact_set(facts: &Value, path: &[&str]) -> HashSet<String> {
    let mut v = facts;
    for p in path {
        v = &v[*p];
    }
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

fn verdicts(mode: Part2Mode) -> HashMap<String, (Verdict, String)> {
    let r = redactor(mode);
    dataset()
        .resources
        .iter()
        .map(|(key, text)| {
            let mut report = Disclosure::default();
            (key.clone(), (r.apply(text, &mut report), text.clone()))
        })
        .collect()
}

#[test]
fn dataset_classification_matches_the_facts() {
    let facts = &dataset().facts;
    let all = verdicts(Part2Mode::Exclude);
    let mut part2 = HashSet::new();
    for cat in ["labelled", "program", "program_npi_only", "sud_code_unlabelled"] {
        part2.extend(fact_set(facts, &["part2", cat]));
    }
    // Directory entries that name the program: its Organization, its
    // Location (managingOrganization) and roles there.
    let program_directory: HashSet<String> = all
        .iter()
        .filter(|(key, (_, text))| {
            (key.starts_with("Location/")
                || key.starts_with("PractitionerRole/")
                || key.starts_with("Organization/"))
                && (text.contains("\"Organization/org-recovery\"")
                    || text.contains("\"id\":\"org-recovery\""))
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert!(program_directory.contains(PROGRAM_ORG));
    for key in &part2 {
        assert_eq!(all[key].0, Verdict::Drop(Reason::Part2), "{key} is Part 2");
    }
    for key in fact_set(facts, &["part2", "tobacco_not_part2"]) {
        assert!(!matches!(all[&key].0, Verdict::Drop(_)), "{key}: tobacco is not Part 2: {:?}", all[&key].0);
    }
    let part2_dropped: HashSet<String> =
        all.iter().filter(|(_, (v, _))| *v == Verdict::Drop(Reason::Part2)).map(|(k, _)| k.clone()).collect();
    let unexpected: Vec<&String> =
        part2_dropped.iter().filter(|k| !part2.contains(*k) && !program_directory.contains(*k)).collect();
    assert!(unexpected.is_empty(), "withheld as Part 2 without being Part 2: {unexpected:?}");

    // Service-date floor: exactly the pre-2016 records (unless Part 2 first).
    let pre = fact_set(facts, &["pre_2016"]);
    for key in &pre {
        assert!(
            matches!(all[key].0, Verdict::Drop(Reason::DateFloor | Reason::Part2)),
            "{key} is before 2016: {:?}",
            all[key].0
        );
    }
    for (key, (verdict, _)) in &all {
        if *verdict == Verdict::Drop(Reason::DateFloor) {
            assert!(pre.contains(key), "{key} withheld as before the floor");
        }
    }
    for key in fact_set(facts, &["no_service_date_conditions"]) {
        assert!(!matches!(all[&key].0, Verdict::Drop(Reason::DateFloor)), "{key} has no date: kept");
    }

    // Prior authorizations: drug PAs (and their Claim/ClaimResponse) withheld,
    // the others kept with their decision.
    for pa in facts["prior_auth"].as_array().unwrap() {
        let eob = pa["eob"].as_str().unwrap();
        let drug = pa["drug"].as_bool().unwrap();
        let mut keys = vec![eob.to_owned()];
        for k in ["claim", "claim_response"] {
            if let Some(s) = pa[k].as_str() {
                keys.push(s.to_owned());
            }
        }
        for key in keys {
            let verdict = &all[&key].0;
            if drug {
                assert!(
                    matches!(verdict, Verdict::Drop(Reason::DrugPriorAuth | Reason::Part2)),
                    "{key}: {verdict:?}"
                );
            } else {
                assert!(!matches!(verdict, Verdict::Drop(_)), "{key} is a service PA: {verdict:?}");
            }
        }
        if !drug && let Verdict::Redact { text, .. } = &all[eob].0 {
            let v: Value = serde_json::from_str(text).unwrap();
            assert!(v["outcome"].is_string(), "{eob}: decision kept");
            if let Some(code) = pa["denial_reason"].as_str() {
                assert!(
                    text.contains("denialreason") && text.contains(&format!("\"code\":\"{code}\"")),
                    "{eob}"
                );
                assert!(v["processNote"].is_array(), "{eob}");
            }
            assert!(text.contains("extension-reviewAction"), "{eob}: X12 review action kept");
        }
    }

    // Financial: nothing of the money leaves.
    for (key, (verdict, original)) in &all {
        let text = match verdict {
            Verdict::Drop(_) => continue,
            Verdict::Keep => original.clone(),
            Verdict::Redact { text: t, .. } => t.clone(),
        };
        if key.starts_with("ExplanationOfBenefit/") || key.starts_with("Claim") {
            let v: Value = serde_json::from_str(&text).unwrap();
            for money in ["amount", "payment", "total", "net", "unitPrice", "benefitBalance", "payee"] {
                assert!(!contains_key(&v, money), "{key} still has {money}");
            }
        }
    }
}

#[test]
fn dataset_in_redact_mode() {
    let facts = &dataset().facts;
    let all = verdicts(Part2Mode::Redact);
    // Labelled and program records cannot be partially redacted.
    for cat in ["labelled", "program", "program_npi_only"] {
        for key in fact_set(facts, &["part2", cat]) {
            assert_eq!(all[&key].0, Verdict::Drop(Reason::Part2), "{key} ({cat})");
        }
    }
    // Code-only records: the SUD condition is the record (withheld); the
    // hospital EOB leaves without its SUD diagnosis, labelled REDACTED.
    let mut redacted = 0;
    for key in fact_set(facts, &["part2", "sud_code_unlabelled"]) {
        match &all[&key].0 {
            Verdict::Redact { text, .. } => {
                assert!(key.starts_with("ExplanationOfBenefit/"), "{key}");
                let v: Value = serde_json::from_str(text).unwrap();
                assert!(has_label(&v, "REDACTED"), "{key}");
                let mut s = Vec::new();
                strings(&v, &mut s);
                assert!(!s.iter().any(|s| s.starts_with("F1") && !s.starts_with("F17")), "{key}: {text}");
                assert!(!contains_key(&v, "diagnosisSequence"), "{key}: dangling diagnosisSequence");
                assert!(v["item"].as_array().is_some_and(|i| !i.is_empty()));
                assert!(v.get("text").is_none());
                redacted += 1;
            }
            Verdict::Drop(reason) => {
                assert!(key.starts_with("Condition/") || *reason == Reason::DateFloor, "{key}: {reason:?}")
            }
            Verdict::Keep => panic!("{key} kept as is"),
        }
    }
    assert!(redacted > 0);
}

// ---------------------------------------------------------------- CARIN BB

#[test]
fn financial_stripping_matches_the_carin_nonfinancial_example() {
    let r = redactor(Part2Mode::Exclude);
    let financial = fixture("carin-EOBProfessional1.json");
    let mut expected = fixture("carin-EOBProfessional1-nonfinancial.json");
    let (verdict, report) = run(&r, &financial);
    let Verdict::Redact { text, .. } = verdict else { panic!("{verdict:?}") };
    let mut got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report.redactions(Reason::Financial), 1);
    assert_eq!(report.withheld_total() + report.redactions(Reason::Part2), 0);
    got["id"] = Value::Null;
    expected["id"] = Value::Null;
    assert_eq!(got, expected);
    assert!(!has_label(&got, "REDACTED"), "financial stripping is not security redaction");
}

#[test]
fn financial_stripping_keeps_non_monetary_adjudication() {
    let r = redactor(Part2Mode::Exclude);
    let mut eob = fixture("carin-InpatientEOBExample1.json");
    eob["item"][0]["adjudication"] = json!([
        {"category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "copay"}]},
         "amount": {"value": 20, "currency": "USD"}, "value": 20},
        {"category": {"coding": [{"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudication", "code": "coinsurance"}]},
         "value": 0.2},
        {"category": {"coding": [{"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator", "code": "allowedunits"}]},
         "value": 3},
        {"category": {"coding": [{"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator", "code": "denialreason"}]},
         "reason": {"coding": [{"system": "https://x12.org/codes/claim-adjustment-reason-codes", "code": "50"}]},
         "amount": {"value": 1, "currency": "USD"}},
    ]);
    eob["item"][0]["net"] = json!({"value": 100, "currency": "USD"});
    eob["item"][0]["unitPrice"] = json!({"value": 100, "currency": "USD"});
    eob["item"][0]["detail"] = json!([{"sequence": 1, "productOrService": cpt("99231"), "net": {"value": 1, "currency": "USD"},
        "adjudication": [{"category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "benefit"}]}, "amount": {"value": 5, "currency": "USD"}}],
        "subDetail": [{"sequence": 1, "productOrService": cpt("99231"), "unitPrice": {"value": 1, "currency": "USD"}}]}]);
    eob["benefitBalance"] = json!([{"category": {"text": "x"}, "financial": [{"type": {"text": "x"}, "usedMoney": {"value": 1, "currency": "USD"}}]}]);
    eob["payment"] = json!({"amount": {"value": 1, "currency": "USD"}});
    let out = after(&r, &eob).unwrap();
    let item = &out["item"][0];
    let adjudication = item["adjudication"].as_array().unwrap();
    assert_eq!(adjudication.len(), 2, "{adjudication:?}");
    assert_eq!(adjudication[0]["value"], 3, "allowed units stay");
    assert_eq!(adjudication[1]["reason"]["coding"][0]["code"], "50", "denial reason stays");
    for money in ["amount", "net", "unitPrice", "benefitBalance", "payment", "total", "payee"] {
        assert!(!contains_key(&out, money), "{money}");
    }
    assert!(item["detail"][0].get("adjudication").is_none(), "a detail level left without adjudication");
    let header = out["adjudication"].as_array().unwrap();
    assert_eq!(header.len(), 1, "the monetary header entry goes, the network status stays");
    assert_eq!(header[0], eob["adjudication"][0]);
    assert_eq!(out["diagnosis"], eob["diagnosis"]);
}

#[test]
fn untouched_resources_keep_their_bytes() {
    let r = redactor(Part2Mode::Redact);
    for text in [
        r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Doe"}],"birthDate":"1950-01-01"}"#,
        r#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"F17.210"}]},"recordedDate":"2020-01-01"}"#,
        r#"{"resourceType":"Coverage","id":"cov","status":"active","beneficiary":{"reference":"Patient/p1"},"payor":[{"reference":"Organization/org-payer"}]}"#,
    ] {
        let mut report = Disclosure::default();
        assert_eq!(r.apply(text, &mut report), Verdict::Keep, "{text}");
        assert!(report.is_clean());
    }
}

// ---------------------------------------------------------------- labels

#[test]
fn part2_labels_withhold_in_both_modes() {
    for mode in [Part2Mode::Exclude, Part2Mode::Redact] {
        let r = redactor(mode);
        for name in
            ["ds4p-part2-condition.json", "ds4p-part2-condition-legacy.json", "ds4p-sec-label-basis.json"]
        {
            assert_eq!(dropped(&r, &fixture(name)), Some(Reason::Part2), "{name} ({mode:?})");
        }
        // A sensitivity label alone (SUD, ETH, OPIOIDUD) is enough.
        for code in ["SUD", "ETH", "ETHUD", "OPIOIDUD"] {
            let condition = json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}]}});
            assert_eq!(dropped(&r, &condition), Some(Reason::Part2), "{code}");
        }
        // Restricted alone (HIV, psychotherapy, ...) is not Part 2; nor is
        // the code outside meta.security.
        let restricted = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                     "tag": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "42CFRPart2"}]}});
        assert_eq!(run(&r, &restricted).0, Verdict::Keep);
    }
}

#[test]
fn inline_labels_mark_elements() {
    let item_label = |labelled: bool| {
        let mut items = json!([
            {"sequence": 1, "productOrService": cpt("99213"), "servicedDate": "2021-03-01"},
            {"sequence": 2, "productOrService": cpt("99214"), "servicedDate": "2021-03-01"},
        ]);
        if labelled {
            items[1]["extension"] = json!([{"url": "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-inline-sec-label",
                "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "42CFRPart2"}}]);
        }
        eob(&["E11.9"], items)
    };
    let r = redactor(Part2Mode::Redact);
    let out = after(&r, &item_label(true)).unwrap();
    assert_eq!(out["item"].as_array().unwrap().len(), 1);
    assert_eq!(out["item"][0]["sequence"], 1);
    assert!(has_label(&out, "REDACTED"));
    assert_eq!(dropped(&redactor(Part2Mode::Exclude), &item_label(true)), Some(Reason::Part2));
    // The DS4P patient example's inline label is Confidentiality R: not Part 2.
    assert!(after(&r, &fixture("ds4p-inline-label-patient.json")).is_some());
}

// ---------------------------------------------------------------- programs

#[test]
fn programs_are_found_anywhere_by_reference_or_npi() {
    let r = redactor(Part2Mode::Exclude);
    let by_npi = json!({"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p"},
        "serviceProvider": {"identifier": {"system": NPI, "value": PROGRAM_NPI}}});
    assert_eq!(dropped(&r, &by_npi), Some(Reason::Part2));
    let by_url = json!({"resourceType": "Procedure", "id": "p", "status": "completed", "subject": {"reference": "Patient/p"},
        "performer": [{"actor": {"reference": "Practitioner/x"}, "onBehalfOf": {"reference": "https://up.example/fhir/Organization/org-recovery"}}]});
    assert_eq!(dropped(&r, &by_url), Some(Reason::Part2));
    let contained = json!({"resourceType": "MedicationDispense", "id": "m", "status": "completed",
        "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/p"},
        "contained": [{"resourceType": "Organization", "id": "o", "identifier": [{"system": NPI, "value": PROGRAM_NPI}]}],
        "performer": [{"actor": {"reference": "#o"}}]});
    assert_eq!(dropped(&r, &contained), Some(Reason::Part2));
    assert_eq!(
        dropped(&redactor(Part2Mode::Redact), &contained),
        Some(Reason::Part2),
        "contained: not redactable"
    );
    let program =
        json!({"resourceType": "Organization", "id": "org-recovery", "name": "Harbor Recovery Center"});
    assert_eq!(dropped(&r, &program), Some(Reason::Part2), "the program's own directory entry");
    let other = json!({"resourceType": "Organization", "id": "org-recovery2", "identifier": [{"system": NPI, "value": "1234567894"}]});
    assert_eq!(run(&r, &other).0, Verdict::Keep);
}

#[test]
fn a_program_on_the_care_team_is_redacted_with_its_items() {
    let r = redactor(Part2Mode::Redact);
    let mut e = eob(
        &["E11.9"],
        json!([
            {"sequence": 1, "careTeamSequence": [1], "productOrService": cpt("99213"), "servicedDate": "2021-03-01"},
            {"sequence": 2, "careTeamSequence": [2], "productOrService": cpt("90832"), "servicedDate": "2021-03-01", "noteNumber": [1]},
        ]),
    );
    e["careTeam"] = json!([
        {"sequence": 1, "provider": {"reference": "Practitioner/prac-01"}},
        {"sequence": 2, "provider": {"identifier": {"system": NPI, "value": PROGRAM_NPI}, "display": "Harbor Recovery Center"}},
    ]);
    e["processNote"] = json!([{"number": 1, "text": "counseling at the program"}]);
    e["addItem"] = json!([{"itemSequence": [2], "productOrService": cpt("99080")}]);
    let out = after(&r, &e).unwrap();
    assert_eq!(out["careTeam"].as_array().unwrap().len(), 1);
    assert_eq!(out["item"].as_array().unwrap().len(), 1);
    assert_eq!(out["item"][0]["sequence"], 1);
    assert!(out.get("processNote").is_none(), "the removed item's note goes with it");
    assert!(out.get("addItem").is_none(), "an addItem of a removed item goes with it");
    assert!(!out.to_string().contains(PROGRAM_NPI) && !out.to_string().contains("Harbor"));
    // Every item from the program: nothing safe is left.
    e["item"][0]["careTeamSequence"] = json!([2]);
    assert_eq!(dropped(&r, &e), Some(Reason::Part2));
    // The billing provider is the program: never redactable.
    let mut billed = eob(&["E11.9"], json!([{"sequence": 1, "productOrService": cpt("99213")}]));
    billed["provider"] = json!({"reference": PROGRAM_ORG});
    assert_eq!(dropped(&r, &billed), Some(Reason::Part2));
}

// ---------------------------------------------------------------- code sets

#[test]
fn sud_diagnoses_are_redacted_with_their_sequence_references() {
    let r = redactor(Part2Mode::Redact);
    let mut e = eob(
        &["F11.20", "E11.9", "F10.20"],
        json!([
            {"sequence": 1, "diagnosisSequence": [1, 2], "procedureSequence": [1], "productOrService": cpt("99214")},
            {"sequence": 2, "diagnosisSequence": [3], "productOrService": cpt("99213")},
        ]),
    );
    e["procedure"] = json!([
        {"sequence": 1, "procedureCodeableConcept": {"coding": [{"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "HZ2ZZZZ"}]}},
        {"sequence": 2, "procedureCodeableConcept": {"coding": [{"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "0SRC0J9"}]}},
    ]);
    let (verdict, report) = run(&r, &e);
    let Verdict::Redact { text, .. } = verdict else { panic!("{verdict:?}") };
    assert_eq!(report.redactions(Reason::Part2), 1);
    let out: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        out["diagnosis"],
        json!([{"sequence": 2, "diagnosisCodeableConcept": {"coding": [{"system": ICD10, "code": "E11.9"}]}}])
    );
    assert_eq!(out["procedure"].as_array().unwrap().len(), 1);
    assert_eq!(out["item"][0]["diagnosisSequence"], json!([2]));
    assert!(out["item"][0].get("procedureSequence").is_none());
    assert!(out["item"][1].get("diagnosisSequence").is_none(), "emptied reference lists are removed");
    assert!(out.get("text").is_none(), "the narrative named the diagnosis");
    assert!(
        !text.contains("F11")
            && !text.contains("F10")
            && !text.contains("HZ2ZZZZ")
            && !text.contains("Opioid")
    );
    assert!(has_label(&out, "REDACTED"));
    // Exclude mode withholds it.
    assert_eq!(dropped(&redactor(Part2Mode::Exclude), &e), Some(Reason::Part2));
}

#[test]
fn sud_items_are_redacted_and_a_sud_only_claim_is_withheld() {
    let r = redactor(Part2Mode::Redact);
    let hcpcs = |code: &str| json!({"coding": [{"system": "https://bluebutton.cms.gov/resources/codesystem/hcpcs", "code": code}]});
    let e = eob(
        &["E11.9"],
        json!([
            {"sequence": 1, "productOrService": cpt("99213")},
            {"sequence": 2, "productOrService": hcpcs("H0020")},
            {"sequence": 3, "productOrService": cpt("99213"), "revenue": {"coding": [{"system": "https://www.nubc.org/CodeSystem/RevenueCodes", "code": "0944"}]}},
            {"sequence": 4, "productOrService": cpt("99213"), "detail": [{"sequence": 1, "productOrService": {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "12496-1208-03"}]}}]},
        ]),
    );
    let out = after(&r, &e).unwrap();
    assert_eq!(
        out["item"].as_array().unwrap().iter().map(|i| i["sequence"].clone()).collect::<Vec<_>>(),
        vec![json!(1)]
    );
    let only_sud = eob(&["E11.9"], json!([{"sequence": 1, "productOrService": hcpcs("G2067")}]));
    assert_eq!(dropped(&r, &only_sud), Some(Reason::Part2), "an EOB needs an item");
}

#[test]
fn core_codes_withhold_the_resource_even_in_redact_mode() {
    let r = redactor(Part2Mode::Redact);
    let condition = json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "191816009"}]}, "recordedDate": "2020-01-01"});
    assert_eq!(dropped(&r, &condition), Some(Reason::Part2));
    let dispense = json!({"resourceType": "MedicationDispense", "id": "m", "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1010604"}]},
        "subject": {"reference": "Patient/p"}, "whenHandedOver": "2021-01-01"});
    assert_eq!(dropped(&r, &dispense), Some(Reason::Part2));
    // A general encounter with a SUD reason: the reason goes.
    let encounter = json!({"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p"}, "period": {"start": "2021-01-01"},
        "reasonCode": [{"coding": [{"system": ICD10, "code": "F11.20"}]}, {"coding": [{"system": ICD10, "code": "I10"}]}]});
    let out = after(&r, &encounter).unwrap();
    assert_eq!(out["reasonCode"].as_array().unwrap().len(), 1);
    assert!(has_label(&out, "REDACTED"));
    // Tobacco and nicotine replacement are not Part 2.
    let nicotine = json!({"resourceType": "MedicationDispense", "id": "n", "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "311975"}]},
        "subject": {"reference": "Patient/p"}, "whenHandedOver": "2021-01-01"});
    assert_eq!(run(&r, &nicotine).0, Verdict::Keep);
}

#[test]
fn codes_without_a_system_are_tested_against_every_set() {
    let r = redactor(Part2Mode::Exclude);
    let condition = json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"code": "F1120"}]}});
    assert_eq!(dropped(&r, &condition), Some(Reason::Part2));
}

// ---------------------------------------------------------------- dates

#[test]
fn the_service_date_floor_uses_the_table() {
    let r = redactor(Part2Mode::Exclude);
    // BFD Part D event and carrier claim of 2015.
    assert_eq!(dropped(&r, &fixture("bfd-eob-pde-89.json")), Some(Reason::DateFloor));
    assert_eq!(dropped(&r, &fixture("bfd-eob-carrier.json")), Some(Reason::DateFloor));
    // No billablePeriod: the earliest item decides.
    let mut e = eob(
        &["E11.9"],
        json!([
            {"sequence": 1, "productOrService": cpt("99213"), "servicedDate": "2016-02-10"},
            {"sequence": 2, "productOrService": cpt("36415"), "servicedPeriod": {"start": "2015-12-31"}},
        ]),
    );
    e.as_object_mut().unwrap().remove("billablePeriod");
    assert_eq!(dropped(&r, &e), Some(Reason::DateFloor));
    e["item"][1]["servicedPeriod"]["start"] = json!("2016-01-01");
    assert!(dropped(&r, &e).is_none(), "on the floor is in");
    // Condition: recordedDate, else onset; none: kept.
    let c = |extra: Value| {
        let mut c = json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"}, "code": {"text": "x"}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    assert_eq!(dropped(&r, &c(json!({"onsetDateTime": "2012-04"}))), Some(Reason::DateFloor));
    assert!(dropped(&r, &c(json!({"recordedDate": "2017-01-01", "onsetDateTime": "2012-04"}))).is_none());
    assert!(dropped(&r, &c(json!({}))).is_none());
    assert_eq!(
        dropped(&r, &c(json!({"recordedDate": "last spring"}))),
        Some(Reason::DateFloor),
        "fail closed"
    );
    let obs = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
        "effectivePeriod": {"start": "2015-06-01", "end": "2016-06-01"}});
    assert_eq!(dropped(&r, &obs), Some(Reason::DateFloor));
    // A configured floor.
    let mut cfg = config(Part2Mode::Exclude);
    cfg.service_date_floor = "2010-01-01".into();
    let early = Redactor::with_policies(&cfg, Arc::new(Policies::builtin().unwrap())).unwrap();
    assert!(dropped(&early, &fixture("bfd-eob-pde-89.json")).is_none());
}

// ---------------------------------------------------------------- prior authorization

#[test]
fn service_prior_authorizations_keep_their_decision() {
    let r = redactor(Part2Mode::Exclude);
    let pa = fixture("pdex-PriorAuth1.json");
    let out = after(&r, &pa).unwrap();
    assert_eq!(out["outcome"], pa["outcome"]);
    assert_eq!(out["use"], "preauthorization");
    let adjudication = &out["item"][0]["adjudication"][0];
    assert!(adjudication["extension"][0]["url"].as_str().unwrap().ends_with("extension-reviewAction"));
    assert!(adjudication.get("amount").is_none());
    assert!(out.get("total").is_none());
    let claim_response = fixture("pas-ClaimResponse-1.json");
    assert!(after(&r, &claim_response).is_some());
    assert!(after(&r, &fixture("pas-Claim-1.json")).is_some());
}

#[test]
fn drug_prior_authorizations_are_withheld() {
    let r = redactor(Part2Mode::Exclude);
    let pa = |f: &dyn Fn(&mut Value)| {
        let mut v = fixture("pdex-PriorAuth1.json");
        f(&mut v);
        dropped(&r, &v)
    };
    let pharmacy = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}]});
    assert_eq!(pa(&|v| v["type"] = pharmacy.clone()), Some(Reason::DrugPriorAuth));
    assert_eq!(
        pa(&|v| v["item"][0]["productOrService"] =
            json!({"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "00169-4132-12"}]})),
        Some(Reason::DrugPriorAuth)
    );
    assert_eq!(
        pa(
            &|v| v["item"][0]["productOrService"] = json!({"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1991302"}]})
        ),
        Some(Reason::DrugPriorAuth)
    );
    assert_eq!(
        pa(
            &|v| v["item"][0]["productOrService"] = json!({"coding": [{"system": "https://bluebutton.cms.gov/resources/codesystem/hcpcs", "code": "J0135"}]})
        ),
        Some(Reason::DrugPriorAuth),
        "a medical-benefit drug (J code)"
    );
    // A pharmacy claim (not a PA) is claims data: kept.
    let mut claim = fixture("pdex-PriorAuth1.json");
    claim["use"] = json!("claim");
    claim["type"] = pharmacy;
    assert!(after(&r, &claim).is_some());
}

// ---------------------------------------------------------------- combinations

#[test]
fn rules_combine_in_order_and_count_once() {
    let r = redactor(Part2Mode::Redact);
    // Part 2 + before the floor: counted as Part 2 (withheld in exclude mode).
    let mut e = eob(
        &["F11.20"],
        json!([{"sequence": 1, "diagnosisSequence": [1], "productOrService": cpt("99213")}]),
    );
    e["billablePeriod"]["start"] = json!("2014-01-01");
    assert_eq!(dropped(&redactor(Part2Mode::Exclude), &e), Some(Reason::Part2));
    // In redact mode a redactable record before the floor is withheld for its date.
    assert_eq!(dropped(&r, &e), Some(Reason::DateFloor));
    // Redacted and stripped in one rewrite, both counted.
    let mut e = eob(
        &["F11.20", "I10"],
        json!([{"sequence": 1, "diagnosisSequence": [1, 2], "productOrService": cpt("99213"),
        "adjudication": [{"category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted"}]}, "amount": {"value": 1, "currency": "USD"}}]}]),
    );
    e["total"] = json!([{"category": {"text": "x"}, "amount": {"value": 1, "currency": "USD"}}]);
    let (verdict, report) = run(&r, &e);
    assert!(matches!(verdict, Verdict::Redact { .. }));
    assert_eq!((report.redactions(Reason::Part2), report.redactions(Reason::Financial)), (1, 1));
    assert_eq!(report.withheld_total(), 0);
    let out = after(&r, &e).unwrap();
    assert!(out["meta"]["profile"][0].as_str().unwrap().ends_with("-Basis"));
    assert!(has_label(&out, "REDACTED"));
    // Drug PA + Part 2 medication: Part 2 first.
    let mut pa = fixture("pdex-PriorAuth1.json");
    pa["item"][0]["productOrService"] =
        json!({"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "12496-1208-03"}]});
    assert_eq!(dropped(&redactor(Part2Mode::Exclude), &pa), Some(Reason::Part2));
}

#[test]
fn unreadable_resources_never_leave() {
    let r = redactor(Part2Mode::Exclude);
    for text in [
        "[]",
        "{\"resourceType\":\"Patient\",",
        "{\"id\":\"no-type\"}",
        "{\"resourceType\":\"Condition\",\"id\":\"a\",\"id\":\"b\"}",
        "{\"resourceType\":\"ExplanationOfBenefit\",\"id\":\"a\",\"item\":[],\"item\":[{\"sequence\":1}]}",
    ] {
        let mut report = Disclosure::default();
        assert_eq!(r.apply(text, &mut report), Verdict::Drop(Reason::Unreadable), "{text}");
        assert_eq!(report.withheld(Reason::Unreadable), 1);
    }
    let deep = format!(
        "{{\"resourceType\":\"Basic\",\"id\":\"x\",\"extension\":{}1{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(r.apply(&deep, &mut Disclosure::default()), Verdict::Drop(Reason::Unreadable));
}

// ---------------------------------------------------------------- Bundles

fn bundle(resources: &[Value]) -> Value {
    let entry: Vec<Value> = resources
        .iter()
        .map(|r| {
            json!({"fullUrl": format!("http://up.example/fhir/{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()),
                   "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "total": resources.len(), "entry": entry})
}

/// A Bundle's entries through the data-scope stage: the verdicts, what was
/// counted, and the entries that leave (redacted ones with their new resource).
fn judge_entries_of(r: &Redactor, entries: &str) -> (Vec<Verdict>, Disclosure, Vec<Value>) {
    let raw: Vec<&RawValue> = serde_json::from_str(entries).unwrap();
    let inputs: Vec<EntryInput<'_>> = raw.iter().map(|e| EntryInput::read(e.get())).collect();
    let mut report = Disclosure::default();
    let verdicts = r.judge_entries(&inputs, &mut report, 0);
    let kept = raw
        .iter()
        .zip(&verdicts)
        .filter_map(|(entry, verdict)| {
            let mut entry: Value = serde_json::from_str(entry.get()).unwrap();
            match verdict {
                Verdict::Keep => Some(entry),
                Verdict::Redact { text, .. } => {
                    entry["resource"] = serde_json::from_str(text).unwrap();
                    Some(entry)
                }
                Verdict::Drop(_) => None,
            }
        })
        .collect();
    (verdicts, report, kept)
}

fn redact_entries(r: &Redactor, b: &Value) -> (Vec<Verdict>, Disclosure, Vec<Value>) {
    judge_entries_of(r, &b["entry"].to_string())
}

#[test]
fn bundles_drop_what_points_at_withheld_records() {
    let r = redactor(Part2Mode::Exclude);
    let enc = json!({"resourceType": "Encounter", "id": "enc-1", "status": "finished", "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p"}, "serviceProvider": {"reference": PROGRAM_ORG}, "period": {"start": "2021-01-01"}});
    let obs = json!({"resourceType": "Observation", "id": "obs-1", "status": "final", "code": {"text": "drug screen"},
        "subject": {"reference": "Patient/p"}, "encounter": {"reference": "Encounter/enc-1"}, "effectiveDateTime": "2021-01-01"});
    let old = json!({"resourceType": "Observation", "id": "obs-old", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2014-01-01"});
    let prov_old = json!({"resourceType": "Provenance", "id": "prov-1", "recorded": "2021-01-01T00:00:00Z",
        "target": [{"reference": "http://up.example/fhir/Observation/obs-old"}], "agent": [{"who": {"reference": "Organization/org-payer"}}]});
    let later = json!({"resourceType": "Observation", "id": "obs-2", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2021-01-01", "hasMember": [{"reference": "Observation/obs-old"}]});
    let fine = json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"}, "code": {"text": "x"}});
    let b = bundle(&[enc, obs, old, prov_old, later.clone(), fine.clone()]);
    let (_, report, kept) = redact_entries(&r, &b);
    let ids: Vec<&str> = kept.iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["obs-2", "c1"], "a pre-floor target keeps its non-Provenance referrers");
    assert_eq!((report.withheld(Reason::Part2), report.withheld(Reason::DateFloor)), (2, 2));
    assert_eq!(report.withheld_total(), 4);
    // Nothing changes: every verdict is keep.
    let (verdicts, _, _) = redact_entries(&r, &bundle(&[fine, later]));
    assert!(verdicts.iter().all(|v| *v == Verdict::Keep));
}

#[test]
fn includes_of_withheld_matches_go_with_them() {
    let r = redactor(Part2Mode::Exclude);
    let mut program_eob =
        eob(&["E11.9"], json!([{"sequence": 1, "careTeamSequence": [1], "productOrService": cpt("90832")}]));
    program_eob["id"] = json!("eob-program");
    program_eob["provider"] = json!({"reference": PROGRAM_ORG});
    program_eob["careTeam"] = json!([{"sequence": 1, "provider": {"reference": "Practitioner/prac-18"}}]);
    let mut general =
        eob(&["E11.9"], json!([{"sequence": 1, "careTeamSequence": [1], "productOrService": cpt("99213")}]));
    general["careTeam"] = json!([{"sequence": 1, "provider": {"reference": "Practitioner/prac-04"}}]);
    let include = |resource: Value| {
        json!({"fullUrl": format!("http://up.example/fhir/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap()),
               "resource": resource, "search": {"mode": "include"}})
    };
    let prov = json!({"resourceType": "Provenance", "id": "prov-1", "recorded": "2021-01-01T00:00:00Z",
        "target": [{"reference": "ExplanationOfBenefit/eob-program"}], "agent": [{"who": {"reference": "Organization/org-payer"}}]});
    let mut b = bundle(&[program_eob, general]);
    let entries = b["entry"].as_array_mut().unwrap();
    entries.push(include(
        json!({"resourceType": "Practitioner", "id": "prac-18", "name": [{"family": "Okonkwo"}]}),
    ));
    entries.push(include(
        json!({"resourceType": "Practitioner", "id": "prac-04", "name": [{"family": "Ashworth"}]}),
    ));
    entries.push(include(json!({"resourceType": "Organization", "id": "org-grace"})));
    entries.push(include(prov));
    let (_, report, kept) = redact_entries(&r, &b);
    let ids: Vec<&str> = kept.iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["t1", "prac-04", "org-grace"], "the program's practitioner and the Provenance went");
    assert_eq!(report.withheld(Reason::Part2), 3);
}

#[test]
fn bundle_entries_without_a_resource_or_unreadable_are_withheld() {
    let r = redactor(Part2Mode::Exclude);
    // Written by hand: a JSON value cannot hold a duplicated member.
    let entries = r#"[
        {"request": {"method": "DELETE", "url": "Condition/cond-0003-5"}, "response": {"status": "204"}},
        {"resource": {"resourceType": "Patient", "id": "p"}},
        {"resource": {"resourceType": "Patient", "id": "q"}, "resource": {"resourceType": "Patient", "id": "r"}}
    ]"#;
    let (_, report, kept) = judge_entries_of(&r, entries);
    assert_eq!(kept, vec![json!({"resource": {"resourceType": "Patient", "id": "p"}})]);
    assert_eq!(report.withheld(Reason::Unreadable), 2);
}

#[test]
fn nested_bundles_are_kept_only_when_untouched() {
    let r = redactor(Part2Mode::Exclude);
    let clean = bundle(&[json!({"resourceType": "Patient", "id": "p"})]);
    assert_eq!(run(&r, &clean).0, Verdict::Keep);
    let mut dirty = bundle(&[fixture("ds4p-part2-condition.json")]);
    assert_eq!(dropped(&r, &dirty), Some(Reason::Part2));
    let mut deep = clean.clone();
    for _ in 0..4 {
        deep = bundle(&[{
            let mut d = deep.clone();
            d["id"] = json!("inner");
            d
        }]);
    }
    assert_eq!(dropped(&r, &deep), Some(Reason::Unreadable));
    dirty["entry"] = json!([]);
    assert_eq!(run(&r, &dirty).0, Verdict::Keep);
}

#[test]
fn invalid_programs_in_the_config_are_refused() {
    let mut cfg = config(Part2Mode::Exclude);
    cfg.part2_programs.push("recovery".into());
    let err = Redactor::with_policies(&cfg, Arc::new(Policies::builtin().unwrap())).unwrap_err();
    assert!(err.to_string().contains("policy.part2_programs"), "{err}");
}

// ---------------------------------------------------------------- properties

const SUD_DX: [&str; 6] = ["F10.20", "F11.23", "F14.20", "F19.20", "O99.320", "Z71.51"];
const OTHER_DX: [&str; 6] = ["E11.9", "I10", "F17.210", "F32.A", "Z00.00", "J45.909"];
const SUD_PROC: [&str; 3] = ["H0004", "G2067", "99408"];
const OTHER_PROC: [&str; 4] = ["99213", "99214", "36415", "99406"];

/// (SUD code?, code pick, diagnosis pointers, care team pointer, extra adjudication?)
type GenItem = (bool, usize, Vec<usize>, Option<usize>, bool);

#[derive(Debug, Clone)]
struct GenEob {
    diagnoses: Vec<(bool, usize)>,
    items: Vec<GenItem>,
    care_team: Vec<bool>,
    money: bool,
    narrative: bool,
    /// A contained facility Organization (`#fac`, supportingInfo): the
    /// program (`Some(true)`) or not.
    contained: Option<bool>,
}

fn gen_eob() -> impl Strategy<Value = GenEob> {
    let diagnoses = prop::collection::vec((any::<bool>(), 0usize..6), 0..5);
    let care_team = prop::collection::vec(prop::bool::weighted(0.3), 0..3);
    let contained = prop::option::of(prop::bool::weighted(0.3));
    (diagnoses, care_team, any::<bool>(), any::<bool>(), contained).prop_flat_map(
        |(diagnoses, care_team, money, narrative, contained)| {
            let nd = diagnoses.len();
            let nc = care_team.len();
            let item = (
                prop::bool::weighted(0.25),
                0usize..4,
                prop::collection::vec(0..nd.max(1) + 1, 0..3),
                prop::option::of(0..nc.max(1) + 1),
                any::<bool>(),
            );
            prop::collection::vec(item, 1..5).prop_map(move |items| GenEob {
                diagnoses: diagnoses.clone(),
                items,
                care_team: care_team.clone(),
                money,
                narrative,
                contained,
            })
        },
    )
}

fn build(g: &GenEob) -> Value {
    let diagnosis: Vec<Value> = g
        .diagnoses
        .iter()
        .enumerate()
        .map(|(i, (sud, k))| {
            let code = if *sud { SUD_DX[k % SUD_DX.len()] } else { OTHER_DX[k % OTHER_DX.len()] };
            json!({"sequence": i + 1, "diagnosisCodeableConcept": {"coding": [{"system": ICD10, "code": code}]}})
        })
        .collect();
    let care_team: Vec<Value> = g
        .care_team
        .iter()
        .enumerate()
        .map(|(i, program)| {
            let provider = if *program {
                json!({"identifier": {"system": NPI, "value": PROGRAM_NPI}})
            } else {
                json!({"reference": format!("Practitioner/prac-{i}")})
            };
            json!({"sequence": i + 1, "provider": provider})
        })
        .collect();
    let items: Vec<Value> = g
        .items
        .iter()
        .enumerate()
        .map(|(i, (sud, k, dx, team, adj))| {
            let code = if *sud { SUD_PROC[k % SUD_PROC.len()] } else { OTHER_PROC[k % OTHER_PROC.len()] };
            let mut item = json!({"sequence": i + 1, "productOrService": cpt(code), "servicedDate": "2021-03-01"});
            let dx: Vec<usize> = dx.iter().map(|d| d + 1).filter(|d| *d <= g.diagnoses.len()).collect();
            if !dx.is_empty() {
                item["diagnosisSequence"] = json!(dx);
            }
            if let Some(t) = team
                && *t < g.care_team.len()
            {
                item["careTeamSequence"] = json!([t + 1]);
            }
            if g.money {
                item["net"] = json!({"value": 10, "currency": "USD"});
                let mut adjudication = vec![json!({"category": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted"}]}, "amount": {"value": 10, "currency": "USD"}})];
                if *adj {
                    adjudication.push(json!({"category": {"coding": [{"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator", "code": "benefitpaymentstatus"}]}, "reason": {"coding": [{"code": "innetwork"}]}}));
                }
                item["adjudication"] = json!(adjudication);
            }
            item
        })
        .collect();
    let mut e = eob(&[], json!(items));
    e["diagnosis"] = json!(diagnosis);
    if diagnosis.is_empty() {
        e.as_object_mut().unwrap().remove("diagnosis");
    }
    if !care_team.is_empty() {
        e["careTeam"] = json!(care_team);
    }
    if g.money {
        e["total"] = json!([{"category": {"text": "submitted"}, "amount": {"value": 10, "currency": "USD"}}]);
        e["payment"] = json!({"amount": {"value": 10, "currency": "USD"}});
    }
    if !g.narrative {
        e.as_object_mut().unwrap().remove("text");
    }
    if let Some(program) = g.contained {
        let npi = if program { PROGRAM_NPI } else { "1417987256" };
        e["contained"] = json!([{"resourceType": "Organization", "id": "fac",
            "identifier": [{"system": NPI, "value": npi}]}]);
        e["supportingInfo"] = json!([{"sequence": 1, "category": {"coding": [{"code": "servicefacility"}]},
            "valueReference": {"reference": "#fac"}}]);
    }
    e
}

/// Every `#id` reference in a resource names one of its contained resources.
fn local_references_resolve(resource: &Value) -> bool {
    let ids: HashSet<&str> =
        resource["contained"].as_array().into_iter().flatten().filter_map(|c| c["id"].as_str()).collect();
    let mut all = Vec::new();
    strings(resource, &mut all);
    all.iter().filter_map(|s| s.strip_prefix('#')).all(|id| ids.contains(id))
}

fn is_part2(g: &GenEob) -> bool {
    g.diagnoses.iter().any(|(sud, _)| *sud)
        || g.items.iter().any(|i| i.0)
        || g.care_team.iter().any(|p| *p)
        || g.contained == Some(true)
}

/// Sequence numbers of an element's entries.
fn sequences(v: &Value, member: &str) -> HashSet<i64> {
    v[member]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["sequence"].as_i64()).collect())
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn redacted_eobs_stay_valid_fhir(g in gen_eob()) {
        let r = redactor(Part2Mode::Redact);
        let input = build(&g);
        let text = input.to_string();
        let mut report = Disclosure::default();
        let verdict = r.apply(&text, &mut report);
        let out = match &verdict {
            Verdict::Drop(reason) => {
                prop_assert_eq!(*reason, Reason::Part2);
                prop_assert!(is_part2(&g));
                return Ok(());
            }
            // A Part 2 program in `contained` is never partially redacted.
            _ if g.contained == Some(true) => {
                return Err(TestCaseError::fail("a contained program must withhold the resource"));
            }
            Verdict::Keep => {
                prop_assert!(!is_part2(&g) && !g.money);
                input.clone()
            }
            Verdict::Redact { text: t, .. } => serde_json::from_str::<Value>(t).expect("valid JSON"),
        };
        // Required elements kept.
        for required in ["resourceType", "id", "status", "type", "use", "patient", "created", "insurer", "provider", "outcome", "insurance"] {
            prop_assert!(out.get(required).is_some(), "{} missing", required);
        }
        prop_assert_eq!(&out["id"], &input["id"]);
        prop_assert!(local_references_resolve(&out), "a dangling #reference");
        // No empty arrays, no dangling sequence references.
        let diagnoses = sequences(&out, "diagnosis");
        let teams = sequences(&out, "careTeam");
        let items = out["item"].as_array().expect("an EOB keeps an item");
        prop_assert!(!items.is_empty());
        for item in items {
            for d in item["diagnosisSequence"].as_array().into_iter().flatten() {
                prop_assert!(diagnoses.contains(&d.as_i64().unwrap()), "dangling diagnosisSequence {}", d);
            }
            for t in item["careTeamSequence"].as_array().into_iter().flatten() {
                prop_assert!(teams.contains(&t.as_i64().unwrap()), "dangling careTeamSequence {}", t);
            }
            for key in ["diagnosisSequence", "careTeamSequence", "adjudication"] {
                prop_assert!(item.get(key).is_none_or(|v| v.as_array().is_some_and(|a| !a.is_empty())), "empty {}", key);
            }
        }
        for key in ["diagnosis", "careTeam"] {
            prop_assert!(out.get(key).is_none_or(|v| v.as_array().is_some_and(|a| !a.is_empty())), "empty {}", key);
        }
        // Nothing Part 2 or financial is left.
        let text = out.to_string();
        for code in SUD_DX.iter().chain(&SUD_PROC) {
            prop_assert!(!text.contains(&format!("\"{code}\"")), "{} left", code);
        }
        prop_assert!(!text.contains(PROGRAM_NPI));
        for money in ["amount", "net", "total", "payment"] {
            prop_assert!(!contains_key(&out, money), "{} left", money);
        }
        prop_assert_eq!(has_label(&out, "REDACTED"), is_part2(&g));
        prop_assert_eq!(report.redactions(Reason::Part2), is_part2(&g) as u32);
        if is_part2(&g) {
            prop_assert!(out.get("text").is_none());
        }
        // Exclude mode withholds exactly the Part 2 ones.
        let excluded = dropped(&redactor(Part2Mode::Exclude), &input);
        prop_assert_eq!(excluded.is_some(), is_part2(&g));
    }

    #[test]
    fn the_scanner_never_panics_and_fails_closed(text in "\\PC{0,200}") {
        let r = redactor(Part2Mode::Redact);
        let mut report = Disclosure::default();
        let verdict = r.apply(&text, &mut report);
        if serde_json::from_str::<serde_json::Map<String, Value>>(&text).is_err() {
            prop_assert_eq!(verdict, Verdict::Drop(Reason::Unreadable));
        }
    }
}

#[test]
fn generated_eobs_cover_the_interesting_cases() {
    // A fixed sample of the generator hits redaction, withholding and clean cases.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    let r = redactor(Part2Mode::Redact);
    for _ in 0..300 {
        let g = gen_eob().new_tree(&mut runner).unwrap().current();
        let kind = match run(&r, &build(&g)).0 {
            Verdict::Drop(_) => "dropped",
            Verdict::Redact { text: t, .. } if t.contains("REDACTED") => "redacted",
            Verdict::Redact { .. } => "stripped",
            Verdict::Keep => "kept",
        };
        *seen.entry(kind).or_default() += 1;
    }
    for kind in ["dropped", "redacted", "stripped", "kept"] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 5, "{seen:?}");
    }
}
