"""A weights status comes from the file's bytes and a recorded validation, not the manifest.

Small files written here stand in for published ones: the registry's published git blob id
is monkeypatched to the blob id of such a file (the only stand-in; the status logic reads
the real files, manifest and validation records).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path

import pytest
import torch

from triage.config import Settings, load_settings
from triage.errors import ModelError, WeightsError
from triage.models import ensure_demo_weights, get_spec, load_member, registry, weights_status
from triage.models.registry import PUBLISHED_GMIC_SAMPLE_PREDICTIONS
from triage.models.weights import (
    PUBLISHED_VALIDATION_TOLERANCE,
    VALIDATIONS_NAME,
    ManifestEntry,
    PublishedValidation,
    ValidationComparison,
    assess_weights,
    file_digests,
    mark_verified,
    read_manifest,
    read_validations,
    update_manifest,
    verification_refusal,
    verify_weights,
)
from triage.validation import PUBLISHED_TOLERANCE, validate_published
from triage.vocabulary import WeightsStatus

GMIC = "gmic-resnet18-2"
DMV_AND_3D = ("dmv-cnn-image-only", "dmv-cnn-image-and-heatmaps", "dmv-patch-densenet121",
              *(f"gmic3d-resnet18-{i}" for i in range(1, 6)))
WEIGHTS_LOGGER = "triage.models.weights"


def _write(settings: Settings, name: str, payload: bytes,
           status: WeightsStatus = WeightsStatus.IMPORTED_UNVERIFIED,
           git_blob_id: str | None = None) -> Path:
    """A file in models_dir and a manifest entry for it, as anyone with write access could."""
    path = settings.models_dir / f"{name}.pt"
    path.write_bytes(payload)
    digests = file_digests(path)

    def change(entries: dict[str, ManifestEntry]) -> None:
        entries[name] = ManifestEntry(
            name=name, file=path.name, sha256=digests.sha256,
            git_blob_id=git_blob_id or digests.git_blob_id, status=status,
            imported_at="2024-01-01T00:00:00+00:00")

    update_manifest(settings, change)
    return path


def _publish(monkeypatch: pytest.MonkeyPatch, name: str, path: Path) -> None:
    """Make the registry record ``path``'s blob id as the published one of ``name``."""
    spec = get_spec(name)
    monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(
        spec, weights=dataclasses.replace(spec.weights,
                                          git_blob_id=file_digests(path).git_blob_id)))


def _passing(source: str = "gmic-resnet18-1", error: float = 0.0) -> PublishedValidation:
    return PublishedValidation(
        compared="test: the published sample predictions",
        matched_source=source,
        comparisons=tuple(
            ValidationComparison(source, view, expected,
                                 (expected[0] + error, expected[1] - error))
            for view, expected in PUBLISHED_GMIC_SAMPLE_PREDICTIONS.items()))


def _edit_validations(settings: Settings, **changes: object) -> None:
    path = settings.models_dir / VALIDATIONS_NAME
    data = json.loads(path.read_text())
    for record in data["validations"]:
        record.update(changes)
    path.write_text(json.dumps(data))


