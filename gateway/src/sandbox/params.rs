//! The search parameters the sandbox supports, per resource type.
//!
//! A small subset of the R4 SearchParameter registry (plus the CARIN BB
//! `insurer`, `type` and `service-date` parameters on ExplanationOfBenefit
//! and PDex's `managingEntity` spelling on Group), written as data: each
//! parameter names its kind and the element paths its values come from.
//! Paths are dotted element names; arrays are flattened on the way, and
//! choice elements are listed once per concrete name (`effectiveDateTime`,
//! `effectivePeriod`).

/// The kind of a search parameter, as in R4 `SearchParameter.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Reference,
    Token,
    Date,
    String,
}

impl Kind {
    pub(crate) fn fhir_name(self) -> &'static str {
        match self {
            Kind::Reference => "reference",
            Kind::Token => "token",
            Kind::Date => "date",
            Kind::String => "string",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug)]
pub(crate) struct ParamDef {
    pub name: &'static str,
    pub kind: Kind,
    pub paths: &'static [&'static str],
    /// Reference targets: only references to these types are indexed under
    /// this parameter (`Condition.patient` is `subject` where it is a
    /// Patient). Empty means any type.
    pub targets: &'static [&'static str],
}

const fn r(name: &'static str, paths: &'static [&'static str], targets: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: Kind::Reference, paths, targets }
}
const fn t(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: Kind::Token, paths, targets: &[] }
}
const fn d(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: Kind::Date, paths, targets: &[] }
}
const fn s(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: Kind::String, paths, targets: &[] }
}

/// Parameters every type has (besides `_id`, which is served from the id index).
pub(crate) static COMMON: &[ParamDef] = &[
    d("_lastUpdated", &["meta.lastUpdated"]),
    t("_security", &["meta.security"]),
    t("_tag", &["meta.tag"]),
    t("_profile", &["meta.profile"]),
];

const PAT: &[&str] = &["Patient"];
const PAT_GROUP: &[&str] = &["Patient", "Group"];
const ORG: &[&str] = &["Organization"];
const PROVIDERS: &[&str] = &["Practitioner", "PractitionerRole", "Organization"];
const PERFORMERS: &[&str] = &["Practitioner", "PractitionerRole", "Organization", "Patient", "RelatedPerson"];
const ANY: &[&str] = &[];

static PATIENT: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    s("name", &["name"]),
    s("family", &["name.family"]),
    s("given", &["name.given"]),
    d("birthdate", &["birthDate"]),
    t("gender", &["gender"]),
    t("active", &["active"]),
    s("address", &["address"]),
    s("address-city", &["address.city"]),
    s("address-state", &["address.state"]),
    s("address-postalcode", &["address.postalCode"]),
    t("telecom", &["telecom"]),
    t("phone", &["telecom"]),
    r("general-practitioner", &["generalPractitioner"], PROVIDERS),
    r("organization", &["managingOrganization"], ORG),
    r("link", &["link.other"], &["Patient", "RelatedPerson"]),
];

static COVERAGE: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("beneficiary", &["beneficiary"], PAT),
    r("patient", &["beneficiary"], PAT),
    r("subscriber", &["subscriber"], &["Patient", "RelatedPerson"]),
    r("policy-holder", &["policyHolder"], &["Patient", "RelatedPerson", "Organization"]),
    r("payor", &["payor"], &["Organization", "Patient", "RelatedPerson"]),
    t("status", &["status"]),
    t("type", &["type"]),
    s("dependent", &["dependent"]),
    t("class-type", &["class.type"]),
    s("class-value", &["class.value"]),
];

static EOB: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["patient"], PAT),
    r("provider", &["provider"], PROVIDERS),
    r("insurer", &["insurer"], ORG),
    r("care-team", &["careTeam.provider"], PROVIDERS),
    r("coverage", &["insurance.coverage"], &["Coverage"]),
    r("claim", &["claim"], &["Claim"]),
    r("payee", &["payee.party"], PERFORMERS),
    r("facility", &["facility"], &["Location"]),
    r("enterer", &["enterer"], &["Practitioner", "PractitionerRole"]),
    r("encounter", &["item.encounter"], &["Encounter"]),
    t("status", &["status"]),
    t("use", &["use"]),
    t("type", &["type"]),
    d("created", &["created"]),
    d("service-date", &["billablePeriod", "item.servicedDate", "item.servicedPeriod"]),
    s("disposition", &["disposition"]),
];

