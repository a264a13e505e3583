"""The model registry, weight files, their status and the demo weights."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from triage.config import Settings, load_settings
from triage.errors import ModelError, WeightsError
from triage.models import (
    build_model,
    ensure_demo_weights,
    get_spec,
    import_weights,
    list_specs,
    load_member,
    weights_status,
)
from triage.models.registry import (
    PUBLISHED_GMIC_SAMPLE_PREDICTIONS,
    WeightSpec,
)
from triage.models.weights import (
    PublishedValidation,
    ValidationComparison,
    file_digests,
    mark_verified,
    read_manifest,
    update_manifest,
)
from triage.vocabulary import View, WeightsStatus

PUBLISHED_NAMES = [f"gmic-resnet18-{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def published(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "published_weights.json").read_text())


@pytest.fixture(scope="module")
def fixture_weights(fixtures_dir: Path) -> Path:
    return fixtures_dir / "gmic_resnet18_weights_fp16.pt"


def test_published_gmic_facts_match_the_fixture_record(published: dict) -> None:
    gmic = published["gmic"]
    for name in PUBLISHED_NAMES:
        weights = get_spec(name).weights
        assert weights.published_repository == gmic["repository"]
        assert weights.published_path in gmic["files"]
        assert weights.git_blob_id == gmic["files"][weights.published_path]
        percent = get_spec(name).hyperparameters.percent_t
        assert percent == gmic["percent_t_by_file"][weights.published_path]
    paths = {get_spec(n).weights.published_path for n in PUBLISHED_NAMES}
    assert paths == set(gmic["files"])


def test_published_sample_predictions_match_the_fixture_record(published: dict) -> None:
    readme = published["published_sample_predictions"]["gmic_per_image_readme"]
    assert {k: tuple(v) for k, v in readme.items()} == dict(PUBLISHED_GMIC_SAMPLE_PREDICTIONS)


def test_every_spec_says_what_it_is_and_may_be_used_for() -> None:
    names = {spec.name for spec in list_specs()}
    assert set(PUBLISHED_NAMES) | {"gmic-resnet34", "gmic-resnet50"} <= names
    for spec in list_specs():
        assert spec.version and spec.architecture and spec.licence and spec.intended_use
        assert spec.modality and spec.preprocessing and spec.input_size
        assert "research" in spec.intended_use.lower()
    for name in [*PUBLISHED_NAMES, "gmic-resnet34", "gmic-resnet50"]:
        spec = get_spec(name)
        assert spec.modality == "ffdm" and spec.preprocessing == "gmic"
        assert set(spec.input_size) == {View.CC, View.MLO}
    for name in PUBLISHED_NAMES:
        assert "CC BY-NC-SA 4.0" in get_spec(name).licence
        assert "non-commercial" in get_spec(name).licence.lower()


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match="gmic-resnet18-1"):
        get_spec("gmic-resnet99")


@pytest.mark.parametrize("name,features", [("gmic-resnet34", 512), ("gmic-resnet50", 2048)])
def test_larger_local_networks_build_with_matching_heads(name: str, features: int) -> None:
    model = build_model(name)
    assert not model.training
    assert model.classifier_linear.in_features == features
    assert model.fusion_dnn.in_features == 256 + features


def test_build_model_loads_fixture_weights_strictly_in_eval_mode(fixture_weights: Path) -> None:
    model = build_model("gmic-resnet18-2", weights=fixture_weights, percent_t=0.5)
    assert not model.training
    assert model.config.percent_t == 0.5
    assert all(p.dtype == torch.float32 for p in model.parameters())
    stored = torch.load(fixture_weights, weights_only=True)
    assert torch.equal(model.state_dict()["fusion_dnn.bias"], stored["fusion_dnn.bias"].float())


def test_build_model_rejects_an_unknown_override() -> None:
    with pytest.raises(ModelError, match="override"):
        build_model("gmic-resnet18-1", not_a_parameter=1)


def test_git_blob_id_equals_git_hash_object(fixture_weights: Path, tmp_path: Path) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git not installed")
    sample = tmp_path / "sample.bin"
    sample.write_bytes(bytes(range(256)) * 1000)
    for path in (sample, fixture_weights):
        expected = subprocess.run([git, "hash-object", str(path)], capture_output=True,
                                  text=True, check=True).stdout.strip()
        assert file_digests(path).git_blob_id == expected


def test_import_records_checksums_and_stays_unverified(settings: Settings,
                                                      fixture_weights: Path,
                                                      published: dict) -> None:
    result = import_weights(fixture_weights, "gmic-resnet18-1", settings)
    entry = read_manifest(settings)["gmic-resnet18-1"]
    digests = file_digests(fixture_weights)
    assert entry == result.entry
    assert (entry.sha256, entry.git_blob_id) == (digests.sha256, digests.git_blob_id)
    assert (settings.models_dir / entry.file).read_bytes() == fixture_weights.read_bytes()
    assert not result.matches_published
    assert result.published_blob_id == published["gmic"]["files"]["models/sample_model_1.p"]
    assert weights_status("gmic-resnet18-1", settings) is WeightsStatus.IMPORTED_UNVERIFIED


def _passing_validation() -> PublishedValidation:
    """What a passing `triage validate published` hands to mark_verified."""
    return PublishedValidation(
        compared="test", matched_source="gmic-resnet18-1",
        comparisons=tuple(ValidationComparison("gmic-resnet18-1", view, expected, expected)
                          for view, expected in PUBLISHED_GMIC_SAMPLE_PREDICTIONS.items()))


def test_mark_verified_refuses_a_file_that_is_not_the_published_one(
        settings: Settings, fixture_weights: Path) -> None:
    import_weights(fixture_weights, "gmic-resnet18-1", settings)
    digests = file_digests(fixture_weights)
    assert mark_verified({"gmic-resnet18-1": digests}, settings, _passing_validation()) == []
    assert weights_status("gmic-resnet18-1", settings) is WeightsStatus.IMPORTED_UNVERIFIED


def test_verified_status_needs_the_published_blob_id(settings: Settings,
                                                     fixture_weights: Path) -> None:
    """A manifest edited to say 'verified' does not make an unpublished file verified."""
    import_weights(fixture_weights, "gmic-resnet18-1", settings)

    def forge(entries: dict) -> None:
        entry = entries["gmic-resnet18-1"]
        entries["gmic-resnet18-1"] = type(entry)(**{**entry.__dict__,
                                                    "status": WeightsStatus.VERIFIED_PUBLISHED})

    update_manifest(settings, forge)
    assert weights_status("gmic-resnet18-1", settings) is WeightsStatus.IMPORTED_UNVERIFIED


def test_import_refuses_a_file_with_wrong_keys(settings: Settings, fixture_weights: Path,
                                               tmp_path: Path) -> None:
    state = torch.load(fixture_weights, weights_only=True)
    state["unexpected.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match="unexpected"):
        import_weights(bad, "gmic-resnet18-1", settings)
    assert read_manifest(settings) == {}
    assert not (settings.models_dir / get_spec("gmic-resnet18-1").weights.file_name).exists()


def test_import_refuses_a_file_that_is_not_weights_only(settings: Settings,
                                                        tmp_path: Path) -> None:
    bad = tmp_path / "pickle.pt"
    torch.save({"model": WeightSpec(file_name="x")}, bad)  # arbitrary object: not weights_only
    with pytest.raises(WeightsError, match="weights_only"):
        import_weights(bad, "gmic-resnet18-1", settings)


def test_load_member_refuses_unverified_weights_unless_allowed(settings: Settings,
                                                               fixture_weights: Path) -> None:
    import_weights(fixture_weights, "gmic-resnet18-1", settings)
    with pytest.raises(WeightsError, match="TRIAGE_ALLOW_UNCALIBRATED=1"):
        load_member("gmic-resnet18-1", settings, torch.device("cpu"))
    loaded = load_member("gmic-resnet18-1", settings, torch.device("cpu"),
                         allow_uncalibrated=True)
    assert loaded.weights_status is WeightsStatus.IMPORTED_UNVERIFIED
    assert loaded.sha256 == file_digests(fixture_weights).sha256
    assert loaded.spec.name == "gmic-resnet18-1" and not loaded.module.training


def test_load_member_checks_the_checksum_before_loading(settings: Settings,
                                                        fixture_weights: Path) -> None:
    import_weights(fixture_weights, "gmic-resnet18-1", settings)
    stored = settings.models_dir / read_manifest(settings)["gmic-resnet18-1"].file
    with stored.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(WeightsError, match="sha256"):
        load_member("gmic-resnet18-1", settings, torch.device("cpu"), allow_uncalibrated=True)


def test_model_without_weights_is_random_and_needs_permission(settings: Settings) -> None:
    assert weights_status("gmic-resnet50", settings) is WeightsStatus.RANDOM
    with pytest.raises(WeightsError, match="no weights"):
        load_member("gmic-resnet50", settings, torch.device("cpu"))


def test_demo_weights_are_deterministic_and_marked_synthetic(tmp_path: Path) -> None:
    first = load_settings(data_dir=tmp_path / "a", allow_uncalibrated=True)
    second = load_settings(data_dir=tmp_path / "b")
    made = ensure_demo_weights(first, ["gmic-resnet18-3"])
    again = ensure_demo_weights(second, ["gmic-resnet18-3"])
    assert made[0].sha256 == again[0].sha256
    assert ensure_demo_weights(first, ["gmic-resnet18-3"]) == []  # already there
    assert weights_status("gmic-resnet18-3", first) is WeightsStatus.SYNTHETIC_DEMO
    loaded = load_member("gmic-resnet18-3", first, torch.device("cpu"))
    assert loaded.weights_status is WeightsStatus.SYNTHETIC_DEMO
    with pytest.raises(WeightsError, match="synthetic demo"):
        load_member("gmic-resnet18-3", second, torch.device("cpu"))


def test_demo_weights_never_replace_imported_ones(settings: Settings,
                                                  fixture_weights: Path) -> None:
    import_weights(fixture_weights, "gmic-resnet18-1", settings)
    created = ensure_demo_weights(settings, ["gmic-resnet18-1", "gmic-resnet18-2"])
    assert [e.name for e in created] == ["gmic-resnet18-2"]
    assert weights_status("gmic-resnet18-1", settings) is WeightsStatus.IMPORTED_UNVERIFIED


def test_mark_verified_upgrades_a_file_whose_blob_id_is_the_published_one(
        settings: Settings, fixture_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the fixture file is the published one by patching the registry's blob id."""
    from triage.models import registry

    spec = get_spec("gmic-resnet18-4")
    patched = dataclasses.replace(spec, weights=dataclasses.replace(
        spec.weights, git_blob_id=file_digests(fixture_weights).git_blob_id))
    monkeypatch.setitem(registry._REGISTRY, spec.name, patched)
    result = import_weights(fixture_weights, spec.name, settings)
    assert result.matches_published
    assert weights_status(spec.name, settings) is WeightsStatus.IMPORTED_UNVERIFIED
    digests = file_digests(fixture_weights)
    assert mark_verified({spec.name: digests}, settings, _passing_validation()) == [spec.name]
    assert weights_status(spec.name, settings) is WeightsStatus.VERIFIED_PUBLISHED
    assert read_manifest(settings)[spec.name].verified_at is not None
    loaded = load_member(spec.name, settings, torch.device("cpu"))  # no permission needed
    assert loaded.weights_status is WeightsStatus.VERIFIED_PUBLISHED


