"""Which runner scores a model family, and which image classes a member modality takes.

``check_member`` is what ``load_ensemble`` asks before any weights are read, so an ensemble
member the pipeline cannot run (a patch classifier, a model of an unknown family, a 3D
model configured for 2D images) stops start-up with a message naming it, instead of being
left out of every exam.
"""

from __future__ import annotations

from triage.errors import ConfigError
from triage.models import ModelSpec
from triage.pipeline.allconv import ALLCONV
from triage.pipeline.dmv import DMV
from triage.pipeline.glimpse import GLIMPSE_RUNNERS
from triage.pipeline.gmic2d import GMIC_2D
from triage.pipeline.runners import MemberRunner
from triage.pipeline.tomo import TOMO
from triage.vocabulary import ImageClass

#: model family (``ModelSpec.preprocessing``) -> how its members score an exam
RUNNERS: dict[str, MemberRunner] = {
    "gmic": GMIC_2D,
    "gmic-testing": GMIC_2D,
    "gmic3d": TOMO,
    "gmic3d-testing": TOMO,
    "breast_cancer_classifier": DMV,
    "breast_cancer_classifier-testing": DMV,
    "allconv": ALLCONV,
    "allconv-testing": ALLCONV,
    **GLIMPSE_RUNNERS,
}

#: member modality -> the image classes its members score
MODALITY_CLASSES: dict[str, tuple[ImageClass, ...]] = {
    "ffdm": (ImageClass.FFDM, ImageClass.SYNTHETIC2D),
    "dbt": (ImageClass.DBT,),
}


def runner_for(spec: ModelSpec) -> MemberRunner:
    try:
        return RUNNERS[spec.preprocessing]
    except KeyError:
        raise ConfigError(
            f"model {spec.name} ({spec.architecture}) cannot be an ensemble member: the "
            f"pipeline has no runner for its family {spec.preprocessing!r}; remove it from "
            "TRIAGE_ENSEMBLE"
        ) from None


def check_member(spec: ModelSpec, configured_modality: str | None) -> str:
    """The member's modality (the model's own unless configured); ConfigError when the
    pipeline cannot run it or the configured modality is not the model's."""
    runner_for(spec)
    if configured_modality is not None and configured_modality != spec.modality:
        raise ConfigError(
            f"TRIAGE_ENSEMBLE member {spec.name} has modality = {configured_modality!r}, but "
            f"the model scores {spec.modality!r} images; set modality = {spec.modality!r} "
            "or leave it out"
        )
    return spec.modality
