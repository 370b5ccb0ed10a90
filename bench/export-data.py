#!/usr/bin/env python3
"""Synthetic dataset for the export benchmark (bench/export.sh).

    python3 bench/export-data.py [--patients N] [--out FILE] [--encounter-refs]

Writes NDJSON (one FHIR R4 resource per line, compact JSON), deterministic
(a fixed seed, only ``random.Random.random()``):

- Organization/org-grace (NPI 1417987256, the benchmark client's
  organization) and Organization/org-payer (the Coverage payor);
- Group/grp-bench, a PDex provider attribution Group (the shape
  examples/dataset/generate.py writes and gateway/src/access/attribution.rs
  reads: managingEntity = Organization/org-grace, characteristic, member
  entries with a period that covers today, inactive = false) listing all N
  patients;
- per patient, 30 resources: the Patient, one Coverage (beneficiary),
  6 Encounters, 4 Conditions and 18 Observations (subject), all with service
  dates from 2017 on (after the 2016-01-01 service-date floor) and no
  Part 2 codes.

So N patients give 30 N exportable resources (300,000 for 10,000). With
``--encounter-refs`` Conditions and Observations also reference their
Encounter (as US Core data does); fhirwall then classifies those Encounters
for the Part 2 by-reference check (extra upstream reads). Off by default.

Prints a one-line summary (counts per type, bytes) on stderr. Python 3 stdlib only.
"""

import argparse
import json
import random
import sys

SEED = 20271205
NPI = "http://hl7.org/fhir/sid/us-npi"
PDEX = "http://hl7.org/fhir/us/davinci-pdex/"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
GRACE_NPI = "1417987256"

ENCOUNTERS = 6
CONDITIONS = 4
OBSERVATIONS = 18
PER_PATIENT = 2 + ENCOUNTERS + CONDITIONS + OBSERVATIONS  # Patient + Coverage + ...

FIRST_F = ["Olivia", "Emma", "Ava", "Sophia", "Isabella", "Mia", "Amelia", "Harper", "Evelyn", "Abigail",
           "Emily", "Ella", "Grace", "Chloe", "Nora", "Lily", "Hannah", "Zoe", "Leah", "Maya"]
FIRST_M = ["Liam", "Noah", "Oliver", "Elijah", "James", "William", "Benjamin", "Lucas", "Henry", "Theodore",
           "Jack", "Levi", "Owen", "Samuel", "Caleb", "Isaac", "Ezra", "Miles", "Julian", "Felix"]
LAST = ["Abernathy", "Baptiste", "Calloway", "Delacroix", "Eastwood", "Fairbanks", "Galloway", "Hawthorne",
        "Iverson", "Jablonski", "Kowalczyk", "Lindqvist", "Montrose", "Nakamura", "Okonkwo", "Pemberton",
        "Quintero", "Rasmussen", "Sorensen", "Thackeray", "Underwood", "Valdivia", "Whitfield", "Yardley"]
STREETS = ["Maple", "Oak", "Cedar", "Birch", "Willow", "Chestnut", "Juniper", "Sycamore", "Linden", "Elm"]
CITIES = [("Riverton", "02901"), ("Fairview", "02903"), ("Greenfield", "02905"), ("Lakeside", "02907")]
# Not Part 2 (no F10-F16, F18-F19).
DX = [("E11.9", "Type 2 diabetes mellitus without complications"),
      ("I10", "Essential (primary) hypertension"),
      ("E78.5", "Hyperlipidemia, unspecified"),
      ("J45.909", "Unspecified asthma, uncomplicated"),
      ("M54.50", "Low back pain, unspecified"),
      ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
      ("E66.9", "Obesity, unspecified"),
      ("J06.9", "Acute upper respiratory infection, unspecified"),
      ("E03.9", "Hypothyroidism, unspecified"),
      ("G47.33", "Obstructive sleep apnea (adult) (pediatric)")]
VISITS = [("99213", "Office or other outpatient visit, established patient, low MDM"),
          ("99214", "Office or other outpatient visit, established patient, moderate MDM"),
          ("99395", "Periodic preventive medicine, established patient, 18-39 years")]
