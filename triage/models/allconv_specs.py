"""Registry entries of the all-convolutional whole-image models (Shen et al. 2019).

The paper's four best models (Tables 2 and 3, "Hybrid networks", averaged into its
ensemble), at the paper's 1152x896 input, plus a reduced-resolution member for automated
tests. None is in the default ensemble; add them with ``[[ensemble]] name = "..."``.

No PyTorch weights are published. The authors published Keras 2 ``.h5`` whole-image
models (``lishen/end2end-all-conv`` README, Google Drive; repository licence CC BY-NC-ND
4.0); ``triage models import FILE.h5 --as NAME`` converts one
(:mod:`triage.models.keras_convert`) and records it as ``imported_unverified``. By the
README's table (no published file was available to check), "DDSM Resnet50
[512-512-1024]x2" corresponds to ``allconv-resnet50`` and "VGG16 [512-512-1024]x2"
(``..._hybrid.h5``) to ``allconv-hybrid-vgg16-resnet``; the published "VGG16 512x1" files
have other top blocks (two VGG blocks of 512 x 1) than the paper's best VGG-VGG and are
refused by ``allconv-vgg16`` (shape mismatch); no Resnet-VGG file is published. The
INbreast fine-tuned files were trained with mean 44.33, not the DDSM mean these entries
use (``AllConvConfig.pixel_mean``), so they would be scored off-centre.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from torch import nn

from triage.models.allconv import (
    ALLCONV_INPUT_SIZE,
    RESNET_TOP,
    VGG_TOP,
    AllConvClassifier,
    AllConvConfig,
)
from triage.models.allconv_blocks import TopBlock
from triage.vocabulary import View

if TYPE_CHECKING:
    from triage.models.registry import ModelSpec

ALLCONV_PAPER = ("Shen et al. 2019, Deep learning to improve breast cancer detection on "
                 "screening mammography, Sci Rep 9:12495 (end-to-end all-convolutional)")
ALLCONV_VERSION = "1.0.0"
ALLCONV_LICENCE = (
    "No published PyTorch weights: the architecture follows Shen et al. 2019. The authors' "
    "Keras models (github.com/lishen/end2end-all-conv) are under the repository's licence, "
    "CC BY-NC-ND 4.0 (attribution, non-commercial, no derivatives); the licence of whatever "
    "weights a site imports or converts applies."
)
#: Reduced input for automated tests: a quarter of the paper's size per side.
ALLCONV_TESTING_SIZE: tuple[int, int] = (288, 224)

#: name -> (patch classifier, top blocks, architecture text)
PAPER_MODELS: tuple[tuple[str, str, tuple[TopBlock, ...], str], ...] = (
    ("allconv-resnet50", "resnet50", RESNET_TOP, "Resnet-Resnet"),
    ("allconv-vgg16", "vgg16", VGG_TOP, "VGG-VGG"),
    ("allconv-hybrid-resnet50-vgg", "resnet50", VGG_TOP, "hybrid Resnet-VGG"),
    ("allconv-hybrid-vgg16-resnet", "vgg16", RESNET_TOP, "hybrid VGG-Resnet"),
)


def _build_allconv(config: AllConvConfig) -> nn.Module:
    return AllConvClassifier(config)


def _architecture(what: str, config: AllConvConfig, size: tuple[int, int]) -> str:
    return (f"all-convolutional whole-image classifier, {what}: {config.label}, GAP, "
            f"softmax (non-malignant, malignant); {size[0]}x{size[1]} uncropped input, "
            f"mean {config.pixel_mean} subtracted, flip-averaged (4)")


def allconv_specs() -> list[ModelSpec]:
    """The all-conv entries of the model catalogue (``registry._catalogue``)."""
    from triage.models.registry import (
        NO_WEIGHTS_INTENDED_USE,
        TESTING_INTENDED_USE,
        TESTING_ONLY,
        ModelSpec,
        WeightSpec,
    )

    sizes = MappingProxyType({View.CC: ALLCONV_INPUT_SIZE, View.MLO: ALLCONV_INPUT_SIZE})
    specs = []
    for name, patch_net, top, what in PAPER_MODELS:
        config = AllConvConfig(patch_net=patch_net, top=top)
        specs.append(ModelSpec(
            name=name, version=ALLCONV_VERSION,
            architecture=_architecture(what, config, ALLCONV_INPUT_SIZE),
            builder=_build_allconv, hyperparameters=config, input_size=sizes,
            preprocessing="allconv", modality="ffdm",
            weights=WeightSpec(file_name=f"{name}.pt"), licence=ALLCONV_LICENCE,
            intended_use=NO_WEIGHTS_INTENDED_USE, paper=ALLCONV_PAPER,
        ))
    small = ALLCONV_TESTING_SIZE
    testing = AllConvConfig(patch_net="resnet50", top=VGG_TOP, input_shape=small)
    specs.append(ModelSpec(
        name="allconv-testing-small", version=ALLCONV_VERSION,
        architecture=_architecture("hybrid Resnet-VGG at reduced resolution (TESTING ONLY)",
                                   testing, small),
        builder=_build_allconv, hyperparameters=testing,
        input_size=MappingProxyType({View.CC: small, View.MLO: small}),
        preprocessing="allconv-testing", modality="ffdm",
        weights=WeightSpec(file_name="allconv-testing-small.pt"), licence=ALLCONV_LICENCE,
        intended_use=TESTING_INTENDED_USE, paper=ALLCONV_PAPER,
        extra=MappingProxyType({TESTING_ONLY: True}),
    ))
    return specs
