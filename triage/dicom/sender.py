"""C-STORE SCU: send DICOM files exactly as stored.

One presentation context per (SOP class, transfer syntax) actually present in the files,
each proposing that single transfer syntax (some archives, Orthanc among them, accept only
one context per transfer syntax otherwise), at most 128 per association (PS3.8 9.3.2.2):
more pairs are sent over further associations. Data sets are streamed from the file
(pynetdicom's ``STORE_SEND_CHUNKED_DATASET``): never decoded, never transcoded, never
whole in memory; to a peer that advertises an unlimited PDU size we still send PDUs of at
most ``SEND_MAX_PDU`` bytes.

Every file gets a ``SendResult``: ``stored`` (success, or a warning: 0x0001, 0x0107, 0x0116,
0xB000, 0xB006, 0xB007), ``transient`` (association rejected, aborted or timed out, no
response, 0xA7xx out of resources, 0x0110 processing failure, 0x0213 resource limitation:
retry later) or ``permanent`` (0xA9xx data set does not match SOP class, 0xCxxx cannot
understand, 0x0122 SOP class not supported or no accepted presentation context, 0x0124 not
authorised, any other failure, or a file that is not DICOM: retrying will not help).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import MaximumLengthNotification

from triage.config import Destination

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
SEND_MAX_PDU = 4 << 20
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})
TRANSIENT_FAILURES = frozenset({0x0110, 0x0213})


class SendOutcome(StrEnum):
    STORED = "stored"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class SendResult:
    """What happened to one file."""

    path: Path
    outcome: SendOutcome
    status: int | None  # the C-STORE response status; None when none came back
    message: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    transfer_syntax_uid: str | None = None

    @property
    def stored(self) -> bool:
        return self.outcome is SendOutcome.STORED

    @property
    def status_text(self) -> str:
        return "-" if self.status is None else f"0x{self.status:04X}"


def outcome_of_status(status: int) -> SendOutcome:
    """Map a C-STORE response status (PS3.4 B.2.3, PS3.7 C) to what the sender should do."""
    if status == 0x0000 or status in WARNING_STATUSES:
        return SendOutcome.STORED
    if status & 0xFF00 == 0xA700 or status in TRANSIENT_FAILURES:
        return SendOutcome.TRANSIENT
    return SendOutcome.PERMANENT


def _describe(status: int) -> str:
    if status == 0x0000:
        return "stored"
    if status in WARNING_STATUSES:
        return "stored with a warning"
    if status & 0xFF00 == 0xA700:
        return "refused: out of resources"
    if status & 0xFF00 == 0xA900:
        return "error: data set does not match SOP class"
    if status & 0xF000 == 0xC000:
        return "error: cannot understand"
    if status == 0x0122:
        return "refused: SOP class not supported"
    if status == 0x0124:
        return "refused: not authorised"
    return "failed"


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    @property
    def context(self) -> tuple[str, str]:
        return self.sop_class_uid, self.transfer_syntax_uid


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, directories replaced by the files under them (sorted)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            out.append(path)
    return out


def _read_meta(path: Path) -> _File | SendResult:
    try:
        meta = read_file_meta_info(path)
        return _File(path, str(meta.MediaStorageSOPClassUID).strip("\0 "),
                     str(meta.MediaStorageSOPInstanceUID).strip("\0 "),
                     str(meta.TransferSyntaxUID).strip("\0 "))
    except Exception as exc:
        return SendResult(path, SendOutcome.PERMANENT, None,
                          f"not a DICOM file with File Meta Information: {exc}")


def batches(files: Sequence[_File], max_contexts: int = MAX_CONTEXTS) -> list[list[_File]]:
    """Consecutive runs of files whose distinct (SOP class, transfer syntax) pairs fit."""
    out: list[list[_File]] = []
    contexts: set[tuple[str, str]] = set()
    for f in files:
        if not out or (f.context not in contexts and len(contexts) >= max_contexts):
            out.append([])
            contexts = set()
        out[-1].append(f)
        contexts.add(f.context)
    return out


def contexts_for(files: Sequence[_File]) -> list[tuple[str, str]]:
    """The presentation contexts to propose: each distinct pair once, in first-seen order."""
    return list(dict.fromkeys(f.context for f in files))


def _cap_peer_pdu(assoc: Association) -> None:
    """A peer advertising 'unlimited' would otherwise get each data set as one PDU."""
    for item in assoc.acceptor.user_information:
        if isinstance(item, MaximumLengthNotification) and not item.maximum_length_received:
            item.maximum_length_received = SEND_MAX_PDU


def _result(f: _File, outcome: SendOutcome, status: int | None, message: str) -> SendResult:
    return SendResult(f.path, outcome, status, message, f.sop_class_uid, f.sop_instance_uid,
                      f.transfer_syntax_uid)


def _send_batch(files: Sequence[_File], destination: Destination, calling_ae: str,
                timeout: float) -> list[SendResult]:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    for sop_class, syntax in contexts_for(files):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         max_pdu=SEND_MAX_PDU)
    if not assoc.is_established:
        why = ("rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted
               else "not established (no answer or timeout)")
        return [_result(f, SendOutcome.TRANSIENT, None, f"association {why} by {destination}")
                for f in files]
    _cap_peer_pdu(assoc)
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in assoc.accepted_contexts}
    results: list[SendResult] = []
    try:
        for f in files:
            if not assoc.is_established:
                results.append(_result(f, SendOutcome.TRANSIENT, None,
                                       "not sent: the association ended"))
                continue
            if f.context not in accepted:
                results.append(_result(
                    f, SendOutcome.PERMANENT, None,
                    f"{destination} accepts no presentation context for SOP class "
                    f"{f.sop_class_uid} in transfer syntax {f.transfer_syntax_uid}"))
                continue
            try:
                response = assoc.send_c_store(f.path)
            except Exception as exc:
                results.append(_result(f, SendOutcome.TRANSIENT, None,
                                       f"C-STORE could not be sent: {exc}"))
                continue
            status = response.get("Status") if response else None
            if status is None:
                results.append(_result(f, SendOutcome.TRANSIENT, None,
                                       "no C-STORE response (aborted or timed out)"))
                continue
            results.append(_result(f, outcome_of_status(int(status)), int(status),
                                   _describe(int(status))))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def send_files(paths: Sequence[Path], destination: Destination, calling_ae: str, *,
               timeout: float = 60.0) -> list[SendResult]:
    """Send ``paths`` (files) to ``destination``; one result per path, in order."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    readable: list[_File] = []
    by_path: dict[Path, SendResult] = {}
    for path in paths:
        meta = _read_meta(path)
        if isinstance(meta, SendResult):
            by_path[path] = meta
        else:
            readable.append(meta)
    for batch in batches(readable):
        for result in _send_batch(batch, destination, calling_ae, timeout):
            by_path[result.path] = result
    results = [by_path[p] for p in paths]
    for r in results:
        log.log(logging.INFO if r.stored else logging.WARNING, "C-STORE %s: %s", r.outcome,
                r.message, extra={"sop_instance_uid": r.sop_instance_uid,
                                  "status": r.status_text, "destination": str(destination)})
    return results
