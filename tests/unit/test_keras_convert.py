"""Keras 2 HDF5 weights of the all-conv models: a file written here in the Keras layout
(names, nesting, HWIO kernels) converts strictly and computes what numpy computes from
the Keras arrays; `triage models import FILE.h5` converts and records it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from triage.cli.models_cmd import app
from triage.config import EnsembleMember, load_settings
from triage.errors import WeightsError
from triage.models import build_model, load_member
from triage.models.keras_convert import convert_keras_file
from triage.models.weights import read_manifest
from triage.vocabulary import WeightsStatus

Params = dict[str, np.ndarray]
Layer = tuple[str, Params]


class _Keras:
    """Keras-layout weights, written independently of the converter: the Keras 2.0
    application names of the patch classifier and automatic names in creation order for
    the layers the authors added on top."""

    def __init__(self, seed: int, first_auto: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.counters = {"conv2d": first_auto, "batch_normalization": first_auto}

    def conv(self, k: int, cin: int, cout: int) -> Params:
        std = np.sqrt(2.0 / (k * k * cin))
        return {"kernel": self.rng.normal(0, std, (k, k, cin, cout)).astype(np.float32),
                "bias": self.rng.normal(0, 0.1, cout).astype(np.float32)}

    def bn(self, c: int) -> Params:
        r = self.rng
        return {"gamma": r.uniform(0.5, 1.5, c).astype(np.float32),
                "beta": r.normal(0, 0.1, c).astype(np.float32),
                "moving_mean": r.normal(0, 0.1, c).astype(np.float32),
                "moving_variance": r.uniform(20.0, 40.0, c).astype(np.float32)}

    def auto(self, kind: str, params: Params) -> Layer:
        number = self.counters[kind]
        self.counters[kind] += 1
        return f"{kind}_{number}", params

    def resnet50(self) -> list[Layer]:
        layers: list[Layer] = [("conv1", self.conv(7, 3, 64)), ("bn_conv1", self.bn(64))]
        cin = 64
        stages = [((64, 64, 256), 3), ((128, 128, 512), 4), ((256, 256, 1024), 6),
                  ((512, 512, 2048), 3)]
        for stage, ((f1, f2, f3), units) in enumerate(stages, start=2):
            for letter in "abcdef"[:units]:
                base = f"{stage}{letter}"
                for branch, k, a, b in (("2a", 1, cin, f1), ("2b", 3, f1, f2), ("2c", 1, f2, f3)):
                    layers += [(f"res{base}_branch{branch}", self.conv(k, a, b)),
                               (f"bn{base}_branch{branch}", self.bn(b))]
                if letter == "a":
                    layers += [(f"res{base}_branch1", self.conv(1, cin, f3)),
                               (f"bn{base}_branch1", self.bn(f3))]
                cin = f3
        return layers

    def vgg16(self) -> list[Layer]:
        layers: list[Layer] = []
        cin = 3
        for block, (depth, units) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3),
                                                (512, 3)), start=1):
            for k in range(1, units + 1):
                layers.append((f"block{block}_conv{k}", self.conv(3, cin, depth)))
                cin = depth
        return layers

    def resnet_top(self, cin: int, depths: tuple[int, int, int], units: int) -> list[Layer]:
        """bottleneck_org units: 1x1, BN, 3x3, BN, 1x1, BN, then the shortcut conv, BN."""
        f1, f2, f3 = depths
        layers: list[Layer] = []
        for unit in range(units):
            for k, a, b in ((1, cin if unit == 0 else f3, f1), (3, f1, f2), (1, f2, f3)):
                layers += [self.auto("conv2d", self.conv(k, a, b)),
                           self.auto("batch_normalization", self.bn(b))]
            if unit == 0:
                layers += [self.auto("conv2d", self.conv(1, cin, f3)),
                           self.auto("batch_normalization", self.bn(f3))]
        return layers

    def vgg_top(self, cin: int, depth: int) -> list[Layer]:
        return [self.auto("conv2d", self.conv(3, cin, depth)),
                self.auto("batch_normalization", self.bn(depth))]

    def dense(self, cin: int, cout: int) -> Layer:
        return "dense_1", {"kernel": self.rng.normal(0, 0.05, (cin, cout)).astype(np.float32),
                           "bias": np.array([0.1, -0.1], dtype=np.float32)[:cout]}


def write_keras_h5(path: Path, patch: list[Layer], top: list[Layer], *,
                   config: dict | None = None, shuffle_top: bool = True) -> None:
    """Keras 2 ``Model.save`` layout: model_weights/<layer>/<layer>/<param>:0, the patch
    classifier nested as one layer ``model_1`` (model_weights/model_1/conv1/kernel:0)."""
    order = list(range(len(top)))
    if shuffle_top:  # the converter must not rely on the file order of the top layers
        np.random.default_rng(0).shuffle(order)
    outer: list[tuple[str, list[tuple[str, np.ndarray]]]] = [("input_1", []), (
        "model_1", [(f"{name}/{p}:0", v) for name, params in patch for p, v in params.items()])]
    outer += [(top[i][0], [(f"{top[i][0]}/{p}:0", v) for p, v in top[i][1].items()])
              for i in order]
    outer.append(("activation_99", []))
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.0.8"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config or {"class_name": "Model", "config": {
            "layers": [{"class_name": "BatchNormalization",
                        "config": {"name": "bn_conv1", "epsilon": 0.001}},
                       {"class_name": "ZeroPadding2D",
                        "config": {"name": "zero_padding2d_1", "padding": [[3, 3], [3, 3]]}}]}
        }).encode()
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([n.encode() for n, _ in outer])
        for name, items in outer:
            group = weights.create_group(name)
            group.attrs["weight_names"] = np.array([w.encode() for w, _ in items], dtype="S")
            for weight, value in items:
                group.create_dataset(weight, data=value)


def _testing_small_file(path: Path, seed: int = 0) -> tuple[list[Layer], list[Layer]]:
    """ResNet-50 + VGG blocks 256x1, 128x1 (the allconv-testing-small layout)."""
    k = _Keras(seed)
    patch = k.resnet50()
    top = k.vgg_top(2048, 256) + k.vgg_top(256, 128) + [k.dense(128, 2)]
    write_keras_h5(path, patch, top)
    return patch, top


def _np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int,
             pad: int) -> np.ndarray:
    """Channels-last convolution (HWIO kernel), by hand."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    rows = (x.shape[0] - kh) // stride + 1
    cols = (x.shape[1] - kw) // stride + 1
    out = np.zeros((rows, cols, kernel.shape[3]), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            window = x[i:i + stride * rows:stride, j:j + stride * cols:stride, :]
            out += window.astype(np.float64) @ kernel[i, j].astype(np.float64)
    return out + bias


def _np_bn(y: np.ndarray, p: Params) -> np.ndarray:
    return p["gamma"] * (y - p["moving_mean"]) / np.sqrt(p["moving_variance"] + 1e-3) + p["beta"]


def test_resnet50_file_converts_strictly_and_matches_numpy(tmp_path: Path) -> None:
    path = tmp_path / "ddsm_resnet50_vgg.h5"
    patch, top = _testing_small_file(path)
    model = build_model("allconv-testing-small")
    model.load_state_dict(convert_keras_file(path, model), strict=True)
    keras = dict(patch + top)

    grey = np.random.default_rng(1).normal(0, 30, (24, 20)).astype(np.float32)
    x = torch.from_numpy(grey)[None, None].expand(1, 3, -1, -1)
    with torch.no_grad():
        ours = model.patch.bn1(model.patch.conv1(x))[0].permute(1, 2, 0).numpy()
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    conv1 = _np_conv(rgb, keras["conv1"]["kernel"], keras["conv1"]["bias"], stride=2, pad=3)
    expected = _np_bn(conv1, keras["bn_conv1"])
    assert ours.shape == expected.shape == (12, 10, 64)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)

    # the output layer on the pooled features: Dense kernel (in, out), softmax
    image = torch.randn(1, 1, 128, 128) * 20
    with torch.no_grad():
        features = model.top(model.patch(image.expand(1, 3, -1, -1)))[0].numpy()
        probabilities = model(image).probabilities[0].numpy()
    logits = features.mean(axis=(1, 2)) @ keras["dense_1"]["kernel"] + keras["dense_1"]["bias"]
    expected_p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(probabilities, expected_p, rtol=1e-4, atol=1e-5)


