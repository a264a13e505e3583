"""The saliency peak the SRs report lies on the image the model saw, never on padding.

Found end to end (tests/e2e/test_results_to_archive.py): a map whose largest cell was over
the zero padding below the breast crop gave an SR peak where the overlay shows no
saliency at all.
"""

from __future__ import annotations

import numpy as np

from triage.outputs.common import saliency_peak
from triage.outputs.overlay import saliency_on_source
from triage.results import InputFrame, ViewScore
from triage.vocabulary import Laterality, View

#: a 1024 x 832 source; the 832 x 571 breast crop, mirrored, padded by 96 rows above and
#: below and 69 columns on the right to the 1024 x 640 model input
FRAME = InputFrame(source_shape=(1024, 832), crop_top=116, crop_left=261,
                   cropped_shape=(832, 571), flipped=True, pad_top=96, pad_left=0,
                   window_top=0, window_left=0, input_shape=(1024, 640))


def _view(saliency: np.ndarray) -> ViewScore:
    return ViewScore(member="m", sop_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
                     laterality=Laterality.RIGHT, view=View.CC, p_benign=0.5, p_malignant=0.5,
                     saliency_benign=saliency, saliency_malignant=saliency, frame=FRAME, rois=())


def _on_image(row: float, col: float) -> bool:
    r = row - FRAME.crop_top
    c = col - FRAME.crop_left
    return 0 <= r < FRAME.cropped_shape[0] and 0 <= c < FRAME.cropped_shape[1]


def test_peak_over_padding_is_not_reported_and_the_image_maximum_is() -> None:
    sal = np.full((128, 80), 0.5, dtype=np.float32)  # 8 x 8 input pixels per cell
    sal[125, 40] = 0.9  # input rows 1000-1007: bottom padding
    sal[40, 79] = 0.8  # input columns 632-639: right padding
    sal[60, 20] = 0.7  # on the breast crop
    peak = saliency_peak(_view(sal), sal)
    assert _on_image(peak.source_row, peak.source_col)
    assert peak.value == np.float32(0.7)
    # the overlay shows that value at the reported point
    on_source = saliency_on_source(FRAME, sal)
    assert abs(on_source[round(peak.source_row), round(peak.source_col)] - 0.7) < 0.03


def test_map_without_padding_keeps_its_global_maximum() -> None:
    frame = InputFrame(source_shape=(64, 48), crop_top=0, crop_left=0, cropped_shape=(64, 48),
                       flipped=False, pad_top=0, pad_left=0, window_top=0, window_left=0,
                       input_shape=(64, 48))
    sal = np.zeros((8, 6), dtype=np.float32)
    sal[7, 5] = 1.0  # the corner cell
    view = ViewScore(member="m", sop_instance_uid="1.2.3",
                     sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2", laterality=Laterality.LEFT,
                     view=View.MLO, p_benign=0.1, p_malignant=0.1, saliency_benign=sal,
                     saliency_malignant=sal, frame=frame, rois=())
    peak = saliency_peak(view, sal)
    assert (peak.source_row, peak.source_col) == (59.5, 43.5)
    assert peak.value == 1.0
