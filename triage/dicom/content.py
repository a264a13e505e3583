"""Canonical content of a stored DICOM file, independent of its transfer syntax.

Two files hold "the same content" when every data element outside the file meta group has
the same value and the decoded pixels are equal. The same image sent once uncompressed and
once as lossless JPEG 2000 is therefore the same content; a corrected header or a lossy
re-compression is not.

Normalisation choices (documented because they decide what counts as a duplicate):

* The file meta group (0002,xxxx) is ignored; so are the pixel data elements themselves,
  which are compared decoded (shape, dtype and values).
* Text values are compared decoded (Specific Character Set applied) with trailing padding
  (spaces, NUL) removed; binary values (OB/OW/UN) as bytes with trailing NUL removed, so a
  private element read as UN from Implicit VR matches its explicit form when it is text.
* Sequences are compared item by item, recursively.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from triage.errors import DecodeError, InvalidDicom

logger = logging.getLogger(__name__)

_PIXEL_TAGS = frozenset({Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009)})


def _value_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value.rstrip(b"\x00 ")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return b"\\".join(_value_bytes(v) for v in value)
    return str(value).rstrip("\x00 ").encode("utf-8")


def _update_with_dataset(digest: Any, ds: Dataset) -> None:
    for element in ds:
        if element.tag.group == 0x0002 or element.tag in _PIXEL_TAGS:
            continue
        digest.update(f"({element.tag.group:04X},{element.tag.element:04X})".encode())
        if element.VR == "SQ":
            items = element.value or []
            digest.update(f"SQ[{len(items)}]".encode())
            for item in items:
                digest.update(b"{")
                _update_with_dataset(digest, item)
                digest.update(b"}")
        else:
            payload = _value_bytes(element.value)
            digest.update(len(payload).to_bytes(8, "little"))
            digest.update(payload)


def canonical_digest(path: Path) -> str:
    """SHA-256 over the file's non-pixel elements and its decoded pixels.

    Raises InvalidDicom when the file cannot be parsed and DecodeError when its pixel data
    cannot be decoded (the caller then treats the content as different).
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InvalidDicom(f"cannot read stored file {path}: {exc}") from exc
    digest = hashlib.sha256()
    _update_with_dataset(digest, ds)
    if any(tag in ds for tag in _PIXEL_TAGS):
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # any codec failure: a decoder says why in its own words
            raise DecodeError(
                f"cannot decode pixel data of {path} "
                f"(transfer syntax {ds.file_meta.get('TransferSyntaxUID', '?')}): {exc}"
            ) from exc
        digest.update(f"pixels{pixels.shape}{pixels.dtype.str}".encode())
        digest.update(pixels.tobytes())
    return digest.hexdigest()


def same_content(first: Path, second: Path) -> bool:
    """True when both files hold the same canonical content (False if either is unreadable)."""
    try:
        return canonical_digest(first) == canonical_digest(second)
    except (InvalidDicom, DecodeError) as exc:
        logger.warning("content comparison failed, treating as different: %s", exc)
        return False
