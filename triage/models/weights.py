"""Weight files: checksums, the models manifest, strict loading, import and status.

Every weight file the product uses lives in ``Settings.models_dir`` and has an entry in
``models_dir/manifest.json`` (name → file, sha256, git blob id, claimed status,
imported_at). Successful ``triage validate published`` runs are recorded in
``models_dir/validations.json`` (:class:`ValidationRecord`).

Status (:class:`~triage.vocabulary.WeightsStatus`) is **derived from the weight file's bytes
each time it is read** (:func:`assess_status`), never taken from the manifest, which is
an ordinary writable file and only a claim:

* ``verified_published`` — all of: the git blob id (``sha1(b"blob <size>\\0" + bytes)``)
  of the bytes read is the one the registry records for the authors' published file of
  *that* model; the model has a published-weights validation path in this product
  (:func:`verification_refusal` is ``None``: today the five GMIC files); and
  ``validations.json`` holds a successful ``triage validate published`` for exactly that
  sha256, compared within :data:`PUBLISHED_VALIDATION_TOLERANCE` — a constant fixed here,
  not a setting or option; a record with another tolerance, a comparison outside it, or
  expected values other than the published ones is ignored (and logged). The manifest's
  claim plays no part: a published, validated file is verified even if the manifest says
  otherwise, and a manifest that claims ``verified_published`` for anything else is
  logged as a warning and the status is downgraded to ``imported_unverified``.
* ``synthetic_demo`` — honoured only when the manifest claims it *and* the file's tensors
  are exactly the seeded demo tensors of that model (:func:`demo_state`: the model built
  under :func:`demo_seed`, stored as float16). The demo weights are recomputed from the
  seed rather than trusted from a recorded checksum, because a recorded checksum would
  live in the same writable manifest; comparing tensors (not the file's bytes) keeps the
  check independent of how ``torch.save`` lays out the archive. An imported file the
  manifest calls ``synthetic_demo`` is logged and reported ``imported_unverified``; the
  demo file imported with ``triage models import`` stays ``imported_unverified``.
* ``imported_unverified`` — any other file that is present;
* ``random`` — no weights (no manifest entry, or its file is missing).

What this does not protect against: someone who can write ``models_dir`` can also write a
validation record. What they cannot do is make a file that is not the authors' published
file (git blob id) ``verified_published``, nor verify a model this product has no
validation path for. The blob id binds the bytes; the record binds those bytes to a
successful run of this product's validation at the fixed tolerance.

Only ``verified_published`` loads by default; anything else needs
``TRIAGE_ALLOW_UNCALIBRATED=1`` (or the CLI flag that sets it) and is then reported as
uncalibrated. Loading reads the file once into memory, checks its sha256 against the
manifest, derives the status from those bytes, then reads the same bytes with
``torch.load(weights_only=True)`` and loads them with strict keys and shapes. float16 files
are upcast into the float32 model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import torch
from torch import Tensor, nn

from triage.config import Settings
from triage.errors import ModelError, WeightsError
from triage.models.registry import (
    DMV_REPOSITORY,
    GMIC3D_REPOSITORY,
    GMIC_REPOSITORY,
    HEATMAPS_FROM,
    PUBLISHED_GMIC_SAMPLE_PREDICTIONS,
    TESTING_ONLY,
    ModelSpec,
    get_spec,
    list_specs,
)
from triage.vocabulary import WeightsStatus

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
VALIDATIONS_NAME = "validations.json"
#: Largest absolute difference allowed between this product's predictions and the authors'
#: published sample predictions for ``triage validate published`` to verify a file: the
#: README's 4 decimals (±5e-5) plus float noise. Fixed in code on purpose — no setting or
#: CLI option changes it, and a validation record with another tolerance is not honoured.
PUBLISHED_VALIDATION_TOLERANCE: Final[float] = 5e-4
ALLOW_ENV = "TRIAGE_ALLOW_UNCALIBRATED=1"
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------
# checksums
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FileDigests:
    """sha256 and git blob id (``sha1(b"blob <size>\\0" + bytes)``) of a file."""

    sha256: str
    git_blob_id: str
    size: int


def file_digests(path: Path) -> FileDigests:
    """Both digests of a file in one streaming pass."""
    try:
        size = path.stat().st_size
        sha256 = hashlib.sha256()
        blob = hashlib.sha1(f"blob {size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                sha256.update(chunk)
                blob.update(chunk)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
    return FileDigests(sha256=sha256.hexdigest(), git_blob_id=blob.hexdigest(), size=size)


def bytes_digests(data: bytes) -> FileDigests:
    """:func:`file_digests` of bytes already in memory."""
    blob = hashlib.sha1(f"blob {len(data)}\0".encode())
    blob.update(data)
    return FileDigests(sha256=hashlib.sha256(data).hexdigest(), git_blob_id=blob.hexdigest(),
                       size=len(data))


def read_weights_file(path: Path) -> tuple[bytes, FileDigests]:
    """The file's bytes and their digests, read once: what is hashed is what is loaded."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise WeightsError(f"weights file {path} does not exist") from exc
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
    return data, bytes_digests(data)


