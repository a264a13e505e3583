"""Validation against reference fixtures and against the authors' published predictions.

``triage validate reference --fixtures DIR`` runs every check that DIR supports. Checks
come from a list of :class:`CheckProvider` s; each one looks for its own files and is
skipped when they are absent, so a directory holding only some fixtures validates only
those. Every expected value (numbers, positions, shapes, hyper-parameters) is read from
DIR; only tolerances live here (those the fixtures README recommends):

* probabilities, sigmoid outputs, attention weights, saliency maps: ``atol 1e-4``;
* raw logits and feature vectors: ``atol 1e-3, rtol 1e-3`` (element-wise
  ``|a - b| <= atol + rtol * |b|``);
* integers (positions, windows, shapes, centres): exact;
* preprocessed input: identical float32 bytes, otherwise statistics within ``1e-5``.

Later models plug in by appending a provider to :data:`PROVIDERS` (check names are
prefixed ``preprocessing/``, ``roi2d/``, ``gmic/``, then e.g. ``dmv-cnn/``, ``roi3d/``).

``triage validate published --images DIR`` runs the imported GMIC weights on the authors'
sample exam 0 and compares the predictions with those the authors' README reports, within
the fixed :data:`PUBLISHED_TOLERANCE`; a pass is recorded for the exact files evaluated (see
:func:`validate_published`). DMV-CNN and 3D-GMIC models are refused with the reason
(:func:`triage.models.weights.verification_refusal`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from triage.config import Settings
from triage.errors import ModelError, PreprocessingError, TriageError
from triage.models.densenet import DenseNet, DenseNetConfig
from triage.models.dmv_cnn import (
    DMVConfig,
    ImageBreastModel,
    SingleImageBreastModel,
    build_dmv_cnn,
    single_image_state,
)
from triage.models.gmic import GMIC, GMICConfig, GMICOutput
from triage.models.gmic3d import GMIC3D, GMIC3DConfig, GMIC3DOutput
from triage.models.heatmaps import gather_patches, patch_corners
from triage.models.registry import (
    GMIC_REPOSITORY,
    PUBLISHED_GMIC_FILES,
    PUBLISHED_GMIC_SAMPLE_MODEL,
    PUBLISHED_GMIC_SAMPLE_PREDICTIONS,
    get_spec,
)
from triage.models.roi import greedy_windows, map_to_input, normalized_criterion_map
from triage.models.roi import window_on_map as roi_window_on_map
from triage.models.roi3d import retrieve_roi_from_3d_image
from triage.models.weights import (
    PUBLISHED_VALIDATION_TOLERANCE,
    FileDigests,
    PublishedValidation,
    ValidationComparison,
    assess_weights,
    import_weights,
    load_state,
    load_weights,
    mark_verified,
    read_manifest,
    read_state_dict,
    verification_refusal,
)
from triage.vocabulary import Laterality, View, WeightsStatus

logger = logging.getLogger(__name__)

PROBABILITY_ATOL = 1e-4
FEATURE_ATOL = 1e-3
FEATURE_RTOL = 1e-3
PREPROCESSING_ATOL = 1e-5


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    """One line of the report: a named comparison with its worst error and tolerance."""

    check: str
    max_abs_error: float
    tolerance: float
    passed: bool
    rtol: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "max_abs_error": self.max_abs_error,
                "tolerance": self.tolerance, "pass": self.passed, "rtol": self.rtol,
                "detail": self.detail}


@dataclass
class ReferenceReport:
    results: list[CheckResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # providers whose files are absent
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)


def compare_close(name: str, actual: Any, expected: Any, atol: float,
                  rtol: float = 0.0) -> CheckResult:
    """Element-wise ``|a - b| <= atol + rtol * |b|`` (shapes must match)."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        return CheckResult(name, float("inf"), atol, False, rtol,
                           f"shape {a.shape} != expected {b.shape}")
    if a.size == 0:
        return CheckResult(name, 0.0, atol, True, rtol)
    err = np.abs(a - b)
    finite = bool(np.isfinite(a).all())
    max_err = float(err.max()) if finite else float("inf")
    ok = finite and bool((err <= atol + rtol * np.abs(b)).all())
    detail = "" if ok else (f"worst at index {np.unravel_index(int(np.nanargmax(err)), a.shape)}"
                            if finite else "non-finite values")
    return CheckResult(name, max_err, atol, ok, rtol, detail)


def compare_exact(name: str, actual: Any, expected: Any, detail: str = "") -> CheckResult:
    """Exact equality of integers (max abs error reported; tolerance 0)."""
    a = np.asarray(actual)
    b = np.asarray(expected)
    if a.shape != b.shape:
        return CheckResult(name, float("inf"), 0.0, False, 0.0,
                           f"shape {a.shape} != expected {b.shape}")
    err = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
    return CheckResult(name, err, 0.0, err == 0.0, 0.0, "" if err == 0.0 else detail)


