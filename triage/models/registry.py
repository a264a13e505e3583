"""The catalogue of named models: what each one is, expects and may be used for.

A :class:`ModelSpec` carries the builder and its hyper-parameters, the input size per
view and the preprocessing the model expects, the weight file it loads (and the facts
that authenticate a published file), licence and intended-use text, and a version string
recorded in the DB and in every SR. Weight handling (import, checksums, status, loading)
lives in :mod:`triage.models.weights`.

Published facts kept here (from the authors' public repositories, as recorded in the
fixtures' ``published_weights.json``): the repository path and git blob id of each GMIC
file, the pooling percentage the authors' scripts use with it, and the predictions the
authors' README reports for their sample exam 0. Tests compare these copies with the
fixture file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from triage.errors import ModelError
from triage.models.allconv_specs import allconv_specs
from triage.models.densenet import DenseNet, DenseNetConfig
from triage.models.dmv_cnn import DMV_INPUT_SIZE, DMVConfig, build_dmv_cnn
from triage.models.glimpsenet_specs import glimpsenet_specs
from triage.models.gmic import GMIC, GMICConfig
from triage.models.gmic3d import GMIC3D, GMIC3D_SLICE_SHAPE, GMIC3DConfig
from triage.vocabulary import View


@dataclass(frozen=True)
class WeightSpec:
    """The weight file a model loads.

    ``file_name`` is the name under ``Settings.models_dir``; ``sha256`` is the expected
    checksum when the product knows it; ``git_blob_id`` (``sha1(b"blob <size>\\0" + bytes)``),
    ``published_repository`` and ``published_path`` identify the authors' published file.
    ``state_dict_key`` is set when the file wraps the state_dict (e.g. ``{"model": ...}``).
    """

    file_name: str
    sha256: str | None = None
    git_blob_id: str | None = None
    published_repository: str | None = None
    published_path: str | None = None
    state_dict_key: str | None = None

    @property
    def is_published(self) -> bool:
        return self.git_blob_id is not None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the product needs to know about one named model."""

    name: str
    version: str
    architecture: str
    builder: Callable[[Any], nn.Module]
    hyperparameters: Any  # a frozen dataclass the builder accepts (e.g. GMICConfig)
    input_size: Mapping[View, tuple[int, int]]
    preprocessing: str
    modality: str
    weights: WeightSpec
    licence: str
    intended_use: str
    paper: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name version``, as written into the DB and the SR."""
        return f"{self.name} {self.version}"


NYU_LICENCE = (
    "CC BY-NC-SA 4.0 (weights and reference code by NYU, nyukat). Attribution, "
    "non-commercial use only, share-alike; research use only."
)
NYU_INTENDED_USE = (
    "Research and investigational worklist triage of screening mammograms. Not a diagnosis, "
    "not a cleared medical device; never remove an exam from a reader's worklist. The "
    "published weights are licensed for non-commercial research only."
)
NO_WEIGHTS_LICENCE = (
    "No published weights: the architecture follows Shen et al. 2021; the licence of "
    "whatever weights a site imports applies."
)
NO_WEIGHTS_INTENDED_USE = (
    "Research only, with weights a site trains and validates itself. Not a diagnosis, "
    "not a cleared medical device."
)
TESTING_INTENDED_USE = ("Automated tests of the product only (TRIAGE_TESTING=1); not even "
                        "research use. Never clinical.")


def testing_licence(architecture_source: str) -> str:
    """Licence text of a reduced-size testing configuration (no published weights)."""
    return (f"No published weights at this size: the architecture follows {architecture_source}; "
            "the licence of whatever weights a test imports applies.")

GMIC_PAPER = "Shen et al. 2021, Medical Image Analysis 68:101908 (GMIC)"
GMIC_INPUT_SIZE: Mapping[View, tuple[int, int]] = MappingProxyType(
    {View.CC: (2944, 1920), View.MLO: (2944, 1920)}
)
GMIC_REPOSITORY = "nyukat/GMIC"

#: (repository path, git blob id, pooling percentage t) of each published GMIC file.
PUBLISHED_GMIC_FILES: tuple[tuple[str, str, float], ...] = (
    ("models/sample_model_1.p", "04e473379a8313daa426c38e69bad392fc0be769", 0.02),
    ("models/sample_model_2.p", "98074a24bbebdbf030eb2bd9c27e96f4683d336b", 0.03),
    ("models/sample_model_3.p", "9304d4b3224ecd4b9bd6717095ef819c779efae5", 0.03),
    ("models/sample_model_4.p", "4e87f6453d71e9e9be01504ee8b64ff077c254ee", 0.05),
    ("models/sample_model_5.p", "ec942dd65a99aaa3fce8cf00bcd10bdb0ee40e2c", 0.1),
)

#: (benign, malignant) per view that the GMIC README reports for sample exam 0. The
#: README does not say which model produced it; the authors' run script defaults to
#: model index 1 (``sample_model_1.p``).
PUBLISHED_GMIC_SAMPLE_PREDICTIONS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "0_L-CC": (0.1356, 0.0081),
    "0_R-CC": (0.8929, 0.3259),
    "0_L-MLO": (0.2368, 0.0335),
    "0_R-MLO": (0.9509, 0.1812),
})
#: The published model whose predictions the README table reports (see above).
PUBLISHED_GMIC_SAMPLE_MODEL = "gmic-resnet18-1"

GMIC_VERSION = "1.0.0"


def _build_gmic(config: GMICConfig) -> nn.Module:
    return GMIC(config)


def _gmic_published(index: int, path: str, blob: str, percent_t: float) -> ModelSpec:
    name = f"gmic-resnet18-{index}"
    return ModelSpec(
        name=name,
        version=GMIC_VERSION,
        architecture="GMIC-ResNet-18 (global ResNet-22 v2, local ResNet-18, K=6, 256x256 ROI)",
        builder=_build_gmic,
        hyperparameters=GMICConfig(percent_t=percent_t, k=6, local_network="resnet18"),
        input_size=GMIC_INPUT_SIZE,
        preprocessing="gmic",
        modality="ffdm",
        weights=WeightSpec(
            file_name=f"{name}.pt",
            git_blob_id=blob,
            published_repository=GMIC_REPOSITORY,
            published_path=path,
        ),
        licence=NYU_LICENCE,
        intended_use=NYU_INTENDED_USE,
        paper=GMIC_PAPER,
    )


def _gmic_unpublished(depth: str) -> ModelSpec:
    name = f"gmic-{depth}"
    label = {"resnet34": "ResNet-34", "resnet50": "ResNet-50"}[depth]
    return ModelSpec(
        name=name,
        version=GMIC_VERSION,
        architecture=f"GMIC-{label} (global ResNet-22 v2, local {label}, K=6, 256x256 ROI)",
        builder=_build_gmic,
        hyperparameters=GMICConfig(percent_t=0.02, k=6, local_network=depth),
        input_size=GMIC_INPUT_SIZE,
        preprocessing="gmic",
        modality="ffdm",
        weights=WeightSpec(file_name=f"{name}.pt"),
        licence=NO_WEIGHTS_LICENCE,
        intended_use=NO_WEIGHTS_INTENDED_USE,
        paper=GMIC_PAPER,
    )


TESTING_ONLY = "testing_only"
#: ``extra`` key naming the model whose heatmaps a member takes as extra input channels.
#: That model is loaded with the member (``weights.LoadedModel.companions``); it is not an
#: ensemble member and has no ensemble weight, but its weights count for the run's status.
HEATMAPS_FROM = "heatmaps_from"


def _gmic_testing() -> ModelSpec:
    """The same GMIC code at reduced resolution, for load and fault tests only.

    Loads only with ``TRIAGE_TESTING=1`` (see ``weights.load_member``); never a clinical
    configuration. 1024x640 inputs give a 16x10 saliency map; 128x128 crops (2x2 on the map).
    """
    size = (1024, 640)
    return ModelSpec(
        name="gmic-testing-small",
        version=GMIC_VERSION,
        architecture="GMIC-ResNet-18 at reduced resolution (TESTING ONLY, 1024x640, K=4, 128x128 ROI)",
        builder=_build_gmic,
        hyperparameters=GMICConfig(percent_t=0.02, k=4, crop_shape=(128, 128),
                                   local_network="resnet18", input_shape=size),
        input_size=MappingProxyType({View.CC: size, View.MLO: size}),
        preprocessing="gmic-testing",
        modality="ffdm",
        weights=WeightSpec(file_name="gmic-testing-small.pt"),
        licence=NO_WEIGHTS_LICENCE,
        intended_use=TESTING_INTENDED_USE,
        paper=GMIC_PAPER,
        extra=MappingProxyType({TESTING_ONLY: True}),
    )


# -- 3D-GMIC (Park et al.): DBT volumes ------------------------------------------------
GMIC3D_PAPER = ("Park et al., 3D-GMIC: an efficient deep neural network to find small "
                "objects in large 3D images")
GMIC3D_REPOSITORY = "nyukat/3D_GMIC"
GMIC3D_VERSION = "1.0.0"
GMIC3D_INPUT_SIZE: Mapping[View, tuple[int, int]] = MappingProxyType(
    {View.CC: GMIC3D_SLICE_SHAPE, View.MLO: GMIC3D_SLICE_SHAPE}
)

#: (repository path, git blob id, pooling percentage t per slice, K) of each published
#: 3D-GMIC file, as recorded in the fixtures' ``published_weights.json``.
PUBLISHED_GMIC3D_FILES: tuple[tuple[str, str, float, int], ...] = (
    ("models/sample_model_1.p", "59f84263030e667a5a0fab02397b94d192347842",
     1.5108578607685, 12),
    ("models/sample_model_2.p", "49b62d22479744852c3e8e86cd043b9abb5ff244",
     2.0584660301930686, 12),
    ("models/sample_model_3.p", "d5089a3bffb36a847bcf1bc6d54f47a23b845421",
     1.1336909878403076, 8),
    ("models/sample_model_4.p", "15d2840da160a58d8535f4ed42d3ba4f4ea12d11",
     1.5651680987233705, 16),
    ("models/sample_model_5.p", "26af09a98019d826f3cc182ee37a42234deafdb3",
     2.293890202354881, 8),
)


def _build_gmic3d(config: GMIC3DConfig) -> nn.Module:
    return GMIC3D(config)


def _gmic3d_published(index: int, path: str, blob: str, percent_t: float, k: int) -> ModelSpec:
    name = f"gmic3d-resnet18-{index}"
    return ModelSpec(
        name=name,
        version=GMIC3D_VERSION,
        architecture=("3D-GMIC (global ResNet-22 with GroupNorm(8) per slice, relu(tanh) "
                      f"saliency, local ResNet-18, K={k}, 256x256 ROI, zeta 10, output mean of "
                      "global and local)"),
        builder=_build_gmic3d,
        hyperparameters=GMIC3DConfig(percent_t=percent_t, k=k),
        input_size=GMIC3D_INPUT_SIZE,
        preprocessing="gmic3d",
        modality="dbt",
        weights=WeightSpec(
            file_name=f"{name}.pt",
            git_blob_id=blob,
            published_repository=GMIC3D_REPOSITORY,
            published_path=path,
        ),
        licence=NYU_LICENCE,
        intended_use=NYU_INTENDED_USE,
        paper=GMIC3D_PAPER,
    )


def _gmic3d_testing() -> ModelSpec:
    """3D-GMIC at reduced slice size, for automated tests only (same code, same key layout).

    Loads only with ``TRIAGE_TESTING=1``. 1024x640 slices give a 16x10 saliency map per
    slice; 128x128 crops (a 2x2 window on the map), K=4; pooling fraction and zeta as the
    published model 1. Never a clinical configuration.
    """
    size = (1024, 640)
    return ModelSpec(
        name="gmic3d-testing-small",
        version=GMIC3D_VERSION,
        architecture=("3D-GMIC at reduced resolution (TESTING ONLY, 1024x640 slices, K=4, "
                      "128x128 ROI, zeta 10)"),
        builder=_build_gmic3d,
        hyperparameters=GMIC3DConfig(percent_t=PUBLISHED_GMIC3D_FILES[0][2], k=4,
                                     crop_shape=(128, 128), input_shape=size),
        input_size=MappingProxyType({View.CC: size, View.MLO: size}),
        preprocessing="gmic3d-testing",
        modality="dbt",
        weights=WeightSpec(file_name="gmic3d-testing-small.pt"),
        licence=testing_licence("Park et al. (3D-GMIC)"),
        intended_use=TESTING_INTENDED_USE,
        paper=GMIC3D_PAPER,
        extra=MappingProxyType({TESTING_ONLY: True}),
    )


# -- DMV-CNN (Wu et al. 2019, breast_cancer_classifier) and its patch classifier ----------
DMV_PAPER = ("Wu et al. 2019, Deep neural networks improve radiologists' performance in "
             "breast cancer screening, IEEE TMI 39(4) (DMV-CNN)")
DMV_REPOSITORY = "nyukat/breast_cancer_classifier"
DMV_VERSION = "1.0.0"
#: The patch classifier sees 256x256 patches of either view (not whole views).
DMV_PATCH_SIZE: Mapping[View, tuple[int, int]] = MappingProxyType(
    {View.CC: (256, 256), View.MLO: (256, 256)}
)

#: (model name, repository path, git blob id) of each published breast_cancer_classifier
#: file this product can load, as recorded in the fixtures' ``published_weights.json``.
PUBLISHED_DMV_FILES: tuple[tuple[str, str, str], ...] = (
    ("dmv-cnn-image-only", "models/sample_image_model.p",
     "286ec862ac532d27d3d63ba77ed3a46b9705f53c"),
    ("dmv-cnn-image-and-heatmaps", "models/sample_imageheatmaps_model.p",
     "312ea110370017eaf9b2ddeb7571d2f99bcfd4d1"),
    ("dmv-patch-densenet121", "models/sample_patch_model.p",
     "44ce52382562085dcd5becde74fff087b2f31cd4"),
)


def _build_dmv(config: DMVConfig) -> nn.Module:
    return build_dmv_cnn(config)


def _build_patch_classifier(config: DenseNetConfig) -> nn.Module:
    return DenseNet(config)


def _dmv_specs() -> list[ModelSpec]:
    files = {name: (path, blob) for name, path, blob in PUBLISHED_DMV_FILES}

    def weights(name: str, state_dict_key: str | None) -> WeightSpec:
        path, blob = files[name]
        return WeightSpec(file_name=f"{name}.pt", git_blob_id=blob,
                          published_repository=DMV_REPOSITORY, published_path=path,
                          state_dict_key=state_dict_key)

    view_wise = ("DMV-CNN view-wise (four ResNet-22 columns, L/R tied per view, "
                 "fc 512 + output per CC/MLO branch, breast = mean of the branches)")
    return [
        ModelSpec(
            name="dmv-cnn-image-only",
            version=DMV_VERSION,
            architecture=f"{view_wise}; image only (1 input channel)",
            builder=_build_dmv,
            hyperparameters=DMVConfig(input_channels=1),
            input_size=DMV_INPUT_SIZE,
            preprocessing="breast_cancer_classifier",
            modality="ffdm",
            weights=weights("dmv-cnn-image-only", "model"),
            licence=NYU_LICENCE,
            intended_use=NYU_INTENDED_USE,
            paper=DMV_PAPER,
        ),
        ModelSpec(
            name="dmv-cnn-image-and-heatmaps",
            version=DMV_VERSION,
            architecture=(f"{view_wise}; image + malignant and benign patch heatmaps "
                          "(3 input channels)"),
            builder=_build_dmv,
            hyperparameters=DMVConfig(input_channels=3),
            input_size=DMV_INPUT_SIZE,
            preprocessing="breast_cancer_classifier",
            modality="ffdm",
            weights=weights("dmv-cnn-image-and-heatmaps", "model"),
            licence=NYU_LICENCE,
            intended_use=NYU_INTENDED_USE,
            paper=DMV_PAPER,
            extra=MappingProxyType({HEATMAPS_FROM: "dmv-patch-densenet121"}),
        ),
        ModelSpec(
            name="dmv-patch-densenet121",
            version=DMV_VERSION,
            architecture=("DenseNet-121 patch classifier (4 classes; softmax column 0 = "
                          "malignant, 1 = benign heatmap), TF-SAME padding, 256x256 patches "
                          "at stride 70 over the cropped image"),
            builder=_build_patch_classifier,
            hyperparameters=DenseNetConfig(),
            input_size=DMV_PATCH_SIZE,
            preprocessing="breast_cancer_classifier_patches",
            modality="ffdm",
            weights=weights("dmv-patch-densenet121", None),
            licence=NYU_LICENCE,
            intended_use=NYU_INTENDED_USE,
            paper=DMV_PAPER,
        ),
    ]


#: Reduced DMV-CNN input size for automated tests: the fixtures' 0.25 scale.
DMV_TESTING_SCALE = 0.25


def _dmv_testing() -> ModelSpec:
    """The view-wise image-only DMV-CNN at 0.25 scale, for automated tests only.

    Same code and weights layout as ``dmv-cnn-image-only``; its preprocessing
    (``breast_cancer_classifier-testing``) prepares each view at the full window and
    resizes the standardised input to CC 669x486 / MLO 744x437 with ``INTER_AREA``, as
    the reduced-resolution DMV-CNN fixtures were made. Loads only with ``TRIAGE_TESTING=1``.
    """
    size = MappingProxyType({
        view: (round(h * DMV_TESTING_SCALE), round(w * DMV_TESTING_SCALE))
        for view, (h, w) in DMV_INPUT_SIZE.items()
    })
    return ModelSpec(
        name="dmv-cnn-testing-small",
        version=DMV_VERSION,
        architecture=("DMV-CNN view-wise image-only at 0.25 scale (TESTING ONLY, CC 669x486, "
                      "MLO 744x437)"),
        builder=_build_dmv,
        hyperparameters=DMVConfig(input_channels=1),
        input_size=size,
        preprocessing="breast_cancer_classifier-testing",
        modality="ffdm",
        weights=WeightSpec(file_name="dmv-cnn-testing-small.pt", state_dict_key="model"),
        licence=testing_licence("Wu et al. 2019"),
        intended_use=TESTING_INTENDED_USE,
        paper=DMV_PAPER,
        extra=MappingProxyType({TESTING_ONLY: True}),
    )


def _catalogue() -> dict[str, ModelSpec]:
    specs = [_gmic_published(i, path, blob, t)
             for i, (path, blob, t) in enumerate(PUBLISHED_GMIC_FILES, start=1)]
    specs += [_gmic_unpublished("resnet34"), _gmic_unpublished("resnet50"), _gmic_testing()]
    specs += [_gmic3d_published(i, path, blob, t, k)
              for i, (path, blob, t, k) in enumerate(PUBLISHED_GMIC3D_FILES, start=1)]
    specs.append(_gmic3d_testing())
    specs += _dmv_specs()
    specs.append(_dmv_testing())
    specs += allconv_specs()
    specs += glimpsenet_specs()
    return {spec.name: spec for spec in specs}


_REGISTRY: dict[str, ModelSpec] = _catalogue()


def register(spec: ModelSpec) -> None:
    """Add a model to the catalogue (one name, one spec)."""
    if spec.name in _REGISTRY:
        raise ModelError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def get_spec(name: str) -> ModelSpec:
    """The spec of a named model; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))} "
            "(see `triage models list`)"
        ) from None


def list_specs() -> list[ModelSpec]:
    """Every registered model, by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
