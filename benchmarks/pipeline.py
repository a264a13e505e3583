"""Exam latency from `ready` to scores committed, against pure model compute, same run.

    .venv/bin/python benchmarks/pipeline.py [--members 1] [--repeats 3] [--scale 1.0]

Each round records a new full-size synthetic 4-view exam (Hologic-style, 4096x3328 at
scale 1) as the listener records it, then measures wall time from the `ready` commit to the
committed run (claim, decode, preprocess, every member's forward, scoring,
storing). The baseline is the same members' forward on the same prepared 4-view batch,
timed in the same process. Seeded demo weights (the numbers do not depend on the values).
Goal on CPU: latency / compute <= 1.3.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from sqlalchemy import select

from triage.batch import ingest_folder
from triage.config import EnsembleMember, load_settings
from triage.db import Study, create_database
from triage.db.migrate import upgrade
from triage.dispatch import enqueue_ready
from triage.imaging import decode_pixels, prepare_view
from triage.models import ensure_demo_weights
from triage.pipeline import chosen_images, forward_views, load_ensemble, process_study
from triage.synthetic import ExamSpec, generate_exam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=1, help="gmic-resnet18-1..N (1-5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-pipeline-"))
    members = [EnsembleMember(name=f"gmic-resnet18-{i}", weight=1 / args.members)
               for i in range(1, args.members + 1)]
    settings = load_settings(data_dir=tmp / "data", ensemble=members, allow_uncalibrated=True,
                             device="cpu", log_level="WARNING")
    settings.prepare_directories()
    upgrade(settings.resolved_database_url)
    ensure_demo_weights(settings)
    db = create_database(settings.resolved_database_url)
    ensemble = load_ensemble(settings, torch.device("cpu"))
    latencies, computes = [], []
    for repeat in range(args.repeats + 1):  # the first round warms up
        folder = tmp / f"exam{repeat}"
        exam = generate_exam(ExamSpec(seed=repeat + 1, lesion=True, scale=args.scale), folder)
        ingest_folder(db, settings, folder)  # recorded as the listener records; now `ready`
        with db.session() as session:
            study_id = session.scalars(select(Study.id).where(
                Study.study_instance_uid == exam.study_instance_uid)).one()
        images = chosen_images(db, study_id)
        size = ensemble.members[0].spec.input_size[images[0].view]
        batch = torch.from_numpy(np.stack([
            prepare_view(decode_pixels(pydicom.dcmread(i.path)).array, i.laterality, i.view,
                         size).array for i in images])[:, None])
        t0 = time.perf_counter()
        for m in ensemble.members:  # the same model calls the pipeline makes
            forward_views(m, batch)
        compute = time.perf_counter() - t0
        t0 = time.perf_counter()
        enqueue_ready(db, None)
        outcome = process_study(db, ensemble, study_id)
        latency = time.perf_counter() - t0
        assert outcome.value == "scored", outcome
        if repeat:
            latencies.append(latency)
            computes.append(compute)
        print(f"round {repeat}{' (warm-up)' if not repeat else ''}: ready->committed "
              f"{latency * 1000:.0f} ms, model compute {compute * 1000:.0f} ms")
    print(f"exam {len(images)} views, {args.members} member(s), input {size[0]}x{size[1]}, "
          f"{torch.get_num_threads()} threads")
    lat, comp = statistics.median(latencies), statistics.median(computes)
    print(f"exam {len(images)} views, {args.members} member(s), input {size[0]}x{size[1]}, "
          f"{torch.get_num_threads()} threads")
    print(f"median ready->scores committed: {lat * 1000:.0f} ms")
    print(f"median pure model compute:      {comp * 1000:.0f} ms")
    print(f"ratio latency/compute: {lat / comp:.2f} (goal <= 1.3)")


if __name__ == "__main__":
    main()
