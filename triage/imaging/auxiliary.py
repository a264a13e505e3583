"""DMV-CNN input helpers: auxiliary planes windowed like the image, and reduced-size inputs.

* :func:`window_plane` puts a plane computed on the flipped crop (the patch classifier's
  heatmaps, Wu et al. 2019 section IV-B) through the same geometry as the image: the
  zero padding of :attr:`PreparedView.padding`, the model window
  :attr:`PreparedView.final_window` and, for a reduced-size input, the same resize. The
  plane is not standardised: the heatmaps enter the model as probabilities, only the image
  channel is standardised.
* :func:`prepare_view_resized` is the test-time preprocessing at the model's full window
  (``window_size``) followed by a ``cv2.INTER_AREA`` resize of the standardised input to
  ``input_size``, which is how the DMV-CNN reduced-resolution fixtures were made (fixtures
  README, ``dmv_cnn_outputs.npz``). ``frame`` keeps mapping the full window to the source,
  so a saliency map spanning the (reduced) input still lands where it belongs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from triage.errors import PreprocessingError
from triage.imaging.prepare import PreparedView, prepare_view
from triage.imaging.windowing import resize_input
from triage.vocabulary import Laterality, View


def window_plane(prepared: PreparedView, plane: np.ndarray) -> np.ndarray:
    """``plane`` (on the flipped crop) cut and sized exactly like ``prepared.array``."""
    values = np.asarray(plane, dtype=np.float32)
    if values.shape != prepared.flipped_crop.shape:
        raise PreprocessingError(
            f"auxiliary plane of shape {values.shape} does not match the flipped crop "
            f"{prepared.flipped_crop.shape} it must be windowed like"
        )
    cut = prepared.final_window.cut(prepared.padding.apply(values))
    if cut.shape != prepared.array.shape:
        return resize_input(cut, (int(prepared.array.shape[0]), int(prepared.array.shape[1])))
    return np.array(cut, dtype=np.float32, order="C", copy=True)


def prepare_view_resized(
    pixels: np.ndarray,
    laterality: Laterality,
    view: View,
    input_size: tuple[int, int],
    *,
    window_size: tuple[int, int],
) -> PreparedView:
    """Preprocess at ``window_size`` (the model's full input), then resize the standardised
    input to ``input_size`` with ``cv2.INTER_AREA`` (no re-standardisation)."""
    if input_size[0] <= 0 or input_size[1] <= 0:
        raise PreprocessingError(f"invalid model input size {input_size}")
    full = prepare_view(pixels, laterality, view, window_size)
    if tuple(input_size) == tuple(full.array.shape):
        return full
    small = resize_input(full.array, input_size)
    return dataclasses.replace(full, array=small, input_size=(int(input_size[0]),
                                                              int(input_size[1])))
