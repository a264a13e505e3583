"""The authors' Keras 2 HDF5 all-conv models -> this product's state_dict (strict).

Shen et al. published their whole-image and patch classifiers as Keras 2 (TensorFlow
backend) ``.h5`` files (``lishen/end2end-all-conv`` README). This module reads such a file
with h5py (no Keras, no TensorFlow) and maps its weights onto
:class:`~triage.models.allconv.AllConvClassifier` or
:class:`~triage.models.allconv.PatchClassifier`. No published file was available to check
this against; what is assumed is the documented Keras 2 HDF5 layout and the layer names of
the Keras 2.0/2.1 applications the authors used:

* weights group: ``model_weights`` in a whole-model file (``Model.save``), else the file
  root (``save_weights``). Its attribute ``layer_names`` lists the layers; each layer's
  group has the attribute ``weight_names``, paths ``<layer>/<param>:0`` relative to that
  group (``model_weights/conv2d_1/conv2d_1/kernel:0``). A nested model (the authors wrap the
  patch classifier as one layer of the whole-image model) lists its inner layers' weights
  under its own group (``model_weights/model_1/res2a_branch2a/kernel:0``); layers are taken
  by the second-to-last path component, wherever they are nested;
* parameters: ``Conv2D`` kernel (kh, kw, in, out) -> weight (out, in, kh, kw), bias;
  ``BatchNormalization`` gamma, beta, moving_mean, moving_variance -> weight, bias,
  running_mean, running_var (``num_batches_tracked`` = 0); ``Dense`` kernel (in, out) ->
  weight (out, in), bias;
* patch classifier layers by their Keras application names: ResNet-50 ``conv1``,
  ``bn_conv1``, ``res{2..5}{a..f}_branch2{a,b,c}``, ``bn...`` and ``res{s}a_branch1`` /
  ``bn{s}a_branch1``; VGG-16 ``block{1..5}_conv{k}``;
* the top blocks and the output layer carry automatic names (``conv2d_12``,
  ``batch_normalization_7``, ``dense_1``). They are matched per kind in creation order, by
  the number that ends the name (none = 0): Keras numbers the layers of a kind as they are
  created, and the authors' code creates per Resnet unit the 1x1, 3x3 and 1x1
  convolutions, each followed by its BN, then (first unit) the shortcut convolution and
  its BN; per VGG unit a convolution and its BN; last the output Dense.

Strict: every key of the model is filled exactly once, every weighted Keras layer is used,
shapes must match (:func:`~triage.models.weights.state_dict_problems`). When the file
carries its ``model_config``, layers this architecture does not reproduce are refused: a
BN epsilon other than 1e-3, max pooling with ``same`` padding, zero padding other than the
ResNet-50 stem's 3 pixels (e.g. the ``pool1_pad`` of Keras >= 2.2 applications).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from triage.config import Settings
from triage.errors import WeightsError
from triage.models.allconv import AllConvClassifier, PatchClassifier
from triage.models.allconv_blocks import RESNET50_STAGES, VGG16_BLOCKS
from triage.models.registry import get_spec
from triage.models.weights import (
    ImportResult,
    ManifestEntry,
    file_digests,
    import_weights,
    state_dict_problems,
    update_manifest,
)

#: The first bytes of an HDF5 file (without a user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")
KERAS_BN_EPSILON = 1e-3
_SUFFIX = re.compile(r"_(\d+)$")


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts with the HDF5 signature (Keras ``.h5`` files do)."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


@dataclass(frozen=True)
class KerasLayer:
    """One weighted Keras layer: its name and parameters (``kernel``, ``gamma``, ...)."""

    name: str
    params: Mapping[str, np.ndarray]

    @property
    def kind(self) -> str:
        kernel = self.params.get("kernel")
        if kernel is not None and kernel.ndim == 4:
            return "conv"
        if kernel is not None and kernel.ndim == 2:
            return "dense"
        if set(BN_PARAMS) <= set(self.params):
            return "bn"
        return "other"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_layers(path: Path) -> tuple[dict[str, KerasLayer], dict[str, Any] | None]:
    """Weighted layers by (inner) name, in file order, and the parsed ``model_config``."""
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path} cannot be read as an HDF5 file ({exc})") from exc
    with handle:
        root = handle.get("model_weights", handle)
        if "layer_names" not in root.attrs:
            raise WeightsError(f"{path} is HDF5 but not a Keras weights file: no "
                               "'layer_names' attribute (expected Keras 2 Model.save or "
                               "save_weights output)")
        found: dict[str, dict[str, np.ndarray]] = {}
        for outer in (_text(n) for n in root.attrs["layer_names"]):
            group = root[outer]
            for weight in (_text(w) for w in group.attrs.get("weight_names", [])):
                parts = weight.split("/")
                if len(parts) < 2:
                    raise WeightsError(f"{path}: weight {outer}/{weight} is not named "
                                       "<layer>/<param>:0")
                layer, param = parts[-2], parts[-1].split(":")[0]
                params = found.setdefault(layer, {})
                if param in params:
                    raise WeightsError(f"{path}: layer {layer} has two {param!r} weights")
                params[param] = np.asarray(group[weight], dtype=np.float32)
        raw = handle.attrs.get("model_config")
        config = json.loads(_text(raw)) if raw is not None else None
    return {name: KerasLayer(name, params) for name, params in found.items()}, config


def _layer_configs(node: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(class name, config) of every layer in a Keras ``model_config``, nested included."""
    if isinstance(node, Mapping):
        if "class_name" in node and isinstance(node.get("config"), Mapping):
            yield str(node["class_name"]), node["config"]
        for value in node.values():
            yield from _layer_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _layer_configs(value)