# ---------------------------------------------------------------------------
# reading and strict loading
# ---------------------------------------------------------------------------
def read_state_dict(path: Path, state_dict_key: str | None = None) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` on CPU; unwraps ``{state_dict_key: ...}``."""
    data, _ = read_weights_file(path)
    return state_from_bytes(data, path, state_dict_key)


def state_from_bytes(data: bytes, path: Path, state_dict_key: str | None = None
                     ) -> dict[str, Tensor]:
    """:func:`read_state_dict` of a file's bytes already read (``path`` names it in errors)."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused / corrupt archive: all say "unreadable"
        raise WeightsError(
            f"weights file {path} cannot be read as a PyTorch state_dict with "
            f"weights_only=True ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    if state_dict_key is not None:
        if not isinstance(loaded, Mapping) or state_dict_key not in loaded:
            raise WeightsError(
                f"weights file {path} has no {state_dict_key!r} entry; expected "
                f"{{{state_dict_key!r}: state_dict}}"
            )
        loaded = loaded[state_dict_key]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise WeightsError(f"weights file {path} does not hold a state_dict (name → tensor)")
    return dict(loaded)


def state_dict_problems(module: nn.Module, state: Mapping[str, Tensor],
                        limit: int = 10) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches against ``module`` (empty = OK)."""
    expected = module.state_dict()
    problems: list[str] = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]

    def listed(items: list[str]) -> str:
        more = f" … (+{len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    if missing:
        problems.append(f"{len(missing)} missing key(s): {listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listed(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {listed(wrong)}")
    return problems


def load_state(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Strict load; a clear WeightsError naming the differences when the layout is wrong."""
    problems = state_dict_problems(module, state)
    if problems:
        raise WeightsError(
            f"weights {source} do not match the model layout: " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True)


def load_weights(module: nn.Module, path: Path, expected_sha256: str | None = None,
                 state_dict_key: str | None = None) -> FileDigests:
    """Checksum first, then read (weights_only) and load strictly into ``module``.

    The file is read once; the digests returned are those of the bytes loaded.
    """
    data, digests = read_weights_file(path)
    _check_sha256(path, digests, expected_sha256)
    load_state(module, state_from_bytes(data, path, state_dict_key), str(path))
    return digests


def _check_sha256(path: Path, digests: FileDigests, expected_sha256: str | None) -> None:
    if expected_sha256 is not None and digests.sha256 != expected_sha256:
        raise WeightsError(
            f"weights file {path} has sha256 {digests.sha256}, expected {expected_sha256}; "
            "the file changed or is not the one imported — re-import it with "
            "`triage models import`"
        )


def _instantiate(spec: ModelSpec, overrides: Mapping[str, Any]) -> nn.Module:
    try:
        hyper = dataclasses.replace(spec.hyperparameters, **overrides)
    except TypeError as exc:
        raise ModelError(f"model {spec.name}: invalid hyper-parameter override ({exc})") from exc
    return spec.builder(hyper)


def build_model(name: str, weights: Path | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model in eval mode, optionally loading a weights file strictly.

    ``overrides`` replace hyper-parameters (e.g. ``percent_t=0.03``). The spec's sha256 is
    checked when the registry knows it. No status policy here: see :func:`load_member`.
    """
    spec = get_spec(name)
    module = _instantiate(spec, overrides)
    if weights is not None:
        load_weights(module, weights, spec.weights.sha256, spec.weights.state_dict_key)
    return module.float().eval()


# ---------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ManifestEntry:
    """One weight file known to the product."""

    name: str
    file: str  # relative to models_dir
    sha256: str
    git_blob_id: str
    status: WeightsStatus
    imported_at: str
    source: str = ""
    verified_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ManifestEntry:
        try:
            return cls(
                name=str(data["name"]), file=str(data["file"]), sha256=str(data["sha256"]),
                git_blob_id=str(data["git_blob_id"]), status=WeightsStatus(data["status"]),
                imported_at=str(data["imported_at"]), source=str(data.get("source", "")),
                verified_at=data.get("verified_at"),
            )
        except (KeyError, ValueError) as exc:
            raise WeightsError(f"models manifest entry {data!r} is invalid ({exc})") from exc


def manifest_path(settings: Settings) -> Path:
    return settings.models_dir / MANIFEST_NAME


def read_manifest(settings: Settings) -> dict[str, ManifestEntry]:
    """Entries by model name (empty when there is no manifest yet)."""
    path = manifest_path(settings)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(
            f"models manifest {path} is unreadable ({exc}); restore it or re-import the weights"
        ) from exc
    return {name: ManifestEntry.from_json(item) for name, item in data.get("models", {}).items()}


@contextlib.contextmanager
def _manifest_lock(settings: Settings) -> Iterator[None]:
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with (settings.models_dir / ".manifest.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_manifest(settings: Settings, entries: Mapping[str, ManifestEntry]) -> None:
    path = manifest_path(settings)
    payload = {"models": {name: entries[name].to_json() for name in sorted(entries)}}
    _atomic_write(path, lambda handle: handle.write(
        json.dumps(payload, indent=2).encode("utf-8")))


def update_manifest(settings: Settings,
                    change: Callable[[dict[str, ManifestEntry]], None]) -> dict[str, ManifestEntry]:
    """Read, change in place and write back the manifest under a file lock."""
    with _manifest_lock(settings):
        entries = read_manifest(settings)
        change(entries)
        _write_manifest(settings, entries)
        return entries


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# which models this product can verify
# ---------------------------------------------------------------------------
_ADMIN_OPTIONS = (
    "What you can do: `triage models list` shows whether the imported file is the authors' "
    "published file (its git blob id); `triage validate reference --fixtures DIR` checks "
    "this product's numerics for the architecture; the member can run as "
    f"imported_unverified with {ALLOW_ENV}, and its results then stay UNCALIBRATED / "
    "INVESTIGATIONAL and NOT TRIAGED. Validate it on your own data outside the product "
    "before relying on it."
)


def published_sample_predictions(spec: ModelSpec) -> Mapping[str, tuple[float, float]] | None:
    """The authors' published (benign, malignant) sample predictions per view that
    ``triage validate published`` reproduces for ``spec``; ``None`` when this product has
    no published-weights validation path for it (see :func:`verification_refusal`)."""
    if spec.weights.git_blob_id is not None and (
            spec.weights.published_repository == GMIC_REPOSITORY):
        return PUBLISHED_GMIC_SAMPLE_PREDICTIONS
    return None


def verification_refusal(spec: ModelSpec) -> str | None:
    """Why ``spec`` can never become ``verified_published`` here (``None``: it can).

    Only GMIC has a published-weights validation path: the authors' README reports
    per-view predictions for sample exam 0, whose four images ship with the fixtures.
    DMV-CNN and 3D-GMIC have published files (their git blob ids are in the registry) but
    no sample predictions this product can reproduce, so verifying them would be pretending.
    """
    if published_sample_predictions(spec) is not None:
        return None
    repository = spec.weights.published_repository
    if spec.weights.git_blob_id is None:
        return (f"{spec.name} cannot become verified_published: this product knows no "
                "published file in its own layout to authenticate (none exists, or only "
                "another framework's files, converted on import) and no published "
                "prediction to reproduce; weights a site imports stay imported_unverified.")
    heatmaps_for = [other.name for other in list_specs()
                    if other.extra.get(HEATMAPS_FROM) == spec.name]
    if repository == DMV_REPOSITORY and heatmaps_for:
        why = ("the authors publish no sample predictions of the patch classifier on its "
               "own; its effect is only visible through the image-and-heatmaps model's "
               "sample-exam predictions, which cannot be reproduced here (see "
               f"{', '.join(heatmaps_for)}).")
    elif repository == DMV_REPOSITORY:
        why = ("the authors' published predictions for this model are breast-level results "
               "on their breast_cancer_classifier sample exam 0, whose images are not the "
               "GMIC sample images and are not available here, so this product cannot "
               "reproduce them with this file.")
    elif repository == GMIC3D_REPOSITORY:
        why = ("no published sample predictions of the 3D-GMIC files, and no sample DBT exam "
               "from the authors, are available here, so there is nothing published to "
               "reproduce with this file.")
    else:
        why = "this product has no published-weights validation path for it."
    return (f"{spec.name} cannot be verified by this installation (`triage validate "
            f"published` supports only the GMIC models): {why} {_ADMIN_OPTIONS}")


