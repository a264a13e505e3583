"""DMV-CNN at full resolution (CC 2677x1942, MLO 2974x1748) from the fixture PNGs.

The inputs are rebuilt from images/ with triage.imaging (the reference preprocessing),
rounded to float16 and upcast, as the fixture did (their sha256s are in
dmv_cnn_summary.json); one view-wise forward pass of the four views (several seconds on a
CPU) is shared by the module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from triage.imaging import prepare_view
from triage.models.dmv_cnn import DMVConfig, SplitBreastOutput, build_dmv_cnn
from triage.models.weights import load_state, read_state_dict
from triage.vocabulary import Laterality, View

FEATURE_ATOL, FEATURE_RTOL = 1e-3, 1e-3  # fixtures README: log-probabilities
VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")


@pytest.fixture(scope="module")
def summary(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "dmv_cnn_summary.json").read_text())


@pytest.fixture(scope="module")
def full_inputs(fixtures_dir: Path, summary) -> dict[str, np.ndarray]:
    sizes = summary["hyperparameters"]["full_resolution_input_sizes"]
    arrays = {}
    for view, image in summary["exam"].items():
        laterality, angle = view.split("-")
        pixels = cv2.imread(str(fixtures_dir / "images" / image), cv2.IMREAD_UNCHANGED)
        prepared = prepare_view(pixels, Laterality(laterality), View(angle),
                                tuple(sizes[angle]))
        arrays[view] = prepared.array.astype(np.float16).astype(np.float32)
    return arrays


@pytest.fixture(scope="module")
def full_output(fixtures_dir: Path, summary, full_inputs) -> SplitBreastOutput:
    model = build_dmv_cnn(DMVConfig.from_hyperparameters(summary["hyperparameters"]))
    load_state(model, read_state_dict(fixtures_dir / "dmv_cnn_view_split_weights_fp16.pt",
                                      "model"), "fixture view-split weights")
    model.eval()
    with torch.inference_mode():
        out = model(*(torch.from_numpy(full_inputs[v])[None, None] for v in VIEWS))
    assert isinstance(out, SplitBreastOutput)
    return out


def test_full_resolution_exam_matches_the_reference(fixtures_dir, summary, full_inputs,
                                                    full_output):
    digests = summary["full_res"]["input_sha256_float32_of_fp16_rounded"]
    for view in VIEWS:  # the inputs are the fixture's, byte for byte
        assert hashlib.sha256(full_inputs[view].tobytes()).hexdigest() == digests[view]
    with np.load(fixtures_dir / "dmv_cnn_outputs.npz") as reference:
        np.testing.assert_allclose(full_output.cc_logprob.numpy(), reference["full_CC_logprob"],
                                   atol=FEATURE_ATOL, rtol=FEATURE_RTOL)
        np.testing.assert_allclose(full_output.mlo_logprob.numpy(),
                                   reference["full_MLO_logprob"],
                                   atol=FEATURE_ATOL, rtol=FEATURE_RTOL)
