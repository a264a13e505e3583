"""The DICOM listener: a Storage SCP (pynetdicom 3) that never loses an image.

Per C-STORE (``IngestService.store``), in this order:

1. the data set arrives straight into ``spool/tmp`` (``ReceiveFile``: never whole in
   memory, sha256 computed on the way); if the disk could not take it -> ``0xA700``;
2. structural checks (``triage.dicom.validate``); refused input is moved to the quarantine
   with a JSON sidecar and a ``Quarantined`` row, and the status documented in ``validate``
   is answered (``0xA900`` / ``0xC000`` / ``0xC001`` / ``0xC002``); if even that cannot be
   kept -> ``0xA700``;
3. ``classify_instance`` on the header (read with ``stop_before_pixels``);
4. ``Spool.keep``: fsync, rename to the final path, fsync the directory;
5. the bound store handler (``record``: the service binds ``triage.exams.record_instance``)
   and commit; if the database fails -> ``0xA700`` (the new spool file is
   removed when the failure came before the commit; kept if the commit itself failed, since
   then the row may exist);
6. an identical duplicate's new spool file is removed (only after the commit said so);
7. ``0x0000``.

Any unexpected error answers ``0xA700`` (the sender keeps the image and retries) and is
logged with the UIDs; a handler never raises. Associations are recorded on accept and
closed on release/abort/close (retried each second while the database is down); at start-up
associations still marked open and temp files left by a previous process are cleaned up.
A timer thread runs the bound readiness rules (``evaluate``) every second.

pynetdicom's receive-to-file mode (``_config.STORE_RECV_CHUNKED_DATASET``) writes into a
``NamedTemporaryFile`` created in ``pynetdicom.dimse_messages``; the listener points that
name at its ``ReceiveRegistry`` while it runs (and restores it on stop), so received bytes
land in the spool's file system, are hashed while written, and a full disk becomes a status
instead of a dead association. One listener per process.
"""

from __future__ import annotations

import logging
import os
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import pynetdicom
import pynetdicom.dimse_messages
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association as PynetdicomAssociation
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BreastProjectionXRayImageStorageForPresentation,
    BreastProjectionXRayImageStorageForProcessing,
    BreastTomosynthesisImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    Verification,
)
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)
from sqlalchemy.orm import Session

from triage.config import Settings
from triage.db import Quarantined
from triage.db.session import Database
from triage.dicom import associations
from triage.dicom.classify import Classification, classify_instance
from triage.dicom.records import EvaluateReadiness, RecordInstance, StoredObject
from triage.dicom.spool import ReceiveRegistry, Spool, dataset_digest, sidecar_path
from triage.dicom.validate import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    CheckedObject,
    RejectedInput,
    check_received_file,
)
from triage.errors import ConfigError

log = logging.getLogger(__name__)

