"""Synthetic tomosynthesis: Breast Tomosynthesis objects, slabs, combo exams, the CLI."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import BreastTomosynthesisImageStorage, JPEG2000Lossless
from typer.testing import CliRunner

from triage.cli import app
from triage.config import Settings
from triage.dicom.classify import classify_instance
from triage.errors import ConfigError
from triage.synthetic import (
    DbtViewSpec,
    ExamSpec,
    TransferSyntax,
    build_dbt_view,
    dbt_view_specs,
    encode,
    generate_dbt_exam,
    study_identity_for_seed,
)
from triage.vocabulary import ImageClass, Laterality, View

WHEN = datetime(2024, 6, 1, 8, 15).astimezone()
MATRIX = (96, 80)
SLICES = 8
runner = CliRunner()


def frames_of(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.pixel_array).reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)


def lesion_view(seed: int = 4, **fields: Any) -> DbtViewSpec:
    """The view of a small synthetic DBT exam that holds the lesion."""
    specs = dbt_view_specs(ExamSpec(seed=seed, lesion=True, matrix=MATRIX, study_datetime=WHEN),
                           slices=SLICES)
    spec = next(s for s in specs if s.lesion is not None)
    return replace(spec, **fields)


def positions_along_normal(ds: Dataset) -> list[float]:
    cosines = [float(v) for v in ds.SharedFunctionalGroupsSequence[0]
               .PlaneOrientationSequence[0].ImageOrientationPatient]
    normal = np.cross(cosines[:3], cosines[3:])
    return [float(np.dot([float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient],
                         normal)) for g in ds.PerFrameFunctionalGroupsSequence]


# ---------------------------------------------------------------------------- objects
def test_dbt_view_is_one_enhanced_object_with_a_frame_per_slice(settings: Settings) -> None:
    spec = lesion_view()
    ds = build_dbt_view(spec)
    assert ds.SOPClassUID == BreastTomosynthesisImageStorage
    assert int(ds.NumberOfFrames) == SLICES == len(ds.PerFrameFunctionalGroupsSequence)
    assert frames_of(ds).shape == (SLICES, *MATRIX)
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert shared.FrameAnatomySequence[0].FrameLaterality == str(spec.laterality)
    assert float(shared.PixelMeasuresSequence[0].SliceThickness) == 1.0
    assert "ImageLaterality" not in ds  # not part of the IOD; Frame Laterality carries it
    assert [g.FrameContentSequence[0].InStackPositionNumber
            for g in ds.PerFrameFunctionalGroupsSequence] == list(range(1, SLICES + 1))
    assert np.allclose(np.diff(positions_along_normal(ds)), 1.0)  # 1 mm slices

    classified = classify_instance(ds, settings, now=WHEN)
    assert classified.image_class is ImageClass.DBT
    assert classified.scorable, classified.reason
    assert classified.laterality is spec.laterality
    assert classified.view is View(str(spec.view))


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    def write(seed: int, out: str) -> dict[str, bytes]:
        spec = ExamSpec(seed=seed, lesion=True, matrix=MATRIX, study_datetime=WHEN)
        generate_dbt_exam(spec, tmp_path / out, slices=SLICES, slab_thickness_mm=6.0)
        return {p.name: p.read_bytes() for p in sorted((tmp_path / out).iterdir())}

    first, again, other = write(7, "a"), write(7, "b"), write(8, "c")
    assert len(first) == 8  # four thin-slice views + four slab views
    assert first == again
    assert all(first[name] != other[name] for name in first)


def test_slices_share_the_breast_outline_and_change_texture_from_slice_to_slice() -> None:
    stack = frames_of(build_dbt_view(lesion_view(lesion=None)))
    outline = stack[0] > 0
    assert outline.any() and not outline.all()
    assert all(np.array_equal(frame > 0, outline) for frame in stack)
    for before, after in itertools.pairwise(stack):
        changed = np.abs(before.astype(int) - after.astype(int))[outline]
        assert changed.mean() > 1.0


def test_lesion_is_strongest_on_its_slice_and_fades_over_its_neighbours() -> None:
    spec = lesion_view()
    assert spec.lesion is not None
    with_lesion = frames_of(build_dbt_view(spec)).astype(int)
    without = frames_of(build_dbt_view(replace(spec, lesion=None))).astype(int)
    row, col = spec.lesion.lesion.center
    gain = (with_lesion - without)[:, row, col]
    centre, half = spec.lesion.center_slice, spec.lesion.half_extent
    assert int(np.argmax(gain)) == centre
    near = [k for k in range(SLICES) if abs(k - centre) <= half]
    far = [k for k in range(SLICES) if abs(k - centre) > half]
    assert all(gain[k] > 0 for k in near)
    assert all(gain[k] == 0 for k in far)
    assert all(gain[k] > gain[k + 1] for k in range(centre, max(near)))
    assert all(gain[k] < gain[k + 1] for k in range(min(near), centre))


def test_reversed_storage_holds_the_same_slices_backwards_with_their_positions() -> None:
    forward = build_dbt_view(lesion_view())
    backward = build_dbt_view(lesion_view(reversed_storage=True))
    assert np.array_equal(frames_of(backward), frames_of(forward)[::-1])
    assert positions_along_normal(backward) == positions_along_normal(forward)[::-1]
    assert forward.SOPInstanceUID != backward.SOPInstanceUID


def test_slab_view_averages_thin_slices_and_says_it_is_a_slab() -> None:
    thin_spec = lesion_view(seed=9)
    slab_spec = replace(thin_spec, slab_thickness_mm=6.0, series_number=4)
    thin = frames_of(build_dbt_view(thin_spec)).astype(float)
    slab_ds = build_dbt_view(slab_spec)
    slabs = frames_of(slab_ds).astype(float)
    per_slab, step, count = slab_spec.slab_layout()
    assert (per_slab, step) == (6, 3)
    assert slabs.shape[0] == count == (SLICES - 6) // 3 + 1
    for index, slab in enumerate(slabs):
        mean = thin[index * step:index * step + per_slab].mean(axis=0)
        inside = slab > 0
        assert np.abs(slab - mean)[inside].max() <= 1.0  # rounding of thin slices vs slab
    shared = slab_ds.SharedFunctionalGroupsSequence[0]
    assert float(shared.PixelMeasuresSequence[0].SliceThickness) == 6.0
    assert float(shared.PixelMeasuresSequence[0].SpacingBetweenSlices) == 3.0
    assert slab_ds.ImageType[3] == "MEAN"
    assert "slab" in slab_ds.SeriesDescription


def test_given_slices_are_stored_exactly() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (3, 64, 48), dtype=np.uint16)
    ds = build_dbt_view(DbtViewSpec(study=study_identity_for_seed(1, WHEN),
                                    laterality=Laterality.RIGHT, pixels=pixels))
    assert np.array_equal(frames_of(ds), pixels)
    assert int(ds.BitsStored) == 12


def test_jpeg2000_dbt_keeps_every_frame(tmp_path: Path) -> None:
    ds = build_dbt_view(lesion_view())
    original = frames_of(ds)
    encode(ds, TransferSyntax.JPEG2000)
    ds.save_as(tmp_path / "dbt.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "dbt.dcm")
    assert back.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(frames_of(back), original)


def test_slab_thicker_than_the_stack_is_refused() -> None:
    with pytest.raises(ConfigError, match="slab thickness"):
        lesion_view(slab_thickness_mm=SLICES + 1.0)


# ---------------------------------------------------------------------------- CLI
def run_exam(out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["synthetic", "exam", "--out", str(out), "--rows",
                                 str(MATRIX[0]), "--cols", str(MATRIX[1]), "--seed", "3",
                                 "--study-datetime", "2024-06-01T08:15:00", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_dbt_writes_one_tomosynthesis_object_per_view(tmp_path: Path) -> None:
    summary = run_exam(tmp_path, "--modality", "dbt", "--slices", str(SLICES), "--lesion")
    files = sorted(tmp_path.glob("*.dcm"))
    assert len(files) == 4 == len(summary["instances"])
    views = set()
    for entry in summary["instances"]:
        ds = pydicom.dcmread(entry["file"])
        assert ds.SOPClassUID == BreastTomosynthesisImageStorage
        assert int(ds.NumberOfFrames) == entry["frames"] == SLICES
        views.add((entry["laterality"], entry["view"]))
        if entry["lesion"]:
            assert 0 <= entry["lesion_slice"] < SLICES
    assert views == {("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")}


def test_cli_combo_writes_ffdm_synthetic_2d_dbt_and_slabs_in_one_study(tmp_path: Path) -> None:
    summary = run_exam(tmp_path, "--modality", "combo", "--slices", "12",
                       "--slab-thickness-mm", "6", "--lesion")
    datasets = [pydicom.dcmread(entry["file"]) for entry in summary["instances"]]
    assert len(datasets) == 16
    assert {ds.StudyInstanceUID for ds in datasets} == {summary["study_instance_uid"]}
    by_series: dict[int, list[Dataset]] = {}
    for ds in datasets:
        by_series.setdefault(int(ds.SeriesNumber), []).append(ds)
    assert sorted(by_series) == [1, 2, 3, 4] and all(len(v) == 4 for v in by_series.values())
    assert all("GENERATED_2D" not in ds.ImageType for ds in by_series[1])
    assert all("GENERATED_2D" in ds.ImageType for ds in by_series[2])
    assert all(ds.SOPClassUID == BreastTomosynthesisImageStorage
               for ds in by_series[3] + by_series[4])
    assert {int(ds.NumberOfFrames) for ds in by_series[3]} == {12}
    assert {int(ds.NumberOfFrames) for ds in by_series[4]} == {(12 - 6) // 3 + 1}
    # the lesion is in the same breast, both views, in every modality
    with_lesion = [entry for entry in summary["instances"] if entry["lesion"]]
    assert len(with_lesion) == 2 * 4
    assert len({entry["laterality"] for entry in with_lesion}) == 1


def test_cli_refuses_a_slab_thicker_than_the_stack(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synthetic", "exam", "--out", str(tmp_path), "--rows", "96",
                                 "--cols", "80", "--modality", "dbt", "--slices", "4",
                                 "--slab-thickness-mm", "10"])
    assert result.exit_code == 1
    assert "slab thickness" in result.output
