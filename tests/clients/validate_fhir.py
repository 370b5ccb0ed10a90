#!/usr/bin/env python3
"""Validate FHIR resources fhirwall builds against the R4 structure
definitions, with fhir.resources (PyPI; its R4B models, whose structures
match R4 for every type fhirwall writes): element names (nothing unknown),
types, cardinalities, primitive formats, and the required elements of each
type. Used by tests/e2e/conformance.rs.

    validate_fhir.py FILE...

Each FILE holds one JSON resource, or NDJSON (one per line). Prints one line
per resource (`ok Type/id` or `INVALID Type/id: why`) and exits 1 when any is
invalid.
"""

import json
import sys

from fhir.resources.R4B import get_fhir_model_class

# Required bindings the models do not check: (type, path) -> allowed codes.
CODES = {
    ("OperationOutcome", "issue.severity"): {"fatal", "error", "warning", "information"},
    ("AuditEvent", "action"): {"C", "R", "U", "D", "E"},
    ("AuditEvent", "outcome"): {"0", "4", "8", "12"},
    ("Group", "type"): {"person", "animal", "practitioner", "device", "medication", "substance"},
    ("Bundle", "type"): {"document", "message", "transaction", "transaction-response", "batch",
                         "batch-response", "history", "searchset", "collection"},
    ("CapabilityStatement", "status"): {"draft", "active", "retired", "unknown"},
    ("CapabilityStatement", "kind"): {"instance", "capability", "requirements"},
}


def values(resource, path):
    items = [resource]
    for part in path.split("."):
        nxt = []
        for item in items:
            v = item.get(part) if isinstance(item, dict) else None
            if isinstance(v, list):
                nxt.extend(v)
            elif v is not None:
                nxt.append(v)
        items = nxt
    return items


def check(resource):
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return "no resourceType"
    try:
        get_fhir_model_class(rtype).model_validate(resource)
    except KeyError:
        return f"unknown resource type {rtype}"
    except Exception as e:  # pydantic's ValidationError, and what the models raise
        return " ".join(str(e).split())[:600]
    for (t, path), allowed in CODES.items():
        if t == rtype:
            bad = [v for v in values(resource, path) if v not in allowed]
            if bad:
                return f"{path}: {bad} not in its required value set"
    return None


def main():
    failed = 0
    for name in sys.argv[1:]:
        text = open(name, encoding="utf-8").read()
        try:
            resources = [json.loads(text)]
        except json.JSONDecodeError:
            resources = [json.loads(line) for line in text.splitlines() if line.strip()]
        for resource in resources:
            key = f"{resource.get('resourceType')}/{resource.get('id', '-')}"
            why = check(resource)
            if why:
                failed += 1
                print(f"INVALID {key} ({name}): {why}")
            else:
                print(f"ok {key}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
