#!/usr/bin/env python3
"""Score `fhirwall match` output against truth.ndjson.

    python3 bench/member-match/score.py TRUTH RESULTS

A false positive is a match on the wrong member, or any match for a query
whose person is not a member. Precision = right matches / all matches;
recall = right matches / queries whose person is a member."""
import json
import sys
from collections import defaultdict

truth = {}
for line in open(sys.argv[1]):
    t = json.loads(line)
    truth[t["id"]] = t
tp = fp = members = answered = 0
errors = 0
per_kind = defaultdict(lambda: [0, 0, 0])  # right, member queries, false positives
fps = []
for line in open(sys.argv[2]):
    r = json.loads(line)
    t = truth[r["id"]]
    answered += 1
    k = per_kind[t["kind"]]
    if t["member"]:
        members += 1
        k[1] += 1
    if r["result"] == "error":
        errors += 1
    if r["result"] == "match":
        if r["member"] == t["member"]:
            tp += 1
            k[0] += 1
        else:
            fp += 1
            k[2] += 1
            fps.append((r["id"], t["kind"], r["member"], t["member"]))
matches = tp + fp
print("queries %d (%d of members), matches %d, right %d, false positives %d, errors %d" % (answered, members, matches, tp, fp, errors))
print("precision %.4f  recall %.4f" % (tp / matches if matches else 1.0, tp / members if members else 0.0))
print("%-24s %8s %8s %6s" % ("kind", "recall", "member q", "FP"))
for kind, (right, n, f) in sorted(per_kind.items()):
    print("%-24s %8s %8d %6d" % (kind, ("%.3f" % (right / n)) if n else "-", n, f))
for x in fps[:20]:
    print("FP", *x)
sys.exit(1 if fp else 0)
