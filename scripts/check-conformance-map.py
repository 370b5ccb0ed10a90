#!/usr/bin/env python3
"""Check tests/conformance/assertions.tsv, the traceability map from the
conformance assertion IDs (../shared/reference/conformance.md) to the tests
that prove them.

Each row is `ID<TAB>status<TAB>where<TAB>note`; status is `tested` (where
names one or more tests, comma-separated: `binary::test_fn` for
tests/e2e/binary.rs, or `lib:module::path::test_fn` for a unit test in
gateway/src), `n/a` or `gap` (the note says why / what is missing).

Fails when an ID of conformance.md is missing from the map or appears twice,
when the map holds an ID conformance.md does not, when a status is unknown,
when an `n/a` or `gap` row has no note, or when a `tested` row names a test
that does not exist. Prints the count per status. When conformance.md is not
there (it lives outside the repository), the ID checks are skipped with a
message; the rows are still checked.
"""

import os
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "tests" / "conformance" / "assertions.tsv"
CONFORMANCE = Path(os.environ.get("CONFORMANCE_MD", ROOT.parent / "shared" / "reference" / "conformance.md"))
STATUSES = ("tested", "n/a", "gap")
ID_ROW = re.compile(r"^\|\s*([A-Z][A-Z0-9]*-\d+)\s*\|")
TEST_ATTR = re.compile(r"#\[(tokio::)?test(\(.*\))?\]")


def conformance_ids():
    ids = []
    for line in CONFORMANCE.read_text(encoding="utf-8").splitlines():
        m = ID_ROW.match(line)
        if m:
            ids.append(m.group(1))
    return ids


def is_test_fn(text, name):
    """Is `fn name` in `text` a #[test] / #[tokio::test] function?"""
    lines = text.splitlines()
    pattern = re.compile(r"^\s*(pub\s+)?(async\s+)?fn\s+" + re.escape(name) + r"\s*\(")
    for i, line in enumerate(lines):
        if pattern.match(line):
            before = "\n".join(lines[max(0, i - 4):i])
            if TEST_ATTR.search(before):
                return True
    return False


_registered = None


def registered_binaries():
    global _registered
    if _registered is None:
        cargo = (ROOT / "gateway" / "Cargo.toml").read_text(encoding="utf-8")
        _registered = set(re.findall(r'\[\[test\]\]\s*\nname\s*=\s*"([^"]+)"', cargo))
    return _registered


_sources = None


def gateway_sources():
    global _sources
    if _sources is None:
        _sources = {p: p.read_text(encoding="utf-8") for p in (ROOT / "gateway" / "src").rglob("*.rs")}
    return _sources


def check_reference(ref):
    """None when `ref` names an existing test, else why not."""
    if ref.startswith("lib:"):
        path = ref[len("lib:"):].split("::")
        if len(path) < 2 or not all(re.fullmatch(r"[a-z_][a-z0-9_]*", p) for p in path):
            return f"{ref}: not lib:module::…::test_fn"
        name, first = path[-1], path[0]
        for file, text in gateway_sources().items():
            rel = file.relative_to(ROOT / "gateway" / "src").as_posix()
            in_module = rel.startswith(first + "/") or rel == first + ".rs"
            if in_module and is_test_fn(text, name):
                return None
        return f"{ref}: no #[test] fn {name} under gateway/src/{first}"
    parts = ref.split("::")
    if len(parts) != 2 or not all(re.fullmatch(r"[a-z_][a-z0-9_]*", p) for p in parts):
        return f"{ref}: not binary::test_fn"
    binary, name = parts
    file = ROOT / "tests" / "e2e" / f"{binary}.rs"
    if not file.is_file():
        return f"{ref}: no tests/e2e/{binary}.rs"
    if binary not in registered_binaries():
        return f"{ref}: {binary} is not a [[test]] in gateway/Cargo.toml"
    if not is_test_fn(file.read_text(encoding="utf-8"), name):
        return f"{ref}: no #[test] fn {name} in tests/e2e/{binary}.rs"
    return None


def main():
    errors = []
    rows = {}
    counts = Counter()
    for n, line in enumerate(MAP.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if n == 1 and fields[0] == "ID":
            continue
        if len(fields) != 4:
            errors.append(f"line {n}: {len(fields)} fields, want 4 (ID, status, where, note)")
            continue
        aid, status, where, note = (f.strip() for f in fields)
        if aid in rows:
            errors.append(f"line {n}: {aid} appears twice (first on line {rows[aid]})")
            continue
        rows[aid] = n
        if status not in STATUSES:
            errors.append(f"line {n}: {aid}: unknown status {status!r} (one of {', '.join(STATUSES)})")
            continue
        counts[status] += 1
        if status == "tested":
            refs = [r.strip() for r in where.split(",") if r.strip()]
            if not refs:
                errors.append(f"line {n}: {aid}: tested, but no test named")
            for ref in refs:
                why = check_reference(ref)
                if why:
                    errors.append(f"line {n}: {aid}: {why}")
        elif not note:
            errors.append(f"line {n}: {aid}: {status} needs a note saying why")
    if CONFORMANCE.is_file():
        ids = conformance_ids()
        for aid in ids:
            if aid not in rows:
                errors.append(f"{aid} of conformance.md is missing from the map")
        for aid, n in rows.items():
            if aid not in ids:
                errors.append(f"line {n}: {aid} is not an ID of conformance.md")
        dupes = [a for a, c in Counter(ids).items() if c > 1]
        if dupes:
            print(f"note: conformance.md lists {', '.join(dupes)} more than once")
        scope = f"{len(ids)} IDs of {CONFORMANCE}"
    else:
        print(f"check-conformance-map: {CONFORMANCE} not found; skipping the ID coverage check")
        scope = f"{len(rows)} rows"
    for e in errors:
        print(f"check-conformance-map: {e}")
    summary = ", ".join(f"{s} {counts[s]}" for s in STATUSES)
    print(f"check-conformance-map: {scope}: {summary}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
