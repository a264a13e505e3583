"""Weight files: checksums, the models manifest, strict loading, import and status.

Every weight file the product uses lives in ``Settings.models_dir`` and has an entry in
``models_dir/manifest.json`` (name → file, sha256, git blob id, status, imported_at).

Status (:class:`~triage.vocabulary.WeightsStatus`):

* ``verified_published`` — the file's git blob id equals the one the registry records for
  the authors' published file *and* ``triage validate published`` reproduced the authors'
  sample predictions with it (:func:`mark_verified`);
* ``imported_unverified`` — any other imported file (blob id differs, or not validated);
* ``synthetic_demo`` — seeded weights the product made itself (:func:`ensure_demo_weights`)
  so a demo can score without real weights; never calibrated, never clinical;
* ``random`` — no weights at all.

Only ``verified_published`` loads by default; anything else needs
``TRIAGE_ALLOW_UNCALIBRATED=1`` (or the CLI flag that sets it) and is then reported as
uncalibrated. Loading always checks the sha256 first, then reads the file with
``torch.load(weights_only=True)`` and loads it with strict keys and shapes. float16 files
are upcast into the float32 model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from triage.config import Settings
from triage.errors import ModelError, WeightsError
from triage.models.registry import HEATMAPS_FROM, TESTING_ONLY, ModelSpec, get_spec, list_specs
from triage.vocabulary import WeightsStatus

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
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


# ---------------------------------------------------------------------------
# reading and strict loading
# ---------------------------------------------------------------------------
def read_state_dict(path: Path, state_dict_key: str | None = None) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` on CPU; unwraps ``{state_dict_key: ...}``."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"weights file {path} does not exist") from exc
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
    """Checksum first, then read (weights_only) and load strictly into ``module``."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    digests = file_digests(path)
    if expected_sha256 is not None and digests.sha256 != expected_sha256:
        raise WeightsError(
            f"weights file {path} has sha256 {digests.sha256}, expected {expected_sha256}; "
            "the file changed or is not the one imported — re-import it with "
            "`triage models import`"
        )
    load_state(module, read_state_dict(path, state_dict_key), str(path))
    return digests


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
# status
# ---------------------------------------------------------------------------
def status_of(spec: ModelSpec, entry: ManifestEntry | None) -> WeightsStatus:
    """The effective status of a manifest entry (``random`` when there is none).

    ``verified_published`` is honoured only while the entry's blob id still equals the
    published one in the registry.
    """
    if entry is None:
        return WeightsStatus.RANDOM
    if entry.status is WeightsStatus.VERIFIED_PUBLISHED:
        if spec.weights.git_blob_id is not None and entry.git_blob_id == spec.weights.git_blob_id:
            return WeightsStatus.VERIFIED_PUBLISHED
        return WeightsStatus.IMPORTED_UNVERIFIED
    return entry.status


def weights_status(name: str, settings: Settings) -> WeightsStatus:
    """The status of the weights the product would load for ``name``."""
    return status_of(get_spec(name), read_manifest(settings).get(name))


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
    ``triage validate published`` succeeds.
    """
    spec = get_spec(name)
    if not source.is_file():
        raise WeightsError(f"weights file {source} does not exist")
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
    name: str
    file: str
    expected_sha256: str
    actual_sha256: str | None
    ok: bool
    reason: str = ""


def verify_weights(settings: Settings) -> list[VerifyResult]:
    """Re-check the sha256 of every file in the manifest."""
    results = []
    for name, entry in sorted(read_manifest(settings).items()):
        path = settings.models_dir / entry.file
        if not path.is_file():
            results.append(VerifyResult(name, entry.file, entry.sha256, None, False,
                                        "file is missing"))
            continue
        actual = file_digests(path).sha256
        ok = actual == entry.sha256
        results.append(VerifyResult(name, entry.file, entry.sha256, actual, ok,
                                    "" if ok else "sha256 differs from the imported file"))
    return results


def mark_verified(names: list[str], settings: Settings) -> list[str]:
    """Upgrade entries to ``verified_published`` after a successful published validation.

    Only entries whose file still has the recorded sha256 and whose git blob id equals
    the registry's published blob id are upgraded; returns the names upgraded.
    """
    upgraded: list[str] = []

    def change(entries: dict[str, ManifestEntry]) -> None:
        for name in names:
            entry = entries.get(name)
            spec = get_spec(name)
            if entry is None or spec.weights.git_blob_id is None:
                continue
            if entry.git_blob_id != spec.weights.git_blob_id:
                continue
            if file_digests(settings.models_dir / entry.file).sha256 != entry.sha256:
                continue
            entries[name] = dataclasses.replace(
                entry, status=WeightsStatus.VERIFIED_PUBLISHED, verified_at=_now())
            upgraded.append(name)

    update_manifest(settings, change)
    return upgraded


# ---------------------------------------------------------------------------
# synthetic demo weights
# ---------------------------------------------------------------------------
def demo_seed(name: str) -> int:
    """Deterministic seed of a model's demo weights."""
    return int.from_bytes(hashlib.sha256(f"triage-demo:{name}".encode()).digest()[:4], "big")


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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(demo_seed(name))
            module = _instantiate(spec, {})
        state = {k: (v.half() if v.is_floating_point() else v)
                 for k, v in module.state_dict().items()}
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

    Weights that are not ``verified_published`` (imported, demo, or none at all) load only
    when ``allow_uncalibrated`` (default: ``Settings.allow_uncalibrated``) is true.
    """
    spec = get_spec(name)
    if spec.extra.get(TESTING_ONLY) and not settings.testing:
        raise WeightsError(
            f"model {name} is a reduced-resolution configuration for automated tests only; "
            "it loads only with TRIAGE_TESTING=1 and never in a clinical configuration"
        )
    entry = read_manifest(settings).get(name)
    status = status_of(spec, entry)
    allowed = settings.allow_uncalibrated if allow_uncalibrated is None else allow_uncalibrated
    if status is not WeightsStatus.VERIFIED_PUBLISHED and not allowed:
        what = {
            WeightsStatus.RANDOM: "has no weights (import them with "
                                  f"`triage models import FILE --as {name}`)",
            WeightsStatus.SYNTHETIC_DEMO: "has synthetic demo weights only",
            WeightsStatus.IMPORTED_UNVERIFIED: "has imported weights that are not verified "
                                               "(run `triage validate published`)",
        }[status]
        raise WeightsError(
            f"model {name} {what}; set {ALLOW_ENV} to run it anyway — its results are then "
            "marked UNCALIBRATED / INVESTIGATIONAL and the exam is NOT TRIAGED"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(demo_seed(name))  # "random" weights are at least reproducible
        module = _instantiate(spec, {})
    if entry is None:
        raise WeightsError(
            f"model {name} has no weights file in {settings.models_dir}: import the published "
            f"file with `triage models import FILE --as {name}` (or run `triage serve --demo` "
            "for seeded demo weights); random weights are never used to score an exam"
        )
    path: Path | None = settings.models_dir / entry.file
    assert path is not None
    sha256: str | None = load_weights(module, path, entry.sha256,
                                      spec.weights.state_dict_key).sha256
    module = module.float().to(device).eval()
    companions = tuple(_load_companion(spec, other, settings, device, allow_uncalibrated)
                       for other in companion_names(spec))
    return LoadedModel(module=module, spec=spec, weights_status=status, sha256=sha256,
                       path=path, companions=companions)
