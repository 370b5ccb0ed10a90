#!/usr/bin/env python3
"""Generate the fhirwall synthetic payer dataset.

Deterministic: a fixed seed and only Python's Mersenne Twister ``random()``
(stable across Python 3 versions), so every run writes byte-identical files:

    python3 examples/dataset/generate.py            # writes next to this script
    python3 examples/dataset/generate.py --check    # exit 1 if the files differ

Outputs (next to this script):
    payer.ndjson  one FHIR R4 resource per line, compact JSON
    facts.json    machine-readable test facts (attribution, Part 2, dates, ...)
    README.md     what is in the dataset, with the same facts as tables

All people, organizations and identifiers are fictional. Python 3 stdlib only.
"""

import argparse
import json
import os
import random
import sys

SEED = 20270101
AS_OF = "2025-06-30"  # no lastUpdated after this day
SERVICE_DATE_FLOOR = "2016-01-01"

MEMBER_ID_SYSTEM = "http://example.org/fhirwall/member-id"
CLAIM_ID_SYSTEM = "http://example.org/fhirwall/claim-id"
NPI = "http://hl7.org/fhir/sid/us-npi"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "https://bluebutton.cms.gov/resources/codesystem/hcpcs"
NDC = "http://hl7.org/fhir/sid/ndc"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
ADJ = "http://terminology.hl7.org/CodeSystem/adjudication"
C4BB = "http://hl7.org/fhir/us/carin-bb/CodeSystem/"
C4BB_SD = "http://hl7.org/fhir/us/carin-bb/StructureDefinition/"
PDEX = "http://hl7.org/fhir/us/davinci-pdex/"
X12_306 = "https://codesystem.x12.org/005010/306"
X12_CARC = "https://x12.org/codes/claim-adjustment-reason-codes"
X12_HCR = "https://codesystem.x12.org/005010/889"

rng = random.Random(SEED)


def rand():
    return rng.random()


def pick(seq):
    return seq[int(rand() * len(seq))]


def rint(lo, hi):
    """Integer in [lo, hi]."""
    return lo + int(rand() * (hi - lo + 1))


def chance(p):
    return rand() < p


def shuffled(seq):
    out = list(seq)
    for i in range(len(out) - 1, 0, -1):
        j = int(rand() * (i + 1))
        out[i], out[j] = out[j], out[i]
    return out


# ---------------------------------------------------------------- dates

DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def is_leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def to_ordinal(d):
    y, m, dd = (int(x) for x in d[:10].split("-"))
    n = dd
    for mm in range(1, m):
        n += DAYS_IN_MONTH[mm - 1] + (1 if mm == 2 and is_leap(y) else 0)
    for yy in range(1900, y):
        n += 366 if is_leap(yy) else 365
    return n


def from_ordinal(n):
    y = 1900
    while True:
        ylen = 366 if is_leap(y) else 365
        if n <= ylen:
            break
        n -= ylen
        y += 1
    m = 1
    while True:
        mlen = DAYS_IN_MONTH[m - 1] + (1 if m == 2 and is_leap(y) else 0)
        if n <= mlen:
            break
        n -= mlen
        m += 1
    return "%04d-%02d-%02d" % (y, m, n)


def add_days(d, k):
    return from_ordinal(to_ordinal(d) + k)


def rand_date(lo, hi):
    return from_ordinal(rint(to_ordinal(lo), to_ordinal(hi)))


AS_OF_ORD = to_ordinal(AS_OF)


def last_updated(service_date):
    """A deterministic meta.lastUpdated a little after the service date."""
    o = min(to_ordinal(service_date) + rint(2, 45), AS_OF_ORD)
    return "%sT%02d:%02d:%02dZ" % (from_ordinal(o), rint(6, 20), rint(0, 59), rint(0, 59))


def dt(date):
    return "%sT%02d:%02d:00Z" % (date, rint(7, 18), pick([0, 15, 30, 45]))


# ---------------------------------------------------------------- helpers


def npi(base9):
    s = "80840" + base9
    total = 0
    for i, ch in enumerate(reversed(s)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return base9 + str((10 - total % 10) % 10)


def ref(r, display=None):
    out = {"reference": r}
    if display:
        out["display"] = display
    return out


def cc(system, code, display=None, text=None):
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    out = {"coding": [coding]}
    if text:
        out["text"] = text
    return out


def money(v):
    return {"value": round(v, 2), "currency": "USD"}


def meta(lu, profile=None, security=None, version="1"):
    m = {"versionId": version, "lastUpdated": lu}
    if profile:
        m["profile"] = [profile]
    if security:
        m["security"] = security
    return m


PART2_LABELS = [
    {"system": CONFIDENTIALITY, "code": "R", "display": "restricted"},
    {"system": ACTCODE, "code": "42CFRPart2", "display": "42 CFR Part2"},
]

RESOURCES = []  # (resource) in output order
SERVICE_DATES = {}  # "Type/id" -> service date per the DESIGN table (or None)
PATIENT_OF = {}  # "Type/id" -> patient id (compartment owner)


def emit(res, patient=None, service_date=None):
    key = "%s/%s" % (res["resourceType"], res["id"])
    RESOURCES.append(res)
    SERVICE_DATES[key] = service_date
    if patient:
        PATIENT_OF[key] = patient
    return key


# ---------------------------------------------------------------- reference data

PAYER = "org-payer"
ORGS = [
    # id, name, kind, npi base (9 digits; check digit computed) or full NPI
    ("org-grace", "Grace Family Medicine", "prov", npi("141798725")),
    ("org-hopkins", "Hopkins Street Cardiology Associates", "prov", npi("152634781")),
    ("org-valley", "Valley Regional Hospital", "prov", npi("163745892")),
    ("org-lakeside", "Lakeside Pediatrics", "prov", npi("174856903")),
    ("org-recovery", "Harbor Recovery Center", "prov", "1234567893"),
    ("org-pharmacy", "Main Street Pharmacy", "prov", npi("185967014")),
    ("org-lab", "Summit Diagnostics Laboratory", "prov", npi("196078125")),
]
ORG_NPI = {o[0]: o[3] for o in ORGS}
ORG_NAME = {o[0]: o[1] for o in ORGS}
ORG_NAME[PAYER] = "Fhirwall Example Health Plan"
ORG_CITY = {
    "org-grace": "Riverton",
    "org-hopkins": "Fairview",
    "org-valley": "Greenfield",
    "org-lakeside": "Lakeside",
    "org-recovery": "Harbor City",
    "org-pharmacy": "Riverton",
    "org-lab": "Fairview",
}
# Organizations that manage attribution Groups (provider organizations calling fhirwall)
ATTRIBUTING = ["org-grace", "org-hopkins", "org-valley", "org-lakeside"]

PRACTITIONERS = {}  # org -> [prac ids]
PRAC_NPI = {}
PRAC_NAME = {}

FIRST_F = ["Olivia", "Emma", "Ava", "Sophia", "Isabella", "Mia", "Amelia", "Harper",
           "Evelyn", "Abigail", "Emily", "Ella", "Grace", "Chloe", "Nora", "Lily",
           "Hannah", "Zoe", "Leah", "Maya", "Ruth", "Alice", "Clara", "Rosa", "Irene",
           "Dolores", "Martha", "Wanda", "Joan", "Lucia"]
FIRST_M = ["Liam", "Noah", "Oliver", "Elijah", "James", "William", "Benjamin", "Lucas",
           "Henry", "Theodore", "Jack", "Levi", "Owen", "Samuel", "Caleb", "Isaac",
           "Ezra", "Miles", "Julian", "Felix", "Walter", "Arthur", "Frank", "Harold",
           "Raymond", "Victor", "Hector", "Dennis", "Curtis", "Wesley"]
LAST = ["Abernathy", "Baptiste", "Calloway", "Delacroix", "Eastwood", "Fairbanks",
        "Galloway", "Hawthorne", "Iverson", "Jablonski", "Kowalczyk", "Lindqvist",
        "Montrose", "Nakamura", "Okonkwo", "Pemberton", "Quintero", "Rasmussen",
        "Sorensen", "Thackeray", "Underwood", "Valdivia", "Whitfield", "Yardley",
        "Zielinski", "Ashworth", "Brennan", "Castellano", "Dunmore", "Ellington",
        "Fenwick", "Grantham", "Holloway", "Ingram", "Jessup", "Kingsley", "Lockhart",
        "Marchetti", "Northcott", "Oyelaran", "Prescott", "Redgrave", "Stanhope",
        "Trevino", "Upton", "Vasquez", "Winslow", "Ximenez", "Yamamoto", "Zamora"]
STREETS = ["Maple", "Oak", "Cedar", "Birch", "Willow", "Chestnut", "Juniper", "Sycamore",
           "Hawthorn", "Linden", "Magnolia", "Aspen", "Poplar", "Spruce", "Elm"]
STREET_KIND = ["St", "Ave", "Rd", "Ln", "Ct", "Dr", "Way"]
CITIES = [("Riverton", "02901"), ("Fairview", "02903"), ("Greenfield", "02905"),
          ("Lakeside", "02907"), ("Harbor City", "02909"), ("Millbrook", "02911")]
STATE = "RI"

# ICD-10-CM: common chronic / acute conditions (not Part 2)
DX_COMMON = [
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("I10", "Essential (primary) hypertension"),
    ("E78.5", "Hyperlipidemia, unspecified"),
    ("J45.909", "Unspecified asthma, uncomplicated"),
    ("M54.50", "Low back pain, unspecified"),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    ("E66.9", "Obesity, unspecified"),
    ("N39.0", "Urinary tract infection, site not specified"),
    ("J06.9", "Acute upper respiratory infection, unspecified"),
    ("M17.11", "Unilateral primary osteoarthritis, right knee"),
    ("I25.10", "Atherosclerotic heart disease of native coronary artery without angina pectoris"),
    ("I48.91", "Unspecified atrial fibrillation"),
    ("E03.9", "Hypothyroidism, unspecified"),
    ("F32.A", "Depression, unspecified"),
    ("F41.1", "Generalized anxiety disorder"),
    ("G47.33", "Obstructive sleep apnea (adult) (pediatric)"),
    ("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
    ("N18.3", "Chronic kidney disease, stage 3 (moderate)"),
    ("Z00.00", "Encounter for general adult medical examination without abnormal findings"),
    ("S93.401A", "Sprain of unspecified ligament of right ankle, initial encounter"),
]
DX_PEDIATRIC = [
    ("Z00.129", "Encounter for routine child health examination without abnormal findings"),
    ("J06.9", "Acute upper respiratory infection, unspecified"),
    ("H66.90", "Otitis media, unspecified, unspecified ear"),
    ("J45.909", "Unspecified asthma, uncomplicated"),
    ("L20.9", "Atopic dermatitis, unspecified"),
    ("F90.9", "Attention-deficit hyperactivity disorder, unspecified type"),
]
# Substance use disorder codes that policies/part2 classifies (F10-F16, F18-F19)
DX_SUD = [
    ("F10.20", "Alcohol dependence, uncomplicated"),
    ("F10.129", "Alcohol abuse with intoxication, unspecified"),
    ("F11.20", "Opioid dependence, uncomplicated"),
    ("F11.23", "Opioid dependence with withdrawal"),
    ("F12.20", "Cannabis dependence, uncomplicated"),
    ("F13.20", "Sedative, hypnotic or anxiolytic dependence, uncomplicated"),
    ("F14.20", "Cocaine dependence, uncomplicated"),
    ("F15.20", "Other stimulant dependence, uncomplicated"),
    ("F16.20", "Hallucinogen dependence, uncomplicated"),
    ("F18.20", "Inhalant dependence, uncomplicated"),
    ("F19.20", "Other psychoactive substance dependence, uncomplicated"),
]
# Tobacco: F17 is NOT Part 2
DX_TOBACCO = [("F17.210", "Nicotine dependence, cigarettes, uncomplicated"),
              ("F17.220", "Nicotine dependence, chewing tobacco, uncomplicated")]

CPT_OFFICE = [("99213", "Office or other outpatient visit, established patient, low MDM"),
              ("99214", "Office or other outpatient visit, established patient, moderate MDM"),
              ("99203", "Office or other outpatient visit, new patient, low MDM"),
              ("99395", "Periodic preventive medicine, established patient, 18-39 years"),
              ("93000", "Electrocardiogram, routine ECG with at least 12 leads"),
              ("36415", "Collection of venous blood by venipuncture"),
              ("90686", "Influenza virus vaccine, quadrivalent, preservative free"),
              ("97110", "Therapeutic exercises")]
CPT_CARDIO = [("93306", "Echocardiography, transthoracic, complete"),
              ("93015", "Cardiovascular stress test"),
              ("93000", "Electrocardiogram, routine ECG with at least 12 leads"),
              ("99214", "Office or other outpatient visit, established patient, moderate MDM")]
CPT_OUTPT = [("71046", "Radiologic examination, chest; 2 views"),
             ("80053", "Comprehensive metabolic panel"),
             ("85025", "Complete blood count with automated differential"),
             ("99284", "Emergency department visit, moderate MDM"),
             ("70450", "CT head or brain without contrast"),
             ("73721", "MRI any joint of lower extremity without contrast")]
CPT_SUD = [("H0004", "Behavioral health counseling and therapy, per 15 minutes"),
           ("H0020", "Alcohol and/or drug services; methadone administration"),
           ("90832", "Psychotherapy, 30 minutes with patient"),
           ("H0001", "Alcohol and/or drug assessment")]
PCS = [("0SRC0J9", "Replacement of Right Knee Joint with Synthetic Substitute, Cemented"),
       ("02703ZZ", "Dilation of Coronary Artery, One Artery, Percutaneous Approach"),
       ("0DTJ4ZZ", "Resection of Appendix, Percutaneous Endoscopic Approach"),
       ("5A1955Z", "Respiratory Ventilation, Greater than 96 Consecutive Hours")]
DRG_DX = [("I21.4", "Non-ST elevation (NSTEMI) myocardial infarction"),
          ("J18.9", "Pneumonia, unspecified organism"),
          ("K35.80", "Unspecified acute appendicitis"),
          ("M17.11", "Unilateral primary osteoarthritis, right knee"),
          ("I50.9", "Heart failure, unspecified")]
REVENUE = [("0120", "Room & Board - Semi-Private"), ("0250", "Pharmacy"),
           ("0300", "Laboratory"), ("0320", "Radiology - Diagnostic"),
           ("0450", "Emergency Room"), ("0360", "Operating Room Services")]
DRUGS = [("00093-7214-01", "Metformin HCl 500 MG Oral Tablet", 30),
         ("00378-1805-10", "Lisinopril 10 MG Oral Tablet", 30),
         ("00071-0155-23", "Atorvastatin 20 MG Oral Tablet", 30),
         ("00173-0682-20", "Albuterol 90 MCG/ACTUATION Inhaler", 30),
         ("00378-0208-01", "Levothyroxine 50 MCG Oral Tablet", 90),
         ("00093-0058-01", "Amoxicillin 500 MG Oral Capsule", 10),
         ("68180-0513-01", "Sertraline 50 MG Oral Tablet", 30),
         ("00093-5264-56", "Omeprazole 20 MG Delayed Release Capsule", 30)]
DRUGS_SUD = [("12496-1208-03", "Buprenorphine 8 MG / Naloxone 2 MG Sublingual Film", 30),
             ("00054-4538-44", "Methadone HCl 10 MG/ML Oral Concentrate", 7),
             ("65757-0300-01", "Naltrexone 50 MG Oral Tablet", 30)]
DRUGS_PA = [("00074-0554-02", "Adalimumab 40 MG/0.4ML Prefilled Pen"),
            ("00169-4132-12", "Semaglutide 1 MG/DOSE Pen Injector"),
            ("00002-1433-80", "Dulaglutide 1.5 MG/0.5ML Pen Injector"),
            ("00310-6205-30", "Dapagliflozin 10 MG Oral Tablet")]
LABS = [("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.8, 9.5, 1),
        ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 180, 0),
        ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 140, 260, 0),
        ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 30, 80, 0),
        ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 10.5, 17.0, 1),
        ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 2.1, 2),
        ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.5, 12.0, 1),
        ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.3, 6.0, 2)]
