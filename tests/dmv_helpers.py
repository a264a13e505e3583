"""Helpers for DMV-CNN pipeline tests: exam 0 as ExamImages, ensembles with GMIC and DMV-CNN
testing members, and an exam scored through ``process_study`` with the real output stage."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pydicom

from tests.conftest import fixtures_path
from tests.dicom_builders import real_exam0
from triage.config import EnsembleMember, Settings, load_settings
from triage.db import Database, Instance, Study, create_database
from triage.db.migrate import upgrade
from triage.delivery import Publisher
from triage.models import ensure_demo_weights, import_weights
from triage.pipeline import ExamImage, Outcome, load_ensemble, process_study
from triage.vocabulary import ExamStatus, ImageClass, Laterality, View

GMIC_TESTING = "gmic-testing-small"
DMV_TESTING = "dmv-cnn-testing-small"
VIEW_SPLIT_WEIGHTS = "dmv_cnn_view_split_weights_fp16.pt"


def exam_images(paths: list[Path]) -> list[ExamImage]:
    images = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        images.append(ExamImage(sop_instance_uid=str(ds.SOPInstanceUID),
                                sop_class_uid=str(ds.SOPClassUID), path=path,
                                laterality=Laterality(ds.ImageLaterality),
                                view=View(ds.ViewPosition), image_class=ImageClass.FFDM))
    return images


def dmv_testing_settings(tmp: Path, members: dict[str, float], **overrides: object) -> Settings:
    """TRIAGE_TESTING settings on ``tmp``: DMV-CNN image-only members get the fixture
    view-split weights, GMIC testing members seeded demo weights."""
    settings = load_settings(data_dir=tmp / "data", testing=True, allow_uncalibrated=True,
                             device="cpu",
                             ensemble=[EnsembleMember(name=n, weight=w)
                                       for n, w in members.items()], **overrides)
    settings.prepare_directories()
    for name in members:
        if name in (DMV_TESTING, "dmv-cnn-image-only"):
            import_weights(fixtures_path() / VIEW_SPLIT_WEIGHTS, name, settings)
        else:
            ensure_demo_weights(settings, [name])
    return settings


@dataclass
class ScoredStudy:
    settings: Settings
    db: Database
    study_id: int
    study_instance_uid: str
    outcome: Outcome


def score_exam0_study(tmp: Path, members: dict[str, float]) -> ScoredStudy:
    """Exam 0 stored as a queued study (SQLite, embedded default) and scored by
    ``process_study`` with the ``Publisher`` output stage (outputs to the local folder)."""
    settings = dmv_testing_settings(tmp, members)
    paths = real_exam0(tmp)
    upgrade(settings.resolved_database_url)
    db = create_database(settings.resolved_database_url)
    images = exam_images(paths)
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    with db.session() as session:
        study = Study(grouping_key=uid, study_instance_uid=uid, status=ExamStatus.QUEUED.value)
        session.add(study)
        session.flush()
        for image in images:
            data = image.path.read_bytes()
            session.add(Instance(
                study_id=study.id, sop_instance_uid=image.sop_instance_uid,
                sop_class_uid=image.sop_class_uid, image_class=image.image_class.value,
                view=image.view.value, laterality=image.laterality.value, scorable=True,
                chosen=True, path=str(image.path), content_digest=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data)))
        study_id = study.id
    ensemble = load_ensemble(settings)
    outcome = process_study(db, ensemble, study_id, outputs=Publisher(settings))
    return ScoredStudy(settings=settings, db=db, study_id=study_id, study_instance_uid=uid,
                       outcome=outcome)