def test_vgg16_file_with_resnet_top_maps_each_layer_in_creation_order(tmp_path: Path) -> None:
    k = _Keras(2, first_auto=8)  # numbers cross 9 -> 10: the order must be numeric
    patch = k.vgg16()
    top = k.resnet_top(512, (512, 512, 1024), 2) + k.resnet_top(1024, (512, 512, 1024), 2)
    top.append(k.dense(1024, 2))
    path = tmp_path / "ddsm_vgg16_s10_[512-512-1024]x2_hybrid.h5"
    write_keras_h5(path, patch, top)
    model = build_model("allconv-hybrid-vgg16-resnet")
    state = convert_keras_file(path, model)
    model.load_state_dict(state, strict=True)
    keras = dict(patch + top)
    # creation order per unit: conv1, bn1, conv2, bn2, conv3, bn3 (+ shortcut conv, bn)
    unit = model.top[1][0]
    first = 8 + 7  # the second top block follows the first's 4 + 3 layers per kind
    names = [f"conv2d_{first + i}" for i in range(4)]
    for ours, name in zip((unit.conv1, unit.conv2, unit.conv3, unit.downsample[0]), names,
                          strict=True):
        expected = torch.from_numpy(keras[name]["kernel"]).permute(3, 2, 0, 1)
        assert torch.equal(ours.weight, expected), name
    bn2 = keras[f"batch_normalization_{first + 1}"]
    assert torch.equal(unit.bn2.running_var, torch.from_numpy(bn2["moving_variance"]))
    assert torch.equal(unit.downsample[1].weight,
                       torch.from_numpy(keras[f"batch_normalization_{first + 3}"]["gamma"]))
    # a VGG-16 convolution (3x3, padding 1, bias, ReLU) against numpy
    grey = np.random.default_rng(3).normal(0, 30, (10, 8)).astype(np.float32)
    with torch.no_grad():
        ours_out = model.patch.blocks[0].layers[0](
            torch.from_numpy(grey)[None, None].expand(1, 3, -1, -1))[0].permute(1, 2, 0)
    conv = keras["block1_conv1"]
    expected_out = np.maximum(_np_conv(np.repeat(grey[:, :, None], 3, axis=2), conv["kernel"],
                                       conv["bias"], stride=1, pad=1), 0)
    np.testing.assert_allclose(ours_out.numpy(), expected_out, rtol=1e-4, atol=1e-3)


