"""Exam assembly on both database backends: SQLite (embedded) and a real PostgreSQL server.

The same record_instance / evaluate_readiness calls must give the same exam states on both,
including under concurrent associations sending the same new exam.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless, generate_uid
from sqlalchemy import func, select

from tests.unit.mg_headers import STANDARD, Site, mg_header, write_instance
from triage.config import Settings, load_settings
from triage.db import Database, Instance, Study, create_database
from triage.db.migrate import upgrade
from triage.dicom.associations import close_association, open_association
from triage.dicom.records import IngestOutcome
from triage.vocabulary import ExamStatus

T0 = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
QUIET = timedelta(seconds=2)
AFTER_MAX_WAIT = timedelta(seconds=6)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Database]:
    if request.param == "sqlite":
        url = settings.resolved_database_url
    else:
        url = str(request.getfixturevalue("postgres_url"))
    upgrade(url)
    db = create_database(url)
    yield db
    db.dispose()


@pytest.fixture
def site(backend: Database, settings: Settings, tmp_path: Path) -> Site:
    return Site(backend, settings, tmp_path / "spool")


def test_exam_lifecycle_is_the_same_on_both_backends(site: Site) -> None:
    with site.db.session() as session:
        assoc = open_association(session, calling_ae="MOD", called_ae="TRIAGE",
                                 peer_address="127.0.0.1", peer_port=5, now=T0)
    study_uid = generate_uid()
    for lat, view in STANDARD:
        outcome = site.send(mg_header(lat, view, study_uid=study_uid), T0, association_id=assoc)
    study_id = outcome.study_id
    assert site.readiness(T0 + QUIET) == []  # association still open
    with site.db.session() as session:
        close_association(session, assoc, "released", now=T0 + QUIET)
    assert site.readiness(T0 + QUIET) == [study_id]
    assert site.study(study_id).status == ExamStatus.READY
    site.move(study_id, ExamStatus.QUEUED, ExamStatus.SCORING, ExamStatus.SCORED, at=T0 + QUIET)
    late = T0 + timedelta(hours=1)
    assert site.send(mg_header("L", "CC", study_uid=study_uid), late).reopened
    assert site.readiness(late + QUIET) == [study_id]
    assert site.study(study_id).reopen_count == 1


def test_duplicates_and_versions_on_both_backends(site: Site) -> None:
    ds = mg_header("R", "CC")
    pixels = np.random.default_rng(1).integers(0, 4096, (16, 16)).astype(np.uint16)
    first = site.send(ds, T0, pixels=pixels)
    assert site.send(ds, T0, pixels=pixels, transfer_syntax=RLELossless).duplicate
    changed = site.send(ds, T0, pixels=pixels + 1)
    assert changed.new_version
    rows = site.instances(first.study_id)
    assert [(r.version, r.superseded, r.chosen) for r in rows] == [(1, True, False),
                                                                   (2, False, True)]


def test_skip_partial_and_pending_change_on_both_backends(site: Site) -> None:
    _, skipped = site.send_exam(T0, views=(("L", "CC"),), sop_class="1.2.840.10008.5.1.4.1.1.2",
                                modality="CT")
    study_uid, partial = site.send_exam(T0, views=(("R", "CC"), ("R", "MLO")))
    changed = site.readiness(T0 + QUIET)
    assert changed == [skipped[0].study_id]
    assert site.readiness(T0 + AFTER_MAX_WAIT) == [partial[0].study_id]
    assert site.study(partial[0].study_id).partial
    site.move(partial[0].study_id, ExamStatus.QUEUED, at=T0 + AFTER_MAX_WAIT)
    late = T0 + timedelta(minutes=5)
    site.send(mg_header("L", "CC", study_uid=study_uid), late)
    site.move(partial[0].study_id, ExamStatus.SCORING, ExamStatus.SCORED, at=late)
    assert site.readiness(late) == [partial[0].study_id]
    assert site.study(partial[0].study_id).status == ExamStatus.RECEIVING


def test_accession_grouping_on_both_backends(site: Site) -> None:
    grouped = load_settings(data_dir=site.settings.data_dir, quiet_seconds=1,
                            max_wait_seconds=5, group_by="accession")
    by_accession = Site(site.db, grouped, site.spool)
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "H_1%"  # LIKE wildcards in the key must not match others
    _, a = by_accession.send_exam(T0, views=STANDARD[:2], accession="A_1",
                                  IssuerOfAccessionNumberSequence=Sequence([issuer]))
    _, b = by_accession.send_exam(T0, views=STANDARD[2:], accession="A_1",
                                  IssuerOfAccessionNumberSequence=Sequence([issuer]))
    _, c = by_accession.send_exam(T0, views=STANDARD[:1], accession="AB1")
    assert a[0].study_id == b[0].study_id != c[0].study_id
    assert by_accession.readiness(T0 + QUIET) == [a[0].study_id]


def test_concurrent_associations_sending_one_new_exam_create_it_once(site: Site) -> None:
    study_uid = generate_uid()
    headers = [mg_header(lat, view, study_uid=study_uid) for lat, view in STANDARD]
    duplicate_source = headers[0]
    stored = write_instance(duplicate_source, site.spool)
    jobs: list[tuple[Dataset, object]] = [(h, None) for h in headers[1:]]
    jobs += [(duplicate_source, stored)] * 3  # one instance sent by three associations at once
    barrier = threading.Barrier(len(jobs))
    outcomes: list[IngestOutcome] = []
    errors: list[BaseException] = []

    def send(ds: Dataset, stored_object: object) -> None:
        try:
            barrier.wait()
            outcomes.append(site.send(ds, T0, stored=stored_object))  # type: ignore[arg-type]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sum(o.duplicate for o in outcomes) == 2
    with site.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Study)) == 1
        assert session.scalar(select(func.count()).select_from(Instance)) == 4
    assert site.readiness(T0 + QUIET) == [outcomes[0].study_id]
