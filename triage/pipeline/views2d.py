"""2D views: decode and preprocess the exam's images, once per recipe and input size.

A member family asks for ``PrepareRequest`` s (image, input size, recipe); every distinct
request is decoded and preprocessed once per exam, concurrently (numpy / OpenCV free the
GIL), and shared by every member that asked for it.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pydicom

from triage.errors import DecodeError, PreprocessingError
from triage.imaging import PreparedView, decode_pixels, prepare_view, prepare_view_resized
from triage.imaging.whole_image import prepare_whole_image
from triage.models.dmv_cnn import DMV_INPUT_SIZE
from triage.pipeline.images import ExamImage
from triage.vocabulary import Laterality, View

log = logging.getLogger(__name__)

#: recipe name -> (decoded pixels, laterality, view, input size) -> PreparedView
Recipe = Callable[[np.ndarray, Laterality, View, tuple[int, int]], PreparedView]


def _dmv_reduced(pixels: np.ndarray, laterality: Laterality, view: View,
                 input_size: tuple[int, int]) -> PreparedView:
    """DMV-CNN preprocessing at its full window, resized to ``input_size`` (testing only)."""
    return prepare_view_resized(pixels, laterality, view, input_size,
                                window_size=DMV_INPUT_SIZE[View(view)])


RECIPES: dict[str, Recipe] = {
    "gmic": prepare_view,
    # DMV-CNN: the same reference preprocessing at the DMV windows (the crop and centre code
    # of GMIC and breast_cancer_classifier is functionally identical, fixtures README)
    "breast_cancer_classifier": prepare_view,
    "breast_cancer_classifier-testing": _dmv_reduced,
    # Shen et al. 2019: the whole image, uncropped, resized (mean subtracted by the runner)
    "allconv": prepare_whole_image,
}


@dataclass(frozen=True)
class PrepareRequest:
    """One 2D model input a member needs: which image, at which size, by which recipe."""

    image: ExamImage
    input_size: tuple[int, int]
    recipe: str = "gmic"


@dataclass(frozen=True)
class PreparedImage:
    image: ExamImage
    prepared: PreparedView
    lossy: bool


@dataclass
class Prepared:
    """What ``prepare_all`` made of the requests, and which images could not be used."""

    by_request: dict[PrepareRequest, PreparedImage] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # sop uid -> reason
    seconds: float = 0.0

    def get(self, request: PrepareRequest) -> PreparedImage | None:
        return self.by_request.get(request)


def _prepare(request: PrepareRequest) -> PreparedImage:
    image = request.image
    ds = pydicom.dcmread(image.path)
    decoded = decode_pixels(ds)
    recipe = RECIPES[request.recipe]
    prepared = recipe(decoded.array, image.laterality, image.view, request.input_size)
    return PreparedImage(image=image, prepared=prepared, lossy=decoded.lossy)


def prepare_all(requests: Iterable[PrepareRequest], pool: ThreadPoolExecutor) -> Prepared:
    """Decode and preprocess every distinct request concurrently; failures are recorded."""
    started = time.perf_counter()
    unique = sorted(set(requests), key=lambda r: (r.image.sop_instance_uid, r.input_size,
                                                  r.recipe))
    # each task runs in a copy of this context: its log lines keep the study's UID
    futures = {request: pool.submit(contextvars.copy_context().run, _prepare, request)
               for request in unique}
    out = Prepared()
    for request, fut in futures.items():
        try:
            out.by_request[request] = fut.result()
        except (DecodeError, PreprocessingError) as exc:
            uid = request.image.sop_instance_uid
            out.failures[uid] = str(exc)
            log.warning("view not scorable", extra={"sop_instance_uid": uid, "error": str(exc)})
    out.seconds = time.perf_counter() - started
    return out