def test_files_that_do_not_fit_are_refused_with_the_reason(tmp_path: Path) -> None:
    k = _Keras(4)
    patch = k.resnet50()
    top = k.vgg_top(2048, 256) + k.vgg_top(256, 128) + [k.dense(128, 2)]
    model = build_model("allconv-testing-small")

    lacking = tmp_path / "lacking.h5"
    write_keras_h5(lacking, [layer for layer in patch if layer[0] != "res3b_branch2b"], top)
    with pytest.raises(WeightsError, match=r"lacks 1 layer.*res3b_branch2b"):
        convert_keras_file(lacking, model)

    extra = tmp_path / "extra.h5"
    write_keras_h5(extra, patch, top + k.vgg_top(128, 64))
    with pytest.raises(WeightsError, match="3 automatically named conv layer"):
        convert_keras_file(extra, model)

    wrong_shape = tmp_path / "wrong.h5"
    write_keras_h5(wrong_shape, patch, k.vgg_top(2048, 512) + k.vgg_top(512, 512)
                   + [k.dense(512, 2)])
    with pytest.raises(WeightsError, match="shape mismatch"):
        convert_keras_file(wrong_shape, model)

    newer = tmp_path / "keras22.h5"
    write_keras_h5(newer, patch, top, config={"config": {"layers": [
        {"class_name": "ZeroPadding2D", "config": {"name": "pool1_pad", "padding": [[1, 1],
                                                                                 [1, 1]]}},
        {"class_name": "BatchNormalization", "config": {"name": "x", "epsilon": 1.001e-5}}]}})
    with pytest.raises(WeightsError, match=r"pool1_pad.*epsilon"):
        convert_keras_file(newer, model)

    not_keras = tmp_path / "data.h5"
    with h5py.File(not_keras, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(WeightsError, match="not a Keras weights file"):
        convert_keras_file(not_keras, model)
    with pytest.raises(WeightsError, match="only the all-convolutional models"):
        convert_keras_file(lacking, build_model("gmic-testing-small"))


def test_models_import_converts_an_h5_and_records_it_unverified(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(data))
    path = tmp_path / "model.h5"
    _testing_small_file(path, seed=5)
    result = CliRunner().invoke(app, ["import", str(path), "--as", "allconv-testing-small"])
    assert result.exit_code == 0, result.output
    assert "imported_unverified" in result.output
    settings = load_settings(data_dir=data, testing=True, allow_uncalibrated=True,
                             ensemble=[EnsembleMember(name="allconv-testing-small", weight=1.0)])
    entry = read_manifest(settings)["allconv-testing-small"]
    assert entry.status is WeightsStatus.IMPORTED_UNVERIFIED
    assert entry.file == "allconv-testing-small.pt" and "Keras HDF5" in entry.source
    loaded = load_member("allconv-testing-small", settings, torch.device("cpu"))
    assert loaded.weights_status is WeightsStatus.IMPORTED_UNVERIFIED
    expected = convert_keras_file(path, build_model("allconv-testing-small"))
    assert torch.equal(loaded.module.state_dict()["fc.weight"], expected["fc.weight"])
    refused = CliRunner().invoke(app, ["import", str(path), "--as", "allconv-vgg16"])
    assert refused.exit_code != 0 and "lacks" in refused.output
