"""End-to-end latency: last image received -> every result stored in the archive, against
the pure model compute time for the same exam, measured in the same run.

    .venv/bin/python benchmarks/e2e.py [--exams 2] [--scale 1.0] [--member gmic-resnet18-1]
                                       [--quiet-seconds 1] [--repeats 3] [--device cpu]

Set-up: Orthanc (tests/servers.py) on loopback as the archive; ``triage serve`` (the
embedded default: SQLite, in-process worker, outbox sender) with one ensemble member
(default: the product's full-size ``gmic-resnet18-1``, seeded demo weights, so the run is
UNCALIBRATED) and TRIAGE_ARCHIVE pointing at Orthanc; TRIAGE_SEND_UNVERIFIED_CAD=1 so every
kind of result is sent (TID 1500 SR, Mammography CAD SR, four full-size overlays).

For each of ``--exams`` synthetic 4-view exams (full matrix at ``--scale 1``), DCMTK storescu
sends the views over one association; the script waits until the exam is `delivered` and
checks that Orthanc's REST API lists every outbox object. Latency is taken from the
product's own clock in its database: the last instance's ``received_at`` to the last
outbox row's ``sent_at`` (set after Orthanc answered the C-STORE with success). It includes
the quiet period (``--quiet-seconds``, the product default is 30 s), so the breakdown from
the exam's status changes is printed too.

Baseline ("pure model compute"): after the service is stopped, the same member with the
same weights file runs one forward on the same four views, preprocessed the way the
pipeline does (``decode_pixels`` + ``prepare_view``), batched as the pipeline batches them,
``torch.inference_mode``: the first (cold) forward and the median of ``--repeats`` warm
ones. Prints both and the ratio latency / warm forward.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import torch
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.servers: the Orthanc harness the e2e tests use

from tests.servers import OrthancServer, free_port  # noqa: E402
from triage.config import Settings, load_settings  # noqa: E402
from triage.db import (  # noqa: E402
    Database,
    Instance,
    OutboxItem,
    ScoringRun,
    Study,
    create_database,
)
from triage.db.migrate import upgrade  # noqa: E402
from triage.db.models import StatusChange  # noqa: E402
from triage.imaging import decode_pixels, prepare_view  # noqa: E402
from triage.models import ensure_demo_weights, load_member  # noqa: E402
from triage.synthetic import ExamSpec, generate_exam  # noqa: E402
from triage.vocabulary import Laterality, View  # noqa: E402

TRIAGE = str(Path(sys.executable).with_name("triage"))


@dataclass
class ExamTiming:
    study_uid: str
    latency_s: float  # last image received -> last result stored in the archive
    phases: dict[str, float]  # status change -> seconds since the last image
    run_timings: dict[str, float]
    objects: int
    megabytes_sent: float


def product_env(data_dir: Path, port: int, archive: OrthancServer, member: str,
                quiet: float, device: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update({
        "TRIAGE_DATA_DIR": str(data_dir), "TRIAGE_DICOM_HOST": "127.0.0.1",
        "TRIAGE_DICOM_PORT": str(port), "TRIAGE_API_PORT": "0",
        "TRIAGE_ENSEMBLE": json.dumps([{"name": member, "weight": 1.0}]),
        "TRIAGE_ALLOW_UNCALIBRATED": "1", "TRIAGE_SEND_UNVERIFIED_CAD": "1",
        "TRIAGE_SEND_UNVERIFIED": "1",
        "TRIAGE_ARCHIVE": f"{archive.ae_title}@127.0.0.1:{archive.dicom_port}",
        "TRIAGE_QUIET_SECONDS": str(quiet), "TRIAGE_DEVICE": device,
        "TRIAGE_LOG_JSON": "true", "TRIAGE_LOG_LEVEL": "INFO",
    })
    if member.startswith("gmic-testing"):
        env["TRIAGE_TESTING"] = "1"
    return env


def settings_from(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def wait_echo(port: int, proc: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"triage serve exited with {proc.returncode}")
        if subprocess.run(["echoscu", "-aec", "TRIAGE", "127.0.0.1", str(port)],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"triage serve did not answer C-ECHO on {port}")


def _seconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds()


def wait_delivered(db: Database, study_uid: str, proc: subprocess.Popen[bytes],
                   timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"triage serve exited with {proc.returncode}")
        with db.session() as session:
            status = session.scalars(select(Study.status).where(
                Study.study_instance_uid == study_uid)).first()
        if status == "delivered":
            return
        if status in ("failed", "skipped"):
            raise RuntimeError(f"exam {study_uid} ended {status}; see the triage log")
        time.sleep(0.2)
    raise TimeoutError(f"exam {study_uid} not delivered after {timeout}s")


def exam_timing(db: Database, archive: OrthancServer, study_uid: str) -> ExamTiming:
    with db.session() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        last_image = max(session.scalars(select(Instance.received_at).where(
            Instance.study_id == study.id, Instance.loopback.is_(False))))
        rows = list(session.scalars(select(OutboxItem).where(OutboxItem.study_id == study.id)))
        changes = list(session.scalars(select(StatusChange).where(
            StatusChange.study_id == study.id).order_by(StatusChange.id)))
        run = session.scalars(select(ScoringRun).where(ScoringRun.study_id == study.id)).one()
        phases = {c.to_status: _seconds(c.at, last_image) for c in changes
                  if c.to_status != "receiving"}
        stored = max(r.sent_at for r in rows if r.sent_at is not None)
        megabytes = sum(Path(r.path).stat().st_size for r in rows) / 1e6
        timing = ExamTiming(study_uid, _seconds(stored, last_image), phases, dict(run.timings),
                            len(rows), megabytes)
        wanted = {r.sop_instance_uid for r in rows}
    held = set()
    for oid in archive.get("/instances"):  # type: ignore[attr-defined]
        tags = archive.get(f"/instances/{oid}/simplified-tags")
        assert isinstance(tags, dict)
        held.add(str(tags["SOPInstanceUID"]))
    if not wanted <= held:
        raise RuntimeError(f"Orthanc lacks {len(wanted - held)} of the {len(wanted)} results")
    return timing


def direct_forward(settings: Settings, member: str, files: list[Path], device: torch.device,
                   repeats: int) -> tuple[float, float, float]:
    """(preprocessing s, cold forward s, median warm forward s) for one exam's four views."""
    loaded = load_member(member, settings, device)
    t0 = time.perf_counter()
    arrays = []
    for path in sorted(files):
        ds = pydicom.dcmread(path)
        view = View(str(ds.ViewPosition))
        prepared = prepare_view(decode_pixels(ds).array, Laterality(str(ds.ImageLaterality)), view,
                                loaded.spec.input_size[view])
        arrays.append(prepared.array)
    preprocessing = time.perf_counter() - t0
    x = torch.from_numpy(np.stack(arrays)[:, None]).to(device)

    def forward() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            loaded.module(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    cold = forward()
    warm = statistics.median(forward() for _ in range(repeats))
    return preprocessing, cold, warm


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--exams", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="synthetic matrix scale")
    parser.add_argument("--member", default="gmic-resnet18-1")
    parser.add_argument("--quiet-seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout", type=float, default=1200.0, help="per exam, seconds")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    for tool in ("storescu", "echoscu", "Orthanc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="triage-e2e-bench-", dir=args.workdir))
    archive = OrthancServer(root=work / "orthanc")
    archive.root.mkdir()
    port = free_port()
    env = product_env(work / "data", port, archive, args.member, args.quiet_seconds, args.device)
    settings = settings_from(env)
    settings.prepare_directories()
    upgrade(settings.resolved_database_url)
    ensure_demo_weights(settings, [args.member])
    db = create_database(settings.resolved_database_url)
    timings: list[ExamTiming] = []
    exams: list[list[Path]] = []
    archive.start()
    log = open(work / "serve.log", "ab")
    serve = subprocess.Popen([TRIAGE, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        wait_echo(port, serve)
        for n in range(args.exams):
            summary = generate_exam(ExamSpec(seed=100 + n, lesion=True, scale=args.scale),
                                    work / f"exam{n}")
            files = [Path(p) for p in summary.files]
            exams.append(files)
            sent = subprocess.run(["storescu", "-aec", "TRIAGE", "127.0.0.1", str(port),
                                   *map(str, files)], capture_output=True, text=True)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr[-2000:]}")
            wait_delivered(db, summary.study_instance_uid, serve, args.timeout)
            t = exam_timing(db, archive, summary.study_instance_uid)
            timings.append(t)
            phases = "  ".join(f"{k} +{v:.1f}s" for k, v in t.phases.items())
            print(f"exam {n + 1}: latency {t.latency_s:.1f} s ({t.objects} objects, "
                  f"{t.megabytes_sent:.0f} MB)  {phases}", flush=True)
            print("   run timings: " + ", ".join(f"{k} {v:.2f}s"
                                                  for k, v in t.run_timings.items()), flush=True)
    finally:
        stop(serve)
        log.close()
        archive.destroy()
    db.dispose()

    device = torch.device(args.device)
    preprocessing, cold, warm = direct_forward(settings, args.member, exams[-1], device,
                                               args.repeats)
    first = pydicom.dcmread(exams[-1][0], stop_before_pixels=True)
    print(f"\nconfiguration: member {args.member} (seeded demo weights), device {device}, "
          f"torch threads {torch.get_num_threads()}, exam 4 views {first.Rows}x{first.Columns}, "
          f"quiet period {args.quiet_seconds:g} s, load average {os.getloadavg()[0]:.1f}")
    print(f"direct: preprocessing 4 views {preprocessing:.2f} s, forward cold {cold:.2f} s, "
          f"forward warm (median of {args.repeats}) {warm:.2f} s")
    latencies = [t.latency_s for t in timings]
    for n, latency in enumerate(latencies, start=1):
        print(f"exam {n}: last image received -> all results stored in Orthanc {latency:.1f} s, "
              f"ratio to warm forward {latency / warm:.2f}, without the quiet period "
              f"{(latency - args.quiet_seconds) / warm:.2f}")
    in_service = [v for t in timings for k, v in t.run_timings.items() if k.startswith("model_")]
    print(f"in-service forward (the pipeline's own timer, same run): "
          f"{', '.join(f'{v:.2f} s' for v in in_service)}")
    median = statistics.median(latencies)
    print(f"median latency {median:.1f} s; ratio latency / pure model compute {median / warm:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
