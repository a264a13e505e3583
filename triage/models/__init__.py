"""Models of the papers, the registry of named models and their weights.

Tensors in, typed results out: no DICOM, no database, no Celery here.
"""

from __future__ import annotations

from triage.models.gmic import GMIC, GMICConfig, GMICOutput
from triage.models.registry import ModelSpec, WeightSpec, get_spec, list_specs
from triage.models.roi import retrieve_roi
from triage.models.weights import (
    LoadedModel,
    build_model,
    ensure_demo_weights,
    import_weights,
    load_member,
    verify_weights,
    weights_status,
)

__all__ = [
    "GMIC",
    "GMICConfig",
    "GMICOutput",
    "LoadedModel",
    "ModelSpec",
    "WeightSpec",
    "build_model",
    "ensure_demo_weights",
    "get_spec",
    "import_weights",
    "list_specs",
    "load_member",
    "retrieve_roi",
    "verify_weights",
    "weights_status",
]
