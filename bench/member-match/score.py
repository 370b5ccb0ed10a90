#!/usr/bin/env python3
"""Score `fhirwall match` output against truth.ndjson.

    python3 bench/member-match/score.py TRUTH RESULTS [MATCH_LOG]

A false positive is a match on the wrong member, or any match for a query
whose person is not a member. Precision = right matches / all matches;
recall = right matches / queries whose person is a member. Recall is also
broken down by the card (`id_cond`; "no usable id" = none, mistyped or
another payer's), by perturbation (a query with two counts in both), by the
number of perturbations, by who the query is about and by the contact data
sent. MATCH_LOG is `fhirwall match`'s stderr: its throughput line is
repeated. Exits 1 when there is a false positive."""
import json
import re
import sys
from collections import defaultdict

NO_USABLE_ID = ("none", "mistyped", "other-payer")

truth = {}
for line in open(sys.argv[1]):
    t = json.loads(line)
    truth[t["id"]] = t
results = [json.loads(line) for line in open(sys.argv[2])]

tp = fp = members = 0
answers = defaultdict(int)
errors = 0
# table -> key -> [right, member queries, false positives, queries]
tables = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0]))
fps = []
for r in results:
    t = truth[r["id"]]
    answers[r["result"]] += 1
    is_member = bool(t["member"])
    right = r["result"] == "match" and r["member"] == t["member"]
    wrong = r["result"] == "match" and not right
    keys = [("kind", t["kind"]), ("id", t["id_cond"]), ("count", str(len(t["perturbations"]))),
            ("contact", "+".join(sorted(t["contact"])) or "(none)")]
    if is_member:
        keys.append(("usable", "no usable id" if t["id_cond"] in NO_USABLE_ID else "usable id"))
    keys += [("pert", p) for p in t["perturbations"]] or [("pert", "(none)")]
    for table, key in keys:
        row = tables[table][key]
        row[0] += right
        row[1] += is_member
        row[2] += wrong
        row[3] += 1
    if is_member:
        members += 1
    if r["result"] == "error":
        errors += 1
    if right:
        tp += 1
    elif wrong:
        fp += 1
        fps.append((r["id"], t["kind"], t["id_cond"], ",".join(t["perturbations"]), r["member"], t["member"]))

matches = tp + fp
print("queries %d (%d of members, %d of non-members), matches %d, right %d, false positives %d, errors %d" % (
    len(results), members, len(results) - members, matches, tp, fp, errors))
print("answers: " + ", ".join("%s %d" % kv for kv in sorted(answers.items())))
print("precision %.4f  recall %.4f" % (tp / matches if matches else 1.0, tp / members if members else 0.0))
no_id = tables["usable"]["no usable id"]
print("recall without a usable id (none / mistyped / other payer) %.4f  (%d member queries)" % (
    no_id[0] / no_id[1] if no_id[1] else 0.0, no_id[1]))

TITLES = [("usable", "card"), ("id", "card (id_cond)"), ("count", "perturbations"), ("pert", "perturbation"),
          ("kind", "who"), ("contact", "contact sent")]
for table, title in TITLES:
    print()
    print("%-28s %8s %9s %6s %8s" % (title, "recall", "member q", "FP", "queries"))
    for key, (right, n, f, q) in sorted(tables[table].items()):
        print("%-28s %8s %9d %6d %8d" % (key, ("%.3f" % (right / n)) if n else "-", n, f, q))
for x in fps[:30]:
    print("FP", *x)
if len(sys.argv) > 3:
    for line in open(sys.argv[3]):
        if re.search(r"queries/s", line):
            print()
            print("throughput: " + line.strip())
sys.exit(1 if fp else 0)
