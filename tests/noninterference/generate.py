#!/usr/bin/env python3
"""Data for the differential non-interference test (tests/noninterference/).

Two sandbox upstreams are compared through two gateways, with the same client
(org-grace) and the same request corpus:

    A = examples/dataset/payer.ndjson + base.ndjson
    B = examples/dataset/payer.ndjson + base.ndjson + hidden.ndjson + financial.ndjson

hidden.ndjson and financial.ndjson add only data that org-grace may not see
(other patients, 42 CFR Part 2 records, an opted-out member's records,
versions owned by other patients, money), so every answer must be the same
bytes after normalising volatile fields. See README.md for what each group of
records tests.

Deterministic (no randomness): every run writes the same bytes.

    python3 tests/noninterference/generate.py          # regenerate
    python3 tests/noninterference/generate.py --check  # exit 1 if the files are stale
"""

import argparse
import copy
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET = os.path.normpath(os.path.join(HERE, "..", "..", "examples", "dataset"))

# ------------------------------------------------------------------ constants

CLIENT = {
    "client_id": "grace",
    "organization": "Organization/org-grace",
    "org": "org-grace",
    "npi": "1417987256",
    "scopes": ["system/*.read"],
}
MARK = "HIDDEN-SECRET"        # free text of every hidden.ndjson record that has a text field
MONEY_MARK = "MONEY-SECRET"   # free text added by financial.ndjson

NPI_SYS = "http://hl7.org/fhir/sid/us-npi"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
CPT = "http://www.ama-assn.org/go/cpt"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
DS4P_BASIS = "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-sec-label-basis"
ISO4217 = "urn:iso:std:iso:4217"
XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">%s</div>'

PROF = {
    "Patient": "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Patient",
    "Coverage": "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Coverage",
    "Condition": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-problems-health-concerns",
    "Observation": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab",
    "Encounter": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-encounter",
    "Procedure": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-procedure",
    "MedicationDispense": "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-medicationdispense",
    "Provenance": "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance",
    "ExplanationOfBenefit": "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-ExplanationOfBenefit-Professional-NonClinician",
    "DiagnosticReport": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-lab",
    "Medication": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-medication",
    "Claim": None,
    "ClaimResponse": None,
    "Appointment": None,
}

# Roles of org-grace's visible members in this test (all in facts
# attribution.org-grace.visible; checked at generation time).
SUD = "pat-0174"      # gets hidden Part 2 records
LINK = "pat-0082"     # gets hidden records that name hidden patients elsewhere
SUBSCRIBER = "pat-0262"  # visible subscriber of a hidden dependent (h-pat-05); financial overlay
MOVER = "pat-0280"    # owner of version 1 of the h-move-* records; financial overlay
OPT_OUT = "pat-0291"  # the test PUTs an opt-out for this member on both gateways

# Multi-version resources: D holds version 1, base.ndjson version 3 (both
# owned by the visible member), hidden.ndjson version 2 (owned by a hidden
# patient).
MULTI = [
    ("Condition/cond-0182-2", "h-pat-01", "2025-02-03T10:00:00Z", "2025-05-12T10:00:00Z"),
    ("Observation/obs-0256-2", "h-pat-02", "2025-02-04T10:00:00Z", "2025-05-13T10:00:00Z"),
    ("Encounter/enc-0231-3", "h-pat-03", "2025-02-05T10:00:00Z", "2025-05-14T10:00:00Z"),
    ("ExplanationOfBenefit/eob-0001-1", "h-pat-04", "2025-02-06T10:00:00Z", "2025-05-15T10:00:00Z"),
]

# Hidden patients: id, member id, family, given, gender, birthDate, phone,
# address line, city, attribution Group they join (never grp-grace).
HIDDEN_PATIENTS = [
    ("h-pat-01", "HX7100101-01", "Quenbyhall", ["Orlaith", "T."], "female", "1971-02-14",
     "401-555-0711", "17 Marrowgate Row", "Fairview", "grp-hopkins"),
    ("h-pat-02", "HX7100202-01", "Ravensworthy", ["Tobiah", "E."], "male", "1984-09-03",
     "401-555-0722", "28 Quillfeather Ln", "Riverton", "grp-valley"),
    ("h-pat-03", "HX7100303-01", "Ashcombery", ["Linnaea"], "female", "1990-12-30",
     "401-555-0733", "39 Brackenholt Way", "Greenville", None),
    ("h-pat-04", "HX7100404-01", "Pellbrighton", ["Desmondo", "K."], "male", "1966-05-21",
     "401-555-0744", "41 Thistlecombe Ct", "Fairview", None),
    ("h-pat-05", "HX7100505-02", "Wrexleigh", ["Imogena"], "female", "1979-07-07",
     "401-555-0755", "6253 Linden Dr", "Riverton", None),  # lives with pat-0262
    ("h-pat-06", "HX7100606-01", "Farrowdane", ["Cyrusel"], "male", "1958-03-11",
     "401-555-0766", "52 Wychbourne St", "Riverton", None),
]
HP = {p[0]: p for p in HIDDEN_PATIENTS}

# Financial overlay: D resources re-emitted (same versionId) with money added.
FINANCIAL = [
    "ExplanationOfBenefit/eob-0262-2",
    "ExplanationOfBenefit/eob-0280-3",
    "Claim/claim-pa-0082-2",
    "ClaimResponse/claimresp-pa-0082-2",
    "Coverage/cov-0262",
    "Coverage/cov-0280",
]

# Leak classes named in the brief (README maps groups to them).
LEAK_CLASSES = {
    "1-paging": "paging side channel: pages filled from further upstream pages, next/total",
    "2-programs": "unclassified Part 2 programs (records identified only by the program)",
    "3-money": "money outside the listed financial elements",
    "4-pointers": "pointers to withheld resources (Part 2 contagion, _include targets)",
    "5-history": "history and vread",
    "6-provenance": "_revinclude=Provenance:target",
    "7-identifier": "identifier-only owner links",
    "8-duplicate-keys": "duplicate JSON keys (not data here)",
    "9-noise": "non-resource Bundle members (sandbox noise mode)",
    "10-metadata": "/metadata",
}


# ------------------------------------------------------------------ helpers

def dumps(r):
    return json.dumps(r, separators=(",", ":"), ensure_ascii=False)


def ref(key):
    return {"reference": key}


def coding(system, code, display=None):
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def cc(system, code, display=None, text=None):
    out = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


def narrative(text):
    return {"status": "generated", "div": XHTML % text}


def meta(rtype, last_updated, version="1", security=None):
    m = {"versionId": version, "lastUpdated": last_updated}
    if PROF.get(rtype):
        m["profile"] = [PROF[rtype]]
    if security:
        m["security"] = security
    return m


def insert_after(obj, after, key, value):
    """A copy of dict `obj` with `key` inserted after key `after` (or appended)."""
    out = {}
    placed = False
    for k, v in obj.items():
        out[k] = v
        if k == after:
            out[key] = value
            placed = True
    if not placed:
        out[key] = value
    return out


def insert_before(obj, before, key, value):
    out = {}
    placed = False
    for k, v in obj.items():
        if k == before and not placed:
            out[key] = value
            placed = True
        out[k] = v
    if not placed:
        out[key] = value
    return out


def member_identifier(member_id, with_type=True):
    ident = {}
    if with_type:
        ident["type"] = cc("http://terminology.hl7.org/CodeSystem/v2-0203", "MB", "Member Number")
    ident["system"] = FACTS_D["member_id_system"]
    ident["value"] = member_id
    if with_type:
        ident["assigner"] = ref("Organization/org-payer")
    return ident


def identifier_only_patient(member_id):
    """A Reference that names a patient only by the payer's member id."""
    return {"type": "Patient", "identifier": {"system": FACTS_D["member_id_system"], "value": member_id}}


def identifier_only_npi(npi, rtype="Organization"):
    return {"type": rtype, "identifier": {"system": NPI_SYS, "value": npi}}


def load_dataset():
    path = os.path.join(DATASET, "payer.ndjson")
    res = {}
    order = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for line in text.splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        key = "%s/%s" % (r["resourceType"], r["id"])
        res[key] = r
        order.append(key)
    return text, res, order


with open(os.path.join(DATASET, "facts.json"), encoding="utf-8") as _f:
    FACTS_D = json.load(_f)
D_TEXT, D, D_ORDER = load_dataset()


# ------------------------------------------------------------------ builders

class Out:
    """Resources of one output file, in order, with their groups."""

    def __init__(self):
        self.items = []  # (resource, group, leak classes, note)

    def add(self, r, group, classes, note=""):
        self.items.append((r, group, classes, note))
        return r

    def text(self):
        return "".join(dumps(r) + "\n" for r, _, _, _ in self.items)


def patient(pid, lu):
    p = HP[pid]
    r = {
        "resourceType": "Patient", "id": pid, "meta": meta("Patient", lu),
        "text": narrative("%s member %s %s" % (MARK, p[2], p[1])),
        "identifier": [member_identifier(p[1])],
        "active": True,
        "name": [{"use": "official", "family": p[2], "given": p[3]}],
        "telecom": [{"system": "phone", "value": p[6], "use": "home"}],
        "gender": p[4], "birthDate": p[5],
        "address": [{"use": "home", "line": [p[7]], "city": p[8], "state": "RI", "postalCode": "02901", "country": "US"}],
    }
    if pid == "h-pat-06":
        # Patient.link to a visible member: never makes either one visible.
        r["link"] = [{"other": ref("Patient/" + LINK), "type": "seealso"}]
    return r


