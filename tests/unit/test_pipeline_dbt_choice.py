"""A DBT view sent both as 1 mm slices and as slabs is scored on the thin slices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom

from triage.config import Settings
from triage.db import Database
from triage.dicom.classify import classify_instance
from triage.dicom.records import StoredObject
from triage.dicom.spool import dataset_digest
from triage.exams import record_instance
from triage.pipeline import chosen_images
from triage.synthetic.builders import ExamSpec
from triage.synthetic.dbt import generate_dbt_exam
from triage.vocabulary import ImageClass

T0 = datetime.now(UTC)


def _ingest(db: Database, settings: Settings, paths: list[Path]) -> int:
    study_id = -1
    for i, path in enumerate(paths):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        digest, _ = dataset_digest(path)
        stored = StoredObject(path=path, raw_digest=digest, size_bytes=path.stat().st_size,
                              transfer_syntax_uid=str(pydicom.dcmread(path).file_meta
                                                      .TransferSyntaxUID))
        now = T0 + timedelta(seconds=i)
        with db.session() as session:
            outcome = record_instance(session, settings, header, stored,
                                      classify_instance(header, settings, now=now),
                                      association_id=None, calling_ae="MODALITY", now=now)
        study_id = outcome.study_id
    return study_id


def test_thin_slices_are_scored_when_slabs_of_the_same_view_arrive_later(
        sqlite_db: Database, settings: Settings, tmp_path: Path) -> None:
    summary = generate_dbt_exam(ExamSpec(seed=3, scale=0.125), tmp_path / "exam", slices=6,
                                slab_thickness_mm=3.0)
    thin = [i for i in summary.instances if i.slab_thickness_mm is None]
    slabs = [i for i in summary.instances if i.slab_thickness_mm is not None]
    assert len(thin) == len(slabs) == 4
    # slabs last: the assembly's "latest" rule alone would choose them
    study_id = _ingest(sqlite_db, settings, [i.path for i in thin + slabs])
    images = chosen_images(sqlite_db, study_id)
    assert all(img.image_class is ImageClass.DBT for img in images)
    assert sorted(img.sop_instance_uid for img in images) == sorted(
        i.sop_instance_uid for i in thin)


def test_slabs_are_scored_when_a_view_has_no_thin_slices(
        sqlite_db: Database, settings: Settings, tmp_path: Path) -> None:
    summary = generate_dbt_exam(ExamSpec(seed=4, scale=0.125), tmp_path / "exam", slices=6,
                                slab_thickness_mm=3.0)
    thin = [i for i in summary.instances if i.slab_thickness_mm is None]
    slabs = [i for i in summary.instances if i.slab_thickness_mm is not None]
    kept_thin = [i for i in thin if not (i.laterality == "L" and i.view == "CC")]
    study_id = _ingest(sqlite_db, settings, [i.path for i in kept_thin + slabs])
    scored = {(img.laterality.value, img.view.value): img.sop_instance_uid
              for img in chosen_images(sqlite_db, study_id)}
    slab_lcc = next(i for i in slabs if i.laterality == "L" and i.view == "CC")
    assert scored[("L", "CC")] == slab_lcc.sop_instance_uid
    assert {uid for key, uid in scored.items() if key != ("L", "CC")} == {
        i.sop_instance_uid for i in kept_thin}
