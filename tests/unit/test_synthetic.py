"""Synthetic screening exams: content, headers, determinism, options, PNG wrapping."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import JPEG2000Lossless

from tests.dicom_builders import EXAM0_FILES, exam0_pngs, mammogram, real_exam0
from triage.errors import ConfigError, DecodeError
from triage.synthetic import (
    ExamSpec,
    MammoView,
    Photometric,
    TransferSyntax,
    Vendor,
    ViewModifier,
    ViewSpec,
    build_ct_image,
    build_exam,
    build_view,
    exam_from_pngs,
    generate_exam,
    read_png,
    study_identity_for_seed,
    vendor_profile,
    view_specs,
    write_exam,
)
from triage.vocabulary import Laterality, View

SMALL = (240, 196)
WHEN = datetime(2024, 3, 5, 9, 30, 0).astimezone()


def small_exam(seed: int = 1, **kw: object) -> ExamSpec:
    kw.setdefault("matrix", SMALL)
    kw.setdefault("study_datetime", WHEN)
    return ExamSpec(seed=seed, **kw)  # type: ignore[arg-type]


def stored_range(ds: pydicom.Dataset) -> int:
    return (1 << int(ds.BitsStored)) - 1


def presentation_values(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel values with MONOCHROME1 inverted, so dense tissue is bright."""
    values = ds.pixel_array.astype(np.int64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = stored_range(ds) - values
    return values


# ---------------------------------------------------------------------------- exam shape
def test_exam_has_the_four_screening_views_with_sct_view_codes() -> None:
    datasets = build_exam(small_exam())
    expected_codes = {"CC": codes.SCT.CranioCaudal.value,
                      "MLO": codes.SCT.MedioLateralObliqueProjection.value}
    seen = set()
    for ds in datasets:
        item = ds.ViewCodeSequence[0]
        assert item.CodingSchemeDesignator == "SCT"
        assert item.CodeValue == expected_codes[ds.ViewPosition]
        assert len(item.ViewModifierCodeSequence) == 0
        seen.add((ds.ImageLaterality, ds.ViewPosition))
    assert seen == {("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")}


def test_exam_instances_share_patient_study_and_series_but_not_sop_uid() -> None:
    datasets = build_exam(small_exam())
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber", "PatientID",
                 "IssuerOfPatientID", "StudyDate", "StudyTime"):
        assert len({str(ds.get(attr)) for ds in datasets}) == 1, attr
    assert len({ds.SOPInstanceUID for ds in datasets}) == 4
    assert {ds.SOPClassUID for ds in datasets} == {"1.2.840.10008.5.1.4.1.1.1.2"}
    for ds in datasets:
        assert ds.Modality == "MG"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.BodyPartExamined == "BREAST"
        assert ds.BurnedInAnnotation == "NO"
        assert ds.BreastImplantPresent == "NO"
        assert ds.PartialView == "NO"
        assert ds.StudyDescription == "MG screening bilateral"


def test_same_seed_gives_identical_pixels_and_uids() -> None:
    first, second = build_exam(small_exam(seed=7)), build_exam(small_exam(seed=7))
    for a, b in zip(first, second, strict=True):
        assert a.SOPInstanceUID == b.SOPInstanceUID
        assert a.StudyInstanceUID == b.StudyInstanceUID
        assert a.PixelData == b.PixelData


def test_uids_and_pixels_do_not_depend_on_the_study_time() -> None:
    today = build_exam(small_exam(seed=7, study_datetime=WHEN))
    later = build_exam(small_exam(seed=7, study_datetime=WHEN + timedelta(days=3)))
    assert [d.SOPInstanceUID for d in today] == [d.SOPInstanceUID for d in later]
    assert [d.PixelData for d in today] == [d.PixelData for d in later]


def test_another_seed_gives_other_pixels_and_uids() -> None:
    first, second = build_exam(small_exam(seed=7)), build_exam(small_exam(seed=8))
    assert first[0].StudyInstanceUID != second[0].StudyInstanceUID
    assert first[0].AccessionNumber != second[0].AccessionNumber
    for a, b in zip(first, second, strict=True):
        assert a.SOPInstanceUID != b.SOPInstanceUID
        assert a.PixelData != b.PixelData


def test_synthetic_uids_are_not_under_the_product_uid_root() -> None:
    from triage.config import Settings

    root = Settings().uid_root
    for ds in build_exam(small_exam()):
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert not uid.startswith(root)
            assert uid.is_valid


