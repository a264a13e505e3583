"""Results back to the archive, end to end with real parts.

DCMTK storescu plays the modality, Orthanc (started here on loopback) the site's archive,
and the product runs as its own processes: ``triage serve`` (embedded default, SQLite) or
``triage listen`` + ``triage worker`` (Redis, Celery, PostgreSQL). The reduced-resolution
test member with seeded demo weights scores a 4-view synthetic exam at 1/4 size, so every
run is unverified: NOT TRIAGED, and the Mammography CAD SR leaves only with
TRIAGE_SEND_UNVERIFIED_CAD=1.

What the archive holds is read back through Orthanc's REST API and its own files, so
every check is on what a viewer or a worklist engine at the site would get.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from tests.e2e.conftest import ArchiveServer
from tests.integration.listener_helpers import echo, free_port, storescu
from tests.integration.product_helpers import (
    Stack,
    exam_status,
    runs_of,
    small_exam,
    study_row,
    wait_until,
)
from tests.servers import RedisServer
from triage.db import Instance, OutboxItem, Study
from triage.db.models import AuditEvent, StatusChange
from triage.delivery import backoff_seconds
from triage.outputs import COMPREHENSIVE_3D_SR, MAMMOGRAPHY_CAD_SR
from triage.outputs.overlay import ALPHA_MAX, WARNING_RGB, display_gray
from triage.vocabulary import NOT_TRIAGED, OutboxStatus, OutputKind

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPECTED_CLASS = {
    OutputKind.SR_TID1500: COMPREHENSIVE_3D_SR,
    OutputKind.SR_MAMMO_CAD: MAMMOGRAPHY_CAD_SR,
    OutputKind.SC_OVERLAY: SECONDARY_CAPTURE,
}
#: dsr2xml notices that are limitations of DCMTK 3.6.7, not problems of the object
#: (the same list as tests/integration/test_outputs_validators.py).
DSR2XML_BENIGN = (
    "Check for template constraints not yet supported",
    "The VR checker does not support this Specific Character Set",
    "Reading unknown/unsupported SpecificCharacterSet",
    "Cannot map Specific Character Set to equivalent XML encoding",
)
MALIGNANT_FINDING = ("21594007", "SCT")
SALIENCY = ("130404", "DCM")


# ---- helpers ------------------------------------------------------------------------------
@dataclass
class Delivery:
    """One exam sent by storescu and what became of it."""

    stack: Stack
    archive: ArchiveServer
    study_uid: str
    exam_files: list[Path]
    port: int


def _archive_address(archive: ArchiveServer) -> str:
    return f"{archive.ae_title}@127.0.0.1:{archive.dicom_port}"


def _listener_up(stack: Stack, port: int) -> None:
    wait_until(lambda: echo(port), 90, "C-ECHO from triage", stack.logs)


def _send_exam(port: int, root: Path, seed: int = 7) -> tuple[str, list[Path]]:
    uid, files = small_exam(root / "exam", seed=seed)
    result = storescu(port, files)
    assert result.returncode == 0, result.stdout + result.stderr
    return uid, files


def _outbox(stack: Stack, study_uid: str) -> list[OutboxItem]:
    with stack.db.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        rows = list(session.scalars(select(OutboxItem).where(OutboxItem.study_id == study.id)
                                    .order_by(OutboxItem.id)))
        for row in rows:
            session.expunge(row)
        return rows


def _archived(archive: ArchiveServer, tmp: Path) -> dict[str, tuple[dict[str, str], Path]]:
    """Every instance Orthanc holds: SOP Instance UID -> (its tags, its file downloaded)."""
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[dict[str, str], Path]] = {}
    oids = archive.get("/instances")
    assert isinstance(oids, list)
    for oid in oids:
        tags = archive.get(f"/instances/{oid}/simplified-tags")
        assert isinstance(tags, dict)
        path = tmp / f"{oid}.dcm"
        path.write_bytes(archive.get_bytes(f"/instances/{oid}/file"))
        out[str(tags["SOPInstanceUID"])] = (tags, path)
    return out


def _dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                          errors="replace", timeout=120, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def _dsr2xml_problems(path: Path) -> list[str]:
    xml = path.with_suffix(".xml")
    done = subprocess.run(["dsr2xml", str(path), str(xml)], capture_output=True, text=True,
                          errors="replace", timeout=120, check=False)
    notes = [line for line in done.stderr.splitlines() if line.strip()]
    problems = [line for line in notes if not any(b in line for b in DSR2XML_BENIGN)]
    if done.returncode != 0 or not xml.exists() or xml.stat().st_size == 0:
        problems.append(f"dsr2xml exit code {done.returncode}, no XML written")
    return problems


def _assert_archive_holds_the_results(delivery: Delivery, rows: list[OutboxItem],
                                      archived: dict[str, tuple[dict[str, str], Path]],
                                      kinds: Counter[str]) -> None:
    """The outbox rows are all sent, and the archive holds exactly those objects, once,
    in the source study, element for element the data sets the product wrote."""
    assert Counter(r.kind for r in rows) == kinds
    destination = _archive_address(delivery.archive)
    assert {r.destination for r in rows} == {destination}
    assert all(r.status == OutboxStatus.SENT.value and r.sent_at is not None for r in rows), [
        (r.kind, r.status, r.last_error) for r in rows]
    by_sop = {r.sop_instance_uid: r for r in rows}
    assert set(archived) == set(by_sop)
    outputs = {uid: archived[uid] for uid in by_sop}
    source_series = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
                     for f in delivery.exam_files}
    for uid, (tags, path) in outputs.items():
        row = by_sop[uid]
        assert tags["SOPClassUID"] == row.sop_class_uid == EXPECTED_CLASS[OutputKind(row.kind)]
        assert tags["StudyInstanceUID"] == delivery.study_uid
        assert tags["SeriesInstanceUID"] not in source_series
        stored = pydicom.dcmread(path)
        written = pydicom.dcmread(row.path)
        assert stored == written, f"archive copy of {row.kind} {uid} differs from {row.path}"
    ids = delivery.archive.instance_ids_by_sop()
    assert all(len(ids[uid]) == 1 for uid in by_sop)
    receipts = delivery.archive.receipts()
    assert {uid: receipts[uid] for uid in by_sop} == dict.fromkeys(by_sop, 1)


def _assert_valid_dicom(rows: list[OutboxItem],
                        archived: dict[str, tuple[dict[str, str], Path]]) -> None:
    errors: dict[str, list[str]] = {}
    for row in rows:
        _, path = archived[row.sop_instance_uid]
        problems = _dciodvfy_errors(path)
        if row.kind != OutputKind.SC_OVERLAY.value:
            problems += _dsr2xml_problems(path)
        if problems:
            errors[f"{row.kind} {row.sop_instance_uid}"] = problems
    assert not errors, "\n".join(f"{k}:\n  " + "\n  ".join(v) for k, v in errors.items())


# ---- embedded default: one delivered exam, looked at from several sides ---------------------
@pytest.fixture(scope="module")
def embedded_delivery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivery]:
    """`triage serve` (SQLite, embedded worker) delivering to Orthanc, CAD SR allowed."""
    root = tmp_path_factory.mktemp("embedded")
    archive = ArchiveServer(root=root / "orthanc")
    archive.root.mkdir()
    archive.start()
    port = free_port()
    stack = Stack(root / "stack", extra_env={
        "TRIAGE_ARCHIVE": _archive_address(archive), "TRIAGE_SEND_UNVERIFIED_CAD": "1",
        "TRIAGE_DICOM_PORT": str(port)})
    try:
        assert stack.settings.resolved_database_url.startswith("sqlite")
        stack.spawn("serve")
        _listener_up(stack, port)
        uid, files = _send_exam(port, root)
        wait_until(lambda: exam_status(stack.db, uid) == "delivered", 180, "exam delivered",
                   stack.logs)
        yield Delivery(stack, archive, uid, files, port)
    finally:
        stack.close()
        archive.destroy()


def test_embedded_default_delivers_both_srs_and_four_overlays_to_the_archive(
    embedded_delivery: Delivery, tmp_path: Path
) -> None:
    d = embedded_delivery
    assert exam_status(d.stack.db, d.study_uid) == "delivered"
    runs = runs_of(d.stack.db, d.study_uid)
    assert [r.status for r in runs] == ["succeeded"]
    assert runs[0].category == NOT_TRIAGED and not runs[0].verified
    rows = _outbox(d.stack, d.study_uid)
    archived = _archived(d.archive, tmp_path / "archive")
    _assert_archive_holds_the_results(d, rows, archived, Counter({
        OutputKind.SR_TID1500.value: 1, OutputKind.SR_MAMMO_CAD.value: 1,
        OutputKind.SC_OVERLAY.value: 4}))
    assert all(r.attempts == 1 for r in rows)
    assert runs[0].details["cad_sr_sent"] is True


def test_objects_downloaded_from_the_archive_pass_dciodvfy_and_dsr2xml(
    embedded_delivery: Delivery, tmp_path: Path
) -> None:
    if shutil.which("dciodvfy") is None or shutil.which("dsr2xml") is None:
        pytest.fail("dciodvfy (dicom3tools) and dsr2xml (DCMTK) must be installed")
    d = embedded_delivery
    rows = _outbox(d.stack, d.study_uid)
    assert len(rows) == 6
    _assert_valid_dicom(rows, _archived(d.archive, tmp_path / "archive"))


def _saliency_peaks(sr: Dataset,
                    finding: tuple[str, str]) -> dict[str, list[tuple[float, float, float]]]:
    """The SR's saliency-peak POINTs of one finding type: source SOP Instance UID ->
    [(row, column, saliency)], read from the TID 1411 measurement groups."""

    def concept(item: Dataset) -> tuple[str, str]:
        code = item.ConceptNameCodeSequence[0]
        return str(code.CodeValue), str(code.CodingSchemeDesignator)

    def walk(items: list[Dataset]) -> Iterator[Dataset]:
        for item in items:
            yield item
            yield from walk(list(item.get("ContentSequence", [])))

    peaks: dict[str, list[tuple[float, float, float]]] = {}
    for group in walk(list(sr.ContentSequence)):
        if group.ValueType != "CONTAINER" or concept(group) != ("125007", "DCM"):
            continue
        children = list(group.get("ContentSequence", []))
        findings = [(str(c.ConceptCodeSequence[0].CodeValue),
                     str(c.ConceptCodeSequence[0].CodingSchemeDesignator))
                    for c in children if c.ValueType == "CODE" and concept(c) == ("121071", "DCM")]
        points = [c for c in children if c.ValueType == "SCOORD" and c.GraphicType == "POINT"]
        values = [float(c.MeasuredValueSequence[0].NumericValue)
                  for c in children if c.ValueType == "NUM" and concept(c) == SALIENCY]
        if findings != [finding] or len(points) != 1 or len(values) != 1:
            continue
        col, row = (float(v) for v in points[0].GraphicData)
        source = str(points[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        peaks.setdefault(source, []).append((row, col, values[0]))
    return peaks


def _saliency_from_colours(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undo the documented blend (grey, then red at ALPHA_MAX x malignant saliency, then
    green at ALPHA_MAX x benign saliency): (malignant, benign, annotation mask).

    After the two blends B = g(1-a)(1-b), G - B = 255 b and R - B = 255 a (1-b), so both
    saliencies follow from the colours alone. Pixels no blend can produce (the yellow ROI
    boxes and their labels) are the annotation mask.
    """
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    alpha_b = (g - b) / 255.0
    alpha_m = (r - b) / (255.0 * np.clip(1.0 - alpha_b, 1e-6, None))
    annotation = (alpha_b > ALPHA_MAX + 0.02) | (alpha_m > ALPHA_MAX + 0.02) | (alpha_b < -0.02)
    annotation |= alpha_m < -0.02
    kernel = np.ones((5, 5), np.uint8)  # anti-aliased edges around boxes and labels
    annotation = cv2.dilate(annotation.astype(np.uint8), kernel).astype(bool)
    return alpha_m / ALPHA_MAX, alpha_b / ALPHA_MAX, annotation


