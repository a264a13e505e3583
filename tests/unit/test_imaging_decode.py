"""Pixel decoding: every accepted transfer syntax, the Modality LUT, MONOCHROME1 inversion,
the lossy flag, single-frame decoding of multi-frame objects and DecodeError."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence

from triage.errors import DecodeError
from triage.imaging import decode_pixels, iter_frames

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
BITS_STORED = 12
MAX_STORED = 2**BITS_STORED - 1


def _pixels(shape=(48, 40), frames: int | None = None, seed: int = 0) -> np.ndarray:
    """Smooth 12-bit mammogram-like values (compressible), background 0."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols]
    count = frames or 1
    out = np.empty((count, rows, cols), np.uint16)
    for f in range(count):
        base = 1500 + 1200 * np.sin(x / 7.0 + f) * np.cos(y / 9.0)
        noise = rng.integers(0, 40, shape)
        image = np.clip(base + noise, 0, MAX_STORED)
        image[:, : cols // 5] = 0  # background
        out[f] = image.astype(np.uint16)
    return out if frames else out[0]


def _dataset(pixels: np.ndarray, **attributes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def _roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _jpeg_lossless_via_gdcm(ds: Dataset, tmp_path) -> Dataset:
    gdcm = pytest.importorskip("gdcm")
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    ds.save_as(source, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return pydicom.dcmread(target)


LOSSLESS = [
    pytest.param(uid.ExplicitVRLittleEndian, {}, id="explicit-vr-le"),
    pytest.param(uid.ImplicitVRLittleEndian, {}, id="implicit-vr-le"),
    pytest.param(uid.DeflatedExplicitVRLittleEndian, {}, id="deflated"),
    pytest.param(uid.RLELossless, {}, id="rle"),
    pytest.param(uid.JPEGLSLossless, {}, id="jpeg-ls-lossless"),
    pytest.param(uid.JPEG2000Lossless, {}, id="jpeg2000-lossless"),
    pytest.param(uid.JPEGLosslessSV1, {}, id="jpeg-lossless-sv1"),
]


@pytest.mark.parametrize(("transfer_syntax", "options"), LOSSLESS)
def test_lossless_transfer_syntaxes_round_trip_exactly(transfer_syntax, options, tmp_path):
    pixels = _pixels()
    ds = _dataset(pixels)
    if transfer_syntax == uid.JPEGLosslessSV1:
        ds = _jpeg_lossless_via_gdcm(ds, tmp_path)
    elif transfer_syntax.is_compressed:
        ds.compress(transfer_syntax, **options)
        ds = _roundtrip(ds)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds = _roundtrip(ds)
    assert ds.file_meta.TransferSyntaxUID == transfer_syntax

    decoded = decode_pixels(ds)

    assert decoded.transfer_syntax_uid == transfer_syntax
    assert decoded.array.dtype == np.float32
    np.testing.assert_array_equal(decoded.array, pixels.astype(np.float32))
    assert decoded.lossy is False and decoded.lossy_reason is None
    assert decoded.inverted is False
    assert decoded.frame is None and decoded.number_of_frames == 1


@pytest.mark.parametrize(
    ("transfer_syntax", "options", "tolerance"),
    [
        pytest.param(uid.JPEGLSNearLossless, {"jls_error": 3}, 3, id="jpeg-ls-near-lossless"),
        pytest.param(uid.JPEG2000, {"j2k_cr": [4]}, 100, id="jpeg2000-lossy"),
    ],
)
def test_lossy_transfer_syntaxes_decode_and_are_flagged(transfer_syntax, options, tolerance):
    pixels = _pixels()
    ds = _dataset(pixels)
    ds.compress(transfer_syntax, **options)

    decoded = decode_pixels(_roundtrip(ds))

    assert decoded.lossy is True
    assert str(transfer_syntax) in (decoded.lossy_reason or "")
    assert np.abs(decoded.array - pixels.astype(np.float32)).max() <= tolerance


def test_lossy_image_compression_attribute_flags_uncompressed_data():
    decoded = decode_pixels(_dataset(_pixels(), LossyImageCompression="01"))
    assert decoded.lossy is True
    assert "Lossy Image Compression" in (decoded.lossy_reason or "")
    assert decode_pixels(_dataset(_pixels(), LossyImageCompression="00")).lossy is False


def test_monochrome1_is_inverted_from_the_maximum_stored_value():
    pixels = _pixels()
    decoded = decode_pixels(_dataset(pixels, PhotometricInterpretation="MONOCHROME1"))
    assert decoded.inverted is True
    assert decoded.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(decoded.array, MAX_STORED - pixels.astype(np.float32))


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME2", "INVERSE", True),
        ("MONOCHROME1", "INVERSE", True),  # the DX/MG pairing: inverted once
        ("MONOCHROME2", "IDENTITY", False),
    ],
)
def test_presentation_lut_shape_inverse_inverts_once(photometric, shape, inverted):
    pixels = _pixels()
    decoded = decode_pixels(
        _dataset(pixels, PhotometricInterpretation=photometric, PresentationLUTShape=shape)
    )
    assert decoded.inverted is inverted
    expected = MAX_STORED - pixels if inverted else pixels
    np.testing.assert_array_equal(decoded.array, expected.astype(np.float32))


def test_rescale_slope_and_intercept_are_applied():
    pixels = _pixels()
    decoded = decode_pixels(_dataset(pixels, RescaleSlope=2, RescaleIntercept=-10))
    assert decoded.modality_lut == "rescale"
    np.testing.assert_array_equal(decoded.array, 2 * pixels.astype(np.float32) - 10)
    assert decoded.value_range == (-10.0, 2 * MAX_STORED - 10.0)


def test_monochrome1_inversion_uses_the_rescaled_range():
    pixels = _pixels()
    decoded = decode_pixels(
        _dataset(
            pixels, PhotometricInterpretation="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-10
        )
    )
    rescaled = 2 * pixels.astype(np.float32) - 10
    np.testing.assert_array_equal(decoded.array, (-10 + 2 * MAX_STORED - 10) - rescaled)


def test_modality_lut_sequence_is_applied():
    pixels = _pixels()
    lut = (np.arange(MAX_STORED + 1) // 2 + 7).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [MAX_STORED + 1, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [int(v) for v in lut]
    decoded = decode_pixels(_dataset(pixels, ModalityLUTSequence=Sequence([item])))
    assert decoded.modality_lut == "lut"
    np.testing.assert_array_equal(decoded.array, lut[pixels].astype(np.float32))


def test_unused_high_bits_are_ignored():
    pixels = _pixels()
    ds = _dataset(pixels)
    ds.PixelData = (pixels | 0xF000).astype("<u2").tobytes()  # junk above Bits Stored
    np.testing.assert_array_equal(decode_pixels(ds).array, pixels.astype(np.float32))


def _functional_group_rescale(intercept: float) -> Dataset:
    transform = Dataset()
    transform.RescaleSlope = 1
    transform.RescaleIntercept = intercept
    transform.RescaleType = "US"
    group = Dataset()
    group.PixelValueTransformationSequence = Sequence([transform])
    return group


def test_enhanced_multiframe_rescale_comes_from_the_frame_functional_groups():
    volume = _pixels(frames=3)
    ds = _dataset(volume)
    ds.SharedFunctionalGroupsSequence = Sequence([_functional_group_rescale(100)])
    per_frame = [Dataset(), _functional_group_rescale(200), Dataset()]
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    for index, intercept in [(0, 100), (1, 200), (2, 100)]:
        decoded = decode_pixels(ds, frame=index)
        assert decoded.frame == index
        np.testing.assert_array_equal(decoded.array, volume[index].astype(np.float32) + intercept)


@pytest.mark.parametrize(
    "transfer_syntax",
    [uid.ExplicitVRLittleEndian, uid.RLELossless, uid.JPEG2000Lossless, uid.JPEGLSLossless],
    ids=["native", "rle", "jpeg2000", "jpeg-ls"],
)
def test_multiframe_frames_decode_one_at_a_time(transfer_syntax):
    volume = _pixels(frames=3)
    ds = _dataset(volume)
    if transfer_syntax.is_compressed:
        ds.compress(transfer_syntax)
    ds = _roundtrip(ds)
    decoded = list(iter_frames(ds))
    assert [d.frame for d in decoded] == [0, 1, 2]
    for index, frame in enumerate(decoded):
        assert frame.array.shape == volume.shape[1:]
        np.testing.assert_array_equal(frame.array, volume[index].astype(np.float32))
        assert frame.number_of_frames == 3


@pytest.mark.parametrize(
    "transfer_syntax", [uid.RLELossless, uid.JPEG2000Lossless], ids=["rle", "jpeg2000"]
)
def test_a_corrupt_frame_does_not_stop_decoding_the_other_frames(transfer_syntax):
    volume = _pixels(frames=3)
    ds = _dataset(volume)
    ds.compress(transfer_syntax)
    frames = list(generate_frames(ds.PixelData, number_of_frames=3))
    frames[2] = b"\x07" * 64
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds = _roundtrip(ds)

    np.testing.assert_array_equal(decode_pixels(ds, frame=0).array, volume[0].astype(np.float32))
    with pytest.raises(DecodeError) as raised:
        decode_pixels(ds, frame=2)
    assert ds.SOPInstanceUID in str(raised.value)
    assert str(transfer_syntax) in str(raised.value)


def test_corrupt_jpeg2000_pixel_data_raises_decode_error_naming_instance_and_syntax():
    ds = _dataset(_pixels())
    ds.compress(uid.JPEG2000Lossless)
    (codestream,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([codestream[:40] + b"\xff\x00" * 50])
    with pytest.raises(DecodeError) as raised:
        decode_pixels(_roundtrip(ds))
    message = str(raised.value)
    assert ds.SOPInstanceUID in message
    assert "JPEG 2000" in message and str(uid.JPEG2000Lossless) in message


def test_child_process_decoder_returns_the_same_pixels():
    pytest.importorskip("gdcm")
    from triage.imaging.isolated import decode_in_child

    pixels = _pixels()
    ds = _dataset(pixels)
    ds.compress(uid.JPEG2000Lossless)
    np.testing.assert_array_equal(decode_in_child(_roundtrip(ds), 0, "gdcm"), pixels)


def test_truncated_native_pixel_data_raises_decode_error():
    ds = _dataset(_pixels())
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(DecodeError, match=ds.SOPInstanceUID):
        decode_pixels(ds)


def test_colour_image_raises_decode_error():
    ds = _dataset(_pixels())
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(DecodeError, match="not a grayscale image"):
        decode_pixels(ds)


def test_missing_pixel_data_raises_decode_error():
    ds = _dataset(_pixels())
    del ds.PixelData
    with pytest.raises(DecodeError, match="no Pixel Data"):
        decode_pixels(ds)


def test_multiframe_needs_an_explicit_frame_index():
    ds = _dataset(_pixels(frames=2))
    with pytest.raises(ValueError, match="2 frames"):
        decode_pixels(ds)
    with pytest.raises(ValueError, match="out of range"):
        decode_pixels(ds, frame=2)
