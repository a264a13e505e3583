"""3D-GMIC: time and peak memory of scoring one DBT view, and how time grows with slices.

    .venv/bin/python benchmarks/gmic3d.py [--slices 60] [--size 2116x1339] [--chunks 1,2,4,8]
                                          [--growth 20,40,60,80] [--growth-size 1058x670]
                                          [--threads N] [--repeats 1] [--device cpu|cuda]

Every measurement runs in a fresh child process, so that the peak resident set size
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the volume is built) belongs to
that forward pass alone. Reported per run:

* ``time``: wall time of one ``model(volume)`` under ``torch.inference_mode``: the first
  (cold) pass, or with ``--repeats N`` the median of N further (warm) passes;
* ``extra``: peak RSS growth during the forward pass (activations, crops, allocator and
  oneDNN caches) — an upper bound of what the pass allocates on top of the volume;
* ``peak/volume``: ``(volume + extra) / volume`` with the float32 volume's bytes, the
  figure the product requirement bounds (< 2.5). With ``--device cuda`` the GPU's
  ``max_memory_allocated`` is reported as well (the volume stays on the CPU).

Part 1 scores a ``--slices`` volume at ``--size`` (the published models' slice size by
default) with each chunk size in ``--chunks``. Part 2 scores volumes of ``--growth`` slices
at ``--growth-size`` with the default chunk and fits time = a + b * slices.

Weights: the fixture's 3D-GMIC weights when present (else seeded random weights; timing
does not depend on the values). Volume: the fixture's DBT slices resized to the slice size
and repeated with a little seeded noise (else seeded noise).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from triage.models.gmic3d import GMIC3D, GMIC3DConfig
from triage.models.weights import load_state, read_state_dict

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    return Path(os.environ.get("TRIAGE_FIXTURES", REPO.parent / "shared" / "fixtures"))


def _status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(key + r":\s+(\d+)", text)
    if match is None:
        raise RuntimeError(f"{key} not in /proc/self/status")
    return int(match.group(1)) * 1024


def make_model(chunk: int) -> tuple[GMIC3D, str]:
    config = GMIC3DConfig(slice_chunk=chunk)
    weights = fixtures_dir() / "gmic3d_weights_fp16.pt"
    torch.manual_seed(0)
    model = GMIC3D(config)
    source = "seeded random weights"
    if weights.is_file():
        load_state(model, read_state_dict(weights), str(weights))
        source = "fixture weights"
    return model.float().eval(), source


def make_volume(slices: int, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    generator = torch.Generator().manual_seed(0)
    path = fixtures_dir() / "gmic3d_io.npz"
    if path.is_file():
        with np.load(path) as data:
            base = torch.from_numpy(data["input_fp16"].astype(np.float32))
        base = F.interpolate(base[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        volume = torch.empty(1, 1, slices, *size)
        for d in range(slices):
            noise = torch.randn(size, generator=generator) * 0.05
            volume[0, 0, d] = base[d % base.shape[0]] + noise
        return volume, "fixture slices resized, repeated, + noise"
    return torch.randn(1, 1, slices, *size, generator=generator), "seeded noise"


def child(args: argparse.Namespace) -> None:
    """One measurement; prints one JSON line.

    No warm-up before the memory measurement: a warm-up would leave freed blocks in the
    allocator that the measured pass reuses, hiding part of its peak. The first (cold)
    pass gives the memory figure and the cold time; ``--repeats`` more passes give the
    warm time.
    """
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = parse_size(args.size)
    model, weights = make_model(args.chunk)
    model = model.to(device)
    volume, volume_source = make_volume(args.slices, size)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    times = []
    for _ in range(1 + args.repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            out = model(volume)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            extra = _status_bytes("VmHWM") - before
    result: dict[str, Any] = {
        "slices": args.slices, "size": list(size), "chunk": args.chunk,
        "threads": torch.get_num_threads(), "cold_time_s": times[0],
        "time_s": statistics.median(times[1:]) if args.repeats else times[0],
        "volume_bytes": volume.nbytes, "extra_bytes": extra,
        "peak_over_volume": (volume.nbytes + extra) / volume.nbytes,
        "weights": weights, "volume": volume_source,
        "final_prediction": out.final_prediction.tolist(),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps(result))


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def run_child(args: argparse.Namespace, slices: int, size: str, chunk: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "--slices", str(slices), "--size", size,
               "--chunk", str(chunk), "--threads", str(args.threads), "--repeats",
               str(args.repeats), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def describe(result: dict[str, Any]) -> str:
    mib = 2**20
    line = (f"slices {result['slices']:3d}  {result['size'][0]}x{result['size'][1]}  "
            f"chunk {result['chunk']:2d}  time {result['time_s']:7.2f} s "
            f"({result['time_s'] / result['slices']:.3f} s/slice)  "
            f"volume {result['volume_bytes'] / mib:7.1f} MiB  "
            f"extra {result['extra_bytes'] / mib:7.1f} MiB  "
            f"peak/volume {result['peak_over_volume']:.2f}")
    if "cuda_max_allocated_bytes" in result:
        line += f"  cuda max {result['cuda_max_allocated_bytes'] / mib:.1f} MiB"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--size", default="2116x1339")
    parser.add_argument("--chunks", default="1,2,4,8")
    parser.add_argument("--growth", default="20,40,60,80")
    parser.add_argument("--growth-size", default="1058x670")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=GMIC3DConfig().slice_chunk,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(f"3D-GMIC benchmark: torch {torch.__version__}, {args.threads} thread(s), "
          f"device {args.device}, default chunk {GMIC3DConfig().slice_chunk}")
    print(f"\n1) one view of {args.slices} slices at {args.size}, by chunk size")
    for chunk in [int(c) for c in args.chunks.split(",") if c]:
        print(describe(run_child(args, args.slices, args.size, chunk)), flush=True)

    growth = [int(d) for d in args.growth.split(",") if d]
    if growth:
        chunk = GMIC3DConfig().slice_chunk
        print(f"\n2) time against slices at {args.growth_size} (chunk {chunk})")
        results = [run_child(args, d, args.growth_size, chunk) for d in growth]
        for result in results:
            print(describe(result), flush=True)
        if len(results) >= 2:
            slope, intercept = np.polyfit([r["slices"] for r in results],
                                          [r["time_s"] for r in results], 1)
            print(f"fit: time = {intercept:.2f} s + {slope:.3f} s x slices")


if __name__ == "__main__":
    main()
