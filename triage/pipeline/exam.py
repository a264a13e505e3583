"""``score_exam``: an exam's chosen images in, a typed ``ExamResult`` out.

Each member scores the images of its modality through the runner of its family (see
``runners``); the 2D inputs the members ask for are decoded and preprocessed once, in
parallel; a member that fails is left out with its reason; views, breasts and the exam
are combined by ``triage.scoring``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from triage.config import PartialPolicy
from triage.errors import NothingToScore, ScoringError, TriageError
from triage.imaging import sample_windows
from triage.models import LoadedModel
from triage.pipeline.ensemble import (
    Ensemble,
    companion_text,
    instances_digest,
    member_architecture,
    member_weights_status,
)
from triage.pipeline.families import MODALITY_CLASSES, runner_for
from triage.pipeline.images import ExamImage
from triage.pipeline.runners import ExamInputs, SharedInputRunner
from triage.pipeline.views2d import PrepareRequest, prepare_all
from triage.results import BreastScore, ExamResult, MemberInfo, ScoredImage, ViewScore
from triage.scoring import ViewProbability, categorise, combine_classes, exam_score, missing_views
from triage.vocabulary import ImageClass, WeightsStatus

log = logging.getLogger(__name__)

def _member_images(member: LoadedModel, ensemble: Ensemble,
                   images: Sequence[ExamImage]) -> tuple[ExamImage, ...]:
    classes = MODALITY_CLASSES.get(ensemble.modality[member.spec.name], ())
    return tuple(img for img in images if img.image_class in classes)


#: how the notes name the image classes
CLASS_LABELS: dict[ImageClass, str] = {
    ImageClass.FFDM: "FFDM", ImageClass.SYNTHETIC2D: "synthetic 2D", ImageClass.DBT: "DBT",
}


def _listed(classes: Sequence[ImageClass], word: str = "and") -> str:
    labels = [CLASS_LABELS[c] for c in sorted(classes, key=list(CLASS_LABELS).index)]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} {word} {labels[-1]}"


def class_notes(images: Sequence[ExamImage], ensemble: Ensemble,
                view_scores: Sequence[ViewScore]) -> list[str]:
    """What the result says about image classes: which were scored (and counted), which the
    ensemble scores but the exam lacks, and images no member scores. Silent for the plain
    case of one class scored by an ensemble of that class only."""
    weights = ensemble.settings.class_weights
    present = {img.image_class for img in images if img.image_class in CLASS_LABELS}
    modalities = set(ensemble.modality.values())
    scorable = {c for m in modalities for c in MODALITY_CLASSES.get(m, ())}
    expected = {c for m in modalities for c in MODALITY_CLASSES.get(m, ())[:1]}
    scored = {ImageClass(v.image_class) for v in view_scores}
    counted = [c for c in scored if weights.get(c.value, 0.0) > 0]
    notes: list[str] = []
    for c in sorted(present - scorable, key=list(CLASS_LABELS).index):
        notes.append(f"{CLASS_LABELS[c]} images present but no ensemble member scores "
                     f"{CLASS_LABELS[c]}: not scored")
    for c in sorted((present & scorable) - scored, key=list(CLASS_LABELS).index):
        notes.append(f"{CLASS_LABELS[c]} images not scored (no {CLASS_LABELS[c]} view could "
                     "be scored; see the members' failures)")
    for c in sorted(scored - set(counted), key=list(CLASS_LABELS).index):
        notes.append(f"{CLASS_LABELS[c]} images scored but not counted (weight 0 in "
                     "TRIAGE_CLASS_WEIGHTS)")
    if ImageClass.DBT in scored and ensemble.settings.tta_samples:
        notes.append("DBT views scored without test-time augmentation")
    if len(expected | present) > 1 and counted:
        absent = sorted(expected - present, key=list(CLASS_LABELS).index)
        summary = f"scored on {_listed(counted)}"
        if absent or set(counted) != present:
            summary += " only"
        if absent:
            summary += f"; no {_listed(absent, 'or')} images"
        notes.insert(0, summary)
    return notes


def coverage_gaps(per_member: dict[str, tuple[ExamImage, ...]], members: Sequence[MemberInfo],
                  view_scores: Sequence[ViewScore], failed_views: dict[str, str],
                  class_weights: dict[str, float]) -> list[str]:
    """What this exam's result does not cover, in words an admin can act on: standard views
    or a whole breast that no counted view score covers, views that could not be decoded or
    prepared, members that failed on images they were given (a member with no image of its
    modality is not a gap), and views a member was given but did not score."""
    counted = [v for v in view_scores if class_weights.get(v.image_class, 0.0) > 0]
    gaps = missing_views({(v.laterality, v.view) for v in counted})
    by_uid = {img.sop_instance_uid: img for imgs in per_member.values() for img in imgs}
    for uid, reason in failed_views.items():
        img = by_uid.get(uid)
        where = f"{img.laterality.value}-{img.view.value} " if img else ""
        gaps.append(f"view {where}{uid} failed: {reason}")
    for m in members:
        given = [i for i in per_member.get(m.name, ()) if i.sop_instance_uid not in failed_views]
        if not given:
            continue
        if not m.included:
            gaps.append(f"member {m.name} failed: {m.failure_reason}")
            continue
        got = {v.sop_instance_uid for v in view_scores if v.member == m.name}
        lost = sorted(f"{i.laterality.value}-{i.view.value}" for i in given
                      if i.sop_instance_uid not in got)
        if lost:
            gaps.append(f"member {m.name} did not score {', '.join(lost)}")
    return gaps


def _run_members(ensemble: Ensemble, per_member: dict[str, tuple[ExamImage, ...]],
                 shared: ExamInputs, timings: dict[str, float],
                 ) -> dict[str, list[ViewScore] | Exception]:
    """Every member's view scores, or the error that leaves it out.

    Members whose runner shares an input per image (``SharedInputRunner``: a DBT volume)
    and that score the same images run together, so each volume is prepared once for all
    of them; their time is recorded once for the group.
    """
    out: dict[str, list[ViewScore] | Exception] = {}
    for member in ensemble.members:
        name = member.spec.name
        if name in out:
            continue
        own = per_member[name]
        if not own:
            out[name] = ScoringError(f"the exam has no {ensemble.modality[name]} image to score")
            continue
        runner = runner_for(member.spec)
        inputs = replace(shared, images=own)
        t0 = time.perf_counter()
        if isinstance(runner, SharedInputRunner):
            group = [m for m in ensemble.members
                     if runner_for(m.spec) is runner and per_member[m.spec.name] == own]
            out.update(runner.run_members(group, inputs))
            timings["model_" + "+".join(m.spec.name for m in group) + "_s"] = (
                time.perf_counter() - t0)
            continue
        try:
            out[name] = runner.run(member, inputs)
        except (TriageError, RuntimeError, ValueError) as exc:
            out[name] = exc
        timings[f"model_{name}_s"] = time.perf_counter() - t0
    return out


def score_exam(images: Sequence[ExamImage], ensemble: Ensemble, *,
               study_instance_uid: str, partial: bool = False) -> ExamResult:
    """Score one exam's chosen images with every member; a failing member is left out."""
    settings = ensemble.settings
    started = time.perf_counter()
    timings: dict[str, float] = {}
    per_member = {m.spec.name: _member_images(m, ensemble, images) for m in ensemble.members}
    if not any(per_member.values()):
        classes = sorted({img.image_class.value for img in images}) or ["none"]
        raise NothingToScore(f"exam {study_instance_uid}: no image the ensemble's members score "
                           f"(image classes in the exam: {', '.join(classes)})")
    requests = [r for m in ensemble.members
                for r in runner_for(m.spec).requests(m, per_member[m.spec.name])]
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(requests)))) as pool:
        prepared = prepare_all(requests, pool)
    timings["decode_preprocess_s"] = prepared.seconds

    augmented: dict[PrepareRequest, list[np.ndarray]] = {}
    if settings.tta_samples:
        t0 = time.perf_counter()
        ordered = sorted(prepared.by_request.items(),
                         key=lambda kv: (kv[0].image.sop_instance_uid, kv[0].input_size,
                                         kv[0].recipe))
        for index, (request, prep) in enumerate(ordered):
            samples = sample_windows(prep.prepared, settings.tta_samples,
                                     settings.tta_seed + index)
            augmented[request] = [sample.array for sample in samples]
        timings["tta_windows_s"] = time.perf_counter() - t0

    runner_notes: list[str] = []
    outcomes = _run_members(ensemble, per_member, ExamInputs(
        images=(), prepared=prepared, augmented=augmented, device=ensemble.device,
        notes=runner_notes), timings)
    member_infos: list[MemberInfo] = []
    view_scores: list[ViewScore] = []
    for member in ensemble.members:
        # a member's companions (DMV-CNN patch classifier) are folded into its record
        info = dict(name=member.spec.name, version=member.spec.version,
                    architecture=member_architecture(member),
                    modality=ensemble.modality[member.spec.name],
                    ensemble_weight=ensemble.weights[member.spec.name],
                    weights_sha256=member.sha256, weights_status=member_weights_status(member))
        outcome = outcomes[member.spec.name]
        if isinstance(outcome, Exception):
            log.error("member failed", exc_info=outcome,
                      extra={"member": member.spec.name, "study_instance_uid": study_instance_uid})
            member_infos.append(MemberInfo(**info, included=False,  # type: ignore[arg-type]
                                           failure_reason=f"{type(outcome).__name__}: {outcome}"))
        else:
            view_scores.extend(outcome)
            member_infos.append(MemberInfo(**info))  # type: ignore[arg-type]

    if not view_scores:
        reasons = "; ".join(f"{m.name}: {m.failure_reason}" for m in member_infos)
        raise ScoringError(f"exam {study_instance_uid}: every member failed ({reasons})")

    # members within each image class, then the classes per breast (TRIAGE_CLASS_WEIGHTS)
    breasts = combine_classes(
        [ViewProbability(v.member, v.laterality, v.view, v.p_benign, v.p_malignant,
                         v.image_class) for v in view_scores],
        {m.name: m.ensemble_weight for m in member_infos if m.included},
        settings.class_weights,
    )
    if not breasts:
        scored = sorted({v.image_class for v in view_scores})
        raise ScoringError(f"exam {study_instance_uid}: no breast scored: the image classes "
                           f"scored ({', '.join(scored)}) have weight 0 in TRIAGE_CLASS_WEIGHTS")
    score = exam_score(breasts)
    included = [m for m in member_infos if m.included]
    unverified = [m.name for m in included
                  if m.weights_status is not WeightsStatus.VERIFIED_PUBLISHED]
    gaps = coverage_gaps(per_member, member_infos, view_scores, dict(prepared.failures),
                         dict(settings.class_weights))
    category = categorise(score, settings.priorities, verified=not unverified,
                          unverified_members=unverified, coverage_gaps=gaps,
                          partial_category=settings.partial_policy is PartialPolicy.PARTIAL)
    notes: list[str] = []
    if any(p.lossy for p in prepared.by_request.values()):
        notes.append("lossy-compressed input images")
    if any(img.image_class is ImageClass.SYNTHETIC2D for img in images):
        notes.append("synthetic 2D images scored by FFDM models (domain shift)")
    for uid, reason in prepared.failures.items():
        notes.append(f"view {uid} not scored: {reason}")
    notes.extend(n for n in dict.fromkeys(runner_notes) if n not in notes)
    notes[:0] = class_notes(images, ensemble, view_scores)  # which classes: first
    notes.extend(f"{m.spec.name} {companion_text(m)}" for m in ensemble.members
                 if m.companions and any(i.name == m.spec.name and i.included
                                         for i in member_infos))
    scored_uids = sorted({v.sop_instance_uid for v in view_scores})
    scored_images = [img for img in images if img.sop_instance_uid in scored_uids]
    timings["total_s"] = time.perf_counter() - started
    return ExamResult(
        study_instance_uid=study_instance_uid,
        model_set_version=ensemble.model_set_version,
        instances_digest=instances_digest(scored_images),
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
        partial=partial or bool(gaps),
        coverage_gaps=tuple(gaps),
        notes=tuple(notes),
        scored_images=tuple(ScoredImage(img.sop_instance_uid, img.content_digest, str(img.path),
                                        img.image_class.value) for img in scored_images),
    )


