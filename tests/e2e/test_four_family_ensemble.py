"""An exam scored end to end by a four-family ensemble: GMIC, DMV-CNN, the end-to-end
all-convolutional classifier (Shen et al. 2019) and GlimpseNet (Hang et al.), each through
its reduced-resolution testing member with seeded demo weights.

DCMTK storescu -> `triage serve` -> scoring -> SR and overlays -> a real Orthanc: every
member is stored in the DB with its scores, the TID 1500 SR in the archive names all four
members (algorithm identification with their versions), GlimpseNet's glimpses become
regions in the SR, and the all-conv member's missing benign output is "not estimated".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from tests.e2e.conftest import ArchiveServer
from tests.e2e.test_results_to_archive import _archive_address, _archived, _listener_up, _outbox
from tests.integration.listener_helpers import free_port, storescu
from tests.integration.product_helpers import Stack, exam_status, runs_of, small_exam, wait_until
from triage.db import RunMember, Score
from triage.models import ensure_demo_weights
from triage.vocabulary import OutputKind

MEMBERS = ("gmic-testing-small", "dmv-cnn-testing-small", "allconv-testing-small",
           "glimpsenet-testing-small")


def _strings(ds: pydicom.Dataset) -> Iterator[str]:
    """Every text value in a data set, nested sequences included."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from _strings(item)
        elif element.VR in ("LO", "SH", "UT", "ST", "LT", "CS", "UC") and element.value:
            values = element.value if element.VM > 1 else [element.value]
            yield from (str(v) for v in values)


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[Stack, ArchiveServer, str, Path]]:
    root = tmp_path_factory.mktemp("four")
    archive = ArchiveServer(root=root / "orthanc")
    archive.root.mkdir()
    archive.start()
    port = free_port()
    ensemble = json.dumps([{"name": name, "weight": 0.25} for name in MEMBERS])
    stack = Stack(root / "stack", extra_env={
        "TRIAGE_ARCHIVE": _archive_address(archive), "TRIAGE_DICOM_PORT": str(port),
        "TRIAGE_ENSEMBLE": ensemble})
    try:
        ensure_demo_weights(stack.settings)
        stack.spawn("serve")
        _listener_up(stack, port)
        uid, files = small_exam(root / "exam", seed=31)
        sent = storescu(port, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(lambda: exam_status(stack.db, uid) in ("delivered", "failed"), 600,
                   "four-family exam finished", stack.logs)
        yield stack, archive, uid, root
    finally:
        stack.close()
        archive.destroy()


def test_every_family_scores_the_exam_and_is_stored_with_its_scores(
    delivered: tuple[Stack, ArchiveServer, str, Path]
) -> None:
    stack, _, uid, _ = delivered
    assert exam_status(stack.db, uid) == "delivered"
    (run,) = runs_of(stack.db, uid)
    assert run.status == "succeeded" and not run.partial, run.coverage_gaps
    with stack.db.session() as session:
        members = session.scalars(select(RunMember).where(RunMember.run_id == run.id)).all()
        assert {(m.name, m.included) for m in members} == {(m, True) for m in MEMBERS}
        views = session.scalars(select(Score).where(Score.run_id == run.id,
                                                    Score.level == "view")).all()
    per_member = {m: [v for v in views if v.member == m] for m in MEMBERS}
    assert all(len(v) == 4 for v in per_member.values()), {m: len(v) for m, v in per_member.items()}
    assert all(v.p_benign is None for v in per_member["allconv-testing-small"])
    assert all(v.p_benign is not None for v in per_member["glimpsenet-testing-small"])


def test_the_sr_in_the_archive_names_all_four_members_and_the_glimpses(
    delivered: tuple[Stack, ArchiveServer, str, Path]
) -> None:
    stack, archive, uid, root = delivered
    outputs = {r.kind: r.sop_instance_uid for r in _outbox(stack, uid)
               if r.kind != OutputKind.SC_OVERLAY.value}
    archived = _archived(archive, root / "archived")
    sr = pydicom.dcmread(archived[outputs[OutputKind.SR_TID1500.value]][1])
    texts = set(_strings(sr))
    for name in MEMBERS:
        assert name in texts, f"{name} is not named in the SR"
    assert any(t.startswith("member glimpsenet-testing-small") for t in texts)
    # GlimpseNet's glimpses are regions (planar ROI groups) on each of the four views
    glimpse_views = {t.split(" ")[0] for t in texts
                     if " glimpsenet-testing-small roi " in t}
    assert glimpse_views == {"LCC", "RCC", "LMLO", "RMLO"}, glimpse_views
    overlays = [r for r in _outbox(stack, uid) if r.kind == OutputKind.SC_OVERLAY.value]
    assert len(overlays) == 4 and all(r.status == "sent" for r in overlays)
    legend = str(pydicom.dcmread(archived[overlays[0].sop_instance_uid][1]).ImageComments)
    assert "NOT FOR DIAGNOSTIC USE" in legend.upper() or "not for diagnosis" in legend.lower()
