#!/usr/bin/env python3
"""Reports import cycles between the top-level modules of src/ (issue 12's check).

A module is a file src/NAME.rs or a folder src/NAME/. Every `crate::NAME` path in a module's
non-test code (use declarations and inline paths alike) is an edge NAME_FROM -> NAME. Test code
(`#[cfg(test)] mod tests { ... }` at the end of a file, or files named tests.rs) is left out:
tests may reach anywhere. Prints the graph with --graph; exits 1 listing each cycle found.

    python3 scripts/module-cycles.py [--graph]
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` groups name several modules at once.
GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def non_test(text: str) -> str:
    cut = text.find("#[cfg(test)]\nmod tests")
    return text if cut < 0 else text[:cut]


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".rs")


def edges():
    graph = {}
    for path in sorted(SRC.rglob("*.rs")):
        if path.name in ("main.rs", "lib.rs") and path.parent == SRC:
            continue
        if path.name == "tests.rs":
            continue
        here = module_of(path)
        text = non_test(path.read_text())
        targets = set(PATH.findall(text))
        for group in GROUP.findall(text):
            targets.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        graph.setdefault(here, set()).update(t for t in targets if t != here)
    return graph


def cycles(graph):
    """Each elementary cycle once, by depth-first search from each node in order."""
    found, nodes = [], sorted(graph)
    for start in nodes:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    found.append(path + [start])
                elif nxt not in path and nxt > start:
                    stack.append((nxt, path + [nxt]))
    return found


def main():
    graph = edges()
    if "--graph" in sys.argv:
        for node in sorted(graph):
            print(f"{node} -> {', '.join(sorted(graph[node])) or '(nothing)'}")
    found = cycles(graph)
    for cycle in found:
        print("cycle: " + " -> ".join(cycle))
    print(f"{len(graph)} modules, {sum(len(v) for v in graph.values())} edges, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
