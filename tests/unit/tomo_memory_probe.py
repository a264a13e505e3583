"""Child process of tests/unit/test_pipeline_tomo_memory.py: peak memory of scoring one DBT view.

    python -m tests.unit.tomo_memory_probe DATA_DIR DBT_FILE WARMUP_FILE

Prints one JSON line. Every figure is the growth of the process's peak resident set size
(``VmHWM`` in /proc/self/status) over its resident size just before the measured call, with
the peak reset (``/proc/self/clear_refs`` = 5) and freed heap returned to the system
(``malloc_trim``) first. Resident pages are counted whoever allocated them — numpy, torch's
CPU allocator, pydicom's bytes, oneDNN scratch space — which tracemalloc cannot do (it sees
only allocations made through Python's allocator hooks, not torch's).
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch

from triage.config import EnsembleMember, load_settings
from triage.imaging.volume import prepare_volume, read_volume_frames
from triage.pipeline import ExamImage, load_ensemble
from triage.pipeline.tomo import load_volume, score_volume
from triage.vocabulary import ImageClass, View

MEMBER = "gmic3d-testing-small"


def _status(key: str) -> int:
    match = re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text())
    if match is None:
        raise RuntimeError(f"{key} missing from /proc/self/status")
    return int(match.group(1)) * 1024


def peak_growth(call: Callable[[], Any]) -> tuple[Any, int]:
    """(what ``call`` returned, bytes by which the peak RSS rose above the RSS before it)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    value = call()
    return value, _status("VmHWM") - before


def _image(path: Path) -> ExamImage:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    info = read_volume_frames(ds)
    assert info.laterality is not None and info.view is not None
    return ExamImage(str(ds.SOPInstanceUID), str(ds.SOPClassUID), path, info.laterality,
                     info.view, ImageClass.DBT)


def main(data_dir: Path, dbt_file: Path, warmup_file: Path) -> dict[str, Any]:
    torch.set_num_threads(2)
    settings = load_settings(data_dir=data_dir, testing=True, allow_uncalibrated=True,
                             device="cpu", ensemble=[EnsembleMember(name=MEMBER, weight=1.0,
                                                                    modality="dbt")])
    ensemble = load_ensemble(settings)
    member, device = ensemble.members[0], ensemble.device
    image, size = _image(dbt_file), member.spec.input_size[View.CC]
    score_volume(member, _image(warmup_file), device)  # libraries and kernels initialised

    scored, score_growth = peak_growth(lambda: score_volume(member, image, device))
    volume_bytes = scored.slices * size[0] * size[1] * 4

    _, prepare_growth = peak_growth(lambda: load_volume(image, size))

    def with_extra_copy() -> tuple[Any, np.ndarray]:
        volume = load_volume(image, size)
        return volume, volume.array.copy()

    _, copy_growth = peak_growth(with_extra_copy)

    def whole_file() -> Any:  # the stored pixel data read into memory, then prepared
        return prepare_volume(pydicom.dcmread(image.path), size)

    _, whole_file_growth = peak_growth(whole_file)
    return {
        "slices": scored.slices, "volume_bytes": volume_bytes,
        "stored_bytes": int(dbt_file.stat().st_size),
        "score_growth": score_growth, "prepare_growth": prepare_growth,
        "prepare_with_copy_growth": copy_growth, "whole_file_growth": whole_file_growth,
        "p_malignant": scored.score.p_malignant,
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))))
