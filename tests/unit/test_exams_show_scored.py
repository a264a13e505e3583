"""`triage exams show` run as the installed command in a subprocess (and `exams list`,
`show --json` in-process) on an exam that went the product's own way: recorded as the
listener records it (calling AE MAMMO_ROOM2), ready after the quiet period, scored by the
embedded pipeline (``process_study``, reduced-resolution test member, demo weights) with the
real output stage, and one sender pass to two archives that are down. Asserts on what an
admin reads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from triage.cli import app
from triage.config import EnsembleMember, Settings, load_settings
from triage.db import Database, RunMember, Score, ScoringRun, Study, create_database
from triage.db.migrate import upgrade
from triage.db.models import utcnow
from triage.delivery import Publisher
from triage.delivery.sender import send_pending
from triage.dicom.classify import classify_instance
from triage.dicom.records import StoredObject
from triage.dicom.spool import dataset_digest
from triage.dispatch import enqueue_ready
from triage.exams import evaluate_readiness, record_instance
from triage.models import ensure_demo_weights
from triage.pipeline import Outcome, load_ensemble, process_study
from triage.synthetic import ExamSpec, generate_exam

MEMBER = "gmic-testing-small"
CALLING_AE = "MAMMO_ROOM2"
TRIAGE = Path(sys.executable).with_name("triage")
runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Scored:
    settings: Settings
    db: Database
    uid: str
    patient_id: str
    patient_name: str
    pacs: str
    vna: str


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Scored:
    tmp = tmp_path_factory.mktemp("scored")
    pacs, vna = f"PACS@127.0.0.1:{_closed_port()}", f"VNA@127.0.0.1:{_closed_port()}"
    settings = load_settings(data_dir=tmp / "data", testing=True, allow_uncalibrated=True,
                             device="cpu", ensemble=[EnsembleMember(name=MEMBER, weight=1.0)],
                             archive=f"{pacs},{vna}", send_unverified=True, quiet_seconds=1)
    settings.prepare_directories()
    ensure_demo_weights(settings, [MEMBER])
    upgrade(settings.resolved_database_url)
    db = create_database(settings.resolved_database_url)
    exam = generate_exam(ExamSpec(seed=3, scale=0.25), tmp / "exam")
    now = utcnow()
    for path in (Path(p) for p in exam.files):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        digest, size = dataset_digest(path)
        stored = StoredObject(path=path, raw_digest=digest, size_bytes=size,
                              transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID))
        with db.session() as session:
            record_instance(session, settings, header, stored,
                            classify_instance(header, settings, now=now),
                            association_id=None, calling_ae=CALLING_AE, now=now)
    first = pydicom.dcmread(exam.files[0], stop_before_pixels=True)
    uid = str(first.StudyInstanceUID)
    evaluate_readiness(db, settings, now + timedelta(seconds=5))
    (study_id,) = enqueue_ready(db, None)
    outcome = process_study(db, load_ensemble(settings), study_id, outputs=Publisher(settings))
    assert outcome is Outcome.SCORED
    send_pending(db, settings)  # both archives are down: a transient error per object
    return Scored(settings, db, uid, str(first.PatientID), str(first.PatientName), pacs, vna)


def _triage(scored: Scored, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env["TRIAGE_DATA_DIR"] = str(scored.settings.data_dir)
    done = subprocess.run([str(TRIAGE), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def test_exams_show_on_a_scored_exam_shows_what_an_admin_needs(scored: Scored) -> None:
    with scored.db.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == scored.uid)).one()
        run = session.scalars(select(ScoringRun).where(ScoringRun.study_id == study.id)).one()
        member = session.scalars(select(RunMember).where(RunMember.run_id == run.id)).one()
        scores = session.scalars(select(Score).where(Score.run_id == run.id)).all()
    out = _triage(scored, "exams", "show", scored.uid).stdout
    lines = out.splitlines()
    assert lines[0] == f"exam {scored.uid}"
    assert "  status         scored" in lines
    assert f"  calling AE     {CALLING_AE}" in lines
    assert "  chosen views   L-CC, L-MLO, R-CC, R-MLO" in lines
    assert "  patient ID     hidden (--patient-id shows it)" in lines
    assert scored.patient_id not in out
    assert scored.patient_name not in out and "SYNTHETIC" not in out

    assert run.exam_score is not None and run.category == "NOT TRIAGED"
    assert f"  run 1 (latest): {run.model_set_version}  succeeded  NOT TRIAGED  " \
           f"score {run.exam_score:.3f}  UNVERIFIED" in out
    assert f"    not triaged: {run.not_triaged_reason}" in lines
    assert (f"      {MEMBER} {member.version}  weight 1  synthetic_demo  "
            f"sha256 {(member.weights_sha256 or '')[:12]}  included") in lines

    table = lines.index(next(ln for ln in lines if ln.strip().startswith("P(malignant)")))
    assert lines[table].split()[1:] == ["L-CC", "L-MLO", "R-CC", "R-MLO", "breast", "L",
                                        "breast", "R", "exam"]
    views = {f"{s.laterality}-{s.view}": s.p_malignant for s in scores
             if s.member == MEMBER and s.level == "view"}
    breasts = {s.laterality: s.p_malignant for s in scores
               if s.member == MEMBER and s.level == "breast"}
    member_row = lines[table + 1].split()
    assert member_row == [MEMBER, *(f"{views[v]:.3f}" for v in ("L-CC", "L-MLO", "R-CC", "R-MLO")),
                          f"{breasts['L']:.3f}", f"{breasts['R']:.3f}", "-"]
    ensemble_row = lines[table + 2].split()
    assert ensemble_row[0] == "ensemble" and ensemble_row[-1] == f"{run.exam_score:.3f}"

    outputs = [n for n, ln in enumerate(lines) if ln.strip().startswith(("sr_", "sc_overlay"))]
    assert [lines[n].split()[0] for n in outputs] == ["sr_tid1500", *["sc_overlay"] * 4]
    for n in outputs:  # each object at each archive: not sent yet, and why
        assert lines[n + 1].split(None, 2)[:2] == ["->", scored.pacs]
        assert lines[n + 1].split(None, 2)[2].startswith(
            f"pending after 1 attempt(s): association aborted by {scored.pacs}")
        assert lines[n + 2].split(None, 2)[:2] == ["->", scored.vna]
        assert lines[n + 2].split(None, 2)[2].startswith("pending after 1 attempt(s): ")
    assert any(ln.startswith("audit events (") for ln in lines)
    history = lines[lines.index("status history:") + 1:lines.index("instances (4):") - 1]
    assert [ln.split("  ")[2] for ln in history] == [
        "- -> receiving", "receiving -> ready", "ready -> queued", "queued -> scoring",
        "scoring -> scored"]


def test_exams_list_and_show_json_on_the_scored_exam(scored: Scored,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The same database through the command in-process (typer's CliRunner): each run of the
    installed command pays the start-up of every command module."""
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(scored.settings.data_dir))
    monkeypatch.delenv("TRIAGE_CONFIG", raising=False)
    listed = runner.invoke(app, ["exams", "list"]).stdout.splitlines()
    line = next(ln for ln in listed if ln.endswith(scored.uid))
    assert line.split()[2:4] == ["scored", "NOT"]  # NOT TRIAGED, then the score
    assert listed[-1] == "1 exam(s)"

    data = json.loads(runner.invoke(app, ["exams", "show", scored.uid, "--json"]).stdout)
    (run,) = data["runs"]
    assert run["latest"] and run["members"][0]["name"] == MEMBER
    assert {d["destination"] for o in run["outputs"] for d in o["deliveries"]} == {
        scored.pacs, scored.vna}
    assert {i["calling_ae"] for i in data["instances"]} == {CALLING_AE}
    assert data["patient_id"] is None and scored.patient_id not in json.dumps(data)
    with_id = json.loads(runner.invoke(app, ["exams", "show", scored.uid, "--json",
                                             "--patient-id"]).stdout)
    assert with_id["patient_id"] == scored.patient_id
