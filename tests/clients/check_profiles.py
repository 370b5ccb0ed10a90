#!/usr/bin/env python3
"""Profile rules for the resources fhirwall builds itself, checked
explicitly (the HL7 validator jar and the IG packages cannot be fetched in
this environment, so the rules the conformance list cites are written out
here; validate_fhir.py checks the R4 structures). Used by
tests/e2e/certification.rs.

    check_profiles.py KIND=FILE...

KIND is one of:

  hrex-member-match-out   HRex $member-match answer (HREX-01):
                          hrex-parameters-member-match-out, 1.0.0 and 1.1.0+
  pdex-member-match-out   PDex $provider-member-match answer (PDEX-24/25/28/29):
                          provider-parameters-multi-member-match-bundle-out
                          and its pdex-provider-member-match,
                          pdex-provider-member-no-match, pdex-member-opt-out Groups
  bulk-manifest           Bulk Data complete-status manifest (BULK-33/34/35/37)
  operation-outcome       OperationOutcome (R4 required bindings; BULK-17/39/51)

Prints `ok KIND FILE` or `FAIL KIND FILE: why; why` per argument and exits 1
when any fails. Standard library only.
"""

import json
import re
import sys

PDEX_SD = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/"
RESULT_CS = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS"
OPT_OUT_SCOPE_CS = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/opt-out-scope"
MB = ("http://terminology.hl7.org/CodeSystem/v2-0203", "MB")
UMB = ("http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp", "UMB")

INSTANT = re.compile(
    r"^([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$"
)
DATE = re.compile(r"^[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?$")
DATETIME = re.compile(r"^[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T[0-9:.]+(Z|[+-][0-9:]+))?)?)?$")
ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ABSOLUTE = re.compile(r"^https?://[^\s]+$")
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
PATIENT_REF = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,64}$")

# R4 IssueSeverity and IssueType (both required bindings).
SEVERITY = {"fatal", "error", "warning", "information"}
ISSUE_TYPE = {
    "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
    "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
    "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
    "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store",
    "exception", "timeout", "incomplete", "throttled", "informational",
}


def codings(concept):
    if not isinstance(concept, dict):
        return []
    return [(c.get("system"), c.get("code")) for c in concept.get("coding", []) if isinstance(c, dict)]


def params(resource, errors):
    if resource.get("resourceType") != "Parameters":
        errors.append(f"resourceType {resource.get('resourceType')!r}, not Parameters")
        return []
    ps = resource.get("parameter")
    if not isinstance(ps, list) or not ps:
        errors.append("Parameters.parameter is empty")
        return []
    return ps


def hrex_member_match_out(r):
    """hrex-parameters-member-match-out: closed slicing on parameter.name;
    MemberIdentifier 1..1 valueIdentifier with type MB (1.0.0) or UMB (1.1.0+)
    and a value; MemberId 0..1 valueReference to a Patient (1.1.0+)."""
    errors = []
    ps = params(r, errors)
    names = [p.get("name") for p in ps]
    for n in names:
        if n not in ("MemberIdentifier", "MemberId"):
            errors.append(f"parameter {n!r} is not in the closed slicing")
    if not 1 <= len(ps) <= 3:
        errors.append(f"{len(ps)} parameters (1..3)")
    idents = [p for p in ps if p.get("name") == "MemberIdentifier"]
    if len(idents) != 1:
        errors.append(f"{len(idents)} MemberIdentifier (1..1)")
    for p in idents:
        ident = p.get("valueIdentifier")
        if not isinstance(ident, dict):
            errors.append("MemberIdentifier has no valueIdentifier")
            continue
        types = codings(ident.get("type"))
        if MB not in types and UMB not in types:
            errors.append(f"MemberIdentifier.type {types} is neither v2-0203#MB nor hrex-temp#UMB")
        if not isinstance(ident.get("value"), str) or not ident["value"].strip():
            errors.append("MemberIdentifier.value is empty")
        if "system" in ident and not isinstance(ident["system"], str):
            errors.append("MemberIdentifier.system is not a uri")
        if any(k.startswith("value") and k != "valueIdentifier" for k in p):
            errors.append("MemberIdentifier has another value[x]")
    ids = [p for p in ps if p.get("name") == "MemberId"]
    if len(ids) > 1:
        errors.append(f"{len(ids)} MemberId (0..1)")
    for p in ids:
        ref = (p.get("valueReference") or {}).get("reference")
        if not isinstance(ref, str) or not PATIENT_REF.match(ref):
            errors.append(f"MemberId.valueReference.reference {ref!r} is not Patient/id")
    return errors