def _failure(name: str, exc: BaseException) -> CheckResult:
    return CheckResult(name, float("inf"), 0.0, False, 0.0, f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------
# providers
# ---------------------------------------------------------------------------
class CheckProvider(Protocol):
    """A family of checks: ``available`` says whether DIR has its files."""

    prefix: str

    def available(self, fixtures: Path) -> bool: ...

    def checks(self, fixtures: Path, device: torch.device) -> Iterator[CheckResult]: ...


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def hyperparameters(fixtures: Path, summary_name: str) -> dict[str, Any]:
    """``hyperparameters`` of a ``*_summary.json`` in DIR."""
    data = _read_json(fixtures / summary_name)
    try:
        return dict(data["hyperparameters"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{fixtures / summary_name} has no 'hyperparameters' object") from exc


class Roi2dChecks:
    """GMIC's greedy ROI retrieval on the maps of ``retrieve_roi_2d.npz``."""

    prefix = "roi2d"
    file_name = "retrieve_roi_2d.npz"

    def available(self, fixtures: Path) -> bool:
        return (fixtures / self.file_name).is_file()

    def checks(self, fixtures: Path, device: torch.device) -> Iterator[CheckResult]:
        with np.load(fixtures / self.file_name) as data:
            ref = {k: data[k] for k in data.files}
        input_hw = (int(ref["input_hw"][0]), int(ref["input_hw"][1]))
        crop = (int(ref["crop_shape"][0]), int(ref["crop_shape"][1]))
        saliency = torch.from_numpy(ref["saliency"].astype(np.float32)).to(device)
        map_hw = (int(saliency.shape[-2]), int(saliency.shape[-1]))
        kinds = [str(k) for k in ref.get("case_kind", np.array([], dtype=str))]
        window = roi_window_on_map(crop, map_hw, input_hw)
        yield compare_exact(f"{self.prefix}/cam_hw", map_hw, ref["cam_hw"])
        yield compare_exact(f"{self.prefix}/window_on_cam", window, ref["window_on_cam"])
        criterion = normalized_criterion_map(saliency)
        if "normalized_sum" in ref:
            yield compare_close(f"{self.prefix}/normalized_sum", criterion.cpu().numpy(),
                                ref["normalized_sum"], PROBABILITY_ATOL)
        ks = sorted(int(k.removeprefix("cam_positions_K")) for k in ref
                    if k.startswith("cam_positions_K"))
        for k in ks:
            cam = greedy_windows(criterion, k, window)
            pixels = map_to_input(cam, map_hw, input_hw)
            for label, ours in (("cam_positions", cam), ("patch_locations", pixels)):
                expected = ref.get(f"{label}_K{k}")
                if expected is None:
                    continue
                ours_np = ours.cpu().numpy()
                wrong = [i for i in range(len(expected))
                         if ours_np.shape == expected.shape
                         and not np.array_equal(ours_np[i], expected[i])]
                detail = "cases " + ", ".join(
                    f"{i}({kinds[i] if i < len(kinds) else '?'})" for i in wrong[:8])
                yield compare_exact(f"{self.prefix}/K{k}/{label}", ours_np, expected, detail)


def _layout_check(name: str, model: torch.nn.Module, keys_file: Path) -> CheckResult:
    """The model's state_dict keys, order and shapes against a ``keys_*.json`` listing."""
    listed = [(item["key"], tuple(item["shape"])) for item in _read_json(keys_file)]
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    differing = sorted(set(listed) ^ set(ours))
    same_order = [k for k, _ in listed] == [k for k, _ in ours]
    return CheckResult(name, float(len(differing)), 0.0, not differing and same_order, 0.0,
                       ", ".join(k for k, _ in differing[:5]) or ("" if same_order
                                                                  else "key order differs"))


def _n_params(model: torch.nn.Module) -> int:
    return sum(t.numel() for t in model.parameters())


def _structure(prefix: str, model: torch.nn.Module, state: Mapping[str, torch.Tensor],
               source: str, keys_file: Path, n_params: Any) -> tuple[list[CheckResult], bool]:
    """Key layout (when the fixtures list it), strict loading and the parameter count (when
    the summary has it); False when the weights did not load (nothing else can be checked)."""
    results = []
    if keys_file.is_file():
        results.append(_layout_check(f"{prefix}/state_dict_keys", model, keys_file))
    try:
        load_state(model, state, source)
    except TriageError as exc:
        results.append(_failure(f"{prefix}/load_strict", exc))
        return results, False
    results.append(CheckResult(f"{prefix}/load_strict", 0.0, 0.0, True))
    if n_params is not None:
        results.append(compare_exact(f"{prefix}/n_params", _n_params(model), int(n_params)))
    return results, True


#: The file names of the GMIC fixture family (the layout of the shared fixtures).
GMIC_SUMMARY = "gmic_summary.json"
GMIC_OUTPUTS = "gmic_outputs.npz"
GMIC_WEIGHTS = "gmic_resnet18_weights_fp16.pt"
GMIC_KEYS = "keys_gmic.json"
GMIC_INPUT = "gmic_input_fp16.npy"


class GmicChecks:
    """GMIC forward pass with the fixture weights on the fixture input."""

    prefix = "gmic"

    def available(self, fixtures: Path) -> bool:
        return all((fixtures / f).is_file() for f in (GMIC_SUMMARY, GMIC_OUTPUTS, GMIC_WEIGHTS))

    def checks(self, fixtures: Path, device: torch.device) -> Iterator[CheckResult]:
        p = self.prefix
        summary = _read_json(fixtures / GMIC_SUMMARY)
        hp = hyperparameters(fixtures, GMIC_SUMMARY)
        model = GMIC(GMICConfig.from_hyperparameters(hp))
        results, loaded = _structure(p, model, read_state_dict(fixtures / GMIC_WEIGHTS),
                                     str(fixtures / GMIC_WEIGHTS), fixtures / GMIC_KEYS,
                                     summary.get("n_params"))
        yield from results
        if not loaded:
            return

        raw = np.load(fixtures / str(summary.get("input_file", GMIC_INPUT)))
        shape = tuple(int(s) for s in hp.get("input_shape", (1, 1, *raw.shape[-2:])))
        x = torch.from_numpy(raw.astype(np.float32).reshape(shape)).to(device)
        model = model.float().to(device).eval()
        with torch.inference_mode():
            out: GMICOutput = model(x, return_crops=True)
        with np.load(fixtures / GMIC_OUTPUTS) as data:
            ref = {k: data[k] for k in data.files}

        def np_(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        probabilities = {"saliency_map": out.saliency_map, "y_global": out.y_global,
                         "y_local": out.y_local, "y_fusion": out.y_fusion,
                         "patch_attns": out.patch_attention}
        for key, tensor in probabilities.items():
            if key in ref:
                yield compare_close(f"{p}/{key}", np_(tensor), ref[key], PROBABILITY_ATOL)
        features = {"global_vec": out.global_vec, "h_crops": out.h_crops, "z": out.z}
        for key, tensor in features.items():
            if key in ref:
                yield compare_close(f"{p}/{key}", np_(tensor), ref[key], FEATURE_ATOL,
                                    FEATURE_RTOL)
        if "patch_locations" in ref:
            yield compare_exact(f"{p}/patch_locations", out.patch_locations.cpu().numpy(),
                                ref["patch_locations"])
        if "h_g_shape" in ref:
            h_g_shape = (x.shape[0], out.global_vec.shape[1], *out.saliency_map.shape[2:])
            yield compare_exact(f"{p}/h_g_shape", h_g_shape, ref["h_g_shape"])
        if "patches_fp16" in ref and out.crops is not None:
            crops = out.crops.detach().cpu().numpy().astype(ref["patches_fp16"].dtype)
            yield compare_close(f"{p}/patches", crops, ref["patches_fp16"], 0.0)


# -- preprocessing -------------------------------------------------------------
def _ints(value: Any) -> Any:
    """Nested ints from tuples/lists/arrays/numbers (for exact comparisons)."""
    if isinstance(value, np.ndarray):
        return _ints(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_ints(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return int(value)


def _flat(value: Any) -> list[int]:
    """Nested ints flattened in order (ragged nesting such as ``[[y0, y1], x]`` allowed)."""
    if isinstance(value, list):
        return [item for v in value for item in _flat(v)]
    return [int(value)]


def _sides(value: Any) -> list[int]:
    """(top, bottom, left, right) from a mapping, an object with those fields or a 4-tuple."""
    names = ("top", "bottom", "left", "right")
    if isinstance(value, Mapping):
        return [int(value.get(n, 0)) for n in names]
    if all(hasattr(value, n) for n in names):
        return [int(getattr(value, n)) for n in names]
    values = _ints(value)
    if len(values) != 4:
        raise ValueError(f"cannot read (top, bottom, left, right) from {value!r}")
    return values


def _laterality_view(record: Mapping[str, Any], image_name: str) -> tuple[Laterality, View]:
    laterality = record.get("laterality")
    view = record.get("view_angle")
    if laterality is None or view is None:  # e.g. "L-CC" / "R_MLO" in the view field or name
        text = str(record.get("view") or Path(image_name).stem).replace("_", "-").upper()
        parts = text.split("-")
        laterality, view = parts[-2][-1], parts[-1]
    return Laterality(str(laterality)), View(str(view))


def read_png(path: Path) -> np.ndarray:
    """A mammogram PNG as stored (16-bit stays 16-bit)."""
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise PreprocessingError(f"cannot read image {path}")
    if pixels.ndim != 2:
        raise PreprocessingError(f"{path} is not a single-channel image")
    return pixels


def preprocessing_problems(prepared: Any, record: Mapping[str, Any]) -> tuple[float, list[str]]:
    """Differences between a PreparedView and a fixture record's integers.

    Returns (max absolute integer difference, names of differing fields).
    """
    cropping = record.get("cropping", {})
    pairs: list[tuple[str, Any, Any]] = [
        ("window_location", _ints(prepared.crop_window), _ints(cropping["window_location"])),
        ("rightmost_points", _ints(prepared.rightmost_points),
         _ints(cropping["rightmost_points"])),
        ("bottommost_points", _ints(prepared.bottommost_points),
         _ints(cropping["bottommost_points"])),
        ("distance_from_starting_side", _ints(prepared.distance_from_starting_side),
         _ints(cropping["distance_from_starting_side"])),
        ("cropped_shape", _ints(prepared.cropped_shape), _ints(record["cropped_shape"])),
        ("best_center", _ints(prepared.best_center), _ints(record["best_center"])),
        ("padding", _sides(prepared.padding), _sides(record["padding"])),
        ("final_window", _sides(prepared.final_window), _sides(record["final_window"])),
    ]
    if "flip_applied_at_load" in record:
        pairs.append(("flipped", _ints(bool(prepared.flipped)),
                      _ints(bool(record["flip_applied_at_load"]))))
    worst = 0.0
    differing: list[str] = []
    for name, ours, theirs in pairs:
        a = np.asarray(_flat(ours), dtype=np.float64)
        b = np.asarray(_flat(theirs), dtype=np.float64)
        if a.shape != b.shape:
            worst, differing = float("inf"), [*differing, name]
            continue
        err = float(np.abs(a - b).max()) if a.size else 0.0
        if err:
            worst = max(worst, err)
            differing.append(name)
    return worst, differing


def input_stats_error(array: np.ndarray, expected: Mapping[str, Any]) -> tuple[float, str]:
    """Error of the model input against ``final_input`` (0 when the float32 bytes match)."""
    values = np.ascontiguousarray(array, dtype=np.float32)
    if list(values.shape) != [int(s) for s in expected["shape"]]:
        return float("inf"), f"shape {values.shape} != {expected['shape']}"
    if hashlib.sha256(values.tobytes()).hexdigest() == expected.get("sha256_float32"):
        return 0.0, ""
    v64 = values.astype(np.float64)
    stats = {"mean": v64.mean(), "std": v64.std(), "min": v64.min(), "max": v64.max()}
    errors = {k: abs(float(stats[k]) - float(expected[k])) for k in stats if k in expected}
    worst = max(errors.values(), default=0.0)
    return worst, "sha256 differs; stats errors " + ", ".join(
        f"{k} {v:.2e}" for k, v in errors.items())


class PreprocessingChecks:
    """``triage.imaging.prepare_view`` against ``preprocessing*.json`` records."""

    prefix = "preprocessing"
    #: (record file, default image folder) pairs of the fixture layout
    sources = (("preprocessing.json", "images"),
               ("preprocessing_synthetic.json", "preprocessing_synthetic"))

    def available(self, fixtures: Path) -> bool:
        return any((fixtures / name).is_file() for name, _ in self.sources)

    def checks(self, fixtures: Path, device: torch.device) -> Iterator[CheckResult]:
        try:
            from triage.imaging import prepare_view
        except ImportError as exc:
            yield _failure(f"{self.prefix}/prepare_view", exc)
            return
        for file_name, folder in self.sources:
            if not (fixtures / file_name).is_file():
                continue
            data = _read_json(fixtures / file_name)
            image_dir = fixtures / folder
            for image_name, record in data.get("images", {}).items():
                yield from self._image(prepare_view, image_dir / image_name, image_name, record)

    def _image(self, prepare_view: Callable[..., Any], path: Path, image_name: str,
               record: Mapping[str, Any]) -> Iterator[CheckResult]:
        stem = Path(image_name).stem
        pipelines = {k: v for k, v in record.items()
                     if isinstance(v, Mapping) and "input_size" in v}
        try:
            pixels = read_png(path)
            laterality, view = _laterality_view(record, image_name)
        except (TriageError, ValueError) as exc:
            yield _failure(f"{self.prefix}/{stem}", exc)
            return
        for pipeline, expected in pipelines.items():
            name = f"{self.prefix}/{pipeline}/{stem}"
            size = (int(expected["input_size"][0]), int(expected["input_size"][1]))
            try:
                prepared = prepare_view(pixels, laterality, view, size)
                worst, differing = preprocessing_problems(prepared, expected)
            except (TriageError, ValueError, KeyError, AttributeError, TypeError) as exc:
                yield _failure(f"{name}/geometry", exc)
                continue
            yield CheckResult(f"{name}/geometry", worst, 0.0, not differing, 0.0,
                              ", ".join(differing))
            error, detail = input_stats_error(np.asarray(prepared.array), expected["final_input"])
            yield CheckResult(f"{name}/input", error, PREPROCESSING_ATOL,
                              error <= PREPROCESSING_ATOL, 0.0, detail)


#: Providers in report order; later model families append theirs.
PROVIDERS: list[CheckProvider] = [PreprocessingChecks(), Roi2dChecks(), GmicChecks()]


# -- 3D-GMIC and its ROI retrieval (roi3d/, gmic3d/) ----------------------------------
_ROI3D_KEY = re.compile(r"^case(\d+)_K(\d+)_zeta(\d+)_slices$")


class Roi3dChecks:
    """3D-GMIC's greedy ROI + slice retrieval on every case, K and zeta of
    ``retrieve_roi_3d.npz`` (one result per K, zeta and output, naming failing cases)."""

    prefix = "roi3d"
    file_name = "retrieve_roi_3d.npz"
    outputs = ("slices", "cam_positions", "patch_locations", "cam_positions_all_slices")

    def available(self, fixtures: Path) -> bool:
        return (fixtures / self.file_name).is_file()

    def checks(self, fixtures: Path, device: torch.device) -> Iterator[CheckResult]:
        with np.load(fixtures / self.file_name) as data:
            ref = {k: data[k] for k in data.files}
        input_hw = (int(ref["input_hw"][0]), int(ref["input_hw"][1]))
        crop = (int(ref["crop_shape"][0]), int(ref["crop_shape"][1]))
        kinds = [str(k) for k in ref.get("case_kind", np.array([], dtype=str))]
        runs: dict[tuple[int, int], list[int]] = {}
        for key in ref:
            match = _ROI3D_KEY.match(key)
            if match:
                case, k, zeta = (int(g) for g in match.groups())
                runs.setdefault((k, zeta), []).append(case)
        if not runs:
            yield CheckResult(f"{self.prefix}/cases", 0.0, 0.0, False, 0.0,
                              "no caseNN_K*_zeta*_slices arrays in the file")
            return
        if "window_on_cam" in ref and "cam_hw" in ref:
            cam_hw = (int(ref["cam_hw"][0]), int(ref["cam_hw"][1]))
            yield compare_exact(f"{self.prefix}/window_on_cam",
                                roi_window_on_map(crop, cam_hw, input_hw), ref["window_on_cam"])
        for (k, zeta), cases in sorted(runs.items()):
            wrong: dict[str, list[int]] = {label: [] for label in self.outputs}
            worst = dict.fromkeys(self.outputs, 0.0)
            for case in sorted(cases):
                prefix = f"case{case:02d}_K{k}_zeta{zeta}_"
                saliency = torch.from_numpy(
                    ref[f"case{case:02d}_saliency"].astype(np.float32)).to(device)
                out = retrieve_roi_from_3d_image(saliency, k, crop, input_hw, zeta)
                for label in self.outputs:
                    expected = ref.get(prefix + label)
                    if expected is None:
                        continue
                    result = compare_exact(label, getattr(out, label).cpu().numpy(), expected)
                    worst[label] = max(worst[label], result.max_abs_error)
                    if not result.passed:
                        wrong[label].append(case)
            for label in self.outputs:
                detail = "cases " + ", ".join(
                    f"{i}({kinds[i] if i < len(kinds) else '?'})" for i in wrong[label][:8])
                yield CheckResult(f"{self.prefix}/K{k}/zeta{zeta}/{label}", worst[label], 0.0,
                                  not wrong[label], 0.0, detail if wrong[label] else "")


#: The file names of the 3D-GMIC fixture family.
GMIC3D_SUMMARY = "gmic3d_summary.json"
GMIC3D_IO = "gmic3d_io.npz"
GMIC3D_WEIGHTS = "gmic3d_weights_fp16.pt"
GMIC3D_KEYS = "keys_gmic3d.json"


class Gmic3dChecks:
    """3D-GMIC forward pass with the fixture weights on the fixture DBT volume."""

    prefix = "gmic3d"

    def available(self, fixtures: Path) -> bool:
        return all((fixtures / f).is_file() for f in (GMIC3D_SUMMARY, GMIC3D_IO, GMIC3D_WEIGHTS))

    def checks(self, fixtures: Path, device: torch.device) -> Iterator[CheckResult]:
        p = self.prefix
        summary = _read_json(fixtures / GMIC3D_SUMMARY)
        hp = hyperparameters(fixtures, GMIC3D_SUMMARY)
        model = GMIC3D(GMIC3DConfig.from_hyperparameters(hp))
        results, loaded = _structure(p, model, read_state_dict(fixtures / GMIC3D_WEIGHTS),
                                     str(fixtures / GMIC3D_WEIGHTS), fixtures / GMIC3D_KEYS,
                                     summary.get("n_params"))
        yield from results
        if not loaded:
            return

        with np.load(fixtures / GMIC3D_IO) as data:
            ref = {k: data[k] for k in data.files}
        raw = ref["input_fp16"].astype(np.float32)
        shape = tuple(int(s) for s in hp.get("input_shape", (1, 1, *raw.shape)))
        x = torch.from_numpy(raw.reshape(shape))  # stays on the CPU; chunks move to device
        model = model.float().to(device).eval()
        with torch.inference_mode():
            out: GMIC3DOutput = model(x, return_crops=True)

        def np_(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy()

        probabilities = {"saliency_map": out.saliency_map, "y_global": out.y_global,
                         "y_local": out.y_local, "final_prediction": out.final_prediction,
                         "patch_attns": out.patch_attention}
        for key, tensor in probabilities.items():
            if key in ref:
                yield compare_close(f"{p}/{key}", np_(tensor), ref[key], PROBABILITY_ATOL)
        slices = out.slice_numbers.cpu().numpy().reshape(-1, 1)
        for key in ("max_slice_numbers", "intended_max_slice_numbers"):
            if key in ref:  # eval mode: the cropped slice is the winning one
                yield compare_exact(f"{p}/{key}", slices, ref[key])
        if "patch_locations" in ref:
            yield compare_exact(f"{p}/patch_locations",
                                out.patch_locations_all_slices.cpu().numpy(),
                                ref["patch_locations"])
        if "patches_fp16" in ref and out.crops is not None:
            expected = ref["patches_fp16"]
            crops = out.crops.detach().cpu().numpy().astype(expected.dtype)[:, :, None]
            yield compare_close(f"{p}/patches", crops, expected, 0.0)  # (1, K, 1, hc, wc)


PROVIDERS += [Roi3dChecks(), Gmic3dChecks()]


# -- DMV-CNN and its patch classifier (dmv-cnn/, patch/) --------------------------------
#: The file names of the DMV-CNN fixture family.
DMV_SUMMARY = "dmv_cnn_summary.json"
DMV_OUTPUTS = "dmv_cnn_outputs.npz"
DMV_WEIGHTS = "dmv_cnn_view_split_weights_fp16.pt"
DMV_HEADS = "dmv_cnn_image_wise_heads_fp16.pt"
DMV_KEYS = "keys_dmv_cnn_view_split.json"
DMV_IMAGE_WISE_KEYS = "keys_dmv_cnn_image_wise.json"
DMV_VIEWS = ("L-CC", "R-CC", "L-MLO", "R-MLO")


class DmvCnnChecks:
    """DMV-CNN (view-wise, image-wise, single-image) with the fixture weights on the
    fixture's reduced-size exam, and at full size from ``images/`` when they are there."""

    prefix = "dmv-cnn"

    def available(self, fixtures: Path) -> bool:
        return all((fixtures / f).is_file() for f in (DMV_SUMMARY, DMV_OUTPUTS, DMV_WEIGHTS))

    def checks(self, fixtures: Path, device: torch.device) -> Iterator[CheckResult]:
        p = self.prefix
        summary = _read_json(fixtures / DMV_SUMMARY)
        hp = hyperparameters(fixtures, DMV_SUMMARY)
        model = build_dmv_cnn(DMVConfig.from_hyperparameters(hp))
        state = read_state_dict(fixtures / DMV_WEIGHTS, "model")
        results, loaded = _structure(p, model, state, str(fixtures / DMV_WEIGHTS),
                                     fixtures / DMV_KEYS, summary.get("n_params_view_split"))
        yield from results
        if not loaded:
            return
        model = model.float().to(device).eval()
        with np.load(fixtures / DMV_OUTPUTS) as data:
            ref = {k: data[k] for k in data.files}
        inputs = {v: torch.from_numpy(ref[f"input_{v}"].astype(np.float32))[None, None]
                  .to(device) for v in DMV_VIEWS if f"input_{v}" in ref}
        if len(inputs) == len(DMV_VIEWS):
            with torch.inference_mode():
                out = model(*(inputs[v] for v in DMV_VIEWS))
            yield from self._view_wise(f"{p}", out, ref, "")
            features = dict(zip(DMV_VIEWS, out.features, strict=True))
            for view in DMV_VIEWS:
                if f"avgpool_{view}" in ref:
                    yield compare_close(f"{p}/avgpool_{view}", features[view].cpu().numpy(),
                                        ref[f"avgpool_{view}"], FEATURE_ATOL, FEATURE_RTOL)
            if (fixtures / DMV_HEADS).is_file():
                yield from self._image_wise(fixtures, summary, state, inputs, ref, device)
        if "full_CC_logprob" in ref or "full_MLO_logprob" in ref:
            yield from self._full_resolution(fixtures, summary, model, ref, device)

    @staticmethod
    def _view_wise(p: str, out: Any, ref: Mapping[str, np.ndarray],
                   key_prefix: str) -> Iterator[CheckResult]:
        for angle, tensor in (("CC", out.cc_logprob), ("MLO", out.mlo_logprob)):
            key = f"{key_prefix}{angle}_logprob"
            if key in ref:
                yield compare_close(f"{p}/{key}", tensor.float().cpu().numpy(), ref[key],
                                    FEATURE_ATOL, FEATURE_RTOL)

    def _image_wise(self, fixtures: Path, summary: Mapping[str, Any],
                    view_split_state: Mapping[str, torch.Tensor],
                    inputs: Mapping[str, torch.Tensor], ref: Mapping[str, np.ndarray],
                    device: torch.device) -> Iterator[CheckResult]:
        p = f"{self.prefix}/image_wise"
        heads = read_state_dict(fixtures / DMV_HEADS, "model")
        columns = {k: v for k, v in view_split_state.items()
                   if k.startswith("four_view_resnet.")}
        state = {**columns, **heads}
        model = ImageBreastModel()
        results, loaded = _structure(p, model, state,
                                     f"{fixtures / DMV_HEADS} + view-split columns",
                                     fixtures / DMV_IMAGE_WISE_KEYS,
                                     summary.get("n_params_image_wise_full"))
        yield from results
        if not loaded:
            return
        model = model.float().to(device).eval()
        with torch.inference_mode():
            out = model(*(inputs[v] for v in DMV_VIEWS))
        logprobs = dict(zip(DMV_VIEWS, out.logprob, strict=True))
        for view in DMV_VIEWS:
            key = f"image_wise_logprob_{view}"
            if key not in ref:
                continue
            # the image-wise model's first two rows are the single-image (benign, malignant)
            yield compare_close(f"{p}/logprob_{view}", logprobs[view][:, :2].cpu().numpy(),
                                ref[key], FEATURE_ATOL, FEATURE_RTOL)
            laterality, angle = view.split("-")
            single = SingleImageBreastModel()
            try:
                load_state(single, single_image_state(state, Laterality(laterality),
                                                      View(angle)), f"single-image {view}")
            except TriageError as exc:
                yield _failure(f"{self.prefix}/single_image/{view}", exc)
                continue
            if "n_params_single_image" in summary and view == DMV_VIEWS[0]:
                yield compare_exact(f"{self.prefix}/single_image/n_params", _n_params(single),
                                    int(summary["n_params_single_image"]))
            with torch.inference_mode():
                single_out = single.float().to(device).eval()(inputs[view])
            yield compare_close(f"{self.prefix}/single_image/logprob_{view}",
                                single_out.logprob.cpu().numpy(), ref[key],
                                FEATURE_ATOL, FEATURE_RTOL)

    def _full_resolution(self, fixtures: Path, summary: Mapping[str, Any],
                         model: torch.nn.Module, ref: Mapping[str, np.ndarray],
                         device: torch.device) -> Iterator[CheckResult]:
        """Rebuild the full-size inputs from ``images/`` (reference preprocessing, rounded to
        float16 like the fixture), check their sha256 and the model outputs."""
        from triage.imaging import prepare_view

        p = f"{self.prefix}/full"
        exam = summary.get("exam", {})
        sizes = summary.get("hyperparameters", {}).get("full_resolution_input_sizes", {})
        digests = summary.get("full_res", {}).get("input_sha256_float32_of_fp16_rounded", {})
        paths = {v: fixtures / "images" / str(exam.get(v, "")) for v in DMV_VIEWS}
        if not sizes or not all(exam.get(v) and paths[v].is_file() for v in DMV_VIEWS):
            yield CheckResult(f"{p}/inputs", float("inf"), 0.0, False, 0.0,
                              "full-resolution outputs are in the fixtures but the exam's "
                              "images/ or input sizes are not")
            return
        arrays = []
        for view in DMV_VIEWS:
            laterality, angle = view.split("-")
            try:
                prepared = prepare_view(read_png(paths[view]), Laterality(laterality),
                                        View(angle), (int(sizes[angle][0]), int(sizes[angle][1])))
            except (TriageError, ValueError) as exc:
                yield _failure(f"{p}/input_{view}", exc)
                return
            rounded = prepared.array.astype(np.float16).astype(np.float32)
            if view in digests:
                ok = hashlib.sha256(rounded.tobytes()).hexdigest() == digests[view]
                yield CheckResult(f"{p}/input_sha256_{view}", 0.0 if ok else 1.0, 0.0, ok, 0.0,
                                  "" if ok else "sha256 of the float16-rounded input differs")
            arrays.append(torch.from_numpy(rounded)[None, None].to(device))
        with torch.inference_mode():
            out = model(*arrays)
        yield from self._view_wise(p, out, ref, "full_")


#: The file names of the patch-classifier fixture family.
PATCH_SUMMARY = "patch_classifier_summary.json"
PATCH_IO = "patch_classifier_io.npz"
PATCH_WEIGHTS = "patch_densenet121_weights_fp16.pt"
PATCH_KEYS = "keys_patch_densenet121.json"


class PatchClassifierChecks:
    """The DenseNet-121 patch classifier on the fixture patches, and the patch grid (stride
    lists, patches) of the fixture image when ``images/`` has it."""

    prefix = "patch"

    def _weights(self, fixtures: Path) -> Path:
        if (fixtures / PATCH_SUMMARY).is_file():
            name = _read_json(fixtures / PATCH_SUMMARY).get("weights")
            if name:
                return fixtures / str(name)
        return fixtures / PATCH_WEIGHTS

    def available(self, fixtures: Path) -> bool:
        return (all((fixtures / f).is_file() for f in (PATCH_SUMMARY, PATCH_IO))
                and self._weights(fixtures).is_file())

    def checks(self, fixtures: Path, device: torch.device) -> Iterator[CheckResult]:
        p = self.prefix
        summary = _read_json(fixtures / PATCH_SUMMARY)
        hp = hyperparameters(fixtures, PATCH_SUMMARY)
        config = DenseNetConfig(num_classes=int(hp.get("number_of_classes", 4)),
                                input_channels=int(hp.get("input_channels", 3)),
                                patch_size=int(hp.get("patch_size", 256)))
        model = DenseNet(config)
        weights = self._weights(fixtures)
        results, loaded = _structure(p, model, read_state_dict(weights), str(weights),
                                     fixtures / PATCH_KEYS, summary.get("n_params"))
        yield from results
        if not loaded:
            return
        model = model.float().to(device).eval()
        with np.load(fixtures / PATCH_IO) as data:
            ref = {k: data[k] for k in data.files}
        patches = torch.from_numpy(ref["patches_fp16"].astype(np.float32))[:, None].to(device)
        with torch.inference_mode():
            out = model(patches)  # replicated to the input channels by the model
        if "logits" in ref:
            yield compare_close(f"{p}/logits", out.logits.cpu().numpy(), ref["logits"],
                                FEATURE_ATOL, FEATURE_RTOL)
        if "softmax" in ref:
            yield compare_close(f"{p}/softmax", out.probabilities.cpu().numpy(), ref["softmax"],
                                PROBABILITY_ATOL)
        image = fixtures / "images" / str(summary.get("image", ""))
        if summary.get("image") and image.is_file():
            yield from self._grid(fixtures, summary, hp, image, ref)

    def _grid(self, fixtures: Path, summary: Mapping[str, Any], hp: Mapping[str, Any],
              image: Path, ref: Mapping[str, np.ndarray]) -> Iterator[CheckResult]:
        """Crop the fixture image, draw the grid as the reference does, compare the stride
        lists and the patches taken through the heatmap patch extraction."""
        import random

        from triage.imaging import crop_and_flip, patch_grid, standardize_whole

        p = f"{self.prefix}/grid"
        try:
            laterality, _ = _laterality_view({"view": summary.get("view")}, image.name)
            _, flipped = crop_and_flip(read_png(image), laterality is Laterality.LEFT)
            grid = patch_grid(flipped.shape, random.Random(int(hp.get("python_random_seed", 0))),
                              patch_size=int(hp.get("patch_size", 256)),
                              stride=int(hp.get("stride_fixed", 70)))
        except (TriageError, ValueError) as exc:
            yield _failure(f"{p}/stride_lists", exc)
            return
        if "cropped_shape" in summary:
            yield compare_exact(f"{p}/cropped_shape", list(flipped.shape),
                                summary["cropped_shape"])
        # the reference calls the list along the image height "width_stride_list"
        for key, ours in (("width_stride_list", grid.row_strides),
                          ("length_stride_list", grid.col_strides)):
            if key in summary:
                yield compare_exact(f"{p}/{key}", list(ours), summary[key])
        if "n_patches_total" in summary:
            yield compare_exact(f"{p}/n_patches_total", len(grid), summary["n_patches_total"])
        if "patch_indices" in ref and "patches_fp16" in ref:
            standardized = torch.from_numpy(standardize_whole(flipped)).float()
            corners = patch_corners(grid)[torch.from_numpy(ref["patch_indices"]).long()]
            taken = gather_patches(standardized, corners, grid.patch_size)
            yield compare_close(f"{p}/patches", taken.half().numpy(), ref["patches_fp16"], 0.0)


PROVIDERS += [DmvCnnChecks(), PatchClassifierChecks()]


def run_reference_checks(fixtures: Path, device: torch.device | None = None,
                         only: Sequence[str] = (),
                         providers: Sequence[CheckProvider] | None = None) -> ReferenceReport:
    """Run every provider whose files are in ``fixtures`` (optionally only some prefixes)."""
    if not fixtures.is_dir():
        raise ModelError(f"fixtures directory {fixtures} does not exist")
    device = device or torch.device("cpu")
    report = ReferenceReport()
    ran: list[str] = []
    for provider in providers if providers is not None else PROVIDERS:
        if only and provider.prefix not in only:
            continue
        if not provider.available(fixtures):
            report.skipped.append(provider.prefix)
            continue
        ran.append(provider.prefix)
        try:
            for result in provider.checks(fixtures, device):
                report.results.append(result)
        except (TriageError, OSError, ValueError, KeyError, RuntimeError) as exc:
            report.results.append(_failure(f"{provider.prefix}/error", exc))
    if Roi3dChecks.prefix in ran:
        report.notes.append(
            "roi3d: the degenerate zero-class case is not checked: the reference turns it into "
            "NaN and picks slice 0, (0, 0); triage deliberately treats a constant class as 0")
    if Roi2dChecks.prefix in ran:
        report.notes.append(
            "roi2d: the degenerate constant-channel case is not checked: the reference turns "
            "it into NaN and picks (0, 0); triage deliberately treats a constant channel as 0")
    return report


# ---------------------------------------------------------------------------
# published weights: the authors' sample exam 0
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PublishedComparison:
    source: str  # a model name, or "ensemble"
    view: str
    expected: tuple[float, float]
    actual: tuple[float, float]
    max_abs_error: float
    passed: bool


@dataclass
class PublishedReport:
    comparisons: list[PublishedComparison] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    matched_source: str | None = None
    upgraded: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.matched_source is not None


PUBLISHED_GMIC_NAMES = tuple(f"gmic-resnet18-{i}" for i in range(1, len(PUBLISHED_GMIC_FILES) + 1))
#: Fixed in code (see :data:`triage.models.weights.PUBLISHED_VALIDATION_TOLERANCE`): no
#: option or setting loosens it, and it is recorded with every successful validation.
PUBLISHED_TOLERANCE = PUBLISHED_VALIDATION_TOLERANCE


def import_published_directory(weights_dir: Path, settings: Settings) -> list[str]:
    """Import the authors' ``sample_model_N.p`` files found in ``weights_dir``."""
    imported = []
    for name in PUBLISHED_GMIC_NAMES:
        published = get_spec(name).weights.published_path
        if published is None:
            continue
        candidate = weights_dir / Path(published).name
        if candidate.is_file():
            import_weights(candidate, name, settings)
            imported.append(name)
    return imported


def _prepare_exam(images_dir: Path, input_size: Mapping[View, tuple[int, int]]
                  ) -> tuple[list[str], torch.Tensor]:
    from triage.imaging import prepare_view

    views = list(PUBLISHED_GMIC_SAMPLE_PREDICTIONS)
    arrays = []
    for view_name in views:
        path = images_dir / f"{view_name}.png"
        if not path.is_file():
            raise PreprocessingError(
                f"{path} is missing: --images must hold the authors' sample exam 0 "
                f"({', '.join(v + '.png' for v in views)})")
        laterality, view = _laterality_view({}, view_name)
        prepared = prepare_view(read_png(path), laterality, view, input_size[view])
        arrays.append(np.asarray(prepared.array, dtype=np.float32))
    return views, torch.from_numpy(np.stack(arrays)[:, None])


def published_selection(settings: Settings, models: Sequence[str] = ()) -> tuple[list[str],
                                                                                 list[str]]:
    """The GMIC models to validate and notes about imported models that cannot be.

    With ``models`` empty: every published GMIC model with imported (non-demo) weights.
    A named model without a validation path raises :class:`ModelError` with the reason and
    what the admin can do; so does a named model without imported weights.
    """
    manifest = read_manifest(settings)
    notes: list[str] = []
    if models:
        names = list(dict.fromkeys(get_spec(n).name for n in models))
        refused = [r for r in (verification_refusal(get_spec(n)) for n in names) if r]
        if refused:
            raise ModelError(" ".join(refused))
        missing = [n for n in names if n not in manifest]
        if missing:
            raise ModelError(
                f"no weights imported for {', '.join(missing)}: import the authors' files "
                "first, e.g. `triage models import sample_model_1.p --as gmic-resnet18-1` "
                "(or pass --weights-dir)")
        return names, notes
    names = [n for n in PUBLISHED_GMIC_NAMES if n in manifest
             and assess_weights(n, settings).status is not WeightsStatus.SYNTHETIC_DEMO]
    for other in sorted(manifest):
        refusal = verification_refusal(get_spec(other))
        if refusal is not None and get_spec(other).weights.git_blob_id is not None:
            notes.append(f"not validated: {refusal}")
    return names, notes


def validate_published(images_dir: Path, settings: Settings,
                       device: torch.device | None = None,
                       weights_dir: Path | None = None,
                       models: Sequence[str] = ()) -> PublishedReport:
    """Reproduce the authors' sample-exam predictions with the imported GMIC weights.

    The README table does not say which model produced it; the authors' run script
    defaults to ``sample_model_1.p``. The check passes when ``gmic-resnet18-1`` reproduces
    it, or when the five-model mean does (all five imported), every value within the fixed
    :data:`PUBLISHED_TOLERANCE` (no parameter changes it). On success a validation record
    (sha256, git blob id, tolerance, date, what was compared) is written for every evaluated
    model whose evaluated bytes are the published file (git blob id): with that record the
    file's status is ``verified_published`` — the blob id authenticates the bytes, and the
    sample proves that this product's architecture and preprocessing reproduce the
    authors' numbers. Other files stay ``imported_unverified``. ``models`` restricts the
    run to named models; a DMV-CNN or 3D-GMIC model is refused with the reason.
    """
    device = device or torch.device("cpu")
    report = PublishedReport()
    if weights_dir is not None:
        imported = import_published_directory(weights_dir, settings)
        report.messages.append(f"imported from {weights_dir}: {', '.join(imported) or 'none'}")
    members, notes = published_selection(settings, models)
    report.messages.extend(notes)
    if not members:
        raise ModelError(
            "no imported GMIC weights to validate: import the authors' files with "
            "`triage models import sample_model_1.p --as gmic-resnet18-1` (or --weights-dir)")
    manifest = read_manifest(settings)
    views, batch = _prepare_exam(images_dir, get_spec(members[0]).input_size)
    batch = batch.to(device)

    predictions: dict[str, np.ndarray] = {}
    evaluated: dict[str, FileDigests] = {}
    for name in members:
        spec = get_spec(name)
        entry = manifest[name]
        model = spec.builder(spec.hyperparameters)
        evaluated[name] = load_weights(model, settings.models_dir / entry.file, entry.sha256,
                                       spec.weights.state_dict_key)
        model = model.float().to(device).eval()
        with torch.inference_mode():
            out = model(batch)
        predictions[name] = out.y_fusion.float().cpu().numpy().astype(np.float64)
        report.evaluated.append(name)
        del model

    sources: dict[str, np.ndarray] = {}
    if PUBLISHED_GMIC_SAMPLE_MODEL in predictions:
        sources[PUBLISHED_GMIC_SAMPLE_MODEL] = predictions[PUBLISHED_GMIC_SAMPLE_MODEL]
    if len(predictions) == len(PUBLISHED_GMIC_NAMES):
        sources["ensemble"] = np.mean([predictions[n] for n in PUBLISHED_GMIC_NAMES], axis=0)
    if not sources:
        report.messages.append(
            "the README's predictions belong to sample_model_1.p (the authors' default) or to "
            "the five-model mean: import gmic-resnet18-1, or all five models")
    for source, values in sources.items():
        all_ok = True
        for i, view in enumerate(views):
            expected = PUBLISHED_GMIC_SAMPLE_PREDICTIONS[view]
            actual = (float(values[i, 0]), float(values[i, 1]))
            err = max(abs(actual[0] - expected[0]), abs(actual[1] - expected[1]))
            ok = err <= PUBLISHED_TOLERANCE
            all_ok &= ok
            report.comparisons.append(PublishedComparison(source, view, expected, actual,
                                                          err, ok))
        if all_ok and report.matched_source is None:
            report.matched_source = source
    if report.matched_source is not None:
        matched = tuple(ValidationComparison(c.source, c.view, c.expected, c.actual)
                        for c in report.comparisons if c.source == report.matched_source)
        report.upgraded = mark_verified(evaluated, settings, PublishedValidation(
            compared=published_comparison_text(report.matched_source, views),
            matched_source=report.matched_source, comparisons=matched))
        not_published = sorted(set(report.evaluated) - set(report.upgraded))
        if not_published:
            report.messages.append(
                "not the published files (git blob id differs), left imported_unverified: "
                + ", ".join(not_published))
    logger.info("published validation", extra={"passed": report.passed,
                                                "evaluated": report.evaluated,
                                                "upgraded": report.upgraded,
                                                "tolerance": PUBLISHED_TOLERANCE})
    return report


def published_comparison_text(source: str, views: Sequence[str]) -> str:
    """What a published validation compared, in words (recorded with the status)."""
    what = ("the mean of the five GMIC models" if source == "ensemble"
            else f"model {source}")
    return (f"GMIC y_fusion (benign, malignant) of {what} on the authors' sample exam 0 "
            f"({', '.join(views)}), this product's preprocessing, against the per-view "
            f"predictions in the {GMIC_REPOSITORY} README; max absolute difference "
            f"{PUBLISHED_TOLERANCE}")


def published_report_json(report: PublishedReport) -> dict[str, Any]:
    return {
        "pass": report.passed,
        "tolerance": PUBLISHED_TOLERANCE,
        "matched_source": report.matched_source,
        "evaluated": report.evaluated,
        "upgraded": report.upgraded,
        "messages": report.messages,
        "comparisons": [dataclasses.asdict(c) for c in report.comparisons],
    }
