"""Wrap grayscale PNG mammograms (e.g. research data sets) as DICOM mammograms.

Pixel values are kept exactly; Bits Stored follows the largest value (12 at least).
The PNGs are expected in the hung orientation (left breasts facing right, right breasts
facing left), as the public research samples are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset

from triage.errors import DecodeError
from triage.synthetic.builders import build_view
from triage.synthetic.specs import ExamSpec, ViewSpec
from triage.synthetic.views import MammoView
from triage.vocabulary import Laterality, View


def read_png(path: Path) -> np.ndarray:
    """A grayscale PNG as an unsigned integer array, unchanged (8 or 16 bit)."""
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise DecodeError(f"cannot read image {path}: missing or not a PNG/image file")
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise DecodeError(
            f"{path} is not a single-channel 8/16-bit grayscale image "
            f"(shape {pixels.shape}, {pixels.dtype}); convert it to grayscale first"
        )
    return pixels


def exam_from_pngs(
    paths_by_view: Mapping[tuple[Laterality, View | MammoView], Path],
    spec: ExamSpec | None = None,
) -> list[Dataset]:
    """One DICOM mammogram per PNG, all in one study (identity from ``spec``)."""
    spec = spec or ExamSpec()
    study = spec.identity()
    datasets: list[Dataset] = []
    for index, ((laterality, view), path) in enumerate(paths_by_view.items()):
        pixels = read_png(Path(path)).astype(np.uint16, copy=False)
        view_spec = ViewSpec(
            study=study, laterality=Laterality(laterality), view=MammoView.from_view(view),
            vendor=spec.vendor, seed=spec.seed, photometric=spec.photometric,
            series_number=spec.series_number, instance_number=index + 1,
            pixels=pixels, generated_2d=spec.generated_2d,
            for_processing=spec.for_processing,
        )
        datasets.append(build_view(view_spec))
    return datasets
