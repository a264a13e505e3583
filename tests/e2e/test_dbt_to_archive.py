"""A tomosynthesis exam end to end: DCMTK storescu -> `triage serve` -> Orthanc.

A synthetic 4-view DBT exam (Breast Tomosynthesis objects of 8 slices of 1434x1165 pixels)
is sent with storescu (``-R``: propose only the SOP classes of the files, so the Breast
Tomosynthesis presentation context is among them), scored by one 3D-GMIC member (the
reduced-resolution ``gmic3d-testing-small``, same code as the published models, seeded demo
weights: the run is unverified), and the results reach Orthanc: the TID 1500 SR, the
Mammography CAD SR (allowed for this test) and one overlay per view.

What the archive holds is checked against a score of the same files computed here with the
same settings and weights: every ROI and saliency peak of the TID 1500 SR references the
DBT frame (Referenced Frame Number) the result names, each overlay shows the slice with the
highest saliency (its grey picture is that frame of the source, not a neighbour) with
"DBT slice k of 8" in its legend, and dciodvfy finds no error in any object.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.e2e.conftest import ArchiveServer
from tests.e2e.test_results_to_archive import (
    Delivery,
    _archive_address,
    _archived,
    _assert_archive_holds_the_results,
    _assert_valid_dicom,
    _listener_up,
    _outbox,
)
from tests.integration.listener_helpers import free_port, storescu
from tests.integration.product_helpers import (
    DBT_SLICES,
    Stack,
    exam_status,
    runs_of,
    small_dbt_exam,
    wait_until,
)
from triage.imaging import decode_pixels
from triage.imaging.volume import read_volume_frames
from triage.models import ensure_demo_weights
from triage.outputs.overlay import display_gray, render_overlay
from triage.pipeline import ExamImage, load_ensemble, score_exam
from triage.results import ExamResult
from triage.vocabulary import ImageClass, OutputKind

DBT_MEMBER = "gmic3d-testing-small"
DBT_ENSEMBLE = json.dumps([{"name": DBT_MEMBER, "weight": 1.0, "modality": "dbt"}])


@pytest.fixture(scope="module")
def dbt_delivery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivery]:
    if shutil.which("dciodvfy") is None or shutil.which("storescu") is None:
        pytest.fail("dciodvfy (dicom3tools) and storescu (DCMTK) must be installed")
    root = tmp_path_factory.mktemp("dbt")
    archive = ArchiveServer(root=root / "orthanc")
    archive.root.mkdir()
    archive.start()
    port = free_port()
    stack = Stack(root / "stack", extra_env={
        "TRIAGE_ARCHIVE": _archive_address(archive), "TRIAGE_SEND_UNVERIFIED_CAD": "1",
        "TRIAGE_DICOM_PORT": str(port), "TRIAGE_ENSEMBLE": DBT_ENSEMBLE})
    try:
        ensure_demo_weights(stack.settings)  # the configured 3D-GMIC member
        stack.spawn("serve")
        _listener_up(stack, port)
        uid, files = small_dbt_exam(root / "exam")
        sent = storescu(port, files, options=["-R"])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(lambda: exam_status(stack.db, uid) == "delivered", 180, "exam delivered",
                   stack.logs)
        yield Delivery(stack, archive, uid, files, port)
    finally:
        stack.close()
        archive.destroy()


@pytest.fixture(scope="module")
def expected(dbt_delivery: Delivery) -> ExamResult:
    """The same files scored here, with the product's settings and weights."""
    images = []
    for path in dbt_delivery.exam_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        info = read_volume_frames(ds)
        assert info.laterality is not None and info.view is not None
        images.append(ExamImage(str(ds.SOPInstanceUID), str(ds.SOPClassUID), path,
                                info.laterality, info.view, ImageClass.DBT))
    ensemble = load_ensemble(dbt_delivery.stack.settings)
    return score_exam(images, ensemble, study_instance_uid=dbt_delivery.study_uid)


def _regions(sr: Dataset) -> Counter[tuple[str, str, int | None]]:
    """(referenced SOP Instance UID, graphic type, Referenced Frame Number) of every SCOORD."""
    found: Counter[tuple[str, str, int | None]] = Counter()

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "SCOORD":
                for child in item.get("ContentSequence", []):
                    if child.get("ValueType") == "IMAGE":
                        ref = child.ReferencedSOPSequence[0]
                        frame = ref.get("ReferencedFrameNumber")
                        found[(str(ref.ReferencedSOPInstanceUID), str(item.GraphicType),
                               None if frame is None else int(frame))] += 1
            walk(list(item.get("ContentSequence", [])))

    walk(list(sr.ContentSequence))
    return found


