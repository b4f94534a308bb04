"""The house's seams: the import layers hold, and the modules ingestion's tasks import stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_layers_hold():
    """pyproject.toml's import-linter contracts (CI runs `lint-imports` too)."""
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module", ["pipelines.ingest", "pipelines.config", "deployments.config"])
def test_ingestion_and_config_modules_import_no_heavy_stack(module):
    """Every read task of a job imports pipelines.ingest: LanceDB (3.5 s) or torch there slows every job."""
    code = (f"import sys, {module}; heavy = [m for m in ('lancedb', 'torch', 'transformers', 'diffusers') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


PROJECT = ("models", "storage", "pipelines", "deployments")


def import_cycles(graph) -> list[list[str]]:
    """The strongly connected groups of two or more modules in an import graph (Tarjan's algorithm)."""
    adjacent = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in adjacent.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in adjacent:
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycle_between_project_modules():
    """Any circle of imports (at module top or inside a function: grimp sees both) fails, with its modules named."""
    import grimp

    graph = grimp.build_graph(*PROJECT, include_external_packages=False)
    assert len(graph.modules) > 50  # the whole project was read
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    import grimp

    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.y", imported="a.z")
    assert import_cycles(graph) == [["a.x", "a.y"]]


def test_no_source_file_over_450_lines_and_no_class_over_250():
    """Files and classes a reader can hold (issue 27): the kit's builders and benchmarks/ are exempt."""
    import ast

    too_big = []
    for package in PROJECT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "kit" in path.relative_to(ROOT).parts:
                continue
            text = path.read_text()
            if text.count("\n") > 450:
                too_big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                    too_big.append(f"{path.relative_to(ROOT)}: class {node.name}, {node.end_lineno - node.lineno + 1} lines")
    assert too_big == []