# ---------------------------------------------------------------------------
# validation records
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidationComparison:
    """One compared prediction: ``source`` (a model name, or ``ensemble`` for the mean of
    the five), the view, the authors' published (benign, malignant) and this product's."""

    source: str
    view: str
    expected: tuple[float, float]
    actual: tuple[float, float]

    @property
    def max_abs_error(self) -> float:
        return max(abs(a - e) for a, e in zip(self.actual, self.expected, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "view": self.view, "expected": list(self.expected),
                "actual": list(self.actual), "max_abs_error": self.max_abs_error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValidationComparison:
        expected, actual = data["expected"], data["actual"]
        return cls(source=str(data["source"]), view=str(data["view"]),
                   expected=(float(expected[0]), float(expected[1])),
                   actual=(float(actual[0]), float(actual[1])))


@dataclass(frozen=True)
class PublishedValidation:
    """What a passing ``triage validate published`` compared: a description, the source
    whose predictions matched, and that source's comparisons (one per view)."""

    compared: str
    matched_source: str
    comparisons: tuple[ValidationComparison, ...]


@dataclass(frozen=True)
class ValidationRecord:
    """A successful ``triage validate published`` for one model and exactly one file.

    ``tolerance`` is :data:`PUBLISHED_VALIDATION_TOLERANCE` when it was written; a record
    with any other value is not honoured (see :func:`validation_problems`).
    """

    model: str
    sha256: str
    git_blob_id: str
    tolerance: float
    validated_at: str
    compared: str
    matched_source: str
    comparisons: tuple[ValidationComparison, ...]
    product_version: str = ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["comparisons"] = [c.to_json() for c in self.comparisons]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValidationRecord:
        try:
            return cls(
                model=str(data["model"]), sha256=str(data["sha256"]),
                git_blob_id=str(data["git_blob_id"]), tolerance=float(data["tolerance"]),
                validated_at=str(data["validated_at"]), compared=str(data["compared"]),
                matched_source=str(data["matched_source"]),
                comparisons=tuple(ValidationComparison.from_json(c)
                                  for c in data["comparisons"]),
                product_version=str(data.get("product_version", "")),
            )
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise WeightsError(f"validation record {data!r} is invalid ({exc})") from exc


def validation_problems(record: ValidationRecord, spec: ModelSpec) -> list[str]:
    """Why ``record`` cannot verify the weights of ``spec`` (empty: it can)."""
    refusal = verification_refusal(spec)
    if refusal is not None:
        return [refusal]
    problems = []
    if record.model != spec.name:
        problems.append(f"the record is for model {record.model}, not {spec.name}")
    if record.git_blob_id != spec.weights.git_blob_id:
        problems.append(f"the record's git blob id {record.git_blob_id} is not the published "
                        f"{spec.weights.git_blob_id}")
    if record.tolerance != PUBLISHED_VALIDATION_TOLERANCE:
        problems.append(f"the recorded tolerance {record.tolerance!r} is not the fixed "
                        f"tolerance {PUBLISHED_VALIDATION_TOLERANCE!r}")
    published = published_sample_predictions(spec) or {}
    compared = [c for c in record.comparisons if c.source == record.matched_source]
    if {c.view for c in compared} != set(published):
        problems.append(f"the record does not compare every view ({', '.join(published)}) "
                        f"for its matched source {record.matched_source!r}")
    for c in compared:
        if c.view in published and tuple(c.expected) != tuple(published[c.view]):
            problems.append(f"{c.view}: recorded expected {c.expected} are not the published "
                            f"{published[c.view]}")
        if not c.max_abs_error <= PUBLISHED_VALIDATION_TOLERANCE:
            problems.append(f"{c.view}: difference {c.max_abs_error:.2e} exceeds the fixed "
                            f"tolerance {PUBLISHED_VALIDATION_TOLERANCE}")
    return problems


def validations_path(settings: Settings) -> Path:
    return settings.models_dir / VALIDATIONS_NAME


def read_validations(settings: Settings) -> list[ValidationRecord]:
    """Every recorded published validation, oldest first (empty when there are none)."""
    path = validations_path(settings)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data["validations"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise WeightsError(
            f"validation records {path} are unreadable ({exc}); restore the file, or delete "
            "it and run `triage validate published` again (until then no weights are "
            "verified_published)"
        ) from exc
    try:
        return [ValidationRecord.from_json(item) for item in items]
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}; restore the file, or delete it and run `triage "
                           "validate published` again") from exc


def _append_validations(settings: Settings, records: Sequence[ValidationRecord]) -> None:
    """Append records (caller holds the manifest lock)."""
    payload = {"validations": [r.to_json()
                               for r in (*read_validations(settings), *records)]}
    _atomic_write(validations_path(settings), lambda handle: handle.write(
        json.dumps(payload, indent=2).encode("utf-8")))


def find_validation(records: Sequence[ValidationRecord], spec: ModelSpec, sha256: str
                    ) -> tuple[ValidationRecord | None, list[str]]:
    """The latest honoured record of ``spec`` for exactly ``sha256``, and why any other
    record for that model and file was not honoured."""
    ignored: list[str] = []
    for record in reversed(records):
        if record.model != spec.name or record.sha256 != sha256:
            continue
        problems = validation_problems(record, spec)
        if not problems:
            return record, ignored
        ignored.append(f"record of {record.validated_at}: " + "; ".join(problems))
    return None, ignored


# ---------------------------------------------------------------------------
# status, derived from the bytes
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StatusAssessment:
    """The status of a weight file and why; ``downgraded`` says why the manifest's claim
    was not honoured (``None`` when it was, or when it claimed nothing special)."""

    status: WeightsStatus
    reason: str
    claimed: WeightsStatus | None = None
    digests: FileDigests | None = None
    validation: ValidationRecord | None = None
    downgraded: str | None = None


def assess_status(spec: ModelSpec, claimed: WeightsStatus | None, digests: FileDigests | None,
                  validation: ValidationRecord | None,
                  is_demo: Callable[[], bool]) -> StatusAssessment:
    """The status of a file from its digests (see the module docstring for the rules).

    ``claimed`` is the manifest's status (``None``: no entry); ``digests`` those of the
    bytes read (``None``: the file is missing); ``validation`` an honoured record for
    exactly ``digests.sha256`` (:func:`find_validation`); ``is_demo`` says whether the
    file's tensors are the model's seeded demo weights (called only for a demo claim).
    """
    if claimed is None:
        return StatusAssessment(WeightsStatus.RANDOM, "no weights imported", claimed)
    if digests is None:
        return StatusAssessment(WeightsStatus.RANDOM, "the recorded weights file is missing; "
                                "re-import it with `triage models import`", claimed)
    published = spec.weights.git_blob_id
    refusal = verification_refusal(spec)
    if published is None:
        why = "no published weights exist for this model"
    elif digests.git_blob_id != published:
        why = (f"its git blob id {digests.git_blob_id} is not that of the published file "
               f"{spec.weights.published_repository} {spec.weights.published_path} "
               f"({published})")
    elif refusal is not None:
        why = refusal
    elif validation is None or validation.sha256 != digests.sha256:
        why = ("it is the published file, but no successful `triage validate published` is "
               f"recorded for sha256 {digests.sha256}")
    else:
        return StatusAssessment(
            WeightsStatus.VERIFIED_PUBLISHED,
            f"the published file {spec.weights.published_repository} "
            f"{spec.weights.published_path} (git blob id {published}), validated "
            f"{validation.validated_at} within {validation.tolerance} "
            f"({validation.matched_source})", claimed, digests, validation)
    if claimed is WeightsStatus.VERIFIED_PUBLISHED:
        return StatusAssessment(
            WeightsStatus.IMPORTED_UNVERIFIED, why, claimed, digests, None,
            downgraded=(f"the models manifest claims verified_published for {spec.name}, "
                        f"which does not hold ({why}); reported as imported_unverified"))
    if claimed is WeightsStatus.SYNTHETIC_DEMO:
        if is_demo():
            return StatusAssessment(WeightsStatus.SYNTHETIC_DEMO, "seeded demo weights made "
                                    "by this product (not a trained model)", claimed, digests)
        return StatusAssessment(
            WeightsStatus.IMPORTED_UNVERIFIED, why, claimed, digests, None,
            downgraded=(f"the models manifest claims synthetic_demo for {spec.name}, but the "
                        "file's tensors are not this model's seeded demo weights; reported "
                        "as imported_unverified"))
    return StatusAssessment(WeightsStatus.IMPORTED_UNVERIFIED, why, claimed, digests)


def _assess(spec: ModelSpec, entry: ManifestEntry | None, digests: FileDigests | None,
            settings: Settings, is_demo: Callable[[], bool]) -> StatusAssessment:
    """:func:`assess_status` with the recorded validations; logs what is not honoured."""
    record: ValidationRecord | None = None
    if digests is not None and verification_refusal(spec) is None:
        record, ignored = find_validation(read_validations(settings), spec, digests.sha256)
        for problem in ignored:
            logger.warning(f"validation record of {spec.name} not honoured: {problem}",
                           extra={"model": spec.name, "sha256": digests.sha256,
                                  "reason": problem})
    assessment = assess_status(spec, entry.status if entry else None, digests, record, is_demo)
    if assessment.downgraded:
        logger.warning(assessment.downgraded,
                       extra={"model": spec.name,
                              "claimed": assessment.claimed.value if assessment.claimed else None,
                              "status": assessment.status.value,
                              "sha256": digests.sha256 if digests else None,
                              "git_blob_id": digests.git_blob_id if digests else None})
    return assessment


def assess_weights(name: str, settings: Settings) -> StatusAssessment:
    """The status of the weights the product would load for ``name``, from the file's bytes."""
    spec = get_spec(name)
    entry = read_manifest(settings).get(name)
    if entry is None:
        return _assess(spec, None, None, settings, lambda: False)
    path = settings.models_dir / entry.file
    if not path.is_file():
        return _assess(spec, entry, None, settings, lambda: False)
    data, digests = read_weights_file(path)

    def is_demo() -> bool:
        try:
            state = state_from_bytes(data, path, spec.weights.state_dict_key)
        except WeightsError:
            return False
        return _matches_demo(demo_state(spec), state)

    return _assess(spec, entry, digests, settings, is_demo)


def weights_status(name: str, settings: Settings) -> WeightsStatus:
    """The status of the weights the product would load for ``name``."""
    return assess_weights(name, settings).status


# ---------------------------------------------------------------------------
# import, verify, mark verified
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportResult:
    entry: ManifestEntry
    published_blob_id: str | None
    replaced: ManifestEntry | None

    @property
    def matches_published(self) -> bool:
        return self.published_blob_id is not None and (
            self.entry.git_blob_id == self.published_blob_id
        )


def import_weights(source: Path, name: str, settings: Settings) -> ImportResult:
    """Copy a weights file into ``models_dir`` for model ``name`` and record it.

    Refuses (WeightsError) a file that cannot be read with ``weights_only=True`` or whose
    keys/shapes differ from the model. The entry is ``imported_unverified`` until
    ``triage validate published`` succeeds. A Keras HDF5 file (the all-conv authors'
    format) is converted first (:mod:`triage.models.keras_convert`).
    """
    spec = get_spec(name)
    if not source.is_file():
        raise WeightsError(f"weights file {source} does not exist")
    from triage.models import keras_convert  # imports this module: imported when needed

    if keras_convert.is_hdf5(source):
        return keras_convert.import_keras_weights(source, name, settings)
    digests = file_digests(source)
    for other in list_specs():
        if other.name != name and other.weights.git_blob_id == digests.git_blob_id:
            raise WeightsError(
                f"{source} is the published file {other.weights.published_repository} "
                f"{other.weights.published_path}, which belongs to model {other.name} (its "
                f"hyper-parameters differ): import it with --as {other.name}"
            )
    if spec.weights.sha256 is not None and digests.sha256 != spec.weights.sha256:
        raise WeightsError(
            f"{source} has sha256 {digests.sha256}; model {name} expects {spec.weights.sha256}"
        )
    load_state(_instantiate(spec, {}), read_state_dict(source, spec.weights.state_dict_key),
               str(source))

    target = settings.models_dir / spec.weights.file_name

    def copy(handle: Any) -> None:
        with source.open("rb") as src:
            shutil.copyfileobj(src, handle, _CHUNK)

    with _manifest_lock(settings):
        _atomic_write(target, copy)
        copied = file_digests(target)
        if copied.sha256 != digests.sha256:
            raise WeightsError(f"copy of {source} to {target} differs from the source; retry")
        entries = read_manifest(settings)
        replaced = entries.get(name)
        entry = ManifestEntry(
            name=name, file=spec.weights.file_name, sha256=digests.sha256,
            git_blob_id=digests.git_blob_id, status=WeightsStatus.IMPORTED_UNVERIFIED,
            imported_at=_now(), source=str(source.resolve()),
        )
        entries[name] = entry
        if replaced is not None and replaced.file != entry.file:
            with contextlib.suppress(OSError):
                (settings.models_dir / replaced.file).unlink()
        _write_manifest(settings, entries)
    logger.info("imported weights", extra={"model": name, "sha256": digests.sha256,
                                           "git_blob_id": digests.git_blob_id})
    return ImportResult(entry=entry, published_blob_id=spec.weights.git_blob_id,
                        replaced=replaced)


@dataclass(frozen=True)
class VerifyResult:
    """One manifest entry re-checked: its file's sha256 and the status its bytes give."""

    name: str
    file: str
    expected_sha256: str
    actual_sha256: str | None
    ok: bool
    reason: str = ""
    status: WeightsStatus = WeightsStatus.RANDOM
    status_reason: str = ""
    refusal: str | None = None  # why this model can never be verified here


def verify_weights(settings: Settings, names: Sequence[str] | None = None
                   ) -> list[VerifyResult]:
    """Re-check the sha256 of every file in the manifest (or of ``names``) and derive each
    one's status from its bytes (:func:`assess_weights`)."""
    manifest = read_manifest(settings)
    wanted = sorted(manifest) if names is None else [get_spec(n).name for n in names]
    results = []
    for name in wanted:
        spec = get_spec(name)
        refusal = verification_refusal(spec)
        entry = manifest.get(name)
        if entry is None:
            results.append(VerifyResult(name, "", "", None, False, "no weights imported",
                                        WeightsStatus.RANDOM, "no weights imported", refusal))
            continue
        assessment = assess_weights(name, settings)
        if assessment.digests is None:
            results.append(VerifyResult(name, entry.file, entry.sha256, None, False,
                                        "file is missing", assessment.status,
                                        assessment.reason, refusal))
            continue
        actual = assessment.digests.sha256
        ok = actual == entry.sha256
        results.append(VerifyResult(name, entry.file, entry.sha256, actual, ok,
                                    "" if ok else "sha256 differs from the imported file",
                                    assessment.status, assessment.reason, refusal))
    return results


def mark_verified(validated: Mapping[str, FileDigests], settings: Settings,
                  validation: PublishedValidation) -> list[str]:
    """Record a passing ``triage validate published`` for the files it evaluated.

    ``validated`` maps each evaluated model to the digests of the bytes it was evaluated
    with. A :class:`ValidationRecord` (sha256, git blob id, the fixed tolerance, date, what
    was compared) is written only for models whose evaluated file is the registry's
    published file and that have a validation path; the comparisons must be within
    :data:`PUBLISHED_VALIDATION_TOLERANCE`. The manifest's claimed status is updated too,
    for people reading it; the status itself is always derived from the bytes. Returns the
    names recorded.
    """
    from triage import __version__

    now = _now()
    records: list[ValidationRecord] = []
    for name, digests in validated.items():
        spec = get_spec(name)
        if spec.weights.git_blob_id is None or digests.git_blob_id != spec.weights.git_blob_id:
            continue
        record = ValidationRecord(
            model=name, sha256=digests.sha256, git_blob_id=digests.git_blob_id,
            tolerance=PUBLISHED_VALIDATION_TOLERANCE, validated_at=now,
            compared=validation.compared, matched_source=validation.matched_source,
            comparisons=validation.comparisons, product_version=__version__)
        problems = "; ".join(validation_problems(record, spec))
        if problems:
            logger.warning(f"published validation of {name} not recorded: {problems}",
                           extra={"model": name, "sha256": digests.sha256, "reason": problems})
            continue
        records.append(record)
    if not records:
        return []
    recorded = {r.model: r.sha256 for r in records}
    with _manifest_lock(settings):
        _append_validations(settings, records)
        entries = read_manifest(settings)
        for name, sha256 in recorded.items():
            entry = entries.get(name)
            if entry is not None and entry.sha256 == sha256:
                entries[name] = dataclasses.replace(
                    entry, status=WeightsStatus.VERIFIED_PUBLISHED, verified_at=now)
        _write_manifest(settings, entries)
    for record in records:
        logger.info("published validation recorded",
                    extra={"model": record.model, "sha256": record.sha256,
                           "git_blob_id": record.git_blob_id, "tolerance": record.tolerance,
                           "matched_source": record.matched_source})
    return [r.model for r in records]


# ---------------------------------------------------------------------------
# synthetic demo weights
# ---------------------------------------------------------------------------
def demo_seed(name: str) -> int:
    """Deterministic seed of a model's demo weights."""
    return int.from_bytes(hashlib.sha256(f"triage-demo:{name}".encode()).digest()[:4], "big")


def _seeded_module(spec: ModelSpec) -> nn.Module:
    """The model built under its demo seed (the demo weights, before float16 storage)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(demo_seed(spec.name))
        return _instantiate(spec, {})


def _as_stored(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}


def demo_state(spec: ModelSpec) -> dict[str, Tensor]:
    """The tensors of ``spec``'s demo weights file, recomputed from :func:`demo_seed`."""
    return _as_stored(_seeded_module(spec).state_dict())


def _matches_demo(demo: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` holds exactly the demo tensors (keys, dtypes, shapes, values)."""
    if demo.keys() != state.keys():
        return False
    return all(d.dtype == state[k].dtype and d.shape == state[k].shape
               and torch.equal(d, state[k]) for k, d in demo.items())


def ensure_demo_weights(settings: Settings, names: list[str] | None = None) -> list[ManifestEntry]:
    """Create seeded demo weights (``synthetic_demo``) for models that have no weights.

    ``names`` defaults to the configured ensemble. Models with imported weights are left
    alone. The weights are random (seeded, reproducible) and stored as float16: they let
    the product run end to end; their scores mean nothing and are never presented as
    calibrated.
    """
    wanted = names if names is not None else [m.name for m in settings.ensemble]
    wanted = list(dict.fromkeys(
        n for name in wanted for n in (name, *companion_names(get_spec(name)))))
    created: list[ManifestEntry] = []
    existing = read_manifest(settings)
    for name in wanted:
        spec = get_spec(name)
        entry = existing.get(name)
        if entry is not None and (entry.status is not WeightsStatus.SYNTHETIC_DEMO
                                  or (settings.models_dir / entry.file).is_file()):
            continue  # imported weights (even a missing file: `models verify` reports it)
        state = demo_state(spec)
        payload: Any = state
        if spec.weights.state_dict_key is not None:  # the published files' wrapping
            payload = {spec.weights.state_dict_key: state}
        file_name = f"{Path(spec.weights.file_name).stem}.synthetic-demo.pt"
        target = settings.models_dir / file_name
        def save(handle: Any, payload: Any = payload) -> None:
            torch.save(payload, handle)

        _atomic_write(target, save)
        digests = file_digests(target)
        new = ManifestEntry(name=name, file=file_name, sha256=digests.sha256,
                            git_blob_id=digests.git_blob_id,
                            status=WeightsStatus.SYNTHETIC_DEMO, imported_at=_now(),
                            source="synthetic demo (seeded random weights, not a trained model)")

        def change(entries: dict[str, ManifestEntry], new: ManifestEntry = new) -> None:
            current = entries.get(new.name)
            if current is None or current.status is WeightsStatus.SYNTHETIC_DEMO:
                entries[new.name] = new

        update_manifest(settings, change)
        created.append(new)
        logger.warning("created synthetic demo weights (not a trained model)",
                       extra={"model": name, "sha256": digests.sha256})
    return created


# ---------------------------------------------------------------------------
# loading an ensemble member
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with the facts the DB and SR record about it.

    ``companions`` are the models the member needs that are not ensemble members
    themselves (the DMV-CNN image-and-heatmaps model's patch classifier), loaded with it
    on the same device under the same rules; see :func:`companion_names`.
    """

    module: nn.Module
    spec: ModelSpec
    weights_status: WeightsStatus
    sha256: str | None
    path: Path | None
    companions: tuple[LoadedModel, ...] = ()

    def companion(self, name: str) -> LoadedModel:
        for loaded in self.companions:
            if loaded.spec.name == name:
                return loaded
        raise ModelError(f"model {self.spec.name} was loaded without its companion {name}")


def companion_names(spec: ModelSpec) -> tuple[str, ...]:
    """Models loaded together with ``spec`` (``extra[HEATMAPS_FROM]``)."""
    name = spec.extra.get(HEATMAPS_FROM)
    return (str(name),) if name else ()


def _load_companion(member: ModelSpec, name: str, settings: Settings, device: torch.device,
                    allow_uncalibrated: bool | None) -> LoadedModel:
    try:
        return load_member(name, settings, device, allow_uncalibrated)
    except (WeightsError, ModelError) as exc:
        raise type(exc)(f"model {member.name} needs {name} for its heatmaps: {exc}") from exc


def load_member(name: str, settings: Settings, device: torch.device,
                allow_uncalibrated: bool | None = None) -> LoadedModel:
    """Load the weights the manifest records for ``name`` onto ``device``, in eval mode.

    The file is read once; its sha256 must be the one imported, and its status is derived
    from those bytes (:func:`assess_status`), whatever the manifest claims. Weights that
    are not ``verified_published`` (imported, demo, or none at all) load only when
    ``allow_uncalibrated`` (default: ``Settings.allow_uncalibrated``) is true.
    """
    spec = get_spec(name)
    if spec.extra.get(TESTING_ONLY) and not settings.testing:
        raise WeightsError(
            f"model {name} is a reduced-resolution configuration for automated tests only; "
            "it loads only with TRIAGE_TESTING=1 and never in a clinical configuration"
        )
    entry = read_manifest(settings).get(name)
    allowed = settings.allow_uncalibrated if allow_uncalibrated is None else allow_uncalibrated
    consequence = (f"set {ALLOW_ENV} to run it anyway — its results are then marked "
                   "UNCALIBRATED / INVESTIGATIONAL and the exam is NOT TRIAGED")
    if entry is None:
        if not allowed:
            raise WeightsError(f"model {name} has no weights (import them with `triage models "
                               f"import FILE --as {name}`); {consequence}")
        raise WeightsError(
            f"model {name} has no weights file in {settings.models_dir}: import the published "
            f"file with `triage models import FILE --as {name}` (or run `triage serve --demo` "
            "for seeded demo weights); random weights are never used to score an exam"
        )
    module = _seeded_module(spec)  # "random" weights are at least reproducible
    path = settings.models_dir / entry.file
    data, digests = read_weights_file(path)
    _check_sha256(path, digests, entry.sha256)
    state = state_from_bytes(data, path, spec.weights.state_dict_key)
    del data
    assessment = _assess(spec, entry, digests, settings,
                         lambda: _matches_demo(_as_stored(module.state_dict()), state))
    status = assessment.status
    if status is not WeightsStatus.VERIFIED_PUBLISHED and not allowed:
        what = {
            WeightsStatus.SYNTHETIC_DEMO: "has synthetic demo weights only",
            WeightsStatus.IMPORTED_UNVERIFIED: "has imported weights that are not verified: "
                                               f"{assessment.reason}",
        }[status]
        raise WeightsError(f"model {name} {what}; {consequence}")
    load_state(module, state, str(path))
    module = module.float().to(device).eval()
    companions = tuple(_load_companion(spec, other, settings, device, allow_uncalibrated)
                       for other in companion_names(spec))
    return LoadedModel(module=module, spec=spec, weights_status=status, sha256=digests.sha256,
                       path=path, companions=companions)