def group_common(g, where, profile, code, errors):
    if not isinstance(g, dict) or g.get("resourceType") != "Group":
        errors.append(f"{where} is not a Group")
        return False
    if PDEX_SD + profile not in (g.get("meta") or {}).get("profile", []):
        errors.append(f"{where}.meta.profile lacks {PDEX_SD + profile}")
    if not isinstance(g.get("id"), str) or not ID.match(g["id"]):
        errors.append(f"{where}.id {g.get('id')!r} is not a FHIR id")
    if g.get("type") != "person":
        errors.append(f"{where}.type {g.get('type')!r} (person)")
    if g.get("actual") is not True:
        errors.append(f"{where}.actual is not true")
    if (RESULT_CS, code) not in codings(g.get("code")):
        errors.append(f"{where}.code {codings(g.get('code'))} lacks PdexMultiMemberMatchResultCS#{code}")
    chars = g.get("characteristic")
    if not isinstance(chars, list) or not chars:
        errors.append(f"{where}.characteristic is missing")
        chars = []
    for i, ch in enumerate(chars):
        if (RESULT_CS, code) not in codings(ch.get("code")):
            errors.append(f"{where}.characteristic[{i}].code lacks #{code}")
        if ch.get("exclude") is not False:
            errors.append(f"{where}.characteristic[{i}].exclude is not false")
        if not any(k.startswith("value") for k in ch):
            errors.append(f"{where}.characteristic[{i}] has no value[x] (1..1 in R4)")
        start = (ch.get("period") or {}).get("start")
        if start is not None and not DATETIME.match(start):
            errors.append(f"{where}.characteristic[{i}].period.start {start!r}")
    members = g.get("member", [])
    if "quantity" in g and g["quantity"] != len(members):
        errors.append(f"{where}.quantity {g['quantity']} but {len(members)} members")
    for i, m in enumerate(members):
        entity = m.get("entity")
        if not isinstance(entity, dict) or not (entity.get("reference") or entity.get("display")):
            errors.append(f"{where}.member[{i}].entity is empty")
    # PDEX-29: contained Patients copied into the Groups carry no version,
    # lastUpdated or security labels, and nothing nested.
    for i, c in enumerate(g.get("contained", [])):
        meta = c.get("meta") or {}
        for k in ("versionId", "lastUpdated", "security"):
            if k in meta:
                errors.append(f"{where}.contained[{i}].meta.{k} must be stripped")
        if "contained" in c:
            errors.append(f"{where}.contained[{i}] has nested contained")
    return True


def pdex_member_match_out(r):
    errors = []
    ps = params(r, errors)
    profile = PDEX_SD + "provider-parameters-multi-member-match-bundle-out"
    if profile not in (r.get("meta") or {}).get("profile", []):
        errors.append(f"Parameters.meta.profile lacks {profile}")
    allowed = ("MatchedMembers", "NonMatchedMembers", "ConsentConstrainedMembers")
    names = [p.get("name") for p in ps]
    for n in names:
        if n not in allowed:
            errors.append(f"parameter {n!r} is not an output of provider-member-match")
    for n in allowed:
        count = names.count(n)
        if n == "MatchedMembers" and count != 1:
            errors.append(f"{count} MatchedMembers (1..1)")
        elif count > 1:
            errors.append(f"{count} {n} (0..1)")
    by_name = {p.get("name"): p.get("resource") for p in ps}
    matched = by_name.get("MatchedMembers")
    if matched is not None and group_common(matched, "MatchedMembers", "pdex-provider-member-match", "match", errors):
        me = (matched.get("managingEntity") or {})
        if not (me.get("reference") or me.get("identifier")):
            errors.append("MatchedMembers.managingEntity is missing (1..1)")
        for i, m in enumerate(matched.get("member", [])):
            entity = m.get("entity") or {}
            if not PATIENT_REF.match(entity.get("reference") or ""):
                errors.append(f"MatchedMembers.member[{i}].entity {entity.get('reference')!r} is not the payer's Patient/id")
            for ext in entity.get("extension", []):
                if ext.get("url") == PDEX_SD + "base-ext-match-parameters" and "valueReference" not in ext:
                    errors.append(f"MatchedMembers.member[{i}] match-parameters extension has no valueReference")
    non = by_name.get("NonMatchedMembers")
    if non is not None and group_common(non, "NonMatchedMembers", "pdex-provider-member-no-match", "nomatch", errors):
        if not non.get("member"):
            errors.append("NonMatchedMembers without members")
    cc = by_name.get("ConsentConstrainedMembers")
    if cc is not None and group_common(cc, "ConsentConstrainedMembers", "pdex-member-opt-out", "consentconstraint", errors):
        for i, ch in enumerate(cc.get("characteristic", [])):
            if not any(s == OPT_OUT_SCOPE_CS for s, _ in codings(ch.get("valueCodeableConcept"))):
                errors.append(f"ConsentConstrainedMembers.characteristic[{i}].valueCodeableConcept not from opt-out-scope")
        # PDEX-28: the categorical answer only, no consent-error detail.
        text = json.dumps(cc)
        if "OperationOutcome" in text or "diagnostics" in text:
            errors.append("ConsentConstrainedMembers carries consent-error detail")
    return errors


