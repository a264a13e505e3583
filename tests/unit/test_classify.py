"""Classification of one instance from its header: class, view, laterality, scorable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless

from tests.unit.mg_headers import code_item, mg_header
from triage.config import Settings, load_settings
from triage.dicom.classify import (
    BREAST_PROJECTION_FOR_PRESENTATION,
    BREAST_PROJECTION_FOR_PROCESSING,
    BREAST_TOMOSYNTHESIS,
    MG_FOR_PROCESSING,
    SYNTHETIC_2D_VENDOR_RULES,
    VIEW_CODES,
    VIEW_MODIFIER_CODES,
    classify_instance,
)
from triage.vocabulary import ImageClass, Laterality, View

NOW = datetime(2025, 1, 7, 12, 0, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _with(settings: Settings, **overrides: object) -> Settings:
    return load_settings(data_dir=settings.data_dir, **overrides)


def classify(ds: Dataset, settings: Settings):
    return classify_instance(ds, settings, now=NOW)


# ---- the code tables agree with the DICOM standard (pydicom's copy of CID 4014/4015) --------
def test_view_code_table_covers_exactly_cid_4014(settings: Settings) -> None:
    sct_codes = {value for (scheme, value) in VIEW_CODES if scheme == "SCT"}
    assert sct_codes == {c.value for c in codes.cid4014.concepts.values()}


def test_view_modifier_table_covers_exactly_cid_4015(settings: Settings) -> None:
    sct_codes = {value for (scheme, value) in VIEW_MODIFIER_CODES if scheme == "SCT"}
    assert sct_codes == {c.value for c in codes.cid4015.concepts.values()}


@pytest.mark.parametrize("table", [VIEW_CODES, VIEW_MODIFIER_CODES])
def test_every_srt_code_is_the_legacy_form_of_its_sct_code(table: dict) -> None:
    by_meaning: dict[str, dict[str, str]] = {}
    for (scheme, value), entry in table.items():
        by_meaning.setdefault(entry.meaning, {})[scheme] = value
    for meaning, pair in by_meaning.items():
        assert Code(pair["SRT"], "SRT", meaning) == Code(pair["SCT"], "SCT", meaning), meaning


# ---- views -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "scheme", "expected"),
    [
        ("399162004", "SCT", View.CC),
        ("R-10242", "SRT", View.CC),
        ("399368009", "SCT", View.MLO),
        ("R-10226", "SRT", View.MLO),
    ],
)
def test_standard_view_codes_give_a_scorable_view(code, scheme, expected, settings) -> None:
    result = classify(mg_header("R", view_code=(code, scheme, "x")), settings)
    assert result.view is expected
    assert result.view_label == expected.value
    assert result.scorable and result.reason is None
    assert result.image_class is ImageClass.FFDM
    assert result.laterality is Laterality.RIGHT


@pytest.mark.parametrize(
    ("code", "scheme", "label"),
    [
        ("399192008", "SCT", "XCCL"),
        ("R-1024A", "SRT", "XCCL"),
        ("399101009", "SCT", "XCCM"),
        ("399260004", "SCT", "ML"),
        ("399352003", "SCT", "LM"),
        ("R-10230", "SRT", "LMO"),
        ("399196006", "SCT", "FB"),
    ],
)
def test_other_cid_4014_views_are_stored_as_non_standard(code, scheme, label, settings) -> None:
    result = classify(mg_header("L", view_code=(code, scheme, "whatever")), settings)
    assert result.view is None
    assert result.view_label == label
    assert not result.scorable
    assert f"non-standard view {label}" in result.reason


def test_view_code_sequence_wins_over_view_position(settings) -> None:
    ds = mg_header("L", "MLO", view_position="CC")
    assert classify(ds, settings).view is View.MLO


@pytest.mark.parametrize(("position", "expected"), [("CC", View.CC), ("MLO", View.MLO),
                                                    (" MLO ", View.MLO)])
def test_view_position_is_used_without_view_code_sequence(position, expected, settings) -> None:
    result = classify(mg_header("L", with_view_code=False, view_position=position), settings)
    assert result.view is expected
    assert result.scorable


@pytest.mark.parametrize("position", ["XCCL", "ML", "LM", "LMO", "SIO", "FB"])
def test_non_standard_view_position_is_not_scorable(position, settings) -> None:
    result = classify(mg_header("L", with_view_code=False, view_position=position), settings)
    assert result.view is None
    assert result.view_label == position
    assert f"non-standard view {position}" in result.reason


def test_view_position_with_side_gives_view_and_missing_laterality(settings) -> None:
    result = classify(mg_header(None, with_view_code=False, view_position="RMLO"), settings)
    assert (result.view, result.laterality, result.scorable) == (View.MLO, Laterality.RIGHT,
                                                                 True)


def test_unknown_code_scheme_falls_back_to_code_meaning(settings) -> None:
    ds = mg_header("L", view_code=("CC1", "99ACME", "Cranio-caudal"))
    assert classify(ds, settings).view is View.CC


def test_unknown_code_without_position_is_an_unrecognised_view(settings) -> None:
    ds = mg_header("L", view_code=("X9", "99ACME", "lateral bla"))
    result = classify(ds, settings)
    assert not result.scorable
    assert "unrecognised view code" in result.reason


def test_missing_view_makes_an_otherwise_scorable_image_unscorable(settings) -> None:
    result = classify(mg_header("L", None), settings)
    assert not result.scorable
    assert "view unreadable" in result.reason


# ---- laterality --------------------------------------------------------------------------------
def test_image_laterality_wins_over_series_laterality(settings) -> None:
    ds = mg_header("L", "CC", Laterality="R")
    assert classify(ds, settings).laterality is Laterality.LEFT


def test_series_laterality_is_used_without_image_laterality(settings) -> None:
    ds = mg_header(None, "CC", Laterality="R")
    assert classify(ds, settings).laterality is Laterality.RIGHT


@pytest.mark.parametrize(("value", "fragment"), [(None, "no Image Laterality"),
                                                 ("B", "value 'B'"), ("U", "value 'U'")])
def test_unreadable_laterality_is_not_scorable(value, fragment, settings) -> None:
    result = classify(mg_header(value, "CC"), settings)
    assert result.laterality is None
    assert not result.scorable
    assert "laterality unreadable" in result.reason and fragment in result.reason


def test_tomosynthesis_laterality_from_shared_frame_anatomy(settings) -> None:
    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    shared = Dataset()
    shared.FrameAnatomySequence = Sequence([anatomy])
    ds = mg_header(None, "MLO", sop_class=BREAST_TOMOSYNTHESIS)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    result = classify(ds, settings)
    assert (result.image_class, result.laterality, result.view, result.scorable) == (
        ImageClass.DBT, Laterality.RIGHT, View.MLO, True)


# ---- reasons that make an image unscorable ---------------------------------------------------
@pytest.mark.parametrize(
    ("code", "scheme", "name"),
    [("399055006", "SCT", "spot compression"), ("R-102D6", "SRT", "magnification"),
     ("399209000", "SCT", "implant displaced"), ("399161006", "SCT", "cleavage")],
)
def test_view_modifier_inside_view_code_is_named_in_the_reason(code, scheme, name,
                                                               settings) -> None:
    ds = mg_header("L", "CC")
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence([code_item(code, scheme, "?")])
    result = classify(ds, settings)
    assert result.view is View.CC
    assert not result.scorable
    assert f"view modifier: {name}" in result.reason


def test_top_level_view_modifier_with_unknown_code_uses_its_meaning(settings) -> None:
    ds = mg_header("L", "MLO")
    ds.ViewModifierCodeSequence = Sequence([code_item("Z1", "99ACME", "Paddle tilt")])
    assert "view modifier: Paddle tilt" in classify(ds, settings).reason


@pytest.mark.parametrize(
    ("keyword", "fragment"),
    [("PartialView", "partial view"), ("BreastImplantPresent", "breast implant present"),
     ("QualityControlImage", "quality control image")],
)
def test_yes_flags_make_an_image_unscorable(keyword, fragment, settings) -> None:
    assert classify(mg_header("L", "CC", **{keyword: "NO"}), settings).scorable
    result = classify(mg_header("L", "CC", **{keyword: "YES"}), settings)
    assert not result.scorable
    assert fragment in result.reason


def test_every_reason_is_reported_together(settings) -> None:
    ds = mg_header("L", "CC", BreastImplantPresent="YES", PartialView="YES",
                   PartialViewDescription="upper half")
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence(
        [code_item("399209000", "SCT", "Implant Displaced")])
    reason = classify(ds, settings).reason
    for fragment in ("implant displaced", "partial view (upper half)", "breast implant present"):
        assert fragment in reason


# ---- image classes --------------------------------------------------------------------------
def test_for_processing_mammogram_is_ffdm_but_not_scorable(settings) -> None:
    result = classify(mg_header("L", "CC", sop_class=MG_FOR_PROCESSING), settings)
    assert result.image_class is ImageClass.FFDM
    assert not result.scorable and "For Processing" in result.reason


def test_presentation_intent_for_processing_is_not_scorable(settings) -> None:
    result = classify(mg_header("L", "CC", PresentationIntentType="FOR PROCESSING"), settings)
    assert not result.scorable and "For Processing" in result.reason


@pytest.mark.parametrize("sop_class", [BREAST_PROJECTION_FOR_PRESENTATION,
                                       BREAST_PROJECTION_FOR_PROCESSING])
def test_breast_projections_are_stored_never_scored(sop_class, settings) -> None:
    result = classify(mg_header("L", "CC", sop_class=sop_class), settings)
    assert result.image_class is ImageClass.PROJECTION
    assert not result.scorable and "projection" in result.reason


def test_generated_2d_breast_projection_is_synthetic2d(settings) -> None:
    ds = mg_header("L", "CC", sop_class=BREAST_PROJECTION_FOR_PRESENTATION,
                   ImageType=["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"])
    result = classify(ds, settings)
    assert result.image_class is ImageClass.SYNTHETIC2D and result.scorable


def test_generated_2d_image_type_on_mammogram_is_synthetic2d(settings) -> None:
    ds = mg_header("R", "MLO", ImageType=["DERIVED", "PRIMARY", "GENERATED_2D"])
    assert classify(ds, settings).image_class is ImageClass.SYNTHETIC2D


@pytest.mark.parametrize(
    ("manufacturer", "attribute", "text"),
    [("HOLOGIC, Inc.", "SeriesDescription", "L CC C-View"),
     ("Hologic", "ImageType", ["DERIVED", "PRIMARY", "CVIEW"]),
     ("SIEMENS", "SeriesDescription", "Insight 2D RCC"),
     ("GE MEDICAL SYSTEMS", "ProtocolName", "V-Preview CC"),
     ("FUJIFILM Corporation", "SeriesDescription", "S-View")],
)
def test_vendor_rules_recognise_synthetic_2d(manufacturer, attribute, text, settings) -> None:
    ds = mg_header("L", "CC", Manufacturer=manufacturer, **{attribute: text})
    assert classify(ds, settings).image_class is ImageClass.SYNTHETIC2D


def test_vendor_marker_needs_the_vendor(settings) -> None:
    ds = mg_header("L", "CC", Manufacturer="ACME", SeriesDescription="C-View")
    assert classify(ds, settings).image_class is ImageClass.FFDM
    ds = mg_header("L", "CC", Manufacturer="HOLOGIC", SeriesDescription="L CC")
    assert classify(ds, settings).image_class is ImageClass.FFDM


def test_vendor_rule_table_names_each_product_once() -> None:
    names = [rule.product for rule in SYNTHETIC_2D_VENDOR_RULES]
    assert len(names) == len(set(names))
    assert {"Hologic C-View", "Siemens Insight 2D", "GE V-Preview"} <= set(names)


def test_breast_tomosynthesis_is_dbt_and_scorable(settings) -> None:
    result = classify(mg_header("R", "CC", sop_class=BREAST_TOMOSYNTHESIS), settings)
    assert result.image_class is ImageClass.DBT and result.scorable


def test_ct_is_another_modality(settings) -> None:
    ds = mg_header(None, None, sop_class=CT, modality="CT", BodyPartExamined="CHEST")
    result = classify(ds, settings)
    assert result.image_class is ImageClass.OTHER
    assert not result.scorable
    assert "not a mammogram: modality CT" in result.reason


@pytest.mark.parametrize(("sop_class", "modality", "extra"), [
    (SECONDARY_CAPTURE, "MG", {}),
    (CT, "CT", {"ImageType": ["DERIVED", "SECONDARY", "TOMO"]}),
    (CT, "CT", {"BodyPartExamined": "BREAST"}),
])
def test_tomosynthesis_archived_as_sc_or_ct_is_not_scored(sop_class, modality, extra,
                                                          settings) -> None:
    ds = mg_header("L", "CC", sop_class=sop_class, modality=modality, **extra)
    result = classify(ds, settings)
    assert result.image_class is ImageClass.OTHER
    assert "breast image archived as" in result.reason


def test_mammogram_stored_as_dx_is_not_scored(settings) -> None:
    ds = mg_header("L", "CC", sop_class="1.2.840.10008.5.1.4.1.1.1.1")
    result = classify(ds, settings)
    assert result.image_class is ImageClass.OTHER
    assert "stored as Digital X-Ray" in result.reason


# ---- loopback ----------------------------------------------------------------------------------
def test_our_uid_root_is_loopback(settings) -> None:
    ds = mg_header("L", "CC", sop_uid=settings.uid_root + "7.7.7")
    result = classify(ds, settings)
    assert result.loopback and not result.scorable
    assert "loopback" in result.reason


def test_our_device_in_contributing_equipment_is_loopback(settings) -> None:
    equipment = Dataset()
    equipment.Manufacturer = "triage"
    equipment.ManufacturerModelName = "worklist triage"
    ds = mg_header("L", "CC", sop_class=SECONDARY_CAPTURE, modality="OT")
    ds.ContributingEquipmentSequence = Sequence([equipment])
    assert classify(ds, settings).loopback


def test_other_contributing_equipment_is_not_loopback(settings) -> None:
    equipment = Dataset()
    equipment.Manufacturer = "Some Router Inc"
    ds = mg_header("L", "CC")
    ds.ContributingEquipmentSequence = Sequence([equipment])
    result = classify(ds, settings)
    assert not result.loopback and result.scorable


# ---- study age and screening procedures -------------------------------------------------------
def test_study_older_than_max_age_is_not_scorable(settings) -> None:
    aged = _with(settings, max_study_age_hours=48)
    old = mg_header("L", "CC", StudyDate=(NOW - timedelta(days=3)).strftime("%Y%m%d"),
                    StudyTime="120000", TimezoneOffsetFromUTC="+0000")
    recent = mg_header("L", "CC", StudyDate=(NOW - timedelta(days=1)).strftime("%Y%m%d"),
                       StudyTime="120000", TimezoneOffsetFromUTC="+0000")
    assert "TRIAGE_MAX_STUDY_AGE_HOURS=48" in classify(old, aged).reason
    assert classify(recent, aged).scorable
    assert classify(old, settings).scorable  # 0 = no age limit


def test_study_age_uses_the_timezone_offset(settings) -> None:
    aged = _with(settings, max_study_age_hours=2)
    start = NOW - timedelta(hours=3)  # 09:00 UTC
    local = (start + timedelta(hours=2)).strftime("%H%M%S")  # 11:00 at +0200
    in_plus_two = mg_header("L", "CC", StudyDate=start.strftime("%Y%m%d"), StudyTime=local,
                            TimezoneOffsetFromUTC="+0200")
    assert not classify(in_plus_two, aged).scorable
    in_utc = mg_header("L", "CC", StudyDate=start.strftime("%Y%m%d"), StudyTime=local,
                       TimezoneOffsetFromUTC="+0000")
    assert classify(in_utc, aged).scorable


def test_missing_study_date_is_never_too_old(settings) -> None:
    aged = _with(settings, max_study_age_hours=1)
    ds = mg_header("L", "CC")
    del ds.StudyDate
    assert classify(ds, aged).scorable


def test_screening_procedure_matches_code_meaning_value_or_description(settings) -> None:
    screening = _with(settings, screening_procedures="*screen*,77067")
    by_description = mg_header("L", "CC", StudyDescription="MAMMO SCREENING BILAT")
    by_meaning = mg_header("L", "CC", StudyDescription="MAMMO")
    by_meaning.ProcedureCodeSequence = Sequence([code_item("X1", "99ACME", "Screening mammo")])
    by_requested = mg_header("L", "CC", StudyDescription="MAMMO")
    request = Dataset()
    request.RequestedProcedureCodeSequence = Sequence([code_item("77067", "CPT", "Mammo")])
    by_requested.RequestAttributesSequence = Sequence([request])
    for ds in (by_description, by_meaning, by_requested):
        assert classify(ds, screening).scorable


def test_diagnostic_procedure_is_not_a_screening_procedure(settings) -> None:
    screening = _with(settings, screening_procedures=["*SCREEN*"])
    ds = mg_header("L", "CC", StudyDescription="MAMMO DIAGNOSTIC LEFT")
    result = classify(ds, screening)
    assert not result.scorable
    assert "not a configured screening procedure" in result.reason
    assert classify(ds, settings).scorable  # no patterns = every procedure


# ---- lossy compression ---------------------------------------------------------------------
@pytest.mark.parametrize(("syntax", "flag", "lossy"), [
    (ExplicitVRLittleEndian, None, False),
    (JPEG2000Lossless, None, False),
    (JPEG2000, None, True),
    (JPEG2000, "00", False),
    (ExplicitVRLittleEndian, "01", True),
])
def test_lossy_flag_from_transfer_syntax_and_header(syntax, flag, lossy, settings) -> None:
    ds = mg_header("L", "CC")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    if flag:
        ds.LossyImageCompression = flag
    result = classify(ds, settings)
    assert result.lossy is lossy
    assert result.scorable  # lossy inputs are flagged, not refused


def test_header_without_sop_class_is_other_and_does_not_raise(settings) -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    result = classify(ds, settings)
    assert result.image_class is ImageClass.OTHER and not result.scorable
