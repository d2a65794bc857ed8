"""The one dependency rule, read from the code: `storage` is the ground floor; `curation` and `gadms_model` build
on it and never import each other; `flows` wires everything (and holds the `gadms` command). Only `flows`
imports Prefect. Inside `gadms_model`, training may use evaluation, never the other way round.

Imports inside functions count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "curation", "gadms_model", "flows")
ALLOWED = {
    "storage": {"storage"},
    "curation": {"storage", "curation"},
    "gadms_model": {"storage", "gadms_model"},
    "flows": set(PACKAGES),
}
FLOWS_ONLY = {"prefect", "prefect_ray"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: relative import (the rule is checked on absolute names)")
    return found


def layer_violations(package: str) -> list[str]:
    problems = []
    for path in sorted((REPO / package).rglob("*.py")):
        where = path.relative_to(REPO)
        in_training = where.parts[:2] == ("gadms_model", "training")
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[package]:
                problems.append(f"{where}:{line}: {package} imports {module}")
            if top in FLOWS_ONLY and package != "flows":
                problems.append(f"{where}:{line}: stage code imports {module} (only flows may)")
            if module.startswith("gadms_model.training") and package == "gadms_model" and not in_training:
                problems.append(f"{where}:{line}: imports {module} (training builds on the model package)")
    return problems


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    assert layer_violations(package) == []


def test_the_rule_catches_a_lazy_cross_import(tmp_path, monkeypatch):
    """The check itself: an import inside a function of curation that reaches into gadms_model is reported."""
    (tmp_path / "curation").mkdir()
    (tmp_path / "curation" / "stage.py").write_text(
        "import json\n\ndef run():\n    from gadms_model.model import build_model\n    import prefect\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert layer_violations("curation") == [
        "curation/stage.py:4: curation imports gadms_model.model",
        "curation/stage.py:5: stage code imports prefect (only flows may)",
    ]