static CLAIM: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["patient"], PAT),
    r("provider", &["provider"], PROVIDERS),
    r("insurer", &["insurer"], ORG),
    r("care-team", &["careTeam.provider"], PROVIDERS),
    r("payee", &["payee.party"], PERFORMERS),
    r("facility", &["facility"], &["Location"]),
    r("enterer", &["enterer"], &["Practitioner", "PractitionerRole"]),
    t("use", &["use"]),
    t("status", &["status"]),
    t("priority", &["priority"]),
    d("created", &["created"]),
];

static CLAIM_RESPONSE: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["patient"], PAT),
    r("request", &["request"], &["Claim"]),
    r("insurer", &["insurer"], ORG),
    r("requestor", &["requestor"], PROVIDERS),
    t("use", &["use"]),
    t("outcome", &["outcome"]),
    t("status", &["status"]),
    d("created", &["created"]),
    s("disposition", &["disposition"]),
];

static CONDITION: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["subject"], PAT),
    r("subject", &["subject"], PAT_GROUP),
    r("encounter", &["encounter"], &["Encounter"]),
    r("asserter", &["asserter"], PERFORMERS),
    t("code", &["code"]),
    t("category", &["category"]),
    t("clinical-status", &["clinicalStatus"]),
    t("verification-status", &["verificationStatus"]),
    d("recorded-date", &["recordedDate"]),
    d("onset-date", &["onsetDateTime", "onsetPeriod"]),
];

static OBSERVATION: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["subject"], PAT),
    r("subject", &["subject"], &["Patient", "Group", "Device", "Location"]),
    r("encounter", &["encounter"], &["Encounter"]),
    r(
        "performer",
        &["performer"],
        &["Practitioner", "PractitionerRole", "Organization", "CareTeam", "Patient", "RelatedPerson"],
    ),
    t("code", &["code"]),
    t("category", &["category"]),
    t("status", &["status"]),
    t("value-concept", &["valueCodeableConcept"]),
    d("date", &["effectiveDateTime", "effectivePeriod", "effectiveInstant"]),
];

static ENCOUNTER: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["subject"], PAT),
    r("subject", &["subject"], PAT_GROUP),
    r("service-provider", &["serviceProvider"], ORG),
    r("participant", &["participant.individual"], &["Practitioner", "PractitionerRole", "RelatedPerson"]),
    r("practitioner", &["participant.individual"], &["Practitioner"]),
    r("location", &["location.location"], &["Location"]),
    t("status", &["status"]),
    t("class", &["class"]),
    t("type", &["type"]),
    t("reason-code", &["reasonCode"]),
    d("date", &["period"]),
];

static MEDICATION_DISPENSE: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["subject"], PAT),
    r("subject", &["subject"], PAT_GROUP),
    r(
        "performer",
        &["performer.actor"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "Device", "RelatedPerson"],
    ),
    r("receiver", &["receiver"], &["Patient", "Practitioner"]),
    r("medication", &["medicationReference"], &["Medication"]),
    t("code", &["medicationCodeableConcept"]),
    t("status", &["status"]),
    t("type", &["type"]),
    d("whenhandedover", &["whenHandedOver"]),
    d("whenprepared", &["whenPrepared"]),
];

static PROCEDURE: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["subject"], PAT),
    r("subject", &["subject"], PAT_GROUP),
    r(
        "performer",
        &["performer.actor"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "Device", "RelatedPerson"],
    ),
    r("encounter", &["encounter"], &["Encounter"]),
    r("location", &["location"], &["Location"]),
    t("code", &["code"]),
    t("status", &["status"]),
    d("date", &["performedDateTime", "performedPeriod"]),
];

static PRACTITIONER: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    s("name", &["name"]),
    s("family", &["name.family"]),
    s("given", &["name.given"]),
    t("active", &["active"]),
    t("gender", &["gender"]),
];