def test_overlay_from_the_archive_shows_red_over_the_sr_saliency_peak_and_a_legend(
    embedded_delivery: Delivery, tmp_path: Path
) -> None:
    """Each overlay, fetched from Orthanc and rendered to PNG, is the source mammogram in
    grey with the malignant saliency in red exactly where the TID 1500 SR says the peak is,
    and a legend band below it."""
    d = embedded_delivery
    rows = _outbox(d.stack, d.study_uid)
    archived = _archived(d.archive, tmp_path / "archive")
    (sr_row,) = [r for r in rows if r.kind == OutputKind.SR_TID1500.value]
    peaks = _saliency_peaks(pydicom.dcmread(archived[sr_row.sop_instance_uid][1]),
                            MALIGNANT_FINDING)
    sources = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, d.exam_files)}
    overlays = [r for r in rows if r.kind == OutputKind.SC_OVERLAY.value]
    assert len(overlays) == 4 and set(peaks) == set(sources)
    settings = d.stack.settings
    for row in overlays:
        sc = pydicom.dcmread(archived[row.sop_instance_uid][1])
        source = sources[str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert sc.Modality == settings.overlay_modality and sc.BurnedInAnnotation == "YES"
        assert sc.ImageLaterality == source.ImageLaterality
        png = tmp_path / f"overlay-{source.ImageLaterality}-{source.ViewPosition}.png"
        assert cv2.imwrite(str(png), cv2.cvtColor(sc.pixel_array, cv2.COLOR_RGB2BGR))
        read_back = cv2.imread(str(png))
        assert read_back is not None
        picture = cv2.cvtColor(read_back, cv2.COLOR_BGR2RGB)
        assert picture.shape[1] == source.Columns and picture.shape[0] > source.Rows
        image, band = picture[:source.Rows], picture[source.Rows:]

        malignant, benign, annotation = _saliency_from_colours(image)
        # the grey under the tint is the source image, pixel for pixel
        grey = display_gray(source.pixel_array, source).astype(np.float64)
        predicted_blue = grey * (1 - ALPHA_MAX * malignant) * (1 - ALPHA_MAX * benign)
        matches = np.abs(predicted_blue - image[..., 2])[~annotation] <= 3
        assert matches.mean() > 0.99, f"{png.name}: the grey picture is not the source"

        # the red sits over the SR's malignant saliency peak, as strong as the SR says
        ((peak_row, peak_col, peak_value),) = peaks[str(source.SOPInstanceUID)]
        pr, pc = int(peak_row), int(peak_col)  # the pixel holding the POINT
        around = (slice(max(pr - 1, 0), pr + 2), slice(max(pc - 1, 0), pc + 2))
        assert not annotation[around].all(), f"{png.name}: the peak is under an ROI box"
        at_peak = float(np.median(malignant[around][~annotation[around]]))
        assert abs(at_peak - peak_value) <= 0.03, (png.name, at_peak, peak_value)
        assert at_peak >= np.percentile(malignant[~annotation], 99) - 0.03
        red, _, blue = (float(v) for v in image[pr, pc])
        assert red - blue >= 255 * ALPHA_MAX * peak_value * (1 - ALPHA_MAX) - 3
        assert red - grey[pr, pc] != 0 or blue - grey[pr, pc] != 0

        # the legend: text on a black band, with the warning-coloured lines
        assert np.median(band) == 0
        lit = np.count_nonzero(band.max(axis=2) > 60)
        assert lit > 0.01 * band.shape[0] * band.shape[1]
        warning = np.all(np.abs(band.astype(int) - np.array(WARNING_RGB)) < 40, axis=2)
        assert np.count_nonzero(warning) > 0


# ---- one stack per test ---------------------------------------------------------------------
@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    """Stacks a test started; closed (processes stopped by their PIDs) after it."""
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.close()


def _stack(stacks: list[Stack], root: Path, archive: ArchiveServer, port: int,
           **env: str) -> Stack:
    stack = Stack(root, extra_env={"TRIAGE_ARCHIVE": _archive_address(archive),
                                   "TRIAGE_DICOM_PORT": str(port), **env})
    stacks.append(stack)
    return stack


def test_unverified_cad_sr_is_not_sent_without_explicit_permission(
    tmp_path: Path, stacks: list[Stack], archive: ArchiveServer
) -> None:
    port = free_port()
    stack = _stack(stacks, tmp_path / "stack", archive, port)
    assert not stack.settings.send_unverified_cad
    stack.spawn("serve")
    _listener_up(stack, port)
    uid, files = _send_exam(port, tmp_path)
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 180, "exam delivered",
               stack.logs)
    rows = _outbox(stack, uid)
    archived = _archived(archive, tmp_path / "archive")
    delivery = Delivery(stack, archive, uid, files, port)
    _assert_archive_holds_the_results(delivery, rows, archived, Counter({
        OutputKind.SR_TID1500.value: 1, OutputKind.SC_OVERLAY.value: 4}))
    assert MAMMOGRAPHY_CAD_SR not in {tags["SOPClassUID"] for tags, _ in archived.values()}
    assert not list(stack.settings.outputs_dir.rglob(f"{OutputKind.SR_MAMMO_CAD.value}-*"))
    (run,) = runs_of(stack.db, uid)
    assert not run.verified and run.details["cad_sr_sent"] is False


