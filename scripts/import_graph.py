"""The import graph of kdcore's parts: cycles, and imports that run back up the floors.

    python scripts/import_graph.py            # the summary, as in docs/architecture.md
    python scripts/import_graph.py --edges    # every edge between parts, with the files that make it

A part is a package (kdcore/engine) or a top-level module (kdcore/config.py). Imports inside functions count:
they are deferred, not absent. Exit status 1 when there is a cycle.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a part may import parts on its own floor or below. An import of a higher floor runs back up.
FLOORS = [
    ("ground", ["record", "text", "inputs", "stats", "spans", "registry", "cpu_load"]),
    ("schema", ["config"]),
    ("parts of a run", ["data", "models", "losses", "distill", "configure"]),
    ("measures", ["latency", "analysis", "charts"]),
    ("engine", ["engine", "experiments", "export"]),
    ("record keeping", ["store"]),
    ("execution", ["checks", "jobs", "studies"]),
    ("faces", ["report", "cli", "__main__", "__init__"]),
]
FLOOR_OF = {part: level for level, (_, parts) in enumerate(FLOORS) for part in parts}


def part_of(module: str) -> str | None:
    names = module.split(".")
    if names[0] != "kdcore":
        return None
    return names[1] if len(names) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names = names[:-1] if len(names) > 1 else names
    return ".".join(names)


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.append(node.module)
    return found


def edges(root: Path = ROOT / "kdcore") -> dict[tuple[str, str], set[str]]:
    graph: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        source = part_of(module_name(path))
        for target in filter(None, map(part_of, imports(path))):
            if target != source and target != "__init__":
                graph[(source, target)].add(str(path.relative_to(ROOT)))
    return graph


def cycles(graph) -> list[list[str]]:
    """Strongly connected parts of more than one (Tarjan)."""
    nodes = sorted({n for edge in graph for n in edge})
    out = defaultdict(list)
    for a, b in graph:
        out[a].append(b)
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for nxt in out[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in nodes:
        if node not in index:
            visit(node)
    return found


def upward(graph) -> list[tuple[str, str, set[str]]]:
    unknown = sorted({n for edge in graph for n in edge if n not in FLOOR_OF})
    if unknown:
        raise SystemExit(f"parts with no floor in FLOORS: {', '.join(unknown)}")
    return [(a, b, files) for (a, b), files in sorted(graph.items()) if FLOOR_OF[b] > FLOOR_OF[a]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="list every edge between parts")
    args = parser.parse_args()
    graph = edges()
    if args.edges:
        for (a, b), files in sorted(graph.items()):
            print(f"{a} -> {b}: {', '.join(sorted(files))}")
        return 0
    found, up = cycles(graph), upward(graph)
    print("floors, lowest first:")
    for level, (name, parts) in enumerate(FLOORS):
        print(f"  {level} {name}: {', '.join(parts)}")
    print(f"{len(graph)} edges between {len({n for e in graph for n in e})} parts")
    print(f"cycles: {len(found)}")
    for group in found:
        print(f"  {' <-> '.join(group)}")
    print(f"imports that run back up: {len(up)}")
    for a, b, files in up:
        print(f"  {a} -> {b} ({', '.join(sorted(files))})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