# (LOINC, display, category, unit, low, high, decimals)
OBS = [("8867-4", "Heart rate", "vital-signs", "/min", 55, 100, 0),
       ("8310-5", "Body temperature", "vital-signs", "Cel", 36.1, 37.6, 1),
       ("29463-7", "Body weight", "vital-signs", "kg", 50, 120, 1),
       ("39156-5", "Body mass index (BMI) [Ratio]", "vital-signs", "kg/m2", 18, 38, 1),
       ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 35, 80, 0),
       ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 70, 180, 0),
       ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "laboratory", "%", 4.8, 9.5, 1),
       ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 0.6, 1.4, 2)]

rng = random.Random(SEED)


def rand():
    return rng.random()


def pick(seq):
    return seq[int(rand() * len(seq))]


def rint(lo, hi):
    return lo + int(rand() * (hi - lo + 1))


def cc(system, code, display):
    return {"coding": [{"system": system, "code": code, "display": display}]}


def ref(target):
    return {"reference": target}


def meta(last_updated):
    return {"versionId": "1", "lastUpdated": last_updated}


def date(year_lo, year_hi):
    return "%04d-%02d-%02d" % (rint(year_lo, year_hi), rint(1, 12), rint(1, 28))


def organizations():
    yield {"resourceType": "Organization", "id": "org-grace", "meta": meta("2024-01-02T09:00:00Z"),
           "identifier": [{"system": NPI, "value": GRACE_NPI}], "active": True,
           "type": [cc("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")],
           "name": "Grace Family Medicine",
           "address": [{"line": ["12 Main St"], "city": "Riverton", "state": "RI", "postalCode": "02901",
                        "country": "US"}]}
    yield {"resourceType": "Organization", "id": "org-payer", "meta": meta("2024-01-02T09:00:00Z"),
           "identifier": [{"system": "http://example.org/fhirwall/payer-id", "value": "FWHP"}], "active": True,
           "type": [cc("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")],
           "name": "Fhirwall Example Health Plan"}


def group(pids):
    members = [{"entity": ref("Patient/" + p), "period": {"start": "2024-01-01"}, "inactive": False} for p in pids]
    return {"resourceType": "Group", "id": "grp-bench", "meta": meta("2025-06-01T04:00:00Z"),
            "identifier": [{"system": NPI, "value": GRACE_NPI},
                           {"system": "http://example.org/fhirwall/attribution-list", "value": "grp-bench"}],
            "active": True, "type": "person", "actual": True,
            "code": cc(PDEX + "CodeSystem/PdexMemberAttributionCS", "pdexprovidergroup", "PDex Provider Group"),
            "name": "Benchmark members attributed to Grace Family Medicine",
            "managingEntity": {"reference": "Organization/org-grace", "display": "Grace Family Medicine"},
            "characteristic": [{"code": cc(PDEX + "CodeSystem/PdexMemberAttributionCS", "pdexprovidergroup",
                                           "PDex Provider Group"),
                                "valueReference": {"identifier": {"system": NPI, "value": GRACE_NPI}},
                                "exclude": False, "period": {"start": "2024-01-01"}}],
            "quantity": len(members), "member": members}


