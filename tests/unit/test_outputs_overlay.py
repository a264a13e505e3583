"""Secondary-capture overlays, checked on the rendered picture as a person would look at it."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.result_builders import build_exam_fixture, fixture_from_synthetic, source_to_input
from triage.config import load_settings
from triage.errors import InvalidDicom
from triage.outputs import build_overlay, build_overlays, render_overlay
from triage.outputs.common import saliency_peak
from triage.outputs.overlay import (
    ALPHA_MAX,
    NOT_FOR_DIAGNOSIS,
    UNCALIBRATED_WEIGHTS,
    WARNING_RGB,
    saliency_on_source,
)
from triage.vocabulary import Laterality


def _roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _png(sc: Dataset, path: Path) -> np.ndarray:
    """Render the stored SC to PNG and read the PNG back (RGB)."""
    assert cv2.imwrite(str(path), cv2.cvtColor(sc.pixel_array, cv2.COLOR_RGB2BGR))
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _warning_pixels(band: np.ndarray) -> int:
    r, g, b = (band[..., i].astype(int) for i in range(3))
    tr, tg, tb = WARNING_RGB
    return int(np.count_nonzero((abs(r - tr) < 40) & (abs(g - tg) < 40) & (abs(b - tb) < 40)))


@pytest.mark.parametrize("verified", [True, False])
def test_overlay_shows_red_over_the_saliency_peak_and_a_legend(verified: bool,
                                                              tmp_path: Path) -> None:
    fx = build_exam_fixture(verified=verified,
                            p_malignant={Laterality.LEFT: 0.85, Laterality.RIGHT: 0.1})
    settings = load_settings()
    overlays = [_roundtrip(o) for o in build_overlays(fx.result, fx.sources, fx.pixels,
                                                        settings)]
    sources = {str(s.SOPInstanceUID): s for s in fx.sources}
    for sc in overlays:
        uid = str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)
        views = [v for v in fx.result.views if v.sop_instance_uid == uid]
        if views[0].laterality is not Laterality.LEFT:
            continue
        png = _png(sc, tmp_path / f"{uid}.png")
        rows, cols = views[0].frame.source_shape
        assert png.shape[1] == cols and png.shape[0] > rows

        # the malignant peak, mapped from the model input through the frame
        peak = saliency_peak(views[0], views[0].saliency_malignant)
        r, c = round(peak.source_row), round(peak.source_col)
        patch = png[r - 2:r + 3, c - 2:c + 3].reshape(-1, 3).astype(int).mean(axis=0)
        expected_tint = ALPHA_MAX * peak.value * 255 * 0.5
        assert patch[0] - patch[1] > expected_tint and patch[0] - patch[2] > expected_tint

        # far from both peaks, inside the breast, the picture stays grey
        benign_r, benign_c = fx.benign_spots[uid]
        far = (rows // 2 + 150 if r < rows // 2 else rows // 2 - 150, 15)
        assert min(abs(far[0] - r), abs(far[0] - benign_r)) > 60
        grey = png[far[0], far[1]].astype(int)
        assert abs(grey[0] - grey[1]) <= 3 and abs(grey[1] - grey[2]) <= 3

        # the benign spot is green-dominant
        spot = png[benign_r, benign_c].astype(int)
        assert spot[1] - spot[0] > 20

        # the legend band below the image has text on a black background
        band = png[rows:]
        lit = np.count_nonzero(band.max(axis=2) > 60)
        assert lit > 0.01 * band.shape[0] * band.shape[1]
        assert _warning_pixels(band) > 0  # NOT FOR DIAGNOSTIC USE line
        picture = render_overlay(fx.result, sources[uid], fx.pixels[uid])
        assert picture.legend[0].startswith(NOT_FOR_DIAGNOSIS)
        assert any(UNCALIBRATED_WEIGHTS in line for line in picture.legend) is (not verified)
        for member in fx.result.members:
            assert any(member.name in line and member.version in line
                       for line in picture.legend)
        assert np.array_equal(picture.rgb, sc.pixel_array)


def test_uncalibrated_warning_adds_warning_coloured_text(tmp_path: Path) -> None:
    verified = build_exam_fixture(verified=True)
    unverified = build_exam_fixture(verified=False)
    uid = verified.result.views[0].sop_instance_uid
    source = next(s for s in verified.sources if str(s.SOPInstanceUID) == uid)
    a = render_overlay(verified.result, source, verified.pixels[uid])
    b = render_overlay(unverified.result, source, unverified.pixels[uid])
    assert _warning_pixels(b.rgb[b.image_rows:]) > _warning_pixels(a.rgb[a.image_rows:])


def test_overlay_attributes_follow_settings_and_source() -> None:
    fx = build_exam_fixture(charset="japanese", with_dbt=True, verified=False)
    settings = load_settings(overlay_modality="MG", overlay_series_description="AI map test",
                             overlay_max_rows=256)
    overlays = [_roundtrip(o) for o in build_overlays(fx.result, fx.sources, fx.pixels,
                                                        settings)]
    assert len(overlays) == len(fx.sources)
    for sc, source in zip(overlays, fx.sources, strict=True):
        assert sc.Modality == "MG" and sc.SeriesDescription == "AI map test"
        assert sc.BurnedInAnnotation == "YES"
        assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
        assert sc.ImageLaterality == source.ImageLaterality
        assert sc.ViewCodeSequence[0].CodeValue == source.ViewCodeSequence[0].CodeValue
        assert sc.StudyInstanceUID == source.StudyInstanceUID
        assert sc.SpecificCharacterSet == source.SpecificCharacterSet
        assert str(sc.PatientName) == str(source.PatientName)
        assert sc.AccessionNumber == source.AccessionNumber
        assert sc.Columns == round(source.Columns * 256 / source.Rows)
        assert sc.Rows > 256  # image part scaled to 256 rows, legend band below
        assert UNCALIBRATED_WEIGHTS in sc.ImageComments
        ref = sc.SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        if int(source.get("NumberOfFrames", 1)) > 1:
            view = next(v for v in fx.result.views
                        if v.sop_instance_uid == source.SOPInstanceUID)
            assert ref.ReferencedFrameNumber == view.saliency_slice + 1
            assert f"slice {view.saliency_slice + 1}" in sc.DerivationDescription


def test_dbt_overlay_shows_the_saliency_slice() -> None:
    fx = build_exam_fixture(with_dbt=True)
    dbt = next(s for s in fx.sources if int(s.get("NumberOfFrames", 1)) > 1)
    uid = str(dbt.SOPInstanceUID)
    stack = fx.pixels[uid].copy()
    view = next(v for v in fx.result.views if v.sop_instance_uid == uid)
    assert view.saliency_slice is not None
    others = [i for i in range(stack.shape[0]) if i != view.saliency_slice]
    stack[others] = 0  # only the saliency slice carries the breast
    picture = render_overlay(fx.result, dbt, stack)
    assert picture.slice_index == view.saliency_slice
    assert any(f"DBT slice {view.saliency_slice + 1} of {stack.shape[0]}" in line
               for line in picture.legend)
    image = picture.rgb[:picture.image_rows].astype(int)
    untinted_tissue = ((image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])
                       & (image[..., 0] > 60))
    assert untinted_tissue.mean() > 0.2  # the breast of the saliency slice is visible


def test_saliency_is_placed_where_the_frame_maps_the_model_input() -> None:
    fx = build_exam_fixture()
    for view in fx.result.views[:4]:
        on_source = saliency_on_source(view.frame, view.saliency_malignant)
        r, c = np.unravel_index(int(np.argmax(on_source)), on_source.shape)
        lesion_r, lesion_c = fx.lesions[view.sop_instance_uid]
        assert abs(r - lesion_r) <= 6 and abs(c - lesion_c) <= 6
        # inverse mapping agrees with InputFrame.to_source at the peak
        r_in, c_in = source_to_input(view.frame, float(r), float(c))
        assert view.frame.to_source(r_in, c_in) == pytest.approx((r, c))
        # nothing outside the cropped breast region
        mask = np.zeros(on_source.shape, dtype=bool)
        top, left = view.frame.crop_top, view.frame.crop_left
        h, w = view.frame.cropped_shape
        mask[top:top + h, left:left + w] = True
        assert not on_source[~mask].any()


def test_pixels_that_do_not_match_the_scored_geometry_are_refused() -> None:
    fx = build_exam_fixture()
    source = fx.sources[0]
    uid = str(source.SOPInstanceUID)
    with pytest.raises(InvalidDicom, match="does not match the scored geometry"):
        build_overlay(fx.result, source, fx.pixels[uid][:-10], load_settings())
    with pytest.raises(InvalidDicom, match="no decoded pixels"):
        build_overlays(fx.result, fx.sources, {}, load_settings())


def test_monochrome1_source_is_shown_with_bright_tissue_on_dark_background() -> None:
    fx = fixture_from_synthetic(vendor="ge")
    source = fx.sources[0]
    assert source.PhotometricInterpretation == "MONOCHROME1"
    uid = str(source.SOPInstanceUID)
    picture = render_overlay(fx.result, source, fx.pixels[uid])
    gray = picture.rgb[:picture.image_rows].astype(int).mean(axis=2)
    stored = fx.pixels[uid].astype(int)
    background = stored == stored.max()  # MONOCHROME1: the brightest stored value is air
    assert background.any() and (~background).any()
    assert gray[~background].mean() > gray[background].mean() + 50


def test_a_not_triaged_or_partial_overlay_burns_in_no_score_and_shows_the_coverage_flag() -> None:
    """The README's promise: a NOT TRIAGED score is shown to administrators only, so the
    overlay of such a run shows the map and the category, never a number; a partial exam
    says so in the legend and the Image Comments."""
    import dataclasses

    from triage.config import load_settings
    from triage.outputs import build_overlays

    def legend(result: object, fx: object) -> list[str]:
        uid = fx.result.views[0].sop_instance_uid  # type: ignore[attr-defined]
        source = next(s for s in fx.sources if str(s.SOPInstanceUID) == uid)  # type: ignore[attr-defined]
        return render_overlay(result, source, fx.pixels[uid]).legend  # type: ignore[arg-type,attr-defined]

    verified = build_exam_fixture(verified=True)
    shown = " ".join(legend(verified.result, verified))
    assert "exam score" in shown and "p(malignant)" in shown
    unverified = build_exam_fixture(verified=False)
    hidden = " ".join(legend(unverified.result, unverified))
    assert "NOT TRIAGED" in hidden
    assert "exam score" not in hidden and "p(malignant)" not in hidden
    gaps = ("no right breast scored (R-CC, R-MLO)",)
    partial = dataclasses.replace(verified.result, coverage_gaps=gaps, partial=True)
    lines = legend(partial, verified)
    assert "PARTIAL EXAM: no right breast scored (R-CC, R-MLO)" in lines
    assert "exam score" not in " ".join(lines)
    sc = build_overlays(partial, verified.sources, verified.pixels, load_settings())[0]
    assert str(sc.ImageComments).startswith("PARTIAL EXAM: no right breast")
