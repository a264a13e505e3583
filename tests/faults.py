"""Fault injection for tests, kept out of the product: run the `triage` command with the
pipeline's scoring wrapped so that it slows down or kills its own process.

    python -m tests.faults worker        # like `triage worker`, with faults from the env

* ``FAULT_SCORING_DELAY_SECONDS``: sleep this long before scoring each exam;
* ``FAULT_KILL_WORKER_ON_STUDY_UID``: SIGKILL the scoring process when it scores this exam.

Celery's prefork pool forks after this module patched ``triage.pipeline.task``, so its pool
processes inherit the wrapper.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from triage.pipeline import task

log = logging.getLogger("tests.faults")

ENV_DELAY = "FAULT_SCORING_DELAY_SECONDS"
ENV_KILL = "FAULT_KILL_WORKER_ON_STUDY_UID"


def install() -> None:
    """Wrap ``score_exam`` as the task body calls it."""
    original = task.score_exam

    def faulty_score_exam(images: Any, ensemble: Any, *, study_instance_uid: str,
                          **kwargs: Any) -> Any:
        delay = float(os.environ.get(ENV_DELAY, "0") or 0)
        if delay:
            time.sleep(delay)
        if os.environ.get(ENV_KILL) == study_instance_uid:
            log.warning("fault injection: killing the worker process while scoring")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(images, ensemble, study_instance_uid=study_instance_uid, **kwargs)

    task.score_exam = faulty_score_exam  # type: ignore[assignment]


def main() -> None:
    install()
    from triage.cli import main as triage_main

    triage_main()


if __name__ == "__main__":
    main()