def _flat_ints(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list | tuple):
        return {i for v in value for i in _flat_ints(v)}
    return set()


def check_model_config(config: Mapping[str, Any] | None, source: str) -> None:
    """Refuse layers this architecture does not reproduce (module docstring)."""
    if config is None:
        return
    problems = []
    for cls, cfg in _layer_configs(config):
        name = cfg.get("name", "?")
        eps = cfg.get("epsilon")
        if cls == "BatchNormalization" and eps is not None and abs(float(eps) -
                                                                   KERAS_BN_EPSILON) > 1e-12:
            problems.append(f"{name}: BatchNormalization epsilon {eps} (this model uses "
                            f"{KERAS_BN_EPSILON})")
        if cls == "MaxPooling2D" and cfg.get("padding") == "same":
            problems.append(f"{name}: max pooling with 'same' padding")
        if cls == "ZeroPadding2D" and _flat_ints(cfg.get("padding")) != {3}:
            problems.append(f"{name}: zero padding {cfg.get('padding')} (only the ResNet-50 "
                            "stem's 3 pixels are reproduced)")
    if problems:
        raise WeightsError(f"{source} has layers this all-conv model does not reproduce: "
                           + "; ".join(problems))


def _resnet50_names() -> Iterator[tuple[str, str, str]]:
    yield "conv1", "patch.conv1", "conv"
    yield "bn_conv1", "patch.bn1", "bn"
    for index, (_, units) in enumerate(RESNET50_STAGES):
        for unit in range(units):
            base, ours = f"{index + 2}{'abcdef'[unit]}", f"patch.layer{index + 1}.{unit}"
            for branch, k in (("2a", 1), ("2b", 2), ("2c", 3)):
                yield f"res{base}_branch{branch}", f"{ours}.conv{k}", "conv"
                yield f"bn{base}_branch{branch}", f"{ours}.bn{k}", "bn"
            if unit == 0:
                yield f"res{base}_branch1", f"{ours}.downsample.0", "conv"
                yield f"bn{base}_branch1", f"{ours}.downsample.1", "bn"


def _vgg16_names() -> Iterator[tuple[str, str, str]]:
    for b, (_, units) in enumerate(VGG16_BLOCKS):
        for k in range(units):
            yield f"block{b + 1}_conv{k + 1}", f"patch.blocks.{b}.layers.{k}.conv", "conv"


def _top_order(model: AllConvClassifier | PatchClassifier) -> dict[str, list[str]]:
    """Our module prefixes of the automatically named layers, per kind, in Keras
    creation order."""
    order: dict[str, list[str]] = {"conv": [], "bn": [], "dense": ["fc"]}
    if isinstance(model, AllConvClassifier):
        for t, block in enumerate(model.config.top):
            for unit in range(block.units):
                if block.kind == "resnet":
                    ours = f"top.{t}.{unit}"
                    order["conv"] += [f"{ours}.conv1", f"{ours}.conv2", f"{ours}.conv3"]
                    order["bn"] += [f"{ours}.bn1", f"{ours}.bn2", f"{ours}.bn3"]
                    if unit == 0:
                        order["conv"].append(f"{ours}.downsample.0")
                        order["bn"].append(f"{ours}.downsample.1")
                else:
                    order["conv"].append(f"top.{t}.layers.{unit}.conv")
                    order["bn"].append(f"top.{t}.layers.{unit}.bn")
    return order


def _creation_key(name: str) -> tuple[int, str]:
    match = _SUFFIX.search(name)
    return (int(match.group(1)) if match else 0, name)


