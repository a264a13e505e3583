"""The one place that strings decode -> preprocessing -> ensemble -> scoring together.

``score_exam`` turns the chosen images of an exam into a typed ``ExamResult`` (numpy only,
no torch leaves this module). ``process_study`` is the task body that the Celery task and
the embedded in-process worker both run: claim the exam, score it, store the run and the
status in one commit, then hand the results to the output stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom
import torch
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from triage.config import Settings
from triage.db import Database, Instance, ScoringRun, Study
from triage.db.runs import store_failed_run, store_result
from triage.db.states import set_status
from triage.errors import (
    DecodeError,
    ModelError,
    PreprocessingError,
    ScoringError,
    TransientError,
    TriageError,
)
from triage.imaging import PreparedView, decode_pixels, prepare_view, sample_windows
from triage.models import LoadedModel, load_member
from triage.results import (
    BreastScore,
    ExamResult,
    InputFrame,
    MemberInfo,
    RoiPatch,
    ViewScore,
)
from triage.scoring import ViewProbability, categorise, combine_members, exam_score
from triage.vocabulary import ExamStatus, ImageClass, Laterality, View, WeightsStatus

log = logging.getLogger(__name__)

#: deliveries of one exam's task that may kill a worker before it is marked failed
MAX_SCORING_ATTEMPTS = 3


@dataclass(frozen=True)
class ExamImage:
    """One chosen image of an exam, as the pipeline needs it."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    laterality: Laterality
    view: View
    image_class: ImageClass = ImageClass.FFDM


@dataclass(frozen=True)
class PreparedImage:
    image: ExamImage
    prepared: PreparedView
    lossy: bool


@dataclass
class Ensemble:
    """The configured members, loaded once per process (worker or CLI) and reused."""

    settings: Settings
    device: torch.device
    members: list[LoadedModel]
    weights: dict[str, float]
    modality: dict[str, str]
    model_set_version: str

    @property
    def verified(self) -> bool:
        return all(m.weights_status is WeightsStatus.VERIFIED_PUBLISHED for m in self.members)


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"TRIAGE_DEVICE={setting} but no CUDA device is available")
    return device


def model_set_version(members: Sequence[LoadedModel], weights: dict[str, float],
                      tta_samples: int, tta_seed: int) -> str:
    """A short stable id of what produced a score: members, versions, weight files, TTA."""
    payload = json.dumps(
        {
            "members": sorted(
                [m.spec.name, m.spec.version, m.sha256 or "", weights[m.spec.name]]
                for m in members
            ),
            "tta": [tta_samples, tta_seed if tta_samples else None],
        },
        sort_keys=True,
    )
    return "ms-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_ensemble(settings: Settings, device: torch.device | None = None) -> Ensemble:
    """Load every configured member; any problem is a clear error before an exam is touched."""
    device = device or resolve_device(settings.device)
    members = [load_member(m.name, settings, device) for m in settings.ensemble]
    for member in members:  # NHWC convolutions: faster on CPU and on recent GPUs
        member.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    weights = {m.name: m.weight for m in settings.ensemble}
    version = model_set_version(members, weights, settings.tta_samples, settings.tta_seed)
    log.info("ensemble loaded", extra={"model_set_version": version, "device": str(device),
                                        "members": [m.spec.name for m in members]})
    return Ensemble(settings=settings, device=device, members=members, weights=weights,
                    modality={m.name: m.modality for m in settings.ensemble},
                    model_set_version=version)


def instances_digest(sop_instance_uids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sop_instance_uids)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# decode + preprocess


def _prepare(image: ExamImage, input_size: tuple[int, int]) -> PreparedImage:
    ds = pydicom.dcmread(image.path)
    decoded = decode_pixels(ds)
    prepared = prepare_view(decoded.array, image.laterality, image.view, input_size)
    return PreparedImage(image=image, prepared=prepared, lossy=decoded.lossy)


@dataclass
class _Prepared:
    by_key: dict[tuple[str, tuple[int, int]], PreparedImage] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # sop uid -> reason
    seconds: float = 0.0


def _prepare_all(images: Sequence[ExamImage], sizes: set[tuple[int, int]],
                 pool: ThreadPoolExecutor) -> _Prepared:
    """Decode and preprocess every (image, input size) concurrently (numpy/cv2 free the GIL)."""
    started = time.perf_counter()
    futures = {(img.sop_instance_uid, size): pool.submit(_prepare, img, size)
               for img in images for size in sorted(sizes)}
    out = _Prepared()
    for key, fut in futures.items():
        try:
            out.by_key[key] = fut.result()
        except (DecodeError, PreprocessingError) as exc:
            out.failures[key[0]] = str(exc)
            log.warning("view not scorable", extra={"sop_instance_uid": key[0], "error": str(exc)})
    out.seconds = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------------------