#: What we accept, in no particular order: the sender's preference decides (PS3.8 9.3.2.2).
STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (lossless only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossless or lossy)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, process 14 SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (secondary captures)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)
MAMMOGRAPHY_SOP_CLASSES: tuple[str, ...] = (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    BreastTomosynthesisImageStorage,
    BreastProjectionXRayImageStorageForPresentation,
    BreastProjectionXRayImageStorageForProcessing,
)
#: advertised when ``TRIAGE_MAX_PDU_SIZE`` is 0: large enough that per-PDU handling costs
#: little (DCMTK sends at most 128 KiB anyway), small enough that a sender honouring it
#: never makes us hold much of an object in memory ("unlimited" would invite a 1 GB PDU)
LISTEN_MAX_PDU = 1 << 20
TICK_SECONDS = 1.0
TICK_ERROR_EVERY = 60.0
MAX_ASSOCIATIONS = 32


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows, mammography ones first (no duplicates)."""
    seen: dict[str, None] = dict.fromkeys(str(u) for u in MAMMOGRAPHY_SOP_CLASSES)
    for context in AllStoragePresentationContexts:
        seen.setdefault(str(context.abstract_syntax), None)
    return list(seen)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoreRequest:
    """One received C-STORE data set, sitting in a temp file, and who sent it."""

    path: Path  # temp file: pynetdicom's file meta group + the data set bytes as sent
    sop_class_uid: str  # from the C-STORE request (= the negotiated abstract syntax)
    sop_instance_uid: str
    transfer_syntax_uid: str  # the accepted presentation context's
    calling_ae: str
    peer_address: str
    peer_port: int
    association_id: int | None
    digest: str | None = None  # sha256 after the meta group; None = compute from the file
    size_bytes: int | None = None
    write_error: OSError | None = None  # the bytes could not all be written


class Sessions(Protocol):
    """What the ingest needs from ``Database``: a session factory (``db.sessions``)."""

    def __call__(self) -> Session: ...


ClassifyFn = Callable[[Dataset, Settings], Classification]


class IngestService:
    """Turns a received temp file into a kept instance (or a quarantined one) and a status."""

    def __init__(self, settings: Settings, sessions: Sessions, spool: Spool, *,
                 record: RecordInstance,
                 classify: ClassifyFn = classify_instance,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self.settings = settings
        self.sessions = sessions
        self.spool = spool
        self.classify = classify
        self.record = record
        self.clock = clock

    def store(self, request: StoreRequest) -> int:
        """The status to answer; never raises."""
        try:
            return self._store(request)
        except Exception:
            log.exception("C-STORE could not be handled; answering out of resources",
                          extra=self._extra(request))
            self.spool.discard(request.path)
            return STATUS_OUT_OF_RESOURCES

    @staticmethod
    def _extra(request: StoreRequest, **more: Any) -> dict[str, Any]:
        return {"sop_instance_uid": request.sop_instance_uid,
                "sop_class_uid": request.sop_class_uid, "calling_ae": request.calling_ae,
                "peer_address": request.peer_address, **more}

    def _store(self, request: StoreRequest) -> int:
        if request.write_error is not None:
            log.error("received bytes could not be written (%s); answering out of resources",
                      request.write_error.strerror or request.write_error,
                      extra=self._extra(request))
            self.spool.discard(request.path)
            return STATUS_OUT_OF_RESOURCES
        try:
            checked = check_received_file(
                request.path, transfer_syntax_uid=request.transfer_syntax_uid,
                affected_sop_class_uid=request.sop_class_uid,
                affected_sop_instance_uid=request.sop_instance_uid)
        except RejectedInput as rejected:
            return self._quarantine(request, rejected)
        classification = self.classify(checked.header, self.settings)
        return self._keep(request, checked, classification)

    def _keep(self, request: StoreRequest, checked: CheckedObject,
              classification: Classification) -> int:
        digest, size = request.digest, request.size_bytes
        if digest is None or size is None:
            digest, _ = dataset_digest(request.path)
            size = request.path.stat().st_size
        final = self.spool.final_path(checked.study_instance_uid, checked.sop_instance_uid,
                                      digest)
        extra = self._extra(request, study_instance_uid=checked.study_instance_uid)
        try:
            self.spool.keep(request.path, final)
        except OSError as exc:
            log.error("cannot keep received bytes on disk (%s); answering out of resources",
                      exc.strerror or exc, extra=extra)
            self.spool.discard(request.path)
            self.spool.discard(final)
            return STATUS_OUT_OF_RESOURCES
        stored = StoredObject(path=final, raw_digest=digest, size_bytes=size,
                              transfer_syntax_uid=checked.transfer_syntax_uid)
        session = self.sessions()
        try:
            try:
                outcome = self.record(session, self.settings, checked.header, stored,
                                      classification, association_id=request.association_id,
                                      calling_ae=request.calling_ae, now=self.clock())
            except Exception as exc:
                session.rollback()
                log.error("cannot record the instance (%s); answering out of resources",
                          exc, extra=extra)
                self.spool.discard(final)
                return STATUS_OUT_OF_RESOURCES
            try:
                session.commit()
            except Exception as exc:
                session.rollback()
                # the commit may have reached the database: keep the file the row may name
                log.error("commit failed (%s); answering out of resources, spool file kept",
                          exc, extra=dict(extra, spool_path=str(final)))
                return STATUS_OUT_OF_RESOURCES
        finally:
            session.close()
        if outcome.duplicate:
            self.spool.discard(final)
        log.info("instance stored", extra=dict(
            extra, duplicate=outcome.duplicate, new_version=outcome.new_version,
            reopened=outcome.reopened, study_id=outcome.study_id,
            image_class=classification.image_class.value, scorable=classification.scorable,
            transfer_syntax_uid=checked.transfer_syntax_uid, bytes=size))
        return STATUS_SUCCESS

    def _quarantine(self, request: StoreRequest, rejected: RejectedInput) -> int:
        now = self.clock()
        uids = rejected.uids
        size = request.size_bytes if request.size_bytes is not None else \
            request.path.stat().st_size
        sidecar = {
            "reason": rejected.reason,
            "status": f"0x{rejected.status:04X}",
            "status_code": rejected.status,
            "calling_ae": request.calling_ae,
            "peer_address": request.peer_address,
            "peer_port": request.peer_port,
            "received_at_utc": now.astimezone(UTC).isoformat(),
            "transfer_syntax_uid": request.transfer_syntax_uid,
            "requested_sop_class_uid": request.sop_class_uid,
            "requested_sop_instance_uid": request.sop_instance_uid,
            "uids_in_data_set": uids,
            "size_bytes": size,
            "association_id": request.association_id,
        }
        extra = self._extra(request, status=f"0x{rejected.status:04X}", reason=rejected.reason,
                            study_instance_uid=uids.get("StudyInstanceUID"))
        try:
            target = self.spool.quarantine(request.path, sidecar)
        except OSError as exc:
            log.error("refused input cannot be quarantined (%s); answering out of resources",
                      exc.strerror or exc, extra=extra)
            self.spool.discard(request.path)
            return STATUS_OUT_OF_RESOURCES
        session = self.sessions()
        try:
            session.add(Quarantined(
                path=str(target), reason=rejected.reason, status_code=rejected.status,
                calling_ae=request.calling_ae[:16], peer_address=request.peer_address[:64],
                sop_class_uid=(uids.get("SOPClassUID") or request.sop_class_uid)[:64],
                sop_instance_uid=(uids.get("SOPInstanceUID") or request.sop_instance_uid)[:64],
                study_instance_uid=uids.get("StudyInstanceUID"), size_bytes=size,
                received_at=now))
            session.commit()
        except Exception as exc:
            session.rollback()
            log.error("quarantine row cannot be written (%s); answering out of resources",
                      exc, extra=extra)
            self.spool.discard(target)
            self.spool.discard(sidecar_path(target))
            return STATUS_OUT_OF_RESOURCES
        finally:
            session.close()
        log.warning("input refused and quarantined", extra=dict(extra, path=str(target)))
        return rejected.status


# ---- pynetdicom glue --------------------------------------------------------------------------
_hook_lock = threading.Lock()
_hook_owner: ReceiveRegistry | None = None
_original_temp_factory: Any = None


def _install_receive_hook(registry: ReceiveRegistry) -> None:
    global _hook_owner, _original_temp_factory
    module = pynetdicom.dimse_messages
    if not hasattr(module, "NamedTemporaryFile"):
        raise ConfigError(
            f"pynetdicom {pynetdicom.__version__} no longer receives data sets through "
            "dimse_messages.NamedTemporaryFile; install a pynetdicom 3.0.x release")
    with _hook_lock:
        if _hook_owner is not None:
            raise ConfigError("a DICOM listener is already running in this process")
        _original_temp_factory = module.NamedTemporaryFile
        module.NamedTemporaryFile = registry.create  # type: ignore[assignment]
        _config.STORE_RECV_CHUNKED_DATASET = True
        _hook_owner = registry


def _remove_receive_hook(registry: ReceiveRegistry) -> None:
    global _hook_owner
    with _hook_lock:
        if _hook_owner is registry:
            pynetdicom.dimse_messages.NamedTemporaryFile = (  # type: ignore[attr-defined]
                _original_temp_factory)
            _config.STORE_RECV_CHUNKED_DATASET = False
            _hook_owner = None


class _StreamingSocket(AssociationSocket):
    """pynetdicom's association socket, reading each PDU with few large ``recv_into`` calls.

    The stock ``recv`` gathers a PDU 4 KiB at a time into a growing bytearray; for a 27 MB
    mammogram that is thousands of system calls and copies per image, and it was the
    largest single cost of receiving. Same contract: return ``nr_bytes`` bytes, or fewer
    if the peer closed the connection.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:
                view.release()
                del buffer[received:]
                return buffer
            received += count
        view.release()
        return buffer