def test_study_date_defaults_to_now_with_its_utc_offset() -> None:
    before = datetime.now().astimezone().replace(microsecond=0)
    ds = build_exam(ExamSpec(seed=2, matrix=SMALL, views=((Laterality.LEFT, MammoView.CC),)))[0]
    after = datetime.now().astimezone()
    study = datetime.strptime(ds.StudyDate + ds.StudyTime, "%Y%m%d%H%M%S").replace(
        tzinfo=before.tzinfo)
    assert before <= study <= after
    offset = before.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    assert ds.TimezoneOffsetFromUTC == f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


# ---------------------------------------------------------------------------- pixels
@pytest.mark.parametrize("vendor", list(Vendor))
def test_breast_faces_away_from_its_chest_wall_on_a_zero_background(vendor: Vendor) -> None:
    for ds in build_exam(small_exam(vendor=vendor)):
        values = presentation_values(ds)
        assert values.max() <= stored_range(ds)
        breast = values > 0
        assert 0.25 < breast.mean() < 0.9  # a breast, and background around it
        chest_wall_left = bool(breast[:, 0].sum() > 0.4 * values.shape[0])
        chest_wall_right = bool(breast[:, -1].sum() > 0.4 * values.shape[0])
        # hung like a real mammogram: left breasts face right, right breasts face left
        assert chest_wall_left == (ds.ImageLaterality == "L") != chest_wall_right
        # a row runs from chest wall to nipple (anterior, A) when the chest wall is on the
        # left, from nipple to chest wall (posterior, P) otherwise
        assert ds.PatientOrientation[0] == ("A" if chest_wall_left else "P")