# one member on the exam's views


def forward_views(member: LoadedModel, x: torch.Tensor) -> Any:
    """The member's forward on N views (N, 1, H, W), in channels-last memory format.

    On the CPU the views run one at a time (measured in benchmarks/gmic.py: a 4-view batch
    is slower than four single views there); on an accelerator they run as one batch.
    The per-view outputs are concatenated into the model's own output type.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if x.device.type != "cpu" or x.shape[0] == 1:
            return member.module(x)
        outs = [member.module(x[i:i + 1]) for i in range(x.shape[0])]
    return type(outs[0])(*[None if parts[0] is None else torch.cat(parts)
                           for parts in zip(*outs, strict=True)])


def _forward_probabilities(member: LoadedModel, arrays: list[np.ndarray], device: torch.device,
                           chunk: int = 4) -> np.ndarray:
    """(N, classes) probabilities of ``arrays`` in chunks of ``chunk`` views."""
    out = []
    for start in range(0, len(arrays), chunk):
        x = torch.from_numpy(np.stack(arrays[start:start + chunk])[:, None]).to(device)
        out.append(forward_views(member, x).y_fusion.float().cpu().numpy())
    return np.concatenate(out)


def _run_member(member: LoadedModel, batch: list[PreparedImage], device: torch.device,
                augmented: dict[str, list[np.ndarray]] | None = None) -> list[ViewScore]:
    """Run a GMIC-family member on a batch of prepared views (one forward).

    With test-time augmentation the view's probabilities are the mean over its augmented
    windows; saliency and ROIs come from the unaugmented window (what the overlay shows).
    """
    x = torch.from_numpy(np.stack([p.prepared.array for p in batch])[:, None]).to(device)
    out = forward_views(member, x)
    crop_h, crop_w = member.spec.hyperparameters.crop_shape
    probs = out.y_fusion.float().cpu().numpy()
    if augmented:
        uids = [p.image.sop_instance_uid for p in batch]
        flat = [a for uid in uids for a in augmented[uid]]
        aug = _forward_probabilities(member, flat, device).reshape(len(uids), -1, probs.shape[1])
        probs = aug.mean(axis=1)
    saliency = out.saliency_map.float().cpu().numpy()
    locations = out.patch_locations.cpu().numpy()
    attention = out.patch_attention.float().cpu().numpy()
    scores = []
    for i, p in enumerate(batch):
        rois = tuple(
            RoiPatch(top=int(r), left=int(c), height=crop_h, width=crop_w, attention=float(a))
            for (r, c), a in zip(locations[i], attention[i], strict=True)
        )
        scores.append(ViewScore(
            member=member.spec.name, sop_instance_uid=p.image.sop_instance_uid,
            sop_class_uid=p.image.sop_class_uid, laterality=p.image.laterality,
            view=p.image.view, p_benign=float(probs[i, 0]), p_malignant=float(probs[i, 1]),
            saliency_benign=saliency[i, 0].astype(np.float32),
            saliency_malignant=saliency[i, 1].astype(np.float32),
            frame=p.prepared.frame, rois=rois, image_class=p.image.image_class.value,
        ))
    return scores


def score_exam(images: Sequence[ExamImage], ensemble: Ensemble, *,
               study_instance_uid: str, partial: bool = False) -> ExamResult:
    """Score one exam's chosen images with every member; a failing member is left out."""
    settings = ensemble.settings
    started = time.perf_counter()
    timings: dict[str, float] = {}
    scorable = [img for img in images if img.image_class in (ImageClass.FFDM, ImageClass.SYNTHETIC2D)]
    if not scorable:
        raise ScoringError(f"exam {study_instance_uid}: no 2D image to score")
    sizes = {m.spec.input_size[img.view] for m in ensemble.members for img in scorable}
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(scorable)))) as pool:
        prepared = _prepare_all(scorable, sizes, pool)
    timings["decode_preprocess_s"] = prepared.seconds

    augmented: dict[tuple[str, tuple[int, int]], list[np.ndarray]] = {}
    if settings.tta_samples:
        t0 = time.perf_counter()
        for index, (key, prep) in enumerate(sorted(prepared.by_key.items())):
            samples = sample_windows(prep.prepared, settings.tta_samples,
                                     settings.tta_seed + index)
            augmented[key] = [sample.array for sample in samples]
        timings["tta_windows_s"] = time.perf_counter() - t0

    member_infos: list[MemberInfo] = []
    view_scores: list[ViewScore] = []
    for member in ensemble.members:
        batch = [prepared.by_key[(img.sop_instance_uid, member.spec.input_size[img.view])]
                 for img in scorable
                 if (img.sop_instance_uid, member.spec.input_size[img.view]) in prepared.by_key]
        info = dict(name=member.spec.name, version=member.spec.version,
                    architecture=member.spec.architecture,
                    modality=ensemble.modality[member.spec.name],
                    ensemble_weight=ensemble.weights[member.spec.name],
                    weights_sha256=member.sha256, weights_status=member.weights_status)
        t0 = time.perf_counter()
        try:
            if not batch:
                raise ScoringError("no view of the exam could be decoded and preprocessed")
            member_aug = {
                img.sop_instance_uid: augmented[(img.sop_instance_uid, member.spec.input_size[img.view])]
                for img in scorable
                if (img.sop_instance_uid, member.spec.input_size[img.view]) in augmented
            }
            view_scores.extend(_run_member(member, batch, ensemble.device, member_aug or None))
            member_infos.append(MemberInfo(**info))  # type: ignore[arg-type]
        except (TriageError, RuntimeError, ValueError) as exc:
            log.exception("member failed", extra={"member": member.spec.name,
                                                  "study_instance_uid": study_instance_uid})
            member_infos.append(MemberInfo(**info, included=False,  # type: ignore[arg-type]
                                           failure_reason=f"{type(exc).__name__}: {exc}"))
        timings[f"model_{member.spec.name}_s"] = time.perf_counter() - t0

    if not view_scores:
        reasons = "; ".join(f"{m.name}: {m.failure_reason}" for m in member_infos)
        raise ScoringError(f"exam {study_instance_uid}: every member failed ({reasons})")

    breasts = combine_members(
        [ViewProbability(v.member, v.laterality, v.view, v.p_benign, v.p_malignant)
         for v in view_scores],
        {m.name: m.ensemble_weight for m in member_infos if m.included},
    )
    score = exam_score(breasts)
    included = [m for m in member_infos if m.included]
    unverified = [m.name for m in included
                  if m.weights_status is not WeightsStatus.VERIFIED_PUBLISHED]
    category = categorise(score, settings.priorities, verified=not unverified,
                          unverified_members=unverified)
    notes: list[str] = []
    if any(p.lossy for p in prepared.by_key.values()):
        notes.append("lossy-compressed input images")
    if any(img.image_class is ImageClass.SYNTHETIC2D for img in scorable):
        notes.append("synthetic 2D images scored by FFDM models (domain shift)")
    for uid, reason in prepared.failures.items():
        notes.append(f"view {uid} not scored: {reason}")
    scored_uids = sorted({v.sop_instance_uid for v in view_scores})
    timings["total_s"] = time.perf_counter() - started
    return ExamResult(
        study_instance_uid=study_instance_uid,
        model_set_version=ensemble.model_set_version,
        instances_digest=instances_digest(scored_uids),
        scored_sop_instance_uids=tuple(scored_uids),
        members=tuple(member_infos),
        views=tuple(view_scores),
        breasts=tuple(BreastScore(b.laterality, b.p_benign, b.p_malignant, dict(b.per_member))
                      for b in breasts),
        exam_score=score,
        category=category.name,
        not_triaged_reason=category.reason,
        tta_samples=settings.tta_samples,
        tta_seed=settings.tta_seed if settings.tta_samples else None,
        timings=timings,
        device=str(ensemble.device),
        partial=partial,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------
# the task body


class Outcome(StrEnum):
    SCORED = "scored"
    ALREADY_DONE = "already_done"
    NOT_CLAIMABLE = "not_claimable"
    FAILED = "failed"


@dataclass(frozen=True)
class ClaimedExam:
    study_id: int
    study_instance_uid: str
    images: tuple[ExamImage, ...]
    partial: bool
    attempt: int


def chosen_images(db: Database, study_id: int) -> list[ExamImage]:
    with db.session() as session:
        rows = session.scalars(select(Instance).where(
            Instance.study_id == study_id, Instance.chosen.is_(True), Instance.scorable.is_(True),
        ).order_by(Instance.laterality, Instance.view)).all()
        return [ExamImage(sop_instance_uid=r.sop_instance_uid, sop_class_uid=r.sop_class_uid,
                          path=Path(r.path), laterality=Laterality(r.laterality),
                          view=View(r.view), image_class=ImageClass(r.image_class))
                for r in rows if r.laterality and r.view]


def claim(db: Database, study_id: int) -> ClaimedExam | None:
    """queued -> scoring (or a redelivery of a scoring exam); None when not ours to score.

    Each claim counts a delivery; the one after MAX_SCORING_ATTEMPTS deliveries that never
    finished (each killed its worker) marks the exam failed instead of looping.
    """
    with db.session() as session:
        study = session.get(Study, study_id, with_for_update=not db.is_sqlite)
        if study is None:
            log.warning("task for unknown exam", extra={"study_id": study_id})
            return None
        status = ExamStatus(study.status)
        if status is ExamStatus.QUEUED:
            set_status(session, study, ExamStatus.SCORING, "claimed by a worker")
        elif status is ExamStatus.SCORING:
            if study.scoring_attempts >= MAX_SCORING_ATTEMPTS:
                set_status(session, study, ExamStatus.FAILED,
                           f"scoring did not finish in {study.scoring_attempts} deliveries "
                           "(each ended with the worker lost); not retried")
                log.error("exam failed after repeated worker loss",
                          extra={"study_instance_uid": study.study_instance_uid})
                return None
            log.warning("redelivered exam resumes scoring",
                        extra={"study_instance_uid": study.study_instance_uid,
                               "attempt": study.scoring_attempts + 1})
        else:
            return None
        study.scoring_attempts += 1
        uid, partial, attempt = study.study_instance_uid, study.partial, study.scoring_attempts
    return ClaimedExam(study_id=study_id, study_instance_uid=uid,
                       images=tuple(chosen_images(db, study_id)), partial=partial, attempt=attempt)


def _inject_fault(claimed: ClaimedExam) -> None:
    """TRIAGE_TESTING=1 only: slow down or kill this process while it scores a given exam,
    so tests can prove redelivery and the failed-after-three-worker-losses rule."""
    delay = float(os.environ.get("TRIAGE_TEST_SCORING_DELAY_SECONDS", "0") or 0)
    if delay:
        time.sleep(delay)
    if os.environ.get("TRIAGE_TEST_KILL_WORKER_ON_STUDY_UID") == claimed.study_instance_uid:
        log.warning("testing: killing the worker process while scoring",
                    extra={"study_instance_uid": claimed.study_instance_uid})
        os.kill(os.getpid(), signal.SIGKILL)


class OutputStage(Protocol):
    """What happens to a result besides the DB rows (``triage.delivery.Publisher``)."""

    def prepare(self, db: Database, study_id: int, result: ExamResult) -> Sequence[Any]:
        """Build and durably write the output objects (outside the transaction)."""

    def record(self, session: Session, study_id: int, run: ScoringRun,
               written: Sequence[Any]) -> int:
        """Record them (outbox rows) inside the transaction that marks the exam scored."""

    def after_commit(self, db: Database, study_id: int) -> None:
        """E.g. mark the exam delivered when the outputs need no sending."""


def process_study(db: Database, ensemble: Ensemble, study_id: int,
                  outputs: OutputStage | None = None) -> Outcome:
    """Claim, score, store, mark scored; idempotent and safe to redeliver."""
    try:
        claimed = claim(db, study_id)
    except OperationalError as exc:
        raise TransientError(f"database unavailable while claiming exam {study_id}: {exc.orig}") from exc
    if claimed is None:
        return Outcome.NOT_CLAIMABLE
    if ensemble.settings.testing:
        _inject_fault(claimed)
    log.info("scoring exam", extra={"study_instance_uid": claimed.study_instance_uid,
                                     "attempt": claimed.attempt, "views": len(claimed.images)})
    try:
        result = score_exam(claimed.images, ensemble, study_instance_uid=claimed.study_instance_uid,
                            partial=claimed.partial)
    except ScoringError as exc:
        with db.session() as session:
            study = session.get(Study, study_id)
            assert study is not None
            store_failed_run(session, study_id, ensemble.model_set_version,
                             instances_digest([i.sop_instance_uid for i in claimed.images]), str(exc))
            set_status(session, study, ExamStatus.FAILED, str(exc))
        log.error("exam failed", extra={"study_instance_uid": claimed.study_instance_uid,
                                         "error": str(exc)})
        return Outcome.FAILED
    written: Sequence[Any] = outputs.prepare(db, study_id, result) if outputs else ()
    try:
        with db.session() as session:
            study = session.get(Study, study_id, with_for_update=not db.is_sqlite)
            assert study is not None
            if study.status != ExamStatus.SCORING.value:
                return Outcome.ALREADY_DONE  # a concurrent delivery finished first
            run = store_result(session, study_id, result)
            if outputs is not None:
                session.flush()
                outputs.record(session, study_id, run, written)
            study.chosen_set_digest = result.instances_digest
            set_status(session, study, ExamStatus.SCORED,
                       f"score {result.exam_score:.4f}, category {result.category}")
    except OperationalError as exc:
        raise TransientError(f"database unavailable while storing exam {study_id}: {exc.orig}") from exc
    log.info("exam scored", extra={"study_instance_uid": claimed.study_instance_uid,
                                    "score": round(result.exam_score, 4),
                                    "category": result.category,
                                    "model_set_version": result.model_set_version})
    if outputs is not None:
        outputs.after_commit(db, study_id)
    return Outcome.SCORED


__all__ = ["Ensemble", "ExamImage", "InputFrame", "Outcome", "claim", "load_ensemble",
           "process_study", "resolve_device", "score_exam"]
