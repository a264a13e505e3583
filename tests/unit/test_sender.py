"""The C-STORE SCU: contexts as the files need them, statuses sorted into what to do next."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.listener_helpers import (
    EXPLICIT_LE,
    RLE,
    encapsulated_image,
    encode_data_set,
    free_port,
    image_dataset,
    write_received_file,
)
from triage.config import Destination
from triage.dicom.sender import (
    MAX_CONTEXTS,
    SendOutcome,
    _File,
    batches,
    contexts_for,
    outcome_of_status,
    send_files,
)

# PS3.4 B.2.3 / PS3.7 C: warnings are stored; 0xA7xx (out of resources) is worth a retry;
# data set errors, "cannot understand" and refusals of the SOP class are not.
STORED = [0x0000, 0xB000, 0xB007, 0xB006, 0x0001, 0x0107, 0x0116]
TRANSIENT = [0xA700, 0xA701, 0xA7FF, 0x0110, 0x0213]
PERMANENT = [0xA900, 0xA9FF, 0xC000, 0xC001, 0xCFFF, 0x0122, 0x0124, 0x0117]


@pytest.mark.parametrize(("codes", "outcome"), [(STORED, SendOutcome.STORED),
                                                (TRANSIENT, SendOutcome.TRANSIENT),
                                                (PERMANENT, SendOutcome.PERMANENT)])
def test_statuses_sort_into_stored_transient_and_permanent(codes: list[int],
                                                           outcome: SendOutcome) -> None:
    assert {outcome_of_status(c) for c in codes} == {outcome}


def _file(i: int, sop_class: str, ts: str) -> _File:
    return _File(Path(f"f{i}"), sop_class, f"1.2.3.{i}", ts)


def test_one_context_per_sop_class_and_transfer_syntax_present() -> None:
    files = [_file(0, "1.2.840.10008.5.1.4.1.1.1.2", EXPLICIT_LE),
             _file(1, "1.2.840.10008.5.1.4.1.1.1.2", RLE),
             _file(2, "1.2.840.10008.5.1.4.1.1.1.2", EXPLICIT_LE),
             _file(3, "1.2.840.10008.5.1.4.1.1.7", EXPLICIT_LE)]
    assert contexts_for(files) == [("1.2.840.10008.5.1.4.1.1.1.2", EXPLICIT_LE),
                                   ("1.2.840.10008.5.1.4.1.1.1.2", RLE),
                                   ("1.2.840.10008.5.1.4.1.1.7", EXPLICIT_LE)]


def test_more_pairs_than_one_association_holds_are_split_in_order() -> None:
    files = [_file(i, f"1.2.3.{i}", EXPLICIT_LE) for i in range(MAX_CONTEXTS + 5)]
    files.insert(3, _file(999, "1.2.3.0", EXPLICIT_LE))  # a repeat needs no new context
    groups = batches(files)
    assert [f for g in groups for f in g] == files
    assert all(len(contexts_for(g)) <= MAX_CONTEXTS for g in groups)
    assert [len(contexts_for(g)) for g in groups] == [MAX_CONTEXTS, 5]


def test_a_file_that_is_not_dicom_fails_permanently_without_a_network(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    (result,) = send_files([path], Destination(ae_title="X", host="127.0.0.1", port=9),
                           "TRIAGE")
    assert result.outcome is SendOutcome.PERMANENT and result.status is None


def test_nobody_listening_is_a_transient_failure_for_every_file(tmp_path: Path) -> None:
    paths = []
    for i, ds in enumerate([image_dataset(4, 4), encapsulated_image()]):
        ts = EXPLICIT_LE if i == 0 else RLE
        paths.append(write_received_file(tmp_path / f"{i}.dcm", encode_data_set(ds),
                                         sop_class=str(ds.SOPClassUID),
                                         sop_instance=str(ds.SOPInstanceUID),
                                         transfer_syntax=ts))
    results = send_files(paths, Destination(ae_title="NOBODY", host="127.0.0.1",
                                            port=free_port()), "TRIAGE", timeout=5)
    assert [r.outcome for r in results] == [SendOutcome.TRANSIENT] * 2
    assert [r.transfer_syntax_uid for r in results] == [EXPLICIT_LE, RLE]