def coverage(pid, cid, lu, subscriber=None, relationship="self", subscriber_id=None):
    p = HP[pid]
    sub = subscriber or pid
    return {
        "resourceType": "Coverage", "id": cid, "meta": meta("Coverage", lu),
        "text": narrative("%s coverage of %s" % (MARK, p[2])),
        "identifier": [member_identifier(p[1])],
        "status": "active",
        "type": cc(ACTCODE, "HIP", "health insurance plan policy"),
        "policyHolder": ref("Patient/" + sub),
        "subscriber": ref("Patient/" + sub),
        "subscriberId": subscriber_id or p[1].rsplit("-", 1)[0],
        "beneficiary": ref("Patient/" + pid),
        "dependent": p[1].rsplit("-", 1)[1],
        "relationship": cc("http://terminology.hl7.org/CodeSystem/subscriber-relationship", relationship,
                           relationship.capitalize()),
        "period": {"start": "2023-01-01"},
        "payor": [{"reference": "Organization/org-payer", "display": "Fhirwall Example Health Plan"}],
        "class": [{"type": cc("http://terminology.hl7.org/CodeSystem/coverage-class", "plan", "Plan"),
                   "value": "PPO-GOLD", "name": "Fhirwall Health Plan"}],
    }


def condition(cid, subject, lu, code, display, recorded, note=None, security=None, extra=None,
              system=ICD10, asserter="Practitioner/prac-01"):
    r = {
        "resourceType": "Condition", "id": cid, "meta": meta("Condition", lu, security=security),
        "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
        "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
        "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item",
                        "Problem List Item")],
        "code": cc(system, code, display),
        "subject": subject,
    }
    for k, v in (extra or {}).items():
        r[k] = v
    r["onsetDateTime"] = recorded
    r["recordedDate"] = recorded
    if asserter:
        r["asserter"] = ref(asserter) if isinstance(asserter, str) else asserter
    r["note"] = [{"text": note or "%s problem-list entry" % MARK}]
    return r


