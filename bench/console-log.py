#!/usr/bin/env python3
"""Write a synthetic audit log for the console benchmark (bench/console.sh):
N records in fhirwall's line format and hash chain (docs/audit.md), rotated
into audit-{seq}.ndjson files of at most 64 MiB, so `fhirwall audit verify`
accepts it and `fhirwall serve` appends to it.

The records look like a month of Provider Access traffic: 40 provider
clients in 20 organizations reading and searching the data of 100,000
members (1-3 patients per record, Zipf-like so some members are looked up
often), with refusals, upstream failures, token requests and per-reason
suppression/redaction counts in the proportions seen in the e2e runs.

    python3 bench/console-log.py DIR [N] [--seed S]
"""

import argparse
import hashlib
import json
import os
import random

ZERO = "0" * 64
ROTATE = 64 * 1024 * 1024
START = 1_790_000_000  # 2026-09-20T...Z, seconds
SPAN = 30 * 86_400

REST = '{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest","display":"Restful Operation"}'
TOKEN = '{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110114","display":"User Authentication"}'


def rfc3339(us):
    s, frac = divmod(us, 1_000_000)
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{frac:06d}Z"


def event(rng, n_patients_total):
    client = rng.randrange(40)
    org = client // 2
    us = (START + rng.randrange(SPAN)) * 1_000_000 + rng.randrange(1_000_000)
    rid = "%024x" % rng.getrandbits(96)
    kind = rng.random()
    details = []
    patients = []
    if kind < 0.08:
        typ, sub, status = TOKEN, '{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110122","display":"Login"}', 200
        interaction = None
    else:
        typ = REST
        interaction = rng.choice(["read", "search-type", "search-type", "search-compartment", "page"])
        sub = '{"system":"http://hl7.org/fhir/restful-interaction","code":"%s"}' % interaction
        r = rng.random()
        status = 200 if r < 0.90 else (404 if r < 0.96 else (403 if r < 0.98 else 502))
        for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 3)):
            # Zipf-ish: a few members are looked up often.
            p = int(n_patients_total * (rng.random() ** 3))
            patients.append(("pat-%06d" % p, "disclosed" if status == 200 else "requested"))
        if status == 200:
            for reason, share in (("suppressed.part2", 0.03), ("suppressed.date-floor", 0.1), ("redacted.financial", 0.2),
                                  ("suppressed.attribution", 0.05), ("suppressed.opt-out", 0.01)):
                if rng.random() < share:
                    details.append((reason, rng.randint(1, 12)))
    outcome = "0" if status < 400 else ("4" if status < 500 else "8")
    det = [("interaction", interaction or "token"), ("status", str(status)), ("authenticated", "true")] + [(k, str(v)) for k, v in details]
    det_json = ",".join('{"type":"%s","valueString":"%s"}' % kv for kv in det)
    entities = ['{"what":{"identifier":{"system":"urn:fhirwall:request-id","value":"%s"}},"type":{"system":"https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType","code":"XrequestId","display":"X-Request-Id"},"detail":[%s]}' % (rid, det_json)]
    for pid, role in patients:
        entities.append('{"what":{"reference":"Patient/%s"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1","display":"Person"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1","display":"Patient"},"description":"%s"}' % (pid, role))
    if patients:
        entities.append('{"what":{"type":"%s"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"4","display":"Domain Resource"}}' % rng.choice(["Condition", "Observation", "ExplanationOfBenefit", "Encounter"]))
    agents = ('{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110153","display":"Source Role ID"}]},"who":{"identifier":{"system":"urn:fhirwall:client-id","value":"ehr-%02d"}},"requestor":true,"network":{"address":"10.0.%d.%d","type":"2"}},' % (client, org, client)
              + '{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-RoleClass","code":"PROV","display":"healthcare provider"}]},"who":{"reference":"Organization/org-%02d","identifier":{"system":"http://hl7.org/fhir/sid/us-npi","value":"14%08d"}},"requestor":false},' % (org, org)
              + '{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110152","display":"Destination Role ID"}]},"who":{"display":"fhirwall"},"requestor":false}')
    return us, ('{"resourceType":"AuditEvent","id":"%s","type":%s,"subtype":[%s],"action":"%s","recorded":"%s","outcome":"%s","outcomeDesc":"HTTP %d",'
                '"agent":[%s],"source":{"site":"bench","observer":{"display":"fhirwall"},"type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type","code":"4","display":"Application Server"}]},"entity":[%s]}'
                ) % (rid, typ, sub, "E" if interaction and interaction != "read" else "R", "%s", outcome, status, agents, ",".join(entities))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("n", type=int, nargs="?", default=1_000_000)
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--patients", type=int, default=100_000)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.dir, exist_ok=True)
    events = [event(rng, args.patients) for _ in range(args.n)]
    events.sort(key=lambda e: e[0])  # recorded grows with seq, as in a real log
    prev, seq, out, size = ZERO, 0, None, 0
    for us, template in events:
        seq += 1
        ev = (template % rfc3339(us)).encode()
        h = hashlib.sha256(prev.encode() + ev).hexdigest()
        line = b'{"seq":%d,"prev":"%s","hash":"%s","event":%s}\n' % (seq, prev.encode(), h.encode(), ev)
        if out is None or size + len(line) > ROTATE:
            if out:
                out.close()
            out = open(os.path.join(args.dir, "audit-%012d.ndjson" % seq), "wb")
            size = 0
        out.write(line)
        size += len(line)
        prev = h
    out.close()
    print(json.dumps({"records": seq, "head": f"{seq}:{prev}"}))


if __name__ == "__main__":
    main()