def _shows_frame_rather_than(image: np.ndarray, source: Dataset, frame: int,
                             other: int) -> tuple[float, int]:
    """Among the overlay's untinted pixels (R = G = B: no saliency, no ROI box) where the
    display greys of ``frame`` and ``other`` differ by more than 3 levels: the share whose
    grey is ``frame``'s (within 3 levels), and how many such pixels there are."""
    rgb = image.astype(np.float64)
    untinted = ((np.abs(rgb[..., 0] - rgb[..., 2]) <= 2)
                & (np.abs(rgb[..., 1] - rgb[..., 2]) <= 2))
    grey, grey_other = (display_gray(decode_pixels(source, frame=f).array, source)
                        for f in (frame, other))
    differ = untinted & (np.abs(grey - grey_other) > 3)
    return float((np.abs(grey - rgb[..., 2])[differ] <= 3).mean()), int(differ.sum())


def test_dbt_exam_results_reach_the_archive_once_and_pass_dciodvfy(
    dbt_delivery: Delivery, tmp_path: Path
) -> None:
    d = dbt_delivery
    (run,) = runs_of(d.stack.db, d.study_uid)
    assert run.status == "succeeded" and not run.verified
    rows = _outbox(d.stack, d.study_uid)
    archived = _archived(d.archive, tmp_path / "archive")
    _assert_archive_holds_the_results(d, rows, archived, Counter({
        OutputKind.SR_TID1500.value: 1, OutputKind.SR_MAMMO_CAD.value: 1,
        OutputKind.SC_OVERLAY.value: 4}))
    _assert_valid_dicom(rows, archived)


def test_tid1500_sr_references_the_dbt_frames_of_each_roi_and_saliency_peak(
    dbt_delivery: Delivery, expected: ExamResult, tmp_path: Path
) -> None:
    d = dbt_delivery
    rows = _outbox(d.stack, d.study_uid)
    archived = _archived(d.archive, tmp_path / "archive")
    (sr_row,) = [r for r in rows if r.kind == OutputKind.SR_TID1500.value]
    sr = pydicom.dcmread(archived[sr_row.sop_instance_uid][1])
    wanted: Counter[tuple[str, str, int | None]] = Counter()
    for view in expected.views:
        assert view.saliency_slice is not None and 0 <= view.saliency_slice < DBT_SLICES
        for roi in view.rois:
            assert roi.frame is not None
            wanted[(view.sop_instance_uid, "POLYLINE", roi.frame + 1)] += 1
        wanted[(view.sop_instance_uid, "POINT", view.saliency_slice + 1)] += 2  # mal., benign
    assert _regions(sr) == wanted
    assert len(wanted) > 4  # the ROIs do not all sit on one slice


def test_each_overlay_shows_the_slice_with_the_highest_saliency_and_names_it(
    dbt_delivery: Delivery, expected: ExamResult, tmp_path: Path
) -> None:
    d = dbt_delivery
    rows = _outbox(d.stack, d.study_uid)
    archived = _archived(d.archive, tmp_path / "archive")
    sources = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, d.exam_files)}
    views = {v.sop_instance_uid: v for v in expected.views}
    overlays = [r for r in rows if r.kind == OutputKind.SC_OVERLAY.value]
    assert len(overlays) == 4
    for row in overlays:
        sc = pydicom.dcmread(archived[row.sop_instance_uid][1])
        reference = sc.SourceImageSequence[0]
        source = sources[str(reference.ReferencedSOPInstanceUID)]
        view = views[str(source.SOPInstanceUID)]
        assert view.saliency_slice is not None
        shown = view.saliency_slice
        assert int(reference.ReferencedFrameNumber) == shown + 1
        assert f"DBT slice {shown + 1}" in sc.DerivationDescription

        # the legend, rendered from the same result: "DBT slice k of 8", pixel for pixel
        stack = np.zeros((DBT_SLICES, int(source.Rows), int(source.Columns)), np.float32)
        stack[shown] = decode_pixels(source, frame=shown).array
        picture = render_overlay(expected, source, stack)
        assert f"DBT slice {shown + 1} of {DBT_SLICES}" in picture.legend
        rgb = sc.pixel_array
        band = slice(picture.image_rows, None)
        assert rgb.shape == picture.rgb.shape
        assert np.array_equal(rgb[band], picture.rgb[band])

        # the grey under the tint is that frame of the source, not any other slice
        image = rgb[:picture.image_rows]
        for other in set(range(DBT_SLICES)) - {shown}:
            share, pixels = _shows_frame_rather_than(image, source, shown, other)
            assert pixels > 1000 and share > 0.99, (shown, other, share, pixels)
