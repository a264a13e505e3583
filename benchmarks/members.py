"""Per-member exam forward time and peak memory, against GMIC-R18 measured in the same run.

    .venv/bin/python benchmarks/members.py [--members NAME,NAME,...|all] [--repeats 3]
                                           [--scale 1.0] [--device auto|cpu|cuda]
                                           [--threads N] [--dbt-slices 8] [--skip-memory]
                                           [--json PATH]

Members (default): ``gmic-resnet18-1`` (the baseline, always measured), ``dmv-cnn-image-only``,
the four all-conv models and ``glimpsenet-lse``; ``--members all`` adds ``glimpsenet-topk``,
``glimpsenet-noisyand`` and ``gmic3d-resnet18-1``. Each is built by its registry builder with
the spec's hyper-parameters under a fixed seed (``build_model``: float32, ``.eval()``); no
weights file is read, and timing does not depend on the weight values. Inputs are seeded
noise (standardised views; 0-255 for the all-conv members, whose runner subtracts the mean).

"Exam forward" = the four standard views (L-CC, R-CC, L-MLO, R-MLO) at the member's input
size, through the same helper and batching as the member's pipeline runner, under
``torch.inference_mode``:

* GMIC and GlimpseNet: ``triage.pipeline.forward_views`` on the (4, 1, H, W) exam (one view
  per forward on the CPU, one batch of 4 on an accelerator);
* all-conv: ``triage.pipeline.allconv.flip_averaged`` (the paper's 4 flips in one forward)
  per chunk of views the runner uses (one view on the CPU, four elsewhere), mean subtracted;
* DMV-CNN: ``triage.pipeline.dmv.forward_exam``, one exam-level forward of the four views;
* 3D-GMIC: ``module(volume)`` per DBT view, the ``tomo`` runner's call, on a volume of
  ``--dbt-slices`` slices (a real DBT view has ~50-80; the time grows about linearly, see
  benchmarks/gmic3d.py). The four views share one volume.

Preprocessing (decode, crop, resize) is not included: see benchmarks/pipeline.py.

``--scale`` multiplies every input size (e.g. 0.25 for a quick run); the fixed-size parts of
the models (GMIC's 256x256 crops, GlimpseNet's 299x299 glimpses and 512x512 region map) do
not shrink, so the ratios at a reduced scale are not those at full size. GlimpseNet is even
slower at scale 0.25 than at full size: its glimpse windows are scored by averaging the
512x512 region map over windows the size of a 299x299 glimpse, and those windows cover more
of the map (and cost more) the smaller the input. The output says which scale was used.

Time: the members are built in this process, each gets one warm-up exam, then ``--repeats``
rounds in which every member scores the exam once, taking turns (so that load from other
processes on a shared machine spreads over all members); the median per member. The ratio
is member / GMIC-R18 (> 1: slower than the baseline).

Peak memory: every member in a fresh child process (``multiprocessing``, spawn) that makes
the inputs, then builds the member and runs one (cold) exam forward. On the CPU: the
child's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` just
before the build) minus its resident set size at that moment, i.e. weights + activations +
allocator and oneDNN caches of one exam. ``ru_maxrss`` alone is not used on Linux: a spawned
child starts with its parent's high-water mark. Without ``/proc`` (not Linux) it falls back
to the ``ru_maxrss`` increase, which can then read low. On CUDA:
``torch.cuda.max_memory_allocated`` over the same steps, minus what was allocated before.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import re
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triage.models import LoadedModel
from triage.models.registry import HEATMAPS_FROM, ModelSpec, get_spec
from triage.models.weights import build_model
from triage.pipeline import forward_views
from triage.pipeline.allconv import _views_per_forward, flip_averaged
from triage.pipeline.dmv import EXAM_VIEWS, forward_exam
from triage.vocabulary import View, WeightsStatus

BASELINE = "gmic-resnet18-1"
DEFAULT_MEMBERS: tuple[str, ...] = (
    BASELINE, "dmv-cnn-image-only", "allconv-resnet50", "allconv-vgg16",
    "allconv-hybrid-resnet50-vgg", "allconv-hybrid-vgg16-resnet", "glimpsenet-lse",
)
OPTIONAL_MEMBERS: tuple[str, ...] = ("glimpsenet-topk", "glimpsenet-noisyand",
                                     "gmic3d-resnet18-1")
SEED = 0

#: ``ModelSpec.preprocessing`` -> how its runner calls the model
FAMILIES: dict[str, str] = {
    "gmic": "views", "gmic-testing": "views",
    "glimpsenet": "views", "glimpsenet-testing": "views",
    "allconv": "allconv", "allconv-testing": "allconv",
    "breast_cancer_classifier": "dmv", "breast_cancer_classifier-testing": "dmv",
    "gmic3d": "volume", "gmic3d-testing": "volume",
}


def family(spec: ModelSpec) -> str:
    if spec.extra.get(HEATMAPS_FROM):
        raise SystemExit(f"{spec.name}: its exam includes heatmap generation by a patch "
                         "classifier, not one forward (see benchmarks/dmv.py)")
    try:
        return FAMILIES[spec.preprocessing]
    except KeyError:
        raise SystemExit(f"{spec.name}: no exam forward known for preprocessing "
                         f"{spec.preprocessing!r}") from None


def scaled_sizes(spec: ModelSpec, scale: float) -> dict[View, tuple[int, int]]:
    return {View(view): (round(h * scale), round(w * scale))
            for view, (h, w) in spec.input_size.items()}


def size_text(sizes: dict[View, tuple[int, int]]) -> str:
    if len(set(sizes.values())) == 1:
        h, w = next(iter(sizes.values()))
        return f"{h}x{w}"
    return " ".join(f"{view.value} {h}x{w}" for view, (h, w) in sizes.items())


def make_inputs(spec: ModelSpec, scale: float, dbt_slices: int) -> dict[str, np.ndarray]:
    """The exam's prepared inputs (numpy, float32), seeded noise; keys per family."""
    rng = np.random.default_rng(SEED)
    sizes = scaled_sizes(spec, scale)
    kind = family(spec)
    if kind == "dmv":
        return {f"{lat.value}-{view.value}": rng.standard_normal(sizes[view], dtype=np.float32)
                for lat, view in EXAM_VIEWS}
    if kind == "volume":
        return {"volume": rng.standard_normal((dbt_slices, *sizes[View.CC]), dtype=np.float32)}
    if len(set(sizes.values())) != 1:
        raise SystemExit(f"{spec.name}: CC and MLO sizes differ; its runner would not batch")
    h, w = sizes[View.CC]
    if kind == "allconv":
        views = rng.uniform(0.0, 255.0, (4, h, w)).astype(np.float32)
    else:
        views = rng.standard_normal((4, h, w), dtype=np.float32)
    return {"views": views}


