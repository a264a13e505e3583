"""Ingest throughput: DCMTK storescu -> (a) triage listen, (b) pynetdicom storescp, (c) DCMTK
storescp +xa, measured in the same run on the same machine and disk.

    .venv/bin/python benchmarks/ingest.py [--images 50] [--rounds 1]

Generates ``--images`` uncompressed 16-bit 4096 x 3328 mammograms (about 27 MB each) once
into a temp dir, then for each round and receiver: starts the receiver on a free port with
an empty output directory, sends every file over one association with ``storescu``, times
storescu from start to exit, checks that every image arrived, stops the receiver and syncs
the disk (so the next receiver does not pay for this one's write-back). The baselines run
unchanged with their default settings; (a) runs with the product's defaults (fsync of each
file and its directory plus a committed SQLite row before each success).

Prints MB/s per receiver (median over rounds) and the ratios (a)/(b) and (a)/(c).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROWS, COLUMNS = 4096, 3328
REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MAMMO_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generate(out: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` MG For Presentation images of one exam; 12-bit noise in 16-bit words."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(ROWS, COLUMNS), dtype=np.uint16).tobytes()
    study, series = generate_uid(UID_ROOT), generate_uid(UID_ROOT)
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.SOPClassUID = MAMMO_FOR_PRESENTATION
        ds.SOPInstanceUID = generate_uid(UID_ROOT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.InstanceNumber = "MG", "BENCHMARK", i + 1
        ds.ImageLaterality, ds.ViewPosition = ("L", "R")[i % 2], ("CC", "MLO")[(i // 2) % 2]
        ds.Rows, ds.Columns, ds.SamplesPerPixel = ROWS, COLUMNS, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"img{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def wait_echo(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before answering")
        r = subprocess.run(["echoscu", "-aec", "TRIAGE", "127.0.0.1", str(port)],
                           capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"no C-ECHO answer on port {port}")


@dataclass
class Receiver:
    name: str
    command: Callable[[int, Path], list[str]]
    count: Callable[[Path], int]  # images that arrived
    env: Callable[[int, Path], dict[str, str]] = lambda port, out: {}


def _count_files(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if p.is_file())


def _count_triage(out: Path) -> int:
    with sqlite3.connect(out / "triage.db") as conn:
        return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


RECEIVERS = [
    Receiver(
        "triage listen",
        lambda port, out: [str(VENV_BIN / "triage"), "listen"],
        _count_triage,
        lambda port, out: {"TRIAGE_DATA_DIR": str(out), "TRIAGE_DICOM_PORT": str(port),
                           "TRIAGE_DICOM_HOST": "127.0.0.1", "TRIAGE_AE_TITLE": "TRIAGE",
                           "TRIAGE_API_PORT": "0"},
    ),
    Receiver("pynetdicom storescp",
             lambda port, out: [sys.executable, "-m", "pynetdicom", "storescp", str(port)],
             _count_files),
    Receiver("dcmtk storescp +xa", lambda port, out: ["storescp", "+xa", str(port)],
             _count_files),
]


def run_once(receiver: Receiver, files: list[Path], work: Path) -> float:
    """Seconds storescu needed to send ``files`` to a fresh ``receiver``."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    env = dict(os.environ, **receiver.env(port, out))
    log = open(work / f"{receiver.name.replace(' ', '_')}.log", "ab")
    proc = subprocess.Popen(receiver.command(port, out), cwd=out, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_echo(port, proc)
        start = time.perf_counter()
        sent = subprocess.run(["storescu", "-aec", "TRIAGE", "127.0.0.1", str(port),
                               *map(str, files)], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if sent.returncode != 0:
            raise RuntimeError(f"storescu to {receiver.name} failed: {sent.stderr[-2000:]}")
        time.sleep(0.5)  # let the receivers finish their bookkeeping before counting
        arrived = receiver.count(out)
        if arrived != len(files):
            raise RuntimeError(f"{receiver.name} kept {arrived} of {len(files)} images")
        return elapsed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(out, ignore_errors=True)
        os.sync()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where inputs and outputs go (default: a temp dir)")
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} (DCMTK) is not installed")
    work = Path(tempfile.mkdtemp(prefix="triage-bench-", dir=args.workdir))
    try:
        inputs = work / "inputs"
        inputs.mkdir()
        files = generate(inputs, args.images)
        total_mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} images, {total_mb:.0f} MB in all "
              f"({total_mb / len(files):.1f} MB each), {args.rounds} round(s)")
        os.sync()
        timings: dict[str, list[float]] = {r.name: [] for r in RECEIVERS}
        for round_no in range(args.rounds):
            for receiver in RECEIVERS:
                seconds = run_once(receiver, files, work)
                timings[receiver.name].append(seconds)
                print(f"  round {round_no + 1}: {receiver.name:<22} {seconds:7.2f} s  "
                      f"{total_mb / seconds:7.1f} MB/s", flush=True)
        rates = {name: total_mb / statistics.median(t) for name, t in timings.items()}
        print("median MB/s:")
        for name, rate in rates.items():
            print(f"  {name:<22} {rate:7.1f}")
        a, b, c = (rates[r.name] for r in RECEIVERS)
        print(f"ratio (a)/(b) triage / pynetdicom storescp: {a / b:.2f}")
        print(f"ratio (a)/(c) triage / dcmtk storescp:      {a / c:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