# -- the manifest is a claim ------------------------------------------------------------------
def test_edited_manifest_cannot_make_a_non_published_file_verified(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    published_blob = get_spec(GMIC).weights.git_blob_id
    assert published_blob is not None
    # the claim, the recorded blob id and even a validation record are all forged
    path = _write(settings, GMIC, b"not the authors' file",
                  status=WeightsStatus.VERIFIED_PUBLISHED, git_blob_id=published_blob)
    forged = _passing()
    with settings.models_dir.joinpath(VALIDATIONS_NAME).open("w") as handle:
        json.dump({"validations": [{
            "model": GMIC, "sha256": file_digests(path).sha256, "git_blob_id": published_blob,
            "tolerance": PUBLISHED_VALIDATION_TOLERANCE, "validated_at": "2024-01-01",
            "compared": forged.compared, "matched_source": forged.matched_source,
            "comparisons": [c.to_json() for c in forged.comparisons]}]}, handle)

    with caplog.at_level(logging.WARNING, logger=WEIGHTS_LOGGER):
        assessment = assess_weights(GMIC, settings)
    assert assessment.status is WeightsStatus.IMPORTED_UNVERIFIED
    assert file_digests(path).git_blob_id in assessment.reason and published_blob in assessment.reason
    assert "claims verified_published" in caplog.text and GMIC in caplog.text
    assert weights_status(GMIC, settings) is WeightsStatus.IMPORTED_UNVERIFIED


def test_load_member_derives_the_status_from_the_bytes_it_loads(
        settings: Settings, fixtures_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from triage.models import import_weights

    import_weights(fixtures_dir / "gmic_resnet18_weights_fp16.pt", GMIC, settings)

    def forge(entries: dict[str, ManifestEntry]) -> None:
        entries[GMIC] = dataclasses.replace(
            entries[GMIC], status=WeightsStatus.VERIFIED_PUBLISHED,
            git_blob_id=str(get_spec(GMIC).weights.git_blob_id))

    update_manifest(settings, forge)
    with pytest.raises(WeightsError, match=r"not verified.*not that of the published file"):
        load_member(GMIC, settings, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger=WEIGHTS_LOGGER):
        loaded = load_member(GMIC, settings, torch.device("cpu"), allow_uncalibrated=True)
    assert loaded.weights_status is WeightsStatus.IMPORTED_UNVERIFIED
    assert "claims verified_published" in caplog.text


# -- verified = published blob id + recorded validation of exactly that sha256 ---------------
def test_verified_needs_the_published_blob_id_and_a_validation_recorded_for_that_sha256(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(settings, GMIC, b"stand-in for the published file")
    _publish(monkeypatch, GMIC, path)
    digests = file_digests(path)

    # the published bytes alone: not verified, whatever the manifest says
    assert weights_status(GMIC, settings) is WeightsStatus.IMPORTED_UNVERIFIED
    assert "no successful `triage validate published`" in assess_weights(GMIC, settings).reason
    update_manifest(settings, lambda e: e.update({GMIC: dataclasses.replace(
        e[GMIC], status=WeightsStatus.VERIFIED_PUBLISHED)}))
    assert weights_status(GMIC, settings) is WeightsStatus.IMPORTED_UNVERIFIED

    # a validation of other bytes does not count
    other = dataclasses.replace(digests, sha256="0" * 64)
    assert mark_verified({GMIC: other}, settings, _passing()) == [GMIC]
    assert weights_status(GMIC, settings) is WeightsStatus.IMPORTED_UNVERIFIED

    # a validation of exactly these bytes does
    assert mark_verified({GMIC: digests}, settings, _passing()) == [GMIC]
    assessment = assess_weights(GMIC, settings)
    assert assessment.status is WeightsStatus.VERIFIED_PUBLISHED
    assert assessment.validation is not None and assessment.validation.sha256 == digests.sha256

    # the same record does not follow the name to other bytes
    path.write_bytes(b"stand-in for the published file, changed")
    update_manifest(settings, lambda e: e.update({GMIC: dataclasses.replace(
        e[GMIC], sha256=file_digests(path).sha256)}))
    assert weights_status(GMIC, settings) is WeightsStatus.IMPORTED_UNVERIFIED


def test_a_validation_of_a_file_that_is_not_the_published_one_records_nothing(
        settings: Settings) -> None:
    path = _write(settings, GMIC, b"some other file")
    assert mark_verified({GMIC: file_digests(path)}, settings, _passing()) == []
    assert read_validations(settings) == []
    assert weights_status(GMIC, settings) is WeightsStatus.IMPORTED_UNVERIFIED


# -- the tolerance is a code constant, recorded with the status -------------------------------
def test_recorded_tolerance_equals_the_code_constant(settings: Settings,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(settings, GMIC, b"stand-in for the published file")
    _publish(monkeypatch, GMIC, path)
    mark_verified({GMIC: file_digests(path)}, settings, _passing())
    (record,) = read_validations(settings)
    assert record.tolerance == PUBLISHED_VALIDATION_TOLERANCE == PUBLISHED_TOLERANCE
    assert record.sha256 == file_digests(path).sha256 and record.validated_at
    assert record.compared and record.matched_source == "gmic-resnet18-1"
    assert {c.view for c in record.comparisons} == set(PUBLISHED_GMIC_SAMPLE_PREDICTIONS)
    assert read_manifest(settings)[GMIC].verified_at == record.validated_at
    assert weights_status(GMIC, settings) is WeightsStatus.VERIFIED_PUBLISHED


def test_a_record_with_a_looser_tolerance_does_not_verify(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = _write(settings, GMIC, b"stand-in for the published file")
    _publish(monkeypatch, GMIC, path)
    mark_verified({GMIC: file_digests(path)}, settings, _passing())
    _edit_validations(settings, tolerance=0.1)
    with caplog.at_level(logging.WARNING, logger=WEIGHTS_LOGGER):
        assert weights_status(GMIC, settings) is WeightsStatus.IMPORTED_UNVERIFIED
    assert "not the fixed tolerance" in caplog.text


def test_comparisons_outside_the_fixed_tolerance_are_neither_recorded_nor_honoured(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(settings, GMIC, b"stand-in for the published file")
    _publish(monkeypatch, GMIC, path)
    loose = _passing(error=2 * PUBLISHED_VALIDATION_TOLERANCE)
    assert mark_verified({GMIC: file_digests(path)}, settings, loose) == []
    assert mark_verified({GMIC: file_digests(path)}, settings, _passing()) == [GMIC]
    _edit_validations(settings, comparisons=[c.to_json() for c in loose.comparisons])
    assert weights_status(GMIC, settings) is WeightsStatus.IMPORTED_UNVERIFIED


def test_validate_published_takes_no_tolerance() -> None:
    assert "tolerance" not in inspect.signature(validate_published).parameters


# -- DMV-CNN and 3D-GMIC: refused, with the reason --------------------------------------------
@pytest.mark.parametrize("name", DMV_AND_3D)
def test_dmv_cnn_and_3d_gmic_verification_is_refused_with_the_reason(
        name: str, settings: Settings, tmp_path: Path) -> None:
    refusal = verification_refusal(get_spec(name))
    assert refusal is not None
    assert name in refusal and "cannot be verified" in refusal
    assert "TRIAGE_ALLOW_UNCALIBRATED=1" in refusal and "What you can do" in refusal
    assert ("3D-GMIC" if name.startswith("gmic3d") else "sample exam 0") in refusal \
        or "patch classifier" in refusal
    with pytest.raises(ModelError) as raised:  # before any image or weight is read
        validate_published(tmp_path / "no-images", settings, models=[name])
    assert str(raised.value) == refusal


def test_gmic_models_have_a_validation_path() -> None:
    for i in range(1, 6):
        assert verification_refusal(get_spec(f"gmic-resnet18-{i}")) is None
    assert "knows no published file" in str(verification_refusal(get_spec("gmic-resnet50")))


def test_a_forged_record_cannot_verify_a_model_without_a_validation_path(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "dmv-cnn-image-only"
    path = _write(settings, name, b"stand-in for sample_image_model.p")
    _publish(monkeypatch, name, path)
    assert mark_verified({name: file_digests(path)}, settings, _passing()) == []
    update_manifest(settings, lambda e: e.update({name: dataclasses.replace(
        e[name], status=WeightsStatus.VERIFIED_PUBLISHED)}))
    assessment = assess_weights(name, settings)
    assert assessment.status is WeightsStatus.IMPORTED_UNVERIFIED
    assert assessment.reason == verification_refusal(get_spec(name))
    (result,) = verify_weights(settings, [name])
    assert result.ok and result.refusal == assessment.reason


# -- synthetic_demo is tied to the seeded tensors ---------------------------------------------
def test_synthetic_demo_cannot_be_claimed_for_an_arbitrary_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(data_dir=tmp_path / "data", allow_uncalibrated=True, testing=True)
    settings.prepare_directories()
    name = "gmic-testing-small"
    (made,) = ensure_demo_weights(settings, [name])
    assert weights_status(name, settings) is WeightsStatus.SYNTHETIC_DEMO

    # the same layout with one value changed, claimed as demo (checksums updated too)
    path = settings.models_dir / made.file
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] += 1
    torch.save(state, path)
    digests = file_digests(path)
    update_manifest(settings, lambda e: e.update({name: dataclasses.replace(
        e[name], sha256=digests.sha256, git_blob_id=digests.git_blob_id)}))
    with caplog.at_level(logging.WARNING, logger=WEIGHTS_LOGGER):
        assert weights_status(name, settings) is WeightsStatus.IMPORTED_UNVERIFIED
        loaded = load_member(name, settings, torch.device("cpu"))
    assert loaded.weights_status is WeightsStatus.IMPORTED_UNVERIFIED
    assert "claims synthetic_demo" in caplog.text

    # not even a state_dict
    _write(settings, name, b"arbitrary bytes", status=WeightsStatus.SYNTHETIC_DEMO)
    assert weights_status(name, settings) is WeightsStatus.IMPORTED_UNVERIFIED