def observation(oid, subject, lu, code, display, effective, value, unit, performer=None, encounter=None,
                security=None, extra=None, note=None):
    r = {
        "resourceType": "Observation", "id": oid, "meta": meta("Observation", lu, security=security),
        "status": "final",
        "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")],
        "code": cc(LOINC, code, display, text=display),
        "subject": subject,
    }
    if encounter:
        r["encounter"] = ref(encounter)
    r["effectiveDateTime"] = effective
    r["issued"] = effective[:10] + "T20:00:00Z"
    r["performer"] = performer if performer is not None else [ref("Organization/org-lab")]
    if unit is None:
        r["valueCodeableConcept"] = cc("http://snomed.info/sct", value[0], value[1])
    else:
        r["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    for k, v in (extra or {}).items():
        r[k] = v
    r["note"] = [{"text": note or "%s laboratory comment" % MARK}]
    return r


def encounter(eid, subject, lu, start, practitioner="Practitioner/prac-05", provider="Organization/org-grace",
              location="Location/loc-grace", reason=("Z00.00", "Encounter for general adult medical examination without abnormal findings"),
              extra=None, security=None):
    r = {
        "resourceType": "Encounter", "id": eid, "meta": meta("Encounter", lu, security=security),
        "text": narrative("%s office visit" % MARK),
        "status": "finished",
        "class": coding(ACTCODE, "AMB", "ambulatory"),
        "type": [cc(CPT, "99213", "Office or other outpatient visit, established patient, low MDM")],
        "subject": subject,
        "participant": [{"individual": ref(practitioner)}],
        "period": {"start": start + "T09:00:00Z", "end": start + "T10:00:00Z"},
    }
    if reason:
        r["reasonCode"] = [cc(ICD10, reason[0], reason[1])]
    for k, v in (extra or {}).items():
        r[k] = v
    r["location"] = [{"location": ref(location)}]
    r["serviceProvider"] = ref(provider) if isinstance(provider, str) else provider
    return r


def procedure(pid_, subject, lu, code, display, performed, performer="Practitioner/prac-05",
              on_behalf="Organization/org-grace", extra=None, system=CPT):
    r = {
        "resourceType": "Procedure", "id": pid_, "meta": meta("Procedure", lu),
        "status": "completed",
        "code": cc(system, code, display, text=display),
        "subject": subject,
    }
    for k, v in (extra or {}).items():
        r[k] = v
    r["performedDateTime"] = performed
    actor = {"actor": ref(performer) if isinstance(performer, str) else performer}
    if on_behalf:
        actor["onBehalfOf"] = ref(on_behalf)
    r["performer"] = [actor]
    r["location"] = ref("Location/loc-grace")
    r["note"] = [{"text": "%s procedure note" % MARK}]
    return r


def dispense(mid, subject, lu, handed, medication, receiver=None):
    r = {"resourceType": "MedicationDispense", "id": mid, "meta": meta("MedicationDispense", lu), "status": "completed"}
    if isinstance(medication, str):
        r["medicationReference"] = ref(medication)
    else:
        r["medicationCodeableConcept"] = medication
    r["subject"] = subject
    r["performer"] = [{"actor": ref("Organization/org-pharmacy")}]
    r["type"] = cc(ACTCODE, "FF", "First Fill")
    r["quantity"] = {"value": 30, "unit": "each"}
    r["daysSupply"] = {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}
    r["whenHandedOver"] = handed
    if receiver:
        r["receiver"] = [ref(receiver)]
    r["note"] = [{"text": "%s pharmacy note" % MARK}]
    return r


def money(value):
    return {"value": value, "currency": "USD"}


def adjudication(code, value, system="http://terminology.hl7.org/CodeSystem/adjudication"):
    return {"category": {"coding": [coding(system, code)]}, "amount": money(value)}


def eob(eid, patient_ref, lu, service, coverage_key, provider, amounts, dx=("I10", "Essential (primary) hypertension"),
        careteam="Practitioner/prac-05", payee=None, extra=None, security=None, cpt=("99213", "Office or other outpatient visit, established patient, low MDM")):
    submitted, paid = amounts
    r = {
        "resourceType": "ExplanationOfBenefit", "id": eid, "meta": meta("ExplanationOfBenefit", lu, security=security),
        "text": narrative("%s claim %s" % (MARK, eid)),
        "identifier": [{"type": cc("http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType", "uc"),
                        "system": "http://example.org/fhirwall/claim-id", "value": "HCLM-" + eid}],
        "status": "active",
        "type": cc("http://terminology.hl7.org/CodeSystem/claim-type", "professional"),
        "use": "claim",
        "patient": patient_ref,
        "billablePeriod": {"start": service, "end": service},
        "created": service + "T00:00:00Z",
        "insurer": ref("Organization/org-payer"),
        "provider": ref(provider) if isinstance(provider, str) else provider,
    }
    if payee:
        r["payee"] = {"type": cc("http://terminology.hl7.org/CodeSystem/payeetype", "subscriber"), "party": ref(payee)}
    else:
        r["payee"] = {"type": cc("http://terminology.hl7.org/CodeSystem/payeetype", "provider"),
                      "party": ref(provider) if isinstance(provider, str) else provider}
    r["outcome"] = "complete"
    r["careTeam"] = [{"sequence": 1, "provider": ref(careteam), "responsible": True,
                      "role": cc("http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBClaimCareTeamRole", "rendering")}]
    r["supportingInfo"] = [{"sequence": 1, "category": cc("http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBSupportingInfoType",
                                                           "clmrecvddate"), "timingDate": service}]
    if dx:
        r["diagnosis"] = [{"sequence": 1, "diagnosisCodeableConcept": cc(ICD10, dx[0], dx[1]),
                           "type": [cc("http://terminology.hl7.org/CodeSystem/ex-diagnosistype", "principal")]}]
    for k, v in (extra or {}).items():
        r[k] = v
    r["insurance"] = [{"focal": True, "coverage": ref(coverage_key)}]
    r["item"] = [{"sequence": 1, "diagnosisSequence": [1] if dx else None,
                  "productOrService": cc(CPT, cpt[0], cpt[1]), "servicedDate": service,
                  "adjudication": [adjudication("submitted", submitted),
                                   adjudication("paidtoprovider", paid, "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudication")]}]
    if not dx:
        del r["item"][0]["diagnosisSequence"]
    r["total"] = [adjudication("submitted", submitted)]
    r["payment"] = {"type": cc("http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBPayerAdjudicationStatus", "paid"),
                    "date": service, "amount": money(paid)}
    r["processNote"] = [{"number": 1, "text": "%s remittance note" % MARK}]
    return r


def provenance(pid_, targets, lu, who="Organization/org-payer", entity=None, agents=None):
    r = {
        "resourceType": "Provenance", "id": pid_, "meta": meta("Provenance", lu),
        "text": narrative("%s provenance" % MARK),
        "target": [ref(t) if isinstance(t, str) else t for t in targets],
        "recorded": lu,
        "agent": agents or [{
            "type": cc("http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type", "transmitter", "Transmitter"),
            "who": ref(who) if isinstance(who, str) else who,
            "onBehalfOf": ref("Organization/org-payer")}],
        "entity": entity or [{"role": "source", "what": {"display": "%s adjudication system" % MARK}}],
    }
    return r


# ------------------------------------------------------------------ hidden.ndjson

def build_hidden():
    h = Out()
    grp = "a-hidden-patients"

    # (a) hidden patients with a full record set each.
    money_tokens = []
    for n, p in enumerate(HIDDEN_PATIENTS, start=1):
        pid = p[0]
        sfx = "%02d" % n
        subj = ref("Patient/" + pid)
        day = "2024-%02d-%02d" % (n + 1, 10 + n)
        lu = "2025-04-%02dT08:00:00Z" % (n + 1)
        h.add(patient(pid, lu), grp, ["4-pointers"], "hidden patient; Group: %s" % (p[9] or "none"))
        if pid == "h-pat-05":
            cov = coverage(pid, "h-cov-" + sfx, lu, subscriber=SUBSCRIBER, relationship="spouse",
                           subscriber_id=FACTS_D["patients"][SUBSCRIBER]["subscriber_id"])
        else:
            cov = coverage(pid, "h-cov-" + sfx, lu)
        h.add(cov, grp, [], "")
        asserter = "Practitioner/prac-01"
        if pid == "h-pat-04":
            asserter = "Patient/" + SUD  # a visible member as asserter never grants visibility
        h.add(condition("h-cond-" + sfx, subj, lu, "E11.9", "Type 2 diabetes mellitus without complications", day,
                        asserter=asserter), grp, [], "")
        h.add(encounter("h-enc-" + sfx, subj, lu, day, practitioner="Practitioner/prac-0%d" % (1 + n % 5)),
              grp, [], "hidden patient's encounter with a visible grace practitioner")
        performer = [ref("Organization/org-lab")]
        if pid == "h-pat-03":
            performer = [ref("Organization/org-lab"), ref("Patient/" + LINK)]
        h.add(observation("h-obs-" + sfx, subj, lu, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood",
                          day + "T08:30:00Z", 7 + n / 10, "%", performer=performer, encounter="Encounter/h-enc-" + sfx),
              grp, [], "")
        submitted = [7111.18, 7222.31, 7333.44, 7444.57, 7555.69, 7666.83][n - 1]
        paid = [5097.34, 5194.65, 5291.96, 5389.27, 5486.58, 5583.89][n - 1]
        money_tokens += [json.dumps(submitted), json.dumps(paid)]
        payee = "Patient/" + SUBSCRIBER if pid == "h-pat-05" else None
        h.add(eob("h-eob-" + sfx, subj, lu, day, "Coverage/h-cov-" + sfx, "Organization/org-grace",
                  (submitted, paid), payee=payee), grp, [], "")
        h.add(procedure("h-proc-" + sfx, subj, lu, "93000", "Electrocardiogram, routine ECG with at least 12 leads",
                        day + "T09:30:00Z"), grp, [], "")
        receiver = "Patient/" + SUBSCRIBER if pid == "h-pat-05" else None
        h.add(dispense("h-md-" + sfx, subj, lu, day + "T16:00:00Z",
                       cc(NDC, "00071-0155-23", "Atorvastatin 20 MG Oral Tablet", text="Atorvastatin 20 MG Oral Tablet"),
                       receiver=receiver), grp, [], "")
        h.add(provenance("h-prov-" + sfx, ["ExplanationOfBenefit/h-eob-" + sfx], lu), grp, ["6-provenance"], "")

    # (b) records of visible members that name a hidden patient elsewhere.
    grp = "b-names-hidden-patient"
    lu = "2025-04-20T08:00:00Z"
    subj = ref("Patient/" + LINK)
    h.add(observation("h-obs-perf-01", subj, lu, "2345-7", "Glucose [Mass/volume] in Serum or Plasma",
                      "2025-04-18T08:00:00Z", 101, "mg/dL", performer=[ref("Patient/h-pat-02")],
                      encounter="Encounter/enc-0082-4"),
          grp, ["4-pointers"], "visible owner, participant (performer) = hidden patient: must be withheld whole")
    h.add(observation("h-obs-perf-02", subj, lu, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma",
                      "2025-04-18T08:05:00Z", 187, "mg/dL", performer=[identifier_only_patient(HP["h-pat-03"][1])]),
          grp, ["7-identifier"], "performer given only by a hidden patient's member id")
    h.add(observation("h-obs-dangling-01", subj, lu, "2571-8", "Triglyceride [Mass/volume] in Serum or Plasma",
                      "2025-04-18T08:10:00Z", 143, "mg/dL", performer=[ref("Patient/h-pat-99")]),
          grp, ["4-pointers"], "performer = a patient that exists nowhere (intentionally dangling): not visible")
    h.add(provenance("h-prov-agent-01", ["ExplanationOfBenefit/eob-0082-2"], lu, who="Patient/h-pat-02"),
          grp, ["6-provenance"], "target visible EOB, agent.who = hidden patient")
    h.add(provenance("h-prov-entity-01", ["Condition/cond-0082-1"], lu,
                     entity=[{"role": "source", "what": ref("Patient/h-pat-04")}]),
          grp, ["6-provenance"], "target visible Condition, entity.what = hidden patient")
    h.add(provenance("h-prov-target-01", ["Observation/obs-0082-2", "Patient/h-pat-05"], lu),
          grp, ["6-provenance"], "two targets: a visible Observation and a hidden patient")
    h.add(provenance("h-prov-agent-02", ["Encounter/enc-0082-2"], lu, who=identifier_only_patient(HP["h-pat-01"][1])),
          grp, ["6-provenance", "7-identifier"], "target visible Encounter, agent.who identifier-only hidden patient")
    h.add(provenance("h-prov-agent-03", ["ExplanationOfBenefit/eob-0001-1"], lu, who="Patient/h-pat-01"),
          grp, ["6-provenance", "5-history"], "targets the multi-version EOB; agent.who hidden patient")

    # (c) 42 CFR Part 2 records of a visible member (part2 = exclude).
    grp = "c-part2"
    subj = ref("Patient/" + SUD)
    label = [coding(ACTCODE, "42CFRPart2", "42 CFR Part2"), coding(CONF, "R", "restricted")]
    h.add(condition("h-cond-sud-01", subj, "2025-03-02T08:00:00Z", "F11.20", "Opioid dependence, uncomplicated",
                    "2025-02-27", extra={"encounter": ref("Encounter/enc-0174-1")}, asserter="Practitioner/prac-03"),
          grp, ["4-pointers"], "SUD code (ICD-10-CM F11.20), unlabelled; encounter = a visible D Encounter "
                               "no visible Condition points at (_include=Condition:encounter must not bring it)")
    h.add(condition("h-cond-sud-02", subj, "2025-03-03T08:00:00Z", "F1020", "Alcohol dependence, uncomplicated",
                    "2025-02-28"), grp, [], "SUD code written without the dot (F1020)")
    h.add(condition("h-cond-p2-lbl-01", subj, "2025-03-04T08:00:00Z", "F32.A", "Depression, unspecified", "2025-03-01",
                    security=[{"extension": [{"url": DS4P_BASIS, "valueCoding": coding(ACTCODE, "42CFRPart2")}],
                               "system": CONF, "code": "R", "display": "restricted"}]),
          grp, [], "Confidentiality R whose DS4P basis is 42CFRPart2 (no SUD code)")
    h.add(condition("h-cond-evid-01", subj, "2025-03-05T08:00:00Z", "R78.0", "Finding of alcohol in blood",
                    "2025-03-01", extra={"evidence": [{"detail": [ref("Observation/h-obs-p2-01")]}]}),
          grp, ["4-pointers"], "evidence.detail -> the labelled Observation (Part 2 by reference)")
    h.add(observation("h-obs-p2-01", subj, "2025-03-06T08:00:00Z", "19295-5", "Opiates [Presence] in Urine by Screen method",
                      "2025-02-27T10:00:00Z", ("10828004", "Positive"), None, encounter="Encounter/enc-0174-4",
                      security=label),
          grp, ["4-pointers"], "meta.security 42CFRPart2; encounter = visible D Encounter no visible Observation points at")
    h.add(observation("h-obs-p2-02", subj, "2025-03-07T08:00:00Z", "2345-7", "Glucose [Mass/volume] in Serum or Plasma",
                      "2025-02-27T10:30:00Z", 96, "mg/dL", performer=[identifier_only_npi(FACTS_D["part2_program"]["npi"])]),
          grp, ["2-programs"], "no code, no label: performer names the program only by NPI")
    h.add(observation("h-obs-derived-01", subj, "2025-03-08T08:00:00Z", "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma",
                      "2025-02-27T11:00:00Z", 190, "mg/dL", extra={"derivedFrom": [ref("Observation/h-obs-p2-01")]}),
          grp, ["4-pointers"], "derivedFrom -> labelled Observation (Part 2 by reference)")
    h.add(encounter("h-enc-sud-01", subj, "2025-03-09T08:00:00Z", "2025-02-27", reason=None,
                    extra={"reasonReference": [ref("Condition/h-cond-sud-01")]}),
          grp, ["4-pointers"], "reasonReference -> SUD Condition")
    h.add(encounter("h-enc-p2-02", subj, "2025-03-10T08:00:00Z", "2025-03-03", practitioner="Practitioner/prac-18",
                    provider="Organization/org-recovery/_history/1", location="Location/loc-recovery", reason=None),
          grp, ["2-programs"], "serviceProvider = versioned reference to the program Organization, no code")
    h.add(encounter("h-enc-p2-03", subj, "2025-03-11T08:00:00Z", "2025-03-04", reason=None,
                    extra={"diagnosis": [{"condition": ref("Condition/h-cond-sud-01"), "rank": 1}]}),
          grp, ["4-pointers"], "diagnosis.condition -> SUD Condition")
    h.add(procedure("h-proc-sud-01", subj, "2025-03-12T08:00:00Z", "96127",
                    "Brief emotional/behavioral assessment, with scoring and documentation, per standardized instrument",
                    "2025-02-27T11:30:00Z", performer="Practitioner/prac-03",
                    extra={"encounter": ref("Encounter/enc-0174-1"), "reasonReference": [ref("Condition/h-cond-sud-01")]}),
          grp, ["4-pointers"], "reasonReference -> SUD Condition; performer prac-03 is referenced by no visible "
                               "pat-0174 Procedure (_include=Procedure:performer must not bring it)")
    h.add(procedure("h-proc-p2-02", subj, "2025-03-13T08:00:00Z", "93000", "Electrocardiogram, routine ECG with at least 12 leads",
                    "2025-03-03T09:00:00Z", performer=identifier_only_npi(FACTS_D["part2_program"]["npi"]), on_behalf=None),
          grp, ["2-programs"], "performer.actor identifier-only NPI of the program")
    med = {
        "resourceType": "Medication", "id": "h-med-bup", "meta": meta("Medication", "2025-03-14T08:00:00Z"),
        "text": narrative("%s buprenorphine / naloxone" % MARK),
        "code": cc(RXNORM, "1010604", "buprenorphine 8 MG / naloxone 2 MG Sublingual Film",
                   text="buprenorphine 8 MG / naloxone 2 MG Sublingual Film"),
        "status": "active",
        "form": cc("http://snomed.info/sct", "385206004", "Sublingual film"),
    }
    h.add(med, grp, ["4-pointers"], "RxNorm 1010604 (policies/part2/rxnorm.txt): a reference type withheld as Part 2")
    h.add(dispense("h-md-bup-01", subj, "2025-03-15T08:00:00Z", "2025-03-01T15:00:00Z", "Medication/h-med-bup"),
          grp, ["4-pointers"], "medicationReference -> Part 2 Medication")
    h.add(dispense("h-md-bup-02", subj, "2025-03-16T08:00:00Z", "2025-03-29T15:00:00Z",
                   cc(RXNORM, "351267", "buprenorphine 8 MG / naloxone 2 MG Sublingual Tablet")),
          grp, [], "RxNorm code in the code set")
    h.add({
        "resourceType": "DiagnosticReport", "id": "h-dr-p2-01", "meta": meta("DiagnosticReport", "2025-03-17T08:00:00Z"),
        "status": "final",
        "category": [cc("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
        "code": cc(LOINC, "19295-5", "Opiates [Presence] in Urine by Screen method"),
        "subject": subj,
        "encounter": ref("Encounter/enc-0174-4"),
        "effectiveDateTime": "2025-02-27T10:00:00Z",
        "issued": "2025-02-27T20:00:00Z",
        "performer": [ref("Organization/org-lab")],
        "result": [ref("Observation/h-obs-p2-01")],
        "conclusion": "%s drug screen" % MARK,
    }, grp, ["4-pointers"], "result -> labelled Observation")
    h.add(eob("h-eob-sud-01", subj, "2025-03-18T08:00:00Z", "2025-03-03", "Coverage/cov-0174", "Organization/org-recovery",
              (3713.37, 2913.29), dx=("F11.20", "Opioid dependence, uncomplicated"), careteam="Practitioner/prac-18",
              cpt=("H0020", "Alcohol and/or drug services; methadone administration and/or service"),
              extra={"claim": ref("Claim/h-claim-sud-01")}),
          grp, ["2-programs"], "provider = Organization/org-recovery")
    h.add(eob("h-eob-sud-02", subj, "2025-03-19T08:00:00Z", "2025-03-04", "Coverage/cov-0174",
              identifier_only_npi(FACTS_D["part2_program"]["npi"]), (1313.13, 1031.03), dx=("Z00.00", "Encounter for general adult medical examination without abnormal findings"),
              careteam="Practitioner/prac-19"),
          grp, ["2-programs"], "provider identifier-only NPI 1234567893, no SUD code")
    h.add(eob("h-eob-sudref-01", subj, "2025-03-20T08:00:00Z", "2025-03-05", "Coverage/cov-0174", "Organization/org-grace",
              (2121.21, 1717.17), dx=None,
              extra={"diagnosis": [{"sequence": 1, "diagnosisReference": ref("Condition/h-cond-sud-01")}]}),
          grp, ["4-pointers"], "diagnosis.diagnosisReference -> SUD Condition")
    claim_common = {
        "status": "active",
        "type": cc("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
        "use": "claim",
        "patient": subj,
        "billablePeriod": {"start": "2025-03-03", "end": "2025-03-03"},
        "created": "2025-03-04T00:00:00Z",
        "insurer": ref("Organization/org-payer"),
    }
    c1 = {"resourceType": "Claim", "id": "h-claim-sud-01", "meta": meta("Claim", "2025-03-21T08:00:00Z"),
          "text": narrative("%s program claim" % MARK),
          "identifier": [{"system": "http://example.org/fhirwall/claim-id", "value": "HCLM-h-claim-sud-01"}]}
    c1.update(copy.deepcopy(claim_common))
    c1["provider"] = ref("Organization/org-recovery")
    c1["priority"] = cc("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal")
    c1["insurance"] = [{"sequence": 1, "focal": True, "coverage": ref("Coverage/cov-0174")}]
    c1["item"] = [{"sequence": 1, "productOrService": cc(CPT, "H0020", "Alcohol and/or drug services; methadone administration and/or service"),
                   "servicedDate": "2025-03-03", "net": money(3713.37)}]
    h.add(c1, grp, ["2-programs"], "Claim from the program")
    c2 = {"resourceType": "Claim", "id": "h-claim-sud-02", "meta": meta("Claim", "2025-03-22T08:00:00Z"),
          "text": narrative("%s related claim" % MARK),
          "identifier": [{"system": "http://example.org/fhirwall/claim-id", "value": "HCLM-h-claim-sud-02"}]}
    c2.update(copy.deepcopy(claim_common))
    c2["provider"] = ref("Organization/org-grace")
    c2["priority"] = cc("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal")
    c2["related"] = [{"claim": ref("Claim/h-claim-sud-01"),
                      "relationship": cc("http://terminology.hl7.org/CodeSystem/ex-relatedclaimrelationship", "associated")}]
    c2["insurance"] = [{"sequence": 1, "focal": True, "coverage": ref("Coverage/cov-0174")}]
    c2["item"] = [{"sequence": 1, "productOrService": cc(CPT, "99213", "Office or other outpatient visit, established patient, low MDM"),
                   "servicedDate": "2025-03-03", "net": money(212.12)}]
    h.add(c2, grp, ["4-pointers"], "related.claim -> program Claim (Part 2 by reference)")
    h.add({
        "resourceType": "ClaimResponse", "id": "h-clmresp-sud-01", "meta": meta("ClaimResponse", "2025-03-23T08:00:00Z"),
        "identifier": [{"system": "http://example.org/fhirwall/claim-id", "value": "HCLR-h-clmresp-sud-01"}],
        "status": "active",
        "type": cc("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
        "use": "claim",
        "patient": subj,
        "created": "2025-03-05T12:00:00Z",
        "insurer": ref("Organization/org-payer"),
        "request": ref("Claim/h-claim-sud-01"),
        "outcome": "complete",
        "disposition": "%s processed" % MARK,
    }, grp, ["4-pointers"], "request -> program Claim (Part 2 by reference)")
    h.add(provenance("h-prov-p2-01", ["ExplanationOfBenefit/h-eob-sud-01"], "2025-03-24T08:00:00Z"),
          grp, ["6-provenance"], "target = the program EOB (withheld), agent the payer")

    # (d) records of the member who opted out (the test PUTs the opt-out on both gateways).
    grp = "d-opt-out"
    subj = ref("Patient/" + OPT_OUT)
    h.add(condition("h-opt-cond-01", subj, "2025-05-01T08:00:00Z", "J45.909", "Unspecified asthma, uncomplicated",
                    "2025-04-20"), grp, [], "")
    h.add(encounter("h-opt-enc-01", subj, "2025-05-02T08:00:00Z", "2025-04-20"), grp, [], "")
    h.add(observation("h-opt-obs-01", subj, "2025-05-03T08:00:00Z", "2345-7", "Glucose [Mass/volume] in Serum or Plasma",
                      "2025-04-20T09:30:00Z", 99, "mg/dL", encounter="Encounter/h-opt-enc-01"), grp, [], "")
    h.add(eob("h-opt-eob-01", subj, "2025-05-04T08:00:00Z", "2025-04-20", "Coverage/cov-" + OPT_OUT[4:],
              "Organization/org-grace", (818.18, 616.16)), grp, [], "")
    h.add(procedure("h-opt-proc-01", subj, "2025-05-05T08:00:00Z", "93000",
                    "Electrocardiogram, routine ECG with at least 12 leads", "2025-04-20T09:45:00Z"), grp, [], "")
    h.add(dispense("h-opt-md-01", subj, "2025-05-06T08:00:00Z", "2025-04-21T12:00:00Z",
                   cc(NDC, "00071-0155-23", "Atorvastatin 20 MG Oral Tablet", text="Atorvastatin 20 MG Oral Tablet")),
          grp, [], "")

    # (e) identifier-only owner links to hidden patients.
    grp = "e-identifier-only"
    h.add(condition("h-cond-idonly-01", identifier_only_patient(HP["h-pat-03"][1]), "2025-04-25T08:00:00Z",
                    "I10", "Essential (primary) hypertension", "2025-04-22",
                    extra={"encounter": ref("Encounter/enc-0082-4")}),
          grp, ["7-identifier"], "subject only by member id of h-pat-03; encounter = visible Encounter of pat-0082 "
                                 "(reachable with Encounter?patient=pat-0082&_revinclude=Condition:encounter)")
    h.add(encounter("h-enc-idonly-01", identifier_only_patient(HP["h-pat-04"][1]), "2025-04-26T08:00:00Z", "2025-04-23"),
          grp, ["7-identifier"], "subject only by member id of h-pat-04; participant a visible grace practitioner")
    h.add({
        "resourceType": "Appointment", "id": "h-appt-idonly-01", "meta": meta("Appointment", "2025-04-27T08:00:00Z"),
        "status": "booked",
        "description": "%s follow-up" % MARK,
        "start": "2025-07-15T09:00:00Z", "end": "2025-07-15T09:30:00Z",
        "participant": [
            {"actor": identifier_only_patient(HP["h-pat-03"][1]), "status": "accepted"},
            {"actor": ref("Practitioner/prac-05"), "status": "accepted"},
        ],
    }, grp, ["7-identifier"], "Appointment (read only: the sandbox has no Appointment search): actor identifier-only")
    h.add({
        "resourceType": "Appointment", "id": "h-appt-mixed-01", "meta": meta("Appointment", "2025-04-28T08:00:00Z"),
        "status": "booked",
        "description": "%s joint visit" % MARK,
        "start": "2025-07-16T09:00:00Z", "end": "2025-07-16T09:30:00Z",
        "participant": [
            {"actor": ref("Patient/" + LINK), "status": "accepted"},
            {"actor": identifier_only_patient(HP["h-pat-04"][1]), "status": "accepted"},
        ],
    }, grp, ["7-identifier"], "Appointment naming a visible member and (by identifier) a hidden one")

    # (f) versions owned by hidden patients.
    grp = "f-versions"
    for key, hidden_pid, lu2, _ in MULTI:
        v = copy.deepcopy(D[key])
        v["meta"]["versionId"] = "2"
        v["meta"]["lastUpdated"] = lu2
        hp = "Patient/" + hidden_pid
        n = hidden_pid[-2:]
        if v["resourceType"] == "ExplanationOfBenefit":
            v["patient"] = ref(hp)
            v["insurance"] = [{"focal": True, "coverage": ref("Coverage/h-cov-" + n)}]
            v = insert_after(v, "meta", "text", narrative("%s misfiled claim" % MARK))
        else:
            v["subject"] = ref(hp)
            if v["resourceType"] == "Encounter":
                v = insert_after(v, "meta", "text", narrative("%s misfiled visit" % MARK))
            else:
                v["note"] = [{"text": "%s misfiled record" % MARK}]
        h.add(v, grp, ["5-history"], "version 2 of %s, owned by %s (D has 1, base.ndjson 3)" % (key, hidden_pid))
    moves = [
        ("h-move-cond-01", "h-pat-01", lambda s, lu: condition("h-move-cond-01", s, lu, "K21.9",
                                                               "Gastro-esophageal reflux disease without esophagitis", "2025-01-10")),
        ("h-move-obs-01", "h-pat-02", lambda s, lu: observation("h-move-obs-01", s, lu, "718-7", "Hemoglobin [Mass/volume] in Blood",
                                                                "2025-01-10T08:00:00Z", 13.1, "g/dL")),
        ("h-move-enc-01", "h-pat-03", lambda s, lu: encounter("h-move-enc-01", s, lu, "2025-01-10")),
    ]
    for rid, hidden_pid, make in moves:
        v1 = make(ref("Patient/" + MOVER), "2025-01-15T08:00:00Z")
        v2 = make(ref("Patient/" + hidden_pid), "2025-03-15T08:00:00Z")
        v2["meta"]["versionId"] = "2"
        h.add(v1, grp, ["5-history"], "version 1 owned by visible %s; current version is 2" % MOVER)
        h.add(v2, grp, ["5-history"], "version 2 (current) owned by %s" % hidden_pid)

    # Attribution: hidden patients join other organizations' Groups (same
    # versionId as D: replaces them in B). grp-grace is never touched.
    grp = "a-hidden-patients"
    for gid in ("grp-hopkins", "grp-valley"):
        g = copy.deepcopy(D["Group/" + gid])
        added = [p[0] for p in HIDDEN_PATIENTS if p[9] == gid]
        for pid in added:
            g["member"].append({"entity": ref("Patient/" + pid), "period": {"start": "2024-01-01"}, "inactive": False})
        if "quantity" in g:
            g["quantity"] += len(added)
        h.add(g, grp, [], "%s re-emitted with %s as active member(s)" % (gid, ", ".join(added)))
    return h, money_tokens


# ------------------------------------------------------------------ base.ndjson

def build_base():
    b = Out()
    for key, _, _, lu3 in MULTI:
        v = copy.deepcopy(D[key])
        v["meta"]["versionId"] = "3"
        v["meta"]["lastUpdated"] = lu3
        if v["resourceType"] == "Condition":
            v["clinicalStatus"] = cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "resolved", "Resolved")
        elif v["resourceType"] == "Observation":
            v["status"] = "amended"
        elif v["resourceType"] == "Encounter":
            v["period"] = dict(v["period"])
            v["period"]["end"] = v["period"]["end"].replace("T10:00:00Z", "T10:30:00Z")
        b.add(v, "f-versions", ["5-history"], "version 3 (current) of %s, visible owner" % key)
    return b


# ------------------------------------------------------------------ financial.ndjson

FIN_AMOUNTS = {
    "ExplanationOfBenefit/eob-0262-2": (4321.09, 8642.18, 1357.91, 2468.02),
    "ExplanationOfBenefit/eob-0280-3": (9753.86, 6543.21, 3141.59, 2718.28),
    "Claim/claim-pa-0082-2": (5432.19, 6789.01, None, None),
    "ClaimResponse/claimresp-pa-0082-2": (7654.32, None, None, None),
    "Coverage/cov-0262": (87.43, None, None, None),
    "Coverage/cov-0280": (45.29, None, None, None),
}
MONEY_EXT = "http://example.org/fhirwall/StructureDefinition/patient-responsibility"


def build_financial():
    f = Out()
    tokens = []
    for key in FINANCIAL:
        r = copy.deepcopy(D[key])
        a = FIN_AMOUNTS[key]
        tokens += [json.dumps(x) for x in a if x is not None]
        rtype = r["resourceType"]
        if rtype == "Coverage":
            r = insert_after(r, "network", "costToBeneficiary", [{
                "type": cc("http://terminology.hl7.org/CodeSystem/coverage-copay-type", "gpvisit", "GP Office Visit"),
                "valueMoney": money(a[0])}])
            f.add(r, "g-financial", ["3-money"], "Coverage.costToBeneficiary valueMoney")
            continue
        ext = [{"url": MONEY_EXT, "valueMoney": money(a[0])}]
        if rtype == "ExplanationOfBenefit":
            r = insert_after(r, "meta", "text", narrative("%s patient owes $%.2f" % (MONEY_MARK, a[1])))
            r = insert_after(r, "text", "extension", ext)
            si = list(r.get("supportingInfo", []))
            si.append({"sequence": len(si) + 1,
                       "category": cc("http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBSupportingInfoType", "info"),
                       "valueQuantity": {"value": a[2], "unit": "USD", "system": ISO4217, "code": "USD"}})
            r["supportingInfo"] = si
            items = r["item"]
            items[0]["adjudication"] = list(items[0]["adjudication"]) + [{
                "category": cc("http://example.org/fhirwall/CodeSystem/local-adjudication", "handling-fee"),
                "amount": money(a[3])}]
            if key.endswith("eob-0280-3"):
                items[0] = insert_after(items[0], "sequence", "extension",
                                        [{"url": MONEY_EXT, "valueMoney": money(a[0])}])
            r = insert_after(r, "payment", "processNote", [{"number": 1, "type": "display",
                                                            "text": "%s balance due $%.2f" % (MONEY_MARK, a[1])}])
            f.add(r, "g-financial", ["3-money"],
                  "text, extension valueMoney, supportingInfo USD Quantity, unlisted adjudication amount, processNote")
        elif rtype == "Claim":
            r = insert_after(r, "meta", "text", narrative("%s estimated cost $%.2f" % (MONEY_MARK, a[1])))
            r = insert_after(r, "text", "extension", ext)
            r = insert_after(r, "careTeam", "supportingInfo", [{
                "sequence": 1,
                "category": cc("http://terminology.hl7.org/CodeSystem/claiminformationcategory", "info"),
                "valueQuantity": {"value": a[1], "unit": "USD", "system": ISO4217, "code": "USD"}}])
            f.add(r, "g-financial", ["3-money"], "text, extension valueMoney, supportingInfo USD Quantity")
        elif rtype == "ClaimResponse":
            r = insert_after(r, "meta", "extension", ext)
            f.add(r, "g-financial", ["3-money"], "extension valueMoney")
    return f, tokens


# ------------------------------------------------------------------ corpus

def q(s):
    return s.replace("|", "%7C")


def build_corpus(hidden, base, financial, facts):
    lines = []
    requested = set()

    def sec(title):
        lines.append("")
        lines.append("# --- " + title)

    def get(path):
        line = "GET " + q(path)
        if line not in requested:  # each request once, where it is first listed
            requested.add(line)
            lines.append(line)

    vis = facts["attribution"]["org-grace"]["visible"]
    pr = lambda p: "Patient/" + p  # noqa: E731
    lines.append("# Non-interference corpus (written by generate.py; do not edit by hand).")
    lines.append("# One request per line, `METHOD path` below the FHIR base. Client: grace (org-grace).")
    lines.append("# Every answer must be byte-identical between upstream A and upstream B after")
    lines.append("# normalising volatile fields; the test follows every `next` link.")
    lines.append("# Opted-out member (PUT on both gateways before the run): %s" % OPT_OUT)

    sec("capabilities (leak class 10)")
    get("metadata")
    get("metadata?mode=full")
    get(".well-known/smart-configuration")

    sec("reference types")
    for k in ["Organization/org-grace", "Organization/org-payer", "Organization/org-lab", "Organization/org-pharmacy",
              "Organization/org-valley", "Organization/org-recovery", "Practitioner/prac-05", "Practitioner/prac-03",
              "Practitioner/prac-18", "PractitionerRole/role-05", "Location/loc-grace", "Location/loc-recovery"]:
        get(k)
    get("Medication/h-med-bup")
    get("Medication/h-med-bup/_history/1")
    get("Medication?_id=h-med-bup")
    get("Medication?code=%s|1010604" % RXNORM)
    get("Medication?_id=h-med-bup&_revinclude=MedicationDispense:medication")
    get("Organization?_id=org-recovery")
    get("Organization?identifier=%s|%s" % (NPI_SYS, FACTS_D["part2_program"]["npi"]))
    get("Practitioner?_id=prac-05&_revinclude=Encounter:practitioner")
    get("Practitioner?_id=prac-05&_revinclude=Encounter:participant")
    get("PractitionerRole?organization=Organization/org-grace&_include=PractitionerRole:practitioner")

    sec("attribution Groups")
    get("Group/grp-grace")
    get("Group/grp-grace/_history")
    get("Group/grp-hopkins")
    get("Group/grp-valley")
    get("Group?managingEntity=Organization/org-grace")
    get("Group?managing-entity=Organization/org-grace")
    get("Group?managingEntity=Organization/org-grace&_include=Group:member")
    get("Group?managingEntity=Organization/org-hopkins")

    sec("Patient reads and searches")
    focus = [SUD, LINK, SUBSCRIBER, MOVER, "pat-0182", "pat-0256", "pat-0231", "pat-0001"]
    for p in focus:
        get(pr(p))
    for p in [SUD, LINK, SUBSCRIBER]:
        get("Patient?_id=%s&_revinclude=Provenance:target" % p)
    get("Patient?_id=%s&_revinclude=Patient:link" % LINK)
    get("Patient?_id=%s&_revinclude=Group:member" % LINK)
    get("Patient?_id=%s&_revinclude=Observation:performer" % LINK)
    get("Patient?_id=%s&_revinclude=Condition:asserter" % SUD)
    get("Patient?_id=%s&_revinclude=Coverage:subscriber" % SUBSCRIBER)
    get("Patient?_id=%s&_revinclude=Coverage:policy-holder" % SUBSCRIBER)
    get("Patient?_id=%s&_revinclude=ExplanationOfBenefit:payee" % SUBSCRIBER)
    get("Patient?_id=%s&_revinclude=MedicationDispense:receiver" % SUBSCRIBER)
    get("Patient?_id=%s&_revinclude=Coverage:beneficiary" % SUBSCRIBER)
    get("Patient?_id=%s,%s,%s" % (SUD, LINK, SUBSCRIBER))
    get("Patient?_id=%s,%s&_count=1" % (SUD, LINK))
    get("Patient?link=%s" % pr(LINK))
    get("Patient?general-practitioner=Practitioner/prac-05")
    get("Patient?family=Quenbyhall")
    get("Patient?identifier=%s|%s" % (FACTS_D["member_id_system"], HP["h-pat-03"][1]))

    types = [
        ("Condition", "patient"), ("Observation", "patient"), ("Encounter", "patient"),
        ("ExplanationOfBenefit", "patient"), ("Procedure", "patient"), ("MedicationDispense", "patient"),
        ("Coverage", "beneficiary"), ("Claim", "patient"), ("ClaimResponse", "patient"),
        ("Provenance", "patient"), ("DiagnosticReport", "patient"),
    ]
    sec("every compartment type for the focus members (leak class 1 with _count)")
    for p in focus:
        for t, param in types:
            get("%s?%s=%s" % (t, param, pr(p)))
    for p in [SUD, LINK, SUBSCRIBER, MOVER]:
        for t, param in types:
            if t in ("Provenance", "DiagnosticReport", "ClaimResponse"):
                continue
            get("%s?%s=%s&_count=1" % (t, param, pr(p)))
            get("%s?%s=%s&_count=2" % (t, param, pr(p)))
    get("Observation?subject=%s&_count=1" % pr(LINK))
    get("DiagnosticReport?subject=%s" % pr(SUD))
    get("Coverage?patient=%s" % pr(SUBSCRIBER))
    get("MedicationDispense?subject=%s&_count=1" % pr(SUD))

    sec("compartment searches")
    for p in [SUD, LINK, SUBSCRIBER, MOVER]:
        for t in ["Condition", "Observation", "Encounter", "ExplanationOfBenefit", "Procedure",
                  "MedicationDispense", "Coverage", "Claim", "DiagnosticReport"]:
            get("Patient/%s/%s" % (p, t))
    get("Patient/%s/Condition?_count=1" % SUD)
    get("Patient/%s/Observation?_count=1" % LINK)
    get("Patient/%s/ExplanationOfBenefit?_count=1" % SUD)
    get("Patient/%s/Condition?code=%s|F11.20" % (SUD, ICD10))

    sec("_include (leak class 4: includes of withheld matches)")
    get("Condition?patient=%s&_include=Condition:encounter" % pr(SUD))
    get("Condition?patient=%s&_include=Condition:encounter&_count=1" % pr(SUD))
    get("Condition?patient=%s&_include=Condition:asserter" % pr(SUD))
    get("Condition?patient=%s&_include=Condition:patient" % pr(SUD))
    get("Observation?patient=%s&_include=Observation:encounter" % pr(SUD))
    get("Observation?patient=%s&_include=Observation:encounter&_count=1" % pr(SUD))
    get("Observation?patient=%s&_include=Observation:performer" % pr(LINK))
    get("Observation?patient=%s&_include=Observation:performer&_count=1" % pr(LINK))
    get("Observation?patient=%s&_include=Observation:subject" % pr(LINK))
    get("Observation?patient=%s&_include=Observation:encounter" % pr(LINK))
    get("Encounter?patient=%s&_include=Encounter:service-provider" % pr(SUD))
    get("Encounter?patient=%s&_include=Encounter:practitioner" % pr(SUD))
    get("Encounter?patient=%s&_include=Encounter:location" % pr(SUD))
    get("Procedure?patient=%s&_include=Procedure:performer" % pr(SUD))
    get("Procedure?patient=%s&_include=Procedure:encounter" % pr(SUD))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:provider" % pr(SUD))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:provider&_count=1" % pr(SUD))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:claim" % pr(SUD))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:coverage" % pr(SUD))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:care-team" % pr(SUD))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:patient" % pr(SUBSCRIBER))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:coverage" % pr(SUBSCRIBER))
    get("MedicationDispense?patient=%s&_include=MedicationDispense:medication" % pr(SUD))
    get("MedicationDispense?patient=%s&_include=MedicationDispense:medication&_count=1" % pr(SUD))
    get("MedicationDispense?patient=%s&_include=MedicationDispense:performer" % pr(SUD))
    get("Claim?patient=%s&_include=Claim:provider" % pr(SUD))
    get("ClaimResponse?patient=%s&_include=ClaimResponse:request" % pr(SUD))
    get("Coverage?beneficiary=%s&_include=Coverage:payor" % pr(SUBSCRIBER))
    get("Coverage?beneficiary=%s&_include=Coverage:subscriber" % pr(SUBSCRIBER))
    get("Provenance?patient=%s&_include=Provenance:target" % pr(LINK))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:claim&_include:iterate=Claim:provider" % pr(SUD))

    sec("_revinclude (leak classes 4, 6, 7)")
    for p in [SUD, LINK, SUBSCRIBER, MOVER, "pat-0001", "pat-0256", "pat-0231", "pat-0182"]:
        get("ExplanationOfBenefit?patient=%s&_revinclude=Provenance:target" % pr(p))
    for t in ["Condition", "Observation", "Encounter"]:
        for p in [SUD, LINK]:
            get("%s?patient=%s&_revinclude=Provenance:target" % (t, pr(p)))
    get("ExplanationOfBenefit?patient=%s&_revinclude=Provenance:target&_count=1" % pr(LINK))
    get("ExplanationOfBenefit?patient=%s&_revinclude=Provenance:target&_include=ExplanationOfBenefit:patient" % pr("pat-0001"))
    get("Observation?patient=%s&_revinclude=Provenance:target&_count=1" % pr(LINK))
    get("Encounter?patient=%s&_revinclude=Condition:encounter" % pr(LINK))
    get("Encounter?patient=%s&_revinclude=Condition:encounter&_count=1" % pr(LINK))
    get("Encounter?patient=%s&_revinclude=Condition:encounter" % pr(SUD))
    get("Encounter?patient=%s&_revinclude=Observation:encounter" % pr(SUD))
    get("Encounter?patient=%s&_revinclude=Observation:encounter" % pr(LINK))
    get("Encounter?patient=%s&_revinclude=Procedure:encounter" % pr(SUD))
    get("Encounter?patient=%s&_revinclude=Provenance:target&_revinclude=Condition:encounter" % pr(LINK))
    get("Claim?patient=%s&_revinclude=ClaimResponse:request" % pr(SUD))
    get("Claim?patient=%s&_revinclude=ClaimResponse:request" % pr(LINK))
    get("Claim?patient=%s&_revinclude=ExplanationOfBenefit:claim" % pr(SUD))
    get("Coverage?beneficiary=%s&_revinclude=ExplanationOfBenefit:coverage" % pr(SUD))
    get("Coverage?beneficiary=%s&_revinclude=ExplanationOfBenefit:coverage&_count=1" % pr(SUD))
    get("Coverage?beneficiary=%s&_revinclude=ExplanationOfBenefit:coverage" % pr(SUBSCRIBER))

    sec("search parameters the sandbox supports: codes, tokens, dates with prefixes, sort")
    S = pr(SUD)
    L = pr(LINK)
    get("Condition?patient=%s&code=%s|F11.20" % (S, ICD10))
    get("Condition?patient=%s&code=%s|F1020" % (S, ICD10))
    get("Condition?patient=%s&code=%s|F32.A" % (S, ICD10))
    get("Condition?patient=%s&code:not=%s|F11.20&_count=1" % (S, ICD10))
    get("Condition?patient=%s&category=problem-list-item&_count=2" % S)
    get("Condition?patient=%s&clinical-status=active&_count=1" % S)
    get("Condition?patient=%s&recorded-date=ge2025-01-01" % S)
    get("Condition?patient=%s&recorded-date=lt2025-01-01" % S)
    get("Condition?patient=%s&onset-date=ge2024-06-01&_count=1" % S)
    get("Condition?patient=%s&_sort=-recorded-date&_count=1" % S)
    get("Condition?patient=%s&_sort=recorded-date&_count=2" % S)
    get("Condition?patient=%s&_sort=-_lastUpdated&_count=1" % S)
    get("Condition?patient=%s&_sort=_id&_count=2" % S)
    get("Condition?patient=%s&_lastUpdated=ge2025-01-01" % S)
    get("Condition?patient=%s&_lastUpdated=lt2025-01-01" % S)
    get("Condition?patient=%s&_security=%s|42CFRPart2" % (S, ACTCODE))
    get("Condition?patient=%s&_security=%s|R" % (S, CONF))
    get("Condition?patient=%s&encounter=Encounter/enc-0174-1" % S)
    get("Condition?patient=%s&asserter=Practitioner/prac-03" % S)
    get("Observation?patient=%s&code=%s|19295-5" % (S, LOINC))
    get("Observation?patient=%s&category=laboratory&_count=1" % S)
    get("Observation?patient=%s&status=final&_count=2" % S)
    get("Observation?patient=%s&date=ge2025-01-01&_count=1" % S)
    get("Observation?patient=%s&date=gt2025-02-01&date=lt2025-03-01" % S)
    get("Observation?patient=%s&date=le2024-12-31" % S)
    get("Observation?patient=%s&_sort=-date&_count=1" % S)
    get("Observation?patient=%s&_sort=-date&_count=1" % L)
    get("Observation?patient=%s&_sort=date&_count=2" % L)
    get("Observation?patient=%s&_sort=-_lastUpdated&_count=1" % L)
    get("Observation?patient=%s&performer=Organization/org-lab" % L)
    get("Observation?patient=%s&performer=Patient/h-pat-02" % L)
    get("Observation?patient=%s&encounter=Encounter/enc-0082-4" % L)
    get("Observation?patient=%s&_security=%s|42CFRPart2" % (S, ACTCODE))
    get("Observation?patient=%s&value-concept=http://snomed.info/sct|10828004" % S)
    get("Encounter?patient=%s&status=finished&_count=1" % S)
    get("Encounter?patient=%s&class=%s|AMB&_count=2" % (S, ACTCODE))
    get("Encounter?patient=%s&type=%s|99213" % (S, CPT))
    get("Encounter?patient=%s&date=ge2025-01-01&_count=1" % S)
    get("Encounter?patient=%s&date=lt2020-01-01" % S)
    get("Encounter?patient=%s&_sort=-date&_count=1" % S)
    get("Encounter?patient=%s&service-provider=Organization/org-recovery" % S)
    get("Encounter?patient=%s&service-provider=Organization/org-grace&_count=1" % S)
    get("Encounter?patient=%s&practitioner=Practitioner/prac-18" % S)
    get("Encounter?patient=%s&reason-code=%s|Z00.00" % (S, ICD10))
    get("ExplanationOfBenefit?patient=%s&use=claim&_count=1" % S)
    get("ExplanationOfBenefit?patient=%s&use=preauthorization" % S)
    get("ExplanationOfBenefit?patient=%s&type=http://terminology.hl7.org/CodeSystem/claim-type|professional&_count=2" % S)
    get("ExplanationOfBenefit?patient=%s&status=active&_count=1" % S)
    get("ExplanationOfBenefit?patient=%s&service-date=ge2025-01-01&_count=1" % S)
    get("ExplanationOfBenefit?patient=%s&service-date=lt2019-01-01" % S)
    get("ExplanationOfBenefit?patient=%s&created=ge2025-01-01" % S)
    get("ExplanationOfBenefit?patient=%s&_sort=-created&_count=1" % S)
    get("ExplanationOfBenefit?patient=%s&_sort=-service-date&_count=2" % S)
    get("ExplanationOfBenefit?patient=%s&provider=Organization/org-recovery" % S)
    get("ExplanationOfBenefit?patient=%s&provider=Organization/org-grace&_count=1" % S)
    get("ExplanationOfBenefit?patient=%s&coverage=Coverage/cov-0174&_count=1" % S)
    get("ExplanationOfBenefit?patient=%s&claim=Claim/h-claim-sud-01" % S)
    get("ExplanationOfBenefit?patient=%s&care-team=Practitioner/prac-18" % S)
    get("ExplanationOfBenefit?patient=%s&_lastUpdated=ge2025-01-01" % S)
    get("MedicationDispense?patient=%s&medication=Medication/h-med-bup" % S)
    get("MedicationDispense?patient=%s&code=%s|351267" % (S, RXNORM))
    get("MedicationDispense?patient=%s&status=completed&_count=1" % S)
    get("MedicationDispense?patient=%s&whenhandedover=ge2025-01-01" % S)
    get("MedicationDispense?patient=%s&_sort=-whenhandedover&_count=1" % S)
    get("Procedure?patient=%s&date=ge2025-01-01&_count=1" % S)
    get("Procedure?patient=%s&code=%s|96127" % (S, CPT))
    get("Procedure?patient=%s&_sort=-date&_count=1" % S)
    get("Procedure?patient=%s&performer=Practitioner/prac-03" % S)
    get("Claim?patient=%s&use=claim" % S)
    get("Claim?patient=%s&use=preauthorization" % L)
    get("Claim?patient=%s&created=ge2025-01-01&_count=1" % S)
    get("ClaimResponse?patient=%s&outcome=complete" % S)
    get("DiagnosticReport?patient=%s&code=%s|19295-5" % (S, LOINC))
    get("DiagnosticReport?patient=%s&status=final" % S)
    get("Coverage?beneficiary=%s&status=active" % pr(SUBSCRIBER))
    get("Provenance?patient=%s&recorded=ge2025-01-01" % L)
    get("Provenance?target=ExplanationOfBenefit/eob-0082-2")
    get("Provenance?target=Condition/cond-0082-1")
    get("Provenance?target=ExplanationOfBenefit/eob-0001-1")

    sec("result parameters (the sandbox is strict: these may be refused upstream, identically)")
    get("Condition?patient=%s&_elements=code,subject" % S)
    get("Observation?patient=%s&_elements=code&_count=1" % L)
    get("Condition?patient=%s&_summary=data" % S)
    get("Condition?patient=%s&_summary=true&_count=1" % S)
    get("Condition/cond-0182-2?_elements=code")
    get("ExplanationOfBenefit?patient=%s&_summary=count" % S)
    get("ExplanationOfBenefit?patient=%s&_total=accurate" % S)

    sec("money (leak class 3): the financial overlay's resources and searches that return them")
    for key in FINANCIAL:
        get(key)
        get(key + "/_history")
        get(key + "/_history/1")
    get("ExplanationOfBenefit?patient=%s&_count=1" % pr(SUBSCRIBER))
    get("ExplanationOfBenefit?patient=%s&service-date=ge2023-01-01" % pr(SUBSCRIBER))
    get("ExplanationOfBenefit?patient=%s&_include=ExplanationOfBenefit:coverage&_count=2" % pr(MOVER))
    get("ExplanationOfBenefit?patient=%s&type=http://terminology.hl7.org/CodeSystem/claim-type|institutional" % pr(MOVER))
    get("Claim?patient=%s&_revinclude=ClaimResponse:request&_count=1" % L)
    get("ClaimResponse?patient=%s&_include=ClaimResponse:request" % L)
    get("Coverage?beneficiary=%s&_revinclude=ExplanationOfBenefit:coverage&_count=2" % pr(MOVER))

    sec("history and vread (leak class 5)")
    for key, _, _, _ in MULTI:
        get(key)
        get(key + "/_history")
        get(key + "/_history?_count=1")
        for v in ("1", "2", "3", "4"):
            get("%s/_history/%s" % (key, v))
    lines.append("# h-move-*: version 1 owned by a visible member, version 2 (current) by a hidden")
    lines.append("# patient, both only in B. Identical answers need: a resource whose current")
    lines.append("# version is not visible is 404 in read, vread (every version) and history.")
    for rid in ("Condition/h-move-cond-01", "Observation/h-move-obs-01", "Encounter/h-move-enc-01"):
        get(rid)
        get(rid + "/_history")
        get(rid + "/_history/1")
        get(rid + "/_history/2")
    for key in ["Condition/cond-0174-1", "Observation/obs-0082-2", "Encounter/enc-0174-1",
                "ExplanationOfBenefit/eob-0082-2", "Coverage/cov-0174", "Provenance/prov-0001",
                "Patient/" + SUD]:
        get(key + "/_history")
        get(key + "/_history/1")
        get(key + "/_history/2")
    get("Condition/cond-0182-2/_history?_since=2025-01-01T00:00:00Z")
    get("Condition/cond-0182-2/_history?_at=2025-03-01T00:00:00Z")

    sec("the opted-out member (403 on searches naming it, 404 on reads)")
    O = pr(OPT_OUT)
    get(O)
    get("Patient?_id=" + OPT_OUT)
    for t, param in types:
        get("%s?%s=%s" % (t, param, O))
    get("Condition?patient=%s&_count=1" % O)
    get("Patient/%s/Condition" % OPT_OUT)
    get("Patient/%s/ExplanationOfBenefit" % OPT_OUT)
    for rid in ["Condition/cond-0291-1", "Encounter/enc-0291-1", "ExplanationOfBenefit/eob-0291-1",
                "Coverage/cov-0291"]:
        get(rid)
    get("Patient?_id=pat-0290&_revinclude=Coverage:subscriber")

    sec("hidden patients named in searches (403) and patient-less searches (400 for grace: over 100 members)")
    for pid in ("h-pat-01", "h-pat-02", "h-pat-05", "h-pat-99"):
        get("Condition?patient=Patient/" + pid)
        get("Patient?_id=" + pid)
    get("Patient/h-pat-03/Observation")
    get("Coverage?beneficiary=Patient/h-pat-05")
    get("ExplanationOfBenefit?patient=Patient/h-pat-04&_count=1")
    get("Observation?patient=%s&performer=Patient/h-pat-02&_count=1" % pr(LINK))
    get("Patient?_id=%s,h-pat-06" % LINK)
    get("Condition?code=%s|F11.20" % ICD10)
    get("Observation?_security=%s|42CFRPart2" % ACTCODE)
    get("ExplanationOfBenefit?provider=Organization/org-recovery")
    get("Encounter?practitioner=Practitioner/prac-05")
    get("Observation?performer=%s" % L)
    get("MedicationDispense?receiver=%s" % pr(SUBSCRIBER))
    get("MedicationDispense?medication=Medication/h-med-bup")
    get("Condition?_id=h-cond-idonly-01")
    get("Appointment?actor=%s" % L)

    sec("reads of every resource only in hidden.ndjson (404)")
    seen = set()
    for r, _, _, _ in hidden.items:
        key = "%s/%s" % (r["resourceType"], r["id"])
        if key in seen or key in D:
            continue
        seen.add(key)
        get(key)
    sec("vread and history of hidden-only resources (404)")
    for key in sorted(seen):
        if key.split("/")[1].startswith(("h-pat-", "h-cond-sud", "h-obs-p2", "h-eob-sud", "h-prov-agent", "h-cond-idonly",
                                         "h-appt", "h-opt-cond")):
            get(key + "/_history")
            get(key + "/_history/1")

    sec("reads of visible D records of the focus members (200)")
    n = 0
    for key in D_ORDER:
        r = D[key]
        if r["resourceType"] in ("Patient", "Group", "Organization", "Practitioner", "PractitionerRole", "Location"):
            continue
        if any('"Patient/%s"' % p in dumps(r) for p in (SUD, LINK)):
            get(key)
            n += 1
    return "\n".join(lines).lstrip("\n") + "\n"


# ------------------------------------------------------------------ facts, README checks

def collect_refs(v, out):
    if isinstance(v, dict):
        if isinstance(v.get("reference"), str):
            out.append(v["reference"])
        for x in v.values():
            collect_refs(x, out)
    elif isinstance(v, list):
        for x in v:
            collect_refs(x, out)


INTENTIONALLY_DANGLING = {
    "Patient/h-pat-99": "h-obs-dangling-01 performer: a patient that exists nowhere",
}


def check_references(hidden, base, financial):
    """Every reference in base/hidden/financial resolves within D + base + H
    (versioned references by their Type/id), except the listed ones."""
    known = set(D)
    for out in (base, hidden, financial):
        for r, _, _, _ in out.items:
            known.add("%s/%s" % (r["resourceType"], r["id"]))
    problems = []
    for name, out in (("base", base), ("hidden", hidden), ("financial", financial)):
        for r, _, _, _ in out.items:
            refs = []
            collect_refs(r, refs)
            for x in refs:
                key = "/".join(x.split("/")[:2])
                if key in known:
                    continue
                if x in INTENTIONALLY_DANGLING:
                    continue
                problems.append("%s %s/%s -> %s" % (name, r["resourceType"], r["id"], x))
    if problems:
        raise SystemExit("unresolved references:\n  " + "\n  ".join(problems))


def build_facts(hidden, base, financial, money_h, money_f):
    grace = FACTS_D["attribution"]["org-grace"]["visible"]
    for p in (SUD, LINK, SUBSCRIBER, MOVER, OPT_OUT, "pat-0182", "pat-0256", "pat-0231", "pat-0001"):
        assert p in grace, p
    multi_patients = {D[k]["subject" if "subject" in D[k] else "patient"]["reference"][8:] for k, _, _, _ in MULTI}
    assert OPT_OUT not in multi_patients and OPT_OUT != MOVER
    for p in HIDDEN_PATIENTS:
        assert p[0] not in grace and p[9] != "grp-grace"

    hidden_keys = []
    versions = {}
    for r, group, _, _ in hidden.items:
        key = "%s/%s" % (r["resourceType"], r["id"])
        versions.setdefault(key, []).append(r["meta"]["versionId"])
        if key not in hidden_keys:
            hidden_keys.append(key)
    groups = {}
    for r, group, classes, note in hidden.items:
        key = "%s/%s" % (r["resourceType"], r["id"])
        entry = {"resource": key, "versionId": r["meta"]["versionId"]}
        if classes:
            entry["leak_classes"] = classes
        if note:
            entry["note"] = note
        groups.setdefault(group, []).append(entry)

    tokens = [MARK, MONEY_MARK]
    for key in hidden_keys:
        rid = key.split("/", 1)[1]
        if rid.startswith("h-"):
            tokens.append(rid)
    for p in HIDDEN_PATIENTS:
        tokens += [p[1], p[2], p[3][0], p[6]]
        if p[0] != "h-pat-05":  # h-pat-05 shares her visible spouse's address
            tokens.append(p[7])
    tokens += ["HCLM-", "HCLR-", "h-pat-99"]
    tokens += money_h + money_f
    tokens += ["3713.37", "2913.29", "1313.13", "1031.03", "2121.21", "1717.17", "818.18", "616.16", "212.12"]
    seen = set()
    tokens = [t for t in tokens if not (t in seen or seen.add(t))]
    shared = D_TEXT + base.text()
    clash = [t for t in tokens if t in shared]
    if clash:
        raise SystemExit("hidden tokens that also occur in D or base.ndjson: %s" % clash)
    htext = hidden.text() + financial.text()
    missing = [t for t in tokens if t not in htext]
    if missing:
        raise SystemExit("hidden tokens that occur nowhere in hidden/financial: %s" % missing)

    return {
        "_about": "Facts for tests/noninterference (written by generate.py). Upstream A = examples/dataset/payer.ndjson "
                  "+ base.ndjson; upstream B = the same + hidden.ndjson + financial.ndjson (load in this order; "
                  "financial.ndjson and the re-emitted Groups replace D resources of the same Type/id and versionId). "
                  "Resource keys are Type/id; patient ids are bare.",
        "client": CLIENT,
        "policy": {"part2": "exclude", "part2_programs": ["Organization/org-recovery", FACTS_D["part2_program"]["npi"]],
                   "financial": "strip", "service_date_floor": FACTS_D["service_date_floor"],
                   "max_narrowed_patients": 100},
        "load_order": {
            "A": ["examples/dataset/payer.ndjson", "tests/noninterference/base.ndjson"],
            "B": ["examples/dataset/payer.ndjson", "tests/noninterference/base.ndjson",
                  "tests/noninterference/hidden.ndjson", "tests/noninterference/financial.ndjson"],
            "B_noise": True,
        },
        "opt_out": OPT_OUT,
        "opt_out_hidden_resources": [e["resource"] for e in groups["d-opt-out"]],
        "roles": {
            "part2_member": SUD, "link_member": LINK, "subscriber_of_hidden_dependent": SUBSCRIBER,
            "h_move_version1_owner": MOVER, "opt_out": OPT_OUT,
        },
        "hidden_patients": [{"id": p[0], "member_id": p[1], "family": p[2], "given": p[3], "group": p[9],
                             "note": {"h-pat-05": "spouse of visible %s (Coverage subscriber/policyHolder, EOB payee, "
                                                  "MedicationDispense receiver)" % SUBSCRIBER,
                                      "h-pat-06": "Patient.link.other = Patient/%s" % LINK}.get(p[0], "")}
                            for p in HIDDEN_PATIENTS],
        "replaced_in_B": ["Group/grp-hopkins", "Group/grp-valley"] + FINANCIAL,
        "base_resources": ["%s/%s" % (r["resourceType"], r["id"]) for r, _, _, _ in base.items],
        "hidden_resources": hidden_keys,
        "hidden_only_resources": [k for k in hidden_keys if k not in D],
        "hidden_versions": versions,
        "hidden_groups": groups,
        "financial_resources": FINANCIAL,
        "multi_version": [{"resource": k, "owner": D[k]["subject" if "subject" in D[k] else "patient"]["reference"],
                           "versions": {"1": "payer.ndjson", "2": "hidden.ndjson (owner Patient/%s)" % hp,
                                        "3": "base.ndjson"},
                           "current": "3", "visible_versions": ["1", "3"], "in_A": ["1", "3"], "in_B": ["1", "2", "3"]}
                          for k, hp, _, _ in MULTI],
        "moved": [{"resource": k, "versions": {"1": "hidden.ndjson (owner Patient/%s, visible)" % MOVER,
                                               "2": "hidden.ndjson (owner Patient/%s)" % hp},
                   "current": "2", "visible_versions": [],
                   "expect": "404 on read, every vread and _history (the resource does not exist in A)"}
                  for k, hp in (("Condition/h-move-cond-01", "h-pat-01"), ("Observation/h-move-obs-01", "h-pat-02"),
                                ("Encounter/h-move-enc-01", "h-pat-03"))],
        "markers": [MARK, MONEY_MARK],
        "hidden_tokens": tokens,
        "hidden_tokens_note": "Every token occurs in hidden.ndjson or financial.ndjson and nowhere in payer.ndjson "
                              "or base.ndjson. Request lines of the corpus name some of them (h- ids, h-pat-99, member "
                              "ids): leave out echoes of the request (Bundle self link, OperationOutcome diagnostics "
                              "quoting the request) when scanning B's answers.",
        "intentionally_dangling": INTENTIONALLY_DANGLING,
        "not_references": "identifier-only References (no `reference`): h-obs-perf-02, h-prov-agent-02, "
                          "h-cond-idonly-01, h-enc-idonly-01, h-appt-idonly-01, h-appt-mixed-01 (member ids) and "
                          "h-obs-p2-02, h-proc-p2-02, h-eob-sud-02 (program NPI); versioned: h-enc-p2-02 "
                          "serviceProvider Organization/org-recovery/_history/1",
        "leak_classes": LEAK_CLASSES,
        "counts": {"base": len(base.items), "hidden": len(hidden.items), "hidden_unique": len(hidden_keys),
                   "financial": len(financial.items)},
    }


def generate():
    hidden, money_h = build_hidden()
    base = build_base()
    financial, money_f = build_financial()
    check_references(hidden, base, financial)
    facts = build_facts(hidden, base, financial, money_h, money_f)
    corpus = build_corpus(hidden, base, financial, FACTS_D)
    facts["counts"]["corpus_requests"] = sum(1 for line in corpus.splitlines() if line and not line.startswith("#"))
    return {
        "base.ndjson": base.text(),
        "hidden.ndjson": hidden.text(),
        "financial.ndjson": financial.text(),
        "facts.json": json.dumps(facts, indent=1, ensure_ascii=False) + "\n",
        "corpus.txt": corpus,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output directory")
    ap.add_argument("--check", action="store_true", help="exit 1 if the files on disk differ")
    args = ap.parse_args()
    outputs = generate()
    if args.check:
        stale = []
        for name, text in outputs.items():
            try:
                with open(os.path.join(args.out, name), encoding="utf-8") as f:
                    if f.read() != text:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
        if stale:
            print("stale: %s (run tests/noninterference/generate.py)" % ", ".join(stale), file=sys.stderr)
            return 1
        print("up to date")
        return 0
    for name, text in outputs.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    print("wrote %s to %s" % (", ".join("%s (%d lines)" % (n, t.count("\n")) for n, t in outputs.items()), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