LAB_SUD = [("19295-5", "Opiates [Presence] in Urine by Screen method"),
           ("3397-7", "Cocaine [Presence] in Urine by Screen method"),
           ("5643-2", "Ethanol [Mass/volume] in Serum or Plasma")]
PA_SERVICES = [("73721", "MRI any joint of lower extremity without contrast", "professional"),
               ("27447", "Arthroplasty, knee, condyle and plateau", "institutional"),
               ("95810", "Polysomnography, age 6 years or older, 4 or more parameters", "professional"),
               ("93306", "Echocardiography, transthoracic, complete", "professional"),
               ("97110", "Therapeutic exercises", "professional"),
               ("E0601", "Continuous positive airway pressure (CPAP) device", "professional")]
DENIAL_REASONS = [("50", "These are non-covered services because this is not deemed a medical necessity by the payer."),
                  ("197", "Precertification/authorization/notification/pre-treatment absent."),
                  ("96", "Non-covered charge(s)."),
                  ("16", "Claim/service lacks information or has submission/billing error(s).")]
DENIAL_HCR = {"50": "AA", "197": "T4", "96": "AF", "16": "AG"}

# ---------------------------------------------------------------- organizations, people


def org_resource(oid, name, kind, npi_value, lu):
    res = {"resourceType": "Organization", "id": oid,
           "meta": meta(lu, "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Organization")}
    ids = []
    if npi_value:
        ids.append({"type": cc("http://terminology.hl7.org/CodeSystem/v2-0203", "NPI"),
                    "system": NPI, "value": npi_value})
    ids.append({"system": "http://example.org/fhirwall/organization-id", "value": oid})
    res["identifier"] = ids
    res["active"] = True
    res["type"] = [cc("http://terminology.hl7.org/CodeSystem/organization-type", kind,
                      "Payer" if kind == "pay" else "Healthcare Provider")]
    res["name"] = name
    city = ORG_CITY.get(oid, "Riverton")
    zipc = dict(CITIES)[city]
    res["telecom"] = [{"system": "phone", "value": "401-555-01%02d" % (len(RESOURCES) % 100)}]
    res["address"] = [{"line": ["%d %s %s" % (100 + 7 * len(RESOURCES), pick(STREETS), pick(STREET_KIND))],
                       "city": city, "state": STATE, "postalCode": zipc, "country": "US"}]
    return res


def build_organizations():
    emit({"resourceType": "Organization", "id": PAYER,
          "meta": meta("2024-01-02T09:00:00Z",
                       "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Organization"),
          "identifier": [{"system": "http://example.org/fhirwall/payer-id", "value": "FWHP"},
                         {"system": "urn:oid:2.16.840.1.113883.4.4", "value": "99-0000001"}],
          "active": True,
          "type": [cc("http://terminology.hl7.org/CodeSystem/organization-type", "pay", "Payer")],
          "name": ORG_NAME[PAYER],
          "telecom": [{"system": "phone", "value": "401-555-0100"}],
          "address": [{"line": ["1 Plan Plaza"], "city": "Riverton", "state": STATE,
                       "postalCode": "02901", "country": "US"}]})
    for oid, name, kind, npi_value in ORGS:
        emit(org_resource(oid, name, kind, npi_value, "2024-01-02T09:%02d:00Z" % rint(1, 59)))


def build_practitioners():
    specialties = {
        "org-grace": ("207Q00000X", "Family Medicine"),
        "org-hopkins": ("207RC0000X", "Cardiovascular Disease"),
        "org-valley": ("207P00000X", "Emergency Medicine"),
        "org-lakeside": ("208000000X", "Pediatrics"),
        "org-recovery": ("2084A0401X", "Addiction Medicine"),
        "org-pharmacy": ("183500000X", "Pharmacist"),
        "org-lab": ("246Q00000X", "Pathology Specialist/Technologist"),
    }
    counts = {"org-grace": 5, "org-hopkins": 4, "org-valley": 5, "org-lakeside": 3,
              "org-recovery": 2, "org-pharmacy": 2, "org-lab": 1}
    n = 0
    for oid, _name, _kind, _npi in ORGS:
        PRACTITIONERS[oid] = []
        for _ in range(counts[oid]):
            n += 1
            pid = "prac-%02d" % n
            female = chance(0.5)
            given = pick(FIRST_F if female else FIRST_M)
            family = pick(LAST)
            pnpi = npi("1%08d" % (31415926 + n * 7919))
            PRAC_NPI[pid] = pnpi
            PRAC_NAME[pid] = "%s %s" % (given, family)
            PRACTITIONERS[oid].append(pid)
            lu = "2024-01-03T10:%02d:00Z" % n
            name = {"use": "official", "family": family, "given": [given]}
            if oid not in ("org-pharmacy", "org-lab"):
                name["prefix"] = ["Dr."]
            emit({"resourceType": "Practitioner", "id": pid,
                  "meta": meta(lu, "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Practitioner"),
                  "identifier": [{"type": cc("http://terminology.hl7.org/CodeSystem/v2-0203", "NPI"),
                                  "system": NPI, "value": pnpi}],
                  "active": True,
                  "name": [name],
                  "gender": "female" if female else "male"})
            code, disp = specialties[oid]
            emit({"resourceType": "PractitionerRole", "id": "role-%02d" % n,
                  "meta": meta(lu),
                  "active": True,
                  "practitioner": ref("Practitioner/" + pid),
                  "organization": ref("Organization/" + oid),
                  "code": [cc("http://nucc.org/provider-taxonomy", code, disp)],
                  "location": [ref("Location/loc-" + oid[4:])]})


def build_locations():
    for oid, name, _kind, _npi in ORGS:
        city = ORG_CITY[oid]
        emit({"resourceType": "Location", "id": "loc-" + oid[4:],
              "meta": meta("2024-01-02T11:%02d:00Z" % rint(0, 59)),
              "status": "active",
              "name": name + " - Main Campus",
              "address": {"line": ["%d %s %s" % (rint(10, 999), pick(STREETS), pick(STREET_KIND))],
                          "city": city, "state": STATE, "postalCode": dict(CITIES)[city],
                          "country": "US"},
              "managingOrganization": ref("Organization/" + oid)})


