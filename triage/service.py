"""Running components of the product together in one process.

``Services`` starts what a process should run, in data-flow order, and stops it in reverse:

* the DICOM listener (receives, stores, assembles; its timer applies the readiness rules);
* the dispatcher: ready exams -> queued -> broker (Celery) after the commit, plus the
  reconciler (one at a time, DB lease) that re-sends stuck exams;
* the embedded worker when no broker is configured (the embedded default);
* the outbox sender (one at a time, DB lease);
* the HTTP API (uvicorn in a thread, on TRIAGE_API_HOST:TRIAGE_API_PORT; started first so a
  port in use stops start-up before any exam is accepted, stopped last).

`triage serve` runs all of them; `triage listen` runs all but the embedded worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from triage.config import Settings
from triage.db import Database
from triage.delivery import OutboxSender, Publisher
from triage.dispatch import EmbeddedWorker, enqueue_ready, holder_id, reconcile
from triage.pipeline import Ensemble, load_ensemble

log = logging.getLogger(__name__)

class Dispatcher(threading.Thread):
    """Enqueue ready exams after commit (Celery mode) and reconcile, every second."""

    def __init__(self, db: Database, settings: Settings,
                 enqueue: Callable[[int], None] | None) -> None:
        super().__init__(name="dispatcher", daemon=True)
        self.db, self.settings, self.enqueue = db, settings, enqueue
        self.stop_event = threading.Event()
        self.holder = holder_id()

    def stop(self) -> None:
        self.stop_event.set()

    def tick(self) -> None:
        if self.enqueue is not None:
            enqueue_ready(self.db, self.enqueue)
            reconcile(self.db, self.settings, self.enqueue,
                      requeue_after=self.settings.requeue_after_seconds,
                      holder=self.holder)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("dispatcher pass failed; retrying")
            self.stop_event.wait(1.0)


@dataclass
class Services:
    """The components one process runs; ``start`` then ``stop``."""

    settings: Settings
    db: Database
    embedded_worker: bool
    listener: object | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    serve_api: bool = True
    api: object | None = None  # the ApiServer while it runs

    def start(self, ensemble: Ensemble | None = None) -> None:
        """Start the components; ``ensemble`` (already loaded) is reused by the embedded worker."""
        from triage.dicom.listener import Listener
        from triage.exams import evaluate_readiness, record_instance

        settings, db = self.settings, self.db
        if self.serve_api:
            from triage.api.server import ApiServer

            api = ApiServer(settings, db)
            api.start()
            self.api = api
        enqueue = None
        if settings.broker_url:
            from workers.celery_app import enqueue_function, make_celery

            enqueue = enqueue_function(make_celery(settings))
        listener = Listener(settings, db, record=record_instance, evaluate=evaluate_readiness)
        listener.start()
        self.listener = listener
        self.threads = [Dispatcher(db, settings, enqueue), OutboxSender(db, settings)]
        if self.embedded_worker and not settings.broker_url:
            self.threads.append(EmbeddedWorker(db, lambda: ensemble or load_ensemble(settings),
                                               outputs=Publisher(settings)))
        for thread in self.threads:
            thread.start()
        log.info("services started", extra={"threads": [t.name for t in self.threads],
                                            "broker": bool(settings.broker_url)})

    @property
    def address(self) -> tuple[str, int]:
        from triage.dicom.listener import Listener

        assert isinstance(self.listener, Listener)
        return self.listener.address

    @property
    def api_url(self) -> str | None:
        """``http://host:port`` of the API, None when this process does not serve it."""
        from triage.api.server import ApiServer

        return self.api.url if isinstance(self.api, ApiServer) else None

    def stop(self) -> None:
        for thread in reversed(self.threads):
            getattr(thread, "stop")()  # noqa: B009
        for thread in reversed(self.threads):
            thread.join(timeout=30)
        if self.listener is not None:
            getattr(self.listener, "stop")()  # noqa: B009
        if self.api is not None:
            getattr(self.api, "stop")()  # noqa: B009
        log.info("services stopped")