def test_celery_worker_with_postgresql_delivers_results_to_the_archive(
    tmp_path: Path, stacks: list[Stack], archive: ArchiveServer, postgres_url: str,
    redis_server: RedisServer,
) -> None:
    """Production layout: `triage listen` (listener, dispatcher, sender) and a separate
    `triage worker` (Celery on Redis) sharing a PostgreSQL database."""
    if shutil.which("dciodvfy") is None or shutil.which("dsr2xml") is None:
        pytest.fail("dciodvfy (dicom3tools) and dsr2xml (DCMTK) must be installed")
    port = free_port()
    stack = _stack(stacks, tmp_path / "stack", archive, port,
                   TRIAGE_DATABASE_URL=postgres_url, TRIAGE_BROKER_URL=redis_server.url,
                   TRIAGE_SEND_UNVERIFIED_CAD="1")
    assert stack.db.engine.dialect.name == "postgresql"
    stack.spawn("listen")
    stack.spawn("worker")
    _listener_up(stack, port)
    uid, files = _send_exam(port, tmp_path)
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 240, "exam delivered",
               stack.logs)
    assert [r.status for r in runs_of(stack.db, uid)] == ["succeeded"]
    rows = _outbox(stack, uid)
    archived = _archived(archive, tmp_path / "archive")
    _assert_archive_holds_the_results(Delivery(stack, archive, uid, files, port), rows, archived,
                                      Counter({OutputKind.SR_TID1500.value: 1,
                                               OutputKind.SR_MAMMO_CAD.value: 1,
                                               OutputKind.SC_OVERLAY.value: 4}))
    _assert_valid_dicom(rows, archived)