def bulk_manifest(m):
    errors = []
    if not isinstance(m, dict):
        return ["the manifest is not a JSON object"]
    for key in ("transactionTime", "request", "requiresAccessToken", "output", "error"):
        if key not in m:
            errors.append(f"no {key}")
    if "transactionTime" in m and not (isinstance(m["transactionTime"], str) and INSTANT.match(m["transactionTime"])):
        errors.append(f"transactionTime {m.get('transactionTime')!r} is not a FHIR instant")
    if "request" in m and not (isinstance(m["request"], str) and ABSOLUTE.match(m["request"])):
        errors.append(f"request {m.get('request')!r} is not the kick-off URL")
    if m.get("requiresAccessToken") is not True:
        errors.append("requiresAccessToken is not true (RS and FS both use bearer tokens)")
    for key in ("output", "error", "deleted"):
        if key not in m:
            continue
        if not isinstance(m[key], list):
            errors.append(f"{key} is not an array")
            continue
        for i, item in enumerate(m[key]):
            t, url = item.get("type"), item.get("url")
            if not (isinstance(t, str) and RESOURCE_TYPE.match(t)):
                errors.append(f"{key}[{i}].type {t!r}")
            if not (isinstance(url, str) and ABSOLUTE.match(url)):
                errors.append(f"{key}[{i}].url {url!r} is not absolute")
            if "count" in item and not (isinstance(item["count"], int) and not isinstance(item["count"], bool) and item["count"] >= 0):
                errors.append(f"{key}[{i}].count {item['count']!r} is not a number")
            if key == "error" and t != "OperationOutcome":
                errors.append(f"error[{i}].type {t!r} is not OperationOutcome")
            if key == "deleted" and t != "Bundle":
                errors.append(f"deleted[{i}].type {t!r} is not Bundle")
    return errors


def operation_outcome(r):
    errors = []
    if r.get("resourceType") != "OperationOutcome":
        return [f"resourceType {r.get('resourceType')!r}, not OperationOutcome"]
    issues = r.get("issue")
    if not isinstance(issues, list) or not issues:
        return ["issue is missing (1..*)"]
    for i, issue in enumerate(issues):
        if issue.get("severity") not in SEVERITY:
            errors.append(f"issue[{i}].severity {issue.get('severity')!r}")
        if issue.get("code") not in ISSUE_TYPE:
            errors.append(f"issue[{i}].code {issue.get('code')!r} not in IssueType")
        if "diagnostics" in issue and not isinstance(issue["diagnostics"], str):
            errors.append(f"issue[{i}].diagnostics is not a string")
    return errors


KINDS = {
    "hrex-member-match-out": hrex_member_match_out,
    "pdex-member-match-out": pdex_member_match_out,
    "bulk-manifest": bulk_manifest,
    "operation-outcome": operation_outcome,
}


def main():
    failed = 0
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    for arg in sys.argv[1:]:
        kind, _, name = arg.partition("=")
        if kind not in KINDS or not name:
            print(f"FAIL {arg}: unknown kind (one of {', '.join(KINDS)})")
            failed += 1
            continue
        try:
            with open(name, encoding="utf-8") as f:
                resource = json.load(f)
            errors = KINDS[kind](resource)
        except (OSError, ValueError) as e:
            errors = [str(e)]
        if errors:
            failed += 1
            print(f"FAIL {kind} {name}: {'; '.join(errors)}")
        else:
            print(f"ok {kind} {name}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
