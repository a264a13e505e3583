"""How a family of members scores an exam: the interface every member family implements.

``score_exam`` asks each member's runner which 2D inputs it needs (so that every distinct
input is decoded and preprocessed once per exam, shared between members), then runs it
on the prepared inputs. A runner returns one ``ViewScore`` per image it scored; runners
whose model sees several views at once (DMV-CNN) still report per view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from triage.models import LoadedModel
from triage.pipeline.images import ExamImage
from triage.pipeline.views2d import Prepared, PrepareRequest
from triage.results import ViewScore


@dataclass(frozen=True)
class ExamInputs:
    """What a runner gets for one exam."""

    images: tuple[ExamImage, ...]  # the chosen images of the member's modality
    prepared: Prepared  # every 2D input any member asked for
    augmented: Mapping[PrepareRequest, list[np.ndarray]]  # TTA windows (empty without TTA)
    device: torch.device
    #: what a runner wants the result to say (e.g. a DBT view it could not read, with the
    #: reason); shared by the members of one exam, added to ``ExamResult.notes`` once each
    notes: list[str] = field(default_factory=list)


class MemberRunner(Protocol):
    def requests(self, member: LoadedModel, images: Sequence[ExamImage]) -> list[PrepareRequest]:
        """The 2D inputs this member needs prepared (empty for members that decode
        their own input, e.g. tomosynthesis volumes)."""

    def run(self, member: LoadedModel, inputs: ExamInputs) -> list[ViewScore]:
        """Score the exam; raise a TriageError (or RuntimeError/ValueError) to be left out."""


@runtime_checkable
class SharedInputRunner(Protocol):
    """A runner whose members can share one expensive input per image (a DBT volume):
    ``score_exam`` gives it every member of the exam that it runs on the same images."""

    def run_members(self, members: Sequence[LoadedModel],
                    inputs: ExamInputs) -> dict[str, list[ViewScore] | Exception]:
        """Per member name: its view scores, or the error that leaves it out."""
