"""The one place that strings decode -> preprocessing -> ensemble -> scoring together.

``score_exam`` (``exam``) turns the chosen images of an exam into a typed ``ExamResult``
(numpy only, no torch leaves this package); each member family has its runner (``gmic2d``,
...). ``process_study`` (``task``) is the task body that the Celery task and the embedded
in-process worker both run: claim the exam, score it, store the run and the status in one
commit, then hand the results to the output stage.
"""

from triage.pipeline.ensemble import (
    Ensemble,
    instances_digest,
    load_ensemble,
    model_set_version,
    resolve_device,
)
from triage.pipeline.exam import score_exam
from triage.pipeline.families import runner_for
from triage.pipeline.gmic2d import forward_views
from triage.pipeline.images import ExamImage
from triage.pipeline.task import (
    MAX_SCORING_ATTEMPTS,
    ClaimedExam,
    Outcome,
    OutputStage,
    chosen_images,
    claim,
    process_study,
)
from triage.results import InputFrame

__all__ = ["MAX_SCORING_ATTEMPTS", "ClaimedExam", "Ensemble", "ExamImage", "InputFrame",
           "Outcome", "OutputStage", "chosen_images", "claim", "forward_views",
           "instances_digest", "load_ensemble", "model_set_version", "process_study",
           "resolve_device", "runner_for", "score_exam"]
