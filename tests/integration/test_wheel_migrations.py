"""The built wheel ships the Alembic migrations: `pip install .` then `triage db upgrade`
works without the checkout (the container image relies on it).

The wheel is built from a copy of the working tree (tracked and untracked, not ignored,
files), so a stale ``build/`` in the checkout cannot leak into it, and installed into a
fresh venv made without pip. The product's dependencies come from this interpreter's
site-packages through a ``.pth`` line placed after the wheel's own site-packages; the
``.pth`` files there (the editable install's finder among them) are not processed, so the
repository cannot be imported: the test asserts the ``triage`` module came from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

_IGNORED = shutil.ignore_patterns(".git", ".venv", "triage-data", "build", "dist", "*.egg-info",
                                  "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")


def _snapshot(dest: Path) -> Path:
    """Copy the files a build would see: git's tracked + untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            capture_output=True) if shutil.which("git") else None
    if listed is None or listed.returncode != 0:  # not a git checkout (e.g. an sdist)
        shutil.copytree(REPO_ROOT, dest, ignore=_IGNORED)
        return dest
    for name in filter(None, listed.stdout.decode().split("\0")):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _run(args: list[str | Path], cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = _snapshot(root / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-index", "--no-deps",
          "--no-build-isolation", "-w", root / "dist", src])
    (built,) = (root / "dist").glob("triage-*.whl")
    return built


def test_wheel_carries_the_migrations_inside_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = sorted(p.name for p in (REPO_ROOT / "migrations" / "versions").glob("*.py"))
    assert versions
    assert {"triage/_migrations/env.py", "triage/_migrations/script.py.mako"} <= names
    assert {f"triage/_migrations/versions/{v}" for v in versions} <= names
    assert not [n for n in names if n.startswith("migrations/")], "no top-level package 'migrations'"


def test_installed_wheel_upgrades_a_sqlite_database(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index",
          "--no-deps", wheel])
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                .stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "zz_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")

    work = tmp_path / "elsewhere"  # a cwd outside the repository
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_") and k != "PYTHONPATH"}
    db_file = work / "wheel.db"
    env.update(TRIAGE_DATA_DIR=str(work / "data"), TRIAGE_DATABASE_URL=f"sqlite:///{db_file}")

    upgraded = _run([venv / "bin" / "triage", "db", "upgrade"], cwd=work, env=env)
    assert "database at revision" in upgraded.stdout

    probe = _run([python, "-c", (
        "import json, sys, triage\n"
        "from triage.db.migrate import migrations_dir\n"
        "from triage.db.models import Base\n"
        "print(json.dumps({'triage': triage.__file__, 'migrations': str(migrations_dir()),\n"
        "                  'tables': sorted(Base.metadata.tables), 'path': sys.path}))\n")],
        cwd=work, env=env)
    seen = json.loads(probe.stdout)
    package = Path(seen["triage"]).parent
    assert package == site / "triage", f"triage imported from {package}, not from the wheel"
    assert REPO_ROOT not in Path(seen["triage"]).parents
    assert str(REPO_ROOT) not in seen["path"]
    assert Path(seen["migrations"]) == site / "triage" / "_migrations"

    with sqlite3.connect(db_file) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert set(seen["tables"]) and set(seen["tables"]) <= tables
    assert len(revision) == 1 and revision[0][0] in upgraded.stdout
