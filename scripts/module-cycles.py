#!/usr/bin/env python3
"""Fail when two of the gateway's top-level modules import each other,
directly or through others (a cycle in the `crate::` graph; tests excluded).
Each capability module owns its types; shared plumbing lives in its own
module (`gateway`, `listener`, `respond`) so that the graph stays one-way."""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(__file__), "..", "gateway", "src")


def top_module(rel):
    head = rel.split(os.sep)[0]
    return head[:-3] if head.endswith(".rs") else head


def edges():
    modules = {top_module(f) for f in os.listdir(ROOT)} - {"lib", "main"}
    graph = defaultdict(set)
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".rs") or name == "tests.rs":
                continue
            path = os.path.join(folder, name)
            source = open(path, encoding="utf-8").read()
            test_module = re.search(r"#\[cfg\(test\)\]\s*mod tests\s*\{", source)
            if test_module:
                source = source[: test_module.start()]
            owner = top_module(os.path.relpath(path, ROOT))
            if owner in ("lib", "main"):
                continue
            for used in re.findall(r"crate::([a-z_0-9]+)", source):
                if used in modules and used != owner:
                    graph[owner].add(used)
    return modules, graph


def cycles(modules, graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return found


if __name__ == "__main__":
    modules, graph = edges()
    found = cycles(modules, graph)
    for component in found:
        members = set(component)
        print("import cycle among: " + ", ".join(component))
        for m in component:
            print(f"  {m} -> {', '.join(sorted(graph[m] & members))}")
    if found:
        sys.exit(1)
    print(f"{len(modules)} modules, no import cycles")