def test_import_refuses_a_published_file_under_another_models_name(
        settings: Settings, fixture_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sample_model_2.p imported as model 1 would run with model 1's pooling percentage."""
    from triage.models import registry

    spec = get_spec("gmic-resnet18-2")
    patched = dataclasses.replace(spec, weights=dataclasses.replace(
        spec.weights, git_blob_id=file_digests(fixture_weights).git_blob_id))
    monkeypatch.setitem(registry._REGISTRY, spec.name, patched)
    with pytest.raises(WeightsError, match="--as gmic-resnet18-2"):
        import_weights(fixture_weights, "gmic-resnet18-1", settings)
    assert read_manifest(settings) == {}


def test_testing_member_loads_only_with_triage_testing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from triage.config import load_settings
    from triage.errors import WeightsError
    from triage.models import ensure_demo_weights, load_member

    clinical = load_settings(data_dir=tmp_path, allow_uncalibrated=True)
    clinical.prepare_directories()
    with pytest.raises(WeightsError, match="TRIAGE_TESTING=1"):
        load_member("gmic-testing-small", clinical, torch.device("cpu"))
    testing = load_settings(data_dir=tmp_path, allow_uncalibrated=True, testing=True)
    ensure_demo_weights(testing, ["gmic-testing-small"])
    loaded = load_member("gmic-testing-small", testing, torch.device("cpu"))
    with torch.inference_mode():
        out = loaded.module(torch.zeros(2, 1, 1024, 640))
    assert tuple(out.saliency_map.shape) == (2, 2, 16, 10)
    assert tuple(out.patch_locations.shape) == (2, 4, 2)
