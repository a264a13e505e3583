"""Frames of a multi-frame object decoded from its file with a header-only data set
(``decode_pixels(..., pixels_from=...)``), as the DBT runner and the overlay stage do."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from triage.errors import DecodeError
from triage.imaging import decode_pixels
from triage.imaging.volume import prepare_volume
from triage.synthetic import DbtViewSpec, build_dbt_view, study_identity_for_seed
from triage.synthetic.views import MammoView
from triage.vocabulary import Laterality

FRAMES = 4


def _dbt_file(tmp_path: Path, syntax: str | None) -> Path:
    spec = DbtViewSpec(study=study_identity_for_seed(3, datetime(2024, 6, 1).astimezone()),
                       laterality=Laterality.LEFT, view=MammoView.MLO, seed=3,
                       matrix=(480, 384), slices=FRAMES)
    ds = build_dbt_view(spec)
    if syntax is not None:
        ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "",
                    generate_instance_uid=False)
    path = tmp_path / "dbt.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [None, RLELossless, JPEG2000Lossless],
                         ids=["explicit", "rle", "jpeg2000"])
def test_each_frame_read_from_the_file_equals_the_frame_of_the_whole_data_set(
    tmp_path: Path, syntax: str | None
) -> None:
    path = _dbt_file(tmp_path, syntax)
    whole = pydicom.dcmread(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert "PixelData" not in header
    with open(path, "rb") as pixels:
        for frame in reversed(range(FRAMES)):  # any order: the file is re-positioned
            from_file = decode_pixels(header, frame=frame, pixels_from=pixels)
            in_memory = decode_pixels(whole, frame=frame)
            np.testing.assert_array_equal(from_file.array, in_memory.array)
            assert from_file.frame == frame and from_file.lossy == in_memory.lossy
        prepared = prepare_volume(header, (512, 320), pixels_from=pixels)
    np.testing.assert_array_equal(prepared.array, prepare_volume(whole, (512, 320)).array)


def test_a_header_without_pixel_data_or_file_is_a_decode_error(tmp_path: Path) -> None:
    header = pydicom.dcmread(_dbt_file(tmp_path, None), stop_before_pixels=True)
    with pytest.raises(DecodeError, match="no Pixel Data"):
        decode_pixels(header, frame=0)
