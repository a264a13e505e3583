"""DMV-CNN timings against plain baselines measured in the same run.

    .venv/bin/python benchmarks/dmv.py [--repeats 3] [--threads N] [--device cpu|cuda]
                                       [--region 600x500 | --region full] [--batch-size N]
                                       [--skip-exam] [--skip-heatmaps]

1. Exam forward, image-only view-wise model (``SplitBreastModel``), full size
   (CC 2677x1942, MLO 2974x1748), float32, ``torch.inference_mode``:
   * ``baseline views one by one`` — each view through its column alone, then the heads,
     weights in the default NCHW layout (what a straightforward port of the reference does);
   * ``model forward`` — :class:`SplitBreastModel` (NHWC convolution weights; L and R views
     of an angle batched through their shared column on an accelerator, one after the
     other on the CPU);
   * ``L/R as one batch of 2`` — the batched path forced, to show why the CPU does not use it.
2. Heatmap generation for one image with the DenseNet-121 patch classifier:
   * ``baseline per-patch loop`` — one patch at a time (numpy slice → tensor → model with
     NCHW weights), probabilities accumulated into numpy sum/count arrays;
   * ``per-patch loop, NHWC model`` — the same loop with the product's model (NHWC weights);
   * ``batched heatmaps`` — :func:`triage.models.heatmaps.generate_heatmaps` (patches
     gathered by tensor indexing, ``--batch-size`` per forward, separable averaging), and
     the same with 4x the batch size.
   By default on a 600x500 region of the cropped fixture image ``1_L_CC.png`` (30 patches)
   to keep CPU runs short; ``--region full`` uses the whole cropped image (2592x1263, 560
   patches).

Weights: the fixture weights when ``TRIAGE_FIXTURES`` (or ../shared/fixtures) has them,
otherwise seeded random weights; inputs: fixture images when present, otherwise seeded noise
(timing does not depend on the values). Each variant: one warm-up, then the median of
``--repeats`` runs taken in turns; outputs are compared with the baseline before timing.
Prints milliseconds and the ratio baseline / variant (> 1 means faster than the baseline).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from triage.models.densenet import DenseNet, PatchOutput
from triage.models.dmv_cnn import DMV_INPUT_SIZE, SplitBreastModel, ViewTensors
from triage.models.heatmaps import default_batch_size, generate_heatmaps
from triage.models.weights import load_state, read_state_dict
from triage.vocabulary import View

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    return Path(os.environ.get("TRIAGE_FIXTURES", REPO.parent / "shared" / "fixtures"))


def nchw_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with its weights in the default (NCHW) layout: the plain port."""
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for param in plain.parameters():
            param.data = param.data.contiguous()
    return plain


def timed_round_robin(variants: dict[str, Callable[[], object]], repeats: int,
                      sync: Callable[[], None]) -> dict[str, float]:
    """Median ms per variant; variants take turns so background load spreads evenly."""
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
        sync()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            sync()
            runs[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in runs.items()}


