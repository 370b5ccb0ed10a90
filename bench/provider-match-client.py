#!/usr/bin/env python3
"""$provider-member-match benchmark client (bench/provider-match.sh).

  request  --queries Q --truth T --members N --out FILE
      Build one request of N MemberBundles from the member-match benchmark's
      queries (bench/member-match/data): each query's MemberPatient and
      CoverageToMatch plus a Provider Treatment Attestation for the caller's
      NPI; the provider's patient id is the query id.
  run      --base URL --token-file F --request FILE --truth T [--async]
      Send it (sync: one POST answered with 200; async: kick-off, then poll
      the status URL every 50 ms ignoring nothing but 202/429) and print a JSON
      line: seconds, members/s, matched, false positives (a matched payer
      patient that is not the query's true member), recall among queries
      whose person is a member.
"""
import argparse
import json
import sys
import time
import urllib.request

NPI = "1417987256"


def attestation(local):
    npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": NPI}
    return {
        "resourceType": "Consent", "status": "active",
        "patient": {"reference": f"Patient/{local}"}, "performer": [{"identifier": npi}],
        "provision": {"type": "permit", "period": {"start": "2025-01-01"},
                      "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                                      "code": "IRCP"}]}, "reference": {"identifier": npi}}]},
    }


def build(args):
    bundles = []
    with open(args.queries) as f:
        for line in f:
            if len(bundles) == args.members:
                break
            q = json.loads(line)
            local = q["id"]
            parts = {p["name"]: p["resource"] for p in q["parameter"]}
            patient = dict(parts["MemberPatient"], id=local)
            coverage = dict(parts["CoverageToMatch"], beneficiary={"reference": f"Patient/{local}"})
            bundles.append({"name": "MemberBundle", "part": [
                {"name": "MemberPatient", "resource": patient},
                {"name": "CoverageToMatch", "resource": coverage},
                {"name": "Consent", "resource": attestation(local)}]})
    with open(args.out, "w") as f:
        json.dump({"resourceType": "Parameters", "parameter": bundles}, f)


def http(method, url, token, body=None, headers=()):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    for k, v in headers:
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def run(args):
    token = open(args.token_file).read().strip()
    body = open(args.request, "rb").read()
    members = len(json.loads(body)["parameter"])
    truth = {}
    with open(args.truth) as f:
        for line in f:
            t = json.loads(line)
            truth[t["id"]] = t.get("member")
    headers = [("Content-Type", "application/fhir+json")]
    if args.async_:
        headers.append(("Prefer", "respond-async"))
    started = time.monotonic()
    status, head, answer = http("POST", f"{args.base}/Group/$provider-member-match", token, body, headers)
    if args.async_:
        if status != 202:
            sys.exit(f"kick-off answered {status}: {answer[:300]}")
        url = {k.lower(): v for k, v in head.items()}.get("content-location")
        while True:
            status, _, answer = http("GET", url, token)
            if status == 200:
                break
            if status not in (202, 429):
                sys.exit(f"status answered {status}: {answer[:300]}")
            time.sleep(0.05)
    elif status != 200:
        sys.exit(f"answered {status}: {answer[:300]}")
    seconds = time.monotonic() - started
    result = json.loads(answer)
    matched = {}
    for p in result["parameter"]:
        if p["name"] != "MatchedMembers":
            continue
        for m in p["resource"].get("member", []):
            local = m["entity"]["extension"][0]["valueReference"]["display"].removeprefix("Patient/")
            matched[local] = m["entity"]["reference"]
    # One member entry per payer patient: a second query for the same person
    # is not listed again; count it through the truth.
    sent = {b["part"][0]["resource"]["id"] for b in json.loads(body)["parameter"]}
    asked = [q for q in truth if q in sent]
    false_positives = sum(1 for local, payer in matched.items() if truth.get(local) != payer)
    persons = [q for q in asked if truth.get(q)]
    found_members = set(matched.values())
    recall = sum(1 for q in persons if truth[q] in found_members) / max(1, len(persons))
    print(json.dumps({"members": members, "seconds": round(seconds, 3), "members_per_s": round(members / seconds, 1),
                      "matched": len(matched), "false_positives": false_positives, "recall": round(recall, 4),
                      "async": args.async_}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("request")
    r.add_argument("--queries", required=True)
    r.add_argument("--truth", required=True)
    r.add_argument("--members", type=int, default=1000)
    r.add_argument("--out", required=True)
    s = sub.add_parser("run")
    s.add_argument("--base", required=True)
    s.add_argument("--token-file", required=True)
    s.add_argument("--request", required=True)
    s.add_argument("--truth", required=True)
    s.add_argument("--async", dest="async_", action="store_true")
    args = ap.parse_args()
    build(args) if args.cmd == "request" else run(args)


if __name__ == "__main__":
    main()