# ---------------------------------------------------------------- members

N_MEMBERS = 300
PATIENTS = {}  # id -> dict(info)
ORDER = []  # patient ids in order


def make_patient(pid, member_id, gender, given, family, birth, address, lu):
    return {"resourceType": "Patient", "id": pid,
            "meta": meta(lu, "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Patient"),
            "identifier": [{"type": cc("http://terminology.hl7.org/CodeSystem/v2-0203", "MB",
                                       "Member Number"),
                            "system": MEMBER_ID_SYSTEM, "value": member_id,
                            "assigner": ref("Organization/" + PAYER)}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": given}],
            "telecom": [{"system": "phone", "value": "401-555-01%02d" % rint(0, 99), "use": "home"}],
            "gender": gender,
            "birthDate": birth,
            "address": [address]}


def build_members():
    """Households: a subscriber plus optional spouse and children (dependents)."""
    n = 0
    sub_no = 1000100
    while n < N_MEMBERS:
        sub_no += rint(1, 9)
        size_roll = rand()
        family = pick(LAST)
        city, zipc = pick(CITIES)
        address = {"use": "home",
                   "line": ["%d %s %s" % (rint(10, 9999), pick(STREETS), pick(STREET_KIND))],
                   "city": city, "state": STATE, "postalCode": zipc, "country": "US"}
        sub_gender = "female" if chance(0.52) else "male"
        sub_birth = rand_date("1941-01-01", "1998-12-31")
        members = [("self", sub_gender, sub_birth)]
        if size_roll > 0.62:
            sp_gender = "male" if sub_gender == "female" else "female"
            members.append(("spouse", sp_gender, rand_date(add_days(sub_birth, -2500), add_days(sub_birth, 2500))))
        if size_roll > 0.80:
            for _ in range(rint(1, 3)):
                cb = rand_date(max(add_days(sub_birth, 7300), "2004-01-01"), "2023-06-30")
                members.append(("child", "female" if chance(0.5) else "male", cb))
        sub_pid = None
        for dep_no, (rel, gender, birth) in enumerate(members, start=1):
            if n >= N_MEMBERS:
                break
            n += 1
            pid = "pat-%04d" % n
            given = [pick(FIRST_F if gender == "female" else FIRST_M)]
            if chance(0.35):
                given.append(pick(FIRST_F if gender == "female" else FIRST_M)[0] + ".")
            member_id = "FW%07d-%02d" % (sub_no, dep_no)
            if sub_pid is None:
                sub_pid = pid
            PATIENTS[pid] = {"id": pid, "member_id": member_id, "subscriber_id": "FW%07d" % sub_no,
                             "dependent": "%02d" % dep_no, "relationship": rel,
                             "subscriber": sub_pid, "gender": gender, "birthDate": birth,
                             "given": given, "family": family, "address": address}
            ORDER.append(pid)


def add_special_members():
    """Members whose ids extend another member's id (prefix traps) and an
    ambiguous demographic twin for $member-match tests."""
    specials = [("pat-00011", "pat-0001"), ("pat-00012", "pat-0001"), ("pat-01234", "pat-0123")]
    sub_no = 1009500
    for pid, _base in specials:
        sub_no += 11
        city, zipc = pick(CITIES)
        gender = "female" if chance(0.5) else "male"
        PATIENTS[pid] = {"id": pid, "member_id": "FW%07d-01" % sub_no, "subscriber_id": "FW%07d" % sub_no,
                         "dependent": "01", "relationship": "self", "subscriber": pid,
                         "gender": gender, "birthDate": rand_date("1950-01-01", "1995-12-31"),
                         "given": [pick(FIRST_F if gender == "female" else FIRST_M)],
                         "family": pick(LAST),
                         "address": {"use": "home", "line": ["%d %s %s" % (rint(10, 9999), pick(STREETS), pick(STREET_KIND))],
                                     "city": city, "state": STATE, "postalCode": zipc, "country": "US"}}
        ORDER.append(pid)
    # Demographic twin: same name and birth date as pat-0150, different member.
    twin = "pat-0301"
    base = PATIENTS["pat-0150"]
    sub_no += 11
    PATIENTS[twin] = dict(base)
    PATIENTS[twin].update({"id": twin, "member_id": "FW%07d-01" % sub_no, "subscriber_id": "FW%07d" % sub_no,
                           "dependent": "01", "relationship": "self", "subscriber": twin,
                           "address": {"use": "home", "line": ["77 Quarry Rd"], "city": "Millbrook",
                                       "state": STATE, "postalCode": "02911", "country": "US"}})
    ORDER.append(twin)


def emit_members():
    for pid in ORDER:
        p = PATIENTS[pid]
        lu = "%sT08:%02d:%02dZ" % (rand_date("2024-01-05", "2025-05-30"), rint(0, 59), rint(0, 59))
        emit(make_patient(pid, p["member_id"], p["gender"], p["given"], p["family"], p["birthDate"],
                          p["address"], lu), patient=pid)
        # Coverage
        sub = PATIENTS[p["subscriber"]]
        cov_id = "cov-" + pid[4:]
        p["coverage"] = cov_id
        start = pick(["2019-01-01", "2020-01-01", "2021-01-01", "2022-01-01", "2023-01-01"])
        period = {"start": start}
        terminated = pid in TERMINATED
        if terminated:
            period["end"] = "2024-12-31"
        rel = p["relationship"]
        cov = {"resourceType": "Coverage", "id": cov_id,
               "meta": meta(lu, "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Coverage"),
               "identifier": [{"type": cc("http://terminology.hl7.org/CodeSystem/v2-0203", "MB", "Member Number"),
                               "system": MEMBER_ID_SYSTEM, "value": p["member_id"],
                               "assigner": ref("Organization/" + PAYER)}],
               "status": "active",
               "type": cc("http://terminology.hl7.org/CodeSystem/v3-ActCode", "HIP", "health insurance plan policy"),
               "policyHolder": ref("Patient/" + sub["id"]),
               "subscriber": ref("Patient/" + sub["id"]),
               "subscriberId": p["subscriber_id"],
               "beneficiary": ref("Patient/" + pid),
               "dependent": p["dependent"],
               "relationship": cc("http://terminology.hl7.org/CodeSystem/subscriber-relationship", rel, rel.capitalize()),
               "period": period,
               "payor": [ref("Organization/" + PAYER, ORG_NAME[PAYER])],
               "class": [{"type": cc("http://terminology.hl7.org/CodeSystem/coverage-class", "group", "Group"),
                          "value": "GRP-%03d" % (int(p["subscriber_id"][2:]) % 7 + 100),
                          "name": "Example Employer Group"},
                         {"type": cc("http://terminology.hl7.org/CodeSystem/coverage-class", "plan", "Plan"),
                          "value": pick(["PPO-GOLD", "HMO-SILVER", "HMO-BRONZE"]),
                          "name": "Fhirwall Health Plan"}],
               "network": "Fhirwall Provider Network"}
        # Coverage is in the Patient compartment of both the beneficiary and the
        # subscriber/policy holder; the beneficiary owns it for our facts.
        emit(cov, patient=pid, service_date=None)


TERMINATED = set()

# ---------------------------------------------------------------- attribution

ATTR = {o: {} for o in ATTRIBUTING}  # org -> {pid: status}


def build_attribution():
    """Assign members to attribution Groups.

    status per membership: active | expired | future | inactive
    Lakeside (pediatrics) takes children; the others take adults, with overlaps.
    """
    all_pids = [p for p in ORDER if p not in ("pat-00011", "pat-00012", "pat-01234", "pat-0301")]
    order = shuffled(all_pids)
    # 36 members are in no Group at all
    none = set(order[:36])
    rest = order[36:]

    def status():
        r = rand()
        if r < 0.84:
            return "active"
        if r < 0.90:
            return "inactive"
        if r < 0.95:
            return "expired"
        return "future"

    for pid in rest:
        p = PATIENTS[pid]
        child = p["relationship"] == "child"
        if child:
            ATTR["org-lakeside"][pid] = status()
            if chance(0.25):
                ATTR["org-grace"][pid] = status()
            continue
        r = rand()
        if r < 0.40:
            orgs = ["org-grace"]
        elif r < 0.62:
            orgs = ["org-hopkins"]
        elif r < 0.80:
            orgs = ["org-valley"]
        elif r < 0.88:
            orgs = ["org-grace", "org-hopkins"]
        elif r < 0.93:
            orgs = ["org-grace", "org-valley"]
        elif r < 0.97:
            orgs = ["org-hopkins", "org-valley"]
        else:
            orgs = ["org-grace", "org-hopkins", "org-valley"]
        for o in orgs:
            ATTR[o][pid] = status()
    # Deterministic fixtures the tests can rely on without reading facts.json:
    ATTR["org-grace"]["pat-0001"] = "active"
    for o in ("org-hopkins", "org-valley", "org-lakeside"):
        ATTR[o].pop("pat-0001", None)
    # prefix traps: pat-00011/pat-00012 are Hopkins-only, pat-0001 is Grace-only;
    # pat-01234 is Valley-only, pat-0123 is not Valley's.
    ATTR["org-hopkins"]["pat-00011"] = "active"
    ATTR["org-hopkins"]["pat-00012"] = "active"
    ATTR["org-valley"]["pat-01234"] = "active"
    ATTR["org-valley"].pop("pat-0123", None)
    if not any("pat-0123" in ATTR[o] for o in ATTRIBUTING):
        ATTR["org-grace"]["pat-0123"] = "active"
    # the demographic twin is attributed to Grace
    ATTR["org-grace"]["pat-0301"] = "active"
    none.discard("pat-0001")
    return none


def emit_groups():
    names = {"org-grace": "Grace Family Medicine", "org-hopkins": "Hopkins Street Cardiology Associates",
             "org-valley": "Valley Regional Hospital", "org-lakeside": "Lakeside Pediatrics"}
    for o in ATTRIBUTING:
        gid = "grp-" + o[4:]
        members = []
        for pid in ORDER:
            st = ATTR[o].get(pid)
            if st is None:
                continue
            m = {"entity": ref("Patient/" + pid)}
            if st == "active":
                m["period"] = {"start": pick(["2024-01-01", "2024-07-01", "2025-01-01"])}
                if chance(0.3):
                    m["period"]["end"] = "2099-12-31"
                m["inactive"] = False
            elif st == "inactive":
                m["period"] = {"start": "2024-01-01"}
                m["inactive"] = True
            elif st == "expired":
                m["period"] = {"start": "2021-01-01", "end": pick(["2022-12-31", "2023-12-31", "2024-06-30"])}
                m["inactive"] = False
            else:  # future
                m["period"] = {"start": "2099-01-01"}
                m["inactive"] = False
            members.append(m)
        emit({"resourceType": "Group", "id": gid,
              "meta": meta("2025-06-01T04:00:00Z", PDEX + "StructureDefinition/pdex-provider-group"),
              "extension": [{"url": "http://hl7.org/fhir/us/davinci-atr/StructureDefinition/ext-attributionListStatus",
                             "valueCode": "final"}],
              "identifier": [{"system": NPI, "value": ORG_NPI[o]},
                             {"system": "http://example.org/fhirwall/attribution-list", "value": gid}],
              "active": True,
              "type": "person",
              "actual": True,
              "code": cc(PDEX + "CodeSystem/PdexMemberAttributionCS", "pdexprovidergroup", "PDex Provider Group"),
              "name": "Members attributed to %s" % names[o],
              "managingEntity": ref("Organization/" + o, names[o]),
              "characteristic": [{"code": cc(PDEX + "CodeSystem/PdexMemberAttributionCS", "pdexprovidergroup",
                                             "PDex Provider Group"),
                                  "valueReference": {"identifier": {"system": NPI, "value": ORG_NPI[o]}},
                                  "exclude": False,
                                  "period": {"start": "2024-01-01"}}],
              "quantity": len(members),
              "member": members})


# ---------------------------------------------------------------- clinical + claims

COUNTERS = {}


def next_id(prefix, pid):
    k = (prefix, pid)
    COUNTERS[k] = COUNTERS.get(k, 0) + 1
    return "%s-%s-%d" % (prefix, pid[4:], COUNTERS[k])


PART2 = {"labelled": [], "program": [], "program_npi_only": [], "sud_code_unlabelled": [], "tobacco": []}
PRIOR_AUTHS = []
PAYEE_SUBSCRIBER = []
CLAIM_PAIRS = []


def careteam(prac, role, seq=1):
    return {"sequence": seq, "provider": ref("Practitioner/" + prac),
            "responsible": True,
            "role": cc(C4BB + "C4BBClaimCareTeamRole", role)}


def dx_entries(codes, institutional=False):
    out = []
    for i, (code, disp) in enumerate(codes, start=1):
        if institutional:
            t = cc(C4BB + "C4BBClaimDiagnosisType", "principal" if i == 1 else "other")
        else:
            t = cc("http://terminology.hl7.org/CodeSystem/ex-diagnosistype", "principal" if i == 1 else "secondary")
        out.append({"sequence": i, "diagnosisCodeableConcept": cc(ICD10CM, code, disp), "type": [t]})
    return out


def adjudications(submitted, copay_flat=None):
    """CARIN BB line adjudication: amounts the payer allowed and paid, and the
    member's cost sharing (zero amounts are left out to keep the file small)."""
    eligible = round(submitted * (0.55 + 0.35 * rand()), 2)
    deductible = round(min(eligible * 0.2, 250) if chance(0.3) else 0.0, 2)
    copay = float(copay_flat if copay_flat is not None else pick([0, 10, 20, 25, 40]))
    coins = round((eligible - deductible - copay) * 0.1 if chance(0.4) else 0.0, 2)
    paid = round(max(eligible - deductible - copay - coins, 0.0), 2)
    member = round(deductible + copay + coins, 2)
    adj = [
        {"category": cc(ADJ, "submitted"), "amount": money(submitted)},
        {"category": cc(ADJ, "eligible"), "amount": money(eligible)},
    ]
    if deductible:
        adj.append({"category": cc(ADJ, "deductible"), "amount": money(deductible)})
    if copay:
        adj.append({"category": cc(ADJ, "copay"), "amount": money(copay)})
    if coins:
        adj.append({"category": cc(C4BB + "C4BBAdjudication", "coinsurance"), "amount": money(coins)})
    adj.append({"category": cc(C4BB + "C4BBAdjudication", "paidtoprovider"), "amount": money(paid)})
    return adj, {"submitted": submitted, "eligible": eligible, "paid": paid, "member": member}


def totals(sums):
    return [
        {"category": cc(ADJ, "submitted"), "amount": money(sums["submitted"])},
        {"category": cc(ADJ, "eligible"), "amount": money(sums["eligible"])},
        {"category": cc(C4BB + "C4BBAdjudication", "paidtoprovider"), "amount": money(sums["paid"])},
        {"category": cc(C4BB + "C4BBAdjudication", "paidbypatient"), "amount": money(sums["member"])},
    ]


def add_sums(a, b):
    for k in ("submitted", "eligible", "paid", "member"):
        a[k] = round(a.get(k, 0.0) + b[k], 2)
    return a


def eob(pid, kind, start, provider_org, dx, items_spec, *, prac=None, end=None, security=None,
        provider_ref=None, omit_billable=False, payee_subscriber=False, procedures=None):
    """An adjudicated claim (use=claim) in CARIN BB shape.

    kind: inpatient | outpatient | professional | pharmacy
    items_spec: list of (system, code, display, date, charge[, revenue|(ndc qty, days)])
    """
    p = PATIENTS[pid]
    eid = next_id("eob", pid)
    end = end or start
    profile = {"inpatient": "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
               "outpatient": "C4BB-ExplanationOfBenefit-Outpatient-Institutional",
               "professional": "C4BB-ExplanationOfBenefit-Professional-NonClinician",
               "pharmacy": "C4BB-ExplanationOfBenefit-Pharmacy"}[kind]
    claim_type = {"inpatient": "institutional", "outpatient": "institutional",
                  "professional": "professional", "pharmacy": "pharmacy"}[kind]
    created = add_days(end, rint(3, 20))
    lu = last_updated(created)
    res = {"resourceType": "ExplanationOfBenefit", "id": eid,
           "meta": meta(lu, C4BB_SD + profile, security, version="2" if chance(0.08) else "1"),
           "identifier": [{"type": cc(C4BB + "C4BBIdentifierType", "uc"),
                           "system": CLAIM_ID_SYSTEM, "value": "CLM-" + eid[4:]}],
           "status": "active",
           "type": cc(CLAIM_TYPE, claim_type)}
    if kind in ("inpatient", "outpatient"):
        res["subType"] = cc(C4BB + "C4BBInstitutionalClaimSubType", kind)
    res["use"] = "claim"
    res["patient"] = ref("Patient/" + pid)
    if not omit_billable:
        res["billablePeriod"] = {"start": start, "end": end}
    res["created"] = created + "T00:00:00Z"
    res["insurer"] = ref("Organization/" + PAYER)
    res["provider"] = provider_ref or ref("Organization/" + provider_org)
    if payee_subscriber and p["subscriber"] != pid:
        res["payee"] = {"type": cc("http://terminology.hl7.org/CodeSystem/payeetype", "subscriber"),
                        "party": ref("Patient/" + p["subscriber"])}
        PAYEE_SUBSCRIBER.append({"eob": "ExplanationOfBenefit/" + eid, "patient": pid, "payee": p["subscriber"]})
    else:
        res["payee"] = {"type": cc("http://terminology.hl7.org/CodeSystem/payeetype", "provider"),
                        "party": res["provider"]}
    res["outcome"] = "complete"
    if prac:
        role = {"inpatient": "attending", "outpatient": "attending", "professional": "rendering",
                "pharmacy": "prescribing"}[kind]
        res["careTeam"] = [careteam(prac, role)]
    si = [{"sequence": 1, "category": cc(C4BB + "C4BBSupportingInfoType", "clmrecvddate"),
           "timingDate": add_days(end, rint(1, 3))}]
    if kind == "inpatient":
        si.append({"sequence": 2, "category": cc(C4BB + "C4BBSupportingInfoType", "admissionperiod", "Admission Period"),
                   "timingPeriod": {"start": start, "end": end}})
        si.append({"sequence": 3, "category": cc(C4BB + "C4BBSupportingInfoType", "typeofbill", "Type of Bill"),
                   "code": cc("https://www.nubc.org/CodeSystem/TypeOfBill", "0111")})
    if kind == "pharmacy":
        si.append({"sequence": 2, "category": cc(C4BB + "C4BBSupportingInfoType", "dayssupply", "Days Supply"),
                   "valueQuantity": {"value": items_spec[0][5][1]}})
        si.append({"sequence": 3, "category": cc(C4BB + "C4BBSupportingInfoType", "refillnum", "Refill Number"),
                   "valueQuantity": {"value": rint(0, 5)}})
    res["supportingInfo"] = si
    if dx:
        res["diagnosis"] = dx_entries(dx, institutional=kind in ("inpatient", "outpatient"))
    if procedures:
        res["procedure"] = [{"sequence": i, "type": [cc(C4BB + "C4BBClaimProcedureType", "principal" if i == 1 else "other")],
                             "date": d, "procedureCodeableConcept": cc(ICD10PCS, c, disp)}
                            for i, (c, disp, d) in enumerate(procedures, start=1)]
    res["insurance"] = [{"focal": True, "coverage": ref("Coverage/" + p["coverage"])}]
    items = []
    sums = {}
    for i, spec in enumerate(items_spec, start=1):
        system, code, disp, sdate, charge = spec[:5]
        item = {"sequence": i}
        if dx and kind != "pharmacy":
            item["diagnosisSequence"] = [1]
        if kind in ("inpatient", "outpatient") and len(spec) > 5:
            item["revenue"] = cc("https://www.nubc.org/CodeSystem/RevenueCodes", spec[5][0], spec[5][1])
        item["productOrService"] = cc(system, code, disp)
        if sdate:
            item["servicedDate"] = sdate
        if kind == "professional":
            item["locationCodeableConcept"] = cc(
                "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set",
                "11" if provider_org != "org-valley" else "23")
        if kind == "pharmacy":
            item["quantity"] = {"value": spec[5][0]}
        adj, s = adjudications(charge, 0 if kind == "inpatient" else None)
        item["adjudication"] = adj
        add_sums(sums, s)
        items.append(item)
    res["item"] = items
    res["adjudication"] = [{"category": cc(C4BB + "C4BBAdjudicationDiscriminator", "billingnetworkstatus"),
                            "reason": cc(C4BB + "C4BBPayerAdjudicationStatus", "innetwork")}]
    res["total"] = totals(sums)
    res["payment"] = {"type": cc(C4BB + "C4BBPayerAdjudicationStatus", "paid"),
                      "date": created, "amount": money(sums["paid"])}
    sdates = [s[3] for s in items_spec if s[3]]
    service_date = start if not omit_billable else (min(sdates) if sdates else None)
    return emit(res, patient=pid, service_date=service_date)


def prior_auth(pid, start, status, drug=False, with_claim_pair=False, provider_org=None, prac=None):
    """A prior authorization as EOB use=preauthorization (PDex), optionally with
    the Claim/ClaimResponse pair it was decided from."""
    p = PATIENTS[pid]
    eid = next_id("pa", pid)
    provider_org = provider_org or ("org-pharmacy" if drug else pick(["org-grace", "org-hopkins", "org-valley"]))
    prac = prac or pick(PRACTITIONERS[provider_org if not drug else "org-grace"])
    created = min(add_days(start, -rint(5, 30)), AS_OF)
    lu = last_updated(created)
    if drug:
        ndc, disp = pick(DRUGS_PA)
        ptype = "pharmacy"
        product = cc(NDC, ndc, disp)
    else:
        code, disp, ptype = pick(PA_SERVICES)
        product = cc(HCPCS if code[0].isalpha() else CPT, code, disp)
    end = add_days(start, pick([30, 90, 180]))
    auth_no = "PA-" + eid[3:]
    review_code = {"approved": ("A1", "Certified in total"), "pending": ("A4", "Pended"),
                   "denied": ("A3", "Not Certified")}[status]
    review_ext = [{"url": "number", "valueString": auth_no},
                  {"url": PDEX + "StructureDefinition/extension-reviewActionCode",
                   "valueCodeableConcept": cc(X12_306, review_code[0], review_code[1])}]
    denial = None
    if status == "denied":
        denial = pick(DENIAL_REASONS)
        review_ext.append({"url": "reasonCode", "valueCodeableConcept": cc(X12_HCR, DENIAL_HCR[denial[0]])})
    submitted = round(150 + 4000 * rand(), 2)
    adj = [{"extension": [{"url": PDEX + "StructureDefinition/extension-reviewAction", "extension": review_ext}],
            "category": cc(ADJ, "submitted", "Submitted Amount"), "amount": money(submitted)}]
    if status == "approved":
        adj.append({"category": cc(ADJ, "eligible", "Eligible Amount"), "amount": money(round(submitted * 0.8, 2))})
    if denial:
        adj.append({"category": cc(C4BB + "C4BBAdjudicationDiscriminator", "denialreason", "Denial Reason"),
                    "reason": cc(X12_CARC, denial[0], denial[1])})
    outcome = {"approved": "complete", "pending": "queued", "denied": "complete"}[status]
    disposition = {"approved": "Authorized", "pending": "Pended for clinical review",
                   "denied": "Denied: " + (denial[1] if denial else "")}[status]
    res = {"resourceType": "ExplanationOfBenefit", "id": eid,
           "meta": meta(lu, PDEX + "StructureDefinition/pdex-priorauthorization"),
           "extension": [{"url": PDEX + "StructureDefinition/extension-levelOfServiceCode",
                          "valueCodeableConcept": cc("https://codesystem.x12.org/005010/1338", "E", "Elective")}],
           "identifier": [{"system": "http://example.org/fhirwall/prior-auth-id", "value": auth_no}],
           "status": "active",
           "type": cc(CLAIM_TYPE, ptype, ptype.capitalize()),
           "use": "preauthorization",
           "patient": ref("Patient/" + pid),
           "billablePeriod": {"start": start, "end": end},
           "created": created + "T00:00:00Z",
           "insurer": ref("Organization/" + PAYER, ORG_NAME[PAYER]),
           "provider": ref("Organization/" + provider_org)}
    claim_key = resp_key = None
    if with_claim_pair:
        cid = "claim-" + eid
        rid = "claimresp-" + eid
        claim_key, resp_key = "Claim/" + cid, "ClaimResponse/" + rid
        res["claim"] = ref(claim_key)
        res["claimResponse"] = ref(resp_key)
    res["outcome"] = outcome
    res["disposition"] = disposition
    if status != "pending":
        res["preAuthRef"] = [auth_no]
        res["preAuthRefPeriod"] = [{"start": start, "end": end}]
    res["careTeam"] = [careteam(prac, "prescribing" if drug else "rendering")]
    res["insurance"] = [{"focal": True, "coverage": ref("Coverage/" + p["coverage"])}]
    item = {"sequence": 1, "productOrService": product, "servicedPeriod": {"start": start, "end": end},
            "adjudication": adj}
    if not drug:
        res["diagnosis"] = dx_entries([pick(DX_COMMON)])
        item["diagnosisSequence"] = [1]
    res["item"] = [item]
    res["total"] = [{"category": cc(ADJ, "submitted", "Submitted Amount"), "amount": money(submitted)}]
    if denial:
        res["processNote"] = [{"number": 1, "type": "display", "text": "Denied: %s (CARC %s)" % (denial[1], denial[0])}]
    key = emit(res, patient=pid, service_date=start)
    if with_claim_pair:
        claim = {"resourceType": "Claim", "id": cid,
                 "meta": meta(lu, "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/profile-claim"),
                 "identifier": [{"system": "http://example.org/fhirwall/pa-request-id", "value": "REQ-" + eid[3:]}],
                 "status": "active",
                 "type": cc(CLAIM_TYPE, ptype, ptype.capitalize()),
                 "use": "preauthorization",
                 "patient": ref("Patient/" + pid),
                 "billablePeriod": {"start": start, "end": end},
                 "created": created + "T00:00:00Z",
                 "insurer": ref("Organization/" + PAYER),
                 "provider": ref("Organization/" + provider_org),
                 "priority": cc("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
                 "careTeam": [{"sequence": 1, "provider": ref("Practitioner/" + prac)}],
                 "insurance": [{"sequence": 1, "focal": True, "coverage": ref("Coverage/" + p["coverage"])}],
                 "item": [{"sequence": 1, "productOrService": product, "servicedPeriod": {"start": start, "end": end},
                           "net": money(submitted)}]}
        if not drug:
            claim["diagnosis"] = [{"sequence": 1, "diagnosisCodeableConcept": res["diagnosis"][0]["diagnosisCodeableConcept"]}]
        emit(claim, patient=pid, service_date=start)
        cr = {"resourceType": "ClaimResponse", "id": rid,
              "meta": meta(lu, "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/profile-claimresponse"),
              "identifier": [{"system": "http://example.org/fhirwall/prior-auth-id", "value": auth_no}],
              "status": "active",
              "type": cc(CLAIM_TYPE, ptype, ptype.capitalize()),
              "use": "preauthorization",
              "patient": ref("Patient/" + pid),
              "created": add_days(created, rint(0, 3)) + "T12:00:00Z",
              "insurer": ref("Organization/" + PAYER),
              "requestor": ref("Organization/" + provider_org),
              "request": ref(claim_key),
              "outcome": outcome,
              "disposition": disposition}
        if status != "pending":
            cr["preAuthRef"] = auth_no
            cr["preAuthPeriod"] = {"start": start, "end": end}
        cr["item"] = [{"itemSequence": 1, "adjudication": adj}]
        if denial:
            cr["processNote"] = [{"number": 1, "type": "display", "text": "Denied: %s (CARC %s)" % (denial[1], denial[0])}]
        emit(cr, patient=pid, service_date=None)
        CLAIM_PAIRS.append({"claim": claim_key, "claim_response": resp_key, "eob": key})
    PRIOR_AUTHS.append({"eob": key, "patient": pid, "status": status, "drug": drug,
                        "claim": claim_key, "claim_response": resp_key,
                        "denial_reason": denial[0] if denial else None})
    return key


def condition(pid, code, recorded, *, security=None, asserter=None, onset=None, no_dates=False):
    cid = next_id("cond", pid)
    c_code, c_disp = code
    res = {"resourceType": "Condition", "id": cid,
           "meta": meta(last_updated(recorded or "2020-01-01"),
                        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-problems-health-concerns",
                        security),
           "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
           "verificationStatus": cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
           "category": [cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item",
                           "Problem List Item")],
           "code": cc(ICD10CM, c_code, c_disp),
           "subject": ref("Patient/" + pid)}
    sd = None
    if not no_dates:
        onset = onset or add_days(recorded, -rint(0, 400))
        res["onsetDateTime"] = onset
        res["recordedDate"] = recorded
        sd = recorded
    if asserter:
        res["asserter"] = ref("Practitioner/" + asserter)
    return emit(res, patient=pid, service_date=sd)


def observation(pid, lab, date, *, performer_org="org-lab", security=None, encounter=None, sud=None):
    oid = next_id("obs", pid)
    res = {"resourceType": "Observation", "id": oid,
           "meta": meta(last_updated(date), "http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab",
                        security),
           "status": "final",
           "category": [cc("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")]}
    if sud:
        code, disp = sud
        res["code"] = cc(LOINC, code, disp, text=disp)
    else:
        code, disp, unit, lo, hi, digits = lab
        res["code"] = cc(LOINC, code, disp, text=disp)
    res["subject"] = ref("Patient/" + pid)
    if encounter:
        res["encounter"] = ref(encounter)
    res["effectiveDateTime"] = dt(date)
    res["issued"] = add_days(date, 1) + "T09:00:00Z"
    res["performer"] = [ref("Organization/" + performer_org)]
    if sud:
        pos = chance(0.4)
        res["valueCodeableConcept"] = cc("http://snomed.info/sct", "10828004" if pos else "260385009",
                                         "Positive" if pos else "Negative")
    else:
        v = round(lo + (hi - lo) * rand(), digits)
        if digits == 0:
            v = int(v)
        res["valueQuantity"] = {"value": v, "unit": unit, "system": UCUM, "code": unit}
    return emit(res, patient=pid, service_date=date)


def encounter(pid, date, org, prac, reason, *, cls="AMB", security=None, days=0, type_code=None):
    eid = next_id("enc", pid)
    end = add_days(date, days)
    tc = type_code or pick(CPT_OFFICE[:4])
    res = {"resourceType": "Encounter", "id": eid,
           "meta": meta(last_updated(end), "http://hl7.org/fhir/us/core/StructureDefinition/us-core-encounter", security),
           "status": "finished",
           "class": {"system": ACTCODE, "code": cls,
                     "display": {"AMB": "ambulatory", "IMP": "inpatient encounter", "EMER": "emergency"}[cls]},
           "type": [cc(CPT, tc[0], tc[1])],
           "subject": ref("Patient/" + pid),
           "participant": [{"individual": ref("Practitioner/" + prac)}],
           "period": {"start": date + "T09:00:00Z", "end": end + "T10:00:00Z"},
           "reasonCode": [cc(ICD10CM, reason[0], reason[1])],
           "location": [{"location": ref("Location/loc-" + org[4:])}],
           "serviceProvider": ref("Organization/" + org)}
    return emit(res, patient=pid, service_date=date)


def med_dispense(pid, drug, date, *, performer_org="org-pharmacy", security=None):
    mid = next_id("md", pid)
    ndc, disp, days = drug
    res = {"resourceType": "MedicationDispense", "id": mid,
           "meta": meta(last_updated(date), PDEX + "StructureDefinition/pdex-medicationdispense", security),
           "status": "completed",
           "medicationCodeableConcept": cc(NDC, ndc, disp, text=disp),
           "subject": ref("Patient/" + pid),
           "performer": [{"actor": ref("Organization/" + performer_org)}],
           "type": cc(ACTCODE, *pick([("FF", "First Fill"), ("RF", "Refill")])),
           "quantity": {"value": days if days > 7 else 70, "unit": "each" if days > 7 else "mL"},
           "daysSupply": {"value": days, "unit": "days", "system": UCUM, "code": "d"},
           "whenHandedOver": dt(date)}
    return emit(res, patient=pid, service_date=date)


def procedure(pid, code, date, org, prac, *, security=None, system=CPT):
    prid = next_id("proc", pid)
    res = {"resourceType": "Procedure", "id": prid,
           "meta": meta(last_updated(date), "http://hl7.org/fhir/us/core/StructureDefinition/us-core-procedure", security),
           "status": "completed",
           "code": cc(system, code[0], code[1], text=code[1]),
           "subject": ref("Patient/" + pid),
           "performedDateTime": dt(date),
           "performer": [{"actor": ref("Practitioner/" + prac), "onBehalfOf": ref("Organization/" + org)}],
           "location": ref("Location/loc-" + org[4:])}
    return emit(res, patient=pid, service_date=date)


def age_on(pid, date):
    b = PATIENTS[pid]["birthDate"]
    return int(date[:4]) - int(b[:4])


def service_window(pid):
    b = PATIENTS[pid]["birthDate"]
    lo = max("2012-01-01", add_days(b, 30))
    return lo, "2025-05-31"


def home_org(pid):
    for o in ("org-grace", "org-hopkins", "org-valley", "org-lakeside"):
        if ATTR[o].get(pid) == "active":
            return o
    return "org-lakeside" if PATIENTS[pid]["relationship"] == "child" else "org-grace"


def routine_care(pid, pre2016=False):
    child = PATIENTS[pid]["relationship"] == "child"
    org = home_org(pid)
    prac = pick(PRACTITIONERS[org])
    lo, hi = service_window(pid)
    if lo > "2018-01-01":
        lo = min(lo, "2024-01-01")
    dxs = DX_PEDIATRIC if child else DX_COMMON
    chronic = [pick(dxs) for _ in range(rint(1, 3))]
    # Conditions
    for code in chronic:
        condition(pid, code, rand_date(max(lo, "2016-02-01"), hi), asserter=prac)
    if chance(0.05):
        condition(pid, pick(dxs), None, no_dates=True)
    # Office visits: encounter + professional EOB + a procedure sometimes
    for _ in range(pick([1, 1, 2, 2, 3])):
        d = rand_date(max(lo, "2016-03-01"), hi)
        reason = pick(chronic)
        visit = pick(CPT_OFFICE[:4]) if org != "org-hopkins" else pick(CPT_CARDIO)
        enc = encounter(pid, d, org, prac, reason, type_code=visit)
        items = [(CPT, visit[0], visit[1], d, round(90 + 200 * rand(), 2))]
        if chance(0.25):
            extra = pick(CPT_OFFICE[4:])
            items.append((CPT, extra[0], extra[1], d, round(20 + 150 * rand(), 2)))
            if chance(0.5):
                procedure(pid, extra, d, org, prac)
        eob(pid, "professional", d, org, [reason] + ([pick(dxs)] if chance(0.3) else []), items, prac=prac,
            payee_subscriber=chance(0.35))
        if not child and chance(0.6):
            for lab in [pick(LABS) for _ in range(rint(1, 2))]:
                observation(pid, lab, d, encounter=enc)
    # Outpatient facility claim
    if chance(0.4):
        d = rand_date(max(lo, "2016-04-01"), hi)
        svc = [pick(CPT_OUTPT) for _ in range(rint(1, 2))]
        rev = pick(REVENUE[1:])
        vp = pick(PRACTITIONERS["org-valley"])
        encounter(pid, d, "org-valley", vp, pick(chronic), cls="EMER" if chance(0.3) else "AMB",
                  type_code=("99284", "Emergency department visit, moderate MDM"))
        eob(pid, "outpatient", d, "org-valley", [pick(chronic)],
            [(CPT, c, disp, d, round(120 + 900 * rand(), 2), rev) for c, disp in svc], prac=vp,
            payee_subscriber=chance(0.2))
    # Inpatient stay
    if not child and chance(0.12):
        d = rand_date(max(lo, "2016-05-01"), hi)
        los = rint(1, 6)
        principal = pick(DRG_DX)
        vp = pick(PRACTITIONERS["org-valley"])
        encounter(pid, d, "org-valley", vp, principal, cls="IMP", days=los,
                  type_code=("99223", "Initial hospital inpatient care, high MDM"))
        pcs = pick(PCS)
        ancillary = pick(CPT_OUTPT)
        eob(pid, "inpatient", d, "org-valley", [principal, pick(chronic)],
            [(CPT, "99223", "Initial hospital inpatient care, high MDM", None,
              round(800 * los + 2000 * rand(), 2), REVENUE[0]),
             (CPT, ancillary[0], ancillary[1], None, round(300 + 3000 * rand(), 2), pick(REVENUE[1:]))],
            prac=vp, end=add_days(d, los), procedures=[(pcs[0], pcs[1], d)])
        procedure(pid, pcs, d, "org-valley", vp, system=ICD10PCS)
    # Pharmacy
    if chance(0.55):
        drug = pick(DRUGS)
        pp = pick(PRACTITIONERS[org])
        for _ in range(rint(1, 2)):
            d = rand_date(max(lo, "2016-06-01"), hi)
            med_dispense(pid, drug, d)
            eob(pid, "pharmacy", d, "org-pharmacy", None,
                [(NDC, drug[0], drug[1], d, round(8 + 120 * rand(), 2), (drug[2], drug[2]))], prac=pp)
    # Old records (before the 2016 service-date floor)
    if pre2016:
        d = rand_date(max(lo, "2012-01-01"), "2015-11-30")
        if d < SERVICE_DATE_FLOOR:
            reason = pick(dxs)
            visit = pick(CPT_OFFICE[:3])
            encounter(pid, d, org, prac, reason, type_code=visit)
            eob(pid, "professional", d, org, [reason], [(CPT, visit[0], visit[1], d, round(80 + 100 * rand(), 2))],
                prac=prac)
            if not child:
                observation(pid, pick(LABS), add_days(d, 1))
            condition(pid, reason, d, asserter=prac)
            if chance(0.5):
                drug = pick(DRUGS)
                med_dispense(pid, drug, add_days(d, 2))
            # An EOB without billablePeriod whose earliest item is before the floor
            d2 = add_days(d, rint(5, 40))
            if chance(0.5) and d2 < SERVICE_DATE_FLOOR:
                eob(pid, "professional", d2, org, [reason],
                    [(CPT, visit[0], visit[1], d2, 95.0), (CPT, "36415", CPT_OFFICE[5][1], "2016-02-10", 15.0)],
                    prac=prac, omit_billable=True)


def part2_care(pid, mode):
    """Substance use disorder records in several flavours (see README)."""
    org = home_org(pid)
    prac = pick(PRACTITIONERS[org])
    rp = pick(PRACTITIONERS["org-recovery"])
    sud = pick(DX_SUD)
    d = rand_date("2019-01-01", "2025-04-30")
    keys = []
    if mode == "labelled":
        # Records a Part 2 program disclosed to the payer, carrying the label,
        # billed by a non-program provider (so only the label identifies them).
        keys.append(condition(pid, sud, d, security=PART2_LABELS, asserter=prac))
        keys.append(eob(pid, "professional", d, org, [sud, pick(DX_COMMON)],
                        [(CPT, "99214", CPT_OFFICE[1][1], d, 180.0)], prac=prac, security=PART2_LABELS))
        keys.append(encounter(pid, d, org, prac, sud, security=PART2_LABELS, type_code=CPT_OFFICE[1]))
        PART2["labelled"].extend(keys)
    elif mode == "program":
        # Services from the Part 2 program org-recovery; codes vary (some without any SUD code).
        enc = encounter(pid, d, "org-recovery", rp, sud, type_code=CPT_SUD[3])
        c = pick(CPT_SUD)
        keys.append(enc)
        keys.append(eob(pid, "professional", d, "org-recovery", [sud],
                        [(HCPCS if c[0][0] == "H" else CPT, c[0], c[1], d, 140.0)], prac=rp))
        keys.append(eob(pid, "professional", add_days(d, 14), "org-recovery", [pick(DX_COMMON)],
                        [(CPT, "90832", CPT_SUD[2][1], add_days(d, 14), 110.0)], prac=rp))
        keys.append(procedure(pid, c, d, "org-recovery", rp, system=HCPCS if c[0][0] == "H" else CPT))
        keys.append(observation(pid, None, d, performer_org="org-recovery", sud=pick(LAB_SUD), encounter=enc))
        keys.append(med_dispense(pid, pick(DRUGS_SUD), add_days(d, 1), performer_org="org-recovery"))
        PART2["program"].extend(keys)
        # The program identified only by its NPI (logical reference), no literal reference.
        k = eob(pid, "professional", add_days(d, 28), None, [sud],
                [(HCPCS, "H0004", CPT_SUD[0][1], add_days(d, 28), 95.0)], prac=rp,
                provider_ref={"identifier": {"system": NPI, "value": ORG_NPI["org-recovery"]},
                              "display": ORG_NAME["org-recovery"]})
        PART2["program_npi_only"].append(k)
    elif mode == "code":
        # SUD diagnosis from a general provider, no label: only the code set identifies it.
        keys.append(condition(pid, sud, d, asserter=prac))
        vp = pick(PRACTITIONERS["org-valley"])
        keys.append(eob(pid, "outpatient", d, "org-valley", [sud],
                        [(CPT, "99284", "Emergency department visit, moderate MDM", d, 650.0, REVENUE[4])],
                        prac=vp))
        PART2["sud_code_unlabelled"].extend(keys)
    elif mode == "tobacco":
        tob = pick(DX_TOBACCO)
        PART2["tobacco"].append(condition(pid, tob, d, asserter=prac))
        PART2["tobacco"].append(eob(pid, "professional", d, org, [tob],
                                    [(CPT, "99406", "Smoking and tobacco use cessation counseling visit", d, 45.0)],
                                    prac=prac))


def build_clinical():
    candidates = [p for p in ORDER]
    order = shuffled(candidates)
    # Part 2 flavours, spread over attributed and unattributed members
    modes = {}
    for pid in order[:12]:
        modes[pid] = ["labelled"]
    for pid in order[12:24]:
        modes[pid] = ["program"]
    for pid in order[24:36]:
        modes[pid] = ["code"]
    for pid in order[36:50]:
        modes[pid] = ["tobacco"]
    # some members have several flavours
    for pid in order[50:54]:
        modes[pid] = ["labelled", "program"]
    for pid in order[54:56]:
        modes[pid] = ["program", "tobacco"]
    # fixed ones the README names
    modes["pat-0001"] = ["tobacco"]
    modes["pat-0002"] = ["program"]
    modes["pat-0003"] = ["labelled", "code"]
    pre2016 = set(shuffled(candidates)[:50]) | {"pat-0001"}
    for pid in ORDER:
        # A few members have no claims or clinical data at all
        if pid not in pre2016 and pid not in modes and chance(0.03):
            continue
        routine_care(pid, pre2016=pid in pre2016)
        for m in modes.get(pid, []):
            part2_care(pid, m)
        # Prior authorizations
        if chance(0.3) or pid in ("pat-0001", "pat-0003"):
            for _ in range(rint(1, 2)):
                st = pick(["approved", "approved", "pending", "denied"])
                prior_auth(pid, rand_date("2023-06-01", "2025-07-31"), st, drug=chance(0.3),
                           with_claim_pair=chance(0.4))
    # Ensure each PA flavour exists with a Claim/ClaimResponse pair
    prior_auth("pat-0001", "2025-03-01", "approved", drug=False, with_claim_pair=True)
    prior_auth("pat-0001", "2025-04-01", "denied", drug=False, with_claim_pair=True)
    prior_auth("pat-0001", "2025-05-01", "pending", drug=False, with_claim_pair=False)
    prior_auth("pat-0001", "2025-05-15", "approved", drug=True, with_claim_pair=True)


def build_provenance():
    """PDex Provenance for a sample of EOBs (target = the EOB, transmitter = payer)."""
    eobs = [r for r in RESOURCES if r["resourceType"] == "ExplanationOfBenefit"]
    chosen = [eobs[i] for i in range(0, len(eobs), 23)]
    # make sure one targets a Part 2 labelled EOB
    labelled = [k for k in PART2["labelled"] if k.startswith("ExplanationOfBenefit/")]
    if labelled:
        lid = labelled[0].split("/", 1)[1]
        chosen.append(next(r for r in eobs if r["id"] == lid))
    out = []
    for n, e in enumerate(chosen, start=1):
        pvid = "prov-%04d" % n
        lu = e["meta"]["lastUpdated"]
        key = emit({"resourceType": "Provenance", "id": pvid,
                    "meta": meta(lu, PDEX + "StructureDefinition/pdex-provenance"),
                    "target": [ref("ExplanationOfBenefit/" + e["id"])],
                    "recorded": lu,
                    "agent": [{"type": cc("http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type",
                                          "transmitter", "Transmitter"),
                               "who": ref("Organization/" + PAYER),
                               "onBehalfOf": ref("Organization/" + PAYER)}],
                    "entity": [{"role": "source", "what": {"display": "Claims adjudication system"}}]},
                   patient=None)
        out.append({"provenance": key, "target": "ExplanationOfBenefit/" + e["id"],
                    "patient": e["patient"]["reference"][8:]})
    return out


# ---------------------------------------------------------------- facts


def visible_to(pid):
    return [o for o in ATTRIBUTING if ATTR[o].get(pid) == "active"]


def build_facts(never_grouped, provenance):
    counts = {}
    for r in RESOURCES:
        counts[r["resourceType"]] = counts.get(r["resourceType"], 0) + 1
    attribution = {}
    for o in ATTRIBUTING:
        by = {"active": [], "inactive": [], "expired": [], "future": []}
        for pid in ORDER:
            st = ATTR[o].get(pid)
            if st:
                by[st].append(pid)
        attribution[o] = {"group": "Group/grp-" + o[4:], "organization": "Organization/" + o,
                          "npi": ORG_NPI[o], "visible": by["active"], "inactive": by["inactive"],
                          "expired": by["expired"], "future": by["future"],
                          "visible_count": len(by["active"]), "member_count": sum(len(v) for v in by.values())}
    dependents = []
    for pid in ORDER:
        p = PATIENTS[pid]
        if p["subscriber"] != pid:
            dependents.append({"patient": pid, "subscriber": p["subscriber"], "relationship": p["relationship"],
                               "coverage": "Coverage/" + p["coverage"]})
    # subscriber visible to org, dependent not: the dependent's Coverage/EOBs name
    # the subscriber (subscriber/policyHolder/payee) but must stay invisible.
    leak = {}
    for o in ATTRIBUTING:
        rows = []
        for d in dependents:
            if ATTR[o].get(d["subscriber"]) == "active" and ATTR[o].get(d["patient"]) != "active":
                rows.append({"visible_subscriber": d["subscriber"], "invisible_dependent": d["patient"],
                             "coverage": d["coverage"],
                             "payee_eobs": [x["eob"] for x in PAYEE_SUBSCRIBER if x["patient"] == d["patient"]]})
        leak[o] = rows
    by_patient = {}
    for key, pid in PATIENT_OF.items():
        t = key.split("/", 1)[0]
        by_patient.setdefault(pid, {})
        by_patient[pid][t] = by_patient[pid].get(t, 0) + 1
    part2_patients = sorted({PATIENT_OF[k] for cat in ("labelled", "program", "program_npi_only",
                                                       "sud_code_unlabelled") for k in PART2[cat]})
    pre = sorted(k for k, d in SERVICE_DATES.items() if d and d < SERVICE_DATE_FLOOR)
    patients = {}
    for pid in ORDER:
        p = PATIENTS[pid]
        patients[pid] = {"member_id": p["member_id"], "subscriber_id": p["subscriber_id"],
                         "name": {"family": p["family"], "given": p["given"]}, "gender": p["gender"],
                         "birthDate": p["birthDate"], "relationship": p["relationship"],
                         "subscriber": p["subscriber"], "coverage": "Coverage/" + p["coverage"],
                         "coverage_terminated": pid in TERMINATED,
                         "visible_to": visible_to(pid),
                         "groups": {o: ATTR[o][pid] for o in ATTRIBUTING if pid in ATTR[o]},
                         "resources": by_patient.get(pid, {})}
    return {
        "_about": "Test facts for examples/dataset/payer.ndjson, written by generate.py. "
                  "Patient ids are bare ids (pat-NNNN); resource keys are Type/id. "
                  "Attribution status per member: active (visible), inactive (member.inactive=true), "
                  "expired (period.end in the past), future (period.start 2099-01-01).",
        "seed": SEED,
        "as_of": AS_OF,
        "service_date_floor": SERVICE_DATE_FLOOR,
        "member_id_system": MEMBER_ID_SYSTEM,
        "payer": "Organization/" + PAYER,
        "counts": dict(sorted(counts.items())),
        "total_resources": len(RESOURCES),
        "organizations": {o: {"name": ORG_NAME[o], "npi": ORG_NPI.get(o)} for o in [PAYER] + [x[0] for x in ORGS]},
        "part2_program": {"organization": "Organization/org-recovery", "npi": ORG_NPI["org-recovery"]},
        "attribution": attribution,
        "multi_attributed": [pid for pid in ORDER if len(visible_to(pid)) >= 2],
        "unattributed": [pid for pid in ORDER if not visible_to(pid)],
        "never_in_any_group": sorted(p for p in ORDER if not any(p in ATTR[o] for o in ATTRIBUTING)),
        "dependents": dependents,
        "subscriber_visible_dependent_not": leak,
        "payee_subscriber_eobs": PAYEE_SUBSCRIBER,
        "prefix_pairs": [["pat-0001", "pat-00011"], ["pat-0001", "pat-00012"], ["pat-0123", "pat-01234"]],
        "member_match_ambiguous": [["pat-0150", "pat-0301"]],
        "coverage_terminated": sorted(TERMINATED),
        "part2": {
            "label": {"system": ACTCODE, "code": "42CFRPart2"},
            "labelled": PART2["labelled"],
            "program": PART2["program"],
            "program_npi_only": PART2["program_npi_only"],
            "sud_code_unlabelled": PART2["sud_code_unlabelled"],
            "tobacco_not_part2": PART2["tobacco"],
            "patients": part2_patients,
        },
        "pre_2016": pre,
        "no_service_date_conditions": sorted(k for k, d in SERVICE_DATES.items()
                                             if k.startswith("Condition/") and d is None),
        "prior_auth": PRIOR_AUTHS,
        "claim_pairs": CLAIM_PAIRS,
        "provenance": provenance,
        "patients": patients,
    }


# ---------------------------------------------------------------- README


def short(ids, n=12):
    ids = list(ids)
    if not ids:
        return "-"
    text = ", ".join("`%s`" % i for i in ids[:n])
    if len(ids) > n:
        text += ", ... (%d in all)" % len(ids)
    return text


def readme(facts):
    f = facts
    lines = []
    w = lines.append
    w("# Synthetic payer dataset")
    w("")
    w("`payer.ndjson` is a fictional health plan's FHIR R4 data: %d resources, one compact JSON"
      % f["total_resources"])
    w("resource per line. It is what `fhirwall demo` and `fhirwall sandbox` serve (the sandbox")
    w("upstream embeds it) and what the tests run against. Every person, organization, NPI and")
    w("member id is made up. `facts.json` lists the test-relevant facts in machine-readable form;")
    w("tests should read it rather than hard-code ids.")
    w("")
    w("This file, `payer.ndjson` and `facts.json` are all written by `generate.py` (Python 3,")
    w("stdlib only, fixed seed %d: every run writes the same bytes). Do not edit them by hand:" % f["seed"])
    w("")
    w("```sh")
    w("python3 examples/dataset/generate.py          # regenerate")
    w("python3 examples/dataset/generate.py --check  # CI: fail if the committed files are stale")
    w("```")
    w("")
    w("The data is dated as of %s (no `meta.lastUpdated` is later). Attribution periods use" % f["as_of"])
    w("far-away dates (expired periods end by 2024-06-30, future ones start 2099-01-01), so the")
    w("facts below hold whenever the tests run.")
    w("")
    w("## Contents")
    w("")
    w("| Resource type | Count | Shape |")
    w("|---|---:|---|")
    shapes = {
        "Patient": "C4BB Patient: member id (`%s`, type v2-0203 `MB`), name, gender, birthDate, address" % MEMBER_ID_SYSTEM,
        "Coverage": "one per member; `subscriber`/`policyHolder` = the household subscriber, `beneficiary` = the member, payor `Organization/org-payer`",
        "ExplanationOfBenefit": "CARIN BB claims (`use=claim`: professional, institutional inpatient/outpatient, pharmacy; adjudication amounts, total, payment) and PDex prior authorizations (`use=preauthorization`)",
        "Claim": "prior-authorization requests (`use=preauthorization`) paired with a ClaimResponse",
        "ClaimResponse": "the payer's decision on each Claim (`request` = the Claim)",
        "Condition": "ICD-10-CM problem-list entries (`recordedDate`, `onsetDateTime`)",
        "Observation": "laboratory results (LOINC, `effectiveDateTime`)",
        "Encounter": "office, emergency and inpatient visits (`period`, `serviceProvider`)",
        "MedicationDispense": "NDC fills (`whenHandedOver`)",
        "Procedure": "CPT/HCPCS/ICD-10-PCS procedures (`performedDateTime`)",
        "Group": "PDex/ATR attribution lists, one per provider organization",
        "Organization": "the payer, provider organizations (NPI), the Part 2 program, a pharmacy and a lab",
        "Practitioner": "clinicians with NPIs",
        "PractitionerRole": "practitioner -> organization",
        "Location": "one per organization",
        "Provenance": "PDex Provenance for a sample of EOBs (`target` = the EOB, transmitter = payer)",
    }
    for t, n in sorted(f["counts"].items(), key=lambda kv: -kv[1]):
        w("| %s | %d | %s |" % (t, n, shapes.get(t, "")))
    w("")
    w("Ids are stable and readable: members `pat-0001`..`pat-0300` plus `pat-0301`, `pat-00011`,")
    w("`pat-00012`, `pat-01234` (see below); a member's resources are `cov-NNNN`, `eob-NNNN-k`,")
    w("`pa-NNNN-k` (prior authorizations), `claim-pa-NNNN-k`, `claimresp-pa-NNNN-k`, `cond-NNNN-k`,")
    w("`obs-NNNN-k`, `enc-NNNN-k`, `md-NNNN-k`, `proc-NNNN-k`. All references are relative")
    w("(`Patient/pat-0001`) and resolve inside the file, except EOBs from the Part 2 program that name")
    w("it only by NPI (a logical reference, see below).")
    w("")
    w("## Organizations")
    w("")
    w("| Organization | Name | NPI | Role |")
    w("|---|---|---|---|")
    roles = {"org-payer": "the payer (insurer, Coverage payor)",
             "org-grace": "provider, manages `Group/grp-grace`",
             "org-hopkins": "provider, manages `Group/grp-hopkins`",
             "org-valley": "hospital (inpatient/outpatient claims), manages `Group/grp-valley`",
             "org-lakeside": "pediatrics, manages `Group/grp-lakeside`",
             "org-recovery": "**42 CFR Part 2 program** (SUD treatment); manages no Group",
             "org-pharmacy": "pharmacy (MedicationDispense performer, pharmacy claims)",
             "org-lab": "laboratory (Observation performer)"}
    for o, info in f["organizations"].items():
        w("| `Organization/%s` | %s | %s | %s |" % (o, info["name"], info["npi"] or "-", roles.get(o, "")))
    w("")
    w("## Attribution (who may see whom)")
    w("")
    w("Each `Group/grp-*` is a PDex provider attribution Group (`type=person`, `actual=true`,")
    w("`managingEntity` = the organization). A member is visible to the organization when the")
    w("member entry is not `inactive` and its `period` covers today. Other entries are")
    w("`inactive: true`, expired (`period.end` in the past) or future (`period.start` 2099-01-01).")
    w("")
    w("| Organization | Group | Visible | Inactive | Expired | Future |")
    w("|---|---|---:|---|---|---|")
    for o, a in f["attribution"].items():
        w("| `%s` | `%s` | %d | %s | %s | %s |" % (o, a["group"], a["visible_count"], short(a["inactive"], 4),
                                                 short(a["expired"], 4), short(a["future"], 4)))
    w("")
    w("- Visible to two or more organizations: %d members, e.g. %s." % (len(f["multi_attributed"]),
                                                                       short(f["multi_attributed"], 6)))
    w("- Visible to none: %d members (%d of them in no Group at all), e.g. %s." % (
        len(f["unattributed"]), len(f["never_in_any_group"]), short(f["never_in_any_group"], 6)))
    w("- `org-grace` sees more than 100 members (over the default `policy.max_narrowed_patients`);")
    w("  the other organizations see fewer.")
    w("")
    w("## Fixtures worth knowing")
    w("")
    p1 = f["patients"]["pat-0001"]
    w("- `pat-0001` (%s %s): visible to `org-grace` only; subscriber; has records before 2016,"
      % (" ".join(p1["name"]["given"]), p1["name"]["family"]))
    w("  tobacco-use (F17, not Part 2) records, and prior authorizations of every kind: approved,")
    w("  denied (structured reason), pending, and an approved drug PA, some with Claim/ClaimResponse.")
    w("- `pat-0002`: visible to %s; has records from the Part 2 program `org-recovery`."
      % ", ".join("`%s`" % o for o in f["patients"]["pat-0002"]["visible_to"]) if f["patients"]["pat-0002"]["visible_to"]
      else "- `pat-0002`: visible to no organization; has records from the Part 2 program `org-recovery`.")
    w("- `pat-0003`: visible to %s; has `42CFRPart2`-labelled records and unlabelled SUD-coded records."
      % (", ".join("`%s`" % o for o in f["patients"]["pat-0003"]["visible_to"]) or "no organization"))
    w("- Id prefix traps: %s. In each pair the first id is a prefix of the second and the two are"
      % ", ".join("`%s`/`%s`" % tuple(pp) for pp in f["prefix_pairs"]))
    w("  visible to different organizations (`pat-0001`: grace; `pat-00011`, `pat-00012`: hopkins;")
    w("  `pat-01234`: valley, `pat-0123`: not valley), so `Patient/pat-0001` must never match")
    w("  `Patient/pat-00011`.")
    w("- `$member-match` ambiguity: %s share name and birth date (different addresses and member ids)."
      % " and ".join("`%s`" % x for x in f["member_match_ambiguous"][0]))
    w("- Terminated coverage (`Coverage.period.end` 2024-12-31): %s." % short(f["coverage_terminated"], 12))
    w("")
    w("## Dependents: `subscriber`, `policyHolder` and `payee` never grant access")
    w("")
    w("%d members are dependents (spouse/child): their Coverage names the household subscriber as"
      % len(f["dependents"]))
    w("`subscriber` and `policyHolder`, and %d of their EOBs name the subscriber as `payee`"
      % len(f["payee_subscriber_eobs"]))
    w("(`payee.type=subscriber`). `facts.json` `subscriber_visible_dependent_not` lists, per")
    w("organization, dependents who are NOT visible while their subscriber IS; their Coverage and EOBs")
    w("must stay invisible to that organization. For example:")
    w("")
    w("| Organization | Visible subscriber | Invisible dependent | Coverage | EOBs with payee = subscriber |")
    w("|---|---|---|---|---|")
    for o, rows in f["subscriber_visible_dependent_not"].items():
        for r in [x for x in rows if x["payee_eobs"]][:2]:
            w("| `%s` | `%s` | `%s` | `%s` | %s |" % (o, r["visible_subscriber"], r["invisible_dependent"],
                                                   r["coverage"], short(r["payee_eobs"], 3)))
    w("")
    w("## 42 CFR Part 2 and sensitive records")
    w("")
    p2 = f["part2"]
    w("| Category | Count | Examples | Part 2? |")
    w("|---|---:|---|---|")
    w("| `meta.security` carries v3-ActCode `42CFRPart2` (+ Confidentiality `R`) | %d | %s | yes (label) |"
      % (len(p2["labelled"]), short(p2["labelled"], 3)))
    w("| from the program `Organization/org-recovery` (provider, serviceProvider, performer) | %d | %s | yes (program) |"
      % (len(p2["program"]), short(p2["program"], 3)))
    w("| EOB whose `provider` names the program only by NPI `1234567893` (no literal reference) | %d | %s | yes (program NPI) |"
      % (len(p2["program_npi_only"]), short(p2["program_npi_only"], 2)))
    w("| SUD diagnosis (ICD-10-CM F10-F16, F18-F19) from a general provider, no label | %d | %s | yes (code set) |"
      % (len(p2["sud_code_unlabelled"]), short(p2["sud_code_unlabelled"], 3)))
    w("| tobacco use (F17.x) only | %d | %s | **no** |" % (len(p2["tobacco_not_part2"]), short(p2["tobacco_not_part2"], 3)))
    w("")
    w("Some program records carry no SUD code at all (e.g. a psychotherapy claim with a general")
    w("diagnosis): only the program identifies them. %d members have Part 2 records: %s."
      % (len(p2["patients"]), short(p2["patients"], 10)))
    w("")
    w("## Service dates and the 2016-01-01 floor")
    w("")
    w("%d resources have a service date (per the DESIGN table: EOB `billablePeriod.start` else the"
      % len(f["pre_2016"]))
    w("earliest item `serviced[x]`, Encounter `period.start`, Observation `effective[x]`, ...) before")
    w("%s, e.g. %s. Some of these EOBs have no `billablePeriod` and an item before the floor" % (
        f["service_date_floor"], short(f["pre_2016"], 4)))
    w("next to one after it. Conditions without any date (kept by the floor): %s."
      % short(f["no_service_date_conditions"], 6))
    w("")
    w("## Prior authorizations")
    w("")
    counts = {}
    for pa in f["prior_auth"]:
        k = (pa["status"], "drug" if pa["drug"] else "service")
        counts[k] = counts.get(k, 0) + 1
    w("EOBs with `use=preauthorization` (PDex prior authorization): decision in `outcome`")
    w("(`complete`/`queued`), `disposition`, and the X12 review action (`A1` certified, `A3` not")
    w("certified, `A4` pended) on `item.adjudication`; denials add a `denialreason` adjudication with")
    w("a CARC reason code and a `processNote`. Drug PAs have `type=pharmacy` and an NDC product.")
    w("")
    w("| Decision | Service | Drug |")
    w("|---|---:|---:|")
    for st in ("approved", "denied", "pending"):
        w("| %s | %d | %d |" % (st, counts.get((st, "service"), 0), counts.get((st, "drug"), 0)))
    w("")
    w("%d of them have the Claim (`use=preauthorization`) and ClaimResponse they were decided from"
      % len(f["claim_pairs"]))
    w("(`ExplanationOfBenefit.claim`/`claimResponse`; `ClaimResponse.request` = the Claim).")
    w("")
    w("## facts.json")
    w("")
    w("Keys: `counts`, `organizations`, `part2_program`, `attribution.{org}.{visible,inactive,expired,future}`,")
    w("`multi_attributed`, `unattributed`, `never_in_any_group`, `dependents`,")
    w("`subscriber_visible_dependent_not`, `payee_subscriber_eobs`, `prefix_pairs`,")
    w("`member_match_ambiguous`, `coverage_terminated`, `part2.{labelled,program,program_npi_only,")
    w("sud_code_unlabelled,tobacco_not_part2,patients}`, `pre_2016`, `no_service_date_conditions`,")
    w("`prior_auth`, `claim_pairs`, `provenance`, and `patients.{id}` (member id, demographics,")
    w("subscriber, coverage, `visible_to`, Group statuses and resource counts per type).")
    w("Patient ids are bare (`pat-0001`); resources are `Type/id`.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def generate():
    build_organizations()
    build_locations()
    build_practitioners()
    build_members()
    add_special_members()
    for pid in shuffled(ORDER)[:12]:
        TERMINATED.add(pid)
    TERMINATED.discard("pat-0001")
    never_grouped = build_attribution()
    emit_members()
    emit_groups()
    build_clinical()
    provenance = build_provenance()
    facts = build_facts(never_grouped, provenance)
    lines = [json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in RESOURCES]
    ndjson = "\n".join(lines) + "\n"
    facts_text = json.dumps(facts, indent=1, ensure_ascii=False) + "\n"
    return ndjson, facts_text, readme(facts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="output directory")
    ap.add_argument("--check", action="store_true", help="verify the committed files are up to date")
    args = ap.parse_args()
    ndjson, facts, readme_text = generate()
    outputs = {"payer.ndjson": ndjson, "facts.json": facts, "README.md": readme_text}
    if args.check:
        stale = []
        for name, text in outputs.items():
            path = os.path.join(args.out, name)
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() != text:
                        stale.append(name)
            except FileNotFoundError:
                stale.append(name)
        if stale:
            print("stale: %s (run examples/dataset/generate.py)" % ", ".join(stale), file=sys.stderr)
            return 1
        print("up to date")
        return 0
    for name, text in outputs.items():
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    print("wrote %d resources (%d bytes), facts.json and README.md to %s"
          % (ndjson.count("\n"), len(ndjson), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