def build_member(spec: ModelSpec, scale: float, device: torch.device) -> LoadedModel:
    """The member under the fixed seed, built by its registry builder (no weights file)."""
    overrides: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(spec.hyperparameters)}
    if scale != 1.0 and "input_shape" in fields:  # informative in every model; kept in step
        overrides["input_shape"] = scaled_sizes(spec, scale)[View.CC]
    torch.manual_seed(SEED)
    module = build_model(spec.name, **overrides).to(device)
    return LoadedModel(module=module, spec=spec, weights_status=WeightsStatus.RANDOM,
                       sha256=None, path=None)


@dataclass(frozen=True)
class Exam:
    run: Callable[[], None]
    calls: str  # what one exam is, in forwards


def make_exam(member: LoadedModel, inputs: dict[str, np.ndarray],
              device: torch.device) -> Exam:
    """One exam forward as the member's runner makes it (see the module docstring)."""
    kind = family(member.spec)
    if kind == "views":
        views = inputs["views"]

        def run_views() -> None:
            x = torch.from_numpy(views[:, None]).to(device)
            out = forward_views(member, x)
            out[0].cpu()

        calls = ("4 fwd x 1 view" if device.type == "cpu" else "1 fwd x 4 views")
        return Exam(run_views, calls)
    if kind == "allconv":
        views = inputs["views"]
        mean = np.float32(member.spec.hyperparameters.pixel_mean)
        chunk = _views_per_forward(device)

        def run_allconv() -> None:
            with torch.inference_mode():
                for start in range(0, views.shape[0], chunk):
                    x = torch.from_numpy(views[start:start + chunk, None] - mean).to(device)
                    out = flip_averaged(member.module,
                                        x.contiguous(memory_format=torch.channels_last))
                    out.p_malignant.cpu()
                    out.saliency.cpu()

        n = -(-views.shape[0] // chunk)
        return Exam(run_allconv, f"{n} fwd x {4 * chunk} (flips)")
    if kind == "dmv":
        arrays = {(lat, view): inputs[f"{lat.value}-{view.value}"] for lat, view in EXAM_VIEWS}

        def run_dmv() -> None:
            forward_exam(member, arrays, device)

        return Exam(run_dmv, "1 fwd (4 views)")
    volume = inputs["volume"]

    def run_volume() -> None:
        for _ in range(4):
            x = torch.from_numpy(volume)[None, None].to(device)
            with torch.inference_mode():
                out = member.module(x)
            out.final_prediction.cpu()

    return Exam(run_volume, f"4 fwd x {volume.shape[0]} slices")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- peak memory, in a fresh child per member -----------------------------------------------
def _status_kib(key: str) -> int:
    match = re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text())
    if match is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1))