static PRACTITIONER_ROLE: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("practitioner", &["practitioner"], &["Practitioner"]),
    r("organization", &["organization"], ORG),
    r("location", &["location"], &["Location"]),
    t("role", &["code"]),
    t("specialty", &["specialty"]),
    t("active", &["active"]),
];

static ORGANIZATION: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    s("name", &["name", "alias"]),
    t("type", &["type"]),
    t("active", &["active"]),
    r("partof", &["partOf"], ORG),
    s("address", &["address"]),
];

static LOCATION: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    s("name", &["name", "alias"]),
    r("organization", &["managingOrganization"], ORG),
    t("status", &["status"]),
    s("address", &["address"]),
    s("address-city", &["address.city"]),
    s("address-state", &["address.state"]),
];

static GROUP: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    // R4 name and the PDex spelling, both served.
    r(
        "managing-entity",
        &["managingEntity"],
        &["Organization", "RelatedPerson", "Practitioner", "PractitionerRole"],
    ),
    r(
        "managingEntity",
        &["managingEntity"],
        &["Organization", "RelatedPerson", "Practitioner", "PractitionerRole"],
    ),
    r(
        "member",
        &["member.entity"],
        &["Patient", "Practitioner", "PractitionerRole", "Device", "Medication", "Substance", "Group"],
    ),
    t("type", &["type"]),
    t("actual", &["actual"]),
    t("code", &["code"]),
];

static PROVENANCE: &[ParamDef] = &[
    r("target", &["target"], ANY),
    r("patient", &["target"], PAT),
    r(
        "agent",
        &["agent.who"],
        &["Practitioner", "PractitionerRole", "RelatedPerson", "Patient", "Device", "Organization"],
    ),
    r("entity", &["entity.what"], ANY),
    d("recorded", &["recorded"]),
];

/// Patient-compartment types the dataset has no data for: searchable by
/// patient so that exports and type sweeps get empty Bundles rather than
/// errors, as from a real server.
static GENERIC: &[ParamDef] = &[
    t("identifier", &["identifier"]),
    r("patient", &["patient", "subject"], PAT),
    r("subject", &["subject"], ANY),
    t("status", &["status"]),
    t("code", &["code"]),
    t("category", &["category"]),
];

static MEDICATION: &[ParamDef] = &[t("identifier", &["identifier"]), t("code", &["code"])];

/// Every supported type and its own parameters (the COMMON ones apply too).
pub(crate) static TYPES: &[(&str, &[ParamDef])] = &[
    ("Patient", PATIENT),
    ("Coverage", COVERAGE),
    ("ExplanationOfBenefit", EOB),
    ("Claim", CLAIM),
    ("ClaimResponse", CLAIM_RESPONSE),
    ("Condition", CONDITION),
    ("Observation", OBSERVATION),
    ("Encounter", ENCOUNTER),
    ("MedicationDispense", MEDICATION_DISPENSE),
    ("Procedure", PROCEDURE),
    ("Practitioner", PRACTITIONER),
    ("PractitionerRole", PRACTITIONER_ROLE),
    ("Organization", ORGANIZATION),
    ("Location", LOCATION),
    ("Group", GROUP),
    ("Provenance", PROVENANCE),
    ("Medication", MEDICATION),
    ("AllergyIntolerance", GENERIC),
    ("CarePlan", GENERIC),
    ("CareTeam", GENERIC),
    ("Consent", GENERIC),
    ("Device", GENERIC),
    ("DiagnosticReport", GENERIC),
    ("DocumentReference", GENERIC),
    ("Goal", GENERIC),
    ("Immunization", GENERIC),
    ("MedicationRequest", GENERIC),
    ("MedicationStatement", GENERIC),
    ("RelatedPerson", GENERIC),
    ("ServiceRequest", GENERIC),
];

/// The parameters of `rtype`, or None when the type is not supported.
pub(crate) fn type_params(rtype: &str) -> Option<&'static [ParamDef]> {
    TYPES.iter().find(|(name, _)| *name == rtype).map(|(_, params)| *params)
}

/// Look up a search parameter (own or common) of `rtype`.
pub(crate) fn param(rtype: &str, name: &str) -> Option<&'static ParamDef> {
    type_params(rtype)?.iter().chain(COMMON.iter()).find(|p| p.name == name)
}
