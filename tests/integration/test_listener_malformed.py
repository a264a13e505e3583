"""Broken input: the documented status, the bytes in quarantine, and the listener keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.integration.listener_helpers import (
    ListenerProcess,
    encode_data_set,
    image_dataset,
    malformed_corpus,
    running_listener,
    send_raw,
    storescu,
    write_received_file,
)
from triage.db import Instance, Quarantined
from triage.dicom.sender import SendOutcome
from triage.dicom.spool import sidecar_path

pytestmark = pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK not installed")


def test_malformed_corpus_is_answered_and_quarantined_and_a_valid_exam_follows(
        tmp_path: Path) -> None:
    corpus = malformed_corpus()
    files = [write_received_file(tmp_path / f"{b.name}.dcm", b.data_set, sop_class=b.sop_class,
                                 sop_instance=b.sop_instance, transfer_syntax=b.transfer_syntax)
             for b in corpus]
    with running_listener(tmp_path / "data") as listener:
        results = send_raw(files, listener.destination())
        for broken, result in zip(corpus, results, strict=True):
            assert result.status == broken.expected_status, (broken.name, result.message)
        assert all(r.outcome is SendOutcome.PERMANENT for r in results)

        db = listener.database()
        with db.session() as session:
            rows = session.scalars(select(Quarantined).order_by(Quarantined.id)).all()
            assert session.scalars(select(Instance)).all() == []
        db.dispose()
        assert sorted(r.status_code for r in rows) == sorted(b.expected_status for b in corpus)
        by_instance = {r.sop_instance_uid: r for r in rows}
        for broken, sent_file in zip(corpus, files, strict=True):
            row = by_instance[broken.sop_instance]
            kept = Path(row.path)
            assert kept.parent == listener.data_dir / "quarantine"
            # the quarantined file holds the data set bytes exactly as they arrived
            assert kept.read_bytes().endswith(broken.data_set)
            assert sent_file.read_bytes().endswith(broken.data_set)
            sidecar = json.loads(sidecar_path(kept).read_text())
            assert sidecar["status_code"] == broken.expected_status
            assert sidecar["calling_ae"] == row.calling_ae == "RAWSCU"
            assert sidecar["peer_address"] == row.peer_address == "127.0.0.1"
            assert sidecar["reason"] == row.reason and sidecar["received_at_utc"]
            assert sidecar["requested_sop_instance_uid"] == broken.sop_instance

        # still serving: a valid object right after, from storescu
        ds = image_dataset(64, 48)
        good = write_received_file(tmp_path / "good.dcm", encode_data_set(ds),
                                   sop_class=str(ds.SOPClassUID),
                                   sop_instance=str(ds.SOPInstanceUID))
        sent = storescu(listener.port, [good])
        assert sent.returncode == 0 and "Store Response (Success)" in sent.stderr
        assert listener.proc is not None and listener.proc.poll() is None
        records = listener.log_records()
        refused = [r for r in records if r.get("msg") == "input refused and quarantined"]
        assert len(refused) == len(corpus)
        assert all(r.get("sop_instance_uid") for r in refused)
        assert not any(r.get("level") == "error" and "Traceback" in r.get("exc", "")
                       for r in records)


def test_wrong_called_ae_and_unknown_calling_ae_are_refused_and_logged(tmp_path: Path) -> None:
    ds = image_dataset(8, 8)
    path = write_received_file(tmp_path / "one.dcm", encode_data_set(ds),
                               sop_class=str(ds.SOPClassUID), sop_instance=str(ds.SOPInstanceUID))
    # ECHOSCU is the calling AE the helper checks readiness with
    listener = ListenerProcess(tmp_path / "data",
                               env={"TRIAGE_ALLOWED_CALLING_AETS": "MODALITY1,ECHOSCU"})
    listener.start()
    try:
        wrong_called = storescu(listener.port, [path], called_ae="SOMEONEELSE",
                                calling_ae="MODALITY1")
        unknown_calling = storescu(listener.port, [path], calling_ae="INTRUDER")
        allowed = storescu(listener.port, [path], calling_ae="MODALITY1")
    finally:
        listener.stop()
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stderr
    assert unknown_calling.returncode != 0 and "Calling AE Title Not Recognized" in \
        unknown_calling.stderr
    assert allowed.returncode == 0 and "Store Response (Success)" in allowed.stderr
    rejected = [r for r in listener.log_records()
                if str(r.get("msg", "")).startswith("association rejected")]
    assert {(r["calling_ae"], r["called_ae"]) for r in rejected} == {
        ("MODALITY1", "SOMEONEELSE"), ("INTRUDER", "TRIAGE")}
    assert all(r["peer_address"] == "127.0.0.1" and r["peer_port"] > 0 for r in rejected)