def _memory_child(name: str, scale: float, device_name: str, threads: int, dbt_slices: int,
                  conn: multiprocessing.connection.Connection) -> None:
    try:
        if threads:
            torch.set_num_threads(threads)
        device = torch.device(device_name)
        spec = get_spec(name)
        inputs = make_inputs(spec, scale, dbt_slices)
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            cuda_before = torch.cuda.memory_allocated(device)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            rss_before, method = _status_kib("VmRSS"), "VmHWM"
        except OSError:
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            method = "ru_maxrss"
        member = build_member(spec, scale, device)
        exam = make_exam(member, inputs, device)
        start = time.perf_counter()
        exam.run()
        synchronize(device)
        cold_ms = (time.perf_counter() - start) * 1000.0
        peak_kib = (_status_kib("VmHWM") if method == "VmHWM"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        result: dict[str, Any] = {"rss_peak_mb": (peak_kib - rss_before) / 1024.0,
                                  "rss_method": method, "cold_ms": cold_ms}
        if device.type == "cuda":
            result["cuda_peak_mb"] = (torch.cuda.max_memory_allocated(device)
                                      - cuda_before) / 2**20
        conn.send(result)
    except Exception as exc:  # reported in the table, the other members still run
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def measure_memory(name: str, scale: float, device: torch.device, threads: int,
                   dbt_slices: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_memory_child,
                        args=(name, scale, str(device), threads, dbt_slices, send))
    child.start()
    send.close()
    try:
        result: dict[str, Any] = receive.recv()
    except EOFError:
        result = {"error": "child process died"}
    child.join()
    if "error" in result and child.exitcode:
        result["error"] += f" (exit code {child.exitcode})"
    return result


# -- time, all members in this process ------------------------------------------------------
def timed_round_robin(exams: dict[str, Exam], repeats: int,
                      device: torch.device) -> dict[str, list[float]]:
    """ms per exam and member; one warm-up each, then the members take turns."""
    for exam in exams.values():
        exam.run()
        synchronize(device)
    runs: dict[str, list[float]] = {name: [] for name in exams}
    for _ in range(repeats):
        for name, exam in exams.items():
            start = time.perf_counter()
            exam.run()
            synchronize(device)
            runs[name].append((time.perf_counter() - start) * 1000.0)
    return runs


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def member_names(text: str) -> list[str]:
    names = ([*DEFAULT_MEMBERS, *OPTIONAL_MEMBERS] if text == "all"
             else [n.strip() for n in text.split(",") if n.strip()])
    if BASELINE not in names:
        names.insert(0, BASELINE)
    return list(dict.fromkeys(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default=",".join(DEFAULT_MEMBERS),
                        help="comma-separated names, or 'all' (adds "
                             f"{', '.join(OPTIONAL_MEMBERS)}); {BASELINE} is always measured")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="input size factor (e.g. 0.25 for a quick run)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--dbt-slices", type=int, default=8,
                        help="slices per DBT view for 3D-GMIC members")
    parser.add_argument("--skip-memory", action="store_true",
                        help="no peak-memory children (time only)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = member_names(args.members)
    specs = {name: get_spec(name) for name in names}
    for spec in specs.values():
        family(spec)  # refuse unsupported members before any work
    load_start = loadavg()
    scale_text = ("full published input sizes" if args.scale == 1.0
                  else f"REDUCED inputs: scale {args.scale:g} of the published sizes")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{scale_text}; seeded random weights (timing does not depend on the values), "
          f"seeded noise inputs; load average at start {load_start}")

    memory: dict[str, dict[str, Any]] = {}
    if not args.skip_memory:
        for name in names:
            memory[name] = measure_memory(name, args.scale, device, args.threads,
                                          args.dbt_slices)
            print(f"  memory {name}: {memory[name]}", flush=True)

    exams: dict[str, Exam] = {}
    params: dict[str, float] = {}
    for name, spec in specs.items():
        member = build_member(spec, args.scale, device)
        params[name] = sum(p.numel() for p in member.module.parameters()) / 1e6
        exams[name] = make_exam(member, make_inputs(spec, args.scale, args.dbt_slices), device)
    runs = timed_round_robin(exams, args.repeats, device)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    load_end = loadavg()

    memory_label = "peak CUDA MB" if device.type == "cuda" else "peak RSS +MB"
    rows = []
    for name, spec in specs.items():
        mem = memory.get(name, {})
        peak = mem.get("cuda_peak_mb" if device.type == "cuda" else "rss_peak_mb")
        rows.append({
            "member": name,
            "input_size": {v.value: list(hw) for v, hw in scaled_sizes(spec, args.scale).items()},
            "input": size_text(scaled_sizes(spec, args.scale)),
            "per_exam": exams[name].calls,
            "params_m": round(params[name], 3),
            "exam_ms": round(medians[name], 1),
            "runs_ms": [round(v, 1) for v in runs[name]],
            "ratio_to_baseline": round(medians[name] / medians[BASELINE], 3),
            "peak_mb": None if peak is None else round(float(peak), 1),
            "memory": mem,
        })

    header = (f"{'member':<29} {'input':<28} {'per exam':<20} {'params M':>8} "
              f"{'exam ms':>9} {'x GMIC':>7} {memory_label:>13}")
    print("\n" + header)
    print("-" * len(header))
    for row in rows:
        peak_text = ("n/a" if args.skip_memory
                     else "error" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}")
        print(f"{row['member']:<29} {row['input']:<28} {row['per_exam']:<20} "
              f"{row['params_m']:>8.1f} {row['exam_ms']:>9.0f} "
              f"{row['ratio_to_baseline']:>6.2f}x {peak_text:>13}")
    print(f"\nexam ms: median of {args.repeats} exam forward(s) after one warm-up; x GMIC = "
          f"member / {BASELINE} (> 1: slower than the baseline); {scale_text}")
    if not args.skip_memory:
        print(f"{memory_label}: one cold exam in a fresh child process"
              + (", torch.cuda.max_memory_allocated" if device.type == "cuda"
                 else ", VmHWM - VmRSS before the build (weights + activations + caches)"))
    errors = {n: m["error"] for n, m in memory.items() if "error" in m}
    for name, error in errors.items():
        print(f"memory of {name} not measured: {error}")
    print(f"threads {torch.get_num_threads()}, load average at start {load_start}, "
          f"at end {load_end}")

    if args.json:
        args.json.write_text(json.dumps({
            "device": str(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "scale": args.scale, "repeats": args.repeats,
            "dbt_slices": args.dbt_slices, "baseline": BASELINE,
            "weights": "seeded random (timing does not depend on the values)",
            "ratio": "member exam ms / baseline exam ms", "memory_measure": memory_label,
            "loadavg_start": load_start, "loadavg_end": load_end, "members": rows,
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