def patient_resources(n, pid, encounter_refs):
    num = pid.split("-")[1]
    female = rand() < 0.5
    city, zip_code = pick(CITIES)
    lu = "%sT08:%02d:%02dZ" % (date(2024, 2025), rint(0, 59), rint(0, 59))
    yield {"resourceType": "Patient", "id": pid, "meta": meta(lu),
           "identifier": [{"type": cc("http://terminology.hl7.org/CodeSystem/v2-0203", "MB", "Member Number"),
                           "system": "http://example.org/fhirwall/member-id", "value": "BM%07d-01" % n}],
           "active": True,
           "name": [{"use": "official", "family": pick(LAST), "given": [pick(FIRST_F if female else FIRST_M)]}],
           "gender": "female" if female else "male", "birthDate": date(1940, 2004),
           "address": [{"use": "home", "line": ["%d %s St" % (rint(1, 999), pick(STREETS))], "city": city,
                        "state": "RI", "postalCode": zip_code, "country": "US"}]}
    yield {"resourceType": "Coverage", "id": "cov-" + num, "meta": meta(lu),
           "identifier": [{"system": "http://example.org/fhirwall/member-id", "value": "BM%07d-01" % n}],
           "status": "active",
           "type": cc("http://terminology.hl7.org/CodeSystem/v3-ActCode", "HIP", "health insurance plan policy"),
           "subscriber": ref("Patient/" + pid), "subscriberId": "BM%07d" % n,
           "beneficiary": ref("Patient/" + pid),
           "relationship": cc("http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self"),
           "period": {"start": pick(["2020-01-01", "2021-01-01", "2022-01-01", "2023-01-01"])},
           "payor": [ref("Organization/org-payer")]}
    encounters = []
    for e in range(ENCOUNTERS):
        day = date(2017, 2025)
        eid = "enc-%s-%d" % (num, e + 1)
        encounters.append((eid, day))
        code, display = pick(VISITS)
        dx, dx_display = pick(DX)
        yield {"resourceType": "Encounter", "id": eid, "meta": meta(day + "T18:00:00Z"), "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                         "display": "ambulatory"},
               "type": [cc(CPT, code, display)], "subject": ref("Patient/" + pid),
               "period": {"start": day + "T09:00:00Z", "end": day + "T09:40:00Z"},
               "reasonCode": [cc(ICD10CM, dx, dx_display)],
               "serviceProvider": ref("Organization/org-grace")}
    for c in range(CONDITIONS):
        eid, day = pick(encounters)
        dx, dx_display = pick(DX)
        res = {"resourceType": "Condition", "id": "cond-%s-%d" % (num, c + 1), "meta": meta(day + "T18:00:00Z"),
               "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
               "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed",
                                        "Confirmed"),
               "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item",
                               "Problem List Item")],
               "code": cc(ICD10CM, dx, dx_display), "subject": ref("Patient/" + pid),
               "onsetDateTime": day, "recordedDate": day}
        if encounter_refs:
            res["encounter"] = ref("Encounter/" + eid)
        yield res
    for o in range(OBSERVATIONS):
        eid, day = pick(encounters)
        code, display, category, unit, lo, hi, decimals = pick(OBS)
        value = round(lo + rand() * (hi - lo), decimals)
        if decimals == 0:
            value = int(value)
        res = {"resourceType": "Observation", "id": "obs-%s-%d" % (num, o + 1), "meta": meta(day + "T18:00:00Z"),
               "status": "final",
               "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category", category,
                               "Vital Signs" if category == "vital-signs" else "Laboratory")],
               "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
               "subject": ref("Patient/" + pid),
               "effectiveDateTime": day + "T09:15:00Z", "issued": day + "T12:00:00Z",
               "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}
        if encounter_refs:
            res["encounter"] = ref("Encounter/" + eid)
        yield res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--out", default="-", help="output file (default: stdout)")
    ap.add_argument("--encounter-refs", action="store_true",
                    help="Conditions and Observations reference their Encounter")
    args = ap.parse_args()
    if args.patients < 1:
        ap.error("--patients must be at least 1")
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    pids = ["bench-%06d" % (i + 1) for i in range(args.patients)]
    counts = {}
    size = 0

    def emit(resource):
        nonlocal size
        line = json.dumps(resource, separators=(",", ":"), ensure_ascii=False) + "\n"
        size += len(line.encode("utf-8"))
        counts[resource["resourceType"]] = counts.get(resource["resourceType"], 0) + 1
        out.write(line)

    for r in organizations():
        emit(r)
    emit(group(pids))
    for n, pid in enumerate(pids, start=1):
        for r in patient_resources(n, pid, args.encounter_refs):
            emit(r)
    if out is not sys.stdout:
        out.close()
    exported = sum(v for k, v in counts.items() if k not in ("Organization", "Group"))
    print("export-data: %d patients, %d exportable resources (%s), %d bytes" % (
        args.patients, exported, ", ".join("%s %d" % kv for kv in sorted(counts.items())), size), file=sys.stderr)


if __name__ == "__main__":
    main()
