"""Structural checks of received objects: each broken kind gets its documented status."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.listener_helpers import (
    BASIC_TEXT_SR,
    DEFLATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    RLE,
    BrokenObject,
    encapsulated_image,
    encode_data_set,
    image_dataset,
    malformed_corpus,
    text_sr_dataset,
    write_received_file,
)
from triage.dicom import validate
from triage.dicom.validate import RejectedInput, check_received_file, expected_native_length


def check(tmp_path: Path, data_set: bytes, *, sop_class: str, sop_instance: str,
          transfer_syntax: str = EXPLICIT_LE) -> validate.CheckedObject:
    path = write_received_file(tmp_path / "received.part", data_set, sop_class=sop_class,
                               sop_instance=sop_instance, transfer_syntax=transfer_syntax)
    return check_received_file(path, transfer_syntax_uid=transfer_syntax,
                               affected_sop_class_uid=sop_class,
                               affected_sop_instance_uid=sop_instance)


@pytest.mark.parametrize("transfer_syntax", [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED])
def test_a_valid_native_image_passes_in_every_uncompressed_transfer_syntax(
        tmp_path: Path, transfer_syntax: str) -> None:
    ds = image_dataset(12, 10, with_sequence=True)
    checked = check(tmp_path, encode_data_set(ds, transfer_syntax),
                    sop_class=str(ds.SOPClassUID), sop_instance=str(ds.SOPInstanceUID),
                    transfer_syntax=transfer_syntax)
    assert checked.sop_instance_uid == ds.SOPInstanceUID
    assert checked.study_instance_uid == ds.StudyInstanceUID
    assert checked.pixel_data is not None and not checked.pixel_data.encapsulated
    assert checked.pixel_data.length == len(ds.PixelData)
    assert "PixelData" not in checked.header  # header only, pixels never read
    assert checked.header.ViewCodeSequence[0].ViewModifierCodeSequence[0].CodeValue == "R-102D2"


def test_odd_length_8_bit_pixel_data_with_its_padding_byte_passes(tmp_path: Path) -> None:
    ds = image_dataset(3, 3, bits=8)
    checked = check(tmp_path, encode_data_set(ds), sop_class=str(ds.SOPClassUID),
                    sop_instance=str(ds.SOPInstanceUID))
    assert checked.pixel_data is not None
    assert checked.pixel_data.length == expected_native_length(ds, "PixelData") + 1


def test_encapsulated_pixel_data_passes_and_its_fragments_are_counted(tmp_path: Path) -> None:
    ds = encapsulated_image(frame=b"\x05" * 40)
    checked = check(tmp_path, encode_data_set(ds), sop_class=str(ds.SOPClassUID),
                    sop_instance=str(ds.SOPInstanceUID), transfer_syntax=RLE)
    assert checked.pixel_data is not None and checked.pixel_data.encapsulated
    assert checked.pixel_data.fragments == 1


def test_encapsulated_pixel_data_in_a_native_transfer_syntax_cannot_be_understood(
        tmp_path: Path) -> None:
    ds = encapsulated_image()
    with pytest.raises(RejectedInput) as caught:
        check(tmp_path, encode_data_set(ds), sop_class=str(ds.SOPClassUID),
              sop_instance=str(ds.SOPInstanceUID), transfer_syntax=EXPLICIT_LE)
    assert caught.value.status == validate.STATUS_CANNOT_UNDERSTAND


def test_a_structured_report_needs_no_pixel_data(tmp_path: Path) -> None:
    ds = text_sr_dataset()
    checked = check(tmp_path, encode_data_set(ds), sop_class=BASIC_TEXT_SR,
                    sop_instance=str(ds.SOPInstanceUID))
    assert checked.pixel_data is None


def test_sop_instance_uid_differing_from_the_request_is_refused(tmp_path: Path) -> None:
    ds = image_dataset(4, 4)
    with pytest.raises(RejectedInput) as caught:
        check(tmp_path, encode_data_set(ds), sop_class=str(ds.SOPClassUID),
              sop_instance="1.2.3.999")
    assert caught.value.status == validate.STATUS_DATASET_MISMATCH
    assert caught.value.uids["SOPInstanceUID"] == ds.SOPInstanceUID


@pytest.mark.parametrize("broken", malformed_corpus(), ids=lambda b: b.name)
def test_each_broken_object_gets_its_documented_status(tmp_path: Path,
                                                       broken: BrokenObject) -> None:
    with pytest.raises(RejectedInput) as caught:
        check(tmp_path, broken.data_set, sop_class=broken.sop_class,
              sop_instance=broken.sop_instance, transfer_syntax=broken.transfer_syntax)
    assert caught.value.status == broken.expected_status, caught.value.reason
    assert caught.value.reason


def test_expected_length_counts_frames_samples_and_bits() -> None:
    ds = image_dataset(4, 6, bits=16)
    ds.NumberOfFrames = 3
    ds.SamplesPerPixel = 3
    assert expected_native_length(ds, "PixelData") == 4 * 6 * 3 * 3 * 2
    ds.BitsAllocated = 1
    ds.SamplesPerPixel = 1
    assert expected_native_length(ds, "PixelData") == (4 * 6 * 3 + 7) // 8