def test_results_pending_while_the_archive_is_down_are_delivered_once_it_returns(
    tmp_path: Path, stacks: list[Stack], archive: ArchiveServer
) -> None:
    port = free_port()
    stack = _stack(stacks, tmp_path / "stack", archive, port, TRIAGE_SEND_UNVERIFIED_CAD="1")
    stack.spawn("serve")
    _listener_up(stack, port)
    archive.stop()
    uid, files = _send_exam(port, tmp_path)

    def retried_twice() -> bool:
        rows = _outbox(stack, uid)
        return bool(rows) and all(r.attempts >= 2 for r in rows)

    wait_until(retried_twice, 180, "two failed delivery attempts", stack.logs)
    pending = _outbox(stack, uid)
    assert exam_status(stack.db, uid) == "scored"
    assert len(pending) == 6
    for row in pending:
        assert row.status == OutboxStatus.PENDING.value and row.sent_at is None
        assert row.last_error and _archive_address(archive) in row.last_error
        assert row.next_attempt_at > row.created_at  # backed off, not due at once

    archive.start()  # same ports, same storage and index directories
    longest_wait = backoff_seconds(max(r.attempts for r in _outbox(stack, uid)) + 1)
    wait_until(lambda: exam_status(stack.db, uid) == "delivered", 60 + longest_wait,
               "exam delivered after the archive returned", stack.logs)
    rows = _outbox(stack, uid)
    assert [r.id for r in rows] == [r.id for r in pending]
    assert all(r.attempts > p.attempts for r, p in zip(rows, pending, strict=True))
    assert all(r.last_error is None and r.last_status_code == 0 for r in rows)
    archived = _archived(archive, tmp_path / "archive")
    _assert_archive_holds_the_results(Delivery(stack, archive, uid, files, port), rows, archived,
                                      Counter({OutputKind.SR_TID1500.value: 1,
                                               OutputKind.SR_MAMMO_CAD.value: 1,
                                               OutputKind.SC_OVERLAY.value: 4}))
    assert [r.status for r in runs_of(stack.db, uid)] == ["succeeded"]


