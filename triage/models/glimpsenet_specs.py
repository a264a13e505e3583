"""Registry entries of GlimpseNet (Hang et al.): one member per MIL pooling function.

The paper reports three trained GlimpseNets (Table 1: Noisy-AND a = 10, b = 0.2; top-k
k = 3; LSE r = 5). Pooling changes what the network learns, so each is its own named model
with its own weight file (``glimpsenet-lse``, ``glimpsenet-noisyand``, ``glimpsenet-topk``);
they share the code and the key layout, and ``build_model(name, pooling=...)`` can still
switch the pooling of a loaded model for experiments. ``glimpsenet-testing-small`` is the
same code at reduced resolution for automated tests only (``TRIAGE_TESTING=1``).

The authors published neither weights nor code: no member can become
``verified_published``; none is in the default ensemble. Their preprocessing families
(``glimpsenet``, ``glimpsenet-testing``) select the runner in
:mod:`triage.pipeline.glimpse`; the view itself is prepared by the shared 2D recipe at the
member's input size.

:mod:`triage.models.registry` imports this module at its top, so the registry's names are
imported here only inside the functions that the registry calls once it is defined.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from torch import nn

from triage.models.glimpsenet import GlimpseNet, GlimpseNetConfig
from triage.models.mil import MILPooling
from triage.vocabulary import View

if TYPE_CHECKING:
    from triage.models.registry import ModelSpec

GLIMPSENET_PAPER = ("Hang, Liu & Hannun, GlimpseNet: Attentional Methods for Full-Image "
                    "Mammogram Diagnosis (Stanford AI Lab); glimpse classifier: Szegedy et "
                    "al. 2016, Rethinking the Inception Architecture (Inception-v3)")
GLIMPSENET_VERSION = "1.0.0"
GLIMPSENET_LICENCE = (
    "No published weights or code: the architecture is written here from the GlimpseNet "
    "paper (Hang et al.) and the Inception-v3 paper (Szegedy et al. 2016); the licence of "
    "whatever weights a site imports applies."
)
GLIMPSENET_INTENDED_USE = (
    "Research only, with weights a site trains and validates itself (the paper's models were "
    "trained on digitised film (CBIS-DDSM) for a three-class diagnosis, not on screening "
    "FFDM). Not a diagnosis, not a cleared medical device."
)
GLIMPSENET_SIZE = (2944, 1920)

#: member name -> (pooling, label) of the paper's three models
GLIMPSENET_MEMBERS: tuple[tuple[str, MILPooling, str], ...] = (
    ("glimpsenet-lse", MILPooling.LSE, "LSE r=5"),
    ("glimpsenet-noisyand", MILPooling.NOISY_AND, "Noisy-AND a=10 b=0.2"),
    ("glimpsenet-topk", MILPooling.TOPK, "top-k k=3"),
)


def _build(config: GlimpseNetConfig) -> nn.Module:
    return GlimpseNet(config)


def _member(name: str, pooling: MILPooling, label: str) -> ModelSpec:
    from triage.models.registry import ModelSpec, WeightSpec

    config = GlimpseNetConfig(input_shape=GLIMPSENET_SIZE, pooling=pooling)
    return ModelSpec(
        name=name,
        version=GLIMPSENET_VERSION,
        architecture=(f"GlimpseNet (FCGN region map at 512x512, NMS IoU 0.5, K=6 glimpses of "
                      f"299x299, Inception-v3 per glimpse, MIL {label})"),
        builder=_build,
        hyperparameters=config,
        input_size=MappingProxyType({View.CC: GLIMPSENET_SIZE, View.MLO: GLIMPSENET_SIZE}),
        preprocessing="glimpsenet",
        modality="ffdm",
        weights=WeightSpec(file_name=f"{name}.pt"),
        licence=GLIMPSENET_LICENCE,
        intended_use=GLIMPSENET_INTENDED_USE,
        paper=GLIMPSENET_PAPER,
    )


def _testing() -> ModelSpec:
    """GlimpseNet at reduced resolution, for automated tests only (same code and layout).

    1024x640 inputs (the size of ``gmic-testing-small``, so both share one prepared view),
    a 128x128 region map from a narrow FCGN (widths 8..32, code 32), K=4 glimpses of
    104x104 (299 scaled as 2944 -> 1024), LSE r=5. Loads only with ``TRIAGE_TESTING=1``.
    """
    from triage.models.registry import (
        TESTING_INTENDED_USE,
        TESTING_ONLY,
        ModelSpec,
        WeightSpec,
        testing_licence,
    )

    size = (1024, 640)
    config = GlimpseNetConfig(input_shape=size, low_res_shape=(128, 128),
                              glimpse_shape=(104, 104), num_glimpses=4,
                              fcgn_widths=(8, 16, 32, 32, 32), fcgn_code_channels=32,
                              pooling=MILPooling.LSE)
    return ModelSpec(
        name="glimpsenet-testing-small",
        version=GLIMPSENET_VERSION,
        architecture=("GlimpseNet at reduced resolution (TESTING ONLY, 1024x640, 128x128 "
                      "region map, K=4 glimpses of 104x104, MIL LSE r=5)"),
        builder=_build,
        hyperparameters=config,
        input_size=MappingProxyType({View.CC: size, View.MLO: size}),
        preprocessing="glimpsenet-testing",
        modality="ffdm",
        weights=WeightSpec(file_name="glimpsenet-testing-small.pt"),
        licence=testing_licence("Hang et al. (GlimpseNet)"),
        intended_use=TESTING_INTENDED_USE,
        paper=GLIMPSENET_PAPER,
        extra=MappingProxyType({TESTING_ONLY: True}),
    )


def glimpsenet_specs() -> list[ModelSpec]:
    """The three paper members and the testing configuration."""
    return [*(_member(*member) for member in GLIMPSENET_MEMBERS), _testing()]
