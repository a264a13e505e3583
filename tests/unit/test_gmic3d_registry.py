"""The registry's 3D-GMIC entries against the fixtures' record of the published files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from triage.models import build_model, get_spec
from triage.models.gmic3d import GMIC3D
from triage.models.registry import PUBLISHED_GMIC3D_FILES
from triage.vocabulary import View

NAMES = [f"gmic3d-resnet18-{i}" for i in range(1, len(PUBLISHED_GMIC3D_FILES) + 1)]


@pytest.fixture(scope="module")
def published(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "published_weights.json").read_text())["gmic3d"]


def test_published_gmic3d_facts_match_the_fixture_record(published: dict) -> None:
    paths = set()
    for name in NAMES:
        spec = get_spec(name)
        path = spec.weights.published_path
        paths.add(path)
        assert spec.weights.published_repository == published["repository"]
        assert spec.weights.git_blob_id == published["files"][path]
        assert spec.hyperparameters.percent_t == published["percent_t_by_file"][path]
        assert spec.hyperparameters.k == published["K_by_file"][path]
    assert paths == set(published["files"])


def test_gmic3d_specs_describe_a_dbt_research_model(fixtures_dir: Path) -> None:
    hyper = json.loads((fixtures_dir / "gmic3d_summary.json").read_text())["hyperparameters"]
    full_size = json.loads((fixtures_dir / "gmic3d_summary.json").read_text())[
        "full_res_volume_shape"][-2:]
    for name in NAMES:
        spec = get_spec(name)
        assert spec.modality == "dbt"
        assert dict(spec.input_size) == {View.CC: tuple(full_size), View.MLO: tuple(full_size)}
        assert "CC BY-NC-SA 4.0" in spec.licence and "research" in spec.licence.lower()
        assert "research" in spec.intended_use.lower()
        assert spec.hyperparameters.zeta == hyper["zeta_slice_threshold_dist"]
        assert spec.hyperparameters.num_groups == hyper["num_groups"]
        assert spec.hyperparameters.crop_shape == tuple(hyper["crop_shape"])


def test_build_model_loads_the_fixture_weights_strictly(fixtures_dir: Path) -> None:
    model = build_model("gmic3d-resnet18-1", weights=fixtures_dir / "gmic3d_weights_fp16.pt")
    assert isinstance(model, GMIC3D) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
