"""``GET /metrics``: Prometheus text format, read from the database at scrape time.

Every number comes from the database (and the spool's filesystem) when Prometheus scrapes,
through a custom collector, so one API process reports what every listener and worker
process did, and a restart loses nothing. Each scrape runs a fixed number of aggregate
statements (:func:`triage.db.monitoring.system_status` for exams, queue and outbox, the
same numbers as the dashboard's system page, plus one per table below), each returning a
bounded number of rows.

Metrics:

* ``triage_instances_received_total{image_class}``: stored instance versions (duplicates
  are not stored twice), by image class; ``triage_instances_quarantined_total``: refused
  input kept in quarantine;
* ``triage_exams{status}``: exams in each status; ``triage_queue_depth``: exams ready or
  queued (waiting for a worker);
* ``triage_scoring_seconds{member}``: time each ensemble member took per exam, and
  ``triage_exam_scoring_seconds``: the whole scoring (decode to ensemble), from the timings
  each run records. These are *gauge histograms* of the runs finished in the last
  :data:`TIMING_WINDOW` (at most the :data:`MAX_TIMED_RUNS` newest): their buckets go down
  as runs leave the window, so use them without ``rate()``, e.g.
  ``histogram_quantile(0.95, triage_scoring_seconds_bucket)``;
* ``triage_outbox_backlog{destination}``: objects waiting to be sent,
  ``triage_outbox_failures{destination}``: objects the archive refused (``triage outbox
  retry`` sends them again), ``triage_outbox_oldest_pending_seconds``: age of the oldest
  waiting object (0 when none);
* ``triage_spool_filesystem_{size,free}_bytes``: the filesystem holding the spool, and
  ``triage_spool_stored_bytes``: bytes of the stored instances;
* ``triage_database_up``: 1 when the database answered this scrape (0: the other database
  metrics are missing from it).

The app's authentication middleware asks for a token, as for every path but ``/healthz``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from triage.api.auth import database, settings_of
from triage.config import Settings
from triage.db import Database, Instance, Quarantined, ScoringRun
from triage.db.monitoring import system_status
from triage.vocabulary import ExamStatus, RunStatus

log = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"])

#: scoring-time histograms cover the runs finished this recently ...
TIMING_WINDOW = timedelta(hours=24)
#: ... and at most this many of them (the newest)
MAX_TIMED_RUNS = 5000
#: bucket upper bounds in seconds: a small test member takes well under a second, a DMV-CNN
#: heatmaps member on a CPU minutes
BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_MEMBER_PREFIX, _SUFFIX = "model_", "_s"


def _histogram(values: Sequence[float]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) buckets ending with +Inf, and the sum."""
    buckets = [(f"{bound:g}", float(sum(1 for v in values if v <= bound))) for bound in BUCKETS]
    buckets.append(("+Inf", float(len(values))))
    return buckets, float(sum(values))


