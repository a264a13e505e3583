"""Shared scaffolding of the member pipeline tests: settings with one testing member and
its seeded demo weights, and a synthetic four-view exam as the pipeline's ``ExamImage``s."""

from __future__ import annotations

from pathlib import Path

import pydicom

from triage.config import EnsembleMember, Settings, load_settings
from triage.models import ensure_demo_weights
from triage.pipeline import ExamImage
from triage.synthetic import ExamSpec, generate_exam
from triage.vocabulary import ImageClass, Laterality, View


def member_settings(tmp: Path, member: str, **overrides: object) -> Settings:
    """TRIAGE_TESTING settings whose ensemble is ``member`` alone, with demo weights made."""
    s = load_settings(data_dir=tmp / "data", testing=True, allow_uncalibrated=True, device="cpu",
                      ensemble=[EnsembleMember(name=member, weight=1.0)], **overrides)
    s.prepare_directories()
    ensure_demo_weights(s, [member])
    return s


def synthetic_exam_images(out_dir: Path, seed: int) -> list[ExamImage]:
    """A synthetic FFDM exam with a lesion at 1/4 matrix size, as the pipeline sees it."""
    summary = generate_exam(ExamSpec(seed=seed, scale=0.25, lesion=True), out_dir)
    images = []
    for path in summary.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        images.append(ExamImage(str(ds.SOPInstanceUID), str(ds.SOPClassUID), Path(path),
                                Laterality(ds.ImageLaterality), View(ds.ViewPosition),
                                ImageClass.FFDM))
    return images