class _RequestHandler(RequestHandler):
    """Gives each accepted association a ``_StreamingSocket``."""

    def _create_association(self) -> PynetdicomAssociation:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        if type(sock) is AssociationSocket:  # same object and state, faster recv
            sock.__class__ = _StreamingSocket
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, started by us rather than by ``AE.start_server``."""

    def shutdown(self) -> None:
        socketserver.BaseServer.shutdown(self)  # stop serve_forever
        self.server_close()


class Listener:
    """The Storage SCP with its association bookkeeping and readiness timer."""

    def __init__(self, settings: Settings, db: Database, *,
                 record: RecordInstance, evaluate: EvaluateReadiness,
                 ingest: IngestService | None = None,
                 tick_seconds: float = TICK_SECONDS) -> None:
        self.settings = settings
        self.db = db
        self.spool = Spool(settings.spool_dir, settings.quarantine_dir)
        self.registry = ReceiveRegistry(self.spool.tmp_dir)
        self.ingest = ingest or IngestService(settings, db.sessions, self.spool, record=record)
        self.evaluate = evaluate
        self.tick_seconds = tick_seconds
        self._associations: dict[PynetdicomAssociation, int | None] = {}
        self._pending_closes: list[tuple[int, str, datetime]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._server: Any = None
        self._tick_errors: dict[str, float] = {}

    # ---- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Clean up after a previous process, then accept associations (non-blocking)."""
        self.spool.prepare()
        self.spool.remove_stale_temp_files()
        self._close_stale_associations()
        _install_receive_hook(self.registry)
        try:
            ae = self._application_entity()
            self._server = ae.make_server(
                (self.settings.dicom_host, self.settings.dicom_port),
                server_class=_Server, request_handler=_RequestHandler,
                evt_handlers=[
                    (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_RELEASED, self._on_released),
                    (evt.EVT_ABORTED, self._on_aborted),
                    (evt.EVT_CONN_CLOSE, self._on_connection_closed),
                ])
            threading.Thread(target=self._server.serve_forever, name="triage-listener-accept",
                             daemon=True).start()
        except Exception:
            _remove_receive_hook(self.registry)
            raise
        self._stop.clear()
        self._timer = threading.Thread(target=self._run_timer, name="triage-listener-timer",
                                       daemon=True)
        self._timer.start()
        host, port = self.address
        log.info("DICOM listener accepting associations", extra={
            "ae_title": self.settings.ae_title, "host": host, "port": port,
            "max_pdu_size": self.settings.max_pdu_size or LISTEN_MAX_PDU,
            "allowed_calling_aets": list(self.settings.allowed_calling_aets)})

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            return self.settings.dicom_host, self.settings.dicom_port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            for assoc in self._server.ae.active_associations:
                assoc.abort()
            self._server = None
        if self._timer is not None:
            self._timer.join(timeout=10)
            self._timer = None
        self._tick()  # close what the shutdown ended
        _remove_receive_hook(self.registry)
        log.info("DICOM listener stopped")

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = self.settings.max_pdu_size or LISTEN_MAX_PDU
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.settings.allowed_calling_aets)
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, list(STORAGE_TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, list(STORAGE_TRANSFER_SYNTAXES[:4]))
        return ae

    # ---- timer --------------------------------------------------------------------------
    def _run_timer(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            self._tick()

    def _tick(self) -> None:
        """Readiness, pending association closes, partial files of dead associations."""
        for what, step in (("readiness evaluation", self._evaluate_readiness),
                           ("association close retry", self._retry_pending_closes),
                           ("partial file clean-up", self.registry.reap)):
            try:
                step()
            except Exception as exc:
                self._tick_failed(what, exc)

    def _evaluate_readiness(self) -> None:
        self.evaluate(self.db, self.settings, _utcnow())

    def _tick_failed(self, what: str, exc: Exception) -> None:
        """Log every failing timer step: as an error at once and then at most every
        ``TICK_ERROR_EVERY`` seconds while it keeps failing, at debug level in between."""
        now = time.monotonic()
        if now - self._tick_errors.get(what, -TICK_ERROR_EVERY) >= TICK_ERROR_EVERY:
            self._tick_errors[what] = now
            log.error("%s failed (retried every %.0f s): %s", what, self.tick_seconds, exc)
        else:
            log.debug("%s failed again: %s", what, exc)

    # ---- associations -------------------------------------------------------------------
    def _close_stale_associations(self) -> None:
        try:
            with self.db.session() as session:
                closed = associations.close_stale_associations(session, "listener restarted")
            if closed:
                log.warning("closed associations left open by a previous listener",
                            extra={"count": closed})
        except Exception as exc:
            log.error("cannot close stale associations at start-up (%s); exams they sent "
                      "wait for the maximum wait instead", exc)

    @staticmethod
    def _peer(assoc: PynetdicomAssociation) -> dict[str, Any]:
        requestor = assoc.requestor
        return {"calling_ae": str(requestor.ae_title).strip(),
                "peer_address": str(requestor.address), "peer_port": int(requestor.port or 0)}

    def _open_row(self, assoc: PynetdicomAssociation) -> int | None:
        peer = self._peer(assoc)
        try:
            with self.db.session() as session:
                return associations.open_association(
                    session, calling_ae=peer["calling_ae"], called_ae=self.settings.ae_title,
                    peer_address=peer["peer_address"], peer_port=peer["peer_port"],
                    now=_utcnow())
        except Exception as exc:
            log.error("cannot record the association (%s); retried at its first C-STORE",
                      exc, extra=peer)
            return None

    def _association_id(self, assoc: PynetdicomAssociation) -> int | None:
        with self._lock:
            known = assoc in self._associations
            association_id = self._associations.get(assoc)
        if association_id is None and known:
            association_id = self._open_row(assoc)
            if association_id is not None:
                with self._lock:
                    self._associations[assoc] = association_id
        return association_id

    def _on_accepted(self, event: evt.Event) -> None:
        try:
            association_id = self._open_row(event.assoc)
            with self._lock:
                self._associations[event.assoc] = association_id
            log.info("association accepted",
                     extra=dict(self._peer(event.assoc), association_id=association_id))
        except Exception:
            log.exception("association accept bookkeeping failed")

    def _on_rejected(self, event: evt.Event) -> None:
        try:
            peer = self._peer(event.assoc)
            primitive = event.assoc.requestor.primitive
            called = str(getattr(primitive, "called_ae_title", "") or "").strip()
            allowed = self.settings.allowed_calling_aets
            if called != self.settings.ae_title:
                reason = f"called AE title {called!r} is not ours ({self.settings.ae_title!r})"
            elif allowed and peer["calling_ae"] not in allowed:
                reason = f"calling AE title {peer['calling_ae']!r} is not allowed"
            else:
                reason = "too many associations at once"
            log.warning("association rejected: %s", reason,
                        extra=dict(peer, called_ae=called, reason=reason))
        except Exception:
            log.exception("association rejection logging failed")

    def _on_released(self, event: evt.Event) -> None:
        self._end(event.assoc, "released")

    def _on_aborted(self, event: evt.Event) -> None:
        self._end(event.assoc, "aborted")

    def _on_connection_closed(self, event: evt.Event) -> None:
        self._end(event.assoc, "connection closed")

    def _end(self, assoc: PynetdicomAssociation, reason: str) -> None:
        try:
            with self._lock:
                if assoc not in self._associations:
                    return
                association_id = self._associations.pop(assoc)
            if association_id is None:
                return
            now = _utcnow()
            try:
                with self.db.session() as session:
                    associations.close_association(session, association_id, reason, now=now)
            except Exception as exc:
                log.error("cannot record the end of association %s (%s); retrying",
                          association_id, exc)
                with self._lock:
                    self._pending_closes.append((association_id, reason, now))
            log.info("association ended", extra=dict(
                self._peer(assoc), association_id=association_id, reason=reason))
        except Exception:
            log.exception("association end bookkeeping failed")

    def _retry_pending_closes(self) -> None:
        with self._lock:
            pending, self._pending_closes = self._pending_closes, []
        for index, (association_id, reason, at) in enumerate(pending):
            try:
                with self.db.session() as session:
                    associations.close_association(session, association_id, reason, now=at)
            except Exception:
                with self._lock:
                    self._pending_closes.extend(pending[index:])
                raise

    # ---- DIMSE --------------------------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        rx = None
        try:
            path = Path(os.fspath(event.dataset_path))
            rx = self.registry.claim(path)
            if rx is not None:
                rx.close()
            request = cast(C_STORE, event.request)
            peer = self._peer(event.assoc)
            store = StoreRequest(
                path=path,
                sop_class_uid=str(UID(str(request.AffectedSOPClassUID))),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                transfer_syntax_uid=str(event.context.transfer_syntax),
                calling_ae=peer["calling_ae"], peer_address=peer["peer_address"],
                peer_port=peer["peer_port"],
                association_id=self._association_id(event.assoc),
                digest=rx.digest() if rx is not None else None,
                size_bytes=rx.size if rx is not None else None,
                write_error=rx.error if rx is not None else None,
            )
            return self.ingest.store(store)
        except Exception:
            log.exception("C-STORE handler failed; answering out of resources")
            return STATUS_OUT_OF_RESOURCES
        finally:
            if rx is not None:
                self.registry.forget(rx)
