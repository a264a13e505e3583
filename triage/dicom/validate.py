"""Structural checks of a received storage object, before anything is recorded.

The listener writes each received data set to a file (the File Meta Information that
pynetdicom writes, then the data set bytes exactly as sent). ``check_received_file`` walks
the data set's element headers without reading the values (so a 1 GB tomosynthesis object
costs a few hundred seeks), then reads the header values with ``stop_before_pixels`` and
checks what every storage object must have. Pixel data is never decoded here.

DICOM status per failure (PS3.4 Annex B.2.3; the listener answers it, keeps the bytes in
quarantine with a JSON sidecar and a ``Quarantined`` row):

===========  =====================================================================
``0xA900``   *Data Set does not match SOP Class*: SOP Class UID, SOP Instance UID or
             Study Instance UID missing or not a valid UID; SOP Class UID or SOP
             Instance UID in the data set differ from the ones in the C-STORE request
             (the negotiated ones); an image storage SOP class without pixel data; a
             native image without Rows, Columns or Bits Allocated.
``0xC000``   *Cannot understand*: the bytes are not a DICOM data set in the negotiated
             transfer syntax (unknown VR, elements out of order, file meta or command
             elements inside the data set, a wrong length for a fixed-size VR, values
             pydicom cannot convert, nesting deeper than 32, encapsulated pixel data in
             a native transfer syntax or the reverse).
``0xC001``   *Cannot understand, truncated*: an element, item or pixel fragment
             declares more bytes than were received (a truncated object, or an absurd
             declared length).
``0xC002``   *Cannot understand, pixel data length*: native pixel data whose length
             differs from Rows x Columns x Samples per Pixel x Bits Allocated / 8 x
             Number of Frames (rounded up to even), or encapsulated pixel data with no
             fragment.
===========  =====================================================================

``0xA700`` (out of resources) is not decided here: the listener answers it when it cannot
keep the bytes or reach the database, so that the sender retries.
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import UID

from triage.errors import InvalidDicom

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_TRUNCATED = 0xC001
STATUS_PIXEL_LENGTH = 0xC002

UNDEFINED_LENGTH = 0xFFFFFFFF
MAX_DEPTH = 32

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData",
               0x7FE00009: "DoubleFloatPixelData"}
_VALID_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split()
)
#: explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
#: value length must be a multiple of this (PS3.5 6.2)
_UNIT_SIZE = {b"AT": 4, b"FL": 4, b"FD": 8, b"SL": 4, b"SS": 2, b"UL": 4, b"US": 2,
              b"SV": 8, b"UV": 8, b"OD": 8, b"OF": 4, b"OL": 4, b"OV": 8, b"OW": 2}
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_META_HEADER = 132 + 12  # preamble, "DICM", then (0002,0000) UL explicit VR LE


class RejectedInput(InvalidDicom):
    """A received object we refuse: ``status`` is the DICOM status to answer."""

    def __init__(self, status: int, reason: str, uids: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.uids: dict[str, str] = dict(uids or {})


@dataclass(frozen=True)
class PixelDataInfo:
    """Where the pixel data element is and how it is encoded (values never read)."""

    keyword: str
    offset: int  # of the element's tag, in the decoded data set stream
    length: int  # declared value length; UNDEFINED_LENGTH when encapsulated
    encapsulated: bool
    fragments: int = 0  # encapsulated only, basic offset table not counted


@dataclass(frozen=True)
class CheckedObject:
    """A received object that passed the structural checks."""

    header: Dataset  # read with stop_before_pixels: what classification needs
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int  # first data set byte in the file (after the file meta group)
    pixel_data: PixelDataInfo | None
    elements: int = 0  # element headers walked, nested ones included


class _TruncatedError(Exception):
    pass


class _MalformedError(Exception):
    pass


@dataclass
class _Encoding:
    implicit: bool
    little: bool

    @property
    def order(self) -> str:
        return "<" if self.little else ">"


class _FileReader:
    """Reads exact byte counts and skips by seeking, never past the end of the file."""

    def __init__(self, fp: BinaryIO, start: int, size: int) -> None:
        self._fp = fp
        self.pos = 0  # relative to the data set start
        self._start = start
        self._size = size - start
        fp.seek(start)

    def read(self, n: int) -> bytes:
        if self.pos + n > self._size:
            raise _TruncatedError(f"needs {n} bytes at data set offset {self.pos}, "
                             f"only {self._size - self.pos} left")
        data = self._fp.read(n)
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if self.pos + n > self._size:
            raise _TruncatedError(f"an element at data set offset {self.pos} declares {n} bytes, "
                             f"only {self._size - self.pos} were received")
        self.pos += n
        self._fp.seek(self._start + self.pos)

    def at_end(self) -> bool:
        return self.pos >= self._size


class _InflatingReader:
    """The same interface over a deflated data set (PS3.5 A.5), decompressed as a stream."""

    _CHUNK = 1 << 20

    def __init__(self, fp: BinaryIO, start: int) -> None:
        self._fp = fp
        fp.seek(start)
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = bytearray()
        self._eof = False
        self.pos = 0

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n and not self._eof:
            raw = self._fp.read(self._CHUNK)
            if not raw:
                self._buffer += self._inflater.flush()
                self._eof = True
                break
            try:
                self._buffer += self._inflater.decompress(raw)
            except zlib.error as exc:
                raise _MalformedError(f"deflated data set cannot be inflated: {exc}") from exc

    def read(self, n: int) -> bytes:
        self._fill(n)
        if len(self._buffer) < n:
            raise _TruncatedError(f"needs {n} bytes at data set offset {self.pos}, "
                             f"only {len(self._buffer)} left")
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, self._CHUNK)
            self.read(step)
            n -= step

    def at_end(self) -> bool:
        self._fill(1)
        return not self._buffer


_Reader = _FileReader | _InflatingReader


@dataclass
class _Walk:
    """Element-header walk of one data set (PS3.5 7.1 and 7.5)."""

    reader: _Reader
    encoding: _Encoding
    encapsulated_ts: bool
    elements: int = 0
    pixel: PixelDataInfo | None = None
    _vr_of: Callable[[int], str] = field(default=lambda tag: "UN")

    def _header(self, enc: _Encoding) -> tuple[int, bytes | None, int]:
        raw = self.reader.read(8)
        group, elem = struct.unpack(enc.order + "HH", raw[:4])
        tag = (group << 16) | elem
        if group == 0xFFFE:  # items and delimiters have no VR
            return tag, None, struct.unpack(enc.order + "L", raw[4:])[0]
        if enc.implicit:
            return tag, None, struct.unpack(enc.order + "L", raw[4:])[0]
        vr = raw[4:6]
        if vr not in _VALID_VRS:
            raise _MalformedError(f"element ({group:04X},{elem:04X}) has an invalid VR {vr!r}")
        if vr in _LONG_VRS:
            return tag, vr, struct.unpack(enc.order + "L", self.reader.read(4))[0]
        return tag, vr, struct.unpack(enc.order + "H", raw[6:])[0]

    def dataset(self, enc: _Encoding, *, top: bool, end: int | None, depth: int) -> None:
        """Walk elements until ``end`` (defined length), an item delimiter or end of data."""
        if depth > MAX_DEPTH:
            raise _MalformedError(f"sequences nested deeper than {MAX_DEPTH} levels")
        last = -1
        while True:
            if end is not None:
                if self.reader.pos == end:
                    return
                if self.reader.pos > end:
                    raise _MalformedError(f"an element runs past the end of its item at offset {end}")
            elif top and self.reader.at_end():
                return
            start = self.reader.pos
            tag, vr, length = self._header(enc)
            self.elements += 1
            if tag == _ITEM_DELIMITER and not top and end is None:
                return
            if tag >> 16 == 0xFFFE:
                raise _MalformedError(f"unexpected item or delimiter tag {tag:08X} at offset {start}")
            if top and tag <= last:  # nested items are left to pydicom's leniency
                raise _MalformedError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at offset "
                                 f"{start} is out of ascending tag order")
            last = tag
            if top and tag >> 16 in (0x0000, 0x0002):
                raise _MalformedError(f"command or file meta element ({tag >> 16:04X},"
                                 f"{tag & 0xFFFF:04X}) inside the data set")
            if top and tag in _PIXEL_TAGS:
                self._pixel(tag, start, length, enc)
                continue
            self._value(tag, vr, length, enc, depth)

    def _value(self, tag: int, vr: bytes | None, length: int, enc: _Encoding,
               depth: int) -> None:
        is_sequence = vr == b"SQ" or (vr is None and self._vr_of(tag) == "SQ")
        if length == UNDEFINED_LENGTH:
            if is_sequence or vr is None:
                self.sequence(enc, end=None, depth=depth + 1)
            elif vr == b"UN":  # UN of undefined length holds implicit VR LE items (PS3.5 6.2.2)
                self.sequence(_Encoding(implicit=True, little=True), end=None, depth=depth + 1)
            else:
                raise _MalformedError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) with VR "
                                 f"{vr.decode()} has an undefined length")
            return
        if is_sequence:
            self.sequence(enc, end=self.reader.pos + length, depth=depth + 1)
            return
        unit = _UNIT_SIZE.get(vr or self._vr_of(tag).encode()[:2], 1)
        if length % unit:
            name = (vr or b"").decode() or self._vr_of(tag)
            raise _MalformedError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has length {length}, "
                             f"not a multiple of {unit} as VR {name} requires")
        self.reader.skip(length)

    def sequence(self, enc: _Encoding, *, end: int | None, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _MalformedError(f"sequences nested deeper than {MAX_DEPTH} levels")
        while True:
            if end is not None:
                if self.reader.pos == end:
                    return
                if self.reader.pos > end:
                    raise _MalformedError("a sequence item runs past the end of its sequence")
            tag, _vr, length = self._header(_Encoding(implicit=True, little=enc.little))
            if tag == _SEQUENCE_DELIMITER and end is None:
                return
            if tag != _ITEM:
                raise _MalformedError(f"expected a sequence item, found tag {tag:08X}")
            self.elements += 1
            if length == UNDEFINED_LENGTH:
                self.dataset(enc, top=False, end=None, depth=depth)
            else:
                self.dataset(enc, top=False, end=self.reader.pos + length, depth=depth)

    def _pixel(self, tag: int, start: int, length: int, enc: _Encoding) -> None:
        keyword = _PIXEL_TAGS[tag]
        if length != UNDEFINED_LENGTH:
            if self.encapsulated_ts and keyword == "PixelData":
                raise _MalformedError("pixel data has a defined length in an encapsulated "
                                 "(compressed) transfer syntax")
            self.reader.skip(length)
            self.pixel = PixelDataInfo(keyword, start, length, encapsulated=False)
            return
        if not self.encapsulated_ts:
            raise _MalformedError("encapsulated pixel data in a native transfer syntax")
        fragments = -1  # the first item is the basic offset table
        while True:
            item, _vr, item_length = self._header(_Encoding(implicit=True, little=True))
            if item == _SEQUENCE_DELIMITER:
                break
            if item != _ITEM or item_length == UNDEFINED_LENGTH:
                raise _MalformedError(f"encapsulated pixel data holds tag {item:08X} where a "
                                 "fragment item was expected")
            self.reader.skip(item_length)
            fragments += 1
        self.pixel = PixelDataInfo(keyword, start, UNDEFINED_LENGTH, encapsulated=True,
                                   fragments=max(fragments, 0))


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def valid_uid(value: object) -> bool:
    text = str(value) if value is not None else ""
    return 0 < len(text) <= 64 and bool(_UID.match(text))


def requires_pixel_data(sop_class_uid: str) -> bool:
    """Image storage SOP classes must carry pixel data (by the SOP class's standard name)."""
    return "Image Storage" in UID(sop_class_uid).name


def expected_native_length(header: Dataset, keyword: str) -> int:
    """Bytes of native pixel data the image attributes describe, before the padding to an
    even length (PS3.5 8.1.1 and 8.2, PS3.3 C.7.6.3)."""
    rows, columns = int(header.Rows), int(header.Columns)
    frames = int(header.get("NumberOfFrames") or 1)
    samples = int(header.get("SamplesPerPixel") or 1)
    bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(
        keyword, int(header.BitsAllocated))
    if rows <= 0 or columns <= 0 or frames <= 0 or samples <= 0 or bits <= 0:
        raise ValueError("Rows, Columns, Number of Frames, Samples per Pixel and Bits "
                         "Allocated must be positive")
    pixels = rows * columns * frames
    if str(header.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        values = pixels * 2  # two samples per pixel once subsampled
    else:
        values = pixels * samples
    return (values * bits + 7) // 8


def _meta_end(fp: BinaryIO) -> int:
    head = fp.read(_META_HEADER)
    if len(head) < _META_HEADER or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise _MalformedError("the received file has no File Meta Information header")
    return _META_HEADER + int(struct.unpack_from("<L", head, 140)[0])


def _readable_uids(header: Dataset | None) -> dict[str, str]:
    uids: dict[str, str] = {}
    if header is None:
        return uids
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        try:
            value = header.get(keyword)
        except Exception:  # an unconvertible value is simply not readable
            continue
        if value is not None and valid_uid(value):
            uids[keyword] = str(value)
    return uids


def check_received_file(path: Path, *, transfer_syntax_uid: str, affected_sop_class_uid: str,
                        affected_sop_instance_uid: str) -> CheckedObject:
    """Check a received object; raise RejectedInput with the status to answer otherwise."""
    ts = UID(transfer_syntax_uid)
    if not ts.is_transfer_syntax:
        raise RejectedInput(STATUS_CANNOT_UNDERSTAND,
                            f"transfer syntax {transfer_syntax_uid} is not one we can read")
    header: Dataset | None = None
    try:
        with open(path, "rb") as fp:
            size = fp.seek(0, 2)
            fp.seek(0)
            start = _meta_end(fp)
            reader: _Reader = (_InflatingReader(fp, start) if ts.is_deflated
                               else _FileReader(fp, start, size))
            walk = _Walk(reader, _Encoding(ts.is_implicit_VR, ts.is_little_endian),
                         encapsulated_ts=ts.is_encapsulated, _vr_of=_dictionary_vr)
            walk.dataset(walk.encoding, top=True, end=None, depth=0)
            fp.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(fp, stop_before_pixels=True)
                for _elem in header.iterall():  # converts every value: bad ones raise here
                    pass
    except _TruncatedError as exc:
        raise RejectedInput(STATUS_TRUNCATED, f"truncated data set: {exc}",
                            _readable_uids(header)) from exc
    except _MalformedError as exc:
        raise RejectedInput(STATUS_CANNOT_UNDERSTAND, f"not a valid data set: {exc}",
                            _readable_uids(header)) from exc
    except Exception as exc:  # pydicom's many ways of failing on bad input
        raise RejectedInput(STATUS_CANNOT_UNDERSTAND,
                            f"data set cannot be parsed: {type(exc).__name__}: {exc}",
                            _readable_uids(header)) from exc
    return _check_attributes(header, walk, start, ts, affected_sop_class_uid,
                             affected_sop_instance_uid)


def _check_attributes(header: Dataset, walk: _Walk, start: int, ts: UID,
                      affected_sop_class_uid: str,
                      affected_sop_instance_uid: str) -> CheckedObject:
    uids = _readable_uids(header)
    for keyword, label in (("SOPClassUID", "SOP Class UID"),
                           ("SOPInstanceUID", "SOP Instance UID"),
                           ("StudyInstanceUID", "Study Instance UID")):
        if keyword not in uids:
            state = "missing" if keyword not in header else "not a valid UID"
            raise RejectedInput(STATUS_DATASET_MISMATCH, f"{label} is {state}", uids)
    if uids["SOPClassUID"] != affected_sop_class_uid.strip():
        raise RejectedInput(STATUS_DATASET_MISMATCH,
                            f"SOP Class UID {uids['SOPClassUID']} in the data set differs from "
                            f"the negotiated {affected_sop_class_uid}", uids)
    if uids["SOPInstanceUID"] != affected_sop_instance_uid.strip():
        raise RejectedInput(STATUS_DATASET_MISMATCH,
                            f"SOP Instance UID {uids['SOPInstanceUID']} in the data set differs "
                            f"from {affected_sop_instance_uid} in the C-STORE request", uids)
    pixel = walk.pixel
    if pixel is None and requires_pixel_data(uids["SOPClassUID"]):
        raise RejectedInput(STATUS_DATASET_MISMATCH,
                            f"{UID(uids['SOPClassUID']).name} without pixel data", uids)
    if pixel is not None and not pixel.encapsulated:
        needed = ("Rows", "Columns", "BitsAllocated") if pixel.keyword == "PixelData" \
            else ("Rows", "Columns")
        missing = [k for k in needed if k not in header]
        if missing:
            raise RejectedInput(STATUS_DATASET_MISMATCH,
                                f"native pixel data without {', '.join(missing)}", uids)
        try:
            expected = expected_native_length(header, pixel.keyword)
        except (TypeError, ValueError) as exc:
            raise RejectedInput(STATUS_CANNOT_UNDERSTAND,
                                f"image attributes cannot be used: {exc}", uids) from exc
        if pixel.length not in (expected, expected + expected % 2):
            raise RejectedInput(
                STATUS_PIXEL_LENGTH,
                f"pixel data holds {pixel.length} bytes, the image attributes (Rows "
                f"{header.Rows}, Columns {header.Columns}, Bits Allocated "
                f"{header.get('BitsAllocated')}, Samples per Pixel "
                f"{header.get('SamplesPerPixel', 1)}, Number of Frames "
                f"{header.get('NumberOfFrames', 1)}) describe {expected}", uids)
    if pixel is not None and pixel.encapsulated and pixel.fragments == 0:
        raise RejectedInput(STATUS_PIXEL_LENGTH, "encapsulated pixel data without a fragment",
                            uids)
    return CheckedObject(
        header=header,
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        transfer_syntax_uid=str(ts),
        dataset_offset=start,
        pixel_data=pixel,
        elements=walk.elements,
    )
