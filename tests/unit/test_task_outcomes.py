"""What ends a scoring is recorded as what it was (``process_study`` on SQLite, reduced-
resolution test member): skipped when nothing is scorable, the true reason of an output or
missing-file error, a transient error released without counting a worker loss, and a live
owner keeping its exam against a second delivery."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from triage.config import EnsembleMember, Settings, load_settings
from triage.db import Database, Instance, ScoringRun, Study, create_database
from triage.db.migrate import upgrade
from triage.errors import StorageError, TransientError
from triage.models import ensure_demo_weights
from triage.pipeline import Outcome, claim, load_ensemble, process_study
from triage.pipeline.task import holder_id, owner_alive
from triage.synthetic import ExamSpec, generate_exam
from triage.vocabulary import ExamStatus

MEMBER = "gmic-testing-small"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("task")
    s = load_settings(data_dir=tmp / "data", testing=True, allow_uncalibrated=True, device="cpu",
                      ensemble=[EnsembleMember(name=MEMBER, weight=1.0)])
    s.prepare_directories()
    ensure_demo_weights(s, [MEMBER])
    return s


@pytest.fixture(scope="module")
def ensemble(settings: Settings) -> Any:
    return load_ensemble(settings)


@pytest.fixture
def db(settings: Settings, tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'triage.db'}"
    upgrade(url)
    return create_database(url)


def _queued_exam(db: Database, files: list[Path], image_class: str = "ffdm") -> int:
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with db.session() as session:
        study = Study(grouping_key=uid, study_instance_uid=uid, status=ExamStatus.QUEUED.value)
        session.add(study)
        session.flush()
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            data = path.read_bytes()
            session.add(Instance(
                study_id=study.id, sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID), image_class=image_class,
                view=str(ds.ViewPosition), laterality=str(ds.ImageLaterality), scorable=True,
                chosen=True, path=str(path), content_digest=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data)))
        return study.id


@pytest.fixture(scope="module")
def exam_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    summary = generate_exam(ExamSpec(seed=3, scale=0.25), tmp_path_factory.mktemp("exam"))
    return [Path(p) for p in summary.files]


def _study(db: Database, study_id: int) -> Study:
    with db.session() as session:
        study = session.get(Study, study_id)
        assert study is not None
        session.expunge(study)
        return study


def test_exam_with_no_image_any_member_scores_is_skipped_not_failed(
    db: Database, ensemble: Any, exam_files: list[Path]
) -> None:
    study_id = _queued_exam(db, exam_files, image_class="dbt")  # FFDM-only ensemble
    assert process_study(db, ensemble, study_id) is Outcome.SKIPPED
    study = _study(db, study_id)
    assert study.status == ExamStatus.SKIPPED.value
    assert study.skip_reason and "no image the ensemble's members score" in study.skip_reason


def test_a_missing_spool_file_is_recorded_as_such_not_as_worker_loss(
    db: Database, ensemble: Any, exam_files: list[Path], tmp_path: Path
) -> None:
    copies = []
    for path in exam_files:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    study_id = _queued_exam(db, copies)
    for copy in copies:
        copy.unlink()
    assert process_study(db, ensemble, study_id) is Outcome.FAILED
    study = _study(db, study_id)
    assert study.status == "failed" and study.worker_losses == 0
    assert study.failure_reason and "worker lost" not in study.failure_reason
    assert "No such file" in study.failure_reason or "missing file" in study.failure_reason


class _BrokenOutputs:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def prepare(self, db: Database, study_id: int, result: Any) -> list[Any]:
        raise self.error

    def record(self, *args: Any) -> int:
        return 0

    def after_commit(self, *args: Any) -> None:
        pass


def test_an_output_error_is_recorded_with_its_text_and_a_failed_run(
    db: Database, ensemble: Any, exam_files: list[Path]
) -> None:
    study_id = _queued_exam(db, exam_files)
    outputs = _BrokenOutputs(StorageError("cannot write output x.dcm: No space left on device"))
    assert process_study(db, ensemble, study_id, outputs) is Outcome.FAILED
    study = _study(db, study_id)
    assert study.failure_reason == ("building the outputs: StorageError: cannot write output "
                                    "x.dcm: No space left on device")
    with db.session() as session:
        runs = session.scalars(select(ScoringRun).where(ScoringRun.study_id == study_id)).all()
        assert [(r.status, r.error) for r in runs] == [("failed", study.failure_reason)]


def test_a_transient_error_releases_the_exam_and_the_retry_is_not_a_worker_loss(
    db: Database, ensemble: Any, exam_files: list[Path]
) -> None:
    study_id = _queued_exam(db, exam_files)
    down = OperationalError("INSERT ...", {}, Exception("connection refused"))
    with pytest.raises(TransientError):
        process_study(db, ensemble, study_id, _BrokenOutputs(down))
    study = _study(db, study_id)
    assert study.status == "scoring" and study.scoring_owner is None
    assert (study.transient_retries, study.worker_losses) == (1, 0)
    # another worker takes it over without counting a loss, and scores it
    assert process_study(db, ensemble, study_id) is Outcome.SCORED
    study = _study(db, study_id)
    assert study.status == "scored" and study.worker_losses == 0 and study.scoring_attempts == 2


def test_a_live_owner_keeps_its_exam_and_a_dead_one_counts_as_a_worker_loss(
    db: Database, exam_files: list[Path]
) -> None:
    study_id = _queued_exam(db, exam_files)
    assert claim(db, study_id, holder="scoring-host:1:aaaa") is not None
    # another host's owner with a fresh heartbeat: the second delivery is dropped
    assert claim(db, study_id, holder="other:2:bbbb") is None
    assert _study(db, study_id).worker_losses == 0
    # its heartbeat stops: the next delivery takes it over and counts one loss
    again = claim(db, study_id, holder="other:2:bbbb", owner_timeout=0.0)
    assert again is not None and again.holder == "other:2:bbbb"
    study = _study(db, study_id)
    assert (study.worker_losses, study.scoring_owner) == (1, "other:2:bbbb")


def test_an_owner_process_that_died_on_this_host_is_gone_at_once() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    host = holder_id().split(":")[0]
    assert owner_alive(holder_id(), now, now)
    dead_pid = 2 ** 22 + 7  # above the default pid_max
    with pytest.raises(ProcessLookupError):
        os.kill(dead_pid, 0)
    assert not owner_alive(f"{host}:{dead_pid}:abcd", now, now)
    assert not owner_alive(None, now, now)