def _stays(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """``predicate`` holds now and keeps holding for ``seconds`` (checked twice a second)."""
    deadline = time.monotonic() + seconds
    while True:
        assert predicate(), what
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def test_outputs_routed_back_by_the_archive_are_loopback_and_never_rescored_or_resent(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    """The site's routing rule sends everything the archive receives to triage, our own
    results included: modality -> Orthanc -> triage -> results -> Orthanc -> triage."""
    port = free_port()
    archive = ArchiveServer(root=tmp_path / "orthanc",
                            modalities={"TRIAGE": ["TRIAGE", "127.0.0.1", port]},
                            forward_to="TRIAGE")
    archive.root.mkdir()
    archive.start()
    try:
        stack = _stack(stacks, tmp_path / "stack", archive, port, TRIAGE_SEND_UNVERIFIED_CAD="1")
        stack.spawn("serve")
        _listener_up(stack, port)
        uid, files = small_exam(tmp_path / "exam")
        sent = storescu(archive.dicom_port, files, called_ae=archive.ae_title)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_until(lambda: exam_status(stack.db, uid) == "delivered", 180, "exam delivered",
                   stack.logs)
        rows = _outbox(stack, uid)
        outputs = {r.sop_instance_uid for r in rows}
        assert len(outputs) == 6

        def instances() -> dict[str, Instance]:
            with stack.db.session() as session:
                found = list(session.scalars(select(Instance)))
                for inst in found:
                    session.expunge(inst)
            return {i.sop_instance_uid: i for i in found}

        wait_until(lambda: outputs <= set(instances()), 60, "our outputs routed back to us",
                   stack.logs)

        def settled() -> bool:
            return (exam_status(stack.db, uid) == "delivered"
                    and [(r.id, r.status, r.attempts) for r in _outbox(stack, uid)]
                    == [(r.id, r.status, r.attempts) for r in rows]
                    and [r.status for r in runs_of(stack.db, uid)] == ["succeeded"])

        # long enough for a re-open to pass the quiet period, be queued and scored
        _stays(settled, 3 * stack.settings.quiet_seconds + 5, "the loop changed the exam")

        received = instances()
        sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                   for f in files}
        assert set(received) == outputs | sources
        for sop in sources:  # the exam itself came through the routing rule
            assert not received[sop].loopback and received[sop].calling_ae == archive.ae_title
        for sop in outputs:
            inst = received[sop]
            assert inst.loopback and not inst.scorable and not inst.chosen, sop
            assert inst.reason and inst.reason.startswith("loopback")
        study = study_row(stack.db, uid)
        assert study.reopen_count == 0
        with stack.db.session() as session:
            events = session.scalars(select(AuditEvent.sop_instance_uid).where(
                AuditEvent.study_id == study.id, AuditEvent.kind == "loopback_received")).all()
            changes = session.scalars(select(StatusChange.to_status).where(
                StatusChange.study_id == study.id).order_by(StatusChange.id)).all()
        assert sorted(e or "" for e in events) == sorted(outputs)
        assert changes == ["receiving", "ready", "queued", "scoring", "scored", "delivered"]

        ids = archive.instance_ids_by_sop()
        assert set(ids) == outputs | sources and all(len(v) == 1 for v in ids.values())
        assert archive.receipts() == Counter(dict.fromkeys(outputs | sources, 1))
    finally:
        archive.destroy()
