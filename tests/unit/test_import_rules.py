"""DESIGN.md "Who may import whom", checked on the source of triage/ and workers/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = {"config", "errors", "vocabulary", "results", "logs"}
LIBRARY = BASE | {"models", "imaging", "dicom", "exams", "scoring", "outputs", "db",
                  "synthetic", "validation", "pipeline", "drift"}

#: layer -> project layers it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "config": {"errors"},
    "errors": set(),
    "vocabulary": set(),
    "results": {"vocabulary"},
    "logs": set(),
    "models": BASE,
    "imaging": BASE,
    # the network and files; never the exam logic (the service binds the listener to it)
    "dicom": BASE | {"db"},
    "exams": BASE | {"db", "dicom"},
    "scoring": BASE,
    "drift": BASE,
    "outputs": BASE,
    "db": BASE,
    "synthetic": BASE,
    "validation": BASE | {"imaging", "models"},
    "pipeline": LIBRARY,
    "dispatch": LIBRARY,
    "delivery": LIBRARY,
    "batch": LIBRARY | {"dispatch"},
    "api": LIBRARY,  # a face: any library module (DESIGN.md), no logic of its own
    # the command line is the composition root: every library layer and the workers
    "cli": LIBRARY | {"workers", "api", "service", "dispatch", "delivery", "batch"},
    "service": LIBRARY | {"api", "workers", "dispatch", "delivery"},
    "workers": BASE | {"pipeline", "db", "dicom", "dispatch", "delivery"},
}
#: third-party packages a layer must never import
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "models": {"pydicom", "pynetdicom", "sqlalchemy", "celery"},
    "imaging": {"sqlalchemy", "pynetdicom", "celery"},
    "dicom": {"torch"},
    "exams": {"torch", "pynetdicom", "celery"},
    "scoring": {"torch", "pydicom", "sqlalchemy"},
    "drift": {"torch", "pydicom", "sqlalchemy"},
    "outputs": {"torch", "sqlalchemy", "pynetdicom"},
    "db": {"torch", "pynetdicom", "pydicom"},
    "config": {"torch", "sqlalchemy", "pydicom"},
    "results": {"torch", "sqlalchemy", "pydicom"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "workers":
        return "workers"
    name = rel.parts[1]
    return name.removesuffix(".py")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


SOURCES = sorted(p for p in (ROOT / "triage").rglob("*.py") if p.name != "__init__.py" or
                 p.parent != ROOT / "triage") + sorted((ROOT / "workers").rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_what_its_layer_may(path: Path) -> None:
    layer = _layer(path)
    assert layer in ALLOWED, f"{path}: layer {layer!r} is not in the import-rules table"
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "triage":
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else "triage"
            if target == "triage":  # the root package holds only __version__
                assert not (ROOT / "triage" / "__init__.py").read_text().count("\nimport "), (
                    "triage/__init__.py must stay import-free")
                continue
            assert target == layer or target in ALLOWED[layer], (
                f"{path.relative_to(ROOT)} ({layer}) imports {name}: not allowed by DESIGN.md"
            )
        elif top == "workers":
            assert layer in ("cli", "workers", "service"), f"{path}: only the CLI imports workers"
        else:
            assert top not in FORBIDDEN_THIRD_PARTY.get(layer, set()), (
                f"{path.relative_to(ROOT)} ({layer}) imports {top}"
            )


def test_rules_table_rejects_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself can fail: a models module importing the DB is caught."""
    bad = ROOT / "triage" / "models"
    assert "db" not in ALLOWED["models"]
    assert "torch" in FORBIDDEN_THIRD_PARTY["outputs"]
    assert _layer(bad / "x.py") == "models"
    sample = tmp_path / "m.py"
    sample.write_text("from triage.db import Study\nimport torch\n")
    assert _imports(sample) == {"triage.db", "torch"}


def test_rules_table_keeps_the_exam_logic_out_of_the_network_layer() -> None:
    """DESIGN.md: ``dicom`` never imports ``exams``; ``exams`` never imports torch."""
    assert "exams" not in ALLOWED["dicom"]
    assert "dicom" in ALLOWED["exams"]
    assert "torch" in FORBIDDEN_THIRD_PARTY["exams"]
    assert (ROOT / "triage" / "exams").is_dir()
    assert not (ROOT / "triage" / "dicom" / "assembly.py").exists()
