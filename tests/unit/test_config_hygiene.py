"""Config hygiene and operator mistakes: a TRIAGE_CONFIG naming no file, TRIAGE_* typos,
where each value came from, every setting documented (docs/settings.md), `triage --version`,
and a message saying what to set (never a traceback) when the database cannot be used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.servers import free_port
from triage import __version__
from triage.cli import app
from triage.cli.settings_doc import DOCS, settings_markdown
from triage.config import Settings, load_settings, setting_sources, unknown_variables
from triage.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper().startswith("TRIAGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# ---- TRIAGE_CONFIG -------------------------------------------------------------------------

def test_a_triage_config_naming_a_missing_file_stops_start_up_naming_it(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = env / "etc" / "triage.toml"
    monkeypatch.setenv("TRIAGE_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2 and str(missing) in result.output
    _no_traceback(result)


def test_a_triage_config_naming_a_directory_stops_start_up(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_CONFIG", str(env))
    with pytest.raises(ConfigError, match="is not a file"):
        load_settings()


def test_a_triage_config_that_is_no_toml_names_the_file(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = env / "bad.toml"
    bad.write_text("quiet_seconds = = 3\n")
    monkeypatch.setenv("TRIAGE_CONFIG", str(bad))
    with pytest.raises(ConfigError, match=str(bad)):
        load_settings()


def test_an_unknown_key_in_the_triage_config_file_is_named_with_its_close_match(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = env / "triage.toml"
    config.write_text("quiet_second = 3\n")
    monkeypatch.setenv("TRIAGE_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"unknown key 'quiet_second' in .*triage.toml "
                                          r"\(did you mean 'quiet_seconds'\?\)"):
        load_settings()


# ---- unknown TRIAGE_* variables -------------------------------------------------------------

def test_an_unknown_triage_variable_is_reported_with_its_close_matches(env: Path) -> None:
    found = unknown_variables({"TRIAGE_QUIET_SECOND": "5", "TRIAGE_QUIET_SECONDS": "5",
                               "TRIAGE_CONFIG": "x", "TRIAGE_FIXTURES": "y", "HOME": "/root",
                               "TRIAGE_NOTHING_LIKE_IT": "1"})
    assert found == {"TRIAGE_NOTHING_LIKE_IT": [],
                     "TRIAGE_QUIET_SECOND": ["TRIAGE_QUIET_SECONDS"]}


def test_every_command_warns_about_a_typo_and_config_show_lists_it_under_unknown(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_QUIET_SECOND", "5")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert "warning: TRIAGE_QUIET_SECOND is not a triage setting" in result.stderr
    assert "did you mean TRIAGE_QUIET_SECONDS?" in result.stderr
    shown = json.loads(result.stdout)
    assert shown["unknown"] == {"TRIAGE_QUIET_SECOND": {"did_you_mean": ["TRIAGE_QUIET_SECONDS"]}}
    assert shown["quiet_seconds"] == 30.0  # the typo changed nothing


# ---- where each value came from ----------------------------------------------------------

def test_config_show_says_where_each_value_came_from(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = env / "triage.toml"
    config.write_text('ae_title = "FROMFILE"\nquiet_seconds = 7\n')
    monkeypatch.setenv("TRIAGE_CONFIG", str(config))
    monkeypatch.setenv("TRIAGE_QUIET_SECONDS", "9")  # the environment wins over the file
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["ae_title"] == "FROMFILE" and shown["quiet_seconds"] == 9.0
    assert shown["sources"]["ae_title"] == "config file"
    assert shown["sources"]["quiet_seconds"] == "environment"
    assert shown["sources"]["data_dir"] == "environment"
    assert shown["sources"]["dicom_port"] == "default"
    assert shown["config_file"] == str(config)


def test_setting_sources_names_keyword_arguments_too(env: Path) -> None:
    settings = load_settings(tta_samples=3)
    sources = setting_sources(settings, {"TRIAGE_DATA_DIR": "x"})
    assert sources["tta_samples"] == "argument" and sources["device"] == "default"


# ---- docs/settings.md ----------------------------------------------------------------------

def test_every_setting_is_documented_with_its_format() -> None:
    fields = list(Settings.model_fields)
    assert [f for f in fields if f not in DOCS] == [], "document it in triage/cli/settings_doc.py"
    assert [d for d in DOCS if d not in fields] == [], "a documented setting no longer exists"
    assert all(fmt.strip() and meaning.strip() for fmt, meaning in DOCS.values())


def test_docs_settings_md_is_the_generated_page() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == settings_markdown(), "run `triage config docs > docs/settings.md`"
    for name in Settings.model_fields:
        assert f"`TRIAGE_{name.upper()}`" in page
    assert "`TRIAGE_DEMO`" in page and "TRIAGE_MIN_FREE_SPOOL_MB" in page


def test_config_docs_prints_the_page(env: Path) -> None:
    result = runner.invoke(app, ["config", "docs"])
    assert result.exit_code == 0 and result.stdout == settings_markdown()


# ---- --version -----------------------------------------------------------------------------

def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"triage {__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__


# ---- operator mistakes: what to set, never a traceback ---------------------------------------

def test_a_missing_database_says_what_to_set(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_DATABASE_URL", f"sqlite:///{env / 'no-such-dir' / 'triage.db'}")
    for command in (["worklist"], ["exams", "list"], ["outbox", "list"], ["scores", "history"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, (command, result.output)
        assert "TRIAGE_DATA_DIR" in result.stderr and "triage db upgrade" in result.stderr
        _no_traceback(result)


def test_a_database_without_the_schema_says_to_run_db_upgrade(env: Path) -> None:
    (env / "data").mkdir()
    result = runner.invoke(app, ["worklist"])
    assert result.exit_code == 1 and "run `triage db upgrade`" in result.stderr
    _no_traceback(result)


def test_a_read_only_database_says_so(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    path = env / "data" / "triage.db"
    monkeypatch.setenv("TRIAGE_DATABASE_URL", f"sqlite:///file:{path}?mode=ro&uri=true")
    result = runner.invoke(app, ["tokens", "create", "--role", "viewer", "--name", "x"])
    assert result.exit_code == 1 and "read-only" in result.stderr
    assert "TRIAGE_DATABASE_URL" in result.stderr
    _no_traceback(result)


def test_an_unwritable_data_dir_says_what_to_set(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() == 0:  # root writes through permissions: use a directory nobody can create
        data = Path("/proc/self/triage-data")
    else:
        (env / "ro").mkdir()
        (env / "ro").chmod(0o555)
        data = env / "ro" / "data"
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(data))
    for command in (["db", "upgrade"], ["worklist"], ["score-folder", str(env)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, (command, result.output)
        assert "TRIAGE_DATA_DIR" in result.stderr
        _no_traceback(result)


def test_an_unwritable_log_file_says_what_to_set(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_LOG_FILE", "/proc/self/no-such-dir/triage.jsonl")
    result = runner.invoke(app, ["score-folder", str(env)])
    assert result.exit_code == 2 and "TRIAGE_LOG_FILE" in result.stderr
    _no_traceback(result)


def _triage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("TRIAGE_")}
    return subprocess.run([str(Path(sys.executable).parent / "triage"), *args],
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_in_a_real_process_database_mistakes_print_one_error_line_and_no_traceback(
    env: Path
) -> None:
    refused = f"postgresql+psycopg://triage:hunter2@127.0.0.1:{free_port()}/triage"
    for url, hint in ((refused, "TRIAGE_DATABASE_URL"),
                      (f"sqlite:///{env / 'nowhere' / 'triage.db'}", "TRIAGE_DATA_DIR")):
        done = _triage("worklist", TRIAGE_DATABASE_URL=url)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and hint in done.stderr
        assert done.stderr.startswith("error: ") and "hunter2" not in done.stderr