def test_mlo_views_show_a_bright_pectoral_muscle_in_the_upper_chest_wall_corner() -> None:
    for ds in build_exam(small_exam(seed=3, vendor=Vendor.HOLOGIC)):
        values = presentation_values(ds)
        rows, cols = values.shape
        if ds.ImageLaterality == "R":
            values = values[:, ::-1]
        corner = values[: rows // 10, : cols // 12]
        tissue = values[rows // 2 - 10: rows // 2 + 10, cols // 5: cols // 3]
        if ds.ViewPosition == "MLO":
            assert corner.min() > 0 and corner.mean() > tissue.mean()
        else:
            assert corner.max() == 0


def test_monochrome1_vendor_stores_the_inverse_of_the_monochrome2_values() -> None:
    spec = small_exam(vendor=Vendor.GE)
    mono1 = build_exam(spec)
    mono2 = build_exam(replace(spec, photometric=Photometric.MONOCHROME2))
    for a, b in zip(mono1, mono2, strict=True):
        assert a.PhotometricInterpretation == "MONOCHROME1"
        assert a.PresentationLUTShape == "INVERSE"
        assert b.PhotometricInterpretation == "MONOCHROME2"
        assert b.PresentationLUTShape == "IDENTITY"
        assert np.array_equal(stored_range(a) - a.pixel_array.astype(np.int64),
                              b.pixel_array.astype(np.int64))


def test_lesion_is_drawn_where_the_spec_says_and_only_in_one_breast() -> None:
    spec = small_exam(seed=11, lesion=True, matrix=(400, 320))
    specs = view_specs(spec)
    with_lesion = [s for s in specs if s.lesion is not None]
    assert len(with_lesion) == 2
    assert {s.laterality for s in with_lesion} == {with_lesion[0].laterality}
    assert {s.view for s in with_lesion} == {MammoView.CC, MammoView.MLO}
    plain = build_exam(replace(spec, lesion=False))
    for view_spec, ds_plain in zip(specs, plain, strict=True):
        ds = build_view(view_spec)
        diff = ds.pixel_array.astype(np.int64) - ds_plain.pixel_array.astype(np.int64)
        if view_spec.lesion is None:
            assert not diff.any()
            continue
        assert diff.min() >= 0 and diff.max() > 0.1 * stored_range(ds)
        row, col = view_spec.lesion.center
        radius = view_spec.lesion.radius_px
        assert ds_plain.pixel_array[row, col] > 0  # inside the breast
        rr, cc = np.nonzero(diff)
        weights = diff[rr, cc].astype(float)
        centroid = (np.average(rr, weights=weights), np.average(cc, weights=weights))
        assert np.hypot(centroid[0] - row, centroid[1] - col) < 0.5 * radius
        assert np.hypot(rr - row, cc - col).max() <= 5 * radius  # spicules included
        tissue = ds_plain.pixel_array[ds_plain.pixel_array > 0]
        assert ds.pixel_array[row, col] > np.percentile(tissue, 90)


def test_full_size_matrix_and_pixel_spacing_follow_the_vendor_and_scale() -> None:
    for vendor in Vendor:
        profile = vendor_profile(vendor)
        spec = ViewSpec(study=study_identity_for_seed(0), laterality=Laterality.LEFT,
                        vendor=vendor, scale=0.05)
        ds = build_view(spec)
        assert (ds.Rows, ds.Columns) == tuple(round(n * 0.05) for n in profile.large_matrix)
        spacing = float(ds.ImagerPixelSpacing[0])
        assert [float(v) for v in ds.PixelSpacing] == [spacing, spacing]
        # the detector keeps its physical size
        assert abs(ds.Rows * spacing - profile.large_matrix[0] * profile.pixel_spacing_mm) \
            <= spacing
        assert ds.Manufacturer == profile.manufacturer
        assert ds.ManufacturerModelName == profile.model_name
        assert ds.BitsStored == profile.bits_stored and ds.HighBit == profile.bits_stored - 1
        assert ds.PhotometricInterpretation == profile.photometric


# ---------------------------------------------------------------------------- options
def test_non_standard_views_and_modifiers_are_coded() -> None:
    ds = mammogram(view=MammoView.XCCL, modifiers=(ViewModifier.SPOT_COMPRESSION,
                                                   ViewModifier.MAGNIFICATION))
    item = ds.ViewCodeSequence[0]
    assert item.CodeValue == codes.SCT.CranioCaudalExaggeratedLaterally.value
    assert [m.CodeValue for m in item.ViewModifierCodeSequence] == [
        codes.SCT.SpotCompression.value, codes.SCT.Magnification.value]
    assert float(ds.EstimatedRadiographicMagnificationFactor) > 1.5
    displaced = mammogram(view=MammoView.ML, modifiers=(ViewModifier.IMPLANT_DISPLACED,))
    assert displaced.ViewCodeSequence[0].CodeValue == codes.SCT.MedioLateralProjection.value
    assert displaced.BreastImplantPresent == "YES"


def test_view_code_sequence_can_be_left_out_keeping_view_position() -> None:
    ds = mammogram(view=View.MLO, include_view_code=False)
    assert "ViewCodeSequence" not in ds
    assert ds.ViewPosition == "MLO"


def test_for_processing_uses_its_sop_class_and_has_no_voi_window() -> None:
    ds = mammogram(for_processing=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2.1"
    assert ds.PresentationIntentType == "FOR PROCESSING"
    assert "WindowCenter" not in ds
    assert "WindowCenter" in mammogram()


def test_flags_for_implant_partial_view_quality_control_and_generated_2d() -> None:
    ds = mammogram(implant_present=True, partial_view=True, quality_control=True,
                   generated_2d=True)
    assert ds.BreastImplantPresent == "YES"
    assert ds.PartialView == "YES" and len(ds.PartialViewCodeSequence) == 1
    assert ds.QualityControlImage == "YES"
    assert "GENERATED_2D" in ds.ImageType and ds.ImageType[0] == "DERIVED"
    assert "GENERATED_2D" not in mammogram().ImageType


def test_a_view_acquired_twice_gets_two_instances_with_their_own_times() -> None:
    study = study_identity_for_seed(4, WHEN)
    first = mammogram(study=study, acquisition_datetime=WHEN + timedelta(minutes=1))
    again = mammogram(study=study, acquisition_datetime=WHEN + timedelta(minutes=5),
                      instance_number=2)
    assert first.SOPInstanceUID != again.SOPInstanceUID
    assert first.StudyInstanceUID == again.StudyInstanceUID
    assert again.AcquisitionDateTime[:14] == (WHEN + timedelta(minutes=5)).strftime(
        "%Y%m%d%H%M%S")
    assert again.AcquisitionTime > first.AcquisitionTime


@pytest.mark.parametrize(("name", "charset", "marker"), [
    ("Müller^Jürgen", ("ISO_IR 100",), "Müller".encode("latin-1")),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ("", "ISO 2022 IR 87"), b"\x1b$B"),
    ("ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", ("ISO 2022 IR 13", "ISO 2022 IR 87"), b"\x1b$B"),
])
def test_patient_name_survives_a_file_round_trip_in_its_character_set(
        tmp_path: Path, name: str, charset: tuple[str, ...], marker: bytes) -> None:
    study = replace(study_identity_for_seed(5, WHEN), patient_name=name, character_set=charset)
    path = write_exam([mammogram(study=study)], tmp_path)[0]
    assert marker in path.read_bytes()
    back = pydicom.dcmread(path)
    assert str(back.PatientName) == name
    assert list(back.SpecificCharacterSet) == list(charset) or \
        back.SpecificCharacterSet == charset[0]


def test_ct_image_joins_the_study_of_the_mammograms() -> None:
    study = study_identity_for_seed(6, WHEN)
    ct = build_ct_image(study)
    mg = mammogram(study=study)
    assert ct.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ct.Modality == "CT"
    for attr in ("StudyInstanceUID", "AccessionNumber", "PatientID", "PatientName"):
        assert ct.get(attr) == mg.get(attr), attr
    assert ct.SeriesInstanceUID != mg.SeriesInstanceUID


def test_invalid_spec_values_raise_config_errors_naming_the_fix() -> None:
    study = study_identity_for_seed(0, WHEN)
    with pytest.raises(ConfigError, match="scale"):
        ViewSpec(study=study, laterality=Laterality.LEFT, scale=0)
    with pytest.raises(ConfigError, match="at least 32"):
        ViewSpec(study=study, laterality=Laterality.LEFT, matrix=(8, 8))
    with pytest.raises(ConfigError, match="timezone-aware"):
        replace(study, study_datetime=datetime(2024, 1, 1))


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("syntax", list(TransferSyntax))
def test_written_files_decode_to_the_built_pixels(tmp_path: Path,
                                                  syntax: TransferSyntax) -> None:
    datasets = build_exam(small_exam(seed=9, vendor=Vendor.GE))
    originals = [ds.pixel_array.copy() for ds in datasets]
    uids = [ds.SOPInstanceUID for ds in datasets]
    paths = write_exam(datasets, tmp_path, syntax)
    assert len(paths) == 4
    for path, original, uid in zip(paths, originals, uids, strict=True):
        back = pydicom.dcmread(path)
        assert back.SOPInstanceUID == uid  # lossless encoding keeps the instance's identity
        assert back.file_meta.TransferSyntaxUID == (
            JPEG2000Lossless if syntax is TransferSyntax.JPEG2000 else "1.2.840.10008.1.2.1")
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
        assert np.array_equal(back.pixel_array, original)


def test_generate_exam_summary_names_files_uids_and_lesion(tmp_path: Path) -> None:
    summary = generate_exam(small_exam(seed=12, lesion=True), tmp_path)
    assert sorted(tmp_path.iterdir()) == sorted(summary.files)
    data = json.loads(json.dumps(summary.as_dict()))
    lesions = [i for i in data["instances"] if i["lesion"]]
    assert len(lesions) == 2
    for entry in data["instances"]:
        ds = pydicom.dcmread(entry["file"])
        assert ds.SOPInstanceUID == entry["sop_instance_uid"]
        assert ds.StudyInstanceUID == data["study_instance_uid"]
        assert (ds.ImageLaterality, ds.ViewPosition) == (entry["laterality"], entry["view"])


# ---------------------------------------------------------------------------- PNGs
def test_real_pngs_are_wrapped_with_their_exact_pixel_values(tmp_path: Path,
                                                             fixtures_dir: Path) -> None:
    info = json.loads((fixtures_dir / "images.json").read_text())
    for syntax in TransferSyntax:
        paths = real_exam0(tmp_path / str(syntax), transfer_syntax=syntax,
                           fixtures_dir=fixtures_dir)
        assert len(paths) == 4
        for path in paths:
            ds = pydicom.dcmread(path)
            name = EXAM0_FILES[(Laterality(ds.ImageLaterality), View(ds.ViewPosition))]
            png = cv2.imread(str(fixtures_dir / "images" / name), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(ds.pixel_array, png)
            assert ds.BitsStored == int(info[name]["max_value"]).bit_length()
            assert ds.PhotometricInterpretation == "MONOCHROME2"


def test_full_range_16_bit_png_gets_16_bits_stored(fixtures_dir: Path) -> None:
    info = json.loads((fixtures_dir / "images.json").read_text())
    name = "1_L_CC.png"
    datasets = exam_from_pngs({(Laterality.LEFT, View.CC): fixtures_dir / "images" / name},
                              ExamSpec(seed=1, vendor=Vendor.SIEMENS))
    ds = datasets[0]
    assert ds.BitsStored == int(info[name]["max_value"]).bit_length()
    assert list(ds.pixel_array.shape) == info[name]["shape"]
    assert ds.Manufacturer == vendor_profile(Vendor.SIEMENS).manufacturer


def test_exam_from_pngs_puts_all_views_in_one_study(fixtures_dir: Path) -> None:
    datasets = exam_from_pngs(exam0_pngs(fixtures_dir), ExamSpec(seed=3))
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 4


def test_unreadable_png_raises_decode_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DecodeError, match=r"broken\.png"):
        read_png(bad)
    color = tmp_path / "color.png"
    cv2.imwrite(str(color), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DecodeError, match="grayscale"):
        read_png(color)