def _tensors(layer: KerasLayer, kind: str, source: str) -> dict[str, Tensor]:
    wanted = {"conv": ("kernel", "bias"), "dense": ("kernel", "bias"), "bn": BN_PARAMS}[kind]
    missing = [p for p in wanted if p not in layer.params]
    if missing or layer.kind != kind:
        raise WeightsError(f"{source}: Keras layer {layer.name} should be a {kind} layer with "
                           f"{', '.join(wanted)}; it has {', '.join(sorted(layer.params))}")
    p = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layer.params.items()}
    if kind == "conv":
        return {"weight": p["kernel"].permute(3, 2, 0, 1).contiguous(), "bias": p["bias"]}
    if kind == "dense":
        return {"weight": p["kernel"].t().contiguous(), "bias": p["bias"]}
    return {"weight": p["gamma"], "bias": p["beta"], "running_mean": p["moving_mean"],
            "running_var": p["moving_variance"],
            "num_batches_tracked": torch.tensor(0, dtype=torch.long)}


def keras_state_dict(layers: Mapping[str, KerasLayer],
                     model: AllConvClassifier | PatchClassifier, source: str
                     ) -> dict[str, Tensor]:
    """Map Keras layers onto ``model``'s keys; WeightsError on anything that does not fit."""
    patch_net = (model.config.patch_net if isinstance(model, AllConvClassifier)
                 else ("resnet50" if hasattr(model.patch, "layer1") else "vgg16"))
    named = list(_resnet50_names() if patch_net == "resnet50" else _vgg16_names())
    pairs: list[tuple[KerasLayer, str, str]] = []
    missing = [keras for keras, _, _ in named if keras not in layers]
    if missing:
        raise WeightsError(f"{source} lacks {len(missing)} layer(s) of the {patch_net} patch "
                           f"classifier: {', '.join(missing[:10])}")
    pairs += [(layers[keras], ours, kind) for keras, ours, kind in named]
    taken = {keras for keras, _, _ in named}
    rest = [layer for name, layer in layers.items() if name not in taken]
    for kind, ours_list in _top_order(model).items():
        theirs = sorted((lay for lay in rest if lay.kind == kind),
                        key=lambda lay: _creation_key(lay.name))
        if len(theirs) != len(ours_list):
            raise WeightsError(
                f"{source} has {len(theirs)} automatically named {kind} layer(s) "
                f"({', '.join(lay.name for lay in theirs[:8])}), the top of this model has "
                f"{len(ours_list)}: the file is not this configuration")
        pairs += list(zip(theirs, ours_list, [kind] * len(ours_list), strict=True))
    unused = [lay.name for lay in rest if lay.kind not in ("conv", "bn", "dense")]
    if unused:
        raise WeightsError(f"{source} has weighted layers this model does not have: "
                           f"{', '.join(unused[:10])}")
    state: dict[str, Tensor] = {}
    for layer, ours, kind in pairs:
        for key, value in _tensors(layer, kind, source).items():
            state[f"{ours}.{key}"] = value
    problems = state_dict_problems(model, state)
    if problems:
        raise WeightsError(f"{source} does not fit the model after conversion: "
                           + "; ".join(problems))
    return state


def convert_keras_file(path: Path, model: nn.Module) -> dict[str, Tensor]:
    """Read a Keras ``.h5`` and return the state_dict for ``model`` (strict, see above)."""
    if not isinstance(model, AllConvClassifier | PatchClassifier):
        raise WeightsError(f"{path} is a Keras HDF5 file; only the all-convolutional models "
                           f"(allconv-*) can be converted from Keras, not "
                           f"{type(model).__name__}")
    layers, config = read_keras_layers(path)
    check_model_config(config, str(path))
    return keras_state_dict(layers, model, str(path))


def import_keras_weights(source: Path, name: str, settings: Settings) -> ImportResult:
    """``triage models import FILE.h5 --as NAME``: convert, then import the converted
    state_dict as usual (strict keys, ``imported_unverified``); the manifest's ``source``
    names the HDF5 file and its digests."""
    spec = get_spec(name)
    state = convert_keras_file(source, spec.builder(spec.hyperparameters))
    digests = file_digests(source)
    payload: Any = state if spec.weights.state_dict_key is None else {
        spec.weights.state_dict_key: state}
    with tempfile.TemporaryDirectory(prefix="triage-keras-") as tmp:
        converted = Path(tmp) / f"{Path(spec.weights.file_name).stem}.pt"
        torch.save(payload, converted)
        result = import_weights(converted, name, settings)
    provenance = (f"Keras HDF5 {source.resolve()} (sha256 {digests.sha256}, git blob id "
                  f"{digests.git_blob_id}) converted by triage.models.keras_convert")
    entry = dataclasses.replace(result.entry, source=provenance)

    def change(entries: dict[str, ManifestEntry]) -> None:
        current = entries.get(name)
        if current is not None and current.sha256 == entry.sha256:
            entries[name] = dataclasses.replace(current, source=provenance)

    update_manifest(settings, change)
    return dataclasses.replace(result, entry=entry)