def member_timings(timings: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds per member from runs' ``timings`` (``model_<name>_s``; members that share
    their input, e.g. 3D-GMIC members on one DBT volume, are timed together as ``a+b``)."""
    out: dict[str, list[float]] = {}
    for run in timings:
        for key, value in run.items():
            if key.startswith(_MEMBER_PREFIX) and key.endswith(_SUFFIX) and \
                    isinstance(value, int | float):
                out.setdefault(key[len(_MEMBER_PREFIX):-len(_SUFFIX)], []).append(float(value))
    return out


class DatabaseCollector(Collector):
    """The product's metrics, read from ``db`` at each scrape."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db, self.settings = db, settings

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query: metrics are only read at scrape time

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("triage_database_up", "1 when the database answered this scrape")
        try:
            with self.db.session() as session:
                families = list(self._from_database(session, datetime.now(UTC)))
        except SQLAlchemyError as exc:
            log.warning("metrics: database not readable", extra={"error": str(exc)[:500]})
            up.add_metric([], 0.0)
            families = []
        else:
            up.add_metric([], 1.0)
        yield up
        yield from families
        yield from self._filesystem()

    def _from_database(self, session: Session, now: datetime) -> Iterator[Metric]:
        received = CounterMetricFamily("triage_instances_received",
                                       "Stored instance versions, by image class",
                                       labels=["image_class"])
        stored = GaugeMetricFamily("triage_spool_stored_bytes", "Bytes of the stored instances")
        total_bytes = 0
        for image_class, count, size in session.execute(
                select(Instance.image_class, func.count(), func.coalesce(func.sum(Instance.size_bytes), 0))
                .group_by(Instance.image_class)):
            received.add_metric([image_class], float(count))
            total_bytes += int(size)
        stored.add_metric([], float(total_bytes))
        yield received
        yield stored
        quarantined = CounterMetricFamily("triage_instances_quarantined",
                                          "Refused input kept in quarantine")
        quarantined.add_metric([], float(session.scalar(
            select(func.count()).select_from(Quarantined)) or 0))
        yield quarantined

        status = system_status(session, failures=0)
        exams = GaugeMetricFamily("triage_exams", "Exams in each status", labels=["status"])
        for state in ExamStatus:
            exams.add_metric([state.value], float(status.exams_by_status.get(state.value, 0)))
        yield exams
        queue = GaugeMetricFamily("triage_queue_depth", "Exams ready or queued for a worker")
        queue.add_metric([], float(status.queue_depth))
        yield queue
        backlog = GaugeMetricFamily("triage_outbox_backlog", "Objects waiting to be sent",
                                    labels=["destination"])
        failures = GaugeMetricFamily("triage_outbox_failures",
                                     "Objects the archive refused (not retried until "
                                     "`triage outbox retry`)", labels=["destination"])
        oldest = GaugeMetricFamily("triage_outbox_oldest_pending_seconds",
                                   "Age of the oldest object waiting to be sent (0: none)")
        oldest_at = None
        for b in status.backlog:
            backlog.add_metric([b.destination], float(b.pending))
            failures.add_metric([b.destination], float(b.failed))
            if b.oldest_pending is not None and (oldest_at is None or b.oldest_pending < oldest_at):
                oldest_at = b.oldest_pending
        oldest.add_metric([], max(0.0, (now - oldest_at).total_seconds()) if oldest_at else 0.0)
        yield from (backlog, failures, oldest)

        recent: Sequence[dict[str, Any] | None] = session.scalars(
            select(ScoringRun.timings)
            .where(ScoringRun.status == RunStatus.SUCCEEDED.value,
                   ScoringRun.finished_at >= now - TIMING_WINDOW)
            .order_by(ScoringRun.finished_at.desc()).limit(MAX_TIMED_RUNS)).all()
        timings: list[dict[str, Any]] = [dict(t) for t in recent if t]
        members = GaugeHistogramMetricFamily(
            "triage_scoring_seconds", "Seconds each member took per exam, runs finished in the "
            "last 24 h (gauge histogram: no rate())", labels=["member"])
        for member, values in sorted(member_timings(timings).items()):
            buckets, total = _histogram(values)
            members.add_metric([member], buckets, total)
        yield members
        exam = GaugeHistogramMetricFamily(
            "triage_exam_scoring_seconds", "Seconds a whole scoring took, runs finished in the "
            "last 24 h (gauge histogram: no rate())")
        buckets, total = _histogram([float(t["total_s"]) for t in timings
                                     if isinstance(t.get("total_s"), int | float)])
        exam.add_metric([], buckets, total)
        yield exam

    def _filesystem(self) -> Iterator[Metric]:
        spool = self.settings.spool_dir
        where = spool if spool.exists() else self.settings.data_dir
        try:
            usage = shutil.disk_usage(where)
        except OSError:
            return
        size = GaugeMetricFamily("triage_spool_filesystem_size_bytes",
                                 "Size of the filesystem holding the spool")
        size.add_metric([], float(usage.total))
        free = GaugeMetricFamily("triage_spool_filesystem_free_bytes",
                                 "Free space on the filesystem holding the spool")
        free.add_metric([], float(usage.free))
        yield size
        yield free


def render(db: Database, settings: Settings) -> bytes:
    """The metrics in Prometheus text format (a fresh registry: nothing kept between scrapes)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db, settings))
    return generate_latest(registry)


@router.get("/metrics", summary="Prometheus metrics (text format), read at scrape time",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "metrics"}})
def metrics(db: Database = Depends(database), settings: Settings = Depends(settings_of)
            ) -> Response:
    return Response(render(db, settings), media_type=CONTENT_TYPE_LATEST)
