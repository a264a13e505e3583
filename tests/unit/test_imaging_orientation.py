"""Orientation: which stored images get mirrored, and contradictions are reported."""

from __future__ import annotations

import logging

import pytest

from triage.errors import PreprocessingError
from triage.imaging import needs_flip, resolve_orientation
from triage.imaging.orientation import faces_right_from_patient_orientation
from triage.vocabulary import Laterality


def test_without_patient_orientation_right_breasts_are_flipped():
    assert needs_flip(Laterality.RIGHT) is True
    assert needs_flip(Laterality.LEFT) is False
    assert resolve_orientation(Laterality.LEFT).source == "laterality_convention"


@pytest.mark.parametrize(
    ("laterality", "patient_orientation", "flip"),
    [
        (Laterality.LEFT, "A\\R", False),  # left CC, usual storage
        (Laterality.RIGHT, "P\\L", True),  # right CC, usual storage
        (Laterality.LEFT, ["A", "FR"], False),  # left MLO
        (Laterality.RIGHT, ("P", "FL"), True),  # right MLO
    ],
)
def test_consistent_patient_orientation_agrees_with_the_convention(
    laterality, patient_orientation, flip, caplog
):
    with caplog.at_level(logging.WARNING, logger="triage.imaging.orientation"):
        orientation = resolve_orientation(laterality, patient_orientation)
    assert orientation.needs_flip is flip
    assert orientation.source == "patient_orientation"
    assert orientation.conflict is None
    assert not caplog.records


def test_contradicting_patient_orientation_is_logged_and_followed(caplog):
    with caplog.at_level(logging.WARNING, logger="triage.imaging.orientation"):
        orientation = resolve_orientation(
            Laterality.RIGHT, "A\\L", sop_instance_uid="1.2.3.4"
        )
    assert orientation.needs_flip is False  # the pixels face right already
    assert orientation.conflict is not None
    (record,) = caplog.records
    assert "stored mirrored or its laterality is wrong" in record.getMessage()
    assert record.sop_instance_uid == "1.2.3.4"


def test_contradicting_patient_orientation_raises_when_strict():
    with pytest.raises(PreprocessingError, match="laterality"):
        resolve_orientation(Laterality.LEFT, "P\\R", strict=True)


@pytest.mark.parametrize("value", ["R\\F", "F\\P", "X\\Y"])
def test_rotated_or_invalid_patient_orientation_raises(value):
    with pytest.raises(PreprocessingError, match="rotated or the value is invalid"):
        faces_right_from_patient_orientation(value)


@pytest.mark.parametrize("value", [None, "", [], [""]])
def test_empty_patient_orientation_means_unknown(value):
    assert faces_right_from_patient_orientation(value) is None
