"""The codebase's own rules (docs/testing.md, "Codebase rules"): short functions, no measurements or history in jconv/, no
import cycles broken inside functions, a short README, and a rule table whose evidence is written down."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from jconv import dispatch, lowerings

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = sorted((ROOT / "jconv").rglob("*.py"))
MAX_FUNCTION_LINES = 80


def _functions(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", PACKAGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short(path):
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in _functions(path)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("path", PACKAGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_jconv_imports_inside_functions(path):
    """Import cycles are broken by structure (jconv.lowerings.lower_inner), not by deferred imports."""
    deferred = [f"{f.name}: line {node.lineno}" for f in _functions(path) for node in ast.walk(f)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jconv")
                or isinstance(node, ast.Import) and any(a.name.startswith("jconv") for a in node.names)]
    assert not deferred, f"{path.name}: jconv imported inside functions: {deferred}"


# Measurements, machines and history belong in benchmarks/results/ and docs/, and in git.
HISTORY = re.compile(
    r"\b20\d\d-\d\d-\d\d\b|EPYC|Xeon|\bH100\b|\bissue #?\d+|\.\./shared|\b(?:commit|at) [0-9a-f]{7,40}\b"
    r"|\bdevelopment probe|\b\d+(?:\.\d+)? ms\b", re.IGNORECASE)


@pytest.mark.parametrize("path", PACKAGE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_measurements_or_history_in_the_package(path):
    hits = [f"line {i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if HISTORY.search(line)]
    assert not hits, f"{path.name}: move these to docs/ or benchmarks/results/: {hits}"


def test_platform_is_read_from_the_spec():
    """What a lowering does per platform follows the platform it is lowered for (common.target_platform, part of
    the spec), not the process's default backend: otherwise exporting for another platform bakes this one in."""
    hits = [f"{path.name}:{i}" for path in PACKAGE for i, line in enumerate(path.read_text().splitlines(), 1)
            if "default_backend()" in line and path.name != "common.py"]
    assert not hits, hits


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; details go in docs/"


def test_every_rule_has_written_evidence():
    """Each auto rule's lowering has a row in docs/lowerings.md's rule table and a section of its own."""
    text = (ROOT / "docs" / "lowerings.md").read_text()
    table = text.split("## Auto's rules", 1)[1].split("\n## ", 1)[0]
    for rule in dispatch.RULES:
        assert re.search(rf"^\| [^|]* \| {rule.lowering} \|", table, re.MULTILINE), rule.lowering
    for name in lowerings.NAMES:
        assert re.search(rf"^## {name}\b", text, re.MULTILINE), f"docs/lowerings.md has no section for {name}"


def test_docs_links_resolve():
    """Every relative link and every docs/... path named in the README, docs/ and jconv/ exists."""
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *PACKAGE]
    missing = []
    for source in sources:
        text = source.read_text()
        links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text) if source.suffix == ".md" else []
        for target in links:
            if not (source.parent / target).exists():
                missing.append(f"{source.name} -> {target}")
        for target in re.findall(r"\b((?:docs|benchmarks/results)/[\w./-]+\.(?:md|json|png))", text):
            if not (ROOT / target).exists():
                missing.append(f"{source.name} -> {target}")
    assert not missing, missing
