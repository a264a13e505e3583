"""Decode one frame in a child process, for decoders that can kill the process.

python-gdcm aborts the whole interpreter (an uncaught C++ exception -> ``terminate``) on some
corrupt JPEG 2000 streams instead of raising. It is the last JPEG 2000 fallback, i.e. it
only runs on data the other decoders rejected, which is exactly when that happens; so it
runs here, in a child interpreter: a crash becomes a DecodeError, not a dead worker.

Protocol: the parent writes a minimal DICOM file (pixel module only) to the child's stdin,
passes the frame index and plugin name as arguments, and reads an ``.npy`` from stdout.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array

#: Elements the pixel decoders read.
PIXEL_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
)
CHILD_TIMEOUT_S = 300.0
_CHILD_CODE = (
    "import sys; from triage.imaging.isolated import child_main; "
    "sys.exit(child_main(sys.argv[1:]))"
)


class ChildDecodeError(RuntimeError):
    """The child could not decode (message holds its error output or exit status)."""


def _pixel_module_bytes(ds: Dataset) -> bytes:
    small = Dataset()
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            setattr(small, keyword, ds[keyword].value)
    small.file_meta = FileMetaDataset()
    small.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    small.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.3")
    small.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, small, enforce_file_format=False)
    return buffer.getvalue()


def decode_in_child(
    ds: Dataset, index: int, plugin: str, *, timeout: float = CHILD_TIMEOUT_S
) -> np.ndarray:
    """``pixel_array(ds, index=index, decoding_plugin=plugin)`` run in a child process."""
    try:
        completed = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, str(index), plugin],
            input=_pixel_module_bytes(ds),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildDecodeError(f"{plugin} did not finish within {timeout:.0f} s") from exc
    if completed.returncode != 0:
        tail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        status = (
            f"killed by signal {-completed.returncode}"
            if completed.returncode < 0
            else f"exit status {completed.returncode}"
        )
        raise ChildDecodeError(f"{plugin} failed ({status}): {' | '.join(tail)}")
    return np.asarray(np.load(io.BytesIO(completed.stdout), allow_pickle=False))


def child_main(argv: list[str]) -> int:
    """Child side: DICOM bytes on stdin, ``index plugin`` arguments, ``.npy`` on stdout."""
    index, plugin = int(argv[0]), argv[1]
    ds = pydicom.dcmread(io.BytesIO(sys.stdin.buffer.read()), force=True)
    array = pixel_array(ds, index=index, decoding_plugin=plugin, correct_unused_bits=True)
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    sys.stdout.buffer.write(out.getvalue())
    sys.stdout.buffer.flush()
    return 0

