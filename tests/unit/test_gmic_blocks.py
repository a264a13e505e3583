"""The shared ResNet blocks reproduce the published key layouts of the other models too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from triage.models.blocks import ResNetV1, ResNetV2, group_norm


def _layout(fixtures_dir: Path, file_name: str, prefix: str) -> dict[str, tuple[int, ...]]:
    items = json.loads((fixtures_dir / file_name).read_text())
    return {i["key"][len(prefix):]: tuple(i["shape"]) for i in items
            if i["key"].startswith(prefix)}


def _ours(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("file_name,prefix,norm", [
    ("keys_gmic.json", "ds_net.", None),
    ("keys_gmic3d.json", "ds_net.", 8),  # 3D-GMIC: GroupNorm(8), no running statistics
    ("keys_dmv_cnn_view_split.json", "four_view_resnet.cc.", None),
])
def test_resnet22_matches_each_published_global_network(fixtures_dir: Path, file_name: str,
                                                        prefix: str, norm: int | None) -> None:
    net = ResNetV2() if norm is None else ResNetV2(norm=group_norm(norm))
    assert _ours(net) == _layout(fixtures_dir, file_name, prefix)


def test_resnet18_matches_the_published_local_network(fixtures_dir: Path) -> None:
    assert _ours(ResNetV1("resnet18")) == _layout(fixtures_dir, "keys_gmic.json", "dn_resnet.")


def test_output_shape_agrees_with_a_forward_pass() -> None:
    net = ResNetV2().eval()
    for hw in ((130, 97), (257, 64)):
        with torch.inference_mode():
            out = net(torch.zeros(1, 1, *hw))
        assert tuple(out.shape[2:]) == net.output_shape(hw)


@pytest.mark.parametrize("depth,features", [("resnet34", 512), ("resnet50", 2048)])
def test_deeper_local_networks_return_pooled_features(depth: str, features: int) -> None:
    net = ResNetV1(depth).eval()
    with torch.inference_mode():
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, features)
