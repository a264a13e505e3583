"""UID policy: deterministic per (study, model set, scored instances, kind, view)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.result_builders import build_exam_fixture
from triage.config import load_settings
from triage.errors import ConfigError
from triage.outputs import build_overlays, build_tid1500_sr, plan_uids
from triage.outputs.uids import (
    digest_instances,
    instance_uid,
    is_own_uid,
    is_valid_uid,
    series_uid,
    uid_from_key,
)
from triage.vocabulary import OutputKind

ROOT = load_settings().uid_root


def _all(uids: object) -> list[str]:
    plan = dataclasses.asdict(uids)  # type: ignore[call-overload]
    values = [v for k, v in plan.items() if k != "overlay_instances"]
    return values + list(plan["overlay_instances"].values())


def test_same_result_gives_the_same_uids_on_retry() -> None:
    first = build_exam_fixture(seed=3)
    retry = build_exam_fixture(seed=3)
    assert plan_uids(ROOT, first.result) == plan_uids(ROOT, retry.result)
    sr1 = build_tid1500_sr(first.result, first.sources, load_settings())
    sr2 = build_tid1500_sr(retry.result, retry.sources, load_settings())
    assert (sr1.SOPInstanceUID, sr1.SeriesInstanceUID) == (sr2.SOPInstanceUID,
                                                           sr2.SeriesInstanceUID)


def test_new_images_give_new_uids_for_every_output() -> None:
    before = plan_uids(ROOT, build_exam_fixture(seed=3).result)
    after = plan_uids(ROOT, build_exam_fixture(seed=3, extra_instance=True).result)
    assert set(_all(before)).isdisjoint(_all(after))


def test_another_model_set_gives_new_uids() -> None:
    result = build_exam_fixture(seed=3).result
    other = dataclasses.replace(result, model_set_version=result.model_set_version + "-b")
    assert set(_all(plan_uids(ROOT, result))).isdisjoint(_all(plan_uids(ROOT, other)))


def test_uids_are_valid_unique_and_at_most_64_characters() -> None:
    fx = build_exam_fixture(seed=5, with_dbt=True)
    for root in (ROOT, "1.2.3.", "2.25." + "1" * 35 + "."):
        uids = _all(plan_uids(root, fx.result))
        assert len(set(uids)) == len(uids)
        for uid in uids:
            assert is_valid_uid(uid), uid
            assert len(uid) <= 64
            assert uid.startswith(root) and is_own_uid(uid, root)


def test_uid_root_without_room_for_a_unique_suffix_is_refused() -> None:
    with pytest.raises(ConfigError, match="TRIAGE_UID_ROOT"):
        uid_from_key("1." + "2" * 44 + ".", "x")
    with pytest.raises(ConfigError, match="TRIAGE_UID_ROOT"):
        uid_from_key("1.02.", "x")


def test_overlay_uids_follow_the_view_and_land_in_one_series() -> None:
    fx = build_exam_fixture(seed=9)
    settings = load_settings()
    overlays = build_overlays(fx.result, fx.sources, fx.pixels, settings)
    plan = plan_uids(settings.uid_root, fx.result)
    assert {str(o.SeriesInstanceUID) for o in overlays} == {plan.overlay_series}
    by_source = {str(o.SourceImageSequence[0].ReferencedSOPInstanceUID): str(o.SOPInstanceUID)
                 for o in overlays}
    assert by_source == plan.overlay_instances
    # per-exam kinds differ from each other and from the overlay series
    kinds = {series_uid(ROOT, fx.result, k) for k in OutputKind}
    assert len(kinds) == len(OutputKind)
    assert instance_uid(ROOT, fx.result, OutputKind.SR_TID1500) != instance_uid(
        ROOT, fx.result, OutputKind.SR_MAMMO_CAD)


def test_instance_digest_ignores_order_and_duplicates() -> None:
    uids = build_exam_fixture(seed=4).result.scored_sop_instance_uids
    assert digest_instances(uids) == digest_instances(tuple(reversed(uids)) + uids[:1])
    assert digest_instances(uids) != digest_instances(uids[1:])


def test_a_corrected_image_under_the_same_uid_gives_a_new_run_key_and_new_uids() -> None:
    """Runs and output UIDs are keyed by content: same SOP Instance UIDs, one image's bytes
    corrected -> another run key, and no output UID in common."""
    from pathlib import Path

    from triage.pipeline import ExamImage, instances_digest
    from triage.vocabulary import Laterality, View

    result = build_exam_fixture(seed=3).result
    uids = result.scored_sop_instance_uids
    images = [ExamImage(u, "1.2.840.10008.5.1.4.1.1.1.2", Path(f"{u}.dcm"), Laterality.LEFT,
                        View.CC, content_digest=f"sha-{i}") for i, u in enumerate(uids)]
    corrected = [dataclasses.replace(images[0], content_digest="sha-corrected"), *images[1:]]
    assert instances_digest(images) == instances_digest(list(reversed(images)))
    assert instances_digest(images) != instances_digest(corrected)
    before = dataclasses.replace(result, instances_digest=instances_digest(images))
    after = dataclasses.replace(result, instances_digest=instances_digest(corrected))
    assert set(_all(plan_uids(ROOT, before))).isdisjoint(_all(plan_uids(ROOT, after)))
