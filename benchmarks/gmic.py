"""GMIC forward time against the baseline "same model, float32, inference_mode, one view at
a time", measured in the same process on the same inputs.

    .venv/bin/python benchmarks/gmic.py [--repeats 5] [--threads N] [--device cpu|cuda]
                                        [--compile]

Inputs: the fixture GMIC input (2944x1920) when ``TRIAGE_FIXTURES`` (or ../shared/fixtures)
has it, otherwise seeded noise; four views = that input, mirrored, flipped, shifted. Weights:
the fixture weights when present, otherwise seeded random weights (timing does not depend
on the values). Variants:

* ``baseline 1 view``      — float32, ``torch.inference_mode``, NCHW, one view;
* ``baseline 4 views``     — the baseline run four times, one view at a time (the reference);
* ``batch 4 views``        — one forward on a (4, 1, H, W) batch;
* ``channels_last ...``    — the same with the model and input in channels_last;
* ``compiled ...``         — ``torch.compile`` (only with ``--compile``; compile time is
                             reported separately and excluded from the per-forward time).

Each variant: one warm-up, then the median of ``--repeats`` timed runs, taken in turns. Before timing, every
variant's outputs are checked against the baseline's (probabilities to 1e-4, positions
exact), so a faster variant that changes results is reported as such. Prints milliseconds
and ratios baseline / variant (> 1 means faster than the baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from triage.models.gmic import GMIC, GMICConfig, GMICOutput
from triage.models.weights import load_state, read_state_dict

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    return Path(os.environ.get("TRIAGE_FIXTURES", REPO.parent / "shared" / "fixtures"))


def make_model() -> tuple[GMIC, str]:
    model = GMIC(GMICConfig())
    weights = fixtures_dir() / "gmic_resnet18_weights_fp16.pt"
    if weights.is_file():
        load_state(model, read_state_dict(weights), str(weights))
        source = "fixture weights"
    else:
        torch.manual_seed(0)
        model = GMIC(GMICConfig())
        source = "seeded random weights"
    return model.float().eval(), source


def make_views() -> tuple[torch.Tensor, str]:
    path = fixtures_dir() / "gmic_input_fp16.npy"
    if path.is_file():
        one = torch.from_numpy(np.load(path).astype(np.float32))[None, None]
        source = "fixture input"
    else:
        one = torch.from_numpy(np.random.default_rng(0).standard_normal(
            (1, 1, 2944, 1920), dtype=np.float32))
        source = "seeded noise"
    views = torch.cat([one, one.flip(-1), one.flip(-2), one.roll(512, dims=-2)])
    return views.contiguous(), source


def timed_round_robin(variants: dict[str, Callable[[], object]], repeats: int,
                      sync: Callable[[], None]) -> dict[str, float]:
    """Median ms per variant; the variants take turns so that load from other processes on
    a shared machine spreads over all of them instead of hitting one block of runs."""
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            sync()
            runs[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000.0 for name, values in runs.items()}


def same_results(a: GMICOutput, b: GMICOutput) -> bool:
    return (torch.equal(a.patch_locations.cpu(), b.patch_locations.cpu())
            and torch.allclose(a.y_fusion.float().cpu(), b.y_fusion.float().cpu(), atol=1e-4)
            and torch.allclose(a.saliency_map.float().cpu(), b.saliency_map.float().cpu(),
                               atol=1e-4))


def concat(outputs: list[GMICOutput]) -> GMICOutput:
    return GMICOutput(*[torch.cat([getattr(o, f) for o in outputs])
                        if getattr(outputs[0], f) is not None else None
                        for f in GMICOutput._fields])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync: Callable[[], None] = (torch.cuda.synchronize if device.type == "cuda"
                                else (lambda: None))

    model, weights_source = make_model()
    model = model.to(device)
    views, input_source = make_views()
    views = views.to(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{weights_source}, {input_source}, views {tuple(views.shape)}")

    cl_model = GMIC(model.config)
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(device).eval().to(memory_format=torch.channels_last)
    cl_views = views.contiguous(memory_format=torch.channels_last)

    def singles(net: torch.nn.Module, x: torch.Tensor) -> GMICOutput:
        return concat([net(x[i:i + 1]) for i in range(x.shape[0])])

    variants: dict[str, Callable[[], GMICOutput]] = {
        "baseline 1 view": lambda: model(views[:1]),
        "baseline 4 views": lambda: singles(model, views),
        "batch 4 views": lambda: model(views),
        "channels_last 1 view": lambda: cl_model(cl_views[:1]),
        "channels_last batch 4 views": lambda: cl_model(cl_views),
    }
    compile_seconds = None
    if args.compile:
        compiled = torch.compile(model)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(views[:1])
            compiled(views)
        compile_seconds = time.perf_counter() - start
        variants["compiled 1 view"] = lambda: compiled(views[:1])
        variants["compiled batch 4 views"] = lambda: compiled(views)

    with torch.inference_mode():
        reference_one = variants["baseline 1 view"]()
        reference_four = variants["baseline 4 views"]()
        agrees = {}
        for name, fn in variants.items():  # also the warm-up run of every variant
            reference = reference_four if "4 views" in name else reference_one
            agrees[name] = same_results(fn(), reference)
        sync()
        results = timed_round_robin(variants, args.repeats, sync)
    for name, ms in results.items():
        print(f"{name:<30} {ms:>9.1f} ms"
              + ("" if agrees[name] else "   (OUTPUTS DIFFER FROM BASELINE)"))
    if compile_seconds is not None:
        print(f"torch.compile warm-up (compile) time: {compile_seconds:.1f} s")

    print("\nratios (baseline / variant; > 1 = faster than the baseline):")
    for name, ms in results.items():
        base = results["baseline 4 views"] if "4 views" in name else results["baseline 1 view"]
        print(f"{name:<30} {base / ms:>6.2f}x")
    per_view = results["batch 4 views"] / 4
    print(f"\nper view in a 4-view batch: {per_view:.1f} ms "
          f"(one view alone: {results['baseline 1 view']:.1f} ms)")


if __name__ == "__main__":
    main()
