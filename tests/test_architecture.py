"""The layout holds: no import cycle between kdcore's parts, none that runs back up a floor, no function over 80 lines."""
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import import_graph  # noqa: E402


def test_kdcores_parts_import_no_cycle_and_nothing_from_a_floor_above():
    graph = import_graph.edges()
    assert import_graph.cycles(graph) == []
    assert [(a, b) for a, b, _ in import_graph.upward(graph)] == []


def test_no_function_in_kdcore_is_over_80_lines():
    long = []
    for path in sorted((ROOT / "kdcore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_phase_names_and_weights_files_are_spelled_in_kdcore_record_alone():
    """A teacher phase's name (teacher2, …) and a weights file's name ("….pt") are written out in kdcore/record/ only:
    everything else asks it (teacher_phase, is_teacher, RunFolder), so the rules cannot drift apart."""
    spelled = re.compile(r'\.pt"|teacher\d')
    found = []
    for folder in ("kdcore", "ui", "pages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(ROOT / "kdcore" / "record"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if spelled.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    found += [f"app.py: {line.strip()}" for line in (ROOT / "app.py").read_text().splitlines() if spelled.search(line)]
    assert not found, "\n".join(found)