def report(title: str, timings: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    for name, ms in timings.items():
        ratio = timings[baseline] / ms
        print(f"  {name:<28} {ms:>10.1f} ms   ratio {ratio:5.2f}")


# -- exam forward ---------------------------------------------------------------------
def exam_model(device: torch.device) -> tuple[SplitBreastModel, str]:
    model = SplitBreastModel()
    path = fixtures_dir() / "dmv_cnn_view_split_weights_fp16.pt"
    if path.is_file():
        load_state(model, read_state_dict(path, "model"), str(path))
        source = "fixture weights"
    else:
        torch.manual_seed(0)
        model = SplitBreastModel()
        source = "seeded random weights"
    return model.float().to(device).eval(), source


def exam_inputs(device: torch.device) -> tuple[ViewTensors, str]:
    summary = fixtures_dir() / "dmv_cnn_summary.json"
    if summary.is_file() and (fixtures_dir() / "images").is_dir():
        import json

        import cv2

        from triage.imaging import prepare_view
        from triage.vocabulary import Laterality

        exam = json.loads(summary.read_text())["exam"]
        arrays = []
        for view in ("L-CC", "R-CC", "L-MLO", "R-MLO"):
            laterality, angle = view.split("-")
            pixels = cv2.imread(str(fixtures_dir() / "images" / exam[view]),
                                cv2.IMREAD_UNCHANGED)
            if pixels is None:
                raise SystemExit(f"cannot read {exam[view]} in {fixtures_dir() / 'images'}")
            prepared = prepare_view(pixels, Laterality(laterality), View(angle),
                                    DMV_INPUT_SIZE[View(angle)])
            arrays.append(torch.from_numpy(prepared.array)[None, None])
        source = "fixture exam preprocessed at full size"
    else:
        rng = np.random.default_rng(0)
        arrays = [torch.from_numpy(rng.standard_normal((1, 1, *DMV_INPUT_SIZE[v]),
                                                       dtype=np.float32))
                  for v in (View.CC, View.CC, View.MLO, View.MLO)]
        source = "seeded noise"
    return ViewTensors(*(a.to(device) for a in arrays)), source


def views_one_by_one(model: SplitBreastModel, views: ViewTensors) -> torch.Tensor:
    """Baseline: every view through its column separately, then the heads."""
    columns = model.four_view_resnet
    pooled = [columns.cc(views.l_cc).mean(dim=(2, 3)), columns.cc(views.r_cc).mean(dim=(2, 3)),
              columns.mlo(views.l_mlo).mean(dim=(2, 3)),
              columns.mlo(views.r_mlo).mean(dim=(2, 3))]
    h_cc = torch.relu(model.fc1_cc(torch.cat(pooled[:2], dim=1)))
    h_mlo = torch.relu(model.fc1_mlo(torch.cat(pooled[2:], dim=1)))
    return torch.cat([model.output_layer_cc(h_cc), model.output_layer_mlo(h_mlo)], dim=1)


def views_batched(model: SplitBreastModel, views: ViewTensors) -> torch.Tensor:
    """L and R views of an angle as one batch of two through their shared column."""
    columns = model.four_view_resnet
    cc = columns.cc(torch.cat([views.l_cc, views.r_cc])).mean(dim=(2, 3))
    mlo = columns.mlo(torch.cat([views.l_mlo, views.r_mlo])).mean(dim=(2, 3))
    h_cc = torch.relu(model.fc1_cc(torch.cat([cc[:1], cc[1:]], dim=1)))
    h_mlo = torch.relu(model.fc1_mlo(torch.cat([mlo[:1], mlo[1:]], dim=1)))
    return torch.cat([model.output_layer_cc(h_cc), model.output_layer_mlo(h_mlo)], dim=1)


def bench_exam(device: torch.device, repeats: int, sync: Callable[[], None]) -> None:
    model, weights = exam_model(device)
    views, inputs = exam_inputs(device)
    plain = nchw_copy(model)
    assert isinstance(plain, SplitBreastModel)
    with torch.inference_mode():
        base = views_one_by_one(plain, views)
        out = model(*views)
        ours = torch.cat([out.cc_logprob, out.mlo_logprob], dim=1)
        diff = float((base - ours).abs().max())
        timings = timed_round_robin({
            "baseline views one by one": lambda: views_one_by_one(plain, views),
            "model forward": lambda: model(*views),
            "L/R as one batch of 2": lambda: views_batched(model, views),
        }, repeats, sync)
    report(f"exam forward, view-wise image-only, full size, {device} ({weights}; {inputs}; "
           f"max |log-prob diff| vs baseline {diff:.1e})", timings, "baseline views one by one")


# -- heatmaps ---------------------------------------------------------------------------
def patch_model(device: torch.device) -> tuple[DenseNet, str]:
    model = DenseNet()
    path = fixtures_dir() / "patch_densenet121_weights_fp16.pt"
    if path.is_file():
        load_state(model, read_state_dict(path), str(path))
        source = "fixture weights"
    else:
        torch.manual_seed(0)
        model = DenseNet()
        source = "seeded random weights"
    return model.float().to(device).eval(), source


def heatmap_image(region: str) -> tuple[np.ndarray, str]:
    path = fixtures_dir() / "images" / "1_L_CC.png"
    if path.is_file():
        import cv2

        from triage.imaging import crop_and_flip, standardize_whole

        pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise SystemExit(f"cannot read {path}")
        _, flipped = crop_and_flip(pixels, faces_right=True)  # a left breast
        image = standardize_whole(flipped)
        source = "cropped 1_L_CC.png"
    else:
        image = np.random.default_rng(0).standard_normal((2592, 1263))
        source = "seeded noise 2592x1263"
    if region != "full":
        height, width = (int(v) for v in region.lower().split("x"))
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
        image = image[top:top + height, left:left + width]
        source += f", central {height}x{width} region"
    return np.ascontiguousarray(image, dtype=np.float32), source


def per_patch_loop(model: DenseNet, image: np.ndarray, offsets: list[tuple[int, int]],
                   size: int, device: torch.device) -> np.ndarray:
    """Baseline: one patch at a time, numpy accumulation of sums and counts."""
    sums = np.zeros((2, *image.shape))
    counts = np.zeros(image.shape)
    for top, left in offsets:
        patch = torch.from_numpy(image[top:top + size, left:left + size].copy())
        out: PatchOutput = model(patch.to(device)[None, None].expand(-1, 3, -1, -1))
        probabilities = out.probabilities[0].cpu().numpy()
        sums[:, top:top + size, left:left + size] += probabilities[:2, None, None]
        counts[top:top + size, left:left + size] += 1
    return sums / counts


def bench_heatmaps(device: torch.device, repeats: int, region: str, batch_size: int,
                   sync: Callable[[], None]) -> None:
    from triage.imaging import patch_grid

    model, weights = patch_model(device)
    image, source = heatmap_image(region)
    grid = patch_grid(image.shape, random.Random(0))
    offsets = grid.offsets
    tensor = torch.from_numpy(image).to(device)
    plain = nchw_copy(model)
    assert isinstance(plain, DenseNet)
    with torch.inference_mode():
        base = per_patch_loop(plain, image, offsets, grid.patch_size, device)
        maps = generate_heatmaps(model, tensor, grid, batch_size=batch_size)
        diff = max(float(np.abs(maps.malignant.cpu().numpy() - base[0]).max()),
                   float(np.abs(maps.benign.cpu().numpy() - base[1]).max()))
        timings = timed_round_robin({
            "baseline per-patch loop": lambda: per_patch_loop(plain, image, offsets,
                                                              grid.patch_size, device),
            "per-patch loop, NHWC model": lambda: per_patch_loop(model, image, offsets,
                                                                 grid.patch_size, device),
            f"batched heatmaps (batch {batch_size})": lambda: generate_heatmaps(
                model, tensor, grid, batch_size=batch_size),
            f"batched heatmaps (batch {4 * batch_size})": lambda: generate_heatmaps(
                model, tensor, grid, batch_size=4 * batch_size),
        }, repeats, sync)
    report(f"heatmaps of one image ({source}, {len(offsets)} patches), DenseNet-121, {device} "
           f"({weights}; max |heatmap diff| vs baseline {diff:.1e})", timings,
           "baseline per-patch loop")
    per_patch = timings[f"batched heatmaps (batch {batch_size})"] / len(offsets)
    print(f"  batched: {per_patch:.1f} ms per patch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--region", default="600x500")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="patches per forward (default: 8 on the CPU, 128 otherwise)")
    parser.add_argument("--skip-exam", action="store_true")
    parser.add_argument("--skip-heatmaps", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch_size = args.batch_size or default_batch_size(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if not args.skip_exam:
        bench_exam(device, args.repeats, sync)
    if not args.skip_heatmaps:
        bench_heatmaps(device, args.repeats, args.region, batch_size, sync)


if __name__ == "__main__":
    main()
