"""Settings: defaults, environment and TOML sources, admin-readable validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage.config import Destination, load_settings
from triage.errors import ConfigError


def test_defaults_give_embedded_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'triage.db').resolve()}"
    assert s.broker_url == ""
    assert s.quiet_seconds == 30 and s.max_wait_seconds == 600
    assert [m.name for m in s.ensemble] == [f"gmic-resnet18-{i}" for i in range(1, 6)]


def test_environment_overrides_with_triage_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_AE_TITLE", "MAMMO_AI")
    monkeypatch.setenv("TRIAGE_DICOM_PORT", "4242")
    monkeypatch.setenv("TRIAGE_ALLOWED_CALLING_AETS", "HOLOGIC1, PACS")
    monkeypatch.setenv("TRIAGE_SCREENING_PROCEDURES", "*screen*,MG BIL*")
    s = load_settings()
    assert (s.ae_title, s.dicom_port) == ("MAMMO_AI", 4242)
    assert s.allowed_calling_aets == ["HOLOGIC1", "PACS"]
    assert s.screening_procedures == ["*screen*", "MG BIL*"]


def test_toml_file_named_by_triage_config_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "triage.toml"
    cfg.write_text(
        'ae_title = "FROMTOML"\nquiet_seconds = 12\n'
        '[[ensemble]]\nname = "gmic-resnet18-1"\nweight = 1.0\n'
    )
    monkeypatch.setenv("TRIAGE_CONFIG", str(cfg))
    s = load_settings()
    assert s.ae_title == "FROMTOML" and s.quiet_seconds == 12
    assert [(m.name, m.weight) for m in s.ensemble] == [("gmic-resnet18-1", 1.0)]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"ae_title": "A" * 17}, "TRIAGE_AE_TITLE"),
        ({"ae_title": "BAD\\AE"}, "TRIAGE_AE_TITLE"),
        ({"ae_title": "   "}, "TRIAGE_AE_TITLE"),
        ({"dicom_port": 70000}, "TRIAGE_DICOM_PORT"),
        ({"database_url": "mysql://x/y"}, "TRIAGE_DATABASE_URL"),
        ({"broker_url": "amqp://x"}, "TRIAGE_BROKER_URL"),
        ({"archive": "ORTHANC@host"}, "TRIAGE_ARCHIVE"),
        ({"quiet_seconds": -1}, "TRIAGE_QUIET_SECONDS"),
        ({"device": "gpu"}, "TRIAGE_DEVICE"),
        ({"ensemble": [{"name": "gmic-resnet18-1", "weight": 0.5}]}, "sum to"),
        ({"priorities": [{"name": "HIGH", "min_score": 0.5}]}, "min_score 0"),
    ],
)
def test_invalid_settings_name_the_setting_in_the_error(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**overrides)
    assert fragment in str(err.value)


def test_unwritable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = load_settings(data_dir=blocker / "sub")
    with pytest.raises(ConfigError, match="TRIAGE_DATA_DIR"):
        s.prepare_directories()


def test_masked_settings_hide_database_password() -> None:
    s = load_settings(database_url="postgresql+psycopg://triage:s3cret@db:5432/triage")
    shown = s.masked()
    assert "s3cret" not in str(shown)
    assert shown["database_url"] == "postgresql+psycopg://triage:***@db:5432/triage"


def test_destinations_parse_and_fall_back_per_output_kind() -> None:
    s = load_settings(archive="PACS@10.0.0.5:104,VNA@vna:11112", archive_overlay="VIEW@v:4242")
    assert [str(d) for d in s.destinations("sr")] == ["PACS@10.0.0.5:104", "VNA@vna:11112"]
    assert s.destinations("overlay") == [Destination(ae_title="VIEW", host="v", port=4242)]
