"""Pixel decoding of mammography objects into the model's pixel contract.

Contract (DESIGN.md, "Models"): stored pixel values with the Modality LUT applied
(``pydicom.pixels.apply_modality_lut``; Rescale Slope/Intercept or a Modality LUT Sequence,
at the top level or, for enhanced multi-frame objects such as DBT, in the Pixel Value
Transformation functional group of the frame), **no VOI LUT**, and inverted when
Photometric Interpretation is MONOCHROME1 or Presentation LUT Shape is INVERSE, so that
dense tissue is bright. Orientation is not touched here (see ``orientation``/``prepare``).

Inversion choice: ``inverted = lo + hi - value`` where [lo, hi] is the range the Modality LUT
gives for every possible stored value (Bits Stored, Pixel Representation). With the usual
unsigned data and an identity/absent rescale that is ``(2**BitsStored - 1) - value``: a
MONOCHROME1 background stored at the maximum becomes 0, which the reference cropping needs
(it treats every value > 0 as foreground). It does not depend on the image content, so the
same object always decodes to the same values. MONOCHROME1 with INVERSE (the pairing DX/MG
objects are required to use) is inverted once.

Lossy flag: Lossy Image Compression (0028,2110) = "01", or a transfer syntax that may carry
lossy data (JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000 and HTJ2K that are not
"lossless only", JPEG XL other than lossless). A JPEG 2000 (.91) or JPEG-LS near-lossless
stream can be numerically lossless, but the transfer syntax does not promise it, so it is
flagged (conservative).

Decoders, never GPL ones (pylibjpeg-libjpeg is GPLv3 and is never asked for):
JPEG 2000 -> pylibjpeg-openjpeg, then Pillow (also OpenJPEG), then python-gdcm in a child
process (it aborts the interpreter on some corrupt JPEG 2000 data); HTJ2K -> pylibjpeg-openjpeg;
JPEG-LS -> pyjpegls, then gdcm; JPEG lossless/baseline/extended -> gdcm, then Pillow;
RLE -> pylibjpeg-rle, then pydicom; native and deflated -> pydicom. Only the requested frame
of a multi-frame object is decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import UID

from triage.errors import DecodeError
from triage.imaging.isolated import decode_in_child

logger = logging.getLogger(__name__)

#: Transfer syntaxes whose pixel data may have been lossy compressed.
LOSSY_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossless or lossy)
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
        "1.2.840.10008.1.2.4.203",  # HTJ2K (lossless or lossy)
        "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG recompression (of a lossy JPEG)
        "1.2.840.10008.1.2.4.112",  # JPEG XL
    }
)

#: Decoding plugins per transfer syntax, in order; a name ending in ``@child`` runs in a
#: child process (see ``isolated``: python-gdcm aborts on some corrupt JPEG 2000 streams).
_J2K = ("pylibjpeg", "pillow", "gdcm@child")
_PLUGIN_PREFERENCE: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.90": _J2K,
    "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.92": _J2K,
    "1.2.840.10008.1.2.4.93": _J2K,
    "1.2.840.10008.1.2.4.201": ("pylibjpeg",),
    "1.2.840.10008.1.2.4.202": ("pylibjpeg",),
    "1.2.840.10008.1.2.4.203": ("pylibjpeg",),
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "gdcm"),
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "gdcm"),
    "1.2.840.10008.1.2.4.57": ("gdcm",),
    "1.2.840.10008.1.2.4.70": ("gdcm",),
    "1.2.840.10008.1.2.4.50": ("gdcm", "pillow"),
    "1.2.840.10008.1.2.4.51": ("gdcm", "pillow"),
    "1.2.840.10008.1.2.5": ("pylibjpeg", "pydicom"),
}
_CHILD = "@child"


@dataclass(frozen=True)
class DecodedPixels:
    """One decoded frame in the pixel contract, and what was done to get it."""

    array: np.ndarray  # float32 (rows, columns)
    lossy: bool
    lossy_reason: str | None
    photometric: str  # as stored (MONOCHROME1 / MONOCHROME2)
    bits_stored: int
    pixel_representation: int
    inverted: bool
    transfer_syntax_uid: str
    frame: int | None  # 0-based frame index, None for a single-frame object
    number_of_frames: int
    modality_lut: str  # "rescale", "lut" or "none"
    value_range: tuple[float, float]  # possible values after the Modality LUT
    decoder: str  # pydicom decoding plugin used ("" = pydicom's native reader)


def _uid_of(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "") or "<no SOP Instance UID>")


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(ts)) if ts else None


def lossy_reason(ds: Dataset, transfer_syntax: str | None = None) -> str | None:
    """Why the pixel data counts as lossy compressed, or ``None``."""
    if str(ds.get("LossyImageCompression", "") or "").strip() == "01":
        return "Lossy Image Compression (0028,2110) is 01"
    ts = transfer_syntax if transfer_syntax is not None else _transfer_syntax(ds)
    if ts is not None and str(ts) in LOSSY_TRANSFER_SYNTAXES:
        return f"transfer syntax {UID(str(ts)).name} ({ts}) may be lossy"
    return None


def _modality_lut_source(ds: Dataset, frame: int) -> Dataset | None:
    """The dataset holding the Modality LUT / rescale that applies to ``frame``."""
    if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        return ds
    candidates: list[Dataset] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        candidates.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        transform = group.get("PixelValueTransformationSequence")
        if not transform:
            continue
        item = transform[0]
        if item.get("ModalityLUTSequence") or (
            "RescaleSlope" in item and "RescaleIntercept" in item
        ):
            return item  # type: ignore[no-any-return]
    return None


def _stored_range(bits_stored: int, pixel_representation: int) -> tuple[int, int]:
    if pixel_representation == 1:
        return -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return 0, 2**bits_stored - 1


def _value_range(source: Dataset | None, lo: int, hi: int) -> tuple[float, float]:
    if source is None:
        return float(lo), float(hi)
    if source.get("ModalityLUTSequence") and hi - lo <= 2**16:
        probe = np.arange(lo, hi + 1, dtype=np.int64)
    else:
        probe = np.array([lo, hi], dtype=np.int64)
    mapped = np.asarray(apply_modality_lut(probe, source), dtype=np.float64)
    return float(mapped.min()), float(mapped.max())


def _decode_frame(ds: Dataset, ts: UID, index: int, uid: str,
                  pixels_from: BinaryIO | None = None) -> tuple[np.ndarray, str]:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise DecodeError(
            f"instance {uid}: transfer syntax {ts.name} ({ts}) has no pixel decoder; "
            "ask the sender to use an uncompressed, JPEG 2000, JPEG-LS, JPEG lossless or RLE "
            "transfer syntax"
        ) from exc
    if ts.is_encapsulated:
        available = set(decoder.available_plugins)
        wanted = _PLUGIN_PREFERENCE.get(str(ts), ())
        plugins: tuple[str, ...] = tuple(
            p for p in wanted if p.removesuffix(_CHILD) in available
        )
        if not wanted:
            raise DecodeError(
                f"instance {uid}: transfer syntax {ts.name} ({ts}) is not accepted for "
                "mammograms; ask the sender to use an uncompressed, JPEG 2000, JPEG-LS, JPEG "
                "lossless or RLE transfer syntax"
            )
        if not plugins:
            names = ", ".join(w.removesuffix(_CHILD) for w in wanted)
            raise DecodeError(
                f"instance {uid}: no usable decoder for transfer syntax {ts.name} ({ts}); "
                f"install one of these pydicom plugins: {names} "
                "(packages pylibjpeg-openjpeg, pyjpegls, python-gdcm, pillow)"
            )
    else:
        plugins = ("",)
    errors: list[str] = []
    last: Exception | None = None
    for plugin in plugins:
        name = plugin.removesuffix(_CHILD)
        try:
            if plugin.endswith(_CHILD):
                if pixels_from is not None and "PixelData" not in ds:
                    pixels_from.seek(0)  # last-resort decoder: it needs the whole data set
                    array = decode_in_child(dcmread(pixels_from), index, name)
                else:
                    array = decode_in_child(ds, index, name)
            else:
                options: dict[str, Any] = {"correct_unused_bits": True}
                source: Dataset | BinaryIO = ds
                if pixels_from is not None:
                    pixels_from.seek(0)
                    source = pixels_from
                array = pixel_array(source, index=index, decoding_plugin=name, **options)
        except Exception as exc:  # any plugin failure: try the next, report all
            errors.append(f"{name or 'pydicom'}: {type(exc).__name__}: {exc}")
            last = exc
            continue
        return np.asarray(array), name
    raise DecodeError(
        f"instance {uid}: pixel data in transfer syntax {ts.name} ({ts}) cannot be decoded "
        f"({'; '.join(errors)}); the object is corrupt or truncated, ask the sender to resend"
    ) from last


def decode_pixels(ds: Dataset, *, frame: int | None = None,
                  pixels_from: BinaryIO | None = None) -> DecodedPixels:
    """Decode one frame of a grayscale image into the model pixel contract.

    ``frame`` is the 0-based frame of a multi-frame object (required there); only that frame
    is decoded. With ``pixels_from`` (the object's file, opened ``rb``) ``ds`` may be the
    header alone (``dcmread(..., stop_before_pixels=True)``) and only that frame's bytes are
    read from the file, so a large multi-frame object (DBT) is never held in memory whole.
    Raises DecodeError (naming the SOP Instance UID and the transfer syntax) when the pixel
    data cannot be decoded or is not a grayscale image.
    """
    uid = _uid_of(ds)
    ts = _transfer_syntax(ds)
    if ts is None:
        raise DecodeError(
            f"instance {uid}: no Transfer Syntax UID in the file meta information, so the "
            "pixel data cannot be interpreted"
        )
    if "PixelData" not in ds and pixels_from is None:
        raise DecodeError(
            f"instance {uid} (transfer syntax {ts.name}): no Pixel Data (7FE0,0010); "
            "float or double float pixel data is not a mammogram"
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DecodeError(
            f"instance {uid} (transfer syntax {ts.name}): Photometric Interpretation "
            f"{photometric or 'missing'} with {samples} sample(s) per pixel is not a grayscale "
            "image; mammograms must be MONOCHROME1 or MONOCHROME2"
        )
    number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is None:
        if number_of_frames > 1:
            raise ValueError(
                f"instance {uid} has {number_of_frames} frames; pass frame=<0-based index>"
            )
        index = 0
    else:
        index = int(frame)
        if not 0 <= index < number_of_frames:
            raise ValueError(
                f"frame {index} out of range: instance {uid} has {number_of_frames} frame(s)"
            )

    stored, plugin = _decode_frame(ds, ts, index, uid, pixels_from)
    if stored.ndim != 2:
        raise DecodeError(
            f"instance {uid} (transfer syntax {ts.name}): decoded frame has shape "
            f"{stored.shape}, expected (rows, columns)"
        )
    bits_stored = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 16) or 16)
    pixel_representation = int(ds.get("PixelRepresentation", 0) or 0)

    try:
        source = _modality_lut_source(ds, index)
        values = stored if source is None else apply_modality_lut(stored, source)
        lo, hi = _stored_range(bits_stored, pixel_representation)
        value_range = _value_range(source, lo, hi)
    except Exception as exc:
        raise DecodeError(
            f"instance {uid} (transfer syntax {ts.name}): the Modality LUT / rescale cannot "
            f"be applied ({type(exc).__name__}: {exc})"
        ) from exc
    modality_lut = "none"
    if source is not None:
        modality_lut = "lut" if source.get("ModalityLUTSequence") else "rescale"

    array = np.asarray(values, dtype=np.float32)
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    inverted = photometric == "MONOCHROME1" or shape == "INVERSE"
    if inverted:
        array = np.float32(value_range[0] + value_range[1]) - array

    reason = lossy_reason(ds, ts)
    logger.debug(
        "decoded pixels",
        extra={
            "sop_instance_uid": uid,
            "transfer_syntax": str(ts),
            "frame": index,
            "decoder": plugin or "pydicom",
            "inverted": inverted,
            "lossy": reason is not None,
        },
    )
    return DecodedPixels(
        array=np.ascontiguousarray(array, dtype=np.float32),
        lossy=reason is not None,
        lossy_reason=reason,
        photometric=photometric,
        bits_stored=bits_stored,
        pixel_representation=pixel_representation,
        inverted=inverted,
        transfer_syntax_uid=str(ts),
        frame=None if frame is None else index,
        number_of_frames=number_of_frames,
        modality_lut=modality_lut,
        value_range=value_range,
        decoder=plugin,
    )


def iter_frames(ds: Dataset) -> Iterator[DecodedPixels]:
    """Decode a (multi-frame) object one frame at a time."""
    number_of_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if number_of_frames == 1 and "NumberOfFrames" not in ds:
        yield decode_pixels(ds)
        return
    for index in range(number_of_frames):
        yield decode_pixels(ds, frame=index)
